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
}

/// Arguments of `sieve bench decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Text whose first tokens form the prompt (default: a built-in passage).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Prompt tokens.
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    /// New tokens per run.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Weight precision: f32 (reference) or fast (int8).
    #[arg(long, default_value = "fast")]
    precision: Precision,
    #[command(flatten)]
    sparsity: super::SparsityArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DecodeOutput<'a> {
    #[serde(flatten)]
    report: &'a BenchReport,
    precision: Precision,
    threads: usize,
    isa: &'static str,
}

/// Runs a bench subcommand.
pub fn run(model_path: &Path, cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Decode(a) => decode(model_path, a),
    }
}

fn decode(model_path: &Path, a: DecodeArgs) -> Result<()> {
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
        isa: sieve_kernels::isa::active().name(),
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
