//! The block operations against direct f64 formulas, their invariants, and their handling
//! of inconsistent lengths (an error from the `try_` forms, never a panic).

mod common;

use common::values;
use proptest::prelude::*;
use sieve_kernels::KernelError;
use sieve_kernels::ops::{self, Rope};

fn rel_close(a: f32, b: f64, tol: f64) -> bool {
    (a as f64 - b).abs() <= tol * (1.0 + b.abs())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn rms_norm_matches_formula(len in 1usize..600, eps in 1e-6f32..1e-2, seed: u64) {
        let x = values(len, seed, 2.0);
        let w = values(len, !seed, 1.5);
        let mut out = vec![0f32; len];
        ops::try_rms_norm(&x, &w, eps, &mut out).expect("lengths");
        let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / len as f64;
        let scale = 1.0 / (ms + eps as f64).sqrt();
        for i in 0..len {
            prop_assert!(rel_close(out[i], x[i] as f64 * scale * w[i] as f64, 1e-5), "{} {}", i, out[i]);
        }
    }

    #[test]
    fn rms_norm_is_scale_invariant_and_unit_rms(len in 1usize..300, c in 0.01f32..100.0, seed: u64) {
        let x: Vec<f32> = values(len, seed, 1.0).iter().map(|v| v + 0.1).collect();
        let cx: Vec<f32> = x.iter().map(|v| v * c).collect();
        let ones = vec![1f32; len];
        let (mut a, mut b) = (vec![0f32; len], vec![0f32; len]);
        ops::rms_norm(&x, &ones, 0.0, &mut a);
        ops::rms_norm(&cx, &ones, 0.0, &mut b);
        let rms = (a.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / len as f64).sqrt();
        prop_assert!((rms - 1.0).abs() < 1e-4, "rms {}", rms);
        for (p, q) in a.iter().zip(&b) {
            prop_assert!((p - q).abs() <= 1e-4 * (1.0 + p.abs()));
        }
    }

    #[test]
    fn softmax_matches_formula(len in 1usize..300, shift in -50f32..50.0, seed: u64) {
        let x: Vec<f32> = values(len, seed, 8.0).iter().map(|v| v + shift).collect();
        let mut y = x.clone();
        ops::softmax(&mut y);
        let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let z: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
        let total: f64 = y.iter().map(|&v| v as f64).sum();
        prop_assert!((total - 1.0).abs() < 2e-5);
        for (i, &v) in y.iter().enumerate() {
            prop_assert!(v >= 0.0);
            // f32 sums of a few hundred terms carry a relative error of up to ~1e-5.
            let want = (x[i] as f64 - max).exp() / z;
            prop_assert!((v as f64 - want).abs() < 1e-7 + 2e-5 * want, "{} {} vs {}", i, v, want);
        }
    }

    #[test]
    fn silu_mul_matches_formula(len in 0usize..300, seed: u64) {
        let g = values(len, seed, 12.0);
        let u = values(len, !seed, 2.0);
        let mut out = g.clone();
        ops::try_silu_mul(&mut out, &u).expect("lengths");
        for i in 0..len {
            let gi = g[i] as f64;
            let want = gi / (1.0 + (-gi).exp()) * u[i] as f64;
            prop_assert!((out[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{} {} {}", i, out[i], want);
        }
    }

    #[test]
    fn rope_preserves_pair_norms_and_matches_formula(
        heads in 1usize..4,
        half in 1usize..40,
        rot_pairs in 0usize..40,
        pos in 0usize..3000,
        seed: u64,
    ) {
        let head_dim = 2 * half;
        let rot_dim = (2 * rot_pairs).min(head_dim);
        let theta = 10_000f32;
        let rope = Rope::new(head_dim, rot_dim, theta, 2048);
        let x = values(heads * head_dim, seed, 3.0);
        let mut y = x.clone();
        rope.try_apply(&mut y, pos).expect("whole heads");
        let pairs = rot_dim / 2;
        for h in 0..heads {
            for i in 0..half {
                let (j, k) = (h * head_dim + 2 * i, h * head_dim + 2 * i + 1);
                let (a, b) = (x[j] as f64, x[k] as f64);
                if i < pairs {
                    let ang = pos as f64 * (theta as f64).powf(-2.0 * i as f64 / rot_dim as f64);
                    let (s, c) = ang.sin_cos();
                    prop_assert!((y[j] as f64 - (a * c - b * s)).abs() < 1e-5 * (1.0 + a.abs() + b.abs()));
                    prop_assert!((y[k] as f64 - (a * s + b * c)).abs() < 1e-5 * (1.0 + a.abs() + b.abs()));
                    let (n0, n1) = (a.hypot(b), (y[j] as f64).hypot(y[k] as f64));
                    prop_assert!((n0 - n1).abs() <= 1e-5 * (1.0 + n0));
                } else {
                    prop_assert_eq!((y[j], y[k]), (x[j], x[k]), "pair {} is past rot_dim", i);
                }
            }
        }
    }

    /// The point of RoPE: the score of a rotated query and key depends only on their distance.
    #[test]
    fn rope_scores_depend_on_relative_position(m in 0usize..500, n in 0usize..500, d in 1usize..100, seed: u64) {
        let rope = Rope::new(64, 64, 10_000.0, 1024);
        let (q, k) = (values(64, seed, 1.0), values(64, !seed, 1.0));
        let score = |pq: usize, pk: usize| {
            let (mut a, mut b) = (q.clone(), k.clone());
            rope.apply(&mut a, pq);
            rope.apply(&mut b, pk);
            ops::dot(&a, &b)
        };
        let (s0, s1) = (score(m, n), score(m + d, n + d));
        prop_assert!((s0 - s1).abs() < 1e-3 * (1.0 + s0.abs()), "{} vs {}", s0, s1);
    }
}

#[test]
fn rope_position_zero_is_identity() {
    let rope = Rope::new(64, 64, 500_000.0, 16);
    let x = values(3 * 64, 5, 1.0);
    let mut y = x.clone();
    rope.apply(&mut y, 0);
    assert_eq!(x, y);
}

#[test]
fn rope_past_the_table_matches_the_table() {
    let short = Rope::new(32, 32, 10_000.0, 100);
    let long = Rope::new(32, 32, 10_000.0, 300);
    assert_eq!(short.max_pos(), 100);
    let x = values(64, 9, 1.0);
    for pos in [100, 101, 299] {
        let (mut a, mut b) = (x.clone(), x.clone());
        short.apply(&mut a, pos);
        long.apply(&mut b, pos);
        assert_eq!(a, b, "position {pos}");
    }
}

#[test]
fn silu_limits() {
    assert_eq!(ops::silu(0.0), 0.0);
    assert!((ops::silu(30.0) - 30.0).abs() < 1e-6);
    assert!(ops::silu(-30.0).abs() < 1e-9);
    assert_eq!(ops::silu(-1000.0), 0.0);
    assert_eq!(ops::silu(1000.0), 1000.0);
}

#[test]
fn softmax_edge_cases() {
    let mut big = [1000.0f32, 1000.0, -1000.0];
    ops::softmax(&mut big);
    assert_eq!(big, [0.5, 0.5, 0.0]);
    let mut masked = [0.0f32, f32::NEG_INFINITY, 0.0];
    ops::softmax(&mut masked);
    assert_eq!(masked, [0.5, 0.0, 0.5]);
    let mut one = [42.0f32];
    ops::softmax(&mut one);
    assert_eq!(one, [1.0]);
    ops::softmax(&mut []);
}

#[test]
fn dot_and_axpy_match_loops() {
    for len in [0, 1, 7, 8, 9, 31, 32, 33, 100, 257] {
        let (a, b) = (values(len, 1, 1.0), values(len, 2, 1.0));
        let want: f64 = a.iter().zip(&b).map(|(&p, &q)| p as f64 * q as f64).sum();
        assert!((ops::dot(&a, &b) as f64 - want).abs() < 1e-5 * (1.0 + want.abs()));
        let mut y = b.clone();
        ops::axpy(0.25, &a, &mut y);
        for i in 0..len {
            assert!((y[i] - (b[i] + 0.25 * a[i])).abs() <= 1e-6 * (1.0 + y[i].abs()));
        }
    }
}

#[test]
fn length_errors_are_reported() {
    let mut out = [0f32; 4];
    let e = ops::try_rms_norm(&[1.0; 4], &[1.0; 3], 1e-5, &mut out);
    assert_eq!(e, Err(KernelError::Length { what: "rms_norm weight", expected: 4, got: 3 }));
    let e = ops::try_rms_norm(&[1.0; 4], &[1.0; 4], 1e-5, &mut out[..2]);
    assert!(matches!(e, Err(KernelError::Length { what: "rms_norm output", .. })));
    let e = ops::try_silu_mul(&mut out, &[1.0; 5]);
    assert!(matches!(e, Err(KernelError::Length { what: "silu_mul up", .. })));
    let rope = Rope::new(8, 8, 10_000.0, 4);
    assert!(matches!(rope.try_apply(&mut [0.0; 12], 1), Err(KernelError::Shape(_))));
    assert!(Rope::new(0, 0, 10_000.0, 4).try_apply(&mut [], 0).is_err());
}

/// The plain forms work over the common prefix and never panic on inconsistent input.
#[test]
fn inconsistent_lengths_do_not_panic() {
    let mut out = [0f32; 3];
    ops::rms_norm(&[1.0; 5], &[1.0; 2], 1e-5, &mut out);
    ops::rms_norm(&[], &[], 1e-5, &mut []);
    let mut g = [1.0f32; 5];
    ops::silu_mul(&mut g, &[2.0; 2]);
    assert_eq!(g[2..], [1.0; 3]);
    assert_eq!(ops::dot(&[1.0; 20], &[1.0; 3]), 3.0);
    assert_eq!(ops::dot(&[1.0; 3], &[1.0; 20]), 3.0);
    let mut y = [0f32; 2];
    ops::axpy(1.0, &[1.0; 17], &mut y);
    ops::axpy(1.0, &[1.0; 1], &mut y);
    assert_eq!(y, [2.0, 1.0]);
    // Partial trailing heads, zero-sized heads, odd rotary sizes, far positions.
    let rope = Rope::new(8, 8, 10_000.0, 4);
    rope.apply(&mut [1.0; 13], 3);
    rope.apply(&mut [1.0; 8], usize::MAX / 2);
    Rope::new(0, 4, 10_000.0, 4).apply(&mut [1.0; 4], 1);
    Rope::new(8, 5, 10_000.0, 4).apply(&mut [1.0; 8], 2);
    Rope::new(8, 0, 10_000.0, 0).apply(&mut [1.0; 8], 2);
}
