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
        let mut max = f32::NEG_INFINITY;
        for (j, s) in scores.iter_mut().enumerate().take(len) {
            let pk = h.keys.as_ptr().add(j * h.stride + h.offset);
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
        let mut sum = 0f32;
        for s in scores.iter_mut().take(len) {
            *s = (*s - max).exp();
            sum += *s;
        }
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
