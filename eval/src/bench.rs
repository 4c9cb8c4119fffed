//! The decode benchmark: a fixed prompt, a fixed number of greedy tokens (no early stop),
//! repeated, median reported — the same shape as the llama.cpp anchor's measurement.

use serde::Serialize;
use sieve_engine::Model;
use sieve_engine::generate::{GenerateOptions, generate};
use sieve_engine::sampling::SamplingParams;

use crate::error::{EvalError, Result};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    /// Prompt tokens (taken from the start of the text).
    pub prompt_tokens: usize,
    /// New tokens per run.
    pub new_tokens: usize,
    /// Runs; the median is reported.
    pub runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self { prompt_tokens: 256, new_tokens: 128, runs: 3 }
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
    let request = GenerateOptions {
        max_tokens: opts.new_tokens,
        sampling: SamplingParams::default(),
        stop_ids: Vec::new(),
        sparsity: None,
    };
    let mut runs = Vec::with_capacity(opts.runs);
    for _ in 0..opts.runs {
        let g = generate(model, prompt, &request, |_| std::ops::ControlFlow::Continue(()))?;
        runs.push((g.prefill_tok_s(), g.decode_tok_s()));
        on_run();
    }
    Ok(BenchReport {
        prefill_tok_s: median(runs.iter().map(|r| r.0).collect()),
        decode_tok_s: median(runs.iter().map(|r| r.1).collect()),
        runs,
        prompt_tokens: opts.prompt_tokens,
        new_tokens: opts.new_tokens,
        peak_rss_mb: peak_rss_mb().unwrap_or(0.0),
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
