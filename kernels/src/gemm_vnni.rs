//! The int8 GEMM of prefill on AVX-512 VNNI, where the CPU has it.
//!
//! Weight rows are repacked sixteen at a time so that one 512-bit register holds four
//! consecutive columns of each of sixteen rows; a token's four activation bytes are broadcast
//! against it and `vpdpbusd` does 64 multiply-adds (the AVX2 GEMM's `vpmaddwd` does 16).
//! `vpdpbusd` multiplies unsigned by signed bytes, so activations are offset by 128 and a
//! per-block bias of -128 x the weights' sum removes the offset exactly. The whole K range
//! of a panel stays in registers (16 x 1536 bytes of weights fit in L1), so each output is
//! written once. `SIEVE_ISA=avx2` keeps the AVX2 GEMM (and the AVX2 decode GEMVs:
//! [`enabled`] also decides whether decode uses the panels of `decode_panels.rs`).

use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use crate::matmul::OutPtr;
use crate::{ActsQ8, MatQ4_1, MatQ8, QK};

/// Rows per repacked panel.
const PANEL_ROWS: usize = 16;

/// Tokens per microkernel call (8 accumulators and 8 results of 32 registers).
const TOKEN_TILE: usize = 8;

#[cfg(test)]
thread_local! {
    /// Tests turn the VNNI path off on their own thread to check the AVX2 GEMM on CPUs that
    /// have both (the decision is taken once per product, on the calling thread).
    pub(crate) static FORCE_OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Set by [`set_enabled`]: the VNNI GEMM stays off even where the CPU has it.
static TURNED_OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns the VNNI GEMM off (`false`) or back on where the CPU has it, for the whole process:
/// benchmarks compare the two GEMMs side by side with it.
pub fn set_enabled(on: bool) {
    TURNED_OFF.store(!on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether products of several tokens use this GEMM, and decode products the VNNI panels.
pub fn enabled() -> bool {
    #[cfg(test)]
    if FORCE_OFF.with(|f| f.get()) {
        return false;
    }
    if TURNED_OFF.load(std::sync::atomic::Ordering::Relaxed) {
        return false;
    }
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            crate::isa::active() == crate::isa::Isa::Avx2
                && std::env::var("SIEVE_ISA").as_deref() != Ok("avx2")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

thread_local! {
    /// This thread's buffer of offset activations.
    static OFFSET: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with the values of `x` offset by 128 (as unsigned bytes, row after row).
pub(crate) fn with_offset_acts<R>(x: &ActsQ8, f: impl FnOnce(&[u8]) -> R) -> R {
    OFFSET.with(|cell| {
        let mut fresh = Vec::new();
        let mut held = cell.try_borrow_mut();
        let buf = match held.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut fresh,
        };
        buf.clear();
        for t in 0..x.n() {
            buf.extend(x.row_qs(t).iter().map(|&v| (v as u8) ^ 0x80));
        }
        f(buf)
    })
}

/// Weights the GEMM reads: int8 blocks, or Q4_1 blocks (codes 0..15, scale and minimum).
#[derive(Clone, Copy)]
pub(crate) enum Weights<'a> {
    Q8(&'a MatQ8),
    Q4(&'a MatQ4_1),
}

impl Weights<'_> {
    fn cols(&self) -> usize {
        match self {
            Weights::Q8(w) => w.cols(),
            Weights::Q4(w) => w.cols(),
        }
    }
}

/// Sixteen weight rows (`nr` of them real, the rest zero) in the microkernel's layout.
struct PanelBuf {
    w: Vec<i8>,
    bias: Vec<i32>,
    d: Vec<f32>,
    m: Vec<f32>,
    has_min: bool,
}

impl PanelBuf {
    fn new(nb: usize) -> Self {
        Self {
            w: vec![0; nb * 8 * 64],
            bias: vec![0; nb * PANEL_ROWS],
            d: vec![0.0; nb * PANEL_ROWS],
            m: vec![0.0; nb * PANEL_ROWS],
            has_min: false,
        }
    }

    fn fill(&mut self, w: Weights<'_>, r0: usize, nr: usize) {
        let nb = w.cols() / QK;
        self.w.fill(0);
        self.bias.fill(0);
        self.d.fill(0.0);
        self.m.fill(0.0);
        self.has_min = matches!(w, Weights::Q4(_));
        let mut block = [0i8; QK];
        for i in 0..nr {
            for b in 0..nb {
                let (d, m) = match w {
                    Weights::Q8(q) => {
                        block.copy_from_slice(&q.rows_qs(r0 + i, 1)[b * QK..(b + 1) * QK]);
                        (q.rows_scales(r0 + i, 1)[b], 0.0)
                    }
                    Weights::Q4(q) => q.block_codes(r0 + i, b, &mut block),
                };
                for g in 0..8 {
                    let at = ((8 * b + g) * PANEL_ROWS + i) * 4;
                    self.w[at..at + 4].copy_from_slice(&block[4 * g..4 * g + 4]);
                }
                self.bias[b * PANEL_ROWS + i] = -128 * block.iter().map(|&v| v as i32).sum::<i32>();
                self.d[b * PANEL_ROWS + i] = d;
                self.m[b * PANEL_ROWS + i] = m;
            }
        }
    }
}

/// `out[t * rows + r] = w[r] · x[t]` for `r` in `range` and every token of `x` (`xu`: its
/// values from [`with_offset_acts`]). Call only when [`enabled`].
pub(crate) fn gemm_rows(w: Weights<'_>, rows: usize, x: &ActsQ8, xu: &[u8], range: Range<usize>, out: OutPtr) {
    let (cols, n) = (w.cols(), x.n());
    let nb = cols / QK;
    if xu.len() < n * cols || x.cols() != cols {
        return;
    }
    let mut panel = PanelBuf::new(nb);
    for r0 in range.clone().step_by(PANEL_ROWS) {
        let nr = PANEL_ROWS.min(range.end - r0);
        panel.fill(w, r0, nr);
        let mut t = 0;
        while t < n {
            let count = match n - t {
                c if c >= TOKEN_TILE => TOKEN_TILE,
                c if c >= 4 => 4,
                c if c >= 2 => 2,
                _ => 1,
            };
            let store = |k: usize, vals: &[f32; PANEL_ROWS]| {
                // SAFETY: rows r0 .. r0 + nr belong to this chunk (see OutPtr).
                unsafe { out.write_slice((t + k) * rows + r0, &vals[..nr]) };
            };
            match count {
                TOKEN_TILE => {
                    tile::<TOKEN_TILE>(&panel, nb, cols, xu, x, t).iter().enumerate().for_each(|(k, v)| store(k, v))
                }
                4 => tile::<4>(&panel, nb, cols, xu, x, t).iter().enumerate().for_each(|(k, v)| store(k, v)),
                2 => tile::<2>(&panel, nb, cols, xu, x, t).iter().enumerate().for_each(|(k, v)| store(k, v)),
                _ => tile::<1>(&panel, nb, cols, xu, x, t).iter().enumerate().for_each(|(k, v)| store(k, v)),
            }
            t += count;
        }
    }
}

/// One microkernel call over tokens `t .. t + T`.
fn tile<const T: usize>(
    panel: &PanelBuf,
    nb: usize,
    cols: usize,
    xu: &[u8],
    x: &ActsQ8,
    t: usize,
) -> [[f32; PANEL_ROWS]; T] {
    let rows_u: [&[u8]; T] = std::array::from_fn(|k| &xu[(t + k) * cols..(t + k + 1) * cols]);
    let scales: [&[f32]; T] = std::array::from_fn(|k| x.row_scales(t + k));
    let sums: [&[f32]; T] = std::array::from_fn(|k| x.row_sums(t + k));
    #[cfg(target_arch = "x86_64")]
    {
        let m = panel.has_min.then_some(&panel.m[..]);
        let p = crate::cpu::avx512::Panel { w: &panel.w, bias: &panel.bias, d: &panel.d, m };
        // SAFETY: `enabled()` (the caller's precondition) saw avx512f, avx512bw and avx512vnni.
        unsafe { crate::cpu::avx512::gemm_panel::<T>(&p, nb, rows_u, scales, sums) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (panel, nb, rows_u, scales, sums);
        [[0.0; PANEL_ROWS]; T]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul_q8;

    /// The VNNI product against the AVX2 one and a plain f64 loop, for shapes that are not
    /// multiples of the panel or the token tile, with weights that use -128.
    #[test]
    fn vnni_matches_avx2_and_f64() {
        if !enabled() {
            eprintln!("no AVX-512 VNNI here: skipped");
            return;
        }
        for (rows, cols, n) in [(1, 32, 4), (17, 64, 5), (33, 576, 9), (70, 1536, 37), (16, 96, 16), (40, 576, 300)] {
            let vals = crate::testdata::values(rows * cols, 11);
            let mut qs: Vec<i8> = vals.iter().map(|v| (v * 128.0).clamp(-128.0, 127.0) as i8).collect();
            qs[0] = -128;
            let scales: Vec<f32> = (0..rows * cols / QK).map(|i| 0.01 + (i % 7) as f32 * 0.003).collect();
            let w = MatQ8::from_parts(rows, cols, qs.clone(), scales.clone()).unwrap();
            let xv = crate::testdata::values(n * cols, 12);
            let mut x = ActsQ8::default();
            x.quantize_from(&xv, n, cols).unwrap();
            let mut fast = vec![0f32; n * rows];
            matmul_q8(&w, &x, &mut fast).unwrap();
            FORCE_OFF.with(|f| f.set(true));
            let mut avx2 = vec![0f32; n * rows];
            matmul_q8(&w, &x, &mut avx2).unwrap();
            FORCE_OFF.with(|f| f.set(false));
            for t in 0..n {
                for r in 0..rows {
                    let terms: Vec<f64> = (0..cols)
                        .map(|k| {
                            qs[r * cols + k] as f64
                                * scales[r * cols / QK + k / QK] as f64
                                * x.row_qs(t)[k] as f64
                                * x.row_scales(t)[k / QK] as f64
                        })
                        .collect();
                    let want: f64 = terms.iter().sum();
                    let (got, other) = (fast[t * rows + r] as f64, avx2[t * rows + r] as f64);
                    let tol = 1e-6 + 1e-5 * terms.iter().map(|v| v.abs()).sum::<f64>();
                    assert!((got - want).abs() <= tol, "{rows}x{cols} n{n} r{r} t{t}: vnni {got} vs {want}");
                    assert!((other - want).abs() <= tol, "{rows}x{cols} n{n} r{r} t{t}: avx2 {other} vs {want}");
                }
            }
        }
    }
}
