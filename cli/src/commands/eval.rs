//! `sieve eval ...`: quality measurements.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sieve_engine::Precision;
use sieve_engine::sparsity::check_target;
use sieve_eval::corpus::tokenize_file;
use sieve_eval::perplexity::{PplOptions, PplReport, perplexity, plan};

/// `sieve eval` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// Perplexity over non-overlapping windows of a corpus (no BOS, all but the first
    /// position of each window scored).
    Ppl(PplArgs),
}

/// Arguments of `sieve eval ppl`.
#[derive(Debug, clap::Args)]
pub struct PplArgs {
    /// UTF-8 text file to score.
    #[arg(long)]
    corpus: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Windows to score (default: every full window).
    #[arg(long)]
    windows: Option<usize>,
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
struct PplOutput<'a> {
    #[serde(flatten)]
    report: &'a PplReport,
    precision: Precision,
    corpus: String,
    model: String,
}

/// Runs an eval subcommand.
pub fn run(model_path: &Path, cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Ppl(a) => ppl(model_path, a),
    }
}

fn ppl(model_path: &Path, a: PplArgs) -> Result<()> {
    let tok = super::load_tokenizer(model_path)?;
    let tokens = tokenize_file(&tok, &a.corpus)?;
    let opts = PplOptions { ctx: a.ctx, windows: a.windows };
    // Check the corpus before the (slower) model load.
    let windows = plan(tokens.len(), opts, usize::MAX).with_context(|| format!("corpus {}", a.corpus.display()))?;
    check_target(a.sparsity.sparsity)?;
    let (_, model) = super::load(model_path, a.precision)?;
    let plan = a.sparsity.plan(model_path, &model)?;
    let bar = super::progress(windows as u64, "perplexity");
    let report = perplexity(&model, &tokens, opts, plan.as_ref(), || bar.inc(1))?;
    bar.finish_and_clear();
    if a.json {
        super::print_json(&PplOutput {
            report: &report,
            precision: a.precision,
            corpus: a.corpus.display().to_string(),
            model: model_path.display().to_string(),
        })
    } else {
        println!(
            "perplexity {:.4} over {} scored tokens ({} windows x {}, precision {:?}) in {:.1} s ({:.0} tok/s)",
            report.perplexity,
            report.scored_tokens,
            report.windows,
            report.ctx,
            a.precision,
            report.seconds,
            report.tok_s
        );
        Ok(())
    }
}
