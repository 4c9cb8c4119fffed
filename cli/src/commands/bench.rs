//! `sieve bench ...`: speed measurements.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use sieve_engine::Precision;
use sieve_eval::bench::{BenchOptions, BenchReport, bench_decode, median};
use sieve_eval::corpus::{BUILTIN_BENCH_TEXT, tokenize_file};

/// `sieve bench` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Prefill a prompt, then decode greedy tokens; median of several runs.
    Decode(DecodeArgs),
    /// Serving several streams: the sparsity a batched step's union of masks loses, against
    /// round-robin (what `sieve serve` does) and the dense batching gain.
    Batching(BatchingArgs),
    /// A random model at a real shape (Llama-3-8B) on the GPU: dense against the bandwidth
    /// roofline, TEAL and CATS calibrated on its own activations (needs `--features cuda`).
    GpuSynthetic(super::gpu_decode::SyntheticArgs),
}

/// Arguments of `sieve bench batching`.
#[derive(Debug, clap::Args)]
pub struct BatchingArgs {
    /// Stream counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    streams: Vec<usize>,
    /// Decode steps per stream.
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Prompt tokens per stream (each stream starts at a different place of the built-in passage).
    #[arg(long, default_value_t = 32)]
    pub(crate) prompt_tokens: usize,
    #[command(flatten)]
    pub(crate) sparsity: super::SparsityArgs,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `sieve bench decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Text whose first tokens form the prompt (default: a built-in passage).
    #[arg(long)]
    pub(crate) corpus: Option<PathBuf>,
    /// Prompt tokens.
    #[arg(long, default_value_t = 256)]
    pub(crate) prompt_tokens: usize,
    /// New tokens per run.
    #[arg(long, default_value_t = 128)]
    pub(crate) new_tokens: usize,
    /// Runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub(crate) runs: usize,
    /// Weight precision: f32 (reference) or fast (int8).
    #[arg(long, default_value = "fast")]
    pub(crate) precision: Precision,
    #[command(flatten)]
    pub(crate) sparsity: super::SparsityArgs,
    /// Where to run: cpu, or cuda (the model on an NVIDIA GPU, logits checked against the CPU
    /// f32 path first; needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub(crate) device: super::gpu_decode::Device,
    /// Also time every run with the AVX-512 VNNI kernels turned off (the AVX2 ones), runs
    /// alternated in this process, and report both (CPUs with VNNI only).
    #[arg(long)]
    pub(crate) compare_isa: bool,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `--compare-isa`: the same runs with the VNNI kernels on and off, taking turns.
#[derive(Serialize)]
struct IsaComparison {
    /// Median decode tok/s with the VNNI kernels.
    vnni_decode_tok_s: f64,
    /// Median decode tok/s with the AVX2 kernels.
    avx2_decode_tok_s: f64,
    /// Median prefill tok/s with the VNNI kernels.
    vnni_prefill_tok_s: f64,
    /// Median prefill tok/s with the AVX2 kernels.
    avx2_prefill_tok_s: f64,
    /// Median over run pairs of VNNI decode tok/s / AVX2 decode tok/s.
    decode_ratio: f64,
}

#[derive(Serialize)]
struct DecodeOutput<'a> {
    #[serde(flatten)]
    report: &'a BenchReport,
    pub(crate) precision: Precision,
    threads: usize,
    isa: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    isa_comparison: Option<IsaComparison>,
}

/// One run at a time with the VNNI kernels on, then off, `runs` times.
fn compare_isa(
    model: &sieve_engine::Model,
    tokens: &[u32],
    a: &DecodeArgs,
    plan: Option<&sieve_engine::sparsity::SparsityPlan>,
) -> Result<IsaComparison> {
    if !sieve_kernels::gemm_vnni::enabled() {
        anyhow::bail!("--compare-isa needs a CPU with AVX-512 VNNI (and SIEVE_ISA unset)");
    }
    let bar = super::progress(2 * a.runs as u64, "bench decode, VNNI and AVX2");
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..a.runs {
        for (vnni, into) in [(true, &mut on), (false, &mut off)] {
            sieve_kernels::gemm_vnni::set_enabled(vnni);
            let opts =
                BenchOptions { prompt_tokens: a.prompt_tokens, new_tokens: a.new_tokens, runs: 1, plan: plan.cloned() };
            let r = bench_decode(model, tokens, opts, || ());
            sieve_kernels::gemm_vnni::set_enabled(true);
            let r = r?;
            into.push((r.prefill_tok_s, r.decode_tok_s));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let pick = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(v.iter().map(f).collect());
    Ok(IsaComparison {
        vnni_decode_tok_s: pick(&on, |r| r.1),
        avx2_decode_tok_s: pick(&off, |r| r.1),
        vnni_prefill_tok_s: pick(&on, |r| r.0),
        avx2_prefill_tok_s: pick(&off, |r| r.0),
        decode_ratio: median(on.iter().zip(&off).map(|(a, b)| a.1 / b.1.max(1e-9)).collect()),
    })
}

/// Runs a bench subcommand.
pub fn run(model_path: &Path, cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Decode(a) => decode(model_path, a),
        BenchCommand::Batching(a) => batching(model_path, a),
        BenchCommand::GpuSynthetic(a) => super::gpu_decode::synthetic(a),
    }
}

fn batching(model_path: &Path, a: BatchingArgs) -> Result<()> {
    let (tok, model) = super::load(model_path, Precision::Fast)?;
    let Some(plan) = a.sparsity.plan(model_path, &model)? else {
        anyhow::bail!("--method cats, teal or teal-uniform with a --sparsity above 0 is needed");
    };
    model.prepare_decode();
    model.prepare_sparse(&plan)?;
    let kmax = a.streams.iter().copied().max().unwrap_or(1);
    if a.prompt_tokens == 0 {
        anyhow::bail!("--prompt-tokens must be at least 1");
    }
    let text = tok.encode(BUILTIN_BENCH_TEXT)?;
    let stride = (text.len().saturating_sub(a.prompt_tokens) / kmax.max(1)).max(1);
    let prompts: Vec<Vec<u32>> =
        (0..kmax).map(|i| text.iter().copied().cycle().skip(i * stride).take(a.prompt_tokens).collect()).collect();
    let rows = sieve_eval::batching::measure(&model, &plan, &prompts, &a.streams, a.steps)?;
    if a.json {
        return super::print_json(&serde_json::json!({ "method": plan.method, "sparsity": plan.target, "rows": rows }));
    }
    println!("{} at {}, {} steps per stream", plan.method, plan.target, a.steps);
    println!(
        "| streams | one stream's sparsity | union's sparsity | lost to the union | round-robin tok/s | dense k-token step gain |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.1} | {:.2}x |",
            r.streams, r.single_sparsity, r.union_sparsity, r.sparsity_lost, r.round_robin_tok_s, r.dense_batch_gain
        );
    }
    Ok(())
}

fn decode(model_path: &Path, a: DecodeArgs) -> Result<()> {
    if a.device == super::gpu_decode::Device::Cuda {
        return super::gpu_decode::bench(model_path, &a);
    }
    let (tok, model) = super::load(model_path, a.precision)?;
    let tokens = match &a.corpus {
        Some(p) => tokenize_file(&tok, p)?,
        None => tok.encode(BUILTIN_BENCH_TEXT)?,
    };
    let plan = a.sparsity.plan(model_path, &model)?;
    let isa_comparison = if a.compare_isa { Some(compare_isa(&model, &tokens, &a, plan.as_ref())?) } else { None };
    let opts = BenchOptions { prompt_tokens: a.prompt_tokens, new_tokens: a.new_tokens, runs: a.runs, plan };
    let bar = super::progress(a.runs as u64, "bench decode");
    let report = bench_decode(&model, &tokens, opts, || bar.inc(1))?;
    bar.finish_and_clear();
    let out = DecodeOutput {
        report: &report,
        precision: a.precision,
        threads: sieve_kernels::pool::global().threads(),
        isa: sieve_kernels::isa::describe(),
        isa_comparison,
    };
    if a.json {
        super::print_json(&out)
    } else {
        println!(
            "prefill {:.1} tok/s, decode {:.1} tok/s ({} prompt + {} new tokens, median of {}, {:?}, {} threads, {}); peak RSS {:.0} MiB",
            report.prefill_tok_s,
            report.decode_tok_s,
            report.prompt_tokens,
            report.new_tokens,
            a.runs,
            a.precision,
            out.threads,
            out.isa,
            report.peak_rss_mb
        );
        if let Some(d) = &report.dense {
            println!(
                "{} at {}: achieved sparsity {:.3}; dense in the same run: prefill {:.1} tok/s, decode {:.1} tok/s; decode speedup {:.2}x",
                report.method,
                report.sparsity,
                report.achieved_sparsity,
                d.prefill_tok_s,
                d.decode_tok_s,
                d.decode_speedup
            );
        }
        if let Some(t) = &report.traffic {
            println!(
                "bytes per decode step: weights {:.1} MB dense, {:.1} MB {}; KV cache {:.1} MB; at equal bandwidth at most {:.2}x, measured {:.0}% of that",
                t.dense_weight_mb,
                t.method_weight_mb,
                report.method,
                t.kv_cache_mb,
                t.bound_speedup,
                100.0 * t.of_bound
            );
        }
        if let Some(c) = &out.isa_comparison {
            println!(
                "{} runs each, taking turns: VNNI kernels decode {:.1} tok/s (prefill {:.1}), AVX2 kernels decode {:.1} tok/s (prefill {:.1}); decode VNNI/AVX2 {:.2}x",
                a.runs,
                c.vnni_decode_tok_s,
                c.vnni_prefill_tok_s,
                c.avx2_decode_tok_s,
                c.avx2_prefill_tok_s,
                c.decode_ratio
            );
        }
        Ok(())
    }
}
