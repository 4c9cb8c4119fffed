//! Decode (one position) with sparse kernels: the rows of weights a method drops are never
//! read. TEAL runs every projection input-sparse over input-major copies of the weights
//! (the |x| > t mask is taken inside the kernel); CATS computes every gate row and, in the same
//! pass, only the up rows of the neurons it keeps (output-sparse), then the down columns of
//! those neurons (input-sparse). Numerically this is the accuracy path of [`crate::model`] on the same
//! plan: masked inputs are quantized per block exactly as the dense kernels quantize them.

use std::sync::OnceLock;

use sieve_kernels::sparse::{
    InputMajorF32, NeuronRunsF32, RowMajor, SparseScratch, Vector, gemv_input_sparse_f32, swiglu_down_f32, swiglu_gated,
};
use sieve_kernels::sparse_q4::{InputMajorQ4_1, SparseQ4Job, gemv_input_sparse_q4_1, gemv_input_sparse_q4_1_many};
use sieve_kernels::{ActsQ8, MatF32, ops};

use sieve_predictor::PredictorSet;

use crate::error::{EngineError, Result};
use crate::predict::{self, PredictScratch};
use crate::sparsity::{LayerPlan, Method, Proj, SparsityPlan, SparsityStats};
use crate::weights::{LayerWeights, Linear, Prepared};

/// A projection stored input-major for the input-sparse GEMV.
enum InputMajor {
    F32(InputMajorF32),
    Q4(InputMajorQ4_1),
}

impl InputMajor {
    fn from_linear(w: &Linear) -> Result<Self> {
        Ok(match w {
            Linear::F32(m) => InputMajor::F32(InputMajorF32::from_row_major(m)),
            Linear::Q4(m) => InputMajor::Q4(InputMajorQ4_1::from_row_major(m)?),
            Linear::Q8(m) => {
                // No layer of the supported GGUFs is int8; go through f32 for completeness.
                let mut data = vec![0f32; m.rows() * m.cols()];
                for (r, row) in data.chunks_exact_mut(m.cols()).enumerate() {
                    m.dequantize_row(r, row);
                }
                let f = MatF32::new(m.rows(), m.cols(), data)?;
                InputMajor::Q4(InputMajorQ4_1::from_row_major(&sieve_kernels::MatQ4_1::quantize(
                    f.rows(),
                    f.cols(),
                    f.data(),
                )?)?)
            }
        })
    }

    /// `out = W (x ⊙ [|x| > t])`; returns the active inputs.
    fn gemv(&self, x: &[f32], t: f32, out: &mut [f32], scratch: &mut SparseScratch) -> Result<usize> {
        Ok(match self {
            InputMajor::F32(w) => gemv_input_sparse_f32(w, x, t, out)?,
            InputMajor::Q4(w) => gemv_input_sparse_q4_1(w, x, t, out, scratch)?,
        })
    }

    fn bytes(&self) -> usize {
        match self {
            InputMajor::F32(w) => 4 * w.inputs() * w.outputs(),
            InputMajor::Q4(w) => w.bytes(),
        }
    }

    /// Bytes one product reads with `active` input channels (a mean over products).
    fn bytes_read(&self, active: f64) -> f64 {
        match self {
            InputMajor::F32(w) => 4.0 * active.clamp(0.0, w.inputs() as f64) * w.outputs() as f64,
            InputMajor::Q4(w) => w.bytes_read(active),
        }
    }
}

/// Input-major copies of the projections, built on first use (TEAL needs all seven, CATS
/// and the predictors only down), and at f32 each neuron's weights side by side (CATS: up
/// row and down column; the predictors: gate row too); shared by every request.
#[derive(Default)]
pub struct SparseWeights {
    layers: Vec<[OnceLock<InputMajor>; 7]>,
    up_down: Vec<OnceLock<NeuronRunsF32>>,
    gate_up_down: Vec<OnceLock<NeuronRunsF32>>,
}

