//! `sieve eval masks --methods A,B,...`: every method's MLP masks at one target against every
//! reference (TEAL, CATS, CETT), with hardware affinity and heat maps of recall by layer.

use std::path::Path;

use anyhow::{Result, bail};
use sieve_engine::Precision;
use sieve_engine::audit::MaskAudit;
use sieve_engine::sparsity::Method;
use sieve_eval::affinity::affinity;
use sieve_eval::corpus::{BUILTIN_BENCH_TEXT, tokenize_file};
use sieve_eval::masks::{MaskOptions, audit_masks};
use sieve_eval::perplexity::PplOptions;
use sieve_eval::plot::{check_dir, heatmap};

use super::eval::MasksArgs;

/// Runs the multi-method audit.
pub fn run(model_path: &Path, a: MasksArgs) -> Result<()> {
    if a.methods.contains(&Method::Dense) {
        bail!("--methods: dense has no mask to audit (list sparse methods)");
    }
    if a.affinity_k.is_empty() || a.affinity_k.contains(&0) {
        bail!("--affinity-k: window sizes must be at least 1");
    }
    if let Some(dir) = &a.plot {
        check_dir(dir)?;
    }
    let (tok, model) = super::load(model_path, Precision::Fast)?;
    let tokens = match &a.corpus {
        Some(p) => tokenize_file(&tok, p)?,
        None => tok.encode(BUILTIN_BENCH_TEXT)?,
    };
    let s = a.sparsity.sparsity;
    let profile = super::load_profile(model_path, &model, a.sparsity.profile.as_deref())?;
    let predictors = if a.methods.iter().any(|m| m.needs_predictors()) {
        let set = super::load_predictors(
            model_path,
            &model,
            a.sparsity.profile.as_deref(),
            a.sparsity.predictors.as_deref(),
        )?;
        Some(std::sync::Arc::new(set))
    } else {
        None
    };
    let windows = (a.positions / a.ctx.max(1)).max(1);
    let bar = super::progress(a.methods.len() as u64, "auditing methods");
    let (mut reports, mut affinities) = (Vec::new(), Vec::new());
    for &m in &a.methods {
        let plan = profile.plan_with_predictors(m, s, predictors.clone())?;
        model.prepare_sparse(&plan)?;
        let opts = MaskOptions { positions: a.positions, ctx: a.ctx, timed_steps: a.timed_steps };
        reports.push(audit_masks(&model, &tokens, &plan, MaskAudit::new(&profile, s)?, opts, || {})?);
        let popts = PplOptions { ctx: a.ctx, windows: Some(windows) };
        affinities.push(affinity(&model, &tokens, popts, Some(&plan), &a.affinity_k)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut plots = Vec::new();
    if let Some(dir) = &a.plot {
        let names: Vec<String> = reports.iter().map(|r| r.method.clone()).collect();
        for reference in ["teal", "cats", "cett"] {
            let values: Vec<Vec<f64>> =
                reports.iter().map(|r| r.layers.iter().map(|l| l.against[reference].recall).collect()).collect();
            let title = format!("MLP mask recall against {reference} at sparsity {s} (pale 0, dark 1)");
            plots.extend(heatmap(dir, &format!("recall_vs_{reference}"), &title, &names, &values)?);
        }
    }
    if a.json {
        return super::print_json(&serde_json::json!({ "reports": reports, "affinity": affinities, "plots": plots }));
    }
    println!("MLP masks at target sparsity {s}, {} positions; recall / precision against each reference:", a.positions);
    let ks: Vec<String> = a.affinity_k.iter().map(|k| format!("sparsity of last {k}")).collect();
    println!("| method | achieved | vs teal | vs cats | vs cett | reuse from previous token | {} |", ks.join(" | "));
    println!("|---|---|---|---|---|---|{}", "---|".repeat(ks.len()));
    for (r, af) in reports.iter().zip(&affinities) {
        let rp = |k: &str| r.overall.get(k).map_or("-".into(), |m| format!("{:.3} / {:.3}", m.recall, m.precision));
        let agg: Vec<String> = af.aggregated.iter().map(|(_, v)| format!("{v:.3}")).collect();
        println!(
            "| {} | {:.3} | {} | {} | {} | {:.3} | {} |",
            r.method,
            r.achieved_sparsity,
            rp("teal"),
            rp("cats"),
            rp("cett"),
            af.reuse,
            agg.join(" | ")
        );
    }
    for p in &plots {
        println!("plot: {}", p.display());
    }
    Ok(())
}
