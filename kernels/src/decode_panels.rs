//! Weights repacked for the decode GEMV on AVX-512 VNNI: Q4_1 and Q8 (the LM head).
//!
//! Decode multiplies each weight by one activation, so its speed is set by how many
//! instructions a weight costs. The row-major AVX2 dot product spends most of them on
//! per-row work (nibble unpacking into pair order, horizontal sums, per-block scale shuffles)
//! on rows of only 18 blocks. Here sixteen rows are interleaved so that one 512-bit register
//! holds four consecutive codes of each row: a broadcast quadruple of activations and one
//! `vpdpbusd` give 64 multiply-adds with no horizontal work, and the block scales of the
//! sixteen rows are one vector.
//!
//! Q4_1 layout, per panel of 16 rows (the last padded with zero rows), per block of 32 columns,
//! 320 bytes: four 64-byte groups `g` where bytes `4r..4r + 4` hold row `r`'s codes of
//! columns `32b + 8g + k` (low nibble) and `32b + 8g + 4 + k` (high nibble), `k < 4`; then
//! the 16 rows' f16 scales, then their 16 f16 minimums. The bytes per weight are the GGUF's.
//!
//! Q8 layout, per panel and block, 576 bytes: eight 64-byte groups where bytes `4r..4r + 4`
//! hold row `r`'s values of columns `32b + 4g + k` plus 128 (as unsigned bytes, the operand
//! `vpdpbusd` wants; the kernel subtracts 128 x the block's activation sum in i32), then the
//! 16 rows' f32 scales: the bytes of [`MatQ8`].
//!
//! The result equals the row-major product up to f32 summation order: the integer sums of a
//! block are the same, and scales and minimums are applied per block as there.

use std::ops::Range;

use crate::matmul::OutPtr;
use crate::q4::MatQ4_1;
use crate::{ActsQ8, MatQ8, QK};

/// Rows per panel (one i32 lane of a 512-bit register each; the prefill GEMM's panels
/// have as many).
#[cfg(target_arch = "x86_64")]
pub(crate) const PANEL_ROWS: usize = crate::cpu::avx512::PANEL_ROWS;
#[cfg(not(target_arch = "x86_64"))]
pub(crate) const PANEL_ROWS: usize = 16;

/// Bytes of one block of one Q4_1 panel: 4 x 64 bytes of codes, 16 f16 scales, 16 f16
/// minimums.
pub(crate) const BLOCK_BYTES: usize = 320;

/// Bytes of one block of one Q8 panel: 8 x 64 bytes of offset values, 16 f32 scales.
pub(crate) const Q8_BLOCK_BYTES: usize = 576;

/// The rows of `range` that whole panels cover (the last panel may be short at the
/// matrix's end, `rows`): `lo..hi`, `lo <= hi`. Rows outside it go through the row dot
/// products.
pub(crate) fn panel_span(range: &Range<usize>, rows: usize) -> (usize, usize) {
    let lo = range.start.next_multiple_of(PANEL_ROWS).min(range.end);
    let hi = if range.end == rows { range.end } else { range.end / PANEL_ROWS * PANEL_ROWS };
    (lo, hi.max(lo))
}

/// Panels per kernel call: their results fit one small stack buffer.
const PANELS_PER_CALL: usize = 4;

/// Weights repacked in panels of 16 rows: `rows.div_ceil(16)` panels of `nb` blocks of
/// `block_bytes` each, the layout of one block up to the kernel that reads it.
#[derive(Debug, Clone)]
struct Panels {
    /// Blocks per row.
    nb: usize,
    /// Bytes of one block of one panel.
    block_bytes: usize,
    bytes: Vec<u8>,
}

