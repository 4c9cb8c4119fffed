//! Q4_1 weights in GGML's own quantization, kept as the GGUF stores them: per block of 32
//! values of a row, 16 bytes of 4-bit codes and two f16 numbers, scale `d` and minimum `m`
//! (value = d * code + m). Multiplied against [`ActsQ8`] activations:
//! `Σ (d q_i + m) x_i = d dx Σ q_i x̂_i + m (dx Σ x̂_i)` — the second term is the block sum
//! the activations carry, so a block costs one unsigned x signed int8 dot.
//!
//! This is the fast path's layout for Q4_1 tensors: the same bytes per weight as llama.cpp
//! (0.625), which is what decode at batch 1 is bound by.

use std::sync::OnceLock;

use half::f16;

use crate::cpu::q4 as inner;
use crate::decode_panels::Q4Panels;
use crate::matmul::{OutPtr, Packed, for_each_row_chunk, q8_gemm_rows, with_packed_acts};
use crate::q4_rows::StepRows;
use crate::{ActsQ8, KernelError, MatQ8, QK};

/// Bytes of one GGML `block_q4_1`: f16 d, f16 m, 16 bytes of codes.
pub const Q4_1_BLOCK_BYTES: usize = 20;

/// A row-major matrix of Q4_1 blocks.
#[derive(Debug, Clone)]
pub struct MatQ4_1 {
    rows: usize,
    cols: usize,
    /// 4-bit codes, 16 bytes per block: byte j holds value j (low nibble) and j + 16 (high).
    codes: Vec<u8>,
    /// f16 bits of each block's scale.
    d: Vec<u16>,
    /// f16 bits of each block's minimum.
    m: Vec<u16>,
    /// The same weights in decode panels, made on the first decode product where the VNNI
    /// kernels run (another 0.625 bytes per weight, for the matrices decode multiplies).
    panels: OnceLock<Q4Panels>,
    /// The codes in step order for products that read scattered rows, made on the first
    /// such product where the VNNI kernels run (another 0.5 bytes per weight).
    step_rows: OnceLock<StepRows>,
}

impl MatQ4_1 {
    /// From GGML `block_q4_1` bytes, row-major (`rows * cols / 32` blocks of 20 bytes).
    pub fn from_ggml(rows: usize, cols: usize, raw: &[u8]) -> Result<Self, KernelError> {
        if !cols.is_multiple_of(QK) {
            return Err(KernelError::Block { what: "MatQ4_1", cols, block: QK });
        }
        let blocks = rows * cols / QK;
        if raw.len() != blocks * Q4_1_BLOCK_BYTES {
            return Err(KernelError::Length {
                what: "MatQ4_1 bytes",
                expected: blocks * Q4_1_BLOCK_BYTES,
                got: raw.len(),
            });
        }
        let mut codes = Vec::with_capacity(blocks * 16);
        let mut d = Vec::with_capacity(blocks);
        let mut m = Vec::with_capacity(blocks);
        for b in raw.chunks_exact(Q4_1_BLOCK_BYTES) {
            d.push(u16::from_le_bytes([b[0], b[1]]));
            m.push(u16::from_le_bytes([b[2], b[3]]));
            codes.extend_from_slice(&b[4..]);
        }
        Ok(Self { rows, cols, codes, d, m, panels: OnceLock::new(), step_rows: OnceLock::new() })
    }

    /// Quantizes f32 rows as GGML does (per block: m = min, d = (max - min) / 15).
    pub fn quantize(rows: usize, cols: usize, data: &[f32]) -> Result<Self, KernelError> {
        if !cols.is_multiple_of(QK) {
            return Err(KernelError::Block { what: "MatQ4_1", cols, block: QK });
        }
        if data.len() != rows * cols {
            return Err(KernelError::Length { what: "MatQ4_1 source", expected: rows * cols, got: data.len() });
        }
        let mut raw = Vec::with_capacity(data.len() / QK * Q4_1_BLOCK_BYTES);
        for x in data.chunks_exact(QK) {
            let min = x.iter().copied().fold(f32::INFINITY, f32::min);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            raw.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
            raw.extend_from_slice(&f16::from_f32(min).to_bits().to_le_bytes());
            for j in 0..16 {
                let lo = ((x[j] - min) * id).round().clamp(0.0, 15.0) as u8;
                let hi = ((x[j + 16] - min) * id).round().clamp(0.0, 15.0) as u8;
                raw.push(lo | (hi << 4));
            }
        }
        Self::from_ggml(rows, cols, &raw)
    }

