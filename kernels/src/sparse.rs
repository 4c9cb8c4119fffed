//! Sparse GEMVs for activation sparsity (decode, batch 1).
//!
//! - Input sparsity: `y = W (x ⊙ [|x| > t])` over input-major weights (W transposed, one
//!   contiguous row of outputs per input channel); the mask is taken inside the kernel and
//!   the rows of masked channels are never read. f32, and int8 with one scale per output
//!   channel so that active channels accumulate in integers (activations are quantized over
//!   the active set with one scale).
//! - Output sparsity (`crate::sparse_rows`, re-exported here): `y_k = W[rows[k]] · x` over
//!   row-major weights for a list of rows, and the fused SwiGLU, in every precision of the
//!   dense path.

use std::cell::RefCell;
use std::ops::Range;

use crate::cpu;
use crate::cpu::sparse::{self as inner, SparsePairs};
use crate::lines::Lines;
use crate::pool::{global, parallel_for};
pub use crate::sparse_rows::{RowMajor, Vector, gemv_rows, swiglu_gated, swiglu_rows};
pub use crate::swiglu_down::{NeuronRunsF32, swiglu_down_confirmed_f32, swiglu_down_f32, swiglu_down_rows_f32};
use crate::{KernelError, MatF32};

/// Outputs per parallel task of an input-sparse GEMV (a multiple of the SIMD tile).
const OUT_TILE: usize = 64;

/// Weights stored input-major: `inputs` rows of `outputs` values, each row starting on a
/// cache line (a row of an unaligned buffer spans one line more, and every 64-byte load of
/// the AVX-512 loop would be split across two lines).
#[derive(Debug, Clone)]
pub struct InputMajorF32 {
    inputs: usize,
    outputs: usize,
    /// Values from one row's start to the next's: `outputs` rounded up to whole lines.
    stride: usize,
    data: Lines,
}

impl InputMajorF32 {
    /// Transposes a row-major `outputs x inputs` matrix.
    pub fn from_row_major(w: &MatF32) -> Self {
        let (outputs, inputs) = (w.rows(), w.cols());
        let stride = outputs.next_multiple_of(16);
        let mut lines = Lines::zeroed(4 * inputs * stride);
        let data = lines.floats_mut();
        for j in 0..outputs {
            for (i, &v) in w.row(j).iter().enumerate() {
                data[i * stride + j] = v;
            }
        }
        Self { inputs, outputs, stride, data: lines }
    }
    /// Input channels.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// Output channels.
    pub fn outputs(&self) -> usize {
        self.outputs
    }
}

/// int8 weights stored input-major, one f32 scale per output channel.
#[derive(Debug, Clone)]
pub struct InputMajorQ8 {
    inputs: usize,
    outputs: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
}

impl InputMajorQ8 {
    /// Quantizes and transposes a row-major `outputs x inputs` f32 matrix (absmax per output
    /// channel).
    pub fn from_row_major(outputs: usize, inputs: usize, data: &[f32]) -> Result<Self, KernelError> {
        let len = outputs.checked_mul(inputs).ok_or_else(|| KernelError::Shape("matrix too large".into()))?;
        if data.len() != len {
            return Err(KernelError::Length { what: "InputMajorQ8 source", expected: len, got: data.len() });
        }
        let mut qs = vec![0i8; len];
        let mut scales = vec![0f32; outputs];
        for (j, row) in data.chunks_exact(inputs.max(1)).enumerate().take(outputs) {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (i, &v) in row.iter().enumerate() {
                qs[i * outputs + j] = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            scales[j] = d;
        }
        Ok(Self { inputs, outputs, qs, scales })
    }
    /// Input channels.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// Output channels.
    pub fn outputs(&self) -> usize {
        self.outputs
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.qs.len() + 4 * self.scales.len()
    }
    /// Weight (input `i`, output `j`) in f32.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.qs[i * self.outputs + j] as f32 * self.scales[j]
    }
}

/// Active pairs per sub-run of a split-K task.
const PAIR_RUN: usize = 64;

