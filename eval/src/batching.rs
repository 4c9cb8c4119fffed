//! Serving several streams at once: round-robin (each stream its own decode step, as the
//! server does) against batching the streams' tokens into one step that runs the union of
//! their masks. Measured here: the sparsity the union loses (from the real masks of `k`
//! streams decoding different text side by side), the aggregate tok/s of round-robin, and how
//! much a dense step of `k` tokens costs against `k` single-token steps (the most batching
//! could save when nothing is sparse).

use std::time::Instant;

use serde::Serialize;
use sieve_engine::generate::{GenerateOptions, Session, Step};
use sieve_engine::sampling::{SamplingParams, argmax};
use sieve_engine::sparsity::{Method, SparsityPlan, Tap};
use sieve_engine::{Hooks, Logits, Model};

use crate::error::{EvalError, Result};

/// One row per stream count.
#[derive(Debug, Clone, Serialize)]
pub struct BatchingRow {
    /// Streams served together.
    pub streams: usize,
    /// Mean share of MLP neurons one stream's mask skips.
    pub single_sparsity: f64,
    /// Mean share the union of the `streams` masks skips (what a batched step could skip).
    pub union_sparsity: f64,
    /// `single_sparsity - union_sparsity`.
    pub sparsity_lost: f64,
    /// Round-robin: new tokens per second over all streams, decoded in turn.
    pub round_robin_tok_s: f64,
    /// Dense: time of `streams` single-token steps over the time of one step of `streams`
    /// tokens (above 1: batching saves time when nothing is skipped).
    pub dense_batch_gain: f64,
}

/// Measures stream counts `counts` under `plan` (CATS or TEAL), each stream decoding `steps`
/// greedy tokens after its own prompt (`prompts`, at least as many as the largest count).
pub fn measure(
    model: &Model,
    plan: &SparsityPlan,
    prompts: &[Vec<u32>],
    counts: &[usize],
    steps: usize,
) -> Result<Vec<BatchingRow>> {
    let kmax = counts.iter().copied().max().unwrap_or(0);
    if counts.is_empty() || counts.contains(&0) {
        return Err(EvalError::InvalidOption("--streams needs counts of at least 1".into()));
    }
    if prompts.len() < kmax || prompts.iter().any(Vec::is_empty) {
        return Err(EvalError::InvalidOption(format!("{kmax} streams need {kmax} non-empty prompts")));
    }
    if steps == 0 {
        return Err(EvalError::InvalidOption("--steps must be at least 1".into()));
    }
    let (tap, thresholds): (Tap, Vec<f32>) = match plan.method {
        Method::Cats => (Tap::GateAct, plan.layers.iter().map(|l| l.gate_act).collect()),
        Method::Teal | Method::TealUniform => {
            (Tap::DownIn, plan.layers.iter().map(|l| l.proj[sieve_engine::sparsity::Proj::Down.index()]).collect())
        }
        m => {
            return Err(EvalError::InvalidOption(format!(
                "the union is measured for cats, teal and teal-uniform, not {m}"
            )));
        }
    };
    let layers = model.config().n_layers;
    // kept[step][stream][layer] = the stream's kept neurons.
    let mut kept: Vec<Vec<Vec<Vec<bool>>>> = vec![vec![Vec::new(); kmax]; steps];
    for (s, prompt) in prompts.iter().take(kmax).enumerate() {
        let mut cache = model.new_cache();
        let mut logits = model.forward_with(
            prompt,
            &mut cache,
            Logits::Last,
            &mut Hooks { plan: Some(plan), ..Hooks::default() },
        )?;
        for per_step in kept.iter_mut() {
            let next = argmax(&logits);
            let mut masks = vec![Vec::new(); layers];
            let mut observe = |layer: usize, t: Tap, x: &[f32]| {
                if t == tap {
                    masks[layer] = x.iter().map(|v| v.abs() > thresholds[layer]).collect();
                }
            };
            let mut hooks =
                Hooks { plan: Some(plan), observe: Some(&mut observe), accuracy_path: true, ..Hooks::default() };
            logits = model.forward_with(&[next], &mut cache, Logits::Last, &mut hooks)?;
            per_step[s] = masks;
        }
    }
    let mut rows = Vec::new();
    for &k in counts {
        let (mut single, mut union, mut n) = (0.0, 0.0, 0usize);
        for per_step in &kept {
            for l in 0..layers {
                let width = per_step[0][l].len().max(1) as f64;
                let mut any = vec![false; per_step[0][l].len()];
                for stream in per_step.iter().take(k) {
                    single += stream[l].iter().filter(|&&b| !b).count() as f64 / width / k as f64;
                    for (a, &b) in any.iter_mut().zip(&stream[l]) {
                        *a |= b;
                    }
                }
                union += any.iter().filter(|&&b| !b).count() as f64 / width;
                n += 1;
            }
        }
        let (single, union) = (single / n as f64, union / n as f64);
        rows.push(BatchingRow {
            streams: k,
            single_sparsity: single,
            union_sparsity: union,
            sparsity_lost: single - union,
            round_robin_tok_s: round_robin(model, plan, &prompts[..k], steps)?,
            dense_batch_gain: dense_batch_gain(model, &prompts[0], k)?,
        });
    }
    Ok(rows)
}

/// New tokens per second of `prompts.len()` sessions advanced in turn, one token each.
fn round_robin(model: &Model, plan: &SparsityPlan, prompts: &[Vec<u32>], steps: usize) -> Result<f64> {
    let opts = GenerateOptions {
        sparsity: Some(plan.clone()),
        ..GenerateOptions::new(steps + 1, SamplingParams::default(), Vec::new())
    };
    let mut sessions =
        prompts.iter().map(|p| Session::start(model, p, opts.clone())).collect::<sieve_engine::Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let mut tokens = 0usize;
    for _ in 0..steps {
        for s in sessions.iter_mut() {
            if let Step::Token(_) = s.step()? {
                tokens += 1;
            }
        }
    }
    Ok(tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9))
}

/// Dense: `k` one-token steps against one `k`-token step, after the same prompt.
fn dense_batch_gain(model: &Model, prompt: &[u32], k: usize) -> Result<f64> {
    if k == 1 {
        return Ok(1.0);
    }
    let extra: Vec<u32> = prompt.iter().copied().cycle().take(k).collect();
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let mut cache = model.new_cache();
        model.forward(prompt, &mut cache, Logits::Last)?;
        let t = Instant::now();
        for &tok in &extra {
            model.forward(&[tok], &mut cache, Logits::Last)?;
        }
        let singles = t.elapsed().as_secs_f64();
        cache.truncate(prompt.len());
        let t = Instant::now();
        model.forward(&extra, &mut cache, Logits::Last)?;
        let batched = t.elapsed().as_secs_f64();
        best = (best.0.min(singles), best.1.min(batched));
    }
    Ok(best.0 / best.1.max(1e-12))
}
