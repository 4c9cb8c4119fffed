//! Grouped-query attention over a KV cache, one KV head per call together with the query
//! heads that share it: for each query head g of the group, `softmax(scale · K q_g) V` over a
//! range of cached positions.
//!
//! Keys are stored transposed in blocks of [`KEY_BLOCK`] positions (per block, per KV head,
//! per dimension, the block's positions side by side), so the scores of a block are one
//! multiply-add chain per dimension with no horizontal sums, and every key and value load
//! serves all heads of the group. Values stay one row per position.
//!
//! The cache holds f32 ([`CacheValue`] for the reference precision) or f16 (half the memory
//! and half the bytes read per step; the loops convert on load).
//!
//! A call over part of the positions returns unnormalized outputs and the softmax state of
//! each head ([`SoftmaxPart`]); [`merge_parts`] combines parts (a long cache split across
//! threads) and [`finish`] normalizes. Bounds are checked here, so the per-ISA loops index
//! freely.

use std::ops::Range;

use half::f16;

use crate::KernelError;
use crate::cpu::attention as inner;

/// Element type of a KV cache: `f32` or `f16` (sealed: the SIMD loops rely on exactly these).
pub trait CacheValue: Copy + Default + Send + Sync + 'static + sealed::Sealed {
    /// True for f16, which the loops widen to f32 on load.
    const HALF: bool;
    /// The value nearest `v`.
    fn from_f32(v: f32) -> Self;
    /// The value as f32 (exact).
    fn to_f32(self) -> f32;
}

impl CacheValue for f32 {
    const HALF: bool = false;
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
}

impl CacheValue for f16 {
    const HALF: bool = true;
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
}

/// Positions per key block of the transposed key layout.
pub const KEY_BLOCK: usize = 16;

/// Floats of a transposed key buffer that holds `positions` positions (whole blocks).
pub fn key_buffer_len(positions: usize, kv_heads: usize, head_dim: usize) -> usize {
    positions.div_ceil(KEY_BLOCK) * KEY_BLOCK * kv_heads * head_dim
}

/// Writes the keys of position `pos` (`kv_heads * head_dim` values, head by head) into the
/// transposed buffer `keys`, growing it by a zeroed block when `pos` starts one.
pub fn store_keys<T: CacheValue>(
    keys: &mut Vec<T>,
    kv_heads: usize,
    head_dim: usize,
    pos: usize,
    k: &[f32],
) -> Result<(), KernelError> {
    let kv_dim = kv_heads * head_dim;
    if k.len() != kv_dim {
        return Err(KernelError::Length { what: "keys of one position", expected: kv_dim, got: k.len() });
    }
    let needed = key_buffer_len(pos + 1, kv_heads, head_dim);
    if keys.len() < needed {
        keys.resize(needed, T::default());
    }
    let block = &mut keys[(pos / KEY_BLOCK) * KEY_BLOCK * kv_dim..][..KEY_BLOCK * kv_dim];
    let slot = pos % KEY_BLOCK;
    for (d, &kd) in k.iter().enumerate() {
        block[d * KEY_BLOCK + slot] = T::from_f32(kd);
    }
    Ok(())
}

/// One KV head of a layer's cache: transposed keys (see the module comment) and row-major
/// values, `kv_heads * head_dim` per position.
pub struct KvHead<'a, T> {
    /// Transposed keys of every KV head.
    pub keys: &'a [T],
    /// Values, one row of `kv_heads * head_dim` per position.
    pub values: &'a [T],
    /// KV heads in the cache.
    pub kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// The head this call attends with.
    pub kv_head: usize,
}

impl<T> Clone for KvHead<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for KvHead<'_, T> {}

/// Softmax state of one query head over a range of positions: the largest score and the sum
/// of `exp(score - max)` (the unnormalized output is weighted the same way).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftmaxPart {
    /// Largest scaled score (negative infinity over no positions).
    pub max: f32,
    /// Sum of `exp(score - max)` (0 over no positions).
    pub sum: f32,
}

