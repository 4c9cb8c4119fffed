//! The decode benchmark: a fixed prompt, a fixed number of greedy tokens (no early stop),
//! repeated, median reported — the same shape as the llama.cpp anchor's measurement.

use std::collections::BTreeMap;

use serde::Serialize;
use std::time::{Duration, Instant};

use sieve_engine::generate::{GenerateOptions, validate};
use sieve_engine::sampling::{SamplingParams, argmax};
use sieve_engine::sparsity::{SparsityPlan, SparsityStats};
use sieve_engine::{Hooks, KvCache, Logits, Model};

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
    /// Every run's (prefill tok/s, decode tok/s, decode seconds).
    pub runs: Vec<(f64, f64, f64)>,
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
    /// With a method: the bytes a decode step reads, dense and under the method.
    pub traffic: Option<Traffic>,
}

/// Bytes one decode step reads (see [`sieve_engine::traffic`]), in MB (10^6 bytes).
#[derive(Debug, Clone, Serialize)]
pub struct Traffic {
    /// Weights of a dense step (every projection and the LM head).
    pub dense_weight_mb: f64,
    /// Weights of the method's step at the sparsity it achieved, predictors included.
    pub method_weight_mb: f64,
    /// The KV cache at the mean position (read alike by both).
    pub kv_cache_mb: f64,
    /// Dense bytes over the method's: the decode speedup at equal bandwidth.
    pub bound_speedup: f64,
    /// The measured decode speedup as a fraction of that bound.
    pub of_bound: f64,
}

/// Dense figures measured alongside a method.
#[derive(Debug, Clone, Serialize)]
pub struct DenseBaseline {
    /// Median dense prefill tok/s.
    pub prefill_tok_s: f64,
    /// Median dense decode tok/s.
    pub decode_tok_s: f64,
    /// Dense decode time over the method's, steps paired within each run (dense and method
    /// take turns step by step), averaged over runs.
    pub decode_speedup: f64,
    /// Every dense run's (prefill tok/s, decode tok/s, decode seconds).
    pub runs: Vec<(f64, f64, f64)>,
}

/// Runs the benchmark on the first `opts.prompt_tokens` of `tokens`.
pub fn bench_decode(
    model: &Model,
    tokens: &[u32],
    opts: BenchOptions,
    mut on_run: impl FnMut(),
) -> Result<BenchReport> {
    let prompt =
        prepare_lanes(model, tokens, [opts.plan.as_ref(), None], opts.prompt_tokens, opts.new_tokens, opts.runs)?;
    let mut runs = Vec::with_capacity(opts.runs);
    let mut dense_runs = Vec::with_capacity(opts.runs);
    let mut stats = SparsityStats::new(model.config().n_layers);
    for run in 0..opts.runs {
        let mut method = Lane::new(model, opts.plan.as_ref());
        let mut dense = opts.plan.as_ref().map(|_| Lane::new(model, None));
        take_turns(model, prompt, opts.new_tokens, run, (&mut method, Some(&mut stats)), dense.as_mut())?;
        runs.push(method.tok_s(opts.prompt_tokens, opts.new_tokens));
        if let Some(d) = dense {
            dense_runs.push(d.tok_s(opts.prompt_tokens, opts.new_tokens));
        }
        on_run();
    }
    let decode_tok_s = median(runs.iter().map(|r| r.1).collect());
    let dense = opts.plan.as_ref().map(|_| {
        let dense_decode = median(dense_runs.iter().map(|r| r.1).collect());
        DenseBaseline {
            prefill_tok_s: median(dense_runs.iter().map(|r| r.0).collect()),
            decode_tok_s: dense_decode,
            decode_speedup: runs.iter().zip(&dense_runs).map(|(m, d)| d.2 / m.2.max(1e-12)).sum::<f64>()
                / runs.len() as f64,
            runs: dense_runs,
        }
    });
    let plan = opts.plan.as_ref();
    let traffic = match (plan, &dense) {
        (Some(p), Some(d)) => {
            let positions = opts.prompt_tokens as f64 + (opts.new_tokens as f64 + 1.0) / 2.0;
            let t = model.decode_traffic(p, &stats, positions)?;
            Some(Traffic {
                dense_weight_mb: t.dense_weight_bytes / 1e6,
                method_weight_mb: t.method_weight_bytes / 1e6,
                kv_cache_mb: t.kv_cache_bytes / 1e6,
                bound_speedup: t.bound_speedup(),
                of_bound: d.decode_speedup / t.bound_speedup(),
            })
        }
        _ => None,
    };
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
        traffic,
    })
}

