//! x86-64 AVX-512 grouped-query attention for head sizes that are multiples of 16. Scores:
//! per dimension, one load per key block (16 positions) serves every head of the group, four
//! blocks at a time. Softmax with a vector `exp`. Values: one row at a time, 64 dimensions
//! per pass, each load shared by the group's heads.

use std::arch::x86_64::*;

use super::GroupView;
use crate::attention::{CacheValue, KEY_BLOCK, SoftmaxPart};

/// 16 cached values from `p` as f32 (f16 widened).
///
/// # Safety
/// avx512f is enabled and 16 values from `p` are readable.
#[inline(always)]
unsafe fn load16<T: CacheValue>(p: *const T) -> __m512 {
    // SAFETY: guaranteed by the caller; `T` is f16 exactly when `HALF` (the trait is sealed),
    // so the casts read 16 values of the type they are.
    unsafe {
        if T::HALF {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        } else {
            _mm512_loadu_ps(p as *const f32)
        }
    }
}

/// Scaled scores of `U` key blocks from `keys` (blocks `stride` floats apart) for `G` heads,
/// written at `scores` (one row of `row` floats per head).
///
/// # Safety
/// avx512f is enabled; `q` holds `G * hd` values, the blocks lie in the key buffer, and each
/// row has room for `U * KEY_BLOCK` values from `scores`.
#[inline(always)]
unsafe fn score_blocks<T: CacheValue, const G: usize, const U: usize>(
    q: *const f32,
    hd: usize,
    keys: *const T,
    stride: usize,
    scale: __m512,
    scores: *mut f32,
    row: usize,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); U]; G];
        for d in 0..hd {
            let mut k = [_mm512_setzero_ps(); U];
            for (u, ku) in k.iter_mut().enumerate() {
                *ku = load16(keys.add(u * stride + d * KEY_BLOCK));
            }
            for (g, ag) in acc.iter_mut().enumerate() {
                let qd = _mm512_set1_ps(*q.add(g * hd + d));
                for (a, &ku) in ag.iter_mut().zip(&k) {
                    *a = _mm512_fmadd_ps(qd, ku, *a);
                }
            }
        }
        for (g, ag) in acc.iter().enumerate() {
            for (u, &a) in ag.iter().enumerate() {
                _mm512_storeu_ps(scores.add(g * row + u * KEY_BLOCK), _mm512_mul_ps(a, scale));
            }
        }
    }
}

/// `out[g][16 base .. 16 (base + W)] = Σ_j p_g[j] v_j` over the `len` value rows from `values`
/// (rows `kv_dim` apart), the weights `p_g` in score rows of `row` floats.
///
/// # Safety
/// avx512f is enabled; every row holds `16 (base + W)` values from `values`, and `out` holds
/// `G` heads of `hd`.
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
        let mut acc = [[_mm512_setzero_ps(); W]; G];
        for j in 0..len {
            let pv = values.add(j * kv_dim + 16 * base);
            let mut x = [_mm512_setzero_ps(); W];
            for (i, xi) in x.iter_mut().enumerate() {
                *xi = load16(pv.add(16 * i));
            }
            for (g, ag) in acc.iter_mut().enumerate() {
                let p = _mm512_set1_ps(*scores.add(g * row + j));
                for (a, &xi) in ag.iter_mut().zip(&x) {
                    *a = _mm512_fmadd_ps(p, xi, *a);
                }
            }
        }
        for (g, ag) in acc.iter().enumerate() {
            for (i, &a) in ag.iter().enumerate() {
                _mm512_storeu_ps(out.add(g * hd + 16 * (base + i)), a);
            }
        }
    }
}

/// See [`super::attend`]: `G` heads, head size a multiple of 16, `scores` a row of
/// `v.padded_len()` per head.
///
/// # Safety
/// avx512f is enabled and the bounds of `crate::attention::attend_group` hold.
#[target_feature(enable = "avx512f")]
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
        let scale = _mm512_set1_ps(v.scale);
        let mut b = 0;
        while b + 4 <= blocks {
            score_blocks::<T, G, 4>(q, hd, keys.add(b * stride), stride, scale, sp.add(b * KEY_BLOCK), row);
            b += 4;
        }
        while b < blocks {
            score_blocks::<T, G, 1>(q, hd, keys.add(b * stride), stride, scale, sp.add(b * KEY_BLOCK), row);
            b += 1;
        }
        // Lanes of the last block past the range's end are left out of the max and zeroed.
        let tail = len - (blocks - 1) * KEY_BLOCK;
        let tail_mask: __mmask16 = if tail == KEY_BLOCK { 0xffff } else { (1u16 << tail) - 1 };
        for (g, part) in parts.iter_mut().enumerate().take(G) {
            let r = sp.add(g * row);
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            for c in 0..blocks - 1 {
                m = _mm512_max_ps(m, _mm512_loadu_ps(r.add(c * KEY_BLOCK)));
            }
            m = _mm512_mask_max_ps(m, tail_mask, m, _mm512_loadu_ps(r.add((blocks - 1) * KEY_BLOCK)));
            let max = _mm512_reduce_max_ps(m);
            let maxv = _mm512_set1_ps(max);
            let mut sum = _mm512_setzero_ps();
            for c in 0..blocks {
                let mut e = exp(_mm512_sub_ps(_mm512_loadu_ps(r.add(c * KEY_BLOCK)), maxv));
                if c == blocks - 1 {
                    e = _mm512_maskz_mov_ps(tail_mask, e);
                }
                _mm512_storeu_ps(r.add(c * KEY_BLOCK), e);
                sum = _mm512_add_ps(sum, e);
            }
            *part = SoftmaxPart { max, sum: _mm512_reduce_add_ps(sum) };
        }
        let kv_dim = v.kv.kv_heads * hd;
        let values = v.kv.values.as_ptr().add(v.first_value());
        let po = out.as_mut_ptr();
        let vecs = hd / 16;
        let mut base = 0;
        while base + 4 <= vecs {
            weigh_values::<T, G, 4>(values, kv_dim, len, sp, row, base, hd, po);
            base += 4;
        }
        match vecs - base {
            3 => weigh_values::<T, G, 3>(values, kv_dim, len, sp, row, base, hd, po),
            2 => weigh_values::<T, G, 2>(values, kv_dim, len, sp, row, base, hd, po),
            1 => weigh_values::<T, G, 1>(values, kv_dim, len, sp, row, base, hd, po),
            _ => {}
        }
    }
}

/// e^x lane by lane for x <= 0 (softmax after the max is subtracted), relative error about
/// 2e-7: x = n ln 2 + r with |r| <= ln2 / 2 (ln 2 split in two for exactness), the classic
/// Cephes `expf` polynomial for e^r, then scaled by 2^n. Inputs below -87 give e^-87.
#[inline(always)]
unsafe fn exp(x: __m512) -> __m512 {
    // SAFETY: register-only intrinsics; the caller enabled avx512f.
    unsafe {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut y = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(y, n)
    }
}
