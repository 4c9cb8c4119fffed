//! The portable fallback through the public API: `SIEVE_ISA=scalar` must select it, and it
//! must agree with the f64 references (the SIMD paths are checked against it in the unit
//! tests). This file holds a single test so the variable is set before anything reads it.

mod common;

use common::{assert_close, dequant_acts, dequant_weights, reference, values};
use sieve_kernels::isa::{self, Isa};
use sieve_kernels::{ActsQ8, MatF32, MatQ8, matmul_f32, matmul_q8, ops};

#[test]
fn scalar_fallback_matches_references() {
    // SAFETY: this is the only test of this binary and it sets the variable before any
    // other thread of ours exists or anything reads the environment.
    unsafe { std::env::set_var("SIEVE_ISA", "scalar") };
    assert_eq!(isa::active(), Isa::Scalar);
    assert_eq!(isa::active().name(), "scalar");
    assert!(matches!(isa::detect(), Isa::Scalar | Isa::Avx2));

    for &(rows, cols, n) in
        &[(1, 32, 1), (7, 64, 3), (33, 96, 4), (65, 160, 9), (517, 320, 1), (300, 64, 11), (40, 800, 66)]
    {
        let w = values(rows * cols, rows as u64, 1.0);
        let m = MatQ8::quantize(rows, cols, &w).expect("shape");
        let mut x = ActsQ8::default();
        x.quantize_from(&values(n * cols, n as u64, 2.0), n, cols).expect("shape");
        let mut out = vec![f32::NAN; rows * n];
        matmul_q8(&m, &x, &mut out).expect("product");
        let (want, mag) = reference(&dequant_weights(&m), rows, cols, &dequant_acts(&x), n);
        assert_close(&out, &want, &mag, 1e-4, "scalar matmul_q8");

        let cols = cols + 5;
        let w = values(rows * cols, rows as u64, 1.0);
        let xf = values(n * cols, 3, 1.0);
        let mut out = vec![f32::NAN; rows * n];
        matmul_f32(&MatF32::new(rows, cols, w.clone()).expect("shape"), &xf, n, &mut out).expect("product");
        let (want, mag) = reference(&w, rows, cols, &xf, n);
        assert_close(&out, &want, &mag, 1e-5, "scalar matmul_f32");
    }

    let (a, b) = (values(37, 1, 1.0), values(37, 2, 1.0));
    let want: f64 = a.iter().zip(&b).map(|(&p, &q)| p as f64 * q as f64).sum();
    assert!((ops::dot(&a, &b) as f64 - want).abs() < 1e-5);
    let mut y = b.clone();
    ops::axpy(2.0, &a, &mut y);
    assert!(y.iter().zip(a.iter().zip(&b)).all(|(&y, (&a, &b))| (y - (b + 2.0 * a)).abs() < 1e-6));
}
