//! Sparse GEMVs against dense products on masked inputs, for arbitrary shapes (including
//! sizes that are not multiples of the SIMD width) and masks (empty, full, random).

use proptest::prelude::*;
use sieve_kernels::sparse::{
    InputMajorF32, InputMajorQ8, RowMajor, SparseScratch, Vector, gemv_input_sparse_f32, gemv_input_sparse_q8,
    gemv_rows, swiglu_gated, swiglu_rows,
};
use sieve_kernels::{ActsQ8, InputMajorQ4_1, MatF32, MatQ4_1, MatQ8, gemv_input_sparse_q4_1};

fn lcg(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Dense f64 product of the f32 weights with the masked input.
fn dense_masked(w: &[f32], outputs: usize, inputs: usize, x: &[f32], t: f32) -> Vec<f64> {
    (0..outputs)
        .map(|j| (0..inputs).filter(|&i| x[i].abs() > t).map(|i| w[j * inputs + i] as f64 * x[i] as f64).sum())
        .collect()
}

/// Threshold that keeps roughly `keep` of the inputs (0: none, 1: all).
fn threshold_for(x: &[f32], keep: f64) -> f32 {
    if keep >= 1.0 {
        return 0.0;
    }
    let mut a: Vec<f32> = x.iter().map(|v| v.abs()).collect();
    a.sort_by(f32::total_cmp);
    let idx = ((1.0 - keep) * a.len() as f64) as usize;
    a.get(idx.min(a.len() - 1)).copied().unwrap_or(0.0).max(0.0) + if keep <= 0.0 { 1.0 } else { 0.0 }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn input_sparse_f32_equals_dense_on_masked_input(
        // Up to 384 outputs the threads split the active rows; up to 2048 the outputs, in
        // segments summed in registers (AVX-512F); wider (and below 2048 without AVX-512F),
        // the active rows again, read whole, or runs summed in L1 when only a few are active.
        outputs in prop_oneof![1usize..150, 370usize..420, 1000usize..2600], inputs in 1usize..150, keep in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0], seed in 0u64..1000,
    ) {
        let w = lcg(outputs * inputs, seed);
        let x = lcg(inputs, seed + 1);
        let t = threshold_for(&x, keep);
        let wt = InputMajorF32::from_row_major(&MatF32::new(outputs, inputs, w.clone()).unwrap());
        let mut out = vec![0f32; outputs];
        let active = gemv_input_sparse_f32(&wt, &x, t, &mut out).unwrap();
        prop_assert_eq!(active, x.iter().filter(|v| v.abs() > t).count());
        for (got, want) in out.iter().zip(dense_masked(&w, outputs, inputs, &x, t)) {
            prop_assert!((*got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "{} vs {}", got, want);
        }
    }

    #[test]
    fn input_sparse_q8_equals_dense_on_masked_input(
        outputs in 1usize..150, inputs in 1usize..150, keep in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0], seed in 0u64..1000,
    ) {
        let w = lcg(outputs * inputs, seed);
        let x = lcg(inputs, seed + 7);
        let t = threshold_for(&x, keep);
        let wt = InputMajorQ8::from_row_major(outputs, inputs, &w).unwrap();
        let mut out = vec![0f32; outputs];
        gemv_input_sparse_q8(&wt, &x, t, &mut out, &mut SparseScratch::default()).unwrap();
        // Reference: the quantized weights times the active inputs, in f64. Activation
        // quantization (one int8 scale over the active set) bounds the remaining error.
        let amax = x.iter().filter(|v| v.abs() > t).fold(0f32, |m, v| m.max(v.abs())) as f64;
        for (j, got) in out.iter().enumerate() {
            let want: f64 = (0..inputs).filter(|&i| x[i].abs() > t).map(|i| wt.get(i, j) as f64 * x[i] as f64).sum();
            let wmax = (0..inputs).fold(0f64, |m, i| m.max(wt.get(i, j).abs() as f64));
            let bound = inputs as f64 * wmax * amax / 254.0 + 1e-5;
            prop_assert!((*got as f64 - want).abs() <= bound, "{} vs {} (bound {})", got, want, bound);
        }
    }

    #[test]
    fn output_sparse_rows_equal_the_dense_rows(
        rows in 1usize..120, blocks in 1usize..6, pick in proptest::collection::vec(any::<prop::sample::Index>(), 0..80), seed in 0u64..1000,
    ) {
        let cols = blocks * 32;
        let w = lcg(rows * cols, seed);
        let x = lcg(cols, seed + 3);
        let list: Vec<u32> = pick.iter().map(|i| i.index(rows) as u32).collect();
        let (wf, wq, w4) = (
            MatF32::new(rows, cols, w.clone()).unwrap(),
            MatQ8::quantize(rows, cols, &w).unwrap(),
            MatQ4_1::quantize(rows, cols, &w).unwrap(),
        );
        let mut acts = ActsQ8::default();
        acts.quantize_from(&x, 1, cols).unwrap();
        for (weights, vector) in [
            (RowMajor::F32(&wf), Vector::F32(&x)),
            (RowMajor::Q8(&wq), Vector::Q8(&acts)),
            (RowMajor::Q4(&w4), Vector::Q8(&acts)),
        ] {
            let mut dense = vec![0f32; rows];
            match &weights {
                RowMajor::F32(m) => sieve_kernels::matmul_f32(m, &x, 1, &mut dense).unwrap(),
                RowMajor::Q8(m) => sieve_kernels::matmul_q8(m, &acts, &mut dense).unwrap(),
                RowMajor::Q4(m) => sieve_kernels::matmul_q4_1(m, &acts, &mut dense).unwrap(),
            }
            let mut out = vec![0f32; list.len()];
            gemv_rows(&weights, &vector, &list, &mut out).unwrap();
            for (k, &r) in list.iter().enumerate() {
                let want = dense[r as usize];
                prop_assert!((out[k] - want).abs() <= 1e-4 * (1.0 + want.abs()), "row {}: {} vs {}", r, out[k], want);
            }
            // CATS's gated SwiGLU (gate = up = W here): kept where |silu(g)| > t, else 0.
            let t = 0.05 + (seed % 7) as f32 * 0.1;
            let mut gated = vec![f32::NAN; rows];
            let kept = swiglu_gated(&weights, &weights, &vector, t, &mut gated).unwrap();
            let mut want_kept = 0;
            for (r, &g) in dense.iter().enumerate() {
                let a = g / (1.0 + (-g).exp());
                // Within rounding of the threshold either decision is right.
                if (a.abs() - t).abs() < 1e-4 * (1.0 + t) {
                    want_kept += usize::from(gated[r] != 0.0);
                    continue;
                }
                let want = if a.abs() > t { a * g } else { 0.0 };
                want_kept += usize::from(a.abs() > t);
                prop_assert!((gated[r] - want).abs() <= 1e-3 * (1.0 + want.abs()), "gated row {}: {} vs {}", r, gated[r], want);
            }
            prop_assert_eq!(kept, want_kept);
            let mut h = vec![0f32; list.len()];
            swiglu_rows(&weights, &weights, &vector, &list, &mut h).unwrap();
            for (k, &r) in list.iter().enumerate() {
                let g = dense[r as usize];
                let want = g / (1.0 + (-g).exp()) * g;
                prop_assert!((h[k] - want).abs() <= 1e-3 * (1.0 + want.abs()), "swiglu row {}: {} vs {}", r, h[k], want);
            }
        }
    }
}

