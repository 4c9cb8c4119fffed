//! Sparse GEMVs for activation sparsity (decode, batch 1).
//!
//! - Input sparsity: `y = W (x ⊙ [|x| > t])` over input-major weights (W transposed, one
//!   contiguous row of outputs per input channel); the mask is taken inside the kernel and
//!   the rows of masked channels are never read. f32, and int8 with one scale per output
//!   channel so that active channels accumulate in integers (activations are quantized over
//!   the active set with one scale).
//! - Output sparsity: `y_k = W[rows[k]] · x` over row-major weights for a list of rows, and
//!   the fused SwiGLU `h_k = silu(Wg[rows[k]] · x) * (Wu[rows[k]] · x)`, in every precision of
//!   the dense path.

use crate::cpu;
use crate::cpu::q4 as q4_inner;
use crate::cpu::sparse::{self as inner, SparsePairs};
use crate::pool::{global, parallel_for};
use crate::{ActsQ8, KernelError, MatF32, MatQ4_1, MatQ8};

/// Outputs per parallel task of an input-sparse GEMV (a multiple of the SIMD tile).
const OUT_TILE: usize = 64;

/// Weights stored input-major: `inputs` rows of `outputs` values.
#[derive(Debug, Clone)]
pub struct InputMajorF32 {
    inputs: usize,
    outputs: usize,
    data: Vec<f32>,
}

