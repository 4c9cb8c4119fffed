//! Dense matrix products `out[t][r] = W[r] · x[t]` for `n` activation rows, split over rows
//! on the [`crate::pool`]. With `n == 1` this is the decode GEMV; larger `n` is batched
//! prefill.
//!
//! - GEMV (and the tokens past the last group of four): [`GEMV_ROWS`] consecutive rows per
//!   kernel call, each row streamed in order (the decode path is memory-bound).
//! - q8 GEMM: tokens in groups of four, widened to i16 and interleaved so one `vpmaddwd`
//!   does 16 MACs whose lanes each belong to one token (see `cpu::q8_gemm_i16`); weight rows
//!   are widened per cache panel; 16-token tiles of activations stay in L1.
//! - f32 GEMM: [`F32_GEMM_ROWS`] rows x 4 tokens register tiles, tokens in tiles of
//!   [`TOKEN_TILE`].
//!
//! Parallel split: a hand-off costs microseconds, so a product is cut into at most
//! `4 * threads` tasks and never into tasks smaller than [`MIN_TASK_WORK`]; small products
//! run on the calling thread.

use crate::cpu;
use crate::{ActsQ8, KernelError, MatF32, MatQ8, QK};

/// Tokens per tile (a multiple of 4).
const TOKEN_TILE: usize = 16;

/// Weight rows per GEMV kernel call.
const GEMV_ROWS: usize = 4;

/// Blocks of [`QK`] per K chunk of the q8 GEMM: a tile of [`GEMM_GROUPS`] x 4 tokens of
/// widened activations (16 x 16 x 64 B = 16 KB) stays in L1 (24 blocks measured 10% slower
/// at 576 x 1536, 8 and 12 no better).
const GEMM_K_BLOCKS: usize = 16;

/// Weight rows per panel of the q8 GEMM (32 x 16 x 64 B = 32 KB when widened).
const GEMM_ROW_BLOCK: usize = 32;

/// Groups of four tokens whose partial sums are kept at a time (32 rows x 256 tokens x 4 B
/// = 32 KB).
const GEMM_PASS_GROUPS: usize = 64;

/// Packed activations kept between calls up to this many values (16 MiB), so prefill
/// does not allocate and fault in a fresh buffer for every product.
const PACK_KEEP: usize = 8 << 20;