/// Checks a benchmark's request against `model` and builds every weight copy the lanes under
/// `plans` (`None`: dense) read, before any clock starts: built lazily, the dense panels landed
/// in run 0 of whichever lane multiplied a matrix first (about 0.16 s on SmolLM2, most of it in
/// the dense lane, whose run 0 then measured about 1.3x slower). Returns the prompt.
fn prepare_lanes<'t>(
    model: &Model,
    tokens: &'t [u32],
    plans: [Option<&SparsityPlan>; 2],
    prompt_tokens: usize,
    new_tokens: usize,
    runs: usize,
) -> Result<&'t [u32]> {
    if runs == 0 || new_tokens == 0 || prompt_tokens == 0 {
        return Err(EvalError::InvalidOption("runs, prompt tokens and new tokens must be at least 1".into()));
    }
    let prompt = tokens.get(..prompt_tokens).ok_or_else(|| EvalError::TooShort {
        asked: format!("a {prompt_tokens}-token prompt"),
        needed: prompt_tokens,
        have: tokens.len(),
    })?;
    model.prepare_decode();
    for plan in plans {
        if let Some(p) = plan {
            model.prepare_sparse(p)?;
        }
        let request = GenerateOptions {
            sparsity: plan.cloned(),
            ..GenerateOptions::new(new_tokens, SamplingParams::default(), Vec::new())
        };
        validate(model, prompt, &request)?;
    }
    let ctx = model.config().context_len;
    if prompt_tokens + new_tokens > ctx {
        return Err(EvalError::InvalidOption(format!(
            "{prompt_tokens} prompt + {new_tokens} new tokens exceed the model's context of {ctx}"
        )));
    }
    Ok(prompt)
}

/// Advances `first` (counting its sparsity into its stats) and `second` over the prompt and
/// `new_tokens` decode steps, taking turns step by step, who goes first alternating with the
/// step and the run, so that what the machine does meanwhile weighs on both alike.
fn take_turns(
    model: &Model,
    prompt: &[u32],
    new_tokens: usize,
    run: usize,
    first: (&mut Lane<'_>, Option<&mut SparsityStats>),
    mut second: Option<&mut Lane<'_>>,
) -> Result<()> {
    let (lane, mut stats) = first;
    for step in 0..=new_tokens {
        let lane_first = (run + step).is_multiple_of(2);
        if lane_first {
            lane.step(model, prompt, step, stats.as_deref_mut())?;
        }
        if let Some(other) = second.as_deref_mut() {
            other.step(model, prompt, step, None)?;
        }
        if !lane_first {
            lane.step(model, prompt, step, stats.as_deref_mut())?;
        }
    }
    Ok(())
}

/// Decode speed of two settings measured against each other (A/B), steps paired.
#[derive(Debug, Clone, Serialize)]
pub struct PairedDecode {
    /// Median decode tok/s of A.
    pub a_tok_s: f64,
    /// Median decode tok/s of B.
    pub b_tok_s: f64,
    /// Per run, B's decode time over A's: above 1 where A decoded faster.
    pub a_over_b: Vec<f64>,
}

impl PairedDecode {
    /// Mean of the runs' A-over-B speed ratios.
    pub fn mean_a_over_b(&self) -> f64 {
        self.a_over_b.iter().sum::<f64>() / self.a_over_b.len().max(1) as f64
    }
}

/// Decodes `new_tokens` greedy tokens after the first `prompt_tokens` of `tokens` under plans
/// `a` and `b` (`None`: dense), `runs` times, the two taking turns step by step.
pub fn paired_decode(
    model: &Model,
    tokens: &[u32],
    plans: [Option<&SparsityPlan>; 2],
    prompt_tokens: usize,
    new_tokens: usize,
    runs: usize,
) -> Result<PairedDecode> {
    let prompt = prepare_lanes(model, tokens, plans, prompt_tokens, new_tokens, runs)?;
    let (mut a_runs, mut b_runs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let mut a = Lane::new(model, plans[0]);
        let mut b = Lane::new(model, plans[1]);
        take_turns(model, prompt, new_tokens, run, (&mut a, None), Some(&mut b))?;
        let (ta, tb) = (a.tok_s(prompt_tokens, new_tokens), b.tok_s(prompt_tokens, new_tokens));
        ratios.push(tb.2 / ta.2.max(1e-12));
        a_runs.push(ta.1);
        b_runs.push(tb.1);
    }
    Ok(PairedDecode { a_tok_s: median(a_runs), b_tok_s: median(b_runs), a_over_b: ratios })
}

/// One generation advanced a step at a time: greedy, fixed length, timed apart from sampling.
struct Lane<'a> {
    plan: Option<&'a SparsityPlan>,
    cache: KvCache,
    next: u32,
    prefill: Duration,
    decode: Duration,
}

impl<'a> Lane<'a> {
    fn new(model: &Model, plan: Option<&'a SparsityPlan>) -> Self {
        Self { plan, cache: model.new_cache(), next: 0, prefill: Duration::ZERO, decode: Duration::ZERO }
    }

    /// Step 0 prefills the prompt; every later step decodes the token chosen before it.
    fn step(&mut self, model: &Model, prompt: &[u32], step: usize, stats: Option<&mut SparsityStats>) -> Result<()> {
        let input: &[u32] = if step == 0 { prompt } else { std::slice::from_ref(&self.next) };
        let mut hooks = Hooks { plan: self.plan, stats: if step == 0 { None } else { stats }, ..Hooks::default() };
        let t = Instant::now();
        let logits = model.forward_with(input, &mut self.cache, Logits::Last, &mut hooks)?;
        let spent = t.elapsed();
        *(if step == 0 { &mut self.prefill } else { &mut self.decode }) += spent;
        self.next = argmax(&logits);
        Ok(())
    }

    /// (prefill tok/s, decode tok/s, decode seconds).
    fn tok_s(&self, prompt_tokens: usize, new_tokens: usize) -> (f64, f64, f64) {
        let decode = self.decode.as_secs_f64();
        (prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-12), new_tokens as f64 / decode.max(1e-12), decode)
    }
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
