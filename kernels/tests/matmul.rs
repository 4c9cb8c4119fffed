//! Property tests: the dense products against f64 references, for arbitrary shapes that
//! exercise the row tiles (4 rows and leftovers), the four-token kernels and token tails,
//! and the parallel split.

mod common;

use common::{assert_close, bytes, dequant_acts, dequant_weights, reference, values};
use proptest::prelude::*;
use sieve_kernels::{ActsQ8, KernelError, MatF32, MatQ8, QK, matmul_f32, matmul_q8};

fn check_f32(rows: usize, cols: usize, n: usize, seed: u64) {
    let w = values(rows * cols, seed, 1.0);
    let x = values(n * cols, seed ^ 0xABCD, 2.0);
    let m = MatF32::new(rows, cols, w.clone()).expect("shape");
    let mut out = vec![f32::NAN; rows * n];
    matmul_f32(&m, &x, n, &mut out).expect("product");
    let (want, mag) = reference(&w, rows, cols, &x, n);
    assert_close(&out, &want, &mag, 1e-5, "matmul_f32");
}

/// The q8 product against the f64 product of the dequantized operands: only f32 rounding
/// of the scales and of the accumulation separates them.
fn check_q8(rows: usize, cols: usize, n: usize, seed: u64) {
    let w = values(rows * cols, seed, 1.0);
    let m = MatQ8::quantize(rows, cols, &w).expect("shape");
    let mut x = ActsQ8::default();
    x.quantize_from(&values(n * cols, seed ^ 0x1234, 3.0), n, cols).expect("shape");
    let mut out = vec![f32::NAN; rows * n];
    matmul_q8(&m, &x, &mut out).expect("product");
    let (want, mag) = reference(&dequant_weights(&m), rows, cols, &dequant_acts(&x), n);
    assert_close(&out, &want, &mag, 1e-4, "matmul_q8");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn f32_matches_f64_reference(rows in 1usize..70, cols in 1usize..200, n in 1usize..12, seed: u64) {
        check_f32(rows, cols, n, seed);
    }

    #[test]
    fn q8_matches_f64_reference_of_dequantized(rows in 1usize..70, blocks in 1usize..=10, n in 1usize..12, seed: u64) {
        check_q8(rows, blocks * QK, n, seed);
    }

    /// Against the unquantized product, the q8 error stays within the rounding of each
    /// operand: |sum w x - sum w' x'| <= sum |w| dx + |x'| dw, with dw, dx half a step.
    #[test]
    fn q8_error_is_bounded_by_quantization(rows in 1usize..20, blocks in 1usize..=6, n in 1usize..6, seed: u64) {
        let cols = blocks * QK;
        let w = values(rows * cols, seed, 1.0);
        let xf = values(n * cols, !seed, 1.0);
        let m = MatQ8::quantize(rows, cols, &w).expect("shape");
        let mut x = ActsQ8::default();
        x.quantize_from(&xf, n, cols).expect("shape");
        let xd = dequant_acts(&x);
        let mut out = vec![0f32; rows * n];
        matmul_q8(&m, &x, &mut out).expect("product");
        let (exact, mag) = reference(&w, rows, cols, &xf, n);
        for t in 0..n {
            for r in 0..rows {
                let mut bound = 1e-4 * mag[t * rows + r];
                for i in 0..cols {
                    let dw = m.row_scales(r)[i / QK] as f64 * 0.5;
                    let dx = x.row_scales(t)[i / QK] as f64 * 0.5;
                    bound += (w[r * cols + i] as f64).abs() * dx + (xd[t * cols + i] as f64).abs() * dw;
                }
                let err = (out[t * rows + r] as f64 - exact[t * rows + r]).abs();
                prop_assert!(err <= bound * 1.0001 + 1e-30, "row {} token {}: error {} > bound {}", r, t, err, bound);
            }
        }
    }

    /// Weights given as raw parts may use the whole int8 range, -128 included.
    #[test]
    fn q8_from_parts_full_int8_range(rows in 1usize..40, blocks in 1usize..=8, n in 1usize..10, seed: u64) {
        let cols = blocks * QK;
        let scales: Vec<f32> = values(rows * blocks, seed, 1.0).iter().map(|v| v.abs() + 1e-3).collect();
        let m = MatQ8::from_parts(rows, cols, bytes(rows * cols, seed), scales).expect("parts");
        let mut x = ActsQ8::default();
        x.quantize_from(&values(n * cols, seed ^ 7, 1.0), n, cols).expect("shape");
        let mut out = vec![0f32; rows * n];
        matmul_q8(&m, &x, &mut out).expect("product");
        let (want, mag) = reference(&dequant_weights(&m), rows, cols, &dequant_acts(&x), n);
        assert_close(&out, &want, &mag, 1e-4, "matmul_q8 from_parts");
    }
}