    /// Number of rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes of the weights (codes and f16 scales and minima), as the GGUF stores them.
    pub fn bytes(&self) -> usize {
        self.codes.len() + 2 * (self.d.len() + self.m.len())
    }
    /// Bytes one listed row costs the output-sparse products: its whole cache lines in step
    /// order where the VNNI kernels run, else its codes, scale and minimum.
    pub fn listed_row_bytes(&self) -> usize {
        let nb = self.cols / QK;
        if crate::gemm_vnni::enabled() { StepRows::stride(nb) } else { nb * Q4_1_BLOCK_BYTES }
    }
    /// The codes in step order, made on first use; `None` where the VNNI kernels do not run.
    pub(crate) fn step_rows(&self) -> Option<&StepRows> {
        crate::gemm_vnni::enabled().then(|| self.step_rows.get_or_init(|| StepRows::new(self)))
    }
    /// Builds now the decode panels (where the VNNI kernels run; else nothing to build), so
    /// that no timed decode step pays for them.
    pub fn prepare_decode(&self) {
        let _ = self.decode_panels();
    }
    /// Builds now the copy that output-sparse products read rows from (where the VNNI
    /// kernels run; else nothing to build), so that no timed product pays for it (about 2 ms
    /// for a 1536 x 576 matrix).
    pub fn prepare_row_reads(&self) {
        let _ = self.step_rows();
    }
    /// The decode panels, made on first use; `None` where the VNNI kernels do not run.
    fn decode_panels(&self) -> Option<&Q4Panels> {
        crate::gemm_vnni::enabled().then(|| self.panels.get_or_init(|| Q4Panels::new(self)))
    }
    /// Rows `rows` of the product with token 0 of `x`, written into `out[rows]` (decode: the
    /// VNNI panels where they run, else one row dot product at a time). Used by the fused
    /// CATS kernel for its gate rows; `x` must have this matrix's column count.
    pub(crate) fn gemv_rows(&self, x: &ActsQ8, rows: std::ops::Range<usize>, out: &mut [f32]) {
        let out = OutPtr::new_offset(out, rows.start);
        self.gemv_chunk(x, self.decode_panels(), rows, out);
    }
    /// One chunk of a decode product: whole panels through the VNNI kernel, rows outside
    /// them (a chunk that does not start or end on a panel) through the row dot product.
    fn gemv_chunk(&self, x: &ActsQ8, panels: Option<&Q4Panels>, rows: std::ops::Range<usize>, out: OutPtr) {
        let act = inner::ActRow::of(x, 0);
        let (mut lo, mut hi) = (rows.start, rows.start);
        if let Some(p) = panels {
            (lo, hi) = crate::decode_panels::panel_span(&rows, self.rows);
            p.gemv(x, lo..hi, self.rows, out);
        }
        for span in [rows.start..lo, hi..rows.end] {
            self.gemv_span(&act, span, out);
        }
    }
    /// Rows `span` of one token's product through the row dots, four rows at a time.
    fn gemv_span(&self, act: &inner::ActRow<'_>, span: std::ops::Range<usize>, out: OutPtr) {
        // The codes only: with the scales and minima too (a seventh of the bytes, each row's
        // in one or two lines) a 1536 x 576 product measured 28.7 µs against 26.5 on a Zen 3
        // VM, weights from memory, the two taking turns in one process (down, 576 x 1536:
        // 22.0 against 21.9; without any prefetch 40.6).
        let prefetch = |r: usize| {
            if r < span.end {
                crate::cpu::prefetch(self.row(r).codes);
            }
        };
        let mut r = span.start;
        while r + 4 <= span.end {
            (r + PREFETCH_ROWS_AHEAD..r + PREFETCH_ROWS_AHEAD + 4).for_each(prefetch);
            let four = inner::dot_rows4([self.row(r), self.row(r + 1), self.row(r + 2), self.row(r + 3)], act);
            for (k, v) in four.into_iter().enumerate() {
                // SAFETY: rows r..r + 4 belong to this span, whose caller owns their outputs.
                unsafe { out.write(r + k, v) };
            }
            r += 4;
        }
        for r in r..span.end {
            prefetch(r + PREFETCH_ROWS_AHEAD);
            // SAFETY: row r belongs to this span, whose caller owns its output entry.
            unsafe { out.write(r, inner::dot(&self.row(r), act)) };
        }
    }
    #[inline]
    pub(crate) fn row_view(&self, r: usize) -> inner::Q4Row<'_> {
        self.row(r)
    }
    #[inline]
    fn row(&self, r: usize) -> inner::Q4Row<'_> {
        let nb = self.cols / QK;
        inner::Q4Row {
            codes: &self.codes[r * nb * 16..(r + 1) * nb * 16],
            d: &self.d[r * nb..(r + 1) * nb],
            m: &self.m[r * nb..(r + 1) * nb],
        }
    }
    /// f16 bits of block `b` of row `r`: (d, m).
    pub(crate) fn block_bits(&self, r: usize, b: usize) -> (u16, u16) {
        let row = self.row(r);
        (row.d[b], row.m[b])
    }
    /// Block `b` of row `r`: its 32 codes (0..15) in order into `codes`, and (d, m).
    pub(crate) fn block_codes(&self, r: usize, b: usize, codes: &mut [i8; QK]) -> (f32, f32) {
        let row = self.row(r);
        let c = &row.codes[b * 16..(b + 1) * 16];
        for (j, &v) in c.iter().enumerate() {
            codes[j] = (v & 0x0f) as i8;
            codes[j + 16] = (v >> 4) as i8;
        }
        (f16::from_bits(row.d[b]).to_f32(), f16::from_bits(row.m[b]).to_f32())
    }
    /// Row `r` in f32.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let row = self.row(r);
        for (b, o) in out.chunks_exact_mut(QK).enumerate() {
            let (d, m) = (f16::from_bits(row.d[b]).to_f32(), f16::from_bits(row.m[b]).to_f32());
            for j in 0..16 {
                let c = row.codes[b * 16 + j];
                o[j] = d * (c & 0x0f) as f32 + m;
                o[j + 16] = d * (c >> 4) as f32 + m;
            }
        }
    }
}

