//! Inner loops of grouped-query attention (one file per ISA) and their dispatch. The caller
//! (`crate::attention`) checked every bound.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use crate::attention::{CacheValue, KEY_BLOCK, KvHead, SoftmaxPart};
use crate::isa::{Isa, active};

/// Query heads the SIMD loops take at once (their registers hold this many heads' sums); a
/// larger group runs in slices of this size.
const MAX_GROUP: usize = 4;

/// The query heads of one KV head over positions `start..end` (`start` a multiple of
/// [`KEY_BLOCK`], `end` inside the cache).
pub struct GroupView<'a, T> {
    pub kv: KvHead<'a, T>,
    pub q: &'a [f32],
    pub scale: f32,
    pub start: usize,
    pub end: usize,
}

impl<T> GroupView<'_, T> {
    /// Positions rounded up to whole key blocks: the length of each head's score row.
    fn padded_len(&self) -> usize {
        (self.end - self.start).div_ceil(KEY_BLOCK) * KEY_BLOCK
    }
    /// Floats from one key block to the next.
    fn block_stride(&self) -> usize {
        KEY_BLOCK * self.kv.kv_heads * self.kv.head_dim
    }
    /// Offset of this KV head's part of the first block of the range.
    fn first_key_block(&self) -> usize {
        (self.start / KEY_BLOCK) * self.block_stride() + self.kv.kv_head * self.kv.head_dim * KEY_BLOCK
    }
    /// Offset of position `start`'s values of this KV head.
    fn first_value(&self) -> usize {
        (self.start * self.kv.kv_heads + self.kv.kv_head) * self.kv.head_dim
    }
    /// The same view for query heads `heads` of the group.
    fn heads(&self, heads: std::ops::Range<usize>) -> GroupView<'_, T> {
        let hd = self.kv.head_dim;
        GroupView { q: &self.q[heads.start * hd..heads.end * hd], ..*self }
    }
}

impl<T> Clone for GroupView<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for GroupView<'_, T> {}

