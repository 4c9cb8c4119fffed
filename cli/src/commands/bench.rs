//! `sieve bench ...`: speed measurements.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use sieve_engine::Precision;
use sieve_eval::bench::{BenchOptions, BenchReport, bench_decode};
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
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Serialize)]
struct DecodeOutput<'a> {
    #[serde(flatten)]
    report: &'a BenchReport,
    pub(crate) precision: Precision,
    threads: usize,
    isa: String,
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
    let opts = BenchOptions { prompt_tokens: a.prompt_tokens, new_tokens: a.new_tokens, runs: a.runs, plan };
    let bar = super::progress(a.runs as u64, "bench decode");
    let report = bench_decode(&model, &tokens, opts, || bar.inc(1))?;
    bar.finish_and_clear();
    let out = DecodeOutput {
        report: &report,
        precision: a.precision,
        threads: sieve_kernels::pool::global().threads(),
        isa: sieve_kernels::isa::describe(),
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
        Ok(())
    }
}