impl InputMajorF32 {
    /// Transposes a row-major `outputs x inputs` matrix.
    pub fn from_row_major(w: &MatF32) -> Self {
        let (outputs, inputs) = (w.rows(), w.cols());
        let mut data = vec![0f32; inputs * outputs];
        for j in 0..outputs {
            for (i, &v) in w.row(j).iter().enumerate() {
                data[i * outputs + j] = v;
            }
        }
        Self { inputs, outputs, data }
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

/// Most outputs per task of the f32 input-sparse GEMV: each active row is read in runs of up
/// to 8 KB (two pages), which the hardware prefetcher follows, while the task's sums (8 KB)
/// stay in L1. Runs of 256 bytes, one per 64-output task, read each active row from as many
/// pages as tasks and measured 0.5-0.7x of the dense GEMV at 50% sparsity.
const F32_MAX_TASK_OUTPUTS: usize = 2048;

/// Active rows ahead of the current one whose run a task prefetches: the runs
/// are scattered, so the hardware prefetcher cannot start them.
const F32_ROWS_AHEAD: usize = 8;

/// Outputs below which the f32 input-sparse GEMV splits its active rows over the tasks
/// (each read whole, 4 KB or less) rather than its outputs (runs of a quarter of a row, 1 KB
/// or less, which the hardware prefetcher does not follow from row to row).
const F32_SPLIT_INPUTS_BELOW: usize = 1024;

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
    let active: Vec<u32> = (0..x.len()).filter(|&i| x[i].abs() > threshold).map(|i| i as u32).collect();
    let values: Vec<f32> = active.iter().map(|&i| x[i as usize]).collect();
    let threads = global().threads();
    if w.outputs < F32_SPLIT_INPUTS_BELOW && threads > 1 && active.len() >= 2 * F32_ROWS_AHEAD {
        // Narrow outputs: the tasks take the active rows in turn, each row read whole into
        // the task's own sums, which are added up at the end.
        let tasks = 2 * threads;
        let per = active.len().div_ceil(tasks);
        let mut partial = vec![0f32; tasks * w.outputs];
        let p = Shared(partial.as_mut_ptr());
        parallel_for(tasks, |t| {
            let rows = t * per..((t + 1) * per).min(active.len());
            // SAFETY: task t owns partial[t * outputs..(t + 1) * outputs].
            let y = unsafe { p.range(t * w.outputs, w.outputs) };
            if !rows.is_empty() {
                cpu::axpy_rows_f32(&w.data, w.outputs, 0, &active[rows.clone()], &values[rows], y, F32_ROWS_AHEAD);
            }
        });
        out.copy_from_slice(&partial[..w.outputs]);
        for part in partial.chunks_exact(w.outputs).skip(1) {
            cpu::axpy_f32(1.0, part, out);
        }
        return Ok(active.len());
    }
    // At least two tasks per thread and a multiple of the threads (7 tasks of 2048 on 2
    // threads left one thread a task behind), each a whole number of cache lines.
    let tasks = w.outputs.div_ceil(F32_MAX_TASK_OUTPUTS).max(2 * threads).next_multiple_of(threads);
    let tile = w.outputs.div_ceil(tasks).next_multiple_of(16);
    let tasks = w.outputs.div_ceil(tile);
    let o = Shared(out.as_mut_ptr());
    parallel_for(tasks, |t| {
        let j0 = t * tile;
        let len = tile.min(w.outputs - j0);
        // SAFETY: task t owns outputs j0..j0 + len, inside `out`.
        let y = unsafe { o.range(j0, len) };
        y.fill(0.0);
        cpu::axpy_rows_f32(&w.data, w.outputs, j0, &active, &values, y, F32_ROWS_AHEAD);
    });
    Ok(active.len())
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

/// Weights the output-sparse GEMV reads rows of (row-major, the dense layouts).
pub enum RowMajor<'a> {
    /// f32 rows against f32 activations.
    F32(&'a MatF32),
    /// int8 rows against int8 activations.
    Q8(&'a MatQ8),
    /// Q4_1 rows against int8 activations.
    Q4(&'a MatQ4_1),
}

/// One activation vector in the form each precision reads.
pub enum Vector<'a> {
    /// f32 values (for [`RowMajor::F32`]).
    F32(&'a [f32]),
    /// One quantized row (for the int8 and Q4_1 weights).
    Q8(&'a ActsQ8),
}

impl RowMajor<'_> {
    fn rows(&self) -> usize {
        match self {
            RowMajor::F32(m) => m.rows(),
            RowMajor::Q8(m) => m.rows(),
            RowMajor::Q4(m) => m.rows(),
        }
    }
    fn cols(&self) -> usize {
        match self {
            RowMajor::F32(m) => m.cols(),
            RowMajor::Q8(m) => m.cols(),
            RowMajor::Q4(m) => m.cols(),
        }
    }
    /// Starts fetching row `r` (of an f32 row its first 512 bytes: the hardware prefetcher
    /// follows a longer row once it has started).
    #[inline]
    fn prefetch(&self, r: usize) {
        match self {
            RowMajor::F32(m) => {
                let row = m.row(r);
                cpu::prefetch(&row[..row.len().min(128)]);
            }
            RowMajor::Q8(m) => {
                cpu::prefetch(m.row_qs(r));
                cpu::prefetch(m.row_scales(r));
            }
            RowMajor::Q4(m) => {
                let row = m.row_view(r);
                cpu::prefetch(row.codes);
                cpu::prefetch(row.d);
                cpu::prefetch(row.m);
            }
        }
    }
    /// Row `r` · `x`; `r` is in range and `x` matches (checked by the callers).
    fn dot(&self, r: usize, x: &Vector<'_>) -> f32 {
        match (self, x) {
            (RowMajor::F32(m), Vector::F32(x)) => cpu::dot_f32(m.row(r), x),
            (RowMajor::Q8(m), Vector::Q8(a)) => cpu::dot_q8(m.row_qs(r), m.row_scales(r), a.row_qs(0), a.row_scales(0)),
            (RowMajor::Q4(m), Vector::Q8(a)) => q4_inner::dot(
                &m.row_view(r),
                &q4_inner::ActRow { q: a.row_qs(0), pair_q: a.row_pair_qs(0), d: a.row_scales(0), sum: a.row_sums(0) },
            ),
            _ => 0.0,
        }
    }
    /// [`RowMajor::dot`] of four rows; Q4_1 rows share the activations' loads.
    #[inline]
    fn dot4(&self, r: [usize; 4], x: &Vector<'_>) -> [f32; 4] {
        match (self, x) {
            (RowMajor::Q4(m), Vector::Q8(a)) => {
                let act = q4_inner::ActRow {
                    q: a.row_qs(0),
                    pair_q: a.row_pair_qs(0),
                    d: a.row_scales(0),
                    sum: a.row_sums(0),
                };
                let (r0, r1, r2, r3) = (m.row_view(r[0]), m.row_view(r[1]), m.row_view(r[2]), m.row_view(r[3]));
                q4_inner::dot_rows4([&r0, &r1, &r2, &r3], &act)
            }
            (RowMajor::F32(m), Vector::F32(x)) => cpu::dot4_f32(r.map(|r| m.row(r)), x),
            _ => r.map(|r| self.dot(r, x)),
        }
    }
}

fn check_rows(w: &RowMajor<'_>, x: &Vector<'_>, rows: &[u32], out: usize) -> Result<(), KernelError> {
    let matches = match (w, x) {
        (RowMajor::F32(_), Vector::F32(v)) => v.len() == w.cols(),
        (RowMajor::Q8(_) | RowMajor::Q4(_), Vector::Q8(a)) => a.n() == 1 && a.cols() == w.cols(),
        _ => false,
    };
    if !matches {
        return Err(KernelError::Shape(format!(
            "the vector does not match {}-column weights of this precision",
            w.cols()
        )));
    }
    if out != rows.len() {
        return Err(KernelError::Length { what: "output", expected: rows.len(), got: out });
    }
    if let Some(&bad) = rows.iter().find(|&&r| r as usize >= w.rows()) {
        return Err(KernelError::Shape(format!("row {bad} out of range ({} rows)", w.rows())));
    }
    Ok(())
}

/// Rows per task of the output-sparse GEMVs.
fn row_tasks(n: usize) -> (usize, usize) {
    let per = n.div_ceil(4 * global().threads()).max(16);
    (per, n.div_ceil(per))
}

/// Listed rows ahead of the one being computed whose fetch is started: the rows are not
/// consecutive, so the hardware prefetcher cannot follow them.
const ROWS_AHEAD: usize = 4;

/// `out[k] = f(rows[k])`, the listed rows split over the pool, four at a time through `f4`
/// (rows computed together share their activation loads) and the rest through `f`;
/// `prefetch(rows[k + ROWS_AHEAD])` is called before row k is computed.
fn for_each_listed_row(
    rows: &[u32],
    out: &mut [f32],
    prefetch: impl Fn(usize) + Sync,
    f4: impl Fn([usize; 4]) -> [f32; 4] + Sync,
    f: impl Fn(usize) -> f32 + Sync,
) {
    let (per, tasks) = row_tasks(rows.len());
    let o = Shared(out.as_mut_ptr());
    parallel_for(tasks, |t| {
        let k0 = t * per;
        let len = per.min(rows.len() - k0);
        // SAFETY: task t owns out[k0..k0 + len]; `out.len() == rows.len()` (checked by callers).
        let y = unsafe { o.range(k0, len) };
        let mine = &rows[k0..k0 + len];
        for &r in mine.iter().take(ROWS_AHEAD) {
            prefetch(r as usize);
        }
        let whole = len / 4 * 4;
        for k in (0..whole).step_by(4) {
            for &ahead in mine.iter().skip(k + ROWS_AHEAD).take(4) {
                prefetch(ahead as usize);
            }
            let four = [mine[k], mine[k + 1], mine[k + 2], mine[k + 3]].map(|r| r as usize);
            y[k..k + 4].copy_from_slice(&f4(four));
        }
        for (yk, &r) in y[whole..].iter_mut().zip(&mine[whole..]) {
            *yk = f(r as usize);
        }
    });
}

/// `out[k] = W[rows[k]] · x`: only the listed rows are read.
pub fn gemv_rows(w: &RowMajor<'_>, x: &Vector<'_>, rows: &[u32], out: &mut [f32]) -> Result<(), KernelError> {
    check_rows(w, x, rows, out.len())?;
    for_each_listed_row(rows, out, |r| w.prefetch(r), |r| w.dot4(r, x), |r| w.dot(r, x));
    Ok(())
}

/// The SwiGLU on selected neurons: `h[k] = silu(Wg[rows[k]] · x) * (Wu[rows[k]] · x)`, the
/// two products of a neuron computed together while its input is hot in cache.
pub fn swiglu_rows(
    gate: &RowMajor<'_>,
    up: &RowMajor<'_>,
    x: &Vector<'_>,
    rows: &[u32],
    h: &mut [f32],
) -> Result<(), KernelError> {
    check_rows(gate, x, rows, h.len())?;
    check_rows(up, x, rows, h.len())?;
    for_each_listed_row(
        rows,
        h,
        |r| {
            gate.prefetch(r);
            up.prefetch(r);
        },
        |r| {
            let (g, u) = (gate.dot4(r, x), up.dot4(r, x));
            [0, 1, 2, 3].map(|k| crate::ops::silu(g[k]) * u[k])
        },
        |r| crate::ops::silu(gate.dot(r, x)) * up.dot(r, x),
    );
    Ok(())
}

/// Most neurons one task of [`swiglu_gated`] decides (its kept list lives on the stack).
const GATED_TASK_MAX: usize = 1024;

/// CATS's MLP front half: for every neuron the gate product g = Wg[i]·x, and where
/// |silu(g)| > `threshold` also the up product, `h[i] = silu(g) * (Wu[i]·x)`; elsewhere
/// `h[i] = 0` and the up row is never read. Each task computes its run of gate rows, lists
/// the neurons it keeps, then reads their up rows with the next ones prefetched, so gate
/// values never leave the core that made them (measured against interleaving groups of gate
/// rows with the previous group's up rows: 4-6% faster per MLP, the up-row prefetches no
/// longer compete with the gate stream). Returns how many neurons were kept.
pub fn swiglu_gated(
    gate: &RowMajor<'_>,
    up: &RowMajor<'_>,
    x: &Vector<'_>,
    threshold: f32,
    h: &mut [f32],
) -> Result<usize, KernelError> {
    check_threshold(threshold)?;
    check_rows(gate, x, &[], 0)?;
    check_rows(up, x, &[], 0)?;
    if gate.rows() != h.len() || up.rows() != h.len() {
        return Err(KernelError::Shape(format!(
            "gate ({}) and up ({}) rows must both equal the output length {}",
            gate.rows(),
            up.rows(),
            h.len()
        )));
    }
    let n = h.len();
    let per = n.div_ceil(4 * global().threads()).clamp(16, GATED_TASK_MAX);
    let tasks = n.div_ceil(per);
    let kept = std::sync::atomic::AtomicUsize::new(0);
    let o = Shared(h.as_mut_ptr());
    parallel_for(tasks, |t| {
        let k0 = t * per;
        let len = per.min(n - k0);
        // SAFETY: task t owns h[k0..k0 + len], inside `h`.
        let y = unsafe { o.range(k0, len) };
        match (gate, x) {
            (RowMajor::Q4(g), Vector::Q8(a)) => g.gemv_rows(a, k0..k0 + len, y),
            (RowMajor::F32(g), Vector::F32(xv)) => {
                // Consecutive rows: the dense kernel's four rows per activation load.
                let whole = len / 4 * 4;
                for i in (0..whole).step_by(4) {
                    y[i..i + 4].copy_from_slice(&cpu::f32_rows_x1::<4>(g.rows_data(k0 + i, 4), g.cols(), xv));
                }
                for (i, v) in y.iter_mut().enumerate().skip(whole) {
                    *v = cpu::dot_f32(g.row(k0 + i), xv);
                }
            }
            _ => {
                for (i, v) in y.iter_mut().enumerate() {
                    if i + ROWS_AHEAD < len {
                        gate.prefetch(k0 + i + ROWS_AHEAD);
                    }
                    *v = gate.dot(k0 + i, x);
                }
            }
        }
        crate::ops::silu_in_place(y);
        let mut list = [0u16; GATED_TASK_MAX];
        let mut count = 0;
        for (i, v) in y.iter_mut().enumerate() {
            if v.abs() > threshold {
                list[count] = i as u16;
                count += 1;
            } else {
                *v = 0.0;
            }
        }
        let list = &list[..count];
        for &i in list.iter().take(ROWS_AHEAD) {
            up.prefetch(k0 + i as usize);
        }
        // Four kept rows at a time (they share the activations' loads), then the rest.
        let mut quads = list.chunks_exact(4);
        for (q, four) in (&mut quads).enumerate() {
            for &ahead in list.iter().skip(4 * q + ROWS_AHEAD).take(4) {
                up.prefetch(k0 + ahead as usize);
            }
            let ups = up.dot4([four[0], four[1], four[2], four[3]].map(|i| k0 + i as usize), x);
            for (&i, u) in four.iter().zip(ups) {
                y[i as usize] *= u;
            }
        }
        for &i in quads.remainder() {
            y[i as usize] *= up.dot(k0 + i as usize, x);
        }
        kept.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
    });
    Ok(kept.into_inner())
}
