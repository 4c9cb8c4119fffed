//! The decode benchmark: a fixed prompt, a fixed number of greedy tokens (no early stop),
//! repeated, median reported — the same shape as the llama.cpp anchor's measurement.

use std::collections::BTreeMap;

use serde::Serialize;
use sieve_engine::Model;
use sieve_engine::generate::{GenerateOptions, generate};
use sieve_engine::sampling::SamplingParams;
use sieve_engine::sparsity::{SparsityPlan, SparsityStats};

use crate::error::{EvalError, Result};
use crate::perplexity::by_projection;

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Prompt tokens (taken from the start of the text).
    pub prompt_tokens: usize,
    /// New tokens per run.
    pub new_tokens: usize,
    /// Runs; the median is reported.
    pub runs: usize,
    /// A sparsity method to measure against dense in the same process, runs alternated.
    pub plan: Option<SparsityPlan>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { prompt_tokens: 256, new_tokens: 128, runs: 3, plan: None }
    }
}

/// Figures of one benchmark.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Median prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Median decode tokens per second.
    pub decode_tok_s: f64,
    /// Every run's (prefill, decode) tok/s.
    pub runs: Vec<(f64, f64)>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// New tokens per run.
    pub new_tokens: usize,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mb: f64,
    /// The sparsity method ("dense" when none).
    pub method: String,
    /// Its target sparsity.
    pub sparsity: f32,
    /// Its achieved sparsity over the decode steps.
    pub achieved_sparsity: f64,
    /// Fraction of each projection's inputs dropped over the decode steps.
    pub achieved_by_projection: BTreeMap<&'static str, f64>,
    /// With a method: dense measured in the same process, runs alternated with the method's.
    pub dense: Option<DenseBaseline>,
}

/// Dense figures measured alongside a method.
#[derive(Debug, Clone, Serialize)]
pub struct DenseBaseline {
    /// Median dense prefill tok/s.
    pub prefill_tok_s: f64,
    /// Median dense decode tok/s.
    pub decode_tok_s: f64,
    /// Method decode tok/s over dense decode tok/s.
    pub decode_speedup: f64,
    /// Every dense run's (prefill, decode) tok/s.
    pub runs: Vec<(f64, f64)>,
}

/// Runs the benchmark on the first `opts.prompt_tokens` of `tokens`.
pub fn bench_decode(
    model: &Model,
    tokens: &[u32],
    opts: BenchOptions,
    mut on_run: impl FnMut(),
) -> Result<BenchReport> {
    if opts.runs == 0 || opts.new_tokens == 0 || opts.prompt_tokens == 0 {
        return Err(EvalError::InvalidOption("runs, prompt tokens and new tokens must be at least 1".into()));
    }
    if tokens.len() < opts.prompt_tokens {
        return Err(EvalError::TooShort {
            asked: format!("a {}-token prompt", opts.prompt_tokens),
            needed: opts.prompt_tokens,
            have: tokens.len(),
        });
    }
    let prompt = &tokens[..opts.prompt_tokens];
    if let Some(plan) = &opts.plan {
        model.prepare_sparse(plan)?;
    }
    let dense_request = GenerateOptions::new(opts.new_tokens, SamplingParams::default(), Vec::new());
    let request = GenerateOptions { sparsity: opts.plan.clone(), ..dense_request.clone() };
    let mut runs = Vec::with_capacity(opts.runs);
    let mut dense_runs = Vec::with_capacity(opts.runs);
    let mut stats = SparsityStats::new(model.config().n_layers);
    for _ in 0..opts.runs {
        if opts.plan.is_some() {
            let g = generate(model, prompt, &dense_request, |_| std::ops::ControlFlow::Continue(()))?;
            dense_runs.push((g.prefill_tok_s(), g.decode_tok_s()));
        }
        let g = generate(model, prompt, &request, |_| std::ops::ControlFlow::Continue(()))?;
        runs.push((g.prefill_tok_s(), g.decode_tok_s()));
        if let Some(s) = &g.stats {
            stats = s.clone();
        }
        on_run();
    }
    let decode_tok_s = median(runs.iter().map(|r| r.1).collect());
    let dense = opts.plan.as_ref().map(|_| {
        let dense_decode = median(dense_runs.iter().map(|r| r.1).collect());
        DenseBaseline {
            prefill_tok_s: median(dense_runs.iter().map(|r| r.0).collect()),
            decode_tok_s: dense_decode,
            decode_speedup: decode_tok_s / dense_decode.max(1e-9),
            runs: dense_runs,
        }
    });
    let plan = opts.plan.as_ref();
    Ok(BenchReport {
        prefill_tok_s: median(runs.iter().map(|r| r.0).collect()),
        decode_tok_s,
        runs,
        prompt_tokens: opts.prompt_tokens,
        new_tokens: opts.new_tokens,
        peak_rss_mb: peak_rss_mb().unwrap_or(0.0),
        method: plan.map_or("dense", |p| p.method.name()).into(),
        sparsity: plan.map_or(0.0, |p| p.target),
        achieved_sparsity: plan.map_or(0.0, |p| stats.achieved(p.method, &model.config().proj_params())),
        achieved_by_projection: by_projection(&stats),
        dense,
    })
}

/// Median of a non-empty list (mean of the middle two for even lengths).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if the OS tells.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
