//! CATS's whole MLP at f32 with each kept neuron's up row and down column read as one run.
//!
//! CATS keeps a neuron when |silu(gate)| clears its threshold; a kept neuron needs its up row
//! (to form `h = silu(g) * (up · x)`) and its down column (to add `h * down` into the output).
//! Stored apart, those are two scattered 2.3 KB reads per neuron at SmolLM2's width; stored
//! side by side ([`UpDownF32`]) they are one 4.6 KB run, which the hardware prefetcher follows
//! for longer. On a 2-core Zen 3 VM reading a random half of such runs took 1/1.62 of the time
//! of reading them all (median of nine runs of the `bandwidth` example), against 1/1.45 for
//! 2.3 KB runs.

use std::cell::RefCell;

use crate::cpu;
use crate::lines::Lines;
use crate::pool::{global, parallel_for};
use crate::sparse::{Shared, check_threshold, split_rows};
use crate::{KernelError, MatF32};

/// Each neuron's up row and down column side by side: neuron `i` owns
/// `data[i * 2 * stride..]`, its up row (the `d` weights it dots with the input) first, its
/// down column (the `d` outputs it adds into) `stride` values on; both start on a cache line.
#[derive(Debug, Clone)]
pub struct UpDownF32 {
    d: usize,
    neurons: usize,
    /// Values from a neuron's up row to its down column: `d` rounded up to whole lines.
    stride: usize,
    data: Lines,
}

impl UpDownF32 {
    /// Interleaves `up` (neurons x d, row-major) and `down` (d x neurons, row-major).
    pub fn new(up: &MatF32, down: &MatF32) -> Result<Self, KernelError> {
        let (neurons, d) = (up.rows(), up.cols());
        if down.rows() != d || down.cols() != neurons {
            return Err(KernelError::Shape(format!(
                "down is {}x{}, but up ({neurons}x{d}) needs {d}x{neurons}",
                down.rows(),
                down.cols()
            )));
        }
        let stride = d.next_multiple_of(16);
        let len = neurons
            .checked_mul(2 * stride * 4)
            .ok_or_else(|| KernelError::Shape(format!("{neurons} neurons of width {d} overflow")))?;
        let mut lines = Lines::zeroed(len);
        let data = lines.floats_mut();
        for i in 0..neurons {
            let pair = &mut data[i * 2 * stride..(i + 1) * 2 * stride];
            pair[..d].copy_from_slice(up.row(i));
            for (j, v) in pair[stride..stride + d].iter_mut().enumerate() {
                *v = down.row(j)[i];
            }
        }
        Ok(Self { d, neurons, stride, data: lines })
    }
    /// The model width (inputs of up, outputs of down).
    pub fn d(&self) -> usize {
        self.d
    }
    /// MLP neurons.
    pub fn neurons(&self) -> usize {
        self.neurons
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * self.data.floats().len()
    }
    /// Neuron `i`'s up row and down column.
    fn pair(&self, i: usize) -> (&[f32], &[f32]) {
        let pair = &self.data.floats()[i * 2 * self.stride..(i + 1) * 2 * self.stride];
        (&pair[..self.d], &pair[self.stride..self.stride + self.d])
    }
}

/// Kept neurons ahead of the current four whose runs are started: they are scattered, so the
/// hardware prefetcher cannot find them, but it follows each run once started.
const PAIRS_AHEAD: usize = 4;

/// Most gate rows one task of the first pass computes.
const GATE_TASK_MAX: usize = 1024;

