//! The sparse MLP at f32 with each kept neuron's weights read as one run: CATS's (up row and
//! down column) and a predictor's (gate row, up row and down column; for a proposal that
//! CATS's rule confirms, the gate rows of the proposal, then the rest of the confirmed runs).
//!
//! CATS keeps a neuron when |silu(gate)| clears its threshold; a kept neuron needs its up row
//! (to form `h = silu(g) * (up · x)`) and its down column (to add `h * down` into the output).
//! Stored apart, those are two scattered 2.3 KB reads per neuron at SmolLM2's width; stored
//! side by side ([`NeuronRunsF32`]) they are one 4.6 KB run, which the hardware prefetcher follows
//! for longer. On a 2-core Zen 3 VM reading a random half of such runs took 1/1.62 of the time
//! of reading them all (median of nine runs of the `bandwidth` example), against 1/1.45 for
//! 2.3 KB runs.

use std::cell::RefCell;

use crate::cpu;
use crate::lines::Lines;
use crate::pool::{global, parallel_for};
use crate::sparse::{Shared, check_threshold, split_rows};
use crate::sparse_rows::{RowMajor, Vector, gate_rows};
use crate::{KernelError, MatF32};

/// Each neuron's weights side by side, in runs of `parts` segments: its gate row (with
/// [`NeuronRunsF32::gate_up_down`]), its up row (the `d` weights each dots with the input),
/// then its down column (the `d` outputs it adds into). Neuron `i`'s run starts at
/// `data[i * parts * stride]`; every segment starts on a cache line.
#[derive(Debug, Clone)]
pub struct NeuronRunsF32 {
    d: usize,
    neurons: usize,
    /// Values from one segment to the next: `d` rounded up to whole lines.
    stride: usize,
    /// Segments per neuron: 2 (up, down) or 3 (gate, up, down).
    parts: usize,
    data: Lines,
}

impl NeuronRunsF32 {
    /// Up rows and down columns: `up` is neurons x d, `down` d x neurons (both row-major).
    pub fn up_down(up: &MatF32, down: &MatF32) -> Result<Self, KernelError> {
        Self::build(&[up], down)
    }
    /// Gate rows, up rows and down columns: `gate` and `up` neurons x d, `down` d x neurons.
    pub fn gate_up_down(gate: &MatF32, up: &MatF32, down: &MatF32) -> Result<Self, KernelError> {
        if gate.rows() != up.rows() || gate.cols() != up.cols() {
            return Err(KernelError::Shape(format!(
                "gate is {}x{} but up {}x{}",
                gate.rows(),
                gate.cols(),
                up.rows(),
                up.cols()
            )));
        }
        Self::build(&[gate, up], down)
    }
    /// `rows` (each neurons x d) then `down` (d x neurons) transposed, per neuron.
    fn build(rows: &[&MatF32], down: &MatF32) -> Result<Self, KernelError> {
        let (neurons, d) = (rows[0].rows(), rows[0].cols());
        if down.rows() != d || down.cols() != neurons {
            return Err(KernelError::Shape(format!(
                "down is {}x{}, but {neurons} neurons of width {d} need {d}x{neurons}",
                down.rows(),
                down.cols()
            )));
        }
        let (stride, parts) = (d.next_multiple_of(16), rows.len() + 1);
        let len = neurons
            .checked_mul(parts * stride * 4)
            .ok_or_else(|| KernelError::Shape(format!("{neurons} neurons of width {d} overflow")))?;
        let mut lines = Lines::zeroed(len);
        let data = lines.floats_mut();
        for i in 0..neurons {
            let run = &mut data[i * parts * stride..(i + 1) * parts * stride];
            for (k, m) in rows.iter().enumerate() {
                run[k * stride..k * stride + d].copy_from_slice(m.row(i));
            }
            let col = &mut run[rows.len() * stride..rows.len() * stride + d];
            for (j, v) in col.iter_mut().enumerate() {
                *v = down.row(j)[i];
            }
        }
        Ok(Self { d, neurons, stride, parts, data: lines })
    }
    /// The model width (inputs of gate and up, outputs of down).
    pub fn d(&self) -> usize {
        self.d
    }
    /// MLP neurons.
    pub fn neurons(&self) -> usize {
        self.neurons
    }
    /// Whether the runs hold the gate rows too.
    pub fn has_gate(&self) -> bool {
        self.parts == 3
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.data.floats().len()
    }
    /// Segment `k` of neuron `i`'s run.
    fn segment(&self, i: usize, k: usize) -> &[f32] {
        let at = (i * self.parts + k) * self.stride;
        &self.data.floats()[at..at + self.d]
    }
    /// Neuron `i`'s up row.
    fn up(&self, i: usize) -> &[f32] {
        self.segment(i, self.parts - 2)
    }
    /// Neuron `i`'s gate row (runs with gates only).
    fn gate(&self, i: usize) -> &[f32] {
        self.segment(i, 0)
    }
    /// Where neuron `i`'s part of the run a kernel reads starts: the gate row where `gated`,
    /// else the up row.
    fn first(&self, i: usize, gated: bool) -> &[f32] {
        if gated { self.gate(i) } else { self.up(i) }
    }
}

