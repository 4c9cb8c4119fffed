//! Inner loops of the Q4_1 x int8 product (one file per ISA) and their dispatch.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use crate::isa::{Isa, active};

/// One Q4_1 weight row: codes (16 bytes per block), f16 scales and minima.
pub struct Q4Row<'a> {
    pub codes: &'a [u8],
    pub d: &'a [u16],
    pub m: &'a [u16],
}

/// One int8 activation row: values (also in pair order, see `ActsQ8`), block scales and
/// block sums (`scale * Σ values`).
pub struct ActRow<'a> {
    pub q: &'a [i8],
    pub pair_q: &'a [i8],
    pub d: &'a [f32],
    pub sum: &'a [f32],
}

impl<'a> ActRow<'a> {
    /// Row `t` of quantized activations.
    pub fn of(x: &'a crate::ActsQ8, t: usize) -> Self {
        Self { q: x.row_qs(t), pair_q: x.row_pair_qs(t), d: x.row_scales(t), sum: x.row_sums(t) }
    }
}

/// Dot product of a Q4_1 row and an activation row with as many blocks.
#[inline]
pub fn dot(w: &Q4Row<'_>, x: &ActRow<'_>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm_vnni::enabled() {
        // SAFETY: `enabled()` is true only on a CPU with avx512f/bw/vnni beside the AVX2 set
        // (avx512vl comes with every CPU that has avx512vnni).
        return unsafe { avx512::dot(w, x) };
    }
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2, fma and f16c.
        Isa::Avx2 => unsafe { avx2::dot(w, x) },
        _ => scalar::dot(w, x),
    }
}

/// [`dot`] of four weight rows against one activation row: with AVX2 one loop over the four
/// (each pair of blocks' activations loaded once); where the VNNI kernels run, four of
/// their row dots.
#[inline]
pub fn dot_rows4(w: [Q4Row<'_>; 4], x: &ActRow<'_>) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm_vnni::enabled() {
        // SAFETY: as for `dot`.
        return w.map(|row| unsafe { avx512::dot(&row, x) });
    }
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `dot`.
        Isa::Avx2 => unsafe { avx2::dot_rows4(&w, x) },
        _ => w.map(|row| scalar::dot(&row, x)),
    }
}