/// A buffer shared by tasks that each own a disjoint range of it.
pub(crate) struct Shared<T>(pub(crate) *mut T);
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}
// SAFETY: every task touches only its own range, and the job returns only after all tasks
// finished, while the buffer is still borrowed by the caller.
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// # Safety
    /// `start + len` lies inside the buffer and no other task touches this range.
    pub(crate) unsafe fn range<'a>(self, start: usize, len: usize) -> &'a mut [T] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

pub(crate) fn check_threshold(t: f32) -> Result<(), KernelError> {
    if t.is_nan() || t < 0.0 {
        return Err(KernelError::Shape(format!("threshold {t} must be a non-negative number")));
    }
    Ok(())
}

pub(crate) fn check_io(inputs: usize, outputs: usize, x: usize, out: usize) -> Result<(), KernelError> {
    if x != inputs {
        return Err(KernelError::Length { what: "input vector", expected: inputs, got: x });
    }
    if out != outputs {
        return Err(KernelError::Length { what: "output vector", expected: outputs, got: out });
    }
    Ok(())
}

/// Most outputs per task of the f32 input-sparse GEMV when it has too few active rows to
/// split them ([`F32_ROWS_AHEAD`] twice): each active row is read in runs of up to 8 KB, while
/// the task's sums (8 KB) stay in L1. With more rows the tasks split the rows instead, each
/// read whole: on a Zen 3 VM (AVX2, 32 MB of L3), in-process against 2048-output tasks at 50%,
/// 14336 x 4096 2.02-2.11x of the dense GEMV against 1.51x, 4096 x 14336 1.91-1.99x against
/// 1.55x, 1536 x 576 1.91x against 1.30x (one thread: 2.13x, 1.69x, 1.93x against 1.61x,
/// 1.43x, 1.53x), though the sums of 14336 outputs leave L1. One task a thread rather than
/// two also for narrower outputs (576 x 1536, 576 x 576, 192 x 576 at 50%: 3-5% faster, eleven
/// of twelve alternations).
const F32_MAX_TASK_OUTPUTS: usize = 2048;

/// Active rows ahead of the current one whose run a task prefetches: the runs
/// are scattered, so the hardware prefetcher cannot start them.
const F32_ROWS_AHEAD: usize = 8;

thread_local! {
    /// The active channels (indices, values) of this thread's f32 input-sparse products and
    /// the other tasks' partial sums, kept between calls: a decode step runs seven.
    static ACTIVE_F32: RefCell<F32Buffers> = const { RefCell::new(F32Buffers::new()) };
}

/// Buffers of the f32 input-sparse GEMV.
struct F32Buffers {
    active: Vec<u32>,
    values: Vec<f32>,
    partial: Vec<f32>,
}

impl F32Buffers {
    const fn new() -> Self {
        Self { active: Vec::new(), values: Vec::new(), partial: Vec::new() }
    }
}

/// Outputs below which, with AVX-512F, the f32 input-sparse GEMV keeps its sums in registers
/// (segments of at most 384 outputs, one per task). `sparse_cold` at 50%, over the dense
/// GEMV: q/o 576 x 576 2.2-2.3x, k/v 1.9-2.1x, where the AVX2 loops below (four rows at a
/// time into sums in L1, a scalar mask) gave 1.4-1.7x and 0.9-1.3x. At Llama-3-8B's widths
/// the register loop's runs of 1.5 KB per row were slower than the AVX2 loop's 8 KB ones:
/// 1.5-1.6x against 1.8-1.9x (that loop now reads whole rows).
const F32_REGISTER_SUMS_BELOW: usize = 2048;

/// `out = W (x ⊙ [|x| > threshold])` for f32 input-major weights; returns how many input
/// channels were active.
pub fn gemv_input_sparse_f32(
    w: &InputMajorF32,
    x: &[f32],
    threshold: f32,
    out: &mut [f32],
) -> Result<usize, KernelError> {
    check_threshold(threshold)?;
    check_io(w.inputs, w.outputs, x.len(), out.len())?;
    Ok(ACTIVE_F32.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => input_sparse_f32(w, x, threshold, out, &mut buffers),
        // A product inside another's task on the same thread: fresh buffers.
        Err(_) => input_sparse_f32(w, x, threshold, out, &mut F32Buffers::new()),
    }))
}