impl SparseWeights {
    /// Empty slots for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self {
            layers: (0..layers).map(|_| Default::default()).collect(),
            up_down: (0..layers).map(|_| OnceLock::new()).collect(),
            gate_up_down: (0..layers).map(|_| OnceLock::new()).collect(),
        }
    }

    fn get(&self, l: usize, p: Proj, w: &LayerWeights) -> Result<&InputMajor> {
        let slot = &self.layers[l][p.index()];
        if let Some(m) = slot.get() {
            return Ok(m);
        }
        let built = InputMajor::from_linear(w.proj(p))?;
        Ok(slot.get_or_init(|| built))
    }

    /// Layer `l`'s gate and its neurons' up rows and down columns side by side, where the MLP
    /// is stored in f32 (CATS reads each kept neuron's as one run); `None` in other precisions.
    fn up_down<'a>(&'a self, l: usize, w: &'a LayerWeights) -> Result<Option<(&'a MatF32, &'a NeuronRunsF32)>> {
        let (Linear::F32(gate), Linear::F32(up), Linear::F32(down)) = (&w.w_gate, &w.w_up, &w.w_down) else {
            return Ok(None);
        };
        let runs = built(&self.up_down[l], || NeuronRunsF32::up_down(up, down))?;
        Ok(Some((gate, runs)))
    }

    /// Layer `l`'s neurons' gate rows, up rows and down columns side by side, where the MLP is
    /// stored in f32 (a predictor reads each proposed neuron's as one run); `None` otherwise.
    pub(crate) fn gate_up_down(&self, l: usize, w: &LayerWeights) -> Result<Option<&NeuronRunsF32>> {
        let (Linear::F32(gate), Linear::F32(up), Linear::F32(down)) = (&w.w_gate, &w.w_up, &w.w_down) else {
            return Ok(None);
        };
        Ok(Some(built(&self.gate_up_down[l], || NeuronRunsF32::gate_up_down(gate, up, down))?))
    }

    /// Builds every copy `method` reads, so no decode step pays for it.
    pub(crate) fn prepare(&self, plan: &SparsityPlan, layers: &[LayerWeights]) -> Result<()> {
        let method = plan.method;
        let projs: &[Proj] = match method {
            Method::Teal | Method::TealUniform => &Proj::ALL,
            Method::Cats => &[Proj::Down],
            _ => &[],
        };
        // The matrices whose listed rows the method reads one by one.
        let row_read: &[Proj] = match method {
            Method::Cats => &[Proj::Up],
            Method::Predictor | Method::PredictorVerify => &[Proj::Gate, Proj::Up],
            _ => &[],
        };
        for (l, w) in layers.iter().enumerate() {
            let runs = match (method, plan.layers.get(l)) {
                (Method::Cats, _) => self.up_down(l, w)?.is_some(),
                (Method::Predictor | Method::PredictorVerify, Some(lp)) if predict::reads_runs(method, lp) => {
                    self.gate_up_down(l, w)?.is_some()
                }
                _ => false,
            };
            if runs {
                continue;
            }
            for &p in projs {
                self.get(l, p, w)?;
            }
            for &p in row_read {
                if let Linear::Q4(m) = w.proj(p) {
                    m.prepare_row_reads();
                }
            }
        }
        Ok(())
    }

    /// Bytes the input-sparse product of projection `p` in layer `l` reads with a fraction
    /// `active` of its inputs active (builds the copy if it is not there yet).
    pub(crate) fn bytes_read(&self, l: usize, p: Proj, w: &LayerWeights, active: f64) -> Result<f64> {
        if let Linear::F32(m) = w.proj(p) {
            // Whole f32 rows of `rows` outputs, in whichever copy holds them.
            return Ok(4.0 * (active * m.cols() as f64).clamp(0.0, m.cols() as f64) * m.rows() as f64);
        }
        let m = self.get(l, p, w)?;
        Ok(m.bytes_read(active * w.proj(p).cols() as f64))
    }

    /// Bytes of the copies built so far.
    pub fn bytes(&self) -> usize {
        let input_major: usize =
            self.layers.iter().flat_map(|l| l.iter()).filter_map(|s| s.get()).map(InputMajor::bytes).sum();
        let runs = self.up_down.iter().chain(&self.gate_up_down).filter_map(|s| s.get()).map(NeuronRunsF32::bytes);
        input_major + runs.sum::<usize>()
    }
}

/// The value in `slot`, built by `build` the first time.
fn built(
    slot: &OnceLock<NeuronRunsF32>,
    build: impl FnOnce() -> std::result::Result<NeuronRunsF32, sieve_kernels::KernelError>,
) -> Result<&NeuronRunsF32> {
    if let Some(runs) = slot.get() {
        return Ok(runs);
    }
    let runs = build()?;
    Ok(slot.get_or_init(|| runs))
}

