//! Output-sparse GEMVs (decode, batch 1): `y_k = W[rows[k]] · x` over row-major weights for
//! a list of rows, the fused SwiGLU `h_k = silu(Wg[rows[k]] · x) * (Wu[rows[k]] · x)` on
//! listed neurons, and CATS's gated front half, in every precision of the dense path. Q4_1
//! rows are read in step order ([`crate::q4_rows`]) where the VNNI kernels run.

use crate::cpu;
use crate::cpu::q4 as q4_inner;
use crate::cpu::q4_rows::{StepActs, StepMatrix};
use crate::pool::{global, parallel_for};
use crate::q4_rows::StepActsBuf;
use crate::sparse::{Shared, check_threshold};
use crate::{ActsQ8, KernelError, MatF32, MatQ4_1, MatQ8};

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
            (RowMajor::Q4(m), Vector::Q8(a)) => q4_inner::dot(&m.row_view(r), &q4_inner::ActRow::of(a, 0)),
            _ => 0.0,
        }
    }
    /// [`RowMajor::dot`] of four rows; f32 and Q4_1 rows share the activations' loads (Q4_1
    /// rows take the step-order kernel instead wherever it runs, see [`Reader`]).
    #[inline]
    fn dot4(&self, r: [usize; 4], x: &Vector<'_>) -> [f32; 4] {
        match (self, x) {
            (RowMajor::F32(m), Vector::F32(x)) => cpu::dot4_f32(r.map(|r| m.row(r)), x),
            (RowMajor::Q4(m), Vector::Q8(a)) => {
                q4_inner::dot_rows4(r.map(|r| m.row_view(r)), &q4_inner::ActRow::of(a, 0))
            }
            _ => r.map(|r| self.dot(r, x)),
        }
    }
}

/// How one product reads the rows of one matrix: Q4_1 rows in step order against the
/// activations reordered once for the product where the VNNI kernels run, else the matrix's
/// own rows.
enum Reader<'a> {
    Steps { w: StepMatrix<'a>, x: StepActs<'a> },
    Plain { w: &'a RowMajor<'a>, x: &'a Vector<'a> },
}

/// `f` with the activations in step order where one of `ws` is Q4_1 and the step-order
/// kernel runs (in a buffer of this thread's, reused from product to product), else with
/// `None`.
fn with_step_acts<R>(ws: &[&RowMajor<'_>], x: &Vector<'_>, f: impl FnOnce(Option<&StepActsBuf>) -> R) -> R {
    if !ws.iter().any(|w| matches!(w, RowMajor::Q4(_))) {
        return f(None);
    }
    thread_local! {
        static BUF: std::cell::RefCell<StepActsBuf> = std::cell::RefCell::new(StepActsBuf::default());
    }
    match x {
        Vector::Q8(a) if crate::gemm_vnni::enabled() => BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                buf.fill(a);
                f(Some(&buf))
            }
            // A product started from inside another on this thread: a buffer of its own.
            Err(_) => {
                let mut buf = StepActsBuf::default();
                buf.fill(a);
                f(Some(&buf))
            }
        }),
        _ => f(None),
    }
}

