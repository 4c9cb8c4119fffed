//! Portable grouped-query attention: the reference for the SIMD loops.

use super::GroupView;
use crate::attention::{CacheValue, KEY_BLOCK, SoftmaxPart};

/// See [`super::attend`]; `scores` holds a row of `v.padded_len()` per head.
pub fn attend<T: CacheValue>(v: &GroupView<'_, T>, scores: &mut [f32], out: &mut [f32], parts: &mut [SoftmaxPart]) {
    let hd = v.kv.head_dim;
    let len = v.end - v.start;
    let row = v.padded_len();
    let kv_dim = v.kv.kv_heads * hd;
    let (first_block, stride, first_value) = (v.first_key_block(), v.block_stride(), v.first_value());
    for (g, part) in parts.iter_mut().enumerate() {
        let q = &v.q[g * hd..][..hd];
        let s = &mut scores[g * row..][..len];
        for (j, sj) in s.iter_mut().enumerate() {
            let block = &v.kv.keys[first_block + (j / KEY_BLOCK) * stride..];
            let slot = j % KEY_BLOCK;
            *sj = q.iter().enumerate().map(|(d, &qd)| qd * block[d * KEY_BLOCK + slot].to_f32()).sum::<f32>() * v.scale;
        }
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for sj in s.iter_mut() {
            *sj = (*sj - max).exp();
            sum += *sj;
        }
        let o = &mut out[g * hd..][..hd];
        o.fill(0.0);
        for (j, &p) in s.iter().enumerate() {
            let values = &v.kv.values[first_value + j * kv_dim..][..hd];
            for (a, &x) in o.iter_mut().zip(values) {
                *a += p * x.to_f32();
            }
        }
        *part = SoftmaxPart { max, sum };
    }
}