/// Unnormalized attention outputs and softmax states of the view's heads (see
/// [`crate::attention::attend_group`]).
pub fn attend<T: CacheValue>(v: &GroupView<'_, T>, scores: &mut Vec<f32>, out: &mut [f32], parts: &mut [SoftmaxPart]) {
    let hd = v.kv.head_dim;
    scores.clear();
    scores.resize(MAX_GROUP * v.padded_len(), 0.0);
    for g0 in (0..parts.len()).step_by(MAX_GROUP) {
        let g1 = (g0 + MAX_GROUP).min(parts.len());
        let sub = v.heads(g0..g1);
        let (o, p) = (&mut out[g0 * hd..g1 * hd], &mut parts[g0..g1]);
        #[cfg(target_arch = "x86_64")]
        if hd.is_multiple_of(16) && crate::gemm_vnni::enabled() {
            // SAFETY: `enabled()` is true only where avx512f is present; the bounds were
            // checked by `crate::attention::attend_group`, `scores` holds a padded row per head.
            unsafe {
                match g1 - g0 {
                    1 => avx512::attend::<T, 1>(&sub, scores, o, p),
                    2 => avx512::attend::<T, 2>(&sub, scores, o, p),
                    3 => avx512::attend::<T, 3>(&sub, scores, o, p),
                    _ => avx512::attend::<T, 4>(&sub, scores, o, p),
                }
            }
            continue;
        }
        match active() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma; bounds
            // as above.
            Isa::Avx2 if hd.is_multiple_of(8) => unsafe {
                match g1 - g0 {
                    1 => avx2::attend::<T, 1>(&sub, scores, o, p),
                    2 => avx2::attend::<T, 2>(&sub, scores, o, p),
                    3 => avx2::attend::<T, 3>(&sub, scores, o, p),
                    _ => avx2::attend::<T, 4>(&sub, scores, o, p),
                }
            },
            _ => scalar::attend(&sub, scores, o, p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{key_buffer_len, store_keys};

    /// A cache of `len` positions: transposed keys and row-major values.
    fn cache<T: CacheValue>(len: usize, kv_heads: usize, hd: usize) -> (Vec<T>, Vec<T>) {
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for j in 0..len {
            let k: Vec<f32> = (0..kv_heads * hd).map(|i| (((j * 29 + i * 7) % 97) as f32 - 48.0) / 40.0).collect();
            store_keys(&mut keys, kv_heads, hd, j, &k).unwrap();
            values.extend((0..kv_heads * hd).map(|i| T::from_f32((((j * 13 + i * 3) % 89) as f32 - 44.0) / 30.0)));
        }
        assert_eq!(keys.len(), key_buffer_len(len, kv_heads, hd));
        (keys, values)
    }

    fn run<T: CacheValue>(v: &GroupView<'_, T>, heads: usize, simd: bool) -> (Vec<f32>, Vec<SoftmaxPart>) {
        let hd = v.kv.head_dim;
        let mut out = vec![0f32; heads * hd];
        let mut parts = vec![SoftmaxPart::EMPTY; heads];
        if simd {
            attend(v, &mut Vec::new(), &mut out, &mut parts);
        } else {
            let mut scores = vec![0f32; MAX_GROUP * v.padded_len()];
            for g0 in (0..heads).step_by(MAX_GROUP) {
                let g1 = (g0 + MAX_GROUP).min(heads);
                scalar::attend(&v.heads(g0..g1), &mut scores, &mut out[g0 * hd..g1 * hd], &mut parts[g0..g1]);
            }
        }
        (out, parts)
    }

    /// Every group size (including one above the SIMD slice), head sizes that use every
    /// register layout, ranges that start on later blocks and end inside one; f32 and f16
    /// caches.
    #[test]
    fn simd_matches_scalar() {
        simd_matches_scalar_for::<f32>();
        simd_matches_scalar_for::<half::f16>();
    }

    fn simd_matches_scalar_for<T: CacheValue>() {
        for (hd, kv_heads) in [(16, 2), (64, 3), (80, 1), (128, 2)] {
            for heads in 1..=5 {
                for (start, end) in [(0, 1), (0, 15), (0, 16), (0, 37), (16, 300), (32, 97)] {
                    let (keys, values) = cache::<T>(end, kv_heads, hd);
                    let q: Vec<f32> = (0..heads * hd).map(|i| ((i * 7 % 23) as f32 - 11.0) / 10.0).collect();
                    let kv = KvHead { keys: &keys, values: &values, kv_heads, head_dim: hd, kv_head: kv_heads - 1 };
                    let v = GroupView { kv, q: &q, scale: 0.125, start, end };
                    let (want, want_parts) = run(&v, heads, false);
                    // The AVX-512 loop where the CPU has it, then the AVX2 one.
                    for avx2_only in [false, true] {
                        crate::gemm_vnni::FORCE_OFF.with(|f| f.set(avx2_only));
                        let (got, got_parts) = run(&v, heads, true);
                        crate::gemm_vnni::FORCE_OFF.with(|f| f.set(false));
                        let at = format!(
                            "{}: hd {hd}, {heads} heads, positions {start}..{end}, avx2 only {avx2_only}",
                            std::any::type_name::<T>()
                        );
                        for (w, g) in want_parts.iter().zip(&got_parts) {
                            assert!((w.max - g.max).abs() < 1e-5, "{at}: max {} vs {}", w.max, g.max);
                            assert!((w.sum - g.sum).abs() < 1e-4 * w.sum, "{at}: sum {} vs {}", w.sum, g.sum);
                        }
                        for (w, g) in want.iter().zip(&got) {
                            assert!((w - g).abs() < 1e-4 * (1.0 + w.abs()), "{at}: {w} vs {g}");
                        }
                    }
                }
            }
        }
    }
}
