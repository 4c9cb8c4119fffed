//! Dense matrix products `out[t][r] = W[r] · x[t]` for `n` activation rows, split over rows
//! on the rayon pool. With `n == 1` this is the decode GEMV; larger `n` is batched prefill.
//!
//! Inner kernels work on register tiles: several weight rows against one token (GEMV: the
//! activation block is loaded once for [`GEMV_ROWS`] rows), or against four tokens at a
//! time (GEMM: each weight block is loaded once per four tokens). Tokens are walked in tiles
//! of [`TOKEN_TILE`] so the tile's activations stay in L1 while the thread's rows stream past.
//!
//! Parallel split: rayon hands-offs cost microseconds (far more when the caller is not a
//! pool thread and the workers must be woken), so a product is cut into at most
//! `4 * threads` tasks and never into tasks smaller than [`MIN_TASK_WORK`]; small products
//! run on the calling thread.

use rayon::prelude::*;

use crate::cpu;
use crate::{ActsQ8, KernelError, MatF32, MatQ8, QK};

/// Tokens per tile (a multiple of 4).
const TOKEN_TILE: usize = 16;

/// Weight rows per GEMV kernel call.
const GEMV_ROWS: usize = 4;

/// Weight rows per q8 GEMM (four-token) kernel call.
const GEMM_ROWS: usize = 4;

/// Weight rows per f32 GEMM (four-token) kernel call: 2 x 4 accumulators fill the FMA
/// pipes without spilling registers.
const F32_GEMM_ROWS: usize = 2;

/// Least work worth a parallel task, in weight bytes times tokens: about the bytes a core
/// streams in ~10 µs at decode, well above the cost of a hand-off to a sleeping worker.
const MIN_TASK_WORK: usize = 128 << 10;

/// Rows per task for a product of `rows` rows of `row_bytes` weight bytes against `n`
/// tokens: a multiple of the kernels' row tile, at most `4 * threads` tasks, none smaller
/// than [`MIN_TASK_WORK`].
fn row_chunk(rows: usize, row_bytes: usize, n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let work = rows.saturating_mul(row_bytes).saturating_mul(n.max(1));
    let tasks = (work / MIN_TASK_WORK).clamp(1, threads * 4);
    rows.div_ceil(tasks).next_multiple_of(GEMV_ROWS.max(GEMM_ROWS)).max(1)
}

/// Output pointer shared by the row chunks of one product.
#[derive(Clone, Copy)]
struct OutPtr {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: each chunk writes only the output entries of its own rows; chunks are disjoint,
// and the product returns only after every chunk finished.
unsafe impl Send for OutPtr {}
// SAFETY: as above: concurrent users write disjoint entries.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Writes `v` at index `i`.
    ///
    /// # Safety
    /// No other thread may access entry `i` during the product (chunks own their rows).
    #[inline(always)]
    unsafe fn write(self, i: usize, v: f32) {
        assert!(i < self.len, "output index out of range");
        // SAFETY: `i < len`, the length of the live output slice; the caller guarantees
        // exclusive access to entry `i`.
        unsafe { *self.ptr.add(i) = v };
    }
}

/// Runs `body` over row ranges that partition `0..rows`, in parallel when worth it.
fn for_each_row_chunk(
    rows: usize,
    row_bytes: usize,
    n: usize,
    out: &mut [f32],
    body: impl Fn(std::ops::Range<usize>, OutPtr) + Sync,
) {
    let ptr = OutPtr { ptr: out.as_mut_ptr(), len: out.len() };
    let chunk = row_chunk(rows, row_bytes, n);
    let chunks = rows.div_ceil(chunk);
    if chunks <= 1 {
        body(0..rows, ptr);
        return;
    }
    (0..chunks).into_par_iter().for_each(|c| body(c * chunk..((c + 1) * chunk).min(rows), ptr));
}

fn check(rows: usize, cols: usize, x_cols: usize, x_len: usize, n: usize, out_len: usize) -> Result<(), KernelError> {
    if x_cols != cols {
        return Err(KernelError::Shape(format!("weights have {cols} columns, activations {x_cols}")));
    }
    let expected = n.checked_mul(cols).ok_or_else(|| KernelError::Shape(format!("{n} x {cols} overflows")))?;
    if x_len != expected {
        return Err(KernelError::Length { what: "activations", expected, got: x_len });
    }
    let expected = n.checked_mul(rows).ok_or_else(|| KernelError::Shape(format!("{n} x {rows} overflows")))?;
    if out_len != expected {
        return Err(KernelError::Length { what: "output", expected, got: out_len });
    }
    Ok(())
}

/// Walks one chunk's rows in tiles: `x4(r, count, t)` computes rows `r..r + count` against
/// tokens `t..t + 4`, `x1(r, count, t)` against token `t` alone; `count` is the tile height
/// (`h4` / `h1`) or 1 for the chunk's leftover rows.
fn tile_rows(
    range: std::ops::Range<usize>,
    n: usize,
    (h4, h1): (usize, usize),
    mut x4: impl FnMut(usize, usize, usize),
    mut x1: impl FnMut(usize, usize, usize),
) {
    let n4 = n / 4 * 4;
    for t0 in (0..n4).step_by(TOKEN_TILE) {
        let t1 = (t0 + TOKEN_TILE).min(n4);
        let mut r = range.start;
        while r < range.end {
            let count = if range.end - r >= h4 { h4 } else { 1 };
            for t in (t0..t1).step_by(4) {
                x4(r, count, t);
            }
            r += count;
        }
    }
    for t in n4..n {
        let mut r = range.start;
        while r < range.end {
            let count = if range.end - r >= h1 { h1 } else { 1 };
            x1(r, count, t);
            r += count;
        }
    }
}

