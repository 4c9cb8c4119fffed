//! Shared helpers of the integration tests: deterministic data and f64 references.
#![allow(dead_code)]

use sieve_kernels::{ActsQ8, MatQ8, QK};

/// Deterministic pseudo-random values in [-scale, scale); about one block in eight of
/// [`QK`] values is all zeros (a zero-scale block), and magnitudes vary by block.
pub fn values(len: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let r = next();
        let block_scale = match r % 8 {
            0 => 0.0,
            1 => scale * 1e-3,
            2 => scale * 10.0,
            _ => scale,
        };
        for _ in 0..QK.min(len - out.len()) {
            let u = (next() >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            out.push((2.0 * u - 1.0) * block_scale);
        }
    }
    out
}

/// Deterministic pseudo-random int8 values over the whole range, -128 included.
pub fn bytes(len: usize, seed: u64) -> Vec<i8> {
    let mut s = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as u8 as i8
        })
        .collect()
}

/// `out[t * rows + r] = sum_i w[r][i] * x[t][i]` in f64, and the matching sums of
/// `|w[r][i] * x[t][i]|` (the scale rounding errors are measured against).
pub fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = vec![0f64; n * rows];
    let mut mag = vec![0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            let (mut s, mut m) = (0f64, 0f64);
            for i in 0..cols {
                let p = w[r * cols + i] as f64 * x[t * cols + i] as f64;
                s += p;
                m += p.abs();
            }
            out[t * rows + r] = s;
            mag[t * rows + r] = m;
        }
    }
    (out, mag)
}

/// The weights of `w` back in f32, row-major.
pub fn dequant_weights(w: &MatQ8) -> Vec<f32> {
    let mut out = vec![0f32; w.rows() * w.cols()];
    for (r, row) in out.chunks_exact_mut(w.cols().max(1)).enumerate().take(w.rows()) {
        w.dequantize_row(r, row);
    }
    out
}

/// The activations of `x` back in f32, row-major.
pub fn dequant_acts(x: &ActsQ8) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.n() * x.cols());
    for t in 0..x.n() {
        for (q, s) in x.row_qs(t).chunks(QK).zip(x.row_scales(t)) {
            out.extend(q.iter().map(|&v| v as f32 * s));
        }
    }
    out
}

/// Asserts `got` matches `want` within `rel` of the magnitude sums (plus a tiny floor).
pub fn assert_close(got: &[f32], want: &[f64], mag: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, ((&g, &w), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = rel * m + 1e-30;
        assert!(
            g.is_finite() && (g as f64 - w).abs() <= tol,
            "{what}: index {i}: got {g}, want {w} (tolerance {tol:e})"
        );
    }
}
