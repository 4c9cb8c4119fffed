//! SiLU over slices (one file per ISA) and its dispatch. The scalar path is the reference:
//! `x / (1 + e^-x)` through the platform's `expf`; the AVX2 path evaluates e^-x with its own
//! range reduction and polynomial, eight lanes at a time, within a few ulp of it.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod scalar;

use crate::isa::{Isa, active};

/// `x[i] = silu(x[i])`.
pub fn silu_in_place(x: &mut [f32]) {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2 and fma.
        Isa::Avx2 => unsafe { avx2::silu_in_place(x) },
        _ => scalar::silu_in_place(x),
    }
}

/// `gate[i] = silu(gate[i]) * up[i]` over the common length.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above; both slices are cut to the common length.
        Isa::Avx2 => unsafe { avx2::silu_mul(&mut gate[..n], &up[..n]) },
        _ => scalar::silu_mul(&mut gate[..n], &up[..n]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: f32) -> f32 {
        let x = x as f64;
        (x / (1.0 + (-x).exp())) as f32
    }

    #[test]
    fn matches_f64_across_the_range_and_every_tail() {
        for len in [0usize, 1, 7, 8, 9, 17, 1536] {
            let xs: Vec<f32> = (0..len).map(|i| (i as f32 - len as f32 / 2.0) * 0.37).collect();
            let mut got = xs.clone();
            silu_in_place(&mut got);
            for (&x, &g) in xs.iter().zip(&got) {
                let want = reference(x);
                assert!((g - want).abs() <= 2e-6 * want.abs() + 1e-35, "silu({x}) = {g}, want {want}");
            }
        }
    }

    #[test]
    fn extreme_inputs_stay_finite_and_correct() {
        let xs = [-1e30f32, -200.0, -88.0, -87.0, -20.0, -1e-30, 0.0, 1e-30, 20.0, 87.0, 89.0, 200.0, 1e30];
        let mut got = xs;
        silu_in_place(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = reference(x);
            assert!(g.is_finite(), "silu({x}) = {g}");
            assert!((g - want).abs() <= 2e-6 * want.abs() + 1e-35, "silu({x}) = {g}, want {want}");
        }
        let mut nan = [f32::NAN; 9];
        silu_in_place(&mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn silu_mul_multiplies_and_ignores_the_longer_tail() {
        let mut g: Vec<f32> = (0..13).map(|i| i as f32 * 0.5 - 3.0).collect();
        let up: Vec<f32> = (0..11).map(|i| 1.0 + i as f32).collect();
        let want: Vec<f32> = g.iter().zip(&up).map(|(&a, &u)| reference(a) * u).collect();
        let last = (g[11], g[12]);
        silu_mul(&mut g, &up);
        for (a, b) in g.iter().zip(&want) {
            assert!((a - b).abs() <= 2e-6 * b.abs() + 1e-30);
        }
        assert_eq!((g[11], g[12]), last);
    }
}
