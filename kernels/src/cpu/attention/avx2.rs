//! x86-64 AVX2 + FMA (+ F16C for f16 caches) grouped-query attention for head sizes that are multiples of 8. Scores:
//! per dimension, two loads per key block (16 positions) serve every head of the group.
//! Softmax with a vector `exp`. Values: one row at a time, 32 or 16 dimensions per pass (as
//! many as the 16 registers hold for the group), each load shared by the group's heads.

use std::arch::x86_64::*;

use super::GroupView;
use crate::attention::{CacheValue, KEY_BLOCK, SoftmaxPart};
use crate::cpu::avx2::{hmax, hsum};

/// Vectors of 8 per key block.
const HALVES: usize = KEY_BLOCK / 8;

/// 8 cached values from `p` as f32 (f16 widened).
///
/// # Safety
/// avx and f16c are enabled and 8 values from `p` are readable.
#[inline(always)]
unsafe fn load8<T: CacheValue>(p: *const T) -> __m256 {
    // SAFETY: guaranteed by the caller; `T` is f16 exactly when `HALF` (the trait is sealed),
    // so the casts read 8 values of the type they are.
    unsafe {
        if T::HALF { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) } else { _mm256_loadu_ps(p as *const f32) }
    }
}

/// Scaled scores of `U` key blocks from `keys` (blocks `stride` floats apart) for `G` heads,
/// written at `scores` (one row of `row` floats per head).
///
/// # Safety
/// avx2, fma and f16c are enabled; `q` holds `G * hd` values, the blocks lie in the key buffer, and
/// each row has room for `U * KEY_BLOCK` values from `scores`.
#[inline(always)]
unsafe fn score_blocks<T: CacheValue, const G: usize, const U: usize>(
    q: *const f32,
    hd: usize,
    keys: *const T,
    stride: usize,
    scale: __m256,
    scores: *mut f32,
    row: usize,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let mut acc = [[[_mm256_setzero_ps(); HALVES]; U]; G];
        for d in 0..hd {
            let mut k = [[_mm256_setzero_ps(); HALVES]; U];
            for (u, ku) in k.iter_mut().enumerate() {
                for (h, kh) in ku.iter_mut().enumerate() {
                    *kh = load8(keys.add(u * stride + d * KEY_BLOCK + 8 * h));
                }
            }
            for (g, ag) in acc.iter_mut().enumerate() {
                let qd = _mm256_set1_ps(*q.add(g * hd + d));
                for (au, ku) in ag.iter_mut().zip(&k) {
                    for (a, &kh) in au.iter_mut().zip(ku) {
                        *a = _mm256_fmadd_ps(qd, kh, *a);
                    }
                }
            }
        }
        for (g, ag) in acc.iter().enumerate() {
            for (u, au) in ag.iter().enumerate() {
                for (h, &a) in au.iter().enumerate() {
                    _mm256_storeu_ps(scores.add(g * row + u * KEY_BLOCK + 8 * h), _mm256_mul_ps(a, scale));
                }
            }
        }
    }
}

/// `out[g][8 base .. 8 (base + W)] = Σ_j p_g[j] v_j` over the `len` value rows from `values`
/// (rows `kv_dim` apart), the weights `p_g` in score rows of `row` floats.
///
/// # Safety
/// avx2, fma and f16c are enabled; every row holds `8 (base + W)` values from `values`, and `out`
/// holds `G` heads of `hd`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weigh_values<T: CacheValue, const G: usize, const W: usize>(
    values: *const T,
    kv_dim: usize,
    len: usize,
    scores: *const f32,
    row: usize,
    base: usize,
    hd: usize,
    out: *mut f32,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); W]; G];
        for j in 0..len {
            let pv = values.add(j * kv_dim + 8 * base);
            let mut x = [_mm256_setzero_ps(); W];
            for (i, xi) in x.iter_mut().enumerate() {
                *xi = load8(pv.add(8 * i));
            }
            for (g, ag) in acc.iter_mut().enumerate() {
                let p = _mm256_set1_ps(*scores.add(g * row + j));
                for (a, &xi) in ag.iter_mut().zip(&x) {
                    *a = _mm256_fmadd_ps(p, xi, *a);
                }
            }
        }
        for (g, ag) in acc.iter().enumerate() {
            for (i, &a) in ag.iter().enumerate() {
                _mm256_storeu_ps(out.add(g * hd + 8 * (base + i)), a);
            }
        }
    }
}