/// `out[t][r] = W[r] · x[t]` for Q4_1 weights and int8 activations.
pub fn matmul_q4_1(w: &MatQ4_1, x: &ActsQ8, out: &mut [f32]) -> Result<(), KernelError> {
    let (rows, cols, n) = (w.rows, w.cols, x.n());
    if x.cols() != cols {
        return Err(KernelError::Shape(format!("weights have {cols} columns, activations {}", x.cols())));
    }
    if out.len() != n * rows {
        return Err(KernelError::Length { what: "output", expected: n * rows, got: out.len() });
    }
    let row_bytes = cols / QK * Q4_1_BLOCK_BYTES;
    if n >= 4 && crate::gemm_vnni::enabled() {
        crate::gemm_vnni::with_offset_acts(x, |xu| products(w, x, Gemm::Vnni(xu), row_bytes, out));
    } else if n >= 4 {
        with_packed_acts(x, cols / QK, |packed| products(w, x, Gemm::Avx2(packed), row_bytes, out));
    } else {
        products(w, x, Gemm::None, row_bytes, out);
    }
    Ok(())
}

/// Decode products of several matrices with one token (q, k and v; gate and up): `outs[j] =
/// W_j x`, as one pool job whose tasks are every matrix's row chunks, so the threads hand
/// off and wait once instead of once per matrix. Other products (several tokens) run one
/// after the other through [`matmul_q4_1`].
pub fn matmul_q4_1_many(x: &ActsQ8, jobs: &mut [(&MatQ4_1, &mut [f32])]) -> Result<(), KernelError> {
    for (w, out) in jobs.iter() {
        if x.cols() != w.cols {
            return Err(KernelError::Shape(format!("weights have {} columns, activations {}", w.cols, x.cols())));
        }
        if out.len() != x.n() * w.rows {
            return Err(KernelError::Length { what: "output", expected: x.n() * w.rows, got: out.len() });
        }
    }
    if x.n() != 1 || jobs.len() < 2 {
        return jobs.iter_mut().try_for_each(|(w, out)| matmul_q4_1(w, x, out));
    }
    /// One matrix of the job: its panels, output and row chunks.
    struct Part<'a> {
        w: &'a MatQ4_1,
        panels: Option<&'a Q4Panels>,
        out: OutPtr,
        chunk: usize,
        chunks: usize,
    }
    let parts: Vec<Part<'_>> = jobs
        .iter_mut()
        .map(|(w, out)| {
            let chunk = crate::matmul::row_chunk(w.rows, w.cols / QK * Q4_1_BLOCK_BYTES, 1);
            Part { w, panels: w.decode_panels(), out: OutPtr::new(out), chunk, chunks: w.rows.div_ceil(chunk) }
        })
        .collect();
    let tasks = parts.iter().map(|p| p.chunks).sum();
    crate::pool::parallel_for(tasks, |mut t| {
        for p in &parts {
            if t < p.chunks {
                let rows = t * p.chunk..((t + 1) * p.chunk).min(p.w.rows);
                p.w.gemv_chunk(x, p.panels, rows, p.out);
                return;
            }
            t -= p.chunks;
        }
    });
    Ok(())
}

