//! AVX-512F loops of the f32 input-sparse GEMV: the mask as a compress of the active
//! channels, and the sums of a segment of outputs held in registers.

use std::arch::x86_64::*;

/// Most 16-float registers of sums [`rows_f32_in_registers`] holds: 24 of the 32, the rest
/// for the broadcast activations and the loads.
pub const F32_SUM_REGS: usize = 24;

/// Sums in registers up to which [`rows_f32_in_registers`] runs two rows side by side into
/// two sets of sums, so that each sum's chain of dependent FMAs (4 cycles each) interleaves
/// with the other's.
const F32_TWO_SETS_UP_TO: usize = F32_SUM_REGS / 2;

/// How many active rows ahead [`rows_f32_in_registers`] prefetches a run's first line. In a
/// probe that took turns in one process (weights in L3, 50%, random masks), one line 8 rows
/// ahead cut k/v 192x576 from 9.7 to 8.0 µs, q/o 576x576 from 24.1 to 20.5, gate/up
/// 1536x576 from 84.3 to 77.3 and down 576x1536 from 84.5 to 78.2; 3 to 12 rows ahead and
/// one or two lines measured within 3% of each other beyond 4 rows.
const FIRST_LINE_AHEAD: usize = 8;

/// `y = Σ_k a[k] · w[idx[k] · stride + offset ..][..y.len()]`, `y` summed in `R` registers
/// (`16 (R − 1) < y.len() <= 16 R`; the last register loads under a mask, which never reads
/// past the run), so that the sums never go to memory: each active row costs its loads
/// (folded into the FMAs) and nothing else, plus one prefetch: the first cache line of the
/// row [`FIRST_LINE_AHEAD`] rows on. The hardware follows a run once it has begun, but the
/// first line of each scattered run would otherwise wait the whole trip to L3 (prefetching
/// whole runs 8 rows ahead was slower: it spends a load slot on every line).
///
/// # Safety
/// The CPU must support avx512f; every run `idx[k] · stride + offset .. + y.len()` lies
/// inside `w`, `a.len() >= idx.len()` and `y.len()` is in `16 (R − 1) + 1 ..= 16 R`.
// The register index picks the masked load of the last register as well as the sums.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
pub unsafe fn rows_f32_in_registers<const R: usize>(
    w: &[f32],
    stride: usize,
    offset: usize,
    idx: &[u32],
    a: &[f32],
    y: &mut [f32],
) {
    let n = y.len();
    let tail: __mmask16 = match n % 16 {
        0 => 0xffff,
        rest => (1u16 << rest) - 1,
    };
    let two_sets = R <= F32_TWO_SETS_UP_TO;
    // SAFETY: the caller guarantees every run lies inside `w`; register r < R − 1 loads
    // 16 floats at 16 r + 16 <= 16 (R − 1) < n, the last one only the `tail` lanes below n;
    // the prefetches address the start of a listed row's run (and would not fault anyway).
    unsafe {
        let pw = w.as_ptr();
        let run = |k: usize| pw.add(idx[k] as usize * stride + offset);
        let load = |p: *const f32, r: usize| {
            if r + 1 == R { _mm512_maskz_loadu_ps(tail, p.add(16 * r)) } else { _mm512_loadu_ps(p.add(16 * r)) }
        };
        let mut sums = [[_mm512_setzero_ps(); R]; 2];
        let mut k = 0;
        while k + 2 <= idx.len() {
            let (p0, p1) = (run(k), run(k + 1));
            if k + FIRST_LINE_AHEAD + 1 < idx.len() {
                _mm_prefetch::<_MM_HINT_T0>(run(k + FIRST_LINE_AHEAD) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(run(k + FIRST_LINE_AHEAD + 1) as *const i8);
            }
            let (v0, v1) = (_mm512_set1_ps(a[k]), _mm512_set1_ps(a[k + 1]));
            for r in 0..R {
                sums[0][r] = _mm512_fmadd_ps(v0, load(p0, r), sums[0][r]);
                let set = if two_sets { 1 } else { 0 };
                sums[set][r] = _mm512_fmadd_ps(v1, load(p1, r), sums[set][r]);
            }
            k += 2;
        }
        if k < idx.len() {
            let (p0, v0) = (run(k), _mm512_set1_ps(a[k]));
            for r in 0..R {
                sums[0][r] = _mm512_fmadd_ps(v0, load(p0, r), sums[0][r]);
            }
        }
        let py = y.as_mut_ptr();
        for r in 0..R {
            let total = if two_sets { _mm512_add_ps(sums[0][r], sums[1][r]) } else { sums[0][r] };
            if r + 1 == R {
                _mm512_mask_storeu_ps(py.add(16 * r), tail, total);
            } else {
                _mm512_storeu_ps(py.add(16 * r), total);
            }
        }
    }
}

/// Writes the indices and values of the entries of `x` with `|x_i| > t` to the front of
/// `idx` and `vals`, in order, and returns their count: sixteen compares and one compress
/// per 64 bytes, where a scalar loop mispredicts about one branch in two at 50% sparsity.
///
/// # Safety
/// The CPU must support avx512f; `idx` and `vals` hold at least `x.len() + 16` entries (each
/// step stores sixteen lanes past the count so far).
#[target_feature(enable = "avx512f")]
pub unsafe fn active_f32(x: &[f32], t: f32, idx: &mut [u32], vals: &mut [f32]) -> usize {
    let n = x.len();
    let mut count = 0usize;
    // SAFETY: step i loads x[i .. i + 16] (masked to the lanes below n) and stores sixteen
    // lanes at `count <= i`, so below n + 16 <= the buffers' lengths.
    unsafe {
        let tv = _mm512_set1_ps(t);
        let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let mut i = 0;
        while i < n {
            let valid: __mmask16 = if n - i >= 16 { 0xffff } else { (1u16 << (n - i)) - 1 };
            let v = _mm512_maskz_loadu_ps(valid, x.as_ptr().add(i));
            let keep = _mm512_mask_cmp_ps_mask::<_CMP_GT_OQ>(valid, _mm512_abs_ps(v), tv);
            let at = _mm512_add_epi32(lanes, _mm512_set1_epi32(i as i32));
            _mm512_storeu_si512(idx.as_mut_ptr().add(count) as *mut __m512i, _mm512_maskz_compress_epi32(keep, at));
            _mm512_storeu_ps(vals.as_mut_ptr().add(count), _mm512_maskz_compress_ps(keep, v));
            count += keep.count_ones() as usize;
            i += 16;
        }
    }
    count
}