/// Listed neurons ahead of the current four whose runs are started: they are scattered, so
/// the hardware prefetcher cannot find them, but it follows each run once started.
const RUNS_AHEAD: usize = 4;

/// Most gate rows one task of the first pass computes.
const GATE_TASK_MAX: usize = 1024;

/// CATS's MLP at f32: `g = Wg x`; neuron `i` is kept where `|silu(g_i)| > threshold`, and
/// then `h_i = silu(g_i) * (up_i · x)` and `out = Σ_kept h_i * down_i`; elsewhere `h_i = 0`
/// and neither its up row nor its down column is read. Two parallel passes: the gate rows
/// (`gate`, row-major, split by neurons), then the kept neurons' runs (split evenly by count,
/// each task adding into its own outputs). Returns how many neurons were kept.
pub fn swiglu_down_f32(
    gate: &MatF32,
    runs: &NeuronRunsF32,
    x: &[f32],
    threshold: f32,
    h: &mut [f32],
    out: &mut [f32],
) -> Result<usize, KernelError> {
    check_threshold(threshold)?;
    let (n, d) = (runs.neurons, runs.d);
    if gate.rows() != n || gate.cols() != d {
        return Err(KernelError::Shape(format!("gate is {}x{}, but the runs need {n}x{d}", gate.rows(), gate.cols())));
    }
    check_vectors(runs, x, h, out)?;
    gated_silu(gate, x, threshold, h);
    Ok(with_buffers(|b| {
        b.rows.clear();
        b.acts.clear();
        for (i, &v) in h.iter().enumerate() {
            if v != 0.0 {
                b.rows.push(i as u32);
                b.acts.push(v);
            }
        }
        add_runs(runs, x, &b.rows, Some(&b.acts), h, out, &mut b.partial);
        b.rows.len()
    }))
}

/// The SwiGLU and down projection of listed neurons at f32 (a predictor's proposal):
/// `h_i = silu(gate_i · x) * (up_i · x)` for `i` in `rows`, 0 elsewhere, and
/// `out = Σ h_i * down_i`, each neuron's gate row, up row and down column read as one run
/// (`runs` must hold the gates). The rows are split evenly over the pool.
pub fn swiglu_down_rows_f32(
    runs: &NeuronRunsF32,
    x: &[f32],
    rows: &[u32],
    h: &mut [f32],
    out: &mut [f32],
) -> Result<(), KernelError> {
    with_buffers(|b| {
        check_listed(runs, x, rows, h, out, &mut b.seen)?;
        h.fill(0.0);
        add_runs(runs, x, rows, None, h, out, &mut b.partial);
        Ok(())
    })
}

