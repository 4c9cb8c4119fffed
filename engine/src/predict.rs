//! The predictor methods inside a forward pass: which MLP neurons a trained predictor keeps
//! (per token, from this layer's MLP input or, for lookahead predictors, the previous
//! layer's), on the accuracy path by zeroing and on the decode path by reading only the
//! kept rows: output-sparse gate and up, input-sparse down.

use std::sync::{Mutex, PoisonError};

use sieve_kernels::sparse::{NeuronRunsF32, gemv_rows, swiglu_down_confirmed_f32, swiglu_down_rows_f32, swiglu_rows};
use sieve_kernels::{ActsQ8, ops, pool};
use sieve_predictor::model::Scratch as PredictorScratch;
use sieve_predictor::store::Tap as PredictorTap;
use sieve_predictor::{LayerPredictor, PredictorSet};

use crate::error::{EngineError, Result};
use crate::sparse_decode::gate_up_rows;
use crate::sparsity::{LayerPlan, Method, Proj, SparsityStats, keep_top_importance};
use crate::weights::LayerWeights;

/// Buffers of the predictor methods, reused across layers and steps.
#[derive(Debug, Default)]
pub(crate) struct PredictScratch {
    proposal: Proposal,
    /// The next layer's proposal, made while this layer's MLP runs (lookahead overlap).
    ahead: Mutex<Ahead>,
    confirm: Confirm,
    keep: Vec<bool>,
    /// The previous layer's MLP input (one row per token), for lookahead predictors.
    pub(crate) prev_mlp_in: Vec<f32>,
}

/// One layer's proposal: the predictor's scores and the neurons it proposes.
#[derive(Debug, Default)]
struct Proposal {
    inner: PredictorScratch,
    scores: Vec<f32>,
    rows: Vec<u32>,
}

/// A proposal made ahead, and the layer it is for.
#[derive(Debug, Default)]
struct Ahead {
    proposal: Proposal,
    layer: Option<usize>,
}

/// Buffers of the rows a proposal leads to (values, confirmations).
#[derive(Debug, Default)]
struct Confirm {
    confirmed: Vec<u32>,
    values: Vec<f32>,
    up: Vec<f32>,
    acts: Vec<f32>,
    qa: ActsQ8,
}

/// The input layer `l`'s predictor reads: this layer's MLP input, or the previous layer's.
fn source<'a>(set: &PredictorSet, l: usize, mlp_in: &'a [f32], prev: &'a [f32]) -> &'a [f32] {
    match set.manifest.tap {
        PredictorTap::Lookahead if l > 0 && prev.len() == mlp_in.len() => prev,
        _ => mlp_in,
    }
}

/// Runs `f` on the input layer `l`'s predictor reads, then keeps `mlp_in` as the previous
/// layer's input for the next layer (lookahead sets only).
fn on_source<T>(
    set: &PredictorSet,
    l: usize,
    mlp_in: &[f32],
    s: &mut PredictScratch,
    f: impl FnOnce(&[f32], &mut PredictScratch) -> Result<T>,
) -> Result<T> {
    let prev = std::mem::take(&mut s.prev_mlp_in);
    let out = f(source(set, l, mlp_in, &prev), s);
    s.prev_mlp_in = prev;
    remember(set, mlp_in, s);
    out
}

/// Keeps `mlp_in` as the previous layer's input for the next layer (lookahead sets only).
fn remember(set: &PredictorSet, mlp_in: &[f32], s: &mut PredictScratch) {
    if set.manifest.tap == PredictorTap::Lookahead {
        s.prev_mlp_in.clear();
        s.prev_mlp_in.extend_from_slice(mlp_in);
    }
}

fn layer(set: &PredictorSet, l: usize) -> Result<&LayerPredictor> {
    set.layers.get(l).ok_or_else(|| EngineError::InvalidInput(format!("the predictor set has no layer {l}")))
}

