//! x86-64 AVX2 + FMA attention for one head whose size is a multiple of 8 (64 for Llama):
//! scores, softmax and the weighted sum of values in one pass each, no calls in the loops.

use std::arch::x86_64::*;

use super::HeadView;

#[target_feature(enable = "avx2,fma")]
pub unsafe fn attend(h: &HeadView<'_>, scores: &mut [f32], out: &mut [f32]) {
    let hd = h.q.len();
    let vecs = hd / 8;
    let len = scores.len().min(h.len);
    // SAFETY: position j < len reads [j * stride + offset, + hd) of keys and values, which
    // the caller checked lie inside both slices; q and out hold hd values.
    unsafe {
        let pq = h.q.as_ptr();
        let key = |j: usize| h.keys.as_ptr().add(j * h.stride + h.offset);
        let mut maxv = _mm_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        // Four keys at a time: one horizontal reduction (three hadds) serves all four.
        while j + 4 <= len {
            let pk = [key(j), key(j + 1), key(j + 2), key(j + 3)];
            let mut acc = [_mm256_setzero_ps(); 4];
            for v in 0..vecs {
                let qv = _mm256_loadu_ps(pq.add(8 * v));
                for (a, k) in acc.iter_mut().zip(pk) {
                    *a = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add(8 * v)), *a);
                }
            }
            let h4 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
            let s4 = _mm_add_ps(_mm256_castps256_ps128(h4), _mm256_extractf128_ps(h4, 1));
            let s4 = _mm_mul_ps(s4, _mm_set1_ps(h.scale));
            _mm_storeu_ps(scores.as_mut_ptr().add(j), s4);
            maxv = _mm_max_ps(maxv, s4);
            j += 4;
        }
        let m2 = _mm_max_ps(maxv, _mm_movehl_ps(maxv, maxv));
        let mut max = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
        for (j, s) in scores.iter_mut().enumerate().take(len).skip(j) {
            let pk = key(j);
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            let mut v = 0;
            while v + 2 <= vecs {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(8 * v)), _mm256_loadu_ps(pk.add(8 * v)), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(8 * v + 8)), _mm256_loadu_ps(pk.add(8 * v + 8)), acc1);
                v += 2;
            }
            if v < vecs {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(8 * v)), _mm256_loadu_ps(pk.add(8 * v)), acc0);
            }
            let a = _mm256_add_ps(acc0, acc1);
            let t = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
            *s = _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1))) * h.scale;
            max = max.max(*s);
        }
        let mut sumv = _mm256_setzero_ps();
        let maxw = _mm256_set1_ps(max);
        let mut chunks = scores[..len].chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), maxw));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            sumv = _mm256_add_ps(sumv, e);
        }
        let mut sum = 0f32;
        for s in chunks.into_remainder() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let t = _mm_add_ps(_mm256_castps256_ps128(sumv), _mm256_extractf128_ps(sumv, 1));
        let t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        sum += _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
        let inv = 1.0 / sum;
        let po = out.as_mut_ptr();
        // Up to 8 accumulators (hd <= 64) stay in registers; larger heads go in passes of 64.
        let mut base = 0;
        while base < vecs {
            let width = (vecs - base).min(8);
            let mut acc = [_mm256_setzero_ps(); 8];
            for (j, &p) in scores.iter().enumerate().take(len) {
                let pv = h.values.as_ptr().add(j * h.stride + h.offset + 8 * base);
                let w = _mm256_set1_ps(p);
                for (i, a) in acc.iter_mut().enumerate().take(width) {
                    *a = _mm256_fmadd_ps(w, _mm256_loadu_ps(pv.add(8 * i)), *a);
                }
            }
            let invv = _mm256_set1_ps(inv);
            for (i, a) in acc.iter().enumerate().take(width) {
                _mm256_storeu_ps(po.add(8 * (base + i)), _mm256_mul_ps(*a, invv));
            }
            base += width;
        }
    }
}

/// e^x lane by lane for x <= 0 (softmax after the max is subtracted), relative error about
/// 2e-7: x = n ln 2 + r with |r| <= ln2 / 2 (ln 2 split in two for exactness), a degree-6
/// polynomial for e^r (the classic Cephes `expf` coefficients), 2^n built in the exponent
/// bits. Inputs below -87 give e^-87, negligible next to the maximum's 1.
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_ps(x: __m256) -> __m256 {
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
}