/// A predictor's proposal confirmed by CATS's rule at f32: for `i` in `rows`, the gate
/// `a_i = silu(gate_i · x)` from the runs (which must hold the gates); where
/// `|a_i| > threshold`, `h_i = a_i * (up_i · x)` and `h_i * down_i` goes into `out`; `h` is 0
/// elsewhere. The proposed gate rows are read first (split over the pool), then the confirmed
/// neurons' up rows and down columns, each one run. Returns how many neurons were confirmed.
pub fn swiglu_down_confirmed_f32(
    runs: &NeuronRunsF32,
    x: &[f32],
    rows: &[u32],
    threshold: f32,
    h: &mut [f32],
    out: &mut [f32],
) -> Result<usize, KernelError> {
    check_threshold(threshold)?;
    with_buffers(|b| {
        check_listed(runs, x, rows, h, out, &mut b.seen)?;
        h.fill(0.0);
        b.acts.resize(rows.len(), 0.0);
        let per = rows.len().div_ceil(2 * global().threads()).max(16).next_multiple_of(4);
        let a = Shared(b.acts.as_mut_ptr());
        parallel_for(rows.len().div_ceil(per), |t| {
            let k0 = t * per;
            let len = per.min(rows.len() - k0);
            // SAFETY: task t owns acts[k0..k0 + len], inside the resize above.
            let acts = unsafe { a.range(k0, len) };
            for (four, acts) in rows[k0..k0 + len].chunks(4).zip(acts.chunks_mut(4)) {
                let g = dots(four, x, |i| runs.gate(i));
                acts.iter_mut().zip(g).for_each(|(a, g)| *a = crate::ops::silu(g));
            }
        });
        b.rows.clear();
        let mut kept = 0;
        for (k, &i) in rows.iter().enumerate() {
            let act = b.acts[k];
            if act.abs() > threshold {
                b.rows.push(i);
                b.acts[kept] = act;
                kept += 1;
            }
        }
        b.acts.truncate(kept);
        add_runs(runs, x, &b.rows, Some(&b.acts), h, out, &mut b.partial);
        Ok(kept)
    })
}

/// Checks a list of neurons against runs with gates and the vectors; `seen` is scratch for
/// the duplicate check (reused, so a decode step allocates nothing).
fn check_listed(
    runs: &NeuronRunsF32,
    x: &[f32],
    rows: &[u32],
    h: &[f32],
    out: &[f32],
    seen: &mut Vec<bool>,
) -> Result<(), KernelError> {
    if !runs.has_gate() {
        return Err(KernelError::Shape("these neuron runs hold no gate rows".into()));
    }
    check_vectors(runs, x, h, out)?;
    if let Some(&bad) = rows.iter().find(|&&r| r as usize >= runs.neurons) {
        return Err(KernelError::Shape(format!("neuron {bad} out of range ({} neurons)", runs.neurons)));
    }
    seen.clear();
    seen.resize(runs.neurons, false);
    if let Some(&twice) = rows.iter().find(|&&r| std::mem::replace(&mut seen[r as usize], true)) {
        return Err(KernelError::Shape(format!("neuron {twice} is listed twice")));
    }
    Ok(())
}

fn check_vectors(runs: &NeuronRunsF32, x: &[f32], h: &[f32], out: &[f32]) -> Result<(), KernelError> {
    let (n, d) = (runs.neurons, runs.d);
    for (what, expected, got) in [("input vector", d, x.len()), ("h", n, h.len()), ("output vector", d, out.len())] {
        if got != expected {
            return Err(KernelError::Length { what, expected, got });
        }
    }
    Ok(())
}

/// Buffers of the kernels above, kept between calls: a decode step runs one per layer.
#[derive(Default)]
struct Buffers {
    seen: Vec<bool>,
    rows: Vec<u32>,
    acts: Vec<f32>,
    partial: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut b) => f(&mut b),
        // A product inside another's task on the same thread: fresh buffers.
        Err(_) => f(&mut Buffers::default()),
    })
}