/// Rows ahead whose fetch a decode product starts before computing the current one: one
/// token's work per row is too short for the hardware prefetcher to hide the memory latency.
const PREFETCH_ROWS_AHEAD: usize = 4;

/// Adds each block minimum's share `Σ_b m[r][b] · Σx[t][b]` to `out` for rows `range` and
/// tokens `0..tokens` (the AVX2 GEMM's groups of four): a small f32 GEMM of the rows' minimums against the
/// tokens' block sums, through the f32 register-tile kernel (a scalar loop here cost a fifth
/// of a 512-token prefill).
fn add_min_terms(w: &MatQ4_1, x: &ActsQ8, range: std::ops::Range<usize>, tokens: usize, out: OutPtr) {
    const TILE_ROWS: usize = 2;
    let nb = w.cols / QK;
    let mut mins = vec![0f32; range.len() * nb];
    for (r, dst) in range.clone().zip(mins.chunks_exact_mut(nb)) {
        for (m, &bits) in dst.iter_mut().zip(w.row(r).m) {
            *m = f16::from_bits(bits).to_f32();
        }
    }
    let rows = w.rows;
    for t in (0..tokens / 4 * 4).step_by(4) {
        let sums = [x.row_sums(t), x.row_sums(t + 1), x.row_sums(t + 2), x.row_sums(t + 3)];
        let mut i = 0;
        while i < range.len() {
            let count = if range.len() - i >= TILE_ROWS { TILE_ROWS } else { 1 };
            let tile = &mins[i * nb..(i + count) * nb];
            let res = if count == TILE_ROWS {
                crate::cpu::f32_rows_x4::<TILE_ROWS>(tile, nb, sums)
            } else {
                let one = crate::cpu::f32_rows_x4::<1>(tile, nb, sums)[0];
                [one, [0.0; 4]]
            };
            for (k, row) in res.iter().take(count).enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    // SAFETY: t + j < tokens <= n and row range.start + i + k belongs to this
                    // chunk (see OutPtr).
                    unsafe { out.add((t + j) * rows + range.start + i + k, v) };
                }
            }
            i += count;
        }
    }
}

/// Which GEMM the tokens of a product go through.
#[derive(Clone, Copy)]
enum Gemm<'a> {
    /// AVX-512 VNNI, every token (its activations offset to unsigned bytes).
    Vnni(&'a [u8]),
    /// The AVX2 GEMM for full groups of four tokens (packed activations).
    Avx2(&'a Packed<'a>),
    /// Dot products only (decode).
    None,
}

