//! Weight and activation containers, and the int8 block quantization of the fast path.

use crate::KernelError;
use crate::lines::Lines;

/// Values per quantization block (along the contiguous axis), as in GGML's Q8_0.
pub const QK: usize = 32;

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got { Ok(()) } else { Err(KernelError::Length { what, expected, got }) }
}

/// `a * b`, or a shape error when it does not fit in `usize`.
fn product(what: &'static str, a: usize, b: usize) -> Result<usize, KernelError> {
    a.checked_mul(b).ok_or_else(|| KernelError::Shape(format!("{what}: {a} x {b} overflows")))
}

fn check_block(what: &'static str, cols: usize) -> Result<(), KernelError> {
    if cols.is_multiple_of(QK) { Ok(()) } else { Err(KernelError::Block { what, cols, block: QK }) }
}

/// A row-major f32 matrix: `rows` outputs, each a contiguous row of `cols` inputs. The values
/// start on a cache line, so rows of a whole number of lines (every SmolLM2 and Llama width)
/// each start on one; the allocator's buffers start 16 bytes off a line, which split every
/// other 32-byte load of the GEMV loops across two lines.
#[derive(Debug, Clone)]
pub struct MatF32 {
    rows: usize,
    cols: usize,
    data: Lines,
}

impl MatF32 {
    /// Takes `data` (row-major, `rows * cols` values), copied onto cache lines.
    pub fn new(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, KernelError> {
        check_len("MatF32 data", product("MatF32", rows, cols)?, data.len())?;
        let mut lines = Lines::zeroed(4 * data.len());
        lines.floats_mut().copy_from_slice(&data);
        Ok(Self { rows, cols, data: lines })
    }
    /// Number of rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// All values, row-major.
    pub fn data(&self) -> &[f32] {
        self.data.floats()
    }
    /// Row `r` (panics if out of range: callers index with their own loop bounds).
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data.floats()[r * self.cols..(r + 1) * self.cols]
    }
    /// Bytes held by the weights.
    pub fn bytes(&self) -> usize {
        self.rows * self.cols * 4
    }
    /// Rows `r..r + count`, contiguous (panics if out of range).
    pub(crate) fn rows_data(&self, r: usize, count: usize) -> &[f32] {
        &self.data.floats()[r * self.cols..(r + count) * self.cols]
    }
}

/// A row-major int8 matrix with one f32 scale per block of [`QK`] values of a row.
#[derive(Debug, Clone)]
pub struct MatQ8 {
    rows: usize,
    cols: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
    /// The same weights in decode panels, made on the first decode product where the VNNI
    /// kernels run (see `decode_panels.rs`).
    panels: std::sync::OnceLock<crate::decode_panels::Q8Panels>,
}

impl MatQ8 {
    /// Wraps already-quantized blocks: `qs` row-major (`rows * cols`), `scales` one per block.
    pub fn from_parts(rows: usize, cols: usize, qs: Vec<i8>, scales: Vec<f32>) -> Result<Self, KernelError> {
        check_block("MatQ8", cols)?;
        let len = product("MatQ8", rows, cols)?;
        check_len("MatQ8 values", len, qs.len())?;
        check_len("MatQ8 scales", len / QK, scales.len())?;
        Ok(Self { rows, cols, qs, scales, panels: Default::default() })
    }

    /// Quantizes a row-major f32 matrix (symmetric, absmax per block, values in [-127, 127]).
    pub fn quantize(rows: usize, cols: usize, data: &[f32]) -> Result<Self, KernelError> {
        check_block("MatQ8", cols)?;
        check_len("MatQ8 source", product("MatQ8", rows, cols)?, data.len())?;
        let mut qs = vec![0i8; data.len()];
        let mut scales = vec![0f32; data.len() / QK];
        quantize_blocks(data, &mut qs, &mut scales);
        Ok(Self { rows, cols, qs, scales, panels: Default::default() })
    }

