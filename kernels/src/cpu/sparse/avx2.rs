//! x86-64 AVX2 input-sparse accumulation: two active input rows per step, interleaved to
//! i16 pairs so one `vpmaddwd` does 16 multiply-adds into 8 outputs. Integer sums cannot
//! overflow: each step adds at most 2 * 127 * 127 per output, and a row has far fewer than
//! 2^31 / 32258 active pairs.

use std::arch::x86_64::*;

use super::SparsePairs;

/// Adds 16·S outputs starting at `j` over every pair, S slices of 16 at once so each pair's
/// rows are read as whole cache lines (64 outputs) while the sums stay in registers.
#[inline(always)]
unsafe fn slices<const S: usize>(op: &SparsePairs<'_>, j0: usize, j: usize, acc: &mut [i32]) {
    // SAFETY: see `accumulate`; reads w[i * outputs + j0 + j .. + 16 S], stores acc[j .. j + 16 S].
    unsafe {
        let mut lo = [_mm256_setzero_si256(); S];
        let mut hi = [_mm256_setzero_si256(); S];
        for (pair, x) in op.pairs.iter().zip(op.xq) {
            let p1 = op.w.as_ptr().add(pair[0] as usize * op.outputs + j0 + j);
            let p2 = op.w.as_ptr().add(pair[1] as usize * op.outputs + j0 + j);
            let xv = _mm256_set1_epi32(((x[1] as u16 as u32) << 16 | x[0] as u16 as u32) as i32);
            for k in 0..S {
                let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p1.add(16 * k) as *const __m128i));
                let w2 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p2.add(16 * k) as *const __m128i));
                lo[k] = _mm256_add_epi32(lo[k], _mm256_madd_epi16(_mm256_unpacklo_epi16(w1, w2), xv));
                hi[k] = _mm256_add_epi32(hi[k], _mm256_madd_epi16(_mm256_unpackhi_epi16(w1, w2), xv));
            }
        }
        for k in 0..S {
            // lo holds outputs 0-3 | 8-11, hi 4-7 | 12-15 (unpack works per 128-bit lane).
            let dst = acc.as_mut_ptr().add(j + 16 * k);
            _mm256_storeu_si256(dst as *mut __m256i, _mm256_permute2x128_si256(lo[k], hi[k], 0x20));
            _mm256_storeu_si256(dst.add(8) as *mut __m256i, _mm256_permute2x128_si256(lo[k], hi[k], 0x31));
        }
    }
}

#[target_feature(enable = "avx2")]
pub unsafe fn accumulate(op: &SparsePairs<'_>, j0: usize, acc: &mut [i32]) {
    let len = acc.len();
    let mut j = 0;
    // SAFETY: row i reads w[i * outputs + j0 + j ..] within j + 16 S <= len, j0 + len <=
    // outputs and i < inputs (checked by the caller); stores stay inside `acc`.
    unsafe {
        while j + 64 <= len {
            slices::<4>(op, j0, j, acc);
            j += 64;
        }
        while j + 16 <= len {
            slices::<1>(op, j0, j, acc);
            j += 16;
        }
    }
    if j < len {
        super::scalar::accumulate(op, j0 + j, &mut acc[j..]);
    }
}
