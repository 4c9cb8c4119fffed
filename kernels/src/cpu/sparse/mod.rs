//! Inner loop of the input-sparse int8 GEMV (one file per ISA) and its dispatch.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod scalar;

use crate::isa::{Isa, active};

/// Operands of one output range of the input-sparse int8 GEMV: `pairs` lists active input
/// channels two at a time (an odd last one is paired with itself at value 0), `xq` their
/// quantized values in the same order, and `w` the input-major weights (`outputs` values
/// per input channel).
pub struct SparsePairs<'a> {
    pub w: &'a [i8],
    pub outputs: usize,
    pub pairs: &'a [[u32; 2]],
    pub xq: &'a [[i16; 2]],
}

/// `acc[j - j0] = Σ_pairs xq · w[pair][j]` for outputs `j0..j0 + acc.len()`.
pub fn accumulate(op: &SparsePairs<'_>, j0: usize, acc: &mut [i32]) {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2; the caller
        // (crate::sparse) checked every pair index < inputs and j0 + acc.len() <= outputs.
        Isa::Avx2 => unsafe { avx2::accumulate(op, j0, acc) },
        _ => scalar::accumulate(op, j0, acc),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_matches_scalar_on_every_tail() {
        let (inputs, outputs) = (9, 77);
        let w: Vec<i8> = (0..inputs * outputs).map(|i| ((i * 53 % 255) as i32 - 127) as i8).collect();
        let pairs = [[0u32, 3], [8, 1], [5, 5]];
        let xq = [[127i16, -127], [-5, 64], [100, 0]];
        let op = SparsePairs { w: &w, outputs, pairs: &pairs, xq: &xq };
        for (j0, len) in [(0, 77), (3, 16), (16, 40), (60, 17), (76, 1)] {
            let mut want = vec![0i32; len];
            scalar::accumulate(&op, j0, &mut want);
            let mut got = vec![0i32; len];
            accumulate(&op, j0, &mut got);
            assert_eq!(want, got, "j0 {j0} len {len}");
        }
    }
}
