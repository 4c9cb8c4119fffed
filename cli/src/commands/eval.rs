//! `sieve eval ...`: quality measurements.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sieve_engine::Precision;
use sieve_engine::audit::MaskAudit;
use sieve_engine::sparsity::check_target;
use sieve_eval::corpus::{BUILTIN_BENCH_TEXT, tokenize_file};
use sieve_eval::masks::{MaskOptions, Metrics, audit_masks};
use sieve_eval::perplexity::{PplOptions, PplReport, perplexity, perplexity_vs_dense, plan};
use sieve_eval::plot::{Chart, Series, check_dir, line_chart};

/// `sieve eval` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// Perplexity over non-overlapping windows of a corpus (no BOS, all but the first
    /// position of each window scored).
    Ppl(PplArgs),
    /// Per-layer mask audit of a method: recall / precision / F1 / Jaccard of its MLP masks
    /// against TEAL, CATS and the CETT oracle at the same target, achieved sparsity per
    /// projection, and per-layer attention / MLP decode time against dense.
    Masks(MasksArgs),
    /// Each method over a grid of sparsities: perplexity, KL and top-1 agreement against
    /// dense, achieved sparsity, decode tok/s and speedup.
    Sweep(super::tradeoff::SweepArgs),
    /// PPL-p% sparsity: per method, the largest sparsity whose perplexity stays within p% of
    /// dense (bisection), and the speedup there.
    #[command(name = "ppl-p")]
    PplP(super::tradeoff::PplPArgs),
    /// A/B: two METHOD:SPARSITY settings on the same windows, with a paired bootstrap verdict.
    Ab(super::tradeoff::AbArgs),
    /// Everything above for the current profile in one self-contained markdown file: sweep,
    /// PPL-p% sparsity with published figures for context, A/B verdicts, mask audit with
    /// hardware affinity, calibration robustness.
    Report(super::report::ReportArgs),
}

/// Arguments of `sieve eval masks`.
#[derive(Debug, clap::Args)]
pub struct MasksArgs {
    /// Text to audit on (default: a built-in passage).
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    /// Positions audited.
    #[arg(long, default_value_t = 512)]
    pub positions: usize,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    pub ctx: usize,
    /// Decode steps timed per method and round (0: no timing).
    #[arg(long, default_value_t = 32)]
    pub timed_steps: usize,
    #[command(flatten)]
    pub sparsity: super::SparsityArgs,
    /// Audit several methods at --sparsity instead of --method: a summary table, hardware
    /// affinity (reuse from the previous token, sparsity of the union of the last k tokens)
    /// and, with --plot, heat maps of recall (layer x method) against each reference.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<sieve_engine::sparsity::Method>,
    /// Window sizes k of the aggregated sparsity.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub affinity_k: Vec<usize>,
    /// Draw the heat maps into this directory (SVG and PNG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Also draw perplexity per window into this directory (SVG and PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
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
    plots: Vec<PathBuf>,
}

/// Runs an eval subcommand.
pub fn run(model_path: &Path, cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Ppl(a) => ppl(model_path, a),
        EvalCommand::Masks(a) => masks(model_path, a),
        EvalCommand::Sweep(a) => super::tradeoff::sweep(model_path, a),
        EvalCommand::PplP(a) => super::tradeoff::ppl_p_search(model_path, a),
        EvalCommand::Ab(a) => super::tradeoff::ab(model_path, a),
        EvalCommand::Report(a) => super::report::run(model_path, a),
    }
}