/// The row-parallel part of [`matmul_q4_1`]. Full groups of four tokens go through the
/// int8 GEMM microkernel: a chunk's codes are unpacked to bytes (0..15) with `d` as the block
/// scale, and the `m · Σx` term is added afterwards. Remaining tokens (and decode) use the
/// Q4_1 dot product directly.
fn products(w: &MatQ4_1, x: &ActsQ8, gemm: Gemm<'_>, row_bytes: usize, out: &mut [f32]) {
    let (rows, n) = (w.rows, x.n());
    let grouped = match gemm {
        Gemm::Vnni(_) => n,
        Gemm::Avx2(packed) => packed.groups * 4,
        Gemm::None => 0,
    };
    if n == 1 {
        let panels = w.decode_panels();
        for_each_row_chunk(rows, row_bytes, n, out, |range, out: OutPtr| w.gemv_chunk(x, panels, range, out));
        return;
    }
    let acts = |t: usize| inner::ActRow::of(x, t);
    for_each_row_chunk(rows, row_bytes, n, out, |range, out: OutPtr| {
        match gemm {
            // The minimums are folded into the VNNI kernel.
            Gemm::Vnni(xu) => {
                crate::gemm_vnni::gemm_rows(crate::gemm_vnni::Weights::Q4(w), rows, x, xu, range.clone(), out)
            }
            Gemm::Avx2(packed) if grouped > 0 => {
                if let Ok(codes) = w.unpack_rows(range.clone()) {
                    q8_gemm_rows(&codes, range.start, rows, packed, 0..range.len(), out);
                    add_min_terms(w, x, range.clone(), grouped, out);
                }
            }
            _ => {}
        }
        let end = range.end;
        for r in range {
            if n < 4 && r + PREFETCH_ROWS_AHEAD < end {
                let ahead = w.row(r + PREFETCH_ROWS_AHEAD);
                crate::cpu::prefetch(ahead.codes);
                crate::cpu::prefetch(ahead.d);
                crate::cpu::prefetch(ahead.m);
            }
            let row = w.row(r);
            let mut t = grouped;
            while t + 4 <= n {
                let v = inner::dot_x4(&row, [acts(t), acts(t + 1), acts(t + 2), acts(t + 3)]);
                for (k, v) in v.into_iter().enumerate() {
                    // SAFETY: t + k < n and r < rows; only this chunk writes row r.
                    unsafe { out.write((t + k) * rows + r, v) };
                }
                t += 4;
            }
            for t in t..n {
                let v = inner::dot(&row, &acts(t));
                // SAFETY: as above.
                unsafe { out.write(t * rows + r, v) };
            }
        }
    });
}