/// f32 product: `x` holds `n` rows of `w.cols()` values; `out` receives `n` rows of `w.rows()`.
pub fn matmul_f32(w: &MatF32, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), KernelError> {
    let (rows, cols) = (w.rows(), w.cols());
    check(rows, cols, cols, x.len(), n, out.len())?;
    let xrow = |t: usize| &x[t * cols..(t + 1) * cols];
    for_each_row_chunk(rows, cols * 4, n, out, |range, out| {
        tile_rows(
            range,
            n,
            (F32_GEMM_ROWS, GEMV_ROWS),
            |r, count, t| {
                let xs = [xrow(t), xrow(t + 1), xrow(t + 2), xrow(t + 3)];
                let mut res = [[0f32; 4]; F32_GEMM_ROWS];
                if count == F32_GEMM_ROWS {
                    res = cpu::f32_rows_x4::<F32_GEMM_ROWS>(w.rows_data(r, count), cols, xs);
                } else {
                    res[0] = cpu::f32_rows_x4::<1>(w.rows_data(r, count), cols, xs)[0];
                }
                for (i, v) in res.iter().take(count).enumerate() {
                    for (k, &v) in v.iter().enumerate() {
                        // SAFETY: row r + i belongs to this chunk (see OutPtr).
                        unsafe { out.write((t + k) * rows + r + i, v) };
                    }
                }
            },
            |r, count, t| {
                let mut res = [0f32; GEMV_ROWS];
                if count == GEMV_ROWS {
                    res = cpu::f32_rows_x1::<GEMV_ROWS>(w.rows_data(r, count), cols, xrow(t));
                } else {
                    res[0] = cpu::f32_rows_x1::<1>(w.rows_data(r, count), cols, xrow(t))[0];
                }
                for (i, &v) in res.iter().take(count).enumerate() {
                    // SAFETY: row r + i belongs to this chunk (see OutPtr).
                    unsafe { out.write(t * rows + r + i, v) };
                }
            },
        )
    });
    Ok(())
}

/// int8 product of quantized weights and quantized activations; `out` receives
/// `x.n()` rows of `w.rows()` values.
pub fn matmul_q8(w: &MatQ8, x: &ActsQ8, out: &mut [f32]) -> Result<(), KernelError> {
    let (rows, cols, n) = (w.rows(), w.cols(), x.n());
    check(rows, cols, x.cols(), n * x.cols(), n, out.len())?;
    let nb = cols / QK;
    // Activation scales of each group of four tokens, transposed: [group][block][token].
    let mut xst = vec![0f32; n / 4 * 4 * nb];
    for (g, dst) in xst.chunks_exact_mut(4 * nb).enumerate() {
        for k in 0..4 {
            for (b, &s) in x.row_scales(4 * g + k).iter().enumerate() {
                dst[4 * b + k] = s;
            }
        }
    }
    for_each_row_chunk(rows, cols + 4 * nb, n, out, |range, out| {
        tile_rows(
            range,
            n,
            (GEMM_ROWS, GEMV_ROWS),
            |r, count, t| {
                let xq = [x.row_qs(t), x.row_qs(t + 1), x.row_qs(t + 2), x.row_qs(t + 3)];
                let xs = &xst[t / 4 * 4 * nb..(t / 4 + 1) * 4 * nb];
                let (wq, ws) = (w.rows_qs(r, count), w.rows_scales(r, count));
                let mut res = [[0f32; 4]; GEMM_ROWS];
                if count == GEMM_ROWS {
                    res = cpu::q8_rows_x4::<GEMM_ROWS>(wq, ws, nb, xq, xs);
                } else {
                    res[0] = cpu::q8_rows_x4::<1>(wq, ws, nb, xq, xs)[0];
                }
                for (i, v) in res.iter().take(count).enumerate() {
                    for (k, &v) in v.iter().enumerate() {
                        // SAFETY: row r + i belongs to this chunk (see OutPtr).
                        unsafe { out.write((t + k) * rows + r + i, v) };
                    }
                }
            },
            |r, count, t| {
                let (wq, ws) = (w.rows_qs(r, count), w.rows_scales(r, count));
                let (xq, xs) = (x.row_qs(t), x.row_scales(t));
                let mut res = [0f32; GEMV_ROWS];
                if count == GEMV_ROWS {
                    res = cpu::q8_rows_x1::<GEMV_ROWS>(wq, ws, nb, xq, xs);
                } else {
                    res[0] = cpu::q8_rows_x1::<1>(wq, ws, nb, xq, xs)[0];
                }
                for (i, &v) in res.iter().take(count).enumerate() {
                    // SAFETY: row r + i belongs to this chunk (see OutPtr).
                    unsafe { out.write(t * rows + r + i, v) };
                }
            },
        )
    });
    Ok(())
}
