//! Deterministic pseudo-random values (xorshift64) for tests, benchmarks and fixed-seed
//! initialisation elsewhere in the workspace: the same seed gives the same values on every
//! machine, with no RNG dependency.

/// `len` values in [-1, 1) from `seed`.
pub fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_are_in_range_reproducible_and_spread() {
        let v = super::values(10_000, 3);
        assert_eq!(v, super::values(10_000, 3));
        assert_ne!(v, super::values(10_000, 4));
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.05, "{mean}");
    }
}
