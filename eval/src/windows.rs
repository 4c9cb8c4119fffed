//! Several methods scored on the same corpus windows against dense: per window and method,
//! the negative log-likelihood of the true tokens, KL(dense || method) and top-1 agreement
//! with dense (dense runs once per window and is shared by every method). Per-window sums are
//! kept so comparisons can resample windows (the A/B bootstrap).

use serde::Serialize;
use sieve_engine::divergence::Divergence;
use sieve_engine::sparsity::{SparsityPlan, SparsityStats};
use sieve_engine::{Hooks, Logits, Model};

use crate::error::Result;
use crate::perplexity::{PplOptions, plan as window_count};

/// One method's scores over the windows.
#[derive(Debug, Clone, Serialize)]
pub struct MethodScores {
    /// "dense" or the method's name.
    pub method: String,
    /// Its target sparsity.
    pub sparsity: f32,
    /// Sums per window (same windows, same order for every method).
    pub per_window: Vec<Divergence>,
    /// What the method dropped.
    #[serde(skip)]
    pub stats: SparsityStats,
    /// The method's achieved sparsity (see [`SparsityStats::achieved`]).
    pub achieved_sparsity: f64,
}

impl MethodScores {
    /// Sums over every window.
    pub fn total(&self) -> Divergence {
        self.per_window.iter().fold(Divergence::default(), |a, w| a.plus(w))
    }
}

/// Scores dense and every plan (`None` entries are dense again) on the windows `opts`
/// describes; `on_window` is called after each window.
pub fn score_windows(
    model: &Model,
    tokens: &[u32],
    opts: PplOptions,
    plans: &[Option<&SparsityPlan>],
    mut on_window: impl FnMut(),
) -> Result<(MethodScores, Vec<MethodScores>)> {
    let windows = window_count(tokens.len(), opts, model.config().context_len)?;
    let cfg = model.config();
    let vocab = cfg.vocab_size;
    let params = cfg.proj_params();
    let fresh = |p: Option<&SparsityPlan>| MethodScores {
        method: p.map_or("dense", |p| p.method.name()).into(),
        sparsity: p.map_or(0.0, |p| p.target),
        per_window: Vec::with_capacity(windows),
        stats: SparsityStats::new(cfg.n_layers),
        achieved_sparsity: 0.0,
    };
    let mut dense = fresh(None);
    let mut methods: Vec<MethodScores> = plans.iter().map(|p| fresh(*p)).collect();
    let mut cache = model.new_cache();
    for w in 0..windows {
        let chunk = &tokens[w * opts.ctx..(w + 1) * opts.ctx];
        let targets = &chunk[1..];
        let rows = targets.len() * vocab;
        cache.clear();
        let dense_logits = model.forward_with(chunk, &mut cache, Logits::All, &mut Hooks::default())?;
        let dense_logits = &dense_logits[..rows];
        let dense_self = Divergence::measure(dense_logits, dense_logits, targets, vocab)?;
        dense.per_window.push(dense_self);
        for (m, plan) in methods.iter_mut().zip(plans) {
            let d = match plan {
                None => dense_self,
                Some(p) => {
                    cache.clear();
                    let mut hooks = Hooks { plan: Some(p), stats: Some(&mut m.stats), ..Hooks::default() };
                    let logits = model.forward_with(chunk, &mut cache, Logits::All, &mut hooks)?;
                    Divergence::measure(dense_logits, &logits[..rows], targets, vocab)?
                }
            };
            m.per_window.push(d);
        }
        on_window();
    }
    for (m, plan) in methods.iter_mut().zip(plans) {
        m.achieved_sparsity = plan.map_or(0.0, |p| m.stats.achieved(p.method, &params));
    }
    Ok((dense, methods))
}
