//! Per-ISA inner loops (one file per instruction set) and the dispatch between them.
//!
//! Every function here takes slices whose lengths the caller has already checked; the
//! dispatchers only pick the implementation.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod scalar;

use crate::isa::{active, Isa};

/// Dot product of two f32 slices (over the shorter length, should they differ).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma.
        Isa::Avx2 => unsafe { avx2::dot_f32(a, b) },
        _ => scalar::dot_f32(a, b),
    }
}

/// `y += a * x` (over the shorter length, should they differ).
#[inline]
pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma.
        Isa::Avx2 => unsafe { avx2::axpy_f32(a, x, y) },
        _ => scalar::axpy_f32(a, x, y),
    }
}

/// Dot product of an int8 weight row and an int8 activation row, both in blocks of 32 with
/// one f32 scale per block. (The dense products use the multi-row kernels below; this one is
/// kept for row-selective callers and as the tested reference of the block arithmetic.)
#[inline]
#[allow(dead_code)]
pub fn dot_q8(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f32 {
    debug_assert_eq!(wq.len(), xq.len());
    debug_assert_eq!(ws.len(), xs.len());
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma; lengths are
        // checked by the caller (blocks * 32 values, one scale per block).
        Isa::Avx2 => unsafe { avx2::dot_q8(wq, ws, xq, xs) },
        _ => scalar::dot_q8(wq, ws, xq, xs),
    }
}

/// `R` consecutive f32 rows (`w`: `R * cols` values, row-major) times one activation row.
#[inline]
pub fn f32_rows_x1<const R: usize>(w: &[f32], cols: usize, x: &[f32]) -> [f32; R] {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma; the kernel
        // checks the slice lengths itself.
        Isa::Avx2 => unsafe { avx2::f32_rows_x1::<R>(w, cols, x) },
        _ => scalar::f32_rows_x1::<R>(w, cols, x),
    }
}

/// `R` consecutive f32 rows times four activation rows: `out[r][t] = w[r] · x[t]`.
#[inline]
pub fn f32_rows_x4<const R: usize>(w: &[f32], cols: usize, x: [&[f32]; 4]) -> [[f32; 4]; R] {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `f32_rows_x1`.
        Isa::Avx2 => unsafe { avx2::f32_rows_x4::<R>(w, cols, x) },
        _ => scalar::f32_rows_x4::<R>(w, cols, x),
    }
}

/// `R` consecutive int8 rows of `nb` blocks (`wq`: `R * nb * 32` values, `ws`: `R * nb`
/// scales) times one quantized activation row (`nb * 32` values, `nb` scales).
#[inline]
pub fn q8_rows_x1<const R: usize>(wq: &[i8], ws: &[f32], nb: usize, xq: &[i8], xs: &[f32]) -> [f32; R] {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `f32_rows_x1`.
        Isa::Avx2 => unsafe { avx2::q8_rows_x1::<R>(wq, ws, nb, xq, xs) },
        _ => scalar::q8_rows_x1::<R>(wq, ws, nb, xq, xs),
    }
}

/// `R` consecutive int8 rows times four quantized activation rows, `out[r][t]`; the
/// activation scales come transposed: `xst[4 * b + t]` is block b of token t.
#[inline]
pub fn q8_rows_x4<const R: usize>(wq: &[i8], ws: &[f32], nb: usize, xq: [&[i8]; 4], xst: &[f32]) -> [[f32; 4]; R] {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `f32_rows_x1`.
        Isa::Avx2 => unsafe { avx2::q8_rows_x4::<R>(wq, ws, nb, xq, xst) },
        _ => scalar::q8_rows_x4::<R>(wq, ws, nb, xq, xst),
    }
}

#[cfg(test)]
mod tests {
    //! Each SIMD kernel against its scalar counterpart on the same inputs, and the scalar
    //! kernels against plain loops. The AVX2 half runs only where the CPU has avx2 + fma.

    use super::scalar;
    use crate::QK;
    use proptest::prelude::*;

