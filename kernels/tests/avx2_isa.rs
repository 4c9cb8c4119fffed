//! The AVX2 loops of the f32 input-sparse GEMV through the public API: with
//! `SIEVE_ISA=avx2` the AVX-512F loops are off, so narrow products take the AVX2 row split
//! and wide ones the AVX2 output split, as on a CPU without AVX-512 (on this project's
//! machines the default takes the AVX-512F loops instead). This file holds a single test so
//! the variable is set before anything reads it.

use sieve_kernels::MatF32;
use sieve_kernels::isa;
use sieve_kernels::sparse::{InputMajorF32, gemv_input_sparse_f32};
use sieve_kernels::testdata::values;

#[test]
fn avx2_input_sparse_matches_a_reference() {
    // SAFETY: this is the only test of this binary and it sets the variable before any
    // other thread of ours exists or anything reads the environment.
    unsafe { std::env::set_var("SIEVE_ISA", "avx2") };
    assert!(!isa::avx512f(), "SIEVE_ISA=avx2 keeps the AVX-512F loops off");
    for &(outputs, inputs) in &[(192usize, 576usize), (577, 300), (1100, 64), (2100, 96), (5, 40)] {
        let w = values(outputs * inputs, outputs as u64);
        let x = values(inputs, inputs as u64);
        let wt = InputMajorF32::from_row_major(&MatF32::new(outputs, inputs, w.clone()).expect("shape"));
        for t in [0.0f32, 0.3, 0.8] {
            let mut out = vec![f32::NAN; outputs];
            let active = gemv_input_sparse_f32(&wt, &x, t, &mut out).expect("product");
            assert_eq!(active, x.iter().filter(|v| v.abs() > t).count());
            for (j, got) in out.iter().enumerate() {
                let want: f64 =
                    (0..inputs).filter(|&i| x[i].abs() > t).map(|i| w[j * inputs + i] as f64 * x[i] as f64).sum();
                assert!(
                    (*got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{outputs}x{inputs} t {t}: {got} vs {want}"
                );
            }
        }
    }
}
