//! Inner loops of the output-sparse Q4_1 GEMV over rows in step order (see
//! `crate::q4_rows`; one file per ISA) and their dispatch.

#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

/// Bytes of one full group: 256 bytes of codes, 16 f16 scales, 16 f16 minima.
pub const GROUP_BYTES: usize = 320;

/// Bytes of one group's activations (eight steps of 64).
pub const GROUP_ACT_BYTES: usize = 512;

/// Q4_1 rows in step order: row r at `bytes[r * stride..]`, `groups` full groups of
/// [`GROUP_BYTES`] then the tail's `tail` blocks (16 bytes of codes, then 2 bytes of scale
/// and 2 of minimum per block).
pub struct StepMatrix<'a> {
    pub bytes: &'a [u8],
    pub stride: usize,
    pub rows: usize,
    pub groups: usize,
    pub tail: usize,
}

/// Activations in step order for a [`StepMatrix`] of as many groups and tail blocks: `q`
/// holds [`GROUP_ACT_BYTES`] per full group, then the tail alone (lanes 0..tail), then the
/// tail four times (lanes r tail..(r + 1) tail, for four rows at once, where 4 tail <= 16);
/// `d` (block scales / 16) and `sum` (block sums) 16 values for each of those.
pub struct StepActs<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub sum: &'a [f32],
}

/// Whether `w` and `x` have the lengths the loops read, and every listed row exists.
pub fn fits(w: &StepMatrix<'_>, x: &StepActs<'_>, rows: &[u32]) -> bool {
    let slots = w.groups + 2;
    w.tail < 16
        && w.stride >= GROUP_BYTES * w.groups + 20 * w.tail
        && w.bytes.len() >= w.rows * w.stride
        && x.q.len() >= GROUP_ACT_BYTES * slots
        && x.d.len() >= 16 * slots
        && x.sum.len() >= 16 * slots
        && rows.iter().all(|&r| (r as usize) < w.rows)
}

/// `out[k] = W[rows[k]] · x`. Panics if the lengths do not fit (a bug of the caller).
pub fn gemv_rows(w: &StepMatrix<'_>, x: &StepActs<'_>, rows: &[u32], out: &mut [f32]) {
    assert!(fits(w, x, rows) && out.len() == rows.len(), "step-order rows and activations do not match");
    #[cfg(target_arch = "x86_64")]
    if crate::gemm_vnni::enabled() {
        // SAFETY: `enabled()` is true only on a CPU with avx512f/bw/vnni beside the AVX2 set
        // (avx512vl comes with every CPU that has avx512vnni); lengths checked above.
        return unsafe { avx512::gemv_rows(w, x, rows, out) };
    }
    scalar::gemv_rows(w, x, rows, out);
}

/// The portable loop, for tests against the dispatched one.
#[cfg(test)]
pub(crate) fn portable_gemv_rows(w: &StepMatrix<'_>, x: &StepActs<'_>, rows: &[u32], out: &mut [f32]) {
    assert!(fits(w, x, rows) && out.len() == rows.len());
    scalar::gemv_rows(w, x, rows, out);
}