    fn floats(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 3.0
            })
            .collect()
    }

    /// int8 values over the whole range (weights may hold -128) or [-127, 127] (activations).
    fn ints(len: usize, seed: u64, full: bool) -> Vec<i8> {
        floats(len, seed)
            .iter()
            .map(|v| if full { (v * 42.7) as i32 as i8 } else { (v * 42.4).clamp(-127.0, 127.0) as i8 })
            .collect()
    }

    fn naive_q8(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> f64 {
        naive_q8_mag(wq, ws, xq, xs).0
    }

    /// The product and the sum of the magnitudes of its terms.
    fn naive_q8_mag(wq: &[i8], ws: &[f32], xq: &[i8], xs: &[f32]) -> (f64, f64) {
        let (mut s, mut m) = (0f64, 0f64);
        for (i, (&w, &x)) in wq.iter().zip(xq).enumerate() {
            let p = w as f64 * ws[i / QK] as f64 * x as f64 * xs[i / QK] as f64;
            s += p;
            m += p.abs();
        }
        (s, m)
    }

    fn close(a: f32, b: f64, mag: f64) -> bool {
        (a as f64 - b).abs() <= 1e-5 * mag + 1e-6
    }

    #[cfg(target_arch = "x86_64")]
    fn have_avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    #[test]
    fn scalar_q8_matches_naive_with_extreme_values() {
        let wq = vec![-128i8; 64];
        let xq = vec![-127i8; 64];
        let (ws, xs) = ([0.5f32, 2.0], [1.0f32, 0.25]);
        let want = naive_q8(&wq, &ws, &xq, &xs);
        assert_eq!(scalar::dot_q8(&wq, &ws, &xq, &xs) as f64, want);
        let [a, b] = scalar::q8_rows_x1::<2>(&[wq.clone(), wq.clone()].concat(), &[ws, ws].concat(), 2, &xq, &xs);
        assert_eq!((a as f64, b as f64), (want, want));
    }

    #[test]
    fn scalar_kernels_tolerate_short_slices() {
        assert_eq!(scalar::dot_f32(&[1.0, 2.0, 3.0], &[1.0]), 1.0);
        assert_eq!(scalar::f32_rows_x1::<2>(&[1.0; 3], 2, &[1.0; 2]), [2.0, 0.0]);
        assert_eq!(scalar::q8_rows_x1::<2>(&[1; 32], &[1.0], 1, &[1; 32], &[1.0]), [32.0, 0.0]);
        assert_eq!(scalar::q8_rows_x4::<2>(&[1; 32], &[1.0], 1, [&[1; 32]; 4], &[1.0; 4])[1], [0.0; 4]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_kernels_tolerate_short_slices() {
        if !have_avx2() {
            return;
        }
        // SAFETY: avx2 and fma are present (checked above).
        unsafe {
            assert_eq!(super::avx2::dot_f32(&[1.0; 9], &[2.0; 3]), 6.0);
            let mut y = [1.0f32; 3];
            super::avx2::axpy_f32(2.0, &[1.0; 10], &mut y);
            assert_eq!(y, [3.0; 3]);
            assert_eq!(super::avx2::dot_q8(&[1; 64], &[1.0; 2], &[1; 32], &[1.0; 2]), 32.0);
            assert_eq!(super::avx2::f32_rows_x1::<4>(&[1.0; 7], 2, &[1.0; 2]), [0.0; 4]);
            assert_eq!(super::avx2::f32_rows_x4::<2>(&[1.0; 4], 2, [&[1.0; 1]; 4]), [[0.0; 4]; 2]);
            assert_eq!(super::avx2::q8_rows_x1::<4>(&[1; 96], &[1.0; 4], 1, &[1; 32], &[1.0]), [0.0; 4]);
            assert_eq!(super::avx2::q8_rows_x4::<1>(&[1; 32], &[1.0], 1, [&[1; 32]; 4], &[1.0; 3]), [[0.0; 4]]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn scalar_f32_kernels_match_naive(rows in 1usize..6, cols in 0usize..100, seed: u64) {
            let w = floats(4 * cols, seed);
            let x: Vec<Vec<f32>> = (0..4).map(|t| floats(cols, seed ^ t)).collect();
            let xs = [&x[0][..], &x[1][..], &x[2][..], &x[3][..]];
            let naive = |r: usize, t: usize| -> (f64, f64) {
                let p = (0..cols).map(|i| w[r * cols + i] as f64 * x[t][i] as f64);
                (p.clone().sum(), p.map(f64::abs).sum())
            };
            let one = scalar::f32_rows_x1::<4>(&w, cols, xs[0]);
            let four = scalar::f32_rows_x4::<4>(&w, cols, xs);
            for r in 0..rows.min(4) {
                let (v, m) = naive(r, 0);
                prop_assert!(close(one[r], v, m));
                for t in 0..4 {
                    let (v, m) = naive(r, t);
                    prop_assert!(close(four[r][t], v, m));
                }
            }
            let mut y = x[1].clone();
            scalar::axpy_f32(0.5, &x[0], &mut y);
            for i in 0..cols {
                prop_assert_eq!(y[i], x[1][i] + 0.5 * x[0][i]);
            }
        }

        #[test]
        fn scalar_q8_kernels_match_naive(nb in 0usize..12, seed: u64) {
            let wq = ints(4 * nb * QK, seed, true);
            let ws: Vec<f32> = floats(4 * nb, seed ^ 1).iter().map(|v| v.abs()).collect();
            let xq: Vec<Vec<i8>> = (0..4).map(|t| ints(nb * QK, seed ^ (t + 2), false)).collect();
            let xs: Vec<Vec<f32>> = (0..4).map(|t| floats(nb, seed ^ (t + 9)).iter().map(|v| v.abs()).collect()).collect();
            let xst: Vec<f32> = (0..4 * nb).map(|i| xs[i % 4][i / 4]).collect();
            let xqa = [&xq[0][..], &xq[1][..], &xq[2][..], &xq[3][..]];
            let one = scalar::q8_rows_x1::<4>(&wq, &ws, nb, &xq[0], &xs[0]);
            let four = scalar::q8_rows_x4::<4>(&wq, &ws, nb, xqa, &xst);
            for r in 0..4 {
                let (rq, rs) = (&wq[r * nb * QK..(r + 1) * nb * QK], &ws[r * nb..(r + 1) * nb]);
                let (want, mag) = naive_q8_mag(rq, rs, &xq[0], &xs[0]);
                prop_assert!(close(scalar::dot_q8(rq, rs, &xq[0], &xs[0]), want, mag));
                prop_assert!(close(one[r], want, mag));
                for t in 0..4 {
                    let (want, mag) = naive_q8_mag(rq, rs, &xq[t], &xs[t]);
                    prop_assert!(close(four[r][t], want, mag));
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn avx2_f32_kernels_match_scalar(cols in 0usize..150, a in -4f32..4.0, seed: u64) {
            if !have_avx2() {
                return Ok(());
            }
            let w = floats(4 * cols, seed);
            let x: Vec<Vec<f32>> = (0..4).map(|t| floats(cols, seed ^ (t + 1))).collect();
            let xs = [&x[0][..], &x[1][..], &x[2][..], &x[3][..]];
            let mag: f32 = w.iter().map(|v| v.abs() * 3.0).sum::<f32>() + 1.0;
            let near = |a: f32, b: f32| (a - b).abs() <= 1e-5 * mag;
            // SAFETY: avx2 and fma are present (checked above); every slice holds the
            // lengths the kernels read.
            unsafe {
                let (wr, x0) = (&w[..cols], xs[0]);
                prop_assert!(near(super::avx2::dot_f32(wr, x0), scalar::dot_f32(wr, x0)));
                let mut y1 = x[1].clone();
                let mut y2 = x[1].clone();
                super::avx2::axpy_f32(a, x0, &mut y1);
                scalar::axpy_f32(a, x0, &mut y2);
                for (p, q) in y1.iter().zip(&y2) {
                    prop_assert!((p - q).abs() <= 1e-6 * (1.0 + q.abs()));
                }
                let got = super::avx2::f32_rows_x1::<4>(&w, cols, x0);
                let want = scalar::f32_rows_x1::<4>(&w, cols, x0);
                prop_assert!(got.iter().zip(&want).all(|(&p, &q)| near(p, q)), "{:?} {:?}", got, want);
                let got = super::avx2::f32_rows_x1::<1>(&w, cols, x0);
                prop_assert!(near(got[0], want[0]));
                let want = scalar::f32_rows_x4::<4>(&w, cols, xs);
                let got4 = super::avx2::f32_rows_x4::<4>(&w, cols, xs);
                let got2 = super::avx2::f32_rows_x4::<2>(&w, cols, xs);
                let got1 = super::avx2::f32_rows_x4::<1>(&w, cols, xs);
                for t in 0..4 {
                    for r in 0..4 {
                        prop_assert!(near(got4[r][t], want[r][t]));
                    }
                    prop_assert!(near(got2[0][t], want[0][t]) && near(got2[1][t], want[1][t]));
                    prop_assert!(near(got1[0][t], want[0][t]));
                }
            }
        }

        #[test]
        fn avx2_q8_kernels_match_scalar(nb in 0usize..12, seed: u64) {
            if !have_avx2() {
                return Ok(());
            }
            let wq = ints(4 * nb * QK, seed, true);
            let ws: Vec<f32> = floats(4 * nb, seed ^ 1).iter().map(|v| v.abs()).collect();
            let xq: Vec<Vec<i8>> = (0..4).map(|t| ints(nb * QK, seed ^ (t + 2), false)).collect();
            let xs: Vec<Vec<f32>> = (0..4).map(|t| floats(nb, seed ^ (t + 9)).iter().map(|v| v.abs()).collect()).collect();
            let xst: Vec<f32> = (0..4 * nb).map(|i| xs[i % 4][i / 4]).collect();
            let xqa = [&xq[0][..], &xq[1][..], &xq[2][..], &xq[3][..]];
            // Only the order of f32 additions differs: a few ulps of the largest term sum.
            let mag = (0..4)
                .flat_map(|r| (0..4).map(move |t| (r, t)))
                .map(|(r, t)| naive_q8_mag(&wq[r * nb * QK..(r + 1) * nb * QK], &ws[r * nb..(r + 1) * nb], &xq[t], &xs[t]).1)
                .fold(0f64, f64::max) as f32;
            let near = |a: f32, b: f32| (a - b).abs() <= 1e-6 * mag + 1e-6;
            // SAFETY: avx2 and fma are present (checked above); every slice holds the
            // lengths the kernels read.
            unsafe {
                let want1 = scalar::q8_rows_x1::<4>(&wq, &ws, nb, &xq[0], &xs[0]);
                let got1 = super::avx2::q8_rows_x1::<4>(&wq, &ws, nb, &xq[0], &xs[0]);
                let got11 = super::avx2::q8_rows_x1::<1>(&wq, &ws, nb, &xq[0], &xs[0]);
                let dot = super::avx2::dot_q8(&wq[..nb * QK], &ws[..nb], &xq[0], &xs[0]);
                prop_assert!(near(got11[0], want1[0]) && near(dot, want1[0]));
                let want4 = scalar::q8_rows_x4::<4>(&wq, &ws, nb, xqa, &xst);
                let got4 = super::avx2::q8_rows_x4::<4>(&wq, &ws, nb, xqa, &xst);
                let got41 = super::avx2::q8_rows_x4::<1>(&wq, &ws, nb, xqa, &xst);
                for r in 0..4 {
                    prop_assert!(near(got1[r], want1[r]), "row {}: {} vs {}", r, got1[r], want1[r]);
                    for t in 0..4 {
                        prop_assert!(near(got4[r][t], want4[r][t]), "{} {}: {} vs {}", r, t, got4[r][t], want4[r][t]);
                    }
                }
                for t in 0..4 {
                    prop_assert!(near(got41[0][t], want4[0][t]));
                }
            }
        }
    }
}