thread_local! {
    /// This thread's buffers for packed activations (values, scales).
    static PACK: std::cell::RefCell<(Vec<i16>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Token passes at least this long widen the weight panel to i16 first (the fastest kernel
/// operand); shorter ones read the int8 weights directly, since widening a value costs
/// about as much as a few dozen tokens' multiplies by it save.
const GEMM_WIDEN_MIN_TOKENS: usize = 64;

/// Groups of four tokens per q8 GEMM microkernel call.
const GEMM_GROUPS: usize = 4;

/// Weight rows per f32 GEMM (four-token) kernel call: 2 x 4 accumulators fill the FMA
/// pipes without spilling registers.
const F32_GEMM_ROWS: usize = 2;

/// Least work worth a parallel task, in weight bytes times tokens: a 192 x 576 q8 GEMV
/// (110 KB) still splits in three, which measured faster than running it on one thread.
const MIN_TASK_WORK: usize = 32 << 10;

/// Rows per task for a product of `rows` rows of `row_bytes` weight bytes against `n`
/// tokens: a multiple of the kernels' row tile, at most `4 * threads` tasks, none smaller
/// than [`MIN_TASK_WORK`]. A decode product (one token) takes whole decode panels: a task
/// edge inside a panel sends the panel's rows through the row dot product, about 1.8x
/// slower per row (576 rows in 8 tasks of 72 left 8 rows of each to it).
pub(crate) fn row_chunk(rows: usize, row_bytes: usize, n: usize) -> usize {
    let threads = crate::pool::global().threads();
    let work = rows.saturating_mul(row_bytes).saturating_mul(n.max(1));
    let tasks = (work / MIN_TASK_WORK).clamp(1, threads * 4);
    let tile = if n == 1 { crate::decode_panels::PANEL_ROWS } else { GEMV_ROWS };
    rows.div_ceil(tasks).next_multiple_of(tile).max(1)
}

/// Output pointer shared by the row chunks of one product.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr {
    /// Address of entry `first`.
    ptr: *mut f32,
    /// Entries from `first` on.
    len: usize,
    /// The first index this pointer accepts (0 for a whole product's output).
    first: usize,
}
// SAFETY: each chunk writes only the output entries of its own rows; chunks are disjoint,
// and the product returns only after every chunk finished.
unsafe impl Send for OutPtr {}
// SAFETY: as above: concurrent users write disjoint entries.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// A pointer over the whole of `out`.
    pub(crate) fn new(out: &mut [f32]) -> Self {
        Self::new_offset(out, 0)
    }
    /// A pointer whose index `first` is `out[0]`: rows `first..` of a product written into
    /// a slice that holds just those rows.
    pub(crate) fn new_offset(out: &mut [f32], first: usize) -> Self {
        Self { ptr: out.as_mut_ptr(), len: out.len(), first }
    }
    /// Position of index `i` in the slice (panics outside it).
    #[inline(always)]
    fn at(self, i: usize, count: usize) -> usize {
        let k = i.wrapping_sub(self.first);
        assert!(i >= self.first && k + count <= self.len, "output index out of range");
        k
    }
    /// Writes `v` at index `i`.
    ///
    /// # Safety
    /// No other thread may access entry `i` during the product (chunks own their rows).
    #[inline(always)]
    pub(crate) unsafe fn write(self, i: usize, v: f32) {
        let k = self.at(i, 1);
        // SAFETY: `k < len`, the length of the live output slice; the caller guarantees
        // exclusive access to entry `i`.
        unsafe { *self.ptr.add(k) = v };
    }

    /// Writes `v` at indices `i .. i + v.len()`.
    ///
    /// # Safety
    /// As for [`OutPtr::write`], for every entry written.
    #[inline(always)]
    pub(crate) unsafe fn write_slice(self, i: usize, v: &[f32]) {
        let k = self.at(i, v.len());
        // SAFETY: the run lies inside the live output slice; the caller guarantees exclusive
        // access to it, so it does not overlap `v`.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(k), v.len()) };
    }

    /// Adds `v` to entry `i`.
    ///
    /// # Safety
    /// As for [`OutPtr::write`].
    #[inline(always)]
    pub(crate) unsafe fn add(self, i: usize, v: f32) {
        let k = self.at(i, 1);
        // SAFETY: `k < len`; the caller guarantees exclusive access to entry `i`.
        unsafe { *self.ptr.add(k) += v };
    }
}

/// Runs `body` over row ranges that partition `0..rows`, in parallel when worth it.
pub(crate) fn for_each_row_chunk(
    rows: usize,
    row_bytes: usize,
    n: usize,
    out: &mut [f32],
    body: impl Fn(std::ops::Range<usize>, OutPtr) + Sync,
) {
    let ptr = OutPtr::new(out);
    let chunk = row_chunk(rows, row_bytes, n);
    let chunks = rows.div_ceil(chunk);
    let range = |c: usize| c * chunk..((c + 1) * chunk).min(rows);
    if chunks <= 1 {
        body(0..rows, ptr);
    } else {
        crate::pool::parallel_for(chunks, |c| body(range(c), ptr));
    }
}

fn check(rows: usize, cols: usize, x_cols: usize, x_len: usize, n: usize, out_len: usize) -> Result<(), KernelError> {
    if x_cols != cols {
        return Err(KernelError::Shape(format!("weights have {cols} columns, activations {x_cols}")));
    }
    let expected = n.checked_mul(cols).ok_or_else(|| KernelError::Shape(format!("{n} x {cols} overflows")))?;
    if x_len != expected {
        return Err(KernelError::Length { what: "activations", expected, got: x_len });
    }
    let expected = n.checked_mul(rows).ok_or_else(|| KernelError::Shape(format!("{n} x {rows} overflows")))?;
    if out_len != expected {
        return Err(KernelError::Length { what: "output", expected, got: out_len });
    }
    Ok(())
}

/// Walks one chunk's rows in tiles: `x4(r, count, t)` computes rows `r..r + count` against
/// tokens `t..t + 4`, `x1(r, count, t)` against token `t` alone; `count` is the tile height
/// (`h4` / `h1`) or 1 for the chunk's leftover rows.
fn tile_rows(
    range: std::ops::Range<usize>,
    n: usize,
    (h4, h1): (usize, usize),
    mut x4: impl FnMut(usize, usize, usize),
    mut x1: impl FnMut(usize, usize, usize),
) {
    let n4 = n / 4 * 4;
    for t0 in (0..n4).step_by(TOKEN_TILE) {
        let t1 = (t0 + TOKEN_TILE).min(n4);
        let mut r = range.start;
        while r < range.end {
            let count = if range.end - r >= h4 { h4 } else { 1 };
            for t in (t0..t1).step_by(4) {
                x4(r, count, t);
            }
            r += count;
        }
    }
    for t in n4..n {
        let mut r = range.start;
        while r < range.end {
            let count = if range.end - r >= h1 { h1 } else { 1 };
            x1(r, count, t);
            r += count;
        }
    }
}

/// f32 product: `x` holds `n` rows of `w.cols()` values; `out` receives `n` rows of `w.rows()`.
pub fn matmul_f32(w: &MatF32, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), KernelError> {
    let (rows, cols) = (w.rows(), w.cols());
    check(rows, cols, cols, x.len(), n, out.len())?;
    let xrow = |t: usize| &x[t * cols..(t + 1) * cols];
    for_each_row_chunk(rows, cols * 4, n, out, |range, out| {
        tile_rows(
            range,
            n,
            (F32_GEMM_ROWS, GEMV_ROWS),
            |r, count, t| {
                let xs = [xrow(t), xrow(t + 1), xrow(t + 2), xrow(t + 3)];
                let mut res = [[0f32; 4]; F32_GEMM_ROWS];
                if count == F32_GEMM_ROWS {
                    res = cpu::f32_rows_x4::<F32_GEMM_ROWS>(w.rows_data(r, count), cols, xs);
                } else {
                    res[0] = cpu::f32_rows_x4::<1>(w.rows_data(r, count), cols, xs)[0];
                }
                for (i, v) in res.iter().take(count).enumerate() {
                    for (k, &v) in v.iter().enumerate() {
                        // SAFETY: row r + i belongs to this chunk (see OutPtr).
                        unsafe { out.write((t + k) * rows + r + i, v) };
                    }
                }
            },
            |r, count, t| {
                let mut res = [0f32; GEMV_ROWS];
                if count == GEMV_ROWS {
                    res = cpu::f32_rows_x1::<GEMV_ROWS>(w.rows_data(r, count), cols, xrow(t));
                } else {
                    res[0] = cpu::f32_rows_x1::<1>(w.rows_data(r, count), cols, xrow(t))[0];
                }
                for (i, &v) in res.iter().take(count).enumerate() {
                    // SAFETY: row r + i belongs to this chunk (see OutPtr).
                    unsafe { out.write(t * rows + r + i, v) };
                }
            },
        )
    });
    Ok(())
}

/// int8 product of quantized weights and quantized activations; `out` receives
/// `x.n()` rows of `w.rows()` values.
pub fn matmul_q8(w: &MatQ8, x: &ActsQ8, out: &mut [f32]) -> Result<(), KernelError> {
    let (rows, cols, n) = (w.rows(), w.cols(), x.n());
    check(rows, cols, x.cols(), n * x.cols(), n, out.len())?;
    let nb = cols / QK;
    if n >= 4 && crate::gemm_vnni::enabled() {
        crate::gemm_vnni::with_offset_acts(x, |xu| {
            for_each_row_chunk(rows, cols + 4 * nb, n, out, |range, out| {
                crate::gemm_vnni::gemm_rows(crate::gemm_vnni::Weights::Q8(w), rows, x, xu, range, out)
            })
        });
        return Ok(());
    }
    if n == 1
        && let Some(panels) = w.decode_panels()
    {
        let offset = crate::decode_panels::Q8Panels::offsets(x);
        // Row chunks are multiples of GEMV_ROWS, not of 16: rows outside whole panels go
        // through the row dot product.
        for_each_row_chunk(rows, cols + 4 * nb, n, out, |range, out| {
            let (lo, hi) = crate::decode_panels::panel_span(&range, rows);
            panels.gemv(x, &offset, lo..hi, rows, out);
            q8_decode_rows(w, x, (range.start..lo).chain(hi..range.end), out);
        });
        return Ok(());
    }
    with_packed_acts(x, nb, |packed| q8_products(w, x, packed, out));
    Ok(())
}

/// Token 0 of `x` against the Q8 rows `rows`, one row at a time.
fn q8_decode_rows(w: &MatQ8, x: &ActsQ8, rows: impl Iterator<Item = usize>, out: OutPtr) {
    let (xq, xs, nb) = (x.row_qs(0), x.row_scales(0), w.cols() / QK);
    for r in rows {
        let v = cpu::q8_rows_x1::<1>(w.rows_qs(r, 1), w.rows_scales(r, 1), nb, xq, xs)[0];
        // SAFETY: row r belongs to the caller's chunk (see OutPtr).
        unsafe { out.write(r, v) };
    }
}

/// Runs `f` with every full group of four tokens of `x` widened and interleaved for the GEMM
/// microkernel, in this thread's reusable buffers (fresh ones should this thread already be
/// using them).
pub(crate) fn with_packed_acts(x: &ActsQ8, nb: usize, f: impl FnOnce(&Packed<'_>)) {
    let groups = x.n() / 4;
    PACK.with(|cell| {
        let mut fresh = (Vec::new(), Vec::new());
        let mut held = cell.try_borrow_mut();
        let (x16, xs8) = match held.as_deref_mut() {
            Ok((a, b)) => (a, b),
            Err(_) => (&mut fresh.0, &mut fresh.1),
        };
        x16.clear();
        x16.resize(groups * nb * 4 * QK, 0);
        xs8.clear();
        xs8.resize(groups * nb * 8, 0.0);
        for (g, (p, ps)) in x16.chunks_exact_mut(nb * 4 * QK).zip(xs8.chunks_exact_mut(nb * 8)).enumerate() {
            let t = 4 * g;
            let xq = [x.row_qs(t), x.row_qs(t + 1), x.row_qs(t + 2), x.row_qs(t + 3)];
            let xs = [x.row_scales(t), x.row_scales(t + 1), x.row_scales(t + 2), x.row_scales(t + 3)];
            cpu::pack_acts_i16(xq, xs, nb, p, ps);
        }
        f(&Packed { x16, xs8, groups, nb });
        if x16.capacity() > PACK_KEEP {
            *x16 = Vec::new();
        }
    });
}

/// The row-parallel part of [`matmul_q8`], once the activations are packed.
fn q8_products(w: &MatQ8, x: &ActsQ8, packed: &Packed, out: &mut [f32]) {
    let (rows, cols, n, nb, groups) = (w.rows(), w.cols(), x.n(), packed.nb, packed.groups);
    for_each_row_chunk(rows, cols + 4 * nb, n, out, |range, out| {
        if groups > 0 {
            q8_gemm_rows(w, 0, w.rows(), packed, range.clone(), out);
        }
        // Tokens past the last group of four, and the decode GEMV: GEMV_ROWS rows at a time.
        for t in groups * 4..n {
            let (xq, xs) = (x.row_qs(t), x.row_scales(t));
            let mut r = range.start;
            while r < range.end {
                let count = if range.end - r >= GEMV_ROWS { GEMV_ROWS } else { 1 };
                let (wq, ws) = (w.rows_qs(r, count), w.rows_scales(r, count));
                let mut res = [0f32; GEMV_ROWS];
                if count == GEMV_ROWS {
                    res = cpu::q8_rows_x1::<GEMV_ROWS>(wq, ws, nb, xq, xs);
                } else {
                    res[0] = cpu::q8_rows_x1::<1>(wq, ws, nb, xq, xs)[0];
                }
                for (i, &v) in res.iter().take(count).enumerate() {
                    // SAFETY: row r + i belongs to this chunk (see OutPtr).
                    unsafe { out.write(t * rows + r + i, v) };
                }
                r += count;
            }
        }
    });
}

/// Activations packed by [`cpu::pack_acts_i16`]: `groups` groups of four tokens.
pub(crate) struct Packed<'a> {
    x16: &'a [i16],
    xs8: &'a [f32],
    pub(crate) groups: usize,
    nb: usize,
}

impl Packed<'_> {
    /// Group g's values and scales for blocks `b0..b1`.
    fn group(&self, g: usize, b0: usize, b1: usize) -> (&[i16], &[f32]) {
        let (v, s) = (g * self.nb * 4 * QK, g * self.nb * 8);
        (&self.x16[v + b0 * 4 * QK..v + b1 * 4 * QK], &self.xs8[s + b0 * 8..s + b1 * 8])
    }
}