/// [`gemv_input_sparse_f32`] with its buffers for the active channels.
fn input_sparse_f32(w: &InputMajorF32, x: &[f32], threshold: f32, out: &mut [f32], buffers: &mut F32Buffers) -> usize {
    let F32Buffers { active, values, partial } = buffers;
    let count = inner::active_f32(x, threshold, active, values);
    if w.outputs == 0 {
        return count;
    }
    let (active, values) = (&active[..], &values[..]);
    let threads = global().threads();
    let (data, stride) = (w.data.floats(), w.stride);
    if crate::isa::avx512f() && w.outputs < F32_REGISTER_SUMS_BELOW {
        if w.outputs <= inner::F32_REGISTER_OUTPUTS && threads > 1 {
            // One segment holds every output: each thread takes its share of the active rows,
            // each row read whole (one run the hardware prefetcher follows, where two
            // half-row segments left k/v 192 x 576 at 1.4x of dense against 1.6x).
            split_rows(threads, active.len(), out, partial, |rows, y| {
                inner::rows_f32_in_registers(data, stride, 0, &active[rows.clone()], &values[rows], y)
            });
        } else {
            // Segments of at most 384 outputs (`F32_REGISTER_OUTPUTS`), a multiple of the
            // threads, whose sums stay in registers.
            let tasks = w.outputs.div_ceil(inner::F32_REGISTER_OUTPUTS).next_multiple_of(threads);
            split_outputs(tasks, out, |j0, y| inner::rows_f32_in_registers(data, stride, j0, active, values, y));
        }
        return count;
    }
    if active.len() >= 2 * F32_ROWS_AHEAD {
        // One task a thread, each taking its share of the active rows, each row read whole
        // (one run, which the hardware prefetcher follows to its end) into the task's own sums
        // over every output.
        split_rows(threads, active.len(), out, partial, |rows, y| {
            y.fill(0.0);
            cpu::axpy_rows_f32(data, stride, 0, &active[rows.clone()], &values[rows], y, F32_ROWS_AHEAD)
        });
        return count;
    }
    // A few active rows: at least two tasks per thread and a multiple of the threads (7 tasks
    // of 2048 on 2 threads left one thread a task behind), each a whole number of cache lines.
    let tasks = w.outputs.div_ceil(F32_MAX_TASK_OUTPUTS).max(2 * threads).next_multiple_of(threads);
    split_outputs(tasks, out, |j0, y| {
        y.fill(0.0);
        cpu::axpy_rows_f32(data, stride, j0, active, values, y, F32_ROWS_AHEAD)
    });
    count
}

/// Splits `active` rows over `tasks` tasks: `task(rows, sums)` overwrites `sums` with its
/// rows' sums over every output, task 0 in `out` itself and every other in its own row of
/// `partial` (storage only), and those rows are added into `out`.
pub(crate) fn split_rows(
    tasks: usize,
    active: usize,
    out: &mut [f32],
    partial: &mut Vec<f32>,
    task: impl Fn(Range<usize>, &mut [f32]) + Sync,
) {
    let outputs = out.len();
    if outputs == 0 {
        return;
    }
    let per = active.div_ceil(tasks.max(1));
    partial.resize(tasks.saturating_sub(1) * outputs, 0.0);
    let (o, p) = (Shared(out.as_mut_ptr()), Shared(partial.as_mut_ptr()));
    parallel_for(tasks, |t| {
        // SAFETY: task 0 alone writes `out` (`outputs` values), task t > 0 alone its row
        // partial[(t - 1) * outputs..t * outputs], inside the resize above.
        let sums = unsafe { if t == 0 { o.range(0, outputs) } else { p.range((t - 1) * outputs, outputs) } };
        task((t * per).min(active)..((t + 1) * per).min(active), sums);
    });
    for part in partial.chunks_exact(outputs) {
        cpu::axpy_f32(1.0, part, out);
    }
}