    /// Number of rows (outputs).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns (inputs).
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Quantized values of row `r`.
    pub fn row_qs(&self, r: usize) -> &[i8] {
        &self.qs[r * self.cols..(r + 1) * self.cols]
    }
    /// Block scales of row `r`.
    pub fn row_scales(&self, r: usize) -> &[f32] {
        let b = self.cols / QK;
        &self.scales[r * b..(r + 1) * b]
    }
    /// Values of rows `r..r + count`, contiguous (panics if out of range).
    pub(crate) fn rows_qs(&self, r: usize, count: usize) -> &[i8] {
        &self.qs[r * self.cols..(r + count) * self.cols]
    }
    /// Block scales of rows `r..r + count`, contiguous (panics if out of range).
    pub(crate) fn rows_scales(&self, r: usize, count: usize) -> &[f32] {
        let b = self.cols / QK;
        &self.scales[r * b..(r + count) * b]
    }
    /// Row `r` back in f32.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        for ((o, q), s) in out.chunks_mut(QK).zip(self.row_qs(r).chunks(QK)).zip(self.row_scales(r)) {
            for (oi, &qi) in o.iter_mut().zip(q) {
                *oi = qi as f32 * s;
            }
        }
    }
    /// Bytes held by the weights and scales.
    pub fn bytes(&self) -> usize {
        self.qs.len() + self.scales.len() * 4
    }
    /// Builds now the decode panels (where the VNNI kernels run; else nothing to build), so
    /// that no timed decode step pays for them.
    pub fn prepare_decode(&self) {
        let _ = self.decode_panels();
    }
    /// The decode panels, made on first use; `None` where the VNNI kernels do not run.
    pub(crate) fn decode_panels(&self) -> Option<&crate::decode_panels::Q8Panels> {
        crate::gemm_vnni::enabled().then(|| self.panels.get_or_init(|| crate::decode_panels::Q8Panels::new(self)))
    }
}

/// `n` activation rows of `cols` values, quantized like [`MatQ8`] rows.
#[derive(Debug, Clone, Default)]
pub struct ActsQ8 {
    n: usize,
    cols: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
    /// Per block `scale * Σ values`: the term Q4_1's block minimum multiplies.
    sums: Vec<f32>,
    /// The values with each pair of blocks' middle halves swapped (`a0 b0 a1 b1` from
    /// `a0 a1 b0 b1`): the order in which 32 bytes of Q4_1 codes unpack (low nibbles of two
    /// blocks, then high nibbles), so the Q4_1 GEMV multiplies two blocks per vector.
    pair_qs: Vec<i8>,
}

impl ActsQ8 {
    /// Quantizes `n` rows of `cols` values (`x.len() == n * cols`), reusing this buffer.
    pub fn quantize_from(&mut self, x: &[f32], n: usize, cols: usize) -> Result<(), KernelError> {
        self.quantize_with(x, n, cols, None).map(|_| ())
    }

    /// [`ActsQ8::quantize_from`] of `x` with every value of magnitude at most `t` zeroed
    /// first (TEAL's mask), returning how many were zeroed: the same result as masking a copy
    /// and quantizing it, without the copy and spread over the pool.
    pub fn quantize_masked_from(&mut self, x: &[f32], n: usize, cols: usize, t: f32) -> Result<usize, KernelError> {
        self.quantize_with(x, n, cols, Some(t))
    }

    fn quantize_with(&mut self, x: &[f32], n: usize, cols: usize, t: Option<f32>) -> Result<usize, KernelError> {
        check_block("ActsQ8", cols)?;
        check_len("ActsQ8 source", product("ActsQ8", n, cols)?, x.len())?;
        self.n = n;
        self.cols = cols;
        let nb = cols / QK;
        self.qs.resize(x.len(), 0);
        self.scales.resize(x.len() / QK, 0.0);
        self.sums.resize(x.len() / QK, 0.0);
        self.pair_qs.resize(x.len(), 0);
        let rows_per_task = (QUANTIZE_TASK_VALUES / cols.max(1)).max(1);
        let parts: Vec<std::sync::Mutex<RowsOut<'_>>> = self
            .qs
            .chunks_mut(rows_per_task * cols)
            .zip(self.scales.chunks_mut(rows_per_task * nb))
            .zip(self.sums.chunks_mut(rows_per_task * nb))
            .zip(self.pair_qs.chunks_mut(rows_per_task * cols))
            .map(|(((qs, scales), sums), pair_qs)| std::sync::Mutex::new(RowsOut { qs, scales, sums, pair_qs }))
            .collect();
        let zeroed = std::sync::atomic::AtomicUsize::new(0);
        let task = |i: usize| {
            if let Ok(mut part) = parts[i].lock() {
                let start = i * rows_per_task * cols;
                let len = part.qs.len();
                let z = quantize_rows(&x[start..start + len], cols, t, &mut part);
                zeroed.fetch_add(z, std::sync::atomic::Ordering::Relaxed);
            }
        };
        if parts.len() > 1 {
            crate::pool::parallel_for(parts.len(), task);
        } else if !parts.is_empty() {
            task(0);
        }
        Ok(zeroed.into_inner())
    }
    /// Number of rows (tokens).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Values per row.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Quantized values of row `t`.
    pub fn row_qs(&self, t: usize) -> &[i8] {
        &self.qs[t * self.cols..(t + 1) * self.cols]
    }
    /// Block scales of row `t`.
    pub fn row_scales(&self, t: usize) -> &[f32] {
        let b = self.cols / QK;
        &self.scales[t * b..(t + 1) * b]
    }
    /// Values of row `t` in pair order (see the field's comment).
    pub fn row_pair_qs(&self, t: usize) -> &[i8] {
        &self.pair_qs[t * self.cols..(t + 1) * self.cols]
    }
    /// Block sums (`scale * Σ values`) of row `t`.
    pub fn row_sums(&self, t: usize) -> &[f32] {
        let b = self.cols / QK;
        &self.sums[t * b..(t + 1) * b]
    }
}