/// The GEMM over rows `range` against every packed group, blocked for the caches: rows
/// [`GEMM_ROW_BLOCK`] at a time and [`GEMM_K_BLOCKS`] blocks at a time form a panel; each
/// 16-token tile of activations for those blocks stays in L1 while the panel's rows stream
/// past. When enough tokens pass over the panel it is first widened to i16 (L2 resident);
/// otherwise the kernel reads the int8 weights directly. Partial sums over the K chunks add
/// up in a small token-major buffer (up to [`GEMM_PASS_GROUPS`] groups of tokens at a time),
/// written to `out` once, at output row `row_offset + r` of an output with `rows` values per
/// token.
pub(crate) fn q8_gemm_rows(
    w: &MatQ8,
    row_offset: usize,
    rows: usize,
    x: &Packed,
    range: std::ops::Range<usize>,
    out: OutPtr,
) {
    let (cols, nb) = (w.cols(), x.nb);
    let kchunks = nb.div_ceil(GEMM_K_BLOCKS).max(1);
    let kb = nb.div_ceil(kchunks);
    let mut w16 = Vec::new();
    let mut blk = vec![0f32; GEMM_ROW_BLOCK * GEMM_PASS_GROUPS * 4];
    for ra in range.clone().step_by(GEMM_ROW_BLOCK) {
        let nr = GEMM_ROW_BLOCK.min(range.end - ra);
        let (qs, scales) = (w.rows_qs(ra, nr), w.rows_scales(ra, nr));
        for p0 in (0..x.groups).step_by(GEMM_PASS_GROUPS) {
            let pg = GEMM_PASS_GROUPS.min(x.groups - p0);
            let widen = 4 * pg >= GEMM_WIDEN_MIN_TOKENS;
            // Token-major: token j's results for the block's rows are blk[j * nr..][..nr].
            let blk = &mut blk[..4 * pg * nr];
            blk.fill(0.0);
            for kc in 0..kchunks {
                let (b0, b1) = (kc * kb, ((kc + 1) * kb).min(nb));
                let kn = b1 - b0;
                if widen {
                    w16.resize(nr * kn * QK, 0);
                    for (i, dst) in w16.chunks_exact_mut(kn * QK).enumerate() {
                        cpu::widen_i16(&qs[i * cols + b0 * QK..i * cols + b1 * QK], dst);
                    }
                }
                for g0 in (p0..p0 + pg).step_by(GEMM_GROUPS) {
                    let count = GEMM_GROUPS.min(p0 + pg - g0);
                    let gs: [(&[i16], &[f32]); GEMM_GROUPS] =
                        std::array::from_fn(|g| x.group(g0 + g.min(count - 1), b0, b1));
                    let gs = &gs[..count];
                    let res = &mut blk[4 * (g0 - p0) * nr..];
                    let ws = &scales[b0..];
                    if widen {
                        gemm_groups(&w16[..nr * kn * QK], kn * QK, ws, nb, nr, kn, gs, res);
                    } else {
                        gemm_groups(&qs[b0 * QK..], cols, ws, nb, nr, kn, gs, res);
                    }
                }
            }
            // Each token gets a contiguous run of the block's rows.
            for (j, vals) in blk.chunks_exact(nr).enumerate() {
                let base = (4 * p0 + j) * rows + row_offset + ra;
                for (i, &v) in vals.iter().enumerate() {
                    // SAFETY: row ra + i belongs to this chunk (see OutPtr).
                    unsafe { out.write(base + i, v) };
                }
            }
        }
    }
}

