//! Q4_1 rows in step order, for the products that read scattered rows (CATS's kept up
//! rows, the predictors' gate and up rows).
//!
//! The GGUF layout keeps each block's 32 codes together, so a lone row's dot product sums
//! each block across a vector's lanes before it can apply the block's scale. Here a row's
//! blocks go in groups of 16, and step k of a group holds weights 4k..4k+3 of all 16 blocks,
//! block l in lane l: one `vpdpbusd` advances all 16 blocks by four weights, and after the
//! eight steps each lane holds its block's whole sum, scaled by one FMA with the group's
//! scales in their natural order (the dense panels' work per block, for one row). Two steps
//! share one 64-byte chunk (low and high nibbles), and each group's 16 scales and 16 minima
//! follow its codes, so a row is one run of bytes. The last blocks of a row (fewer than 16)
//! form a short group of the same shape. The activations are reordered once per product
//! ([`StepActsBuf`]). The bytes are the matrix's own, reordered: the products are exact.

use crate::cpu::q4_rows::{GROUP_ACT_BYTES, GROUP_BYTES, StepActs, StepMatrix};
use crate::lines::Lines;
use crate::{ActsQ8, MatQ4_1, QK};

/// Blocks per group.
const GROUP: usize = 16;

/// A Q4_1 matrix in step order, each row starting on a cache line.
#[derive(Clone, Debug)]
pub(crate) struct StepRows {
    rows: usize,
    groups: usize,
    tail: usize,
    stride: usize,
    bytes: Lines,
}

impl StepRows {
    /// Bytes from one row's start to the next's for rows of `nb` blocks (whole cache lines).
    pub(crate) fn stride(nb: usize) -> usize {
        (GROUP_BYTES * (nb / GROUP) + 20 * (nb % GROUP)).div_ceil(64) * 64
    }

    /// Bytes held (every row's whole lines).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.bytes().len()
    }

    /// Reorders `w`.
    pub(crate) fn new(w: &MatQ4_1) -> Self {
        let nb = w.cols() / QK;
        let (groups, tail) = (nb / GROUP, nb % GROUP);
        let stride = Self::stride(nb);
        let mut bytes = Lines::zeroed(stride * w.rows());
        let out = bytes.bytes_mut();
        let mut codes = [0i8; QK];
        for r in 0..w.rows() {
            let row = &mut out[r * stride..(r + 1) * stride];
            for b in 0..nb {
                let (g, l) = (b / GROUP, b % GROUP);
                let lanes = if g < groups { GROUP } else { tail };
                let group = &mut row[GROUP_BYTES * g..];
                w.block_codes(r, b, &mut codes);
                for (i, &c) in codes.iter().enumerate() {
                    // Step i / 4 of the block; steps 2j and 2j + 1 share chunk j.
                    let (step, p) = (i / 4, i % 4);
                    let at = 4 * lanes * (step / 2) + 4 * l + p;
                    group[at] |= if step % 2 == 1 { (c as u8) << 4 } else { c as u8 };
                }
                let (d, m) = w.block_bits(r, b);
                group[16 * lanes + 2 * l..][..2].copy_from_slice(&d.to_le_bytes());
                group[18 * lanes + 2 * l..][..2].copy_from_slice(&m.to_le_bytes());
            }
        }
        Self { rows: w.rows(), groups, tail, stride, bytes }
    }
    /// The view the inner loops read.
    pub(crate) fn view(&self) -> StepMatrix<'_> {
        StepMatrix {
            bytes: self.bytes.bytes(),
            stride: self.stride,
            rows: self.rows,
            groups: self.groups,
            tail: self.tail,
        }
    }
}

/// One activation row reordered for [`StepRows`] (see [`StepActs`]).
#[derive(Default)]
pub(crate) struct StepActsBuf {
    q: Vec<i8>,
    d: Vec<f32>,
    sum: Vec<f32>,
}

impl StepActsBuf {
    /// Token 0 of `x`, reordered.
    #[cfg(test)]
    pub(crate) fn new(x: &ActsQ8) -> Self {
        let mut buf = Self::default();
        buf.fill(x);
        buf
    }
    /// Token 0 of `x`, reordered into this buffer (its memory reused).
    pub(crate) fn fill(&mut self, x: &ActsQ8) {
        let nb = x.cols() / QK;
        let (groups, tail) = (nb / GROUP, nb % GROUP);
        let (qs, scales, sums) = (x.row_qs(0), x.row_scales(0), x.row_sums(0));
        let slots = groups + 2;
        let Self { q, d, sum } = self;
        for v in [&mut *d, &mut *sum] {
            v.clear();
            v.resize(16 * slots, 0.0);
        }
        q.clear();
        q.resize(GROUP_ACT_BYTES * slots, 0);
        // Step k of slot `slot`, lane `lane` <- weights 4k..4k+3 of block `b`.
        let mut put = |slot: usize, lane: usize, b: usize| {
            for k in 0..8 {
                let to = GROUP_ACT_BYTES * slot + 64 * k + 4 * lane;
                q[to..to + 4].copy_from_slice(&qs[QK * b + 4 * k..QK * b + 4 * k + 4]);
            }
            d[16 * slot + lane] = scales[b] / 16.0;
            sum[16 * slot + lane] = sums[b];
        };
        for b in 0..nb {
            put(b / GROUP, b % GROUP, b);
        }
        // The tail once more for each of four rows, row r in lanes r t..r t + t.
        if 4 * tail <= GROUP {
            for r in 0..4 {
                for l in 0..tail {
                    put(groups + 1, r * tail + l, GROUP * groups + l);
                }
            }
        }
    }
    /// The view the inner loops read.
    pub(crate) fn view(&self) -> StepActs<'_> {
        StepActs { q: &self.q, d: &self.d, sum: &self.sum }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::q4 as natural;
    use crate::cpu::q4_rows;

    /// Every block count from 1 to 40 (whole groups, short tails sharing a group, long tails
    /// alone) and row lists of every length from 0 to 9, repeated rows included: the
    /// step-order product, dispatched and portable, equals the natural-order scalar dot
    /// product of the same matrix and activations.
    #[test]
    fn step_order_matches_natural_order() {
        let rows = 7;
        for nb in 1..=40usize {
            let cols = nb * QK;
            let w = MatQ4_1::quantize(rows, cols, &crate::testdata::values(rows * cols, nb as u64)).unwrap();
            let mut x = ActsQ8::default();
            x.quantize_from(&crate::testdata::values(cols, 100 + nb as u64), 1, cols).unwrap();
            let steps = StepRows::new(&w);
            let acts = StepActsBuf::new(&x);
            let act = natural::ActRow::of(&x, 0);
            let want: Vec<f32> = (0..rows).map(|r| natural::dot(&w.row_view(r), &act)).collect();
            let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * (1.0 + a.abs());
            for len in 0..=9usize {
                let list: Vec<u32> = (0..len).map(|k| ((k * 5 + nb) % rows) as u32).collect();
                let mut got = vec![0f32; len];
                q4_rows::gemv_rows(&steps.view(), &acts.view(), &list, &mut got);
                let mut portable = vec![0f32; len];
                q4_rows::portable_gemv_rows(&steps.view(), &acts.view(), &list, &mut portable);
                for (k, &r) in list.iter().enumerate() {
                    let want = want[r as usize];
                    assert!(close(want, got[k]), "{nb} blocks, {len} rows, row {r}: {want} vs {}", got[k]);
                    assert!(close(want, portable[k]), "{nb} blocks, portable, row {r}: {want} vs {}", portable[k]);
                }
            }
        }
    }
}
