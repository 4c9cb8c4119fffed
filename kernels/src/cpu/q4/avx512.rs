//! x86-64 AVX-512 VNNI Q4_1 x int8 dot product of one weight row, for the rows outside whole
//! decode panels (listed rows are read in step order, see `crate::q4_rows`). Four blocks
//! per step: their 64 bytes of codes split into low and high nibbles, two `vpdpbusd` against
//! the pair-ordered activations regrouped by 128-bit lanes, so lanes 4b..4b+3 hold block b's
//! partial sums; block scales are expanded to those lanes from one vector per 16 blocks.
//! Callers guarantee the features and that every slice covers the same number of blocks.

use std::arch::x86_64::*;

use super::{ActRow, Q4Row};

/// Blocks covered by one scale vector.
const SPAN: usize = 16;

/// Σ codes * x of a lone block `b` (natural order: pair order leaves a last odd block as it
/// was) as 4 lanes.
#[inline(always)]
unsafe fn block_sums(w: &Q4Row<'_>, x: &ActRow<'_>, b: usize) -> __m128 {
    // SAFETY: reads codes [16b, 16b + 16) and q [32b, 32b + 32); the caller ensures b < nb.
    unsafe {
        let packed = _mm_loadu_si128(w.codes.as_ptr().add(16 * b) as *const __m128i);
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(packed, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
        let xlo = _mm_loadu_si128(x.q.as_ptr().add(32 * b) as *const __m128i);
        let xhi = _mm_loadu_si128(x.q.as_ptr().add(32 * b + 16) as *const __m128i);
        let acc = _mm_dpbusd_epi32(_mm_setzero_si128(), lo, xlo);
        _mm_cvtepi32_ps(_mm_dpbusd_epi32(acc, hi, xhi))
    }
}

/// `Σ_b d_b dx_b Σ codes * x + m_b sum_b` over the row's blocks.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx512vnni and f16c. Lengths are taken
/// as the smallest block count every slice covers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot(w: &Q4Row<'_>, x: &ActRow<'_>) -> f32 {
    let nb = w.d.len().min(w.m.len()).min(w.codes.len() / 16).min(x.d.len()).min(x.sum.len());
    let nb = nb.min(x.q.len() / 32).min(x.pair_q.len() / 32);
    let paired = nb & !1;
    // SAFETY: every block index read is < nb, inside all slices; masked loads read only the
    // lanes of blocks < `paired` (a last group of one pair loads its codes and activations
    // under a mask and nothing of the missing pair).
    unsafe {
        let nibbles = _mm512_set1_epi8(0x0f);
        let mut acc = _mm512_setzero_ps();
        let mut b0 = 0;
        while b0 < paired {
            let span = (paired - b0).min(SPAN);
            let lanes: __mmask16 = ((1u32 << span) - 1) as __mmask16;
            let d = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, w.d.as_ptr().add(b0) as *const i16));
            let m = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, w.m.as_ptr().add(b0) as *const i16));
            let scales = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(lanes, x.d.as_ptr().add(b0)));
            // The minimums' term lands in the same 16 lanes and leaves with the one reduction.
            acc = _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(lanes, x.sum.as_ptr().add(b0)), acc);
            let mut g = 0;
            while 4 * g < span {
                let b = b0 + 4 * g;
                // A group of four blocks, or of the span's last pair.
                let full = b + 4 <= b0 + span;
                let (codes, p0, p1) = if full {
                    (
                        _mm512_loadu_si512(w.codes.as_ptr().add(16 * b) as *const __m512i),
                        _mm512_loadu_si512(x.pair_q.as_ptr().add(32 * b) as *const __m512i),
                        _mm512_loadu_si512(x.pair_q.as_ptr().add(32 * b + 64) as *const __m512i),
                    )
                } else {
                    (
                        _mm512_maskz_loadu_epi64(0x0f, w.codes.as_ptr().add(16 * b) as *const i64),
                        _mm512_loadu_si512(x.pair_q.as_ptr().add(32 * b) as *const __m512i),
                        _mm512_setzero_si512(),
                    )
                };
                let lo = _mm512_and_si512(codes, nibbles);
                let hi = _mm512_and_si512(_mm512_srli_epi16(codes, 4), nibbles);
                // Pairs (b, b+1) and (b+2, b+3): [lo lo hi hi] each; regroup to all lows, all highs.
                let xlo = _mm512_shuffle_i64x2::<0x44>(p0, p1);
                let xhi = _mm512_shuffle_i64x2::<0xEE>(p0, p1);
                let sums = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xlo), hi, xhi);
                let idx = group_lanes(g);
                acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), _mm512_permutexvar_ps(idx, scales), acc);
                g += 1;
            }
            b0 += span;
        }
        let mut total = _mm512_reduce_add_ps(acc);
        if paired < nb {
            let b = paired;
            let scale = f16c(w.d[b]) * x.d[b];
            total += hsum128(_mm_mul_ps(block_sums(w, x, b), _mm_set1_ps(scale))) + f16c(w.m[b]) * x.sum[b];
        }
        total
    }
}

/// Lane indices that spread block scales 4g..4g+3 of a span over the four lanes of each
/// block's sums.
#[inline(always)]
unsafe fn group_lanes(g: usize) -> __m512i {
    let at = 4 * g as i32;
    // SAFETY: register-only intrinsic; the caller enabled avx512f.
    unsafe {
        _mm512_add_epi32(_mm512_set1_epi32(at), _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3))
    }
}

#[inline(always)]
unsafe fn hsum128(v: __m128) -> f32 {
    // SAFETY: register-only intrinsics; the caller enabled sse3.
    unsafe {
        let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }
}

/// One f16 (as bits) to f32 through F16C.
#[inline(always)]
unsafe fn f16c(bits: u16) -> f32 {
    // SAFETY: register-only intrinsics; the caller enabled f16c.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
}
