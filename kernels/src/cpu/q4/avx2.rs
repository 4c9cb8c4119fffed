//! x86-64 AVX2 + FMA + F16C Q4_1 x int8 loops. Callers guarantee the features and that
//! every slice covers the same number of blocks.

use std::arch::x86_64::*;

use super::{ActRow, Q4Row};
use crate::cpu::avx2::hsum;

/// One f16 (as bits) to f32 through F16C.
#[inline(always)]
unsafe fn f16(bits: u16) -> f32 {
    // SAFETY: register-only intrinsics; the caller enabled f16c.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
}

/// The 32 codes of block `b` as unsigned bytes, in value order.
#[inline(always)]
unsafe fn codes(w: &Q4Row<'_>, b: usize) -> __m256i {
    // SAFETY: reads bytes [16b, 16b + 16) of `codes`, which holds 16 bytes per block.
    unsafe {
        let packed = _mm_loadu_si128(w.codes.as_ptr().add(b * 16) as *const __m128i);
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(packed, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
        _mm256_set_m128i(hi, lo)
    }
}

/// Σ codes * x of one block as 8 f32 lanes. Codes are <= 15, so the pairwise i16 sums of
/// maddubs stay far from saturation (2 * 15 * 128).
#[inline(always)]
unsafe fn block(q: __m256i, x: &[i8], b: usize) -> __m256 {
    // SAFETY: reads bytes [32b, 32b + 32) of `x`, which holds 32 values per block.
    unsafe {
        let xv = _mm256_loadu_si256(x.as_ptr().add(b * 32) as *const __m256i);
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(p)
    }
}

/// Block scales (`d * dx`) of up to 8 blocks starting at `b0`, and `Σ m * sum` over them.
#[inline(always)]
unsafe fn scales8(w: &Q4Row<'_>, x: &ActRow<'_>, b0: usize, nb: usize, out: &mut [f32; 8]) -> f32 {
    let k = (nb - b0).min(8);
    // SAFETY: full groups read 8 entries at b0 + 8 <= nb; the tail goes through scalars.
    unsafe {
        if k == 8 {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(b0) as *const __m128i));
            let m = _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(b0) as *const __m128i));
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_mul_ps(d, _mm256_loadu_ps(x.d.as_ptr().add(b0))));
            hsum(_mm256_mul_ps(m, _mm256_loadu_ps(x.sum.as_ptr().add(b0))))
        } else {
            let mut mins = 0f32;
            for (i, o) in out.iter_mut().enumerate().take(k) {
                *o = f16(w.d[b0 + i]) * x.d[b0 + i];
                mins += f16(w.m[b0 + i]) * x.sum[b0 + i];
            }
            mins
        }
    }
}

/// Σ codes * x of blocks b and b + 1 at once: 32 bytes of codes split into low and high
/// nibbles line up with the pair-ordered activations. Lanes 0-3 hold block b's sum, 4-7
/// block b + 1's. Two maddubs sums stay below 2 * 2 * 15 * 128, far from i16 saturation.
#[inline(always)]
unsafe fn block_pair(w: &Q4Row<'_>, pair_q: &[i8], b: usize) -> __m256 {
    // SAFETY: reads codes [16b, 16b + 32) and pair_q [32b, 32b + 64); the caller ensures
    // b + 1 < nb.
    unsafe {
        let packed = _mm256_loadu_si256(w.codes.as_ptr().add(b * 16) as *const __m256i);
        let mask = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(packed, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
        let xlo = _mm256_loadu_si256(pair_q.as_ptr().add(b * 32) as *const __m256i);
        let xhi = _mm256_loadu_si256(pair_q.as_ptr().add(b * 32 + 32) as *const __m256i);
        let p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(w: &Q4Row<'_>, x: &ActRow<'_>) -> f32 {
    let nb = w.d.len().min(w.m.len()).min(w.codes.len() / 16).min(x.d.len()).min(x.sum.len());
    let nb = nb.min(x.q.len() / 32).min(x.pair_q.len() / 32);
    let mut mins = 0f32;
    let mut sc = [0f32; 8];
    // SAFETY: every block index is < nb, within all slices; pairs need b + 1 < nb.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut b0 = 0;
        while b0 < nb {
            mins += scales8(w, x, b0, nb, &mut sc);
            let k = (nb - b0).min(8);
            let scv = _mm256_loadu_ps(sc.as_ptr());
            let mut i = 0;
            while i + 2 <= k {
                let idx = _mm256_setr_epi32(
                    i as i32,
                    i as i32,
                    i as i32,
                    i as i32,
                    i as i32 + 1,
                    i as i32 + 1,
                    i as i32 + 1,
                    i as i32 + 1,
                );
                let p = block_pair(w, x.pair_q, b0 + i);
                acc[(i / 2) & 1] = _mm256_fmadd_ps(p, _mm256_permutevar8x32_ps(scv, idx), acc[(i / 2) & 1]);
                i += 2;
            }
            if i < k {
                // A last odd block (pair order leaves it as it was).
                let p = block(codes(w, b0 + i), x.q, b0 + i);
                acc[0] = _mm256_fmadd_ps(p, _mm256_set1_ps(sc[i]), acc[0]);
            }
            b0 += 8;
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) + mins
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_x4(w: &Q4Row<'_>, x: &[ActRow<'_>; 4]) -> [f32; 4] {
    let mut nb = w.d.len().min(w.m.len()).min(w.codes.len() / 16);
    for xk in x {
        nb = nb.min(xk.d.len()).min(xk.sum.len()).min(xk.q.len() / 32);
    }
    let mut out = [0f32; 4];
    // SAFETY: every block index is < nb, within all slices.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..nb {
            let q = codes(w, b);
            let (d, m) = (f16(w.d[b]), f16(w.m[b]));
            for k in 0..4 {
                let p = block(q, x[k].q, b);
                acc[k] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * x[k].d[b]), acc[k]);
                out[k] += m * x[k].sum[b];
            }
        }
        for k in 0..4 {
            out[k] += hsum(acc[k]);
        }
    }
    out
}