impl Proposal {
    /// Scores one token and lists the neurons the method proposes: above the plan's
    /// threshold (predictor; predictor-verify away from its label's sparsity), or by the
    /// predictor's trained rule (predictor-verify at its label's sparsity).
    fn propose(&mut self, p: &LayerPredictor, method: Method, lp: &LayerPlan, x: &[f32]) -> Result<()> {
        self.scores.resize(p.f(), 0.0);
        p.scores(x, &mut self.inner, &mut self.scores)?;
        let threshold = if method == Method::Predictor { Some(lp.predict_threshold) } else { lp.propose_threshold };
        match threshold {
            Some(t) => {
                self.rows.clear();
                self.rows.extend((0..self.scores.len() as u32).filter(|&i| self.scores[i as usize] > t));
            }
            None => p.select(&self.scores, &mut self.rows),
        }
        Ok(())
    }
}

/// Accuracy path: zeroes `act` (silu(g), tokens x f) where the method drops a neuron, from
/// the MLP inputs `mlp_in` (tokens x d). Returns (gate rows skipped, neurons dropped).
pub(crate) fn drop_neurons(
    set: &PredictorSet,
    method: Method,
    lp: &LayerPlan,
    l: usize,
    mlp_in: &[f32],
    act: &mut [f32],
    s: &mut PredictScratch,
) -> Result<(usize, usize)> {
    let p = layer(set, l)?;
    let (d, f) = (p.d(), p.f());
    on_source(set, l, mlp_in, s, |src, s| {
        let (mut skipped, mut dropped) = (0, 0);
        for (x, a) in src.chunks_exact(d).zip(act.chunks_exact_mut(f)) {
            s.proposal.propose(p, method, lp, x)?;
            skipped += f - s.proposal.rows.len();
            s.keep.clear();
            s.keep.resize(f, false);
            for &i in &s.proposal.rows {
                let i = i as usize;
                s.keep[i] = method == Method::Predictor || a[i].abs() > lp.gate_act;
            }
            for (v, &k) in a.iter_mut().zip(&s.keep) {
                if !k {
                    *v = 0.0;
                    dropped += 1;
                }
            }
        }
        Ok((skipped, dropped))
    })
}

/// Decode path for one position: `h` (f) receives silu(g)·u on the kept neurons and zeros
/// elsewhere, reading only the proposed gate rows and the kept up rows. With `down` (the
/// layer's neuron runs and the MLP's output, given where [`reads_runs`]) it also writes
/// `out = Wd h`, each neuron's gate row, up row and down column read as one run, and says so
/// (`true`).
///
/// With a lookahead set and the next layer's plan `next` given, its proposal (its input is this
/// layer's `x`) is made as a side task of this layer's first parallel product, on whichever
/// core is free, and this layer uses the proposal the previous layer made for it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn front_half(
    set: &PredictorSet,
    method: Method,
    lp: &LayerPlan,
    next: Option<&LayerPlan>,
    l: usize,
    w: &LayerWeights,
    x: &[f32],
    h: &mut [f32],
    down: Option<(&NeuronRunsF32, &mut [f32])>,
    s: &mut PredictScratch,
) -> Result<(Skipped, bool)> {
    let p = layer(set, l)?;
    let lookahead = set.manifest.tap == PredictorTap::Lookahead;
    let ahead = s.ahead.get_mut().unwrap_or_else(PoisonError::into_inner);
    if lookahead && ahead.layer == Some(l) {
        std::mem::swap(&mut s.proposal.rows, &mut ahead.proposal.rows);
        ahead.layer = None;
        remember(set, x, s);
    } else {
        ahead.layer = None;
        on_source(set, l, x, s, |src, s| s.proposal.propose(p, method, lp, src))?;
    }
    let next = next.filter(|_| lookahead).and_then(|next_lp| Some((set.layers.get(l + 1)?, next_lp)));
    let (rows, ahead, confirm) = (&s.proposal.rows, &s.ahead, &mut s.confirm);
    let make_next = || {
        let Some((next_p, next_lp)) = next else { return };
        let mut a = ahead.lock().unwrap_or_else(PoisonError::into_inner);
        // A failed proposal is not kept: the next layer then makes it itself and reports
        // the error.
        a.layer = a.proposal.propose(next_p, method, next_lp, x).ok().map(|()| l + 1);
    };
    pool::alongside(&make_next, || {
        let f = h.len();
        match down {
            Some((runs, out)) if method == Method::Predictor => {
                swiglu_down_rows_f32(runs, x, rows, h, out)?;
                let skipped = f - rows.len();
                Ok((Skipped { gate: skipped, up: skipped, down: skipped }, true))
            }
            Some((runs, out)) if lp.gate_act > 0.0 => {
                let kept = swiglu_down_confirmed_f32(runs, x, rows, lp.gate_act, h, out)?;
                Ok((Skipped { gate: f - rows.len(), up: f - kept, down: f - kept }, true))
            }
            _ => Ok((confirm.apply(method, lp, w, x, h, rows)?, false)),
        }
    })
}