fn masks(model_path: &Path, a: MasksArgs) -> Result<()> {
    check_target(a.sparsity.sparsity)?;
    if a.sparsity.sparsity == 0.0 {
        bail!("--sparsity must be above 0: the references are taken at the method's target");
    }
    if !a.methods.is_empty() {
        return super::masks_table::run(model_path, a);
    }
    let (tok, model) = super::load(model_path, Precision::Fast)?;
    let tokens = match &a.corpus {
        Some(p) => tokenize_file(&tok, p)?,
        None => tok.encode(BUILTIN_BENCH_TEXT)?,
    };
    let profile = super::load_profile(model_path, &model, a.sparsity.profile.as_deref())?;
    let plan = match a.sparsity.plan(model_path, &model)? {
        Some(plan) => plan,
        None => profile.plan(a.sparsity.method, a.sparsity.sparsity)?,
    };
    let references = MaskAudit::new(&profile, a.sparsity.sparsity)?;
    let opts = MaskOptions { positions: a.positions, ctx: a.ctx, timed_steps: a.timed_steps };
    let steps = a.positions.div_ceil(a.ctx.max(1)) + if a.timed_steps > 0 { 4 } else { 0 };
    let bar = super::progress(steps as u64, "auditing masks");
    let report = audit_masks(&model, &tokens, &plan, references, opts, || bar.inc(1))?;
    bar.finish_and_clear();
    if a.json {
        return super::print_json(&report);
    }
    println!(
        "{} at {} (achieved {:.3}), {} positions audited; MLP mask against each reference at the same target:",
        report.method, report.sparsity, report.achieved_sparsity, report.positions
    );
    println!(
        "{:>5} {:>6} {:>6} {:>6} | {:>17} | {:>17} | {:>17} | {:>15} | {:>15}",
        "layer",
        "s_attn",
        "s_gate",
        "s_down",
        "teal R/P/F1",
        "cats R/P/F1",
        "cett R/P/F1",
        "attn us (dense)",
        "mlp us (dense)"
    );
    let rpf = |m: &Metrics| format!("{:.2}/{:.2}/{:.2}", m.recall, m.precision, m.f1);
    for r in &report.layers {
        let p = |k: &str| r.achieved_by_projection.get(k).copied().unwrap_or(0.0);
        println!(
            "{:>5} {:>6.3} {:>6.3} {:>6.3} | {:>17} | {:>17} | {:>17} | {:>6.1} ({:>6.1}) | {:>6.1} ({:>6.1})",
            r.layer,
            p("q"),
            p("gate"),
            p("down"),
            rpf(&r.against["teal"]),
            rpf(&r.against["cats"]),
            rpf(&r.against["cett"]),
            r.attention_us,
            r.dense_attention_us,
            r.mlp_us,
            r.dense_mlp_us
        );
    }
    for (k, m) in &report.overall {
        println!(
            "all layers vs {k}: recall {:.3} precision {:.3} F1 {:.3} Jaccard {:.3}",
            m.recall, m.precision, m.f1, m.jaccard
        );
    }
    if report.timed_steps > 0 {
        println!(
            "blocks per decode step: {:.0} us vs dense {:.0} us ({:.2}x), {} steps timed",
            report.blocks_us,
            report.dense_blocks_us,
            report.dense_blocks_us / report.blocks_us.max(1e-9),
            report.timed_steps
        );
        let (step, dense_step) =
            (report.blocks_us + report.outside_blocks_us, report.dense_blocks_us + report.dense_outside_blocks_us);
        println!(
            "whole step: {step:.0} us vs dense {dense_step:.0} us ({:.2}x); outside the blocks (embedding, final norm, LM head) {:.0} us vs {:.0} us",
            dense_step / step.max(1e-9),
            report.outside_blocks_us,
            report.dense_outside_blocks_us
        );
    }
    Ok(())
}

fn ppl(model_path: &Path, a: PplArgs) -> Result<()> {
    if let Some(dir) = &a.plot {
        check_dir(dir)?;
    }
    let tok = super::load_tokenizer(model_path)?;
    let tokens = tokenize_file(&tok, &a.corpus)?;
    let opts = PplOptions { ctx: a.ctx, windows: a.windows };
    // Check the corpus before the (slower) model load.
    let windows = plan(tokens.len(), opts, usize::MAX).with_context(|| format!("corpus {}", a.corpus.display()))?;
    check_target(a.sparsity.sparsity)?;
    let (_, model) = super::load(model_path, a.precision)?;
    let plan = a.sparsity.plan(model_path, &model)?;
    let bar = super::progress(windows as u64, "perplexity");
    let report = match &plan {
        Some(p) => perplexity_vs_dense(&model, &tokens, opts, p, || bar.inc(1))?,
        None => perplexity(&model, &tokens, opts, None, || bar.inc(1))?,
    };
    bar.finish_and_clear();
    let mut plots = Vec::new();
    if let Some(dir) = &a.plot {
        let line = Series {
            name: format!("{} {}", report.method, report.sparsity),
            points: report.per_window_perplexity.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect(),
        };
        let title = format!("perplexity per window of {} tokens (all windows {:.3})", report.ctx, report.perplexity);
        let chart = Chart { title: &title, x_label: "window", y_label: "perplexity", series: &[line] };
        plots.extend(line_chart(dir, "ppl_per_window", &chart)?);
    }
    if a.json {
        return super::print_json(&PplOutput {
            report: &report,
            precision: a.precision,
            corpus: a.corpus.display().to_string(),
            model: model_path.display().to_string(),
            plots,
        });
    }
    println!(
        "| method | sparsity | perplexity | KL vs dense | top-1 agreement | achieved | scored tokens | windows | precision | seconds | tok/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.4} | {:.4} | {:.3} | {:.3} | {} | {} x {} | {:?} | {:.1} | {:.0} |",
        report.method,
        report.sparsity,
        report.perplexity,
        report.kl_vs_dense,
        report.top1_agreement,
        report.achieved_sparsity,
        report.scored_tokens,
        report.windows,
        report.ctx,
        a.precision,
        report.seconds,
        report.tok_s
    );
    for p in &plots {
        println!("plot: {}", p.display());
    }
    Ok(())
}
