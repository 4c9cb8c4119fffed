//! The per-layer mask audit: a method's MLP neuron masks against TEAL's, CATS's and the
//! CETT oracle's at the same target, over corpus positions (accuracy path), with achieved
//! sparsity per projection, plus per-layer attention and MLP time of the method's decode
//! (sparse kernels) and of dense decode, measured alternately in the same process.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sieve_engine::audit::{Agreement, MaskAudit, Reference};
use sieve_engine::model::LayerTimes;
use sieve_engine::sparsity::{Proj, SparsityPlan, SparsityStats};
use sieve_engine::{Hooks, Logits, Model};

use crate::error::{EvalError, Result};

/// Agreement figures of one mask comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub recall: f64,
    pub precision: f64,
    pub f1: f64,
    pub jaccard: f64,
}

impl From<&Agreement> for Metrics {
    fn from(a: &Agreement) -> Self {
        Self { recall: a.recall(), precision: a.precision(), f1: a.f1(), jaccard: a.jaccard() }
    }
}

/// One layer of the audit.
#[derive(Debug, Clone, Serialize)]
pub struct LayerRow {
    pub layer: usize,
    /// Fraction of each projection's inputs dropped.
    pub achieved_by_projection: BTreeMap<&'static str, f64>,
    /// Agreement of the method's MLP mask with each reference (`teal`, `cats`, `cett`).
    pub against: BTreeMap<&'static str, Metrics>,
    /// Attention time per decode step, µs: the method's and dense.
    pub attention_us: f64,
    pub dense_attention_us: f64,
    /// MLP time per decode step, µs: the method's and dense.
    pub mlp_us: f64,
    pub dense_mlp_us: f64,
}

/// The whole audit.
#[derive(Debug, Clone, Serialize)]
pub struct MaskReport {
    pub method: String,
    pub sparsity: f32,
    pub achieved_sparsity: f64,
    /// Positions audited.
    pub positions: usize,
    /// Decode steps timed per method.
    pub timed_steps: usize,
    pub layers: Vec<LayerRow>,
    /// Agreement over all layers.
    pub overall: BTreeMap<&'static str, Metrics>,
    /// Sum over layers of attention + MLP time per step, µs: method and dense.
    pub blocks_us: f64,
    pub dense_blocks_us: f64,
    /// Per step, µs, the rest of the forward (embedding, final norm, LM head): method and
    /// dense. Sparsity leaves it alone, so it bounds the whole step's speedup.
    pub outside_blocks_us: f64,
    pub dense_outside_blocks_us: f64,
}

/// What [`audit_masks`] runs.
#[derive(Debug, Clone, Copy)]
pub struct MaskOptions {
    /// Positions to audit (taken from the start of the tokens, in windows of `ctx`).
    pub positions: usize,
    /// Tokens per window.
    pub ctx: usize,
    /// Decode steps timed per method (0: no timing).
    pub timed_steps: usize,
}

fn name(r: Reference) -> &'static str {
    match r {
        Reference::Teal => "teal",
        Reference::Cats => "cats",
        Reference::Cett => "cett",
    }
}

/// Audits `plan` against `references` on `tokens`; `on_step` is called after each window and
/// each timed decode run.
pub fn audit_masks(
    model: &Model,
    tokens: &[u32],
    plan: &SparsityPlan,
    references: MaskAudit,
    opts: MaskOptions,
    mut on_step: impl FnMut(),
) -> Result<MaskReport> {
    if opts.positions == 0 || opts.ctx < 2 || opts.ctx > model.config().context_len {
        return Err(EvalError::InvalidOption(format!(
            "positions must be at least 1 and the window between 2 and {}",
            model.config().context_len
        )));
    }
    if tokens.len() < opts.positions {
        return Err(EvalError::TooShort {
            asked: format!("auditing {} positions", opts.positions),
            needed: opts.positions,
            have: tokens.len(),
        });
    }
    let layers = model.config().n_layers;
    let mut audit = references;
    let mut stats = SparsityStats::new(layers);
    let mut cache = model.new_cache();
    for window in tokens[..opts.positions].chunks(opts.ctx) {
        cache.clear();
        let mut hooks =
            Hooks { plan: Some(plan), stats: Some(&mut stats), audit: Some(&mut audit), ..Hooks::default() };
        model.forward_with(window, &mut cache, Logits::Last, &mut hooks)?;
        on_step();
    }
    let (method_t, dense_t) = if opts.timed_steps > 0 {
        model.prepare_decode();
        model.prepare_sparse(plan)?;
        let prompt = &tokens[..opts.ctx.min(tokens.len()).min(64)];
        let mut method_t = LayerTimes::default();
        let mut dense_t = LayerTimes::default();
        // Alternate so both see the same machine state.
        for _ in 0..2 {
            time_decode(model, prompt, None, opts.timed_steps, &mut dense_t)?;
            on_step();
            time_decode(model, prompt, Some(plan), opts.timed_steps, &mut method_t)?;
            on_step();
        }
        (method_t, dense_t)
    } else {
        (LayerTimes::default(), LayerTimes::default())
    };
    let per_step =
        |t: &[Duration], calls: usize, l: usize| t.get(l).map_or(0.0, |d| d.as_secs_f64() * 1e6 / calls.max(1) as f64);
    let rows: Vec<LayerRow> = (0..layers)
        .map(|l| LayerRow {
            layer: l,
            achieved_by_projection: Proj::ALL.iter().map(|&p| (p.name(), stats.layer(l, p))).collect(),
            against: Reference::ALL
                .iter()
                .enumerate()
                .map(|(i, &r)| (name(r), (&audit.agreement[l][i]).into()))
                .collect(),
            attention_us: per_step(&method_t.attention, method_t.calls, l),
            dense_attention_us: per_step(&dense_t.attention, dense_t.calls, l),
            mlp_us: per_step(&method_t.mlp, method_t.calls, l),
            dense_mlp_us: per_step(&dense_t.mlp, dense_t.calls, l),
        })
        .collect();
    Ok(MaskReport {
        method: plan.method.name().into(),
        sparsity: plan.target,
        achieved_sparsity: stats.achieved(plan.method, &model.config().proj_params()),
        positions: audit.positions,
        timed_steps: method_t.calls,
        blocks_us: rows.iter().map(|r| r.attention_us + r.mlp_us).sum(),
        dense_blocks_us: rows.iter().map(|r| r.dense_attention_us + r.dense_mlp_us).sum(),
        outside_blocks_us: method_t.outside_blocks.as_secs_f64() * 1e6 / method_t.calls.max(1) as f64,
        dense_outside_blocks_us: dense_t.outside_blocks.as_secs_f64() * 1e6 / dense_t.calls.max(1) as f64,
        overall: Reference::ALL.iter().map(|&r| (name(r), (&audit.overall(r)).into())).collect(),
        layers: rows,
    })
}

/// Greedy decode of `steps` tokens after `prompt`, per-layer times added to `times`.
fn time_decode(
    model: &Model,
    prompt: &[u32],
    plan: Option<&SparsityPlan>,
    steps: usize,
    times: &mut LayerTimes,
) -> Result<()> {
    let mut cache = model.new_cache();
    let mut hooks = Hooks { plan, ..Hooks::default() };
    let mut logits = model.forward_with(prompt, &mut cache, Logits::Last, &mut hooks)?;
    for _ in 0..steps {
        let next = argmax(&logits);
        let mut hooks = Hooks { plan, timing: Some(times), ..Hooks::default() };
        logits = model.forward_with(&[next], &mut cache, Logits::Last, &mut hooks)?;
    }
    Ok(())
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}