/// Shapes large enough to split over the pool, with leftover rows in the last chunk.
#[test]
fn large_products_split_over_threads() {
    for &(rows, cols, n) in &[(1031, 96, 1), (1031, 96, 9), (517, 320, 1), (4099, 64, 5)] {
        check_q8(rows, cols, n, rows as u64);
        check_f32(rows, cols + 3, n, rows as u64);
    }
}

/// The q8 GEMM's blocking: K chunks (more than 24 blocks), row blocks of 32 with leftovers,
/// token passes that widen the weights (64 tokens and more) or not, several passes, and
/// tokens past the last group of four.
#[test]
fn q8_gemm_blocking_edges() {
    for &(rows, cols, n) in &[(70, 1600, 67), (33, 800, 64), (37, 96, 261), (5, 768, 63), (64, 4096, 20), (3, 32, 259)]
    {
        check_q8(rows, cols, n, (rows * n) as u64);
    }
}

#[test]
fn empty_products_are_fine() {
    let m = MatQ8::quantize(0, 64, &[]).expect("empty matrix");
    let mut x = ActsQ8::default();
    x.quantize_from(&[0.5; 64], 1, 64).expect("acts");
    matmul_q8(&m, &x, &mut []).expect("no rows");
    let m = MatQ8::quantize(3, 64, &[1.0; 192]).expect("matrix");
    x.quantize_from(&[], 0, 64).expect("no tokens");
    matmul_q8(&m, &x, &mut []).expect("no tokens");
    let f = MatF32::new(3, 5, vec![1.0; 15]).expect("matrix");
    matmul_f32(&f, &[], 0, &mut []).expect("no tokens");
    let z = MatF32::new(2, 0, vec![]).expect("no columns");
    let mut out = [f32::NAN; 2];
    matmul_f32(&z, &[], 1, &mut out).expect("no columns");
    assert_eq!(out, [0.0, 0.0]);
}

#[test]
fn zero_activations_give_zero() {
    let m = MatQ8::quantize(5, 64, &values(5 * 64, 3, 1.0)).expect("matrix");
    let mut x = ActsQ8::default();
    x.quantize_from(&[0.0; 128], 2, 64).expect("acts");
    let mut out = [f32::NAN; 10];
    matmul_q8(&m, &x, &mut out).expect("product");
    assert!(out.iter().all(|&v| v == 0.0));
}

#[test]
fn shape_errors_are_reported_not_panicked() {
    let f = MatF32::new(3, 4, vec![1.0; 12]).expect("matrix");
    let mut out = vec![0f32; 6];
    assert!(matches!(matmul_f32(&f, &[0.0; 7], 2, &mut out), Err(KernelError::Length { what: "activations", .. })));
    assert!(matches!(matmul_f32(&f, &[0.0; 8], 2, &mut out[..5]), Err(KernelError::Length { what: "output", .. })));
    assert!(matches!(matmul_f32(&f, &[0.0; 8], usize::MAX, &mut out), Err(KernelError::Shape(_))));

    let q = MatQ8::quantize(3, 64, &[1.0; 192]).expect("matrix");
    let mut x = ActsQ8::default();
    x.quantize_from(&[1.0; 64], 2, 32).expect("acts");
    assert!(matches!(matmul_q8(&q, &x, &mut out), Err(KernelError::Shape(_))));
    x.quantize_from(&[1.0; 128], 2, 64).expect("acts");
    assert!(matches!(matmul_q8(&q, &x, &mut out[..5]), Err(KernelError::Length { what: "output", .. })));
    matmul_q8(&q, &x, &mut out).expect("right shapes");

    assert!(matches!(MatQ8::from_parts(2, 64, vec![0; 128], vec![1.0; 3]), Err(KernelError::Length { .. })));
    assert!(matches!(MatQ8::from_parts(2, 48, vec![0; 96], vec![1.0; 3]), Err(KernelError::Block { .. })));
    assert!(matches!(MatQ8::quantize(2, 64, &[0.0; 100]), Err(KernelError::Length { .. })));
    assert!(MatF32::new(usize::MAX, 2, vec![]).is_err());
    assert!(MatQ8::quantize(usize::MAX, 64, &[]).is_err());
    assert!(x.quantize_from(&[], usize::MAX, 64).is_err());
}