thread_local! {
    /// The kept neurons (indices, silu of their gates) and the other tasks' partial outputs,
    /// kept between calls: a decode step runs one product per layer.
    static KEPT: RefCell<(Vec<u32>, Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// CATS's MLP at f32: `g = Wg x`; neuron `i` is kept where `|silu(g_i)| > threshold`, and
/// then `h_i = silu(g_i) * (up_i · x)` and `out = Σ_kept h_i * down_i`; elsewhere `h_i = 0`
/// and neither its up row nor its down column is read. Two parallel passes: the gate rows
/// (split by neurons), then the kept neurons' runs (split evenly by count, each task adding
/// into its own outputs). Returns how many neurons were kept.
pub fn swiglu_down_f32(
    gate: &MatF32,
    pairs: &UpDownF32,
    x: &[f32],
    threshold: f32,
    h: &mut [f32],
    out: &mut [f32],
) -> Result<usize, KernelError> {
    check_threshold(threshold)?;
    let (n, d) = (pairs.neurons, pairs.d);
    if gate.rows() != n || gate.cols() != d {
        return Err(KernelError::Shape(format!(
            "gate is {}x{}, but the up/down pairs need {n}x{d}",
            gate.rows(),
            gate.cols()
        )));
    }
    for (what, expected, got) in [("input vector", d, x.len()), ("h", n, h.len()), ("output vector", d, out.len())] {
        if got != expected {
            return Err(KernelError::Length { what, expected, got });
        }
    }
    gated_silu(gate, x, threshold, h);
    Ok(KEPT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            let (kept, silu, partial) = &mut *buffers;
            kept_pairs(pairs, x, h, out, kept, silu, partial)
        }
        // A product inside another's task on the same thread: fresh buffers.
        Err(_) => kept_pairs(pairs, x, h, out, &mut Vec::new(), &mut Vec::new(), &mut Vec::new()),
    }))
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
        let whole = len / 4 * 4;
        for i in (0..whole).step_by(4) {
            y[i..i + 4].copy_from_slice(&cpu::f32_rows_x1::<4>(gate.rows_data(k0 + i, 4), gate.cols(), x));
        }
        for (i, v) in y.iter_mut().enumerate().skip(whole) {
            *v = cpu::dot_f32(gate.row(k0 + i), x);
        }
        crate::ops::silu_in_place(y);
        y.iter_mut().filter(|v| v.abs() <= threshold).for_each(|v| *v = 0.0);
    });
}

