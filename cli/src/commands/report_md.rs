//! The markdown of `sieve eval report`: tables of the report's data and its plots, embedded
//! as PNG data URIs so the file needs nothing beside it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sieve_eval::plot::{Chart, Series, data_uri, line_chart};

use super::report::{ReportData, TEAL_LLAMA3_8B};
use super::tradeoff::{points_table, series};

/// Where plots are drawn: the user's `--plot` directory, or a scratch one removed afterwards.
struct PlotDir {
    dir: PathBuf,
    scratch: bool,
}

impl PlotDir {
    fn new(keep: Option<&Path>) -> Result<Self> {
        let (dir, scratch) = match keep {
            Some(d) => (d.to_path_buf(), false),
            None => (std::env::temp_dir().join(format!("sieve-report-{}", std::process::id())), true),
        };
        sieve_eval::plot::check_dir(&dir)?;
        Ok(Self { dir, scratch })
    }

    /// The markdown image of the PNG among `files`.
    fn embed(&self, alt: &str, files: &[PathBuf]) -> Result<String> {
        let Some(png) = files.iter().find(|p| p.extension().is_some_and(|e| e == "png")) else {
            return Ok(String::new());
        };
        Ok(format!("![{alt}]({})\n\n", data_uri(png)?))
    }
}