impl Panels {
    /// Panels for `rows` rows of `nb` blocks, every byte `fill`, then `write(row, block, lane,
    /// the block's bytes)` for every block of every row (lane: the row's place in its panel).
    fn repack(
        rows: usize,
        nb: usize,
        block_bytes: usize,
        fill: u8,
        mut write: impl FnMut(usize, usize, usize, &mut [u8]),
    ) -> Self {
        let mut bytes = vec![fill; rows.div_ceil(PANEL_ROWS) * nb * block_bytes];
        for r in 0..rows {
            let (p, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
            for b in 0..nb {
                let at = (p * nb + b) * block_bytes;
                write(r, b, lane, &mut bytes[at..at + block_bytes]);
            }
        }
        Self { nb, block_bytes, bytes }
    }

    /// Runs `kernel(panel bytes, results)` over the panels that cover `rows`, a few at a
    /// time, and writes the results of the rows in `rows` (below `total_rows`) through `out`.
    fn run(&self, rows: Range<usize>, total_rows: usize, out: OutPtr, kernel: impl Fn(&[u8], &mut [f32])) {
        let panel_bytes = self.nb * self.block_bytes;
        let (p0, p1) = (rows.start / PANEL_ROWS, rows.end.div_ceil(PANEL_ROWS));
        let mut buf = [0f32; PANELS_PER_CALL * PANEL_ROWS];
        for q0 in (p0..p1).step_by(PANELS_PER_CALL) {
            let q1 = (q0 + PANELS_PER_CALL).min(p1);
            let ys = &mut buf[..(q1 - q0) * PANEL_ROWS];
            // Zeros stand when the kernel writes nothing (no blocks: an empty sum).
            ys.fill(0.0);
            kernel(&self.bytes[q0 * panel_bytes..q1 * panel_bytes], ys);
            for (k, &v) in ys.iter().enumerate() {
                let r = q0 * PANEL_ROWS + k;
                if rows.contains(&r) && r < total_rows {
                    // SAFETY: row r belongs to the caller's chunk, which owns its output.
                    unsafe { out.write(r, v) };
                }
            }
        }
    }
}

/// A [`MatQ4_1`]'s codes, scales and minimums in decode panels.
#[derive(Debug, Clone)]
pub(crate) struct Q4Panels(Panels);

impl Q4Panels {
    /// Repacks `w` (its bytes are copied, codes and f16 bits unchanged).
    pub(crate) fn new(w: &MatQ4_1) -> Self {
        let mut codes = [0i8; QK];
        Self(Panels::repack(w.rows(), w.cols() / QK, BLOCK_BYTES, 0, |r, b, lane, blk| {
            let (d, m) = w.block_bits(r, b);
            blk[256 + 2 * lane..256 + 2 * lane + 2].copy_from_slice(&d.to_le_bytes());
            blk[288 + 2 * lane..288 + 2 * lane + 2].copy_from_slice(&m.to_le_bytes());
            w.block_codes(r, b, &mut codes);
            for (i, &c) in codes.iter().enumerate() {
                let (g, within) = (i / 8, i % 8);
                let (shift, k) = (4 * (within / 4), within % 4);
                blk[64 * g + 4 * lane + k] |= (c as u8) << shift;
            }
        }))
    }

    /// Bytes held (tests).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.0.bytes.len()
    }

    /// Weight (`r`, `c`) in f32, read back from the panels (tests).
    #[cfg(test)]
    fn get(&self, r: usize, c: usize) -> f32 {
        let (p, lane, b, i) = (r / PANEL_ROWS, r % PANEL_ROWS, c / QK, c % QK);
        let blk = &self.0.bytes[(p * self.0.nb + b) * BLOCK_BYTES..];
        let (g, within) = (i / 8, i % 8);
        let code = (blk[64 * g + 4 * lane + within % 4] >> (4 * (within / 4))) & 0x0f;
        let f = |at: usize| half::f16::from_bits(u16::from_le_bytes([blk[at], blk[at + 1]])).to_f32();
        f(256 + 2 * lane) * code as f32 + f(288 + 2 * lane)
    }

    /// Writes rows `rows` of the product with token 0 of `x` through `out` (rows outside
    /// panels that `rows` only partly covers are left alone).
    ///
    /// The caller checked the shapes (see `matmul_q4_1`) and that the VNNI kernels run here.
    pub(crate) fn gemv(&self, x: &ActsQ8, rows: Range<usize>, total_rows: usize, out: OutPtr) {
        let nb = self.0.nb;
        self.0.run(rows, total_rows, out, |panels, ys| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked that the CPU has avx512f/bw/vnni and f16c
            // (`gemm_vnni::enabled`); the kernel checks every length itself.
            unsafe {
                crate::cpu::avx512::gemv_q4_panels(panels, nb, x.row_qs(0), x.row_scales(0), x.row_sums(0), ys)
            };
        });
    }
}