/// The second pass: lists the neurons `h` kept, then `h_i *= up_i · x` and `out = Σ h_i down_i`
/// over them, split evenly over the pool. Returns how many were kept.
fn kept_pairs(
    pairs: &UpDownF32,
    x: &[f32],
    h: &mut [f32],
    out: &mut [f32],
    kept: &mut Vec<u32>,
    silu: &mut Vec<f32>,
    partial: &mut Vec<f32>,
) -> usize {
    kept.clear();
    silu.clear();
    for (i, &v) in h.iter().enumerate() {
        if v != 0.0 {
            kept.push(i as u32);
            silu.push(v);
        }
    }
    let (kept, silu) = (&kept[..], &silu[..]);
    let stride2 = 2 * pairs.stride;
    let data = pairs.data.floats();
    let hs = Shared(h.as_mut_ptr());
    split_rows(global().threads(), kept.len(), out, partial, |range, sums| {
        sums.fill(0.0);
        let (kept, silu) = (&kept[range.clone()], &silu[range]);
        let start = |k: usize| {
            if let Some(&i) = kept.get(k) {
                // The first 512 bytes of the run; the hardware prefetcher takes the rest.
                let (up, _) = pairs.pair(i as usize);
                cpu::prefetch(&up[..up.len().min(128)]);
            }
        };
        (0..PAIRS_AHEAD).for_each(start);
        let mut hv = [0f32; 4];
        for (k0, (four, silu)) in kept.chunks(4).zip(silu.chunks(4)).enumerate() {
            (0..four.len()).for_each(|j| start(4 * k0 + PAIRS_AHEAD + j));
            if four.len() == 4 {
                let u = cpu::dot4_f32([0, 1, 2, 3].map(|j| pairs.pair(four[j] as usize).0), x);
                (0..4).for_each(|j| hv[j] = silu[j] * u[j]);
            } else {
                for (j, &i) in four.iter().enumerate() {
                    hv[j] = silu[j] * cpu::dot_f32(pairs.pair(i as usize).0, x);
                }
            }
            let hv = &hv[..four.len()];
            cpu::axpy_rows_f32(data, stride2, pairs.stride, four, hv, sums, 0);
            for (&i, &v) in four.iter().zip(hv) {
                // SAFETY: neuron i is listed once, in this task's range only, and i < h.len().
                unsafe { hs.range(i as usize, 1)[0] = v };
            }
        }
    });
    kept.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::values;

    /// Reference: the same MLP through plain f64 loops over the row-major matrices.
    fn reference(gate: &MatF32, up: &MatF32, down: &MatF32, x: &[f32], t: f32) -> (Vec<f64>, Vec<f64>) {
        let dot = |row: &[f32]| row.iter().zip(x).map(|(&w, &v)| w as f64 * v as f64).sum::<f64>();
        let h: Vec<f64> = (0..gate.rows())
            .map(|i| {
                let s = crate::ops::silu(dot(gate.row(i)) as f32);
                if s.abs() > t { s as f64 * dot(up.row(i)) } else { 0.0 }
            })
            .collect();
        let out = (0..down.rows()).map(|j| down.row(j).iter().zip(&h).map(|(&w, &v)| w as f64 * v).sum()).collect();
        (h, out)
    }

    #[test]
    fn matches_the_dense_mlp_on_kept_neurons() {
        // Widths that are not multiples of the SIMD width or of four neurons, thresholds that
        // keep every neuron, none, and some.
        let mut partly_kept = 0;
        for (d, n) in [(576, 1536), (37, 101), (8, 4), (100, 3)] {
            let gate = MatF32::new(n, d, values(n * d, 1)).unwrap();
            let up = MatF32::new(n, d, values(n * d, 2)).unwrap();
            let down = MatF32::new(d, n, values(d * n, 3)).unwrap();
            let x = values(d, 4);
            let pairs = UpDownF32::new(&up, &down).unwrap();
            for t in [0.0, 0.05, 0.2, f32::MAX] {
                let (want_h, want) = reference(&gate, &up, &down, &x, t);
                let (mut h, mut out) = (vec![f32::NAN; n], vec![f32::NAN; d]);
                let kept = swiglu_down_f32(&gate, &pairs, &x, t, &mut h, &mut out).unwrap();
                assert_eq!(kept, want_h.iter().filter(|v| **v != 0.0).count(), "d {d} n {n} t {t}");
                partly_kept += usize::from(kept > 0 && kept < n);
                let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
                for (j, (&got, &w)) in out.iter().zip(&want).enumerate() {
                    assert!((got as f64 - w).abs() <= 1e-4 * scale, "d {d} n {n} t {t} out {j}: {got} vs {w}");
                }
                for (i, (&got, &w)) in h.iter().zip(&want_h).enumerate() {
                    assert!((got as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()), "h {i}: {got} vs {w}");
                }
            }
        }
        assert!(partly_kept >= 3, "only {partly_kept} cases kept some neurons and not others");
    }

    #[test]
    fn refuses_mismatched_shapes() {
        let up = MatF32::new(6, 4, values(24, 1)).unwrap();
        let down = MatF32::new(4, 6, values(24, 2)).unwrap();
        assert!(UpDownF32::new(&up, &MatF32::new(6, 4, values(24, 2)).unwrap()).is_err());
        let pairs = UpDownF32::new(&up, &down).unwrap();
        let gate = MatF32::new(6, 4, values(24, 3)).unwrap();
        let (mut h, mut out) = (vec![0.0; 6], vec![0.0; 4]);
        assert!(swiglu_down_f32(&gate, &pairs, &[0.0; 5], 0.1, &mut h, &mut out).is_err());
        assert!(swiglu_down_f32(&gate, &pairs, &[0.0; 4], -1.0, &mut h, &mut out).is_err());
        assert!(swiglu_down_f32(&gate, &pairs, &[0.0; 4], 0.1, &mut h[..5], &mut out).is_err());
        let wrong_gate = MatF32::new(5, 4, values(20, 3)).unwrap();
        assert!(swiglu_down_f32(&wrong_gate, &pairs, &[0.0; 4], 0.1, &mut h, &mut out).is_err());
    }
}