impl<'a> Reader<'a> {
    fn new(w: &'a RowMajor<'a>, x: &'a Vector<'a>, acts: Option<&'a StepActsBuf>) -> Self {
        if let (RowMajor::Q4(m), Some(acts)) = (w, acts)
            && let Some(steps) = m.step_rows()
        {
            return Reader::Steps { w: steps.view(), x: acts.view() };
        }
        Reader::Plain { w, x }
    }
    /// `out[k] = W[rows[k]] · x` on the calling thread; rows in range (checked by callers).
    fn rows(&self, rows: &[u32], out: &mut [f32]) {
        match self {
            Reader::Steps { w, x } => cpu::q4_rows::gemv_rows(w, x, rows, out),
            Reader::Plain { w, x } => {
                for &r in rows.iter().take(ROWS_AHEAD) {
                    w.prefetch(r as usize);
                }
                let whole = rows.len() / 4 * 4;
                for k in (0..whole).step_by(4) {
                    for &ahead in rows.iter().skip(k + ROWS_AHEAD).take(4) {
                        w.prefetch(ahead as usize);
                    }
                    let four = [rows[k], rows[k + 1], rows[k + 2], rows[k + 3]].map(|r| r as usize);
                    out[k..k + 4].copy_from_slice(&w.dot4(four, x));
                }
                for (o, &r) in out[whole..].iter_mut().zip(&rows[whole..]) {
                    *o = w.dot(r as usize, x);
                }
            }
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

/// `f(rows, out)` on runs of the listed rows and their outputs, split over the pool.
fn for_each_row_run(rows: &[u32], out: &mut [f32], f: impl Fn(&[u32], &mut [f32]) + Sync) {
    let (per, tasks) = row_tasks(rows.len());
    let o = Shared(out.as_mut_ptr());
    parallel_for(tasks, |t| {
        let k0 = t * per;
        let len = per.min(rows.len() - k0);
        // SAFETY: task t owns out[k0..k0 + len]; `out.len() == rows.len()` (checked by callers).
        let y = unsafe { o.range(k0, len) };
        f(&rows[k0..k0 + len], y);
    });
}

/// `out[k] = W[rows[k]] · x`: only the listed rows are read.
pub fn gemv_rows(w: &RowMajor<'_>, x: &Vector<'_>, rows: &[u32], out: &mut [f32]) -> Result<(), KernelError> {
    check_rows(w, x, rows, out.len())?;
    with_step_acts(&[w], x, |acts| {
        let w = Reader::new(w, x, acts);
        for_each_row_run(rows, out, |rows, y| w.rows(rows, y));
    });
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
    with_step_acts(&[gate, up], x, |acts| {
        let (gate, up) = (Reader::new(gate, x, acts), Reader::new(up, x, acts));
        for_each_row_run(rows, h, |rows, y| {
            let mut u = [0f32; RUN];
            for (rows, y) in rows.chunks(RUN).zip(y.chunks_mut(RUN)) {
                gate.rows(rows, y);
                let u = &mut u[..rows.len()];
                up.rows(rows, u);
                for (h, &u) in y.iter_mut().zip(u.iter()) {
                    *h = crate::ops::silu(*h) * u;
                }
            }
        });
    });
    Ok(())
}

/// Neurons whose gate rows, then up rows, [`swiglu_rows`] reads in one go.
const RUN: usize = 64;

/// Most neurons one task of [`swiglu_gated`] decides.
const GATED_TASK_MAX: usize = 1024;

/// Neurons whose kept up rows [`swiglu_gated`] lists and reads in one go.
const KEPT_CHUNK: usize = 256;

/// `y[i] = Wg[k0 + i] · x` for consecutive gate rows: the dense kernels (the decode panels,
/// or four f32 rows per activation load), else one row at a time.
pub(crate) fn gate_rows(gate: &RowMajor<'_>, x: &Vector<'_>, k0: usize, y: &mut [f32]) {
    let len = y.len();
    match (gate, x) {
        (RowMajor::Q4(g), Vector::Q8(a)) => g.gemv_rows(a, k0..k0 + len, y),
        (RowMajor::F32(g), Vector::F32(xv)) => {
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
}

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
    with_step_acts(&[up], x, |acts| {
        let up_rows = Reader::new(up, x, acts);
        parallel_for(tasks, |t| {
            let k0 = t * per;
            let len = per.min(n - k0);
            // SAFETY: task t owns h[k0..k0 + len], inside `h`.
            let y = unsafe { o.range(k0, len) };
            gate_rows(gate, x, k0, y);
            crate::ops::silu_in_place(y);
            let mut count = 0;
            for (c, chunk) in y.chunks_mut(KEPT_CHUNK).enumerate() {
                let first = k0 + c * KEPT_CHUNK;
                let mut list = [0u32; KEPT_CHUNK];
                let mut k = 0;
                for (i, v) in chunk.iter_mut().enumerate() {
                    if v.abs() > threshold {
                        list[k] = (first + i) as u32;
                        k += 1;
                    } else {
                        *v = 0.0;
                    }
                }
                let mut ups = [0f32; KEPT_CHUNK];
                let (list, ups) = (&list[..k], &mut ups[..k]);
                up_rows.rows(list, ups);
                for (&i, u) in list.iter().zip(ups.iter()) {
                    chunk[i as usize - first] *= u;
                }
                count += k;
            }
            kept.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
        });
    });
    Ok(kept.into_inner())
}