/// Whether [`front_half`] reads layer `l`'s neuron runs (gate row, up row and down column
/// side by side) and computes the down product itself, where the MLP is stored in f32: the
/// plain predictor, and a proposal confirmed by CATS's rule.
pub(crate) fn reads_runs(method: Method, lp: &LayerPlan) -> bool {
    method == Method::Predictor || (method == Method::PredictorVerify && lp.gate_act > 0.0)
}

impl Confirm {
    /// Computes `h` from the proposed `rows`: directly (predictor), or after the label's
    /// rule confirms each neuron on its exact values (predictor-verify).
    fn apply(
        &mut self,
        method: Method,
        lp: &LayerPlan,
        w: &LayerWeights,
        x: &[f32],
        h: &mut [f32],
        rows: &[u32],
    ) -> Result<Skipped> {
        let f = h.len();
        self.qa.quantize_from(x, 1, x.len())?;
        let (gate_w, up_w, vector) = gate_up_rows(w, x, &self.qa)?;
        h.fill(0.0);
        let skipped = f - rows.len();
        if method == Method::Predictor {
            self.values.resize(rows.len(), 0.0);
            swiglu_rows(&gate_w, &up_w, &vector, rows, &mut self.values)?;
            for (&i, &v) in rows.iter().zip(&self.values) {
                h[i as usize] = v;
            }
            return Ok(Skipped { gate: skipped, up: skipped, down: skipped });
        }
        if lp.gate_act > 0.0 {
            // CATS confirms: the exact gate of the proposed rows, then up where |silu(g)| > t.
            self.values.resize(rows.len(), 0.0);
            gemv_rows(&gate_w, &vector, rows, &mut self.values)?;
            ops::silu_in_place(&mut self.values);
            self.confirmed.clear();
            self.acts.clear();
            for (&i, &a) in rows.iter().zip(&self.values) {
                if a.abs() > lp.gate_act {
                    self.confirmed.push(i);
                    self.acts.push(a);
                }
            }
            self.up.resize(self.confirmed.len(), 0.0);
            gemv_rows(&up_w, &vector, &self.confirmed, &mut self.up)?;
            for ((&i, &a), &u) in self.confirmed.iter().zip(&self.acts).zip(&self.up) {
                h[i as usize] = a * u;
            }
            return Ok(Skipped { gate: skipped, up: f - self.confirmed.len(), down: f - self.confirmed.len() });
        }
        // TEAL's or CETT's rule confirms on the exact h of the proposed neurons.
        self.values.resize(rows.len(), 0.0);
        swiglu_rows(&gate_w, &up_w, &vector, rows, &mut self.values)?;
        let t = lp.proj[Proj::Down.index()];
        for (&i, &v) in rows.iter().zip(&self.values) {
            if v.abs() > t {
                h[i as usize] = v;
            }
        }
        if lp.cett_keep > 0 {
            keep_top_importance(h, f, &lp.down_col_norms, lp.cett_keep, &mut self.confirmed);
        }
        let kept = h.iter().filter(|v| **v != 0.0).count();
        Ok(Skipped { gate: skipped, up: skipped, down: f - kept })
    }
}

/// Rows a predictor method did not read, per projection, in one layer and position.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Skipped {
    pub gate: usize,
    pub up: usize,
    pub down: usize,
}

/// Counts what a predictor method skipped in one layer and position.
pub(crate) fn count(stats: &mut SparsityStats, l: usize, f: usize, skipped: Skipped) {
    stats.add(l, Proj::Gate, skipped.gate, f);
    stats.add(l, Proj::Up, skipped.up, f);
    stats.add(l, Proj::Down, skipped.down, f);
}