impl MatQ4_1 {
    /// Rows `range` as int8 codes (0..15) with each block's `d` as its scale: the value
    /// minus the block minimum, in the layout of the int8 GEMM.
    fn unpack_rows(&self, range: std::ops::Range<usize>) -> Result<MatQ8, KernelError> {
        let nb = self.cols / QK;
        let mut qs = Vec::with_capacity(range.len() * self.cols);
        let mut scales = Vec::with_capacity(range.len() * nb);
        for r in range.clone() {
            let row = self.row(r);
            for b in 0..nb {
                let c = &row.codes[b * 16..(b + 1) * 16];
                qs.extend(c.iter().map(|&v| (v & 0x0f) as i8));
                qs.extend(c.iter().map(|&v| (v >> 4) as i8));
                scales.push(f16::from_bits(row.d[b]).to_f32());
            }
        }
        MatQ8::from_parts(range.len(), self.cols, qs, scales)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prepare calls build the decode panels and the step-order rows ahead of any
    /// product where the VNNI kernels run, and nothing where they do not.
    #[test]
    fn prepare_builds_the_decode_copies() {
        let w = MatQ4_1::quantize(32, 64, &crate::testdata::values(32 * 64, 9)).unwrap();
        assert!(w.panels.get().is_none() && w.step_rows.get().is_none());
        w.prepare_decode();
        w.prepare_row_reads();
        let on = crate::gemm_vnni::enabled();
        assert_eq!(w.panels.get().is_some(), on);
        assert_eq!(w.step_rows.get().is_some(), on);
        // A listed row costs what the step-order copy holds per row.
        if let Some(steps) = w.step_rows.get() {
            assert_eq!(w.listed_row_bytes() * w.rows(), steps.bytes());
        }
    }

    #[test]
    fn listed_rows_cost_whole_lines_in_step_order() {
        // SmolLM2's 576-wide rows: 18 blocks, 360 bytes, 384 in step order.
        let w = MatQ4_1::quantize(2, 576, &crate::testdata::values(2 * 576, 3)).unwrap();
        let want = if crate::gemm_vnni::enabled() { 384 } else { 360 };
        assert_eq!(w.listed_row_bytes(), want);
    }

    fn data(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_f64_on_dequantized_operands() {
        // Both prefill GEMMs and both decode GEMVs where the CPU has AVX-512 VNNI (the AVX2
        // ones forced on this thread).
        for (rows, cols, n, avx2_only) in [false, true].into_iter().flat_map(|off| {
            [(1, 32, 1), (7, 64, 1), (13, 96, 5), (33, 576, 9), (4, 32, 4), (70, 1536, 37), (300, 64, 16), (21, 64, 7)]
                .into_iter()
                // Decode products cut into chunks that start and end inside panels of 16 rows.
                .chain([(200, 576, 1), (1500, 576, 1), (37, 1536, 1)])
                .collect::<Vec<_>>()
                .into_iter()
                .map(move |(r, c, n)| (r, c, n, off))
        }) {
            crate::gemm_vnni::FORCE_OFF.with(|f| f.set(avx2_only));
            let w = MatQ4_1::quantize(rows, cols, &data(rows * cols, 1)).unwrap();
            let x = data(n * cols, 2);
            let mut a = ActsQ8::default();
            a.quantize_from(&x, n, cols).unwrap();
            let mut out = vec![0f32; n * rows];
            matmul_q4_1(&w, &a, &mut out).unwrap();
            let mut wr = vec![0f32; cols];
            for r in 0..rows {
                w.dequantize_row(r, &mut wr);
                for t in 0..n {
                    let (xq, xs) = (a.row_qs(t), a.row_scales(t));
                    let want: f64 = (0..cols).map(|i| wr[i] as f64 * xq[i] as f64 * xs[i / QK] as f64).sum();
                    let got = out[t * rows + r] as f64;
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{rows}x{cols} n{n} r{r} t{t}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantize_error_is_within_half_a_step() {
        let x = data(64, 3);
        let w = MatQ4_1::quantize(1, 64, &x).unwrap();
        let mut back = vec![0f32; 64];
        w.dequantize_row(0, &mut back);
        for (b, (xs, ys)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
            let step = f16::from_bits(w.d[b]).to_f32();
            for (a, y) in xs.iter().zip(ys) {
                assert!((a - y).abs() <= step * 0.5 + 2e-3, "{a} vs {y}");
            }
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(MatQ4_1::from_ggml(1, 32, &[0u8; 19]).is_err());
        assert!(MatQ4_1::from_ggml(1, 33, &[0u8; 20]).is_err());
        let w = MatQ4_1::from_ggml(1, 32, &[0u8; 20]).unwrap();
        let mut a = ActsQ8::default();
        a.quantize_from(&[0.0; 64], 1, 64).unwrap();
        assert!(matmul_q4_1(&w, &a, &mut [0.0; 1]).is_err());
        assert!(matmul_q4_1_many(&a, &mut [(&w, &mut [0.0; 1][..])]).is_err());
    }

    /// One job over q, k and v shapes (row counts inside and outside whole panels) gives
    /// exactly each product run alone, for one token and for several.
    #[test]
    fn many_products_in_one_job_equal_each_alone() {
        let cols = 576;
        let mats: Vec<MatQ4_1> = [576usize, 192, 200]
            .iter()
            .enumerate()
            .map(|(i, &r)| MatQ4_1::quantize(r, cols, &data(r * cols, 3 + i as u64)).unwrap())
            .collect();
        for n in [1usize, 3] {
            let mut a = ActsQ8::default();
            a.quantize_from(&data(n * cols, 9), n, cols).unwrap();
            let want: Vec<Vec<f32>> = mats
                .iter()
                .map(|w| {
                    let mut o = vec![0f32; n * w.rows()];
                    matmul_q4_1(w, &a, &mut o).unwrap();
                    o
                })
                .collect();
            let mut got: Vec<Vec<f32>> = mats.iter().map(|w| vec![f32::NAN; n * w.rows()]).collect();
            let mut jobs: Vec<(&MatQ4_1, &mut [f32])> =
                mats.iter().zip(got.iter_mut()).map(|(w, o)| (w, &mut o[..])).collect();
            matmul_q4_1_many(&a, &mut jobs).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "n = {n}"
                );
            }
        }
    }
}
