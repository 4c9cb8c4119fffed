//! Portable Q4_1 x int8 dot product: the reference for the SIMD loops.

use half::f16;

use super::{ActRow, Q4Row};

pub fn dot(w: &Q4Row<'_>, x: &ActRow<'_>) -> f32 {
    let mut s = 0f32;
    for b in 0..w.d.len() {
        let codes = &w.codes[b * 16..(b + 1) * 16];
        let xq = &x.q[b * 32..(b + 1) * 32];
        let mut acc = 0i32;
        for j in 0..16 {
            acc += (codes[j] & 0x0f) as i32 * xq[j] as i32 + (codes[j] >> 4) as i32 * xq[j + 16] as i32;
        }
        let (d, m) = (f16::from_bits(w.d[b]).to_f32(), f16::from_bits(w.m[b]).to_f32());
        s += d * x.d[b] * acc as f32 + m * x.sum[b];
    }
    s
}