impl SoftmaxPart {
    /// The state of an empty range.
    pub const EMPTY: SoftmaxPart = SoftmaxPart { max: f32::NEG_INFINITY, sum: 0.0 };
}

/// Attention of the query heads `q` (`parts.len()` heads of `head_dim`, all sharing
/// `kv.kv_head`) over positions `range`, whose start is a multiple of [`KEY_BLOCK`]. Writes
/// each head's unnormalized output `Σ_j exp(s_j - max) v_j` into `out` and its softmax state
/// into `parts`. `scores` is scratch, reused across calls.
pub fn attend_group<T: CacheValue>(
    kv: &KvHead<'_, T>,
    q: &[f32],
    scale: f32,
    range: Range<usize>,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    parts: &mut [SoftmaxPart],
) -> Result<(), KernelError> {
    let hd = kv.head_dim;
    let heads = parts.len();
    if hd == 0 || heads == 0 {
        return Err(KernelError::Shape(format!("attention with {heads} query heads of {hd} values")));
    }
    if q.len() != heads * hd {
        return Err(KernelError::Length { what: "attention queries", expected: heads * hd, got: q.len() });
    }
    if out.len() != heads * hd {
        return Err(KernelError::Length { what: "attention output", expected: heads * hd, got: out.len() });
    }
    if range.is_empty() || !range.start.is_multiple_of(KEY_BLOCK) {
        return Err(KernelError::Shape(format!(
            "attention over positions {range:?} (a non-empty range starting at a multiple of {KEY_BLOCK})"
        )));
    }
    if kv.kv_head >= kv.kv_heads {
        return Err(KernelError::Shape(format!("KV head {} of {}", kv.kv_head, kv.kv_heads)));
    }
    let key_len = key_buffer_len(range.end, kv.kv_heads, hd);
    let value_len = range.end * kv.kv_heads * hd;
    if kv.keys.len() < key_len || kv.values.len() < value_len {
        return Err(KernelError::Shape(format!(
            "attention over {} positions needs {key_len} key and {value_len} value floats, have {} and {}",
            range.end,
            kv.keys.len(),
            kv.values.len()
        )));
    }
    let view = inner::GroupView { kv: *kv, q, scale, start: range.start, end: range.end };
    inner::attend(&view, scores, out, parts);
    Ok(())
}

/// Folds the part `(other_out, other)` into `(out, parts)`: both are unnormalized outputs of
/// the same heads over disjoint position ranges.
pub fn merge_parts(out: &mut [f32], parts: &mut [SoftmaxPart], other_out: &[f32], other: &[SoftmaxPart]) {
    let hd = out.len() / parts.len().max(1);
    for (g, (p, o)) in parts.iter_mut().zip(other).enumerate() {
        if o.sum == 0.0 {
            continue;
        }
        let max = p.max.max(o.max);
        let (wa, wb) = ((p.max - max).exp(), (o.max - max).exp());
        for (a, &b) in out[g * hd..][..hd].iter_mut().zip(&other_out[g * hd..][..hd]) {
            *a = *a * wa + b * wb;
        }
        *p = SoftmaxPart { max, sum: p.sum * wa + o.sum * wb };
    }
}

