//! Perplexity over non-overlapping windows of a token stream: each window runs from an empty
//! cache without BOS, and every position but the first is scored — the protocol of
//! llama.cpp's perplexity figures that sieve is checked against.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use sieve_engine::sparsity::{Proj, SparsityPlan, SparsityStats};
use sieve_engine::{Hooks, Logits, Model};

use crate::error::{EvalError, Result};

/// Window layout of a perplexity run.
#[derive(Debug, Clone, Copy)]
pub struct PplOptions {
    /// Tokens per window.
    pub ctx: usize,
    /// Windows to score; `None` scores every full window.
    pub windows: Option<usize>,
}

/// Result of a perplexity run.
#[derive(Debug, Clone, Serialize)]
pub struct PplReport {
    /// exp(mean negative log-likelihood).
    pub perplexity: f64,
    /// Mean negative log-likelihood (nats).
    pub nll: f64,
    /// Positions scored.
    pub scored_tokens: usize,
    /// Windows run.
    pub windows: usize,
    /// Tokens per window.
    pub ctx: usize,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
    /// Tokens processed per second.
    pub tok_s: f64,
    /// The sparsity method ("dense" when none).
    pub method: String,
    /// Its target sparsity.
    pub sparsity: f32,
    /// The method's achieved sparsity: for TEAL the fraction of block weights not read
    /// (projections weighted by size), for CATS and CETT the fraction of MLP neurons skipped.
    pub achieved_sparsity: f64,
    /// Perplexity of each window, in order.
    pub per_window_perplexity: Vec<f64>,
    /// Fraction of each projection's inputs dropped (q, k, v, o, gate, up, down).
    pub achieved_by_projection: BTreeMap<&'static str, f64>,
    /// Mean KL(dense || method) per scored token, nats (0 for dense).
    pub kl_vs_dense: f64,
    /// Share of scored tokens whose top token is dense's (1 for dense).
    pub top1_agreement: f64,
}

/// Achieved sparsity of each projection, keyed by its name.
pub fn by_projection(stats: &SparsityStats) -> BTreeMap<&'static str, f64> {
    Proj::ALL.iter().map(|&p| (p.name(), stats.overall(p))).collect()
}

/// Number of windows a run with `opts` covers over `n_tokens`, or why it cannot run.
pub fn plan(n_tokens: usize, opts: PplOptions, max_ctx: usize) -> Result<usize> {
    if opts.ctx < 2 {
        return Err(EvalError::InvalidOption(format!("--ctx {} must be at least 2", opts.ctx)));
    }
    if opts.ctx > max_ctx {
        return Err(EvalError::InvalidOption(format!("--ctx {} exceeds the model's context of {max_ctx}", opts.ctx)));
    }
    let available = n_tokens / opts.ctx;
    match opts.windows {
        Some(0) => Err(EvalError::InvalidOption("--windows must be at least 1".into())),
        Some(w) if w > available => Err(EvalError::TooShort {
            asked: format!("{w} windows of {}", opts.ctx),
            needed: w * opts.ctx,
            have: n_tokens,
        }),
        Some(w) => Ok(w),
        None if available == 0 => {
            Err(EvalError::TooShort { asked: format!("one window of {}", opts.ctx), needed: opts.ctx, have: n_tokens })
        }
        None => Ok(available),
    }
}