/// One microkernel call over up to [`GEMM_GROUPS`] packed groups `gs`; results go to the
/// token-major `res` (row stride `nr`).
#[allow(clippy::too_many_arguments)]
fn gemm_groups<W: cpu::GemmWeight>(
    w: &[W],
    w_stride: usize,
    ws: &[f32],
    ws_stride: usize,
    nr: usize,
    kn: usize,
    gs: &[(&[i16], &[f32])],
    res: &mut [f32],
) {
    fn call<W: cpu::GemmWeight, const T: usize>(
        (w, w_stride, ws, ws_stride, rows, nb): (&[W], usize, &[f32], usize, usize, usize),
        gs: &[(&[i16], &[f32])],
        res: &mut [f32],
    ) {
        let x16: [&[i16]; T] = std::array::from_fn(|g| gs[g].0);
        let xs8: [&[f32]; T] = std::array::from_fn(|g| gs[g].1);
        cpu::q8_gemm(&cpu::GemmTile { w, w_stride, ws, ws_stride, rows, nb, x16, xs8 }, res, rows);
    }
    let a = (w, w_stride, ws, ws_stride, nr, kn);
    match gs.len() {
        4 => call::<W, 4>(a, gs, res),
        3 => call::<W, 3>(a, gs, res),
        2 => call::<W, 2>(a, gs, res),
        1 => call::<W, 1>(a, gs, res),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode products split on panel edges at SmolLM2's shapes (down: 576 rows of 960
    /// bytes, which split in 72-row tasks before), and at a Llama-3-8B shape; prefill keeps
    /// the GEMM's four-row tile.
    #[test]
    fn decode_tasks_take_whole_panels() {
        for (rows, row_bytes) in [(576, 960), (576, 360), (192, 360), (1536, 360), (49152, 612), (14336, 2560)] {
            let chunk = row_chunk(rows, row_bytes, 1);
            assert_eq!(chunk % crate::decode_panels::PANEL_ROWS, 0, "{rows} x {row_bytes}: {chunk}");
            assert!(chunk <= rows.next_multiple_of(crate::decode_panels::PANEL_ROWS));
        }
        assert_eq!(row_chunk(576, 960, 64) % GEMV_ROWS, 0);
    }
}