/// See [`super::attend`]: `G` heads, head size a multiple of 8, `scores` a row of
/// `v.padded_len()` per head.
///
/// # Safety
/// avx2, fma and f16c are enabled and the bounds of `crate::attention::attend_group` hold.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend<T: CacheValue, const G: usize>(
    v: &GroupView<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
    parts: &mut [SoftmaxPart],
) {
    let hd = v.kv.head_dim;
    let len = v.end - v.start;
    let row = v.padded_len();
    let blocks = row / KEY_BLOCK;
    let stride = v.block_stride();
    // SAFETY: the range's key blocks and value rows lie in the cache (checked by the caller),
    // `scores` holds G rows of `row` floats, q and out G heads of hd.
    unsafe {
        let q = v.q.as_ptr();
        let keys = v.kv.keys.as_ptr().add(v.first_key_block());
        let sp = scores.as_mut_ptr();
        let scale = _mm256_set1_ps(v.scale);
        let mut b = 0;
        // Two blocks at a time where the sums of the group fit in registers.
        if G <= 2 {
            while b + 2 <= blocks {
                score_blocks::<T, G, 2>(q, hd, keys.add(b * stride), stride, scale, sp.add(b * KEY_BLOCK), row);
                b += 2;
            }
        }
        while b < blocks {
            score_blocks::<T, G, 1>(q, hd, keys.add(b * stride), stride, scale, sp.add(b * KEY_BLOCK), row);
            b += 1;
        }
        for (g, part) in parts.iter_mut().enumerate().take(G) {
            let r = std::slice::from_raw_parts_mut(sp.add(g * row), row);
            let full = len / 8 * 8;
            let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
            for c in r[..full].chunks_exact(8) {
                m = _mm256_max_ps(m, _mm256_loadu_ps(c.as_ptr()));
            }
            let mut max = hmax(m);
            for &s in &r[full..len] {
                max = max.max(s);
            }
            let maxv = _mm256_set1_ps(max);
            for c in r.chunks_exact_mut(8) {
                _mm256_storeu_ps(c.as_mut_ptr(), exp_ps(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), maxv)));
            }
            // Lanes past the range's end weigh nothing.
            r[len..].fill(0.0);
            let mut sum = _mm256_setzero_ps();
            for c in r.chunks_exact(8) {
                sum = _mm256_add_ps(sum, _mm256_loadu_ps(c.as_ptr()));
            }
            *part = SoftmaxPart { max, sum: hsum(sum) };
        }
        let kv_dim = v.kv.kv_heads * hd;
        let values = v.kv.values.as_ptr().add(v.first_value());
        let po = out.as_mut_ptr();
        let vecs = hd / 8;
        let mut base = 0;
        // 32 dimensions per pass for up to two heads, 16 for more (sums plus loads fit in 16
        // registers).
        if G <= 2 {
            while base + 4 <= vecs {
                weigh_values::<T, G, 4>(values, kv_dim, len, sp, row, base, hd, po);
                base += 4;
            }
        }
        while base + 2 <= vecs {
            weigh_values::<T, G, 2>(values, kv_dim, len, sp, row, base, hd, po);
            base += 2;
        }
        if base < vecs {
            weigh_values::<T, G, 1>(values, kv_dim, len, sp, row, base, hd, po);
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
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0));
    let pow2 = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(y, _mm256_castsi256_ps(pow2))
}