/// Buffers of one sparse decode step.
#[derive(Default)]
pub(crate) struct DecodeScratch {
    kernel: SparseScratch,
    /// Buffers of the second and third product of one fused input-sparse job (k and v).
    more: [SparseScratch; 2],
    qa: ActsQ8,
    predict: PredictScratch,
}

/// Whether [`project`] and [`mlp`] handle `method` (CETT needs the dense MLP).
pub(crate) fn supports(method: Method) -> bool {
    matches!(method, Method::Teal | Method::TealUniform | Method::Cats | Method::Predictor | Method::PredictorVerify)
}

/// `out = W_p x` for one position, input-sparse under TEAL, dense otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn project(
    sw: &SparseWeights,
    l: usize,
    w: &LayerWeights,
    method: Method,
    lp: &LayerPlan,
    p: Proj,
    x: &[f32],
    out: &mut [f32],
    scratch: &mut DecodeScratch,
    stats: &mut Option<&mut SparsityStats>,
) -> Result<()> {
    project_all(sw, l, w, method, lp, x, &mut [(p, out)], scratch, stats)
}

/// [`project`] for several projections of the same input: the dense ones share one
/// quantization of `x`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn project_all(
    sw: &SparseWeights,
    l: usize,
    w: &LayerWeights,
    method: Method,
    lp: &LayerPlan,
    x: &[f32],
    outs: &mut [(Proj, &mut [f32])],
    scratch: &mut DecodeScratch,
    stats: &mut Option<&mut SparsityStats>,
) -> Result<()> {
    let teal = matches!(method, Method::Teal | Method::TealUniform);
    let all_quantized = outs.iter().all(|(p, _)| !matches!(w.proj(*p), Linear::F32(_)));
    if outs.len() > 1 && all_quantized && !outs.iter().any(|(p, _)| teal && lp.proj[p.index()] > 0.0) {
        // Every projection dense and quantized: one quantization, one parallel job (f32
        // weights take the loop below, which hands them the f32 input).
        scratch.qa.quantize_from(x, 1, x.len())?;
        let mut many: Vec<(&Linear, &mut [f32])> = outs.iter_mut().map(|(p, out)| (w.proj(*p), &mut **out)).collect();
        crate::weights::forward_many(&scratch.qa, &mut many)?;
        if let Some(s) = stats.as_mut() {
            outs.iter().for_each(|(p, _)| s.add(l, *p, 0, x.len()));
        }
        return Ok(());
    }
    if teal && (2..=3).contains(&outs.len()) && outs.iter().all(|(p, _)| lp.proj[p.index()] > 0.0) {
        // Every projection input-sparse over Q4_1 (q, k and v): one parallel job.
        let mut weights = Vec::with_capacity(outs.len());
        for (p, _) in outs.iter() {
            if let InputMajor::Q4(m) = sw.get(l, *p, w)? {
                weights.push(m);
            }
        }
        if weights.len() == outs.len() {
            let scratches = std::iter::once(&mut scratch.kernel).chain(scratch.more.iter_mut());
            let mut jobs: Vec<SparseQ4Job<'_>> = outs
                .iter_mut()
                .zip(weights)
                .zip(scratches)
                .map(|(((p, out), w), scratch)| SparseQ4Job {
                    w,
                    x,
                    threshold: lp.proj[p.index()],
                    out,
                    scratch,
                    active: 0,
                })
                .collect();
            gemv_input_sparse_q4_1_many(&mut jobs)?;
            let active: Vec<usize> = jobs.iter().map(|j| j.active).collect();
            drop(jobs);
            if let Some(s) = stats.as_mut() {
                for ((p, _), active) in outs.iter().zip(active) {
                    s.add(l, *p, x.len() - active, x.len());
                }
            }
            return Ok(());
        }
    }
    let mut quantized = false;
    for (p, out) in outs.iter_mut() {
        let t = lp.proj[p.index()];
        let active = if matches!(method, Method::Teal | Method::TealUniform) && t > 0.0 {
            sw.get(l, *p, w)?.gemv(x, t, out, &mut scratch.kernel)?
        } else {
            let linear = w.proj(*p);
            let prepared = match linear {
                Linear::F32(_) => Prepared::F32 { x, n: 1 },
                Linear::Q8(_) | Linear::Q4(_) => {
                    if !quantized {
                        scratch.qa.quantize_from(x, 1, x.len())?;
                        quantized = true;
                    }
                    Prepared::Q8(&scratch.qa)
                }
            };
            linear.forward(&prepared, out)?;
            x.len()
        };
        if let Some(s) = stats.as_mut() {
            s.add(l, *p, x.len() - active, x.len());
        }
    }
    Ok(())
}