/// Splits `out` into about `tasks` runs of whole cache lines: `task(j0, y)` writes outputs
/// `j0..j0 + y.len()`.
fn split_outputs(tasks: usize, out: &mut [f32], task: impl Fn(usize, &mut [f32]) + Sync) {
    let outputs = out.len();
    let width = outputs.div_ceil(tasks.max(1)).next_multiple_of(16);
    let o = Shared(out.as_mut_ptr());
    parallel_for(outputs.div_ceil(width), |t| {
        let j0 = t * width;
        // SAFETY: task t owns outputs j0..j0 + width (or to the end), inside `out`.
        task(j0, unsafe { o.range(j0, width.min(outputs - j0)) });
    });
}

/// Reusable buffers of [`gemv_input_sparse_q8`] and
/// [`crate::sparse_q4::gemv_input_sparse_q4_1`].
#[derive(Debug, Default)]
pub struct SparseScratch {
    pairs: Vec<[u32; 2]>,
    xq: Vec<[i16; 2]>,
    pub(crate) q4: crate::sparse_q4::Q4Lists,
}

/// `out = W (x ⊙ [|x| > threshold])` for int8 input-major weights; returns how many input
/// channels were active. The active values are quantized to int8 with one scale.
pub fn gemv_input_sparse_q8(
    w: &InputMajorQ8,
    x: &[f32],
    threshold: f32,
    out: &mut [f32],
    scratch: &mut SparseScratch,
) -> Result<usize, KernelError> {
    check_threshold(threshold)?;
    check_io(w.inputs, w.outputs, x.len(), out.len())?;
    let mut amax = 0f32;
    let mut count = 0usize;
    scratch.pairs.clear();
    scratch.xq.clear();
    for v in x.iter().filter(|v| v.abs() > threshold) {
        amax = amax.max(v.abs());
        count += 1;
    }
    let sx = amax / 127.0;
    let inv = if sx > 0.0 { 1.0 / sx } else { 0.0 };
    let mut pending: Option<(u32, i16)> = None;
    for (i, &v) in x.iter().enumerate() {
        if v.abs() > threshold {
            let q = (v * inv).round().clamp(-127.0, 127.0) as i16;
            match pending.take() {
                None => pending = Some((i as u32, q)),
                Some((i0, q0)) => {
                    scratch.pairs.push([i0, i as u32]);
                    scratch.xq.push([q0, q]);
                }
            }
        }
    }
    if let Some((i0, q0)) = pending {
        scratch.pairs.push([i0, i0]);
        scratch.xq.push([q0, 0]);
    }
    // Split-K: each task takes a contiguous run of active pairs and sums all outputs for it,
    // reading whole rows front to back (rows of large matrices span pages; sweeping one
    // cache line of every row per output tile would miss the TLB on every load). Within a
    // task, pairs go in sub-runs of PAIR_RUN so a tile's rows stay in the TLB and L2.
    let pairs = &scratch.pairs;
    let xq = &scratch.xq;
    let outputs = w.outputs;
    let tasks = (2 * global().threads()).min(pairs.len()).max(1);
    let per = pairs.len().div_ceil(tasks).max(1);
    let tasks = pairs.len().div_ceil(per).max(1);
    let mut partial = vec![0i32; tasks * outputs];
    let p = Shared(partial.as_mut_ptr());
    parallel_for(tasks, |t| {
        let (k0, k1) = (t * per, ((t + 1) * per).min(pairs.len()));
        // SAFETY: task t owns partial[t * outputs..(t + 1) * outputs].
        let sums = unsafe { p.range(t * outputs, outputs) };
        let mut tile = [0i32; OUT_TILE];
        for r0 in (k0..k1).step_by(PAIR_RUN) {
            let r1 = (r0 + PAIR_RUN).min(k1);
            let op = SparsePairs { w: &w.qs, outputs, pairs: &pairs[r0..r1], xq: &xq[r0..r1] };
            for j0 in (0..outputs).step_by(OUT_TILE) {
                let len = OUT_TILE.min(outputs - j0);
                inner::accumulate(&op, j0, &mut tile[..len]);
                for (s, v) in sums[j0..j0 + len].iter_mut().zip(&tile[..len]) {
                    *s += v;
                }
            }
        }
    });
    for (j, y) in out.iter_mut().enumerate() {
        let total: i32 = (0..tasks).map(|t| partial[t * outputs + j]).sum();
        *y = total as f32 * sx * w.scales[j];
    }
    Ok(count)
}