/// Absmax int8 quantization of whole blocks; `x.len()` is a multiple of [`QK`].
/// `y.round()` (half away from zero) for |y| < 2^31, and 0 for NaN (as `round` then `as i8`
/// gives), without the libm call `f32::round` compiles to on baseline x86-64: truncation is
/// one instruction and exact, and so is `y - t`, so the loop vectorizes.
#[inline(always)]
pub(crate) fn round_away(y: f32) -> f32 {
    let t = y as i32 as f32;
    let f = y - t;
    if f >= 0.5 {
        t + 1.0
    } else if f <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// Values per parallel task of [`ActsQ8::quantize_from`]: a 512 x 576 prefill splits in 18,
/// a decode row runs on the calling thread.
const QUANTIZE_TASK_VALUES: usize = 16 << 10;

/// Where [`quantize_rows`] writes a run of whole rows.
struct RowsOut<'a> {
    qs: &'a mut [i8],
    scales: &'a mut [f32],
    sums: &'a mut [f32],
    pair_qs: &'a mut [i8],
}

/// Quantizes whole rows of `cols` values (those of magnitude at most `t` as zeros): blocks,
/// their sums, and the pair order. Returns how many values `t` zeroed.
fn quantize_rows(x: &[f32], cols: usize, t: Option<f32>, out: &mut RowsOut<'_>) -> usize {
    let zeroed = match t {
        None => {
            quantize_blocks(x, out.qs, out.scales);
            0
        }
        Some(t) => {
            let mut block = [0f32; QK];
            let mut zeroed = 0;
            for ((xb, qb), s) in x.chunks_exact(QK).zip(out.qs.chunks_exact_mut(QK)).zip(out.scales.chunks_exact_mut(1))
            {
                for (m, &v) in block.iter_mut().zip(xb) {
                    let keep = v.abs() > t;
                    zeroed += usize::from(!keep);
                    *m = if keep { v } else { 0.0 };
                }
                quantize_blocks(&block, qb, s);
            }
            zeroed
        }
    };
    for ((q, s), sum) in out.qs.chunks_exact(QK).zip(out.scales.iter()).zip(out.sums.iter_mut()) {
        *sum = q.iter().map(|&v| v as i32).sum::<i32>() as f32 * s;
    }
    let h = QK / 2;
    for (row, dst) in out.qs.chunks_exact(cols).zip(out.pair_qs.chunks_exact_mut(cols)) {
        let mut pairs = row.chunks_exact(2 * QK);
        let mut outs = dst.chunks_exact_mut(2 * QK);
        for (p, o) in (&mut pairs).zip(&mut outs) {
            o[..h].copy_from_slice(&p[..h]);
            o[h..QK].copy_from_slice(&p[QK..QK + h]);
            o[QK..QK + h].copy_from_slice(&p[h..QK]);
            o[QK + h..].copy_from_slice(&p[QK + h..]);
        }
        outs.into_remainder().copy_from_slice(pairs.remainder());
    }
    zeroed
}

fn quantize_blocks(x: &[f32], qs: &mut [i8], scales: &mut [f32]) {
    if crate::cpu::quant::quantize_blocks(x, qs, scales) {
        return;
    }
    quantize_blocks_portable(x, qs, scales);
}