impl Drop for PlotDir {
    fn drop(&mut self) {
        if self.scratch {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The whole report as markdown (`plot_dir`: keep the plot files there too).
pub fn render(d: &ReportData, plot_dir: Option<&Path>) -> Result<String> {
    let plots = PlotDir::new(plot_dir)?;
    let mut md = String::new();
    let dense = &d.sweep[0];
    let scored = d.windows * (d.ctx - 1);
    writeln!(md, "# sieve report: {}\n", d.model_name)?;
    writeln!(md, "Made by `{}` in {:.1} minutes on {} threads.\n", d.command, d.total_seconds / 60.0, d.threads)?;
    writeln!(md, "| | |\n|---|---|")?;
    writeln!(md, "| model | `{}` |", d.model)?;
    writeln!(
        md,
        "| evaluation | `{}`: {} windows x {} tokens, {scored} scored positions |",
        d.corpus, d.windows, d.ctx
    )?;
    writeln!(md, "| profile | `{}`: calibrated on {} ({} tokens) |", d.profile, d.profile_source, d.profile_tokens)?;
    writeln!(md, "| dense | perplexity {:.3}, decode {:.1} tok/s |\n", dense.perplexity, dense.decode_tok_s)?;
    for n in &d.notes {
        writeln!(md, "- {n}")?;
    }
    headline(&mut md, d)?;
    sweep(&mut md, d, &plots)?;
    ab(&mut md, d)?;
    masks(&mut md, d, &plots)?;
    robustness(&mut md, d)?;
    writeln!(md, "## Time spent\n\n| section | seconds |\n|---|---|")?;
    for (k, v) in &d.seconds {
        writeln!(md, "| {k} | {v:.0} |")?;
    }
    writeln!(md, "| total | {:.0} |", d.total_seconds)?;
    Ok(md)
}

fn headline(md: &mut String, d: &ReportData) -> Result<()> {
    let dense = d.sweep[0].perplexity;
    writeln!(md, "\n## Headline: PPL-p% sparsity\n")?;
    writeln!(
        md,
        "The largest target sparsity at which perplexity stays within p% of dense ({dense:.3}), read off the \
         sweep below: linear in log-perplexity between the last grid point within the budget and the first one \
         over it (the bracket in parentheses; the true point lies inside it if perplexity rises monotonically). \
         `sieve eval ppl-p` bisects to a stated tolerance instead. The speedup is decode, measured at that \
         sparsity against dense, the two taking turns step by step.\n"
    )?;
    let mut head = String::from("| method |");
    let mut rule = String::from("|---|");
    let ps: Vec<f64> = d.ppl_p.iter().map(|r| r.point.p).fold(Vec::new(), |mut v, p| {
        if !v.contains(&p) {
            v.push(p);
        }
        v
    });
    for p in &ps {
        head += &format!(" PPL-{p}% sparsity | speedup |");
        rule += "---|---|";
    }
    writeln!(md, "{head}\n{rule}")?;
    let mut methods: Vec<&str> = Vec::new();
    for r in &d.ppl_p {
        if !methods.contains(&r.method.as_str()) {
            methods.push(&r.method);
        }
    }
    for m in methods {
        let mut row = format!("| {m} |");
        for r in d.ppl_p.iter().filter(|r| r.method == m) {
            let pt = &r.point;
            let bracket = match pt.above {
                Some((hi, _)) => format!("{:.2}-{:.2}", pt.below.0, hi),
                None => format!("over {:.2}: never crossed", pt.below.0),
            };
            row += &format!(" {:.3} ({bracket}) | {:.2}x |", pt.sparsity, r.speedup);
        }
        writeln!(md, "{row}")?;
    }
    writeln!(md, "\n### For context: published figures on other models\n")?;
    writeln!(md, "| source | model and knob | PPL-1% | PPL-5% | PPL-10% | speed |\n|---|---|---|---|---|---|")?;
    let teal: Vec<String> = d.teal_llama3_8b.iter().map(|p| format!("{:.2}", p.sparsity)).collect();
    let cell = |i: usize| teal.get(i).cloned().unwrap_or_else(|| "-".into());
    let table: Vec<String> = TEAL_LLAMA3_8B.iter().map(|(s, v)| format!("{v} at {:.0}%", s * 100.0)).collect();
    writeln!(
        md,
        "| TEAL | Llama-3-8B, WikiText, greedy allocation; read here from its perplexity table ({}) by the same \
         interpolation (columns: the report's first three p) | {} | {} | {} | decode 1.53x at 40%, 1.8x at 50% (A6000 GPU) |",
        table.join(", "),
        cell(0),
        cell(1),
        cell(2)
    )?;
    writeln!(
        md,
        "| Sparsing Law | SiLU models of 0.1B-1.2B pre-trained by the authors; CETT knob, same value in every \
         layer | about 0.61-0.62 (activation ratio 37.9-39.2% at their last checkpoints; fitted limits \
         38.2-40.9%) | not published | not published | - |"
    )?;
    writeln!(
        md,
        "| Sparsing Law | the same models with ReLU | about 0.92-0.94 (fitted activation-ratio limits 6.1-7.8%) \
         | not published | not published | - |\n"
    )?;
    writeln!(
        md,
        "Sparsing Law's figures come from its v1 tables and the authors' fitting data (arXiv 2411.02335). Its \
         knob is closest to this report's `cett` row, which keeps the same share of neurons in every layer by \
         exact importance |h_i| x ||Wd[:, i]|| (an oracle that needs the dense MLP) rather than one CETT value; \
         both are sparsity of the MLP's intermediate activations only.\n"
    )?;
    Ok(())
}

fn sweep(md: &mut String, d: &ReportData, plots: &PlotDir) -> Result<()> {
    writeln!(md, "## Quality against sparsity\n")?;
    writeln!(
        md,
        "Every method at every target sparsity on the same windows; dense runs once per window and is the \
         reference of the KL and the agreement. `achieved` is the share of weight reads skipped (TEAL: all seven \
         projections, parameter-weighted; the MLP-only methods: gate, up and down). Decode tok/s and speedup come \
         from {} paired steps against dense per point.\n",
        d.decode_tokens
    )?;
    md.push_str(&points_table(&d.sweep));
    md.push('\n');
    let by_sparsity = series(&d.sweep, |p| p.sparsity as f64, |p| p.perplexity);
    let title = format!("perplexity vs target sparsity (dense {:.2})", d.sweep[0].perplexity);
    let chart = Chart { title: &title, x_label: "target sparsity", y_label: "perplexity", series: &by_sparsity };
    md.push_str(&plots.embed("perplexity vs sparsity", &line_chart(&plots.dir, "ppl_vs_sparsity", &chart)?)?);
    let by_speed = series(&d.sweep, |p| p.speedup, |p| p.perplexity);
    let chart = Chart {
        title: "perplexity vs decode speedup over dense",
        x_label: "decode speedup",
        y_label: "perplexity",
        series: &by_speed,
    };
    md.push_str(&plots.embed("perplexity vs speedup", &line_chart(&plots.dir, "ppl_vs_speedup", &chart)?)?);
    let kl = series(&d.sweep, |p| p.sparsity as f64, |p| p.kl_vs_dense);
    let chart =
        Chart { title: "KL(dense || method) per token", x_label: "target sparsity", y_label: "nats", series: &kl };
    md.push_str(&plots.embed("KL vs sparsity", &line_chart(&plots.dir, "kl_vs_sparsity", &chart)?)?);
    let lines = Series::group(d.ppl_p.iter().map(|r| (r.method.clone(), (r.point.p, r.point.sparsity as f64))));
    let chart = Chart { title: "PPL-p% sparsity", x_label: "p (% over dense)", y_label: "sparsity", series: &lines };
    md.push_str(&plots.embed("PPL-p% sparsity", &line_chart(&plots.dir, "ppl_p", &chart)?)?);
    Ok(())
}

fn ab(md: &mut String, d: &ReportData) -> Result<()> {
    if d.ab.is_empty() {
        return Ok(());
    }
    writeln!(md, "## A/B at equal target sparsity\n")?;
    writeln!(
        md,
        "Perplexity ratio on the sweep's windows with a 95% paired-bootstrap interval (windows resampled, both \
         methods summed over the same draw). A verdict needs the interval to exclude 1.\n"
    )?;
    writeln!(md, "| A | B | sparsity | PPL(A)/PPL(B) | 95% interval | lower perplexity |\n|---|---|---|---|---|---|")?;
    for r in &d.ab {
        let v = &r.verdict;
        let who = match v.better.as_str() {
            "A" => r.a.as_str(),
            "B" => r.b.as_str(),
            _ => "no significant difference",
        };
        writeln!(
            md,
            "| {} | {} | {:.2} | {:.4} | [{:.4}, {:.4}] | {who} |",
            r.a, r.b, r.sparsity, v.ppl_ratio, v.ci_low, v.ci_high
        )?;
    }
    md.push('\n');
    Ok(())
}

fn masks(md: &mut String, d: &ReportData, plots: &PlotDir) -> Result<()> {
    writeln!(md, "## MLP masks at target sparsity {}\n", d.audit_sparsity)?;
    writeln!(
        md,
        "Each method's MLP neuron mask against TEAL's down-input mask, CATS's gate mask and the CETT oracle at the \
         same target, over {} positions (recall / precision), and the hardware affinity of ReLU^2 Wins / ReLU \
         Strikes Back: the share of a token's active neurons already active at the previous token, and the \
         sparsity left in the union of the last k tokens' masks.\n",
        d.audit_positions
    )?;
    md.push_str(&super::masks_table::table(&d.masks, &d.affinity, &d.affinity_k));
    md.push('\n');
    let files = super::masks_table::heatmaps(&plots.dir, &d.masks, d.audit_sparsity)?;
    for reference in ["teal", "cats", "cett"] {
        let mine: Vec<PathBuf> = files
            .iter()
            .filter(|p| p.file_stem().is_some_and(|s| s.to_string_lossy() == format!("recall_vs_{reference}")))
            .cloned()
            .collect();
        md.push_str(&plots.embed(&format!("recall against {reference} by layer"), &mine)?);
    }
    Ok(())
}

fn robustness(md: &mut String, d: &ReportData) -> Result<()> {
    let Some(r) = &d.robustness else { return Ok(()) };
    writeln!(md, "## Calibration robustness\n")?;
    writeln!(
        md,
        "TEAL and CATS at target {} with thresholds from profiles calibrated on different text, all scored on \
         the first {} windows of the evaluation corpus (dense perplexity there {:.3}).\n",
        r.sparsity, r.windows, r.dense_perplexity
    )?;
    writeln!(
        md,
        "| profile | calibrated on | tokens | method | perplexity | KL vs dense | top-1 agreement |\n|---|---|---|---|---|---|---|"
    )?;
    for row in &r.rows {
        writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} | {:.4} | {:.3} |",
            row.profile, row.source, row.tokens, row.method, row.perplexity, row.kl_vs_dense, row.top1_agreement
        )
        .context("formatting the robustness table")?;
    }
    md.push('\n');
    Ok(())
}