#[test]
fn bad_operands_are_errors() {
    let w = MatF32::new(4, 3, vec![0.5; 12]).unwrap();
    let wt = InputMajorF32::from_row_major(&w);
    let mut out = vec![0f32; 4];
    assert!(gemv_input_sparse_f32(&wt, &[1.0; 2], 0.0, &mut out).is_err());
    assert!(gemv_input_sparse_f32(&wt, &[1.0; 3], -1.0, &mut out).is_err());
    assert!(gemv_input_sparse_f32(&wt, &[1.0; 3], f32::NAN, &mut out).is_err());
    assert!(gemv_input_sparse_f32(&wt, &[1.0; 3], 0.0, &mut [0.0; 3]).is_err());
    assert!(InputMajorQ8::from_row_major(4, 3, &[0.0; 11]).is_err());
    let mut o2 = vec![0f32; 2];
    assert!(gemv_rows(&RowMajor::F32(&w), &Vector::F32(&[1.0; 3]), &[0, 4], &mut o2).is_err());
    assert!(gemv_rows(&RowMajor::F32(&w), &Vector::F32(&[1.0; 2]), &[0, 1], &mut o2).is_err());
    assert!(gemv_rows(&RowMajor::F32(&w), &Vector::F32(&[1.0; 3]), &[0], &mut o2).is_err());
    let mut acts = ActsQ8::default();
    acts.quantize_from(&[0.0; 32], 1, 32).unwrap();
    assert!(gemv_rows(&RowMajor::F32(&w), &Vector::Q8(&acts), &[0, 1], &mut o2).is_err());
}

/// A matrix without outputs (or without inputs) is a product like any other: nothing to
/// write, the active inputs still counted.
#[test]
fn empty_matrices_are_fine() {
    for (outputs, inputs) in [(0usize, 5usize), (5, 0), (0, 0)] {
        let wt = InputMajorF32::from_row_major(&MatF32::new(outputs, inputs, vec![1.0; outputs * inputs]).unwrap());
        let x = vec![2.0f32; inputs];
        let mut out = vec![7.0f32; outputs];
        assert_eq!(gemv_input_sparse_f32(&wt, &x, 1.0, &mut out).unwrap(), inputs);
        assert!(out.iter().all(|&v| v == 0.0), "{outputs} x {inputs}: {out:?}");
    }
}