/// Scores `tokens` under `plan` (dense when `None`); `on_window` is called after each window.
pub fn perplexity(
    model: &Model,
    tokens: &[u32],
    opts: PplOptions,
    sparsity: Option<&SparsityPlan>,
    mut on_window: impl FnMut(),
) -> Result<PplReport> {
    let windows = plan(tokens.len(), opts, model.config().context_len)?;
    let vocab = model.config().vocab_size;
    let start = Instant::now();
    let mut nll = 0f64;
    let mut scored = 0usize;
    let mut cache = model.new_cache();
    let mut stats = SparsityStats::new(model.config().n_layers);
    let mut per_window_perplexity = Vec::with_capacity(windows);
    for w in 0..windows {
        let chunk = &tokens[w * opts.ctx..(w + 1) * opts.ctx];
        cache.clear();
        let mut hooks = Hooks { plan: sparsity, stats: Some(&mut stats), ..Hooks::default() };
        let logits = model.forward_with(chunk, &mut cache, Logits::All, &mut hooks)?;
        let mut window_nll = 0f64;
        for (i, &next) in chunk.iter().enumerate().skip(1) {
            window_nll -= log_softmax_at(&logits[(i - 1) * vocab..i * vocab], next as usize);
        }
        nll += window_nll;
        scored += chunk.len() - 1;
        per_window_perplexity.push((window_nll / (chunk.len() - 1) as f64).exp());
        on_window();
    }
    let seconds = start.elapsed().as_secs_f64();
    let mean = nll / scored as f64;
    Ok(PplReport {
        perplexity: mean.exp(),
        nll: mean,
        scored_tokens: scored,
        windows,
        ctx: opts.ctx,
        seconds,
        tok_s: (windows * opts.ctx) as f64 / seconds.max(1e-9),
        method: sparsity.map_or("dense", |p| p.method.name()).into(),
        sparsity: sparsity.map_or(0.0, |p| p.target),
        achieved_sparsity: sparsity.map_or(0.0, |p| stats.achieved(p.method, &model.config().proj_params())),
        per_window_perplexity,
        achieved_by_projection: by_projection(&stats),
        kl_vs_dense: 0.0,
        top1_agreement: 1.0,
    })
}

/// [`perplexity`] of a method, with KL(dense || method) and top-1 agreement against dense on
/// the same windows (dense runs too, so it takes twice as long).
pub fn perplexity_vs_dense(
    model: &Model,
    tokens: &[u32],
    opts: PplOptions,
    sparsity: &SparsityPlan,
    on_window: impl FnMut(),
) -> Result<PplReport> {
    let start = Instant::now();
    let (_, methods) = crate::windows::score_windows(model, tokens, opts, &[Some(sparsity)], on_window)?;
    let seconds = start.elapsed().as_secs_f64();
    let m = methods.into_iter().next().ok_or_else(|| EvalError::InvalidOption("no method scored".into()))?;
    let t = m.total();
    let windows = m.per_window.len();
    Ok(PplReport {
        perplexity: t.perplexity(),
        nll: t.nll_sum / t.positions.max(1) as f64,
        scored_tokens: t.positions,
        windows,
        ctx: opts.ctx,
        seconds,
        tok_s: (2 * windows * opts.ctx) as f64 / seconds.max(1e-9),
        method: sparsity.method.name().into(),
        sparsity: sparsity.target,
        achieved_sparsity: m.achieved_sparsity,
        per_window_perplexity: m.per_window.iter().map(|w| w.perplexity()).collect(),
        achieved_by_projection: by_projection(&m.stats),
        kl_vs_dense: t.mean_kl(),
        top1_agreement: t.agreement(),
    })
}

/// `log softmax(logits)[target]`, in f64.
pub fn log_softmax_at(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[target] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_direct_formula() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&v| (v as f64).exp()).sum();
        assert!((log_softmax_at(&l, 2) - (3.0 - z.ln())).abs() < 1e-12);
    }

    #[test]
    fn plan_checks_windows() {
        let o = |ctx, windows| PplOptions { ctx, windows };
        assert_eq!(plan(1000, o(512, None), 8192).unwrap(), 1);
        assert_eq!(plan(1024, o(512, Some(2)), 8192).unwrap(), 2);
        assert!(matches!(plan(100, o(512, None), 8192), Err(EvalError::TooShort { .. })));
        assert!(matches!(plan(1000, o(512, Some(2)), 8192), Err(EvalError::TooShort { .. })));
        assert!(plan(1000, o(1, None), 8192).is_err());
        assert!(plan(100_000, o(9000, None), 8192).is_err());
        assert!(plan(1000, o(512, Some(0)), 8192).is_err());
    }
}