/// `h_i = silu(Wg_i · x)` where that clears `threshold`, else 0, over the pool.
fn gated_silu(gate: &MatF32, x: &[f32], threshold: f32, h: &mut [f32]) {
    let n = h.len();
    let per = n.div_ceil(2 * global().threads()).clamp(16, GATE_TASK_MAX);
    let o = Shared(h.as_mut_ptr());
    parallel_for(n.div_ceil(per), |t| {
        let k0 = t * per;
        let len = per.min(n - k0);
        // SAFETY: task t owns h[k0..k0 + len], inside `h`.
        let y = unsafe { o.range(k0, len) };
        gate_rows(&RowMajor::F32(gate), &Vector::F32(x), k0, y);
        crate::ops::silu_in_place(y);
        y.iter_mut().filter(|v| v.abs() <= threshold).for_each(|v| *v = 0.0);
    });
}

/// The listed neurons' runs, split evenly over the pool: `h_i = a_i * (up_i · x)` with
/// `a_i = acts[k]` given (CATS) or `silu(gate_i · x)` read from the run (`acts` None), then
/// `out = Σ h_i down_i`, each task into its own outputs.
fn add_runs(
    runs: &NeuronRunsF32,
    x: &[f32],
    rows: &[u32],
    acts: Option<&[f32]>,
    h: &mut [f32],
    out: &mut [f32],
    partial: &mut Vec<f32>,
) {
    let gated = acts.is_none();
    let data = runs.data.floats();
    let (run_len, down_at) = (runs.parts * runs.stride, (runs.parts - 1) * runs.stride);
    let hs = Shared(h.as_mut_ptr());
    split_rows(global().threads(), rows.len(), out, partial, |range, sums| {
        sums.fill(0.0);
        let acts = acts.map(|a| &a[range.clone()]);
        let rows = &rows[range];
        let start = |k: usize| {
            if let Some(&i) = rows.get(k) {
                // The first 512 bytes of the run; the hardware prefetcher takes the rest.
                let first = runs.first(i as usize, gated);
                cpu::prefetch(&first[..first.len().min(128)]);
            }
        };
        (0..RUNS_AHEAD).for_each(start);
        let mut hv = [0f32; 4];
        for (c, four) in rows.chunks(4).enumerate() {
            (0..four.len()).for_each(|j| start(4 * c + RUNS_AHEAD + j));
            let a: [f32; 4] = match acts {
                Some(a) => std::array::from_fn(|j| a.get(4 * c + j).copied().unwrap_or(0.0)),
                None => dots(four, x, |i| runs.gate(i)).map(crate::ops::silu),
            };
            let u = dots(four, x, |i| runs.up(i));
            (0..four.len()).for_each(|j| hv[j] = a[j] * u[j]);
            let hv = &hv[..four.len()];
            cpu::axpy_rows_f32(data, run_len, down_at, four, hv, sums, 0);
            for (&i, &v) in four.iter().zip(hv) {
                // SAFETY: neuron i is listed once (callers), in this task's range only, and
                // i < h.len().
                unsafe { hs.range(i as usize, 1)[0] = v };
            }
        }
    });
}