/// Divides each head's output by its softmax sum.
pub fn finish(out: &mut [f32], parts: &[SoftmaxPart]) {
    let hd = out.len() / parts.len().max(1);
    for (o, p) in out.chunks_exact_mut(hd.max(1)).zip(parts) {
        let inv = if p.sum > 0.0 { 1.0 / p.sum } else { 0.0 };
        o.iter_mut().for_each(|v| *v *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct softmax attention of one head from row-major keys, in f64.
    fn reference(q: &[f32], keys: &[Vec<f32>], values: &[Vec<f32>], scale: f32) -> Vec<f32> {
        let s: Vec<f64> =
            keys.iter().map(|k| q.iter().zip(k).map(|(a, b)| (a * b) as f64).sum::<f64>() * scale as f64).collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..q.len()).map(|d| (e.iter().zip(values).map(|(p, v)| p * v[d] as f64).sum::<f64>() / sum) as f32).collect()
    }

    #[test]
    fn matches_direct_formula_for_any_group_split_and_rejects_bad_shapes() {
        // The f16 cache's values are within 2^-11 relative of the f32 ones.
        check::<f32>(1e-5);
        check::<f16>(2e-2);
    }

    fn check<T: CacheValue>(tolerance: f32) {
        let (kv_heads, hd) = (2, 16);
        let len = 37;
        let key_rows: Vec<Vec<f32>> = (0..len)
            .map(|j| (0..kv_heads * hd).map(|i| (((j * 31 + i * 7) % 23) as f32 - 11.0) / 9.0).collect())
            .collect();
        let value_rows: Vec<Vec<f32>> = (0..len)
            .map(|j| (0..kv_heads * hd).map(|i| (((j * 13 + i * 5) % 19) as f32 - 9.0) / 7.0).collect())
            .collect();
        let mut keys: Vec<T> = Vec::new();
        for (j, k) in key_rows.iter().enumerate() {
            store_keys(&mut keys, kv_heads, hd, j, k).unwrap();
        }
        assert_eq!(keys.len(), key_buffer_len(len, kv_heads, hd));
        let values: Vec<T> = value_rows.concat().into_iter().map(T::from_f32).collect();
        let heads = 3;
        let q: Vec<f32> = (0..heads * hd).map(|i| ((i * 11 % 17) as f32 - 8.0) / 6.0).collect();
        let kv = KvHead { keys: &keys, values: &values, kv_heads, head_dim: hd, kv_head: 1 };
        let head_rows = |rows: &[Vec<f32>]| rows.iter().map(|r| r[hd..2 * hd].to_vec()).collect::<Vec<_>>();
        let want: Vec<f32> = (0..heads)
            .flat_map(|g| reference(&q[g * hd..][..hd], &head_rows(&key_rows), &head_rows(&value_rows), 0.25))
            .collect();
        let mut scores = Vec::new();
        // Whole range, and the same split in two parts merged.
        let mut out = vec![0f32; heads * hd];
        let mut parts = vec![SoftmaxPart::EMPTY; heads];
        attend_group(&kv, &q, 0.25, 0..len, &mut scores, &mut out, &mut parts).unwrap();
        finish(&mut out, &parts);
        let (mut a, mut pa) = (vec![0f32; heads * hd], vec![SoftmaxPart::EMPTY; heads]);
        let (mut b, mut pb) = (vec![0f32; heads * hd], vec![SoftmaxPart::EMPTY; heads]);
        attend_group(&kv, &q, 0.25, 0..KEY_BLOCK, &mut scores, &mut a, &mut pa).unwrap();
        attend_group(&kv, &q, 0.25, KEY_BLOCK..len, &mut scores, &mut b, &mut pb).unwrap();
        merge_parts(&mut a, &mut pa, &b, &pb);
        finish(&mut a, &pa);
        for (i, w) in want.iter().enumerate() {
            assert!((out[i] - w).abs() < tolerance, "whole range, value {i}: {} vs {w}", out[i]);
            assert!((a[i] - w).abs() < tolerance, "two parts, value {i}: {} vs {w}", a[i]);
        }
        let mut bad = |range: Range<usize>, q: &[f32], kv_head: usize| {
            let kv = KvHead { kv_head, ..kv };
            attend_group(&kv, q, 0.25, range, &mut scores, &mut out, &mut parts).is_err()
        };
        assert!(bad(0..len + 1, &q, 1), "past the cache");
        assert!(bad(3..len, &q, 1), "start inside a block");
        assert!(bad(0..0, &q, 1), "empty range");
        assert!(bad(0..len, &q[1..], 1), "short queries");
        assert!(bad(0..len, &q, 2), "no such KV head");
        assert!(store_keys(&mut keys, kv_heads, hd, len, &[0.0; 3]).is_err());
    }
}