/// Input-sparse Q4_1 against the dense Q4_1 GEMV on the masked input (quantized by
/// `ActsQ8`): equal up to f32 summation order, relative to the output's magnitude.
fn check_q4_against_dense(outputs: usize, inputs: usize, x: &[f32], t: f32, seed: u64) {
    let w = lcg(outputs * inputs, seed);
    let w4 = MatQ4_1::quantize(outputs, inputs, &w).unwrap();
    let wt = InputMajorQ4_1::from_row_major(&w4).unwrap();
    assert_eq!((wt.inputs(), wt.outputs()), (inputs, outputs));
    let masked: Vec<f32> = x.iter().map(|&v| if v.abs() > t { v } else { 0.0 }).collect();
    let mut acts = ActsQ8::default();
    acts.quantize_from(&masked, 1, inputs).unwrap();
    let mut want = vec![0f32; outputs];
    sieve_kernels::matmul_q4_1(&w4, &acts, &mut want).unwrap();
    let mut got = vec![f32::NAN; outputs];
    let active = gemv_input_sparse_q4_1(&wt, x, t, &mut got, &mut SparseScratch::default()).unwrap();
    assert_eq!(active, x.iter().filter(|v| v.abs() > t).count());
    // Scale: Σ |w_ji x̂_i| over the row, the largest over outputs.
    let mut row = vec![0f32; inputs];
    let mut scale = 0f64;
    for j in 0..outputs {
        w4.dequantize_row(j, &mut row);
        let (q, s) = (acts.row_qs(0), acts.row_scales(0));
        let mag: f64 = (0..inputs).map(|i| (row[i] as f64 * q[i] as f64 * s[i / 32] as f64).abs()).sum();
        scale = scale.max(mag);
        assert_eq!(wt.get(inputs - 1, j), row[inputs - 1]);
    }
    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (*g as f64 - *w as f64).abs() <= 1e-5 * scale + 1e-30,
            "{outputs}x{inputs} t {t} output {j}: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn input_sparse_q4_1_equals_dense_on_masked_input() {
    for &outputs in &[1usize, 77, 96, 576, 1536] {
        for &inputs in &[32usize, 64, 576, 1536] {
            let seed = (outputs * 31 + inputs) as u64;
            let x = lcg(inputs, seed + 5);
            for keep in [0.0, 1.0, 0.75, 0.5, 0.25, 0.1] {
                check_q4_against_dense(outputs, inputs, &x, threshold_for(&x, keep), seed);
            }
            // All-zero input: every output is exactly zero.
            let wt =
                InputMajorQ4_1::from_row_major(&MatQ4_1::quantize(outputs, inputs, &lcg(outputs * inputs, 1)).unwrap())
                    .unwrap();
            let mut out = vec![1f32; outputs];
            let n =
                gemv_input_sparse_q4_1(&wt, &vec![0.0; inputs], 0.0, &mut out, &mut SparseScratch::default()).unwrap();
            assert_eq!(n, 0);
            assert!(out.iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn input_sparse_q4_1_single_active_input_per_block() {
    // Exactly one active input in some blocks (odd count), three in another, none elsewhere.
    for &(outputs, inputs) in &[(77usize, 96usize), (130, 576), (1536, 64)] {
        let mut x = vec![0.01f32; inputs];
        x[5] = 0.9;
        x[inputs - 1] = -0.3;
        if inputs > 64 {
            x[40] = 0.5;
            x[41] = -0.25;
            x[63] = 0.125;
        }
        check_q4_against_dense(outputs, inputs, &x, 0.05, 9);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn input_sparse_q4_1_random_shapes(
        outputs in 1usize..300, blocks in 1usize..8, keep in prop_oneof![Just(0.0), Just(1.0), 0.0f64..1.0], seed in 0u64..1000,
    ) {
        let inputs = blocks * 32;
        let x = lcg(inputs, seed + 13);
        check_q4_against_dense(outputs, inputs, &x, threshold_for(&x, keep), seed);
    }
}

#[test]
fn input_sparse_q4_1_rejects_bad_operands() {
    let wt = InputMajorQ4_1::from_row_major(&MatQ4_1::quantize(4, 32, &[0.5; 128]).unwrap()).unwrap();
    let mut s = SparseScratch::default();
    let mut out = vec![0f32; 4];
    assert!(gemv_input_sparse_q4_1(&wt, &[1.0; 31], 0.0, &mut out, &mut s).is_err());
    assert!(gemv_input_sparse_q4_1(&wt, &[1.0; 32], -1.0, &mut out, &mut s).is_err());
    assert!(gemv_input_sparse_q4_1(&wt, &[1.0; 32], f32::NAN, &mut out, &mut s).is_err());
    assert!(gemv_input_sparse_q4_1(&wt, &[1.0; 32], 0.0, &mut [0.0; 3], &mut s).is_err());
    assert_eq!(gemv_input_sparse_q4_1(&wt, &[1.0; 32], 0.0, &mut out, &mut s), Ok(32));
    assert!(wt.bytes() >= 4 * 32 / 2 + 4 * 4);
}