/// A [`MatQ8`]'s values (offset to unsigned) and scales in decode panels.
#[derive(Debug, Clone)]
pub(crate) struct Q8Panels(Panels);

impl Q8Panels {
    /// Repacks `w`. Padding rows hold value 0 (byte 128), so their sums are exactly 0.
    pub(crate) fn new(w: &MatQ8) -> Self {
        Self(Panels::repack(w.rows(), w.cols() / QK, Q8_BLOCK_BYTES, 0x80, |r, b, lane, blk| {
            let scale = w.row_scales(r)[b];
            blk[512 + 4 * lane..512 + 4 * lane + 4].copy_from_slice(&scale.to_le_bytes());
            for (i, &v) in w.row_qs(r)[b * QK..(b + 1) * QK].iter().enumerate() {
                blk[64 * (i / 4) + 4 * lane + i % 4] = (v as u8) ^ 0x80;
            }
        }))
    }

    /// What the kernel subtracts per block of token 0 of `x`: 128 x the sum of its values.
    pub(crate) fn offsets(x: &ActsQ8) -> Vec<i32> {
        x.row_qs(0).chunks_exact(QK).map(|b| 128 * b.iter().map(|&v| i32::from(v)).sum::<i32>()).collect()
    }

    /// As [`Q4Panels::gemv`], with `offset` from [`Q8Panels::offsets`] of the same `x`.
    pub(crate) fn gemv(&self, x: &ActsQ8, offset: &[i32], rows: Range<usize>, total_rows: usize, out: OutPtr) {
        let nb = self.0.nb;
        self.0.run(rows, total_rows, out, |panels, ys| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `Q4Panels::gemv`; the kernel checks every length itself.
            unsafe {
                crate::cpu::avx512::gemv_q8_panels(panels, nb, x.row_qs(0), x.row_scales(0), offset, ys)
            };
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ActsQ8;

    fn matrix(rows: usize, cols: usize, seed: usize) -> MatQ4_1 {
        let data: Vec<f32> = (0..rows * cols).map(|i| (((i + seed) * 7919 % 2003) as f32 - 1001.0) / 997.0).collect();
        MatQ4_1::quantize(rows, cols, &data).unwrap()
    }

    /// The repacking keeps every weight: reading a panel back gives the row-major value.
    #[test]
    fn panels_hold_every_weight() {
        let w = matrix(37, 96, 3);
        let p = Q4Panels::new(&w);
        let mut row = vec![0f32; 96];
        for r in 0..37 {
            w.dequantize_row(r, &mut row);
            for (c, &v) in row.iter().enumerate() {
                assert_eq!(p.get(r, c), v, "row {r} column {c}");
            }
        }
        assert_eq!(p.bytes(), 3 * 3 * BLOCK_BYTES);
    }

    /// The VNNI panel GEMV against the row-major dot products (scalar reference), on row
    /// counts that are and are not multiples of 16 and on sub-ranges of panels.
    #[test]
    fn panel_gemv_matches_row_dots() {
        if !crate::gemm_vnni::enabled() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return;
        }
        for &(rows, cols) in &[(16usize, 32usize), (37, 96), (576, 1536), (1536, 576), (5, 64)] {
            let w = matrix(rows, cols, rows + cols);
            let p = Q4Panels::new(&w);
            let xv: Vec<f32> = (0..cols).map(|i| ((i * 104_729 % 1009) as f32 - 504.0) / 300.0).collect();
            let mut x = ActsQ8::default();
            x.quantize_from(&xv, 1, cols).unwrap();
            let act = crate::cpu::q4::ActRow::of(&x, 0);
            let want: Vec<f32> = (0..rows).map(|r| crate::cpu::q4::dot(&w.row_view(r), &act)).collect();
            let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            for range in [0..rows, (rows / 32 * 16)..rows] {
                let mut got = vec![f32::NAN; rows];
                let out = OutPtr::new(&mut got);
                p.gemv(&x, range.clone(), rows, out);
                for r in 0..rows {
                    if range.contains(&r) {
                        assert!(
                            (got[r] - want[r]).abs() <= 1e-5 * scale,
                            "{rows}x{cols} row {r}: {} vs {}",
                            got[r],
                            want[r]
                        );
                    } else {
                        assert!(got[r].is_nan(), "{rows}x{cols} row {r} outside {range:?} was written");
                    }
                }
            }
        }
    }
}
