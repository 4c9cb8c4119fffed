//! Low-bit gate copies in the Q4_1 layout of the fast kernels. A b-bit grid of
//! [`crate::model::quantize_bits`] (levels (k + 1/2) · step, k in -2^(b-1)..2^(b-1)) is, for
//! b <= 4, exactly `d · c + m` with d = step, m = -7.5 · step and code c = k + 8 in 0..16. So
//! such a copy runs through the Q4_1 GEMV and reads 0.625 bytes per weight instead of the
//! 1.06 of an int8 copy: the predictor's bytes shrink to what its bits are worth.

use half::f16;
use sieve_kernels::{MatQ4_1, QK};

/// Widest grid the 4-bit codes hold.
pub const MAX_GRID_BITS: u8 = 4;

/// `w` (rows x cols, row-major, cols a multiple of 32) as Q4_1 blocks, each group's step
/// recovered from its values. `None` when a group is not on a b-bit grid of odd half-steps
/// (weights not made by `quantize_bits`), when b > 4, or when the step does not survive f16:
/// callers then keep an int8 copy.
pub fn grid_to_q4_1(rows: usize, cols: usize, w: &[f32], bits: u8) -> Option<MatQ4_1> {
    if !(1..=MAX_GRID_BITS).contains(&bits) || cols % QK != 0 || w.len() != rows * cols {
        return None;
    }
    let mut raw = Vec::with_capacity(w.len() / QK * 20);
    for group in w.chunks_exact(QK) {
        let (d, m, codes) = pack_group(group, bits)?;
        raw.extend_from_slice(&d.to_bits().to_le_bytes());
        raw.extend_from_slice(&m.to_bits().to_le_bytes());
        for j in 0..QK / 2 {
            raw.push(codes[j] | (codes[j + QK / 2] << 4));
        }
    }
    MatQ4_1::from_ggml(rows, cols, &raw).ok()
}

/// One group's f16 scale and minimum and its 4-bit codes.
fn pack_group(group: &[f32], bits: u8) -> Option<(f16, f16, [u8; QK])> {
    let mut codes = [0u8; QK];
    let smallest = group.iter().map(|v| v.abs()).filter(|&a| a > 0.0).fold(f32::INFINITY, f32::min);
    if !smallest.is_finite() {
        // Every weight zero (a zero-RMS group): d = m = 0 gives zeros for any code.
        return group.iter().all(|&v| v == 0.0).then_some((f16::ZERO, f16::ZERO, codes));
    }
    // The smallest magnitude is some level (j + 1/2) · step; the first j that puts every
    // value on the grid gives an exact representation (a coarser grid found first still
    // holds every value, with codes inside 0..16).
    let levels = 1usize << (bits - 1);
    let step = (0..levels).map(|j| smallest / (j as f32 + 0.5)).find(|&s| {
        group.iter().all(|&v| {
            let c = v / s + 7.5;
            (c - c.round()).abs() < 1e-3 && (-0.5..15.5).contains(&c)
        })
    })?;
    // m from the rounded d, so that the two roundings meet at the grid's centre rather than
    // add up across it.
    let d = f16::from_f32(step);
    let m = f16::from_f32(-7.5 * d.to_f32());
    if d.to_f32() <= 0.0 || !d.is_finite() || !m.is_finite() {
        return None;
    }
    let (df, mf) = (d.to_f32(), m.to_f32());
    for (code, &v) in codes.iter_mut().zip(group) {
        let c = (v / step + 7.5).round().clamp(0.0, 15.0);
        // f16 keeps 11 bits: d is off by at most 2^-11 of a step, which |c - 7.5| <= 7.5
        // scales, and m's own rounding adds as much: at most 0.0074 of a step in all (small
        // beside the grid's own error, step / sqrt(12)); more means the step left f16's range.
        if (df * c + mf - v).abs() > 0.01 * step {
            return None;
        }
        *code = c as u8;
    }
    Some((d, m, codes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::quantize_bits;

    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut z = seed;
        (0..n)
            .map(|_| {
                z = z.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                // Roughly Gaussian: a sum of uniforms, scaled like a gate's weights.
                (0..4).map(|k| ((z >> (16 * k)) & 0xffff) as f32 / 65536.0 - 0.5).sum::<f32>() * 0.05
            })
            .collect()
    }

    #[test]
    fn every_grid_up_to_four_bits_packs_without_loss() {
        let (rows, cols) = (24, 96);
        for bits in 1..=4u8 {
            for seed in 0..4 {
                let mut w = quantize_bits(&weights(rows * cols, seed), bits).unwrap();
                // A zero group (zero RMS), and a group on two levels only (a coarser grid).
                w[..QK].fill(0.0);
                w[QK..2 * QK].iter_mut().enumerate().for_each(|(i, v)| *v = if i % 2 == 0 { 0.3 } else { -0.3 });
                let q = grid_to_q4_1(rows, cols, &w, bits)
                    .unwrap_or_else(|| panic!("{bits} bits, seed {seed}: a quantize_bits grid packs"));
                assert_eq!(q.bytes(), rows * cols / QK * 20);
                let mut row = vec![0f32; cols];
                for r in 0..rows {
                    q.dequantize_row(r, &mut row);
                    for (a, b) in row.iter().zip(&w[r * cols..(r + 1) * cols]) {
                        // Every level is at least half a step from zero; f16 d and m stay
                        // within 0.01 of a step.
                        assert!((a - b).abs() <= 0.02 * b.abs(), "{bits} bits, row {r}: {a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn many_groups_at_every_scale_pack() {
        // f16's rounding of d and m lands anywhere in its binade: thousands of groups at scales
        // from 1e-3 to 1 find the worst of it.
        let (rows, cols) = (64, 576);
        let mut w = weights(rows * cols, 11);
        for (r, row) in w.chunks_exact_mut(cols).enumerate() {
            let scale = 10f32.powf(-3.0 + 3.0 * r as f32 / rows as f32) * 20.0;
            row.iter_mut().for_each(|v| *v *= scale);
        }
        for bits in 1..=4u8 {
            let q = quantize_bits(&w, bits).unwrap();
            assert!(grid_to_q4_1(rows, cols, &q, bits).is_some(), "{bits} bits");
        }
    }

    #[test]
    fn weights_off_a_grid_or_too_wide_are_left_to_int8() {
        let w = weights(8 * 64, 7);
        assert!(grid_to_q4_1(8, 64, &w, 4).is_none(), "raw weights are on no grid");
        let five = quantize_bits(&w, 5).unwrap();
        assert!(grid_to_q4_1(8, 64, &five, 5).is_none(), "5 bits do not fit 4-bit codes");
        let four = quantize_bits(&w, 4).unwrap();
        assert!(grid_to_q4_1(8, 48, &four[..8 * 48], 4).is_none(), "48 columns are not whole blocks");
        assert!(grid_to_q4_1(8, 64, &four[..100], 4).is_none(), "wrong length");
    }
}
