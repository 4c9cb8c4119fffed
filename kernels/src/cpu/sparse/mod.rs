//! Inner loops of the input-sparse GEMVs (one file per ISA) and their dispatch: the int8
//! GEMV's pairs, and the f32 GEMV's mask and register-held sums.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
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

/// Most outputs [`rows_f32_in_registers`] sums in registers (16 per register).
pub const F32_REGISTER_OUTPUTS: usize = 16 * avx512::F32_SUM_REGS;

/// `y = Σ_k a[k] · w[idx[k] · stride + offset ..][..y.len()]` (overwriting `y`, at most
/// [`F32_REGISTER_OUTPUTS`] long) with the sums held in AVX-512 registers where the CPU has
/// them, else through [`super::axpy_rows_f32`] (rows prefetched 8 ahead). Panics, as
/// slicing would, when a run leaves `w`, `a` is shorter than `idx` or `y` is too long.
pub fn rows_f32_in_registers(w: &[f32], stride: usize, offset: usize, idx: &[u32], a: &[f32], y: &mut [f32]) {
    assert!(y.len() <= F32_REGISTER_OUTPUTS, "rows_f32_in_registers: {} outputs", y.len());
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512f() && !y.is_empty() {
        let last = idx.iter().map(|&i| i as usize * stride + offset + y.len()).max().unwrap_or(0);
        assert!(last <= w.len() && a.len() >= idx.len(), "rows_f32_in_registers: a run ends at {last} of {}", w.len());
        /// Calls the kernel with the register count `R` that `y` needs.
        macro_rules! regs {
            ($($r:literal)*) => {
                match y.len().div_ceil(16) {
                    // SAFETY: `avx512f()` checked the CPU; every run lies inside `w` and `a`
                    // covers `idx` (asserted above); `y.len()` is in 16 (R − 1) + 1 ..= 16 R.
                    $($r => unsafe { avx512::rows_f32_in_registers::<$r>(w, stride, offset, idx, a, y) },)*
                    _ => unreachable!("at most F32_SUM_REGS registers (asserted above)"),
                }
            };
        }
        regs!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24);
        return;
    }
    y.fill(0.0);
    super::axpy_rows_f32(w, stride, offset, idx, a, y, 8);
}

/// Clears `idx` and `vals` and fills them with the indices and values of the entries of `x`
/// with `|x_i| > t`, in order; returns their count.
pub fn active_f32(x: &[f32], t: f32, idx: &mut Vec<u32>, vals: &mut Vec<f32>) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::avx512f() {
        idx.resize(x.len() + 16, 0);
        vals.resize(x.len() + 16, 0.0);
        // SAFETY: `avx512f()` checked the CPU; both buffers hold x.len() + 16 entries.
        let count = unsafe { avx512::active_f32(x, t, idx, vals) };
        idx.truncate(count);
        vals.truncate(count);
        return count;
    }
    idx.clear();
    vals.clear();
    for (i, &v) in x.iter().enumerate() {
        if v.abs() > t {
            idx.push(i as u32);
            vals.push(v);
        }
    }
    idx.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The register-held input-sparse sums (AVX-512F where present) against the scalar
    /// axpy: every register count from 1 to 24 with every tail, odd and even row counts
    /// (the kernel takes rows in pairs), rows at an offset into a strided matrix; `y` is
    /// overwritten, not added to.
    #[test]
    fn rows_in_registers_match_scalar() {
        let (rows, stride) = (9usize, 400usize);
        let w: Vec<f32> = (0..rows * stride).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for n in 1..=F32_REGISTER_OUTPUTS {
            // From 10 rows on, the AVX-512 loop also prefetches rows 8 ahead, up to the last.
            for count in [0usize, 1, 2, 3, 8, 9, 10, 11, 25] {
                let idx: Vec<u32> = (0..count as u32).map(|k| (k * 5) % rows as u32).collect();
                let a: Vec<f32> = (0..count).map(|k| 0.75 - k as f32 * 0.25).collect();
                let mut want = vec![0.0f32; n];
                for (&i, &c) in idx.iter().zip(&a) {
                    for (j, y) in want.iter_mut().enumerate() {
                        *y += c * w[i as usize * stride + 7 + j];
                    }
                }
                let mut got = vec![f32::NAN; n];
                rows_f32_in_registers(&w, stride, 7, &idx, &a, &mut got);
                for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "n {n} rows {count} output {j}: {g} vs {w}");
                }
            }
        }
    }

    /// The mask compress (AVX-512F where present) against a scalar filter: lengths around
    /// every tail of 16, values equal to the threshold (kept out), NaN (kept out), zero
    /// threshold.
    #[test]
    fn active_channels_match_a_filter() {
        for n in (0..=40).chain([576, 1536]) {
            let x: Vec<f32> =
                (0..n).map(|i| if i % 13 == 5 { f32::NAN } else { ((i * 29 % 17) as f32 - 8.0) / 4.0 }).collect();
            for t in [0.0f32, 0.5, 1.0, 3.0] {
                let want: Vec<(u32, f32)> =
                    x.iter().enumerate().filter(|(_, v)| v.abs() > t).map(|(i, &v)| (i as u32, v)).collect();
                let (mut idx, mut vals) = (vec![7u32; 3], vec![1.0f32; 5]);
                let count = active_f32(&x, t, &mut idx, &mut vals);
                let got: Vec<(u32, f32)> = idx.iter().copied().zip(vals.iter().copied()).collect();
                assert_eq!((count, idx.len(), vals.len()), (want.len(), want.len(), want.len()), "n {n} t {t}");
                assert_eq!(got, want, "n {n} t {t}");
            }
        }
    }

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