/// [`dot`] of one weight row against four activation rows (codes unpacked once).
#[inline]
pub fn dot_x4(w: &Q4Row<'_>, x: [ActRow<'_>; 4]) -> [f32; 4] {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as for `dot`.
        Isa::Avx2 => unsafe { avx2::dot_x4(w, &x) },
        _ => [0, 1, 2, 3].map(|k| scalar::dot(w, &x[k])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x` in the pair order `ActsQ8` produces.
    fn pair_order(x: &[i8]) -> Vec<i8> {
        let n = x.len();
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while i + 64 <= n {
            out.extend_from_slice(&x[i..i + 16]);
            out.extend_from_slice(&x[i + 32..i + 48]);
            out.extend_from_slice(&x[i + 16..i + 32]);
            out.extend_from_slice(&x[i + 48..i + 64]);
            i += 64;
        }
        out.extend_from_slice(&x[i..]);
        out
    }

    /// The AVX-512 VNNI row dot against the scalar reference, on every block count from 1 to
    /// 40 (whole groups of four, a pair and a lone block left over) and the full int8 range.
    #[test]
    fn avx512_matches_scalar() {
        #[cfg(target_arch = "x86_64")]
        if crate::gemm_vnni::enabled() && std::arch::is_x86_feature_detected!("avx512vl") {
            for nb in 1..=40usize {
                let codes: Vec<u8> = (0..nb * 16).map(|i| (i * 73 + nb) as u8).collect();
                let d: Vec<u16> = (0..nb).map(|i| half::f16::from_f32(0.01 + i as f32 * 0.003).to_bits()).collect();
                let m: Vec<u16> = (0..nb).map(|i| half::f16::from_f32(-0.1 + i as f32 * 0.02).to_bits()).collect();
                let w = Q4Row { codes: &codes, d: &d, m: &m };
                let x: Vec<i8> = (0..nb * 32).map(|i| ((i * 29 + 3 * nb) % 256) as u8 as i8).collect();
                let xd: Vec<f32> = (0..nb).map(|i| 0.02 + i as f32 * 0.001).collect();
                let xsum: Vec<f32> = (0..nb).map(|i| 0.5 - i as f32 * 0.1).collect();
                let pairs = pair_order(&x);
                let row = ActRow { q: &x, pair_q: &pairs, d: &xd, sum: &xsum };
                let want = scalar::dot(&w, &row);
                // SAFETY: the CPU supports the AVX-512 VNNI set (checked above).
                let got = unsafe { avx512::dot(&w, &row) };
                assert!((want - got).abs() < 1e-4 * (1.0 + want.abs()), "{nb} blocks: {want} vs {got}");
            }
        }
    }

    /// The AVX2 loops against the scalar reference on the same operands.
    #[test]
    fn avx2_matches_scalar() {
        #[cfg(target_arch = "x86_64")]
        if active() == Isa::Avx2 {
            let nb = 5;
            let codes: Vec<u8> = (0..nb * 16).map(|i| (i * 37 % 256) as u8).collect();
            let d: Vec<u16> = (0..nb).map(|i| half::f16::from_f32(0.01 + i as f32 * 0.003).to_bits()).collect();
            let m: Vec<u16> = (0..nb).map(|i| half::f16::from_f32(-0.1 + i as f32 * 0.02).to_bits()).collect();
            let w = Q4Row { codes: &codes, d: &d, m: &m };
            let xs: Vec<Vec<i8>> =
                (0..4).map(|k| (0..nb * 32).map(|i| ((i * 31 + k * 7) % 255) as i8).collect()).collect();
            let xd: Vec<f32> = (0..nb).map(|i| 0.02 + i as f32 * 0.001).collect();
            let xsum: Vec<f32> = (0..nb).map(|i| 0.5 - i as f32 * 0.1).collect();
            let pairs: Vec<Vec<i8>> = xs.iter().map(|x| pair_order(x)).collect();
            let row = |k: usize| ActRow { q: &xs[k], pair_q: &pairs[k], d: &xd, sum: &xsum };
            let want = scalar::dot(&w, &row(0));
            // SAFETY: the CPU supports avx2, fma and f16c (checked above).
            let got = unsafe { avx2::dot(&w, &row(0)) };
            assert!((want - got).abs() < 1e-4 * (1.0 + want.abs()), "{want} vs {got}");
            // SAFETY: as above.
            let got4 = unsafe { avx2::dot_x4(&w, &[row(0), row(1), row(2), row(3)]) };
            for (k, &got) in got4.iter().enumerate() {
                let want = scalar::dot(&w, &row(k));
                assert!((want - got).abs() < 1e-4 * (1.0 + want.abs()), "{k}: {want} vs {got}");
            }
        }
    }

    /// The row dot and the four-row dot (dispatched: AVX2 here, VNNI or portable elsewhere)
    /// against scalar dots: every block count from 0 to 40 (whole groups of 8, pairs and a
    /// lone block left over), rows of different codes and scales, the full int8 range.
    #[test]
    fn row_dots_match_scalar_at_every_block_count() {
        for nb in 0..=40usize {
            let codes: Vec<Vec<u8>> =
                (0..4).map(|r| (0..nb * 16).map(|i| (i * 73 + 11 * r + nb) as u8).collect()).collect();
            let d: Vec<Vec<u16>> = (0..4)
                .map(|r| (0..nb).map(|i| half::f16::from_f32(0.01 + (i + r) as f32 * 0.003).to_bits()).collect())
                .collect();
            let m: Vec<Vec<u16>> = (0..4)
                .map(|r| {
                    (0..nb).map(|i| half::f16::from_f32(-0.1 + i as f32 * 0.02 - r as f32 * 0.05).to_bits()).collect()
                })
                .collect();
            let rows = |r: usize| Q4Row { codes: &codes[r], d: &d[r], m: &m[r] };
            let x: Vec<i8> = (0..nb * 32).map(|i| ((i * 29 + 3 * nb) % 256) as u8 as i8).collect();
            let xd: Vec<f32> = (0..nb).map(|i| 0.02 + i as f32 * 0.001).collect();
            let xsum: Vec<f32> = (0..nb).map(|i| 0.5 - i as f32 * 0.1).collect();
            let pairs = pair_order(&x);
            let act = ActRow { q: &x, pair_q: &pairs, d: &xd, sum: &xsum };
            let got = dot_rows4([rows(0), rows(1), rows(2), rows(3)], &act);
            for (r, &got) in got.iter().enumerate() {
                let want = scalar::dot(&rows(r), &act);
                assert!((want - got).abs() < 1e-4 * (1.0 + want.abs()), "{nb} blocks, row {r}: {want} vs {got}");
                let one = dot(&rows(r), &act);
                assert!((want - one).abs() < 1e-4 * (1.0 + want.abs()), "{nb} blocks, one row {r}: {want} vs {one}");
            }
        }
    }
}