/// The dots of up to four listed neurons' rows (`row(i)`) with `x`; 0 past the list.
fn dots<'a>(four: &[u32], x: &[f32], row: impl Fn(usize) -> &'a [f32]) -> [f32; 4] {
    if let [a, b, c, d] = *four {
        return cpu::dot4_f32([a, b, c, d].map(|i| row(i as usize)), x);
    }
    std::array::from_fn(|j| four.get(j).map_or(0.0, |&i| cpu::dot_f32(row(i as usize), x)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::values;

    struct Mlp {
        gate: MatF32,
        up: MatF32,
        down: MatF32,
        x: Vec<f32>,
    }

    fn mlp(d: usize, n: usize) -> Mlp {
        Mlp {
            gate: MatF32::new(n, d, values(n * d, 1)).unwrap(),
            up: MatF32::new(n, d, values(n * d, 2)).unwrap(),
            down: MatF32::new(d, n, values(d * n, 3)).unwrap(),
            x: values(d, 4),
        }
    }

    /// Reference in f64 over the row-major matrices: `h_i` for the neurons `keep` accepts
    /// (given silu(g_i)), 0 elsewhere, and `out = down h`.
    fn reference(m: &Mlp, keep: impl Fn(usize, f32) -> bool) -> (Vec<f64>, Vec<f64>) {
        let dot = |row: &[f32]| row.iter().zip(&m.x).map(|(&w, &v)| w as f64 * v as f64).sum::<f64>();
        let h: Vec<f64> = (0..m.gate.rows())
            .map(|i| {
                let s = crate::ops::silu(dot(m.gate.row(i)) as f32);
                if keep(i, s) { s as f64 * dot(m.up.row(i)) } else { 0.0 }
            })
            .collect();
        let out = (0..m.down.rows()).map(|j| m.down.row(j).iter().zip(&h).map(|(&w, &v)| w as f64 * v).sum()).collect();
        (h, out)
    }

    fn assert_close(what: &str, h: &[f32], out: &[f32], want_h: &[f64], want: &[f64]) {
        let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        for (j, (&got, &w)) in out.iter().zip(want).enumerate() {
            assert!((got as f64 - w).abs() <= 1e-4 * scale, "{what}: out {j}: {got} vs {w}");
        }
        for (i, (&got, &w)) in h.iter().zip(want_h).enumerate() {
            assert!((got as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}: h {i}: {got} vs {w}");
        }
    }

    // Widths that are not multiples of the SIMD width or of four neurons.
    const SHAPES: [(usize, usize); 4] = [(576, 1536), (37, 101), (8, 4), (100, 3)];

    #[test]
    fn gated_mlp_matches_the_dense_mlp_on_kept_neurons() {
        // Thresholds that keep every neuron, none, and some.
        let mut partly_kept = 0;
        for (d, n) in SHAPES {
            let m = mlp(d, n);
            let runs = NeuronRunsF32::up_down(&m.up, &m.down).unwrap();
            for t in [0.0, 0.05, 0.2, f32::MAX] {
                let (want_h, want) = reference(&m, |_, s| s.abs() > t);
                let (mut h, mut out) = (vec![f32::NAN; n], vec![f32::NAN; d]);
                let kept = swiglu_down_f32(&m.gate, &runs, &m.x, t, &mut h, &mut out).unwrap();
                assert_eq!(kept, want_h.iter().filter(|v| **v != 0.0).count(), "d {d} n {n} t {t}");
                partly_kept += usize::from(kept > 0 && kept < n);
                assert_close(&format!("d {d} n {n} t {t}"), &h, &out, &want_h, &want);
            }
        }
        assert!(partly_kept >= 3, "only {partly_kept} cases kept some neurons and not others");
    }

    #[test]
    fn listed_neurons_match_the_dense_mlp_on_them() {
        for (d, n) in SHAPES {
            let m = mlp(d, n);
            let runs = NeuronRunsF32::gate_up_down(&m.gate, &m.up, &m.down).unwrap();
            // None, every neuron, and an unordered scattered third.
            let third: Vec<u32> = (0..n as u32).rev().filter(|i| i % 3 == 1).collect();
            for rows in [vec![], (0..n as u32).collect(), third] {
                let (want_h, want) = reference(&m, |i, _| rows.contains(&(i as u32)));
                let (mut h, mut out) = (vec![f32::NAN; n], vec![f32::NAN; d]);
                swiglu_down_rows_f32(&runs, &m.x, &rows, &mut h, &mut out).unwrap();
                assert_close(&format!("d {d} n {n}, {} rows", rows.len()), &h, &out, &want_h, &want);
            }
            // Confirmed by CATS's rule: the listed neurons whose |silu(gate)| clears 0.05.
            let listed: Vec<u32> = (0..n as u32).filter(|i| i % 3 != 0).collect();
            let (want_h, want) = reference(&m, |i, s| listed.contains(&(i as u32)) && s.abs() > 0.05);
            let (mut h, mut out) = (vec![f32::NAN; n], vec![f32::NAN; d]);
            let kept = swiglu_down_confirmed_f32(&runs, &m.x, &listed, 0.05, &mut h, &mut out).unwrap();
            assert_eq!(kept, want_h.iter().filter(|v| **v != 0.0).count(), "d {d} n {n} confirmed");
            assert_close("confirmed", &h, &out, &want_h, &want);
            // The gated kernel reads the up rows and down columns of runs with gates as well.
            let (want_h, want) = reference(&m, |_, s| s.abs() > 0.05);
            let (mut h, mut out) = (vec![0.0; n], vec![0.0; d]);
            swiglu_down_f32(&m.gate, &runs, &m.x, 0.05, &mut h, &mut out).unwrap();
            assert_close("gated over runs with gates", &h, &out, &want_h, &want);
        }
    }

    #[test]
    fn refuses_mismatched_shapes_and_lists() {
        let m = mlp(4, 6);
        assert!(NeuronRunsF32::up_down(&m.up, &MatF32::new(6, 4, values(24, 2)).unwrap()).is_err());
        assert!(NeuronRunsF32::gate_up_down(&MatF32::new(5, 4, values(20, 2)).unwrap(), &m.up, &m.down).is_err());
        let runs = NeuronRunsF32::up_down(&m.up, &m.down).unwrap();
        let (mut h, mut out) = (vec![0.0; 6], vec![0.0; 4]);
        assert!(swiglu_down_f32(&m.gate, &runs, &[0.0; 5], 0.1, &mut h, &mut out).is_err());
        assert!(swiglu_down_f32(&m.gate, &runs, &m.x, -1.0, &mut h, &mut out).is_err());
        assert!(swiglu_down_f32(&m.gate, &runs, &m.x, f32::NAN, &mut h, &mut out).is_err());
        assert!(swiglu_down_f32(&m.gate, &runs, &m.x, 0.1, &mut h[..5], &mut out).is_err());
        let wrong_gate = MatF32::new(5, 4, values(20, 3)).unwrap();
        assert!(swiglu_down_f32(&wrong_gate, &runs, &m.x, 0.1, &mut h, &mut out).is_err());
        // Listed neurons need runs with gates, in range, each once.
        assert!(swiglu_down_rows_f32(&runs, &m.x, &[0], &mut h, &mut out).is_err());
        let gated = NeuronRunsF32::gate_up_down(&m.gate, &m.up, &m.down).unwrap();
        assert!(swiglu_down_rows_f32(&gated, &m.x, &[6], &mut h, &mut out).is_err());
        assert!(swiglu_down_rows_f32(&gated, &m.x, &[2, 1, 2], &mut h, &mut out).is_err());
        assert!(swiglu_down_rows_f32(&gated, &m.x, &[2, 1], &mut h, &mut out[..3]).is_err());
        assert!(swiglu_down_rows_f32(&gated, &m.x, &[2, 1], &mut h, &mut out).is_ok());
        assert!(swiglu_down_confirmed_f32(&runs, &m.x, &[0], 0.1, &mut h, &mut out).is_err());
        assert!(swiglu_down_confirmed_f32(&gated, &m.x, &[0, 0], 0.1, &mut h, &mut out).is_err());
        assert!(swiglu_down_confirmed_f32(&gated, &m.x, &[0], -0.5, &mut h, &mut out).is_err());
        assert!(swiglu_down_confirmed_f32(&gated, &m.x, &[9], 0.1, &mut h, &mut out).is_err());
        assert!(swiglu_down_confirmed_f32(&gated, &m.x, &[5, 0], 0.1, &mut h, &mut out).is_ok());
    }
}