/// The reference loop of [`quantize_blocks`] (SIMD loops match it bit for bit).
fn quantize_blocks_portable(x: &[f32], qs: &mut [i8], scales: &mut [f32]) {
    for ((xb, qb), s) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(scales.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in qb.iter_mut().zip(xb) {
            *q = round_away(v * inv).clamp(-127.0, 127.0) as i8;
        }
        *s = d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `prepare_decode` builds the decode panels where the VNNI kernels run, and only there.
    #[test]
    fn prepare_builds_the_decode_panels() {
        let w = MatQ8::quantize(32, 64, &crate::testdata::values(32 * 64, 9)).unwrap();
        assert!(w.panels.get().is_none());
        w.prepare_decode();
        assert_eq!(w.panels.get().is_some(), crate::gemm_vnni::enabled());
    }

    #[test]
    fn masked_quantization_equals_quantizing_a_masked_copy() {
        // 40 rows x 1536: several parallel tasks; t cuts about a third of the values.
        let (n, cols, t) = (40, 1536, 0.33);
        let x = crate::testdata::values(n * cols, 9);
        let mut copy = x.clone();
        let want_zeroed = copy.iter_mut().filter(|v| v.abs() <= t).map(|v| *v = 0.0).count();
        let (mut a, mut b) = (ActsQ8::default(), ActsQ8::default());
        a.quantize_from(&copy, n, cols).unwrap();
        assert_eq!(b.quantize_masked_from(&x, n, cols, t).unwrap(), want_zeroed);
        for r in 0..n {
            assert_eq!(a.row_qs(r), b.row_qs(r));
            assert_eq!(a.row_scales(r), b.row_scales(r));
            assert_eq!(a.row_sums(r), b.row_sums(r));
            assert_eq!(a.row_pair_qs(r), b.row_pair_qs(r));
        }
    }

    /// The SIMD loop against the portable one, bit for bit: random blocks, ties at .5,
    /// all-zero blocks, NaN and infinities.
    #[test]
    fn simd_quantization_matches_the_portable_loop() {
        let mut x = crate::testdata::values(64 * QK, 5);
        for (i, v) in x.iter_mut().enumerate().take(QK) {
            // A block whose values land exactly on ties: amax 127 gives scale 1.
            *v = if i == 0 { 127.0 } else { (i as f32 - 16.0) + 0.5 };
        }
        x[QK..2 * QK].fill(0.0);
        x[2 * QK + 3] = f32::NAN;
        x[3 * QK + 5] = f32::INFINITY;
        x[4 * QK + 7] = -f32::INFINITY;
        let (mut q1, mut s1) = (vec![0i8; x.len()], vec![0f32; 64]);
        let (mut q2, mut s2) = (vec![0i8; x.len()], vec![0f32; 64]);
        let simd = crate::cpu::quant::quantize_blocks(&x, &mut q1, &mut s1);
        quantize_blocks_portable(&x, &mut q2, &mut s2);
        if simd {
            assert_eq!(q1, q2);
            assert_eq!(
                s1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                s2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn round_away_matches_round() {
        for y in [0.0f32, 0.5, -0.5, 1.5, -1.5, 2.4999998, 126.5, -126.5, 0.49999997, 3.7, -3.7, 1e-30] {
            assert_eq!(round_away(y), y.round(), "{y}");
        }
        assert_eq!(round_away(f32::NAN).clamp(-127.0, 127.0) as i8, 0);
        let mut s = 1u32;
        for _ in 0..100_000 {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let y = (s >> 8) as f32 / (1u32 << 24) as f32 * 300.0 - 150.0;
            assert_eq!(round_away(y), y.round(), "{y}");
        }
    }

    #[test]
    fn quantize_round_trips_within_half_a_step() {
        let data: Vec<f32> = (0..64 * 3).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let m = MatQ8::quantize(3, 64, &data).unwrap();
        let mut row = vec![0f32; 64];
        for r in 0..3 {
            m.dequantize_row(r, &mut row);
            for (b, (&a, &d)) in data[r * 64..(r + 1) * 64].iter().zip(&row).enumerate() {
                let step = m.row_scales(r)[b / QK];
                assert!((a - d).abs() <= step * 0.5 + 1e-6, "{a} vs {d}");
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(matches!(MatQ8::quantize(1, 33, &[0.0; 33]), Err(KernelError::Block { .. })));
        assert!(matches!(MatF32::new(2, 2, vec![0.0; 3]), Err(KernelError::Length { .. })));
        let mut a = ActsQ8::default();
        assert!(a.quantize_from(&[0.0; 64], 3, 32).is_err());
    }
}