/// Gate and up as row-major operands of the output-sparse kernels, with the vector they
/// read: `x` itself for f32 weights, its quantization `qa` otherwise.
pub(crate) fn gate_up_rows<'a>(
    w: &'a LayerWeights,
    x: &'a [f32],
    qa: &'a ActsQ8,
) -> Result<(RowMajor<'a>, RowMajor<'a>, Vector<'a>)> {
    Ok(match (&w.w_gate, &w.w_up) {
        (Linear::F32(g), Linear::F32(u)) => (RowMajor::F32(g), RowMajor::F32(u), Vector::F32(x)),
        (Linear::Q4(g), Linear::Q4(u)) => (RowMajor::Q4(g), RowMajor::Q4(u), Vector::Q8(qa)),
        (Linear::Q8(g), Linear::Q8(u)) => (RowMajor::Q8(g), RowMajor::Q8(u), Vector::Q8(qa)),
        _ => return Err(EngineError::InvalidInput("gate and up are stored in different precisions".into())),
    })
}

/// The MLP of one position: `out = Wd h`, reading only the weights the method keeps.
/// `gate` and `h` are `d_ff` scratch vectors. `next`: the next layer's plan, when a
/// lookahead predictor may propose its neurons while this MLP runs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlp(
    sw: &SparseWeights,
    l: usize,
    w: &LayerWeights,
    method: Method,
    lp: &LayerPlan,
    x: &[f32],
    gate: &mut [f32],
    h: &mut [f32],
    out: &mut [f32],
    scratch: &mut DecodeScratch,
    stats: &mut Option<&mut SparsityStats>,
    predictors: Option<&PredictorSet>,
    next: Option<&LayerPlan>,
) -> Result<()> {
    match method {
        Method::Predictor | Method::PredictorVerify => {
            let set = predictors.ok_or_else(|| EngineError::InvalidInput(format!("{method} needs a predictor set")))?;
            // At f32 a neuron's gate row, up row and down column are read as one run, the down
            // product included, where the method reads the gate of its neurons only.
            let runs = if predict::reads_runs(method, lp) { sw.gate_up_down(l, w)? } else { None };
            let (skipped, down_done) = predict::front_half(
                set,
                method,
                lp,
                next,
                l,
                w,
                x,
                h,
                runs.map(|r| (r, &mut *out)),
                &mut scratch.predict,
            )?;
            if !down_done {
                sw.get(l, Proj::Down, w)?.gemv(h, 0.0, out, &mut scratch.kernel)?;
            }
            if let Some(s) = stats.as_mut() {
                predict::count(s, l, h.len(), skipped);
            }
        }
        Method::Cats => {
            let kept = if let Some((gate_w, pairs)) = sw.up_down(l, w)? {
                swiglu_down_f32(gate_w, pairs, x, lp.gate_act, h, out)?
            } else {
                scratch.qa.quantize_from(x, 1, x.len())?;
                let (gate_w, up_w, vector) = gate_up_rows(w, x, &scratch.qa)?;
                let kept = swiglu_gated(&gate_w, &up_w, &vector, lp.gate_act, h)?;
                // Dropped neurons are exact zeros, so threshold 0 skips exactly their columns.
                sw.get(l, Proj::Down, w)?.gemv(h, 0.0, out, &mut scratch.kernel)?;
                kept
            };
            if let Some(s) = stats.as_mut() {
                let f = h.len();
                s.add(l, Proj::Gate, 0, f);
                s.add(l, Proj::Up, f - kept, f);
                s.add(l, Proj::Down, f - kept, f);
            }
        }
        Method::Teal | Method::TealUniform => {
            project_all(sw, l, w, method, lp, x, &mut [(Proj::Gate, &mut *gate), (Proj::Up, &mut *h)], scratch, stats)?;
            ops::silu_mul(gate, h);
            project(sw, l, w, method, lp, Proj::Down, gate, out, scratch, stats)?;
        }
        _ => return Err(EngineError::InvalidInput(format!("{method} has no sparse decode path"))),
    }
    Ok(())
}
