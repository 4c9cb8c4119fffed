//! `sieve eval masks --methods A,B,...`: every method's MLP masks at one target against every
//! reference (TEAL, CATS, CETT), with hardware affinity and heat maps of recall by layer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};
use sieve_engine::audit::MaskAudit;
use sieve_engine::profile::Profile;
use sieve_engine::sparsity::Method;
use sieve_engine::{Model, Precision};
use sieve_eval::affinity::Affinity;
use sieve_eval::affinity::affinity;
use sieve_eval::corpus::{BUILTIN_BENCH_TEXT, tokenize_file};
use sieve_eval::masks::MaskReport;
use sieve_eval::masks::{MaskOptions, audit_masks};
use sieve_eval::perplexity::PplOptions;
use sieve_eval::plot::{check_dir, heatmap};
use sieve_predictor::PredictorSet;

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
    let spec =
        AuditSpec { sparsity: s, positions: a.positions, ctx: a.ctx, timed_steps: a.timed_steps, ks: &a.affinity_k };
    let bar = super::progress(a.methods.len() as u64, "auditing methods");
    let audits = audit_methods(&model, &tokens, &profile, predictors, &a.methods, &spec, || bar.inc(1))?;
    bar.finish_and_clear();
    let (reports, affinities): (Vec<MaskReport>, Vec<Affinity>) = audits.into_iter().unzip();
    let plots = match &a.plot {
        Some(dir) => heatmaps(dir, &reports, s)?,
        None => Vec::new(),
    };
    if a.json {
        return super::print_json(&serde_json::json!({ "reports": reports, "affinity": affinities, "plots": plots }));
    }
    println!("MLP masks at target sparsity {s}, {} positions; recall / precision against each reference:", a.positions);
    print!("{}", table(&reports, &affinities, &a.affinity_k));
    for p in &plots {
        println!("plot: {}", p.display());
    }
    Ok(())
}

/// What [`audit_methods`] measures.
pub(crate) struct AuditSpec<'a> {
    pub sparsity: f32,
    pub positions: usize,
    pub ctx: usize,
    pub timed_steps: usize,
    /// Window sizes of the aggregated sparsity.
    pub ks: &'a [usize],
}

/// Each method's mask audit and hardware affinity at `spec.sparsity`.
pub(crate) fn audit_methods(
    model: &Model,
    tokens: &[u32],
    profile: &Profile,
    predictors: Option<Arc<PredictorSet>>,
    methods: &[Method],
    spec: &AuditSpec,
    mut on_method: impl FnMut(),
) -> Result<Vec<(MaskReport, Affinity)>> {
    let windows = (spec.positions / spec.ctx.max(1)).max(1);
    let mut out = Vec::new();
    for &m in methods {
        let plan = profile.plan_with_predictors(m, spec.sparsity, predictors.clone())?;
        model.prepare_sparse(&plan)?;
        let opts = MaskOptions { positions: spec.positions, ctx: spec.ctx, timed_steps: spec.timed_steps };
        let report = audit_masks(model, tokens, &plan, MaskAudit::new(profile, spec.sparsity)?, opts, || {})?;
        let popts = PplOptions { ctx: spec.ctx, windows: Some(windows) };
        out.push((report, affinity(model, tokens, popts, Some(&plan), spec.ks)?));
        on_method();
    }
    Ok(out)
}

/// Heat maps of recall (layer x method) against each reference, in `dir`.
pub(crate) fn heatmaps(dir: &Path, reports: &[MaskReport], s: f32) -> Result<Vec<PathBuf>> {
    let names: Vec<String> = reports.iter().map(|r| r.method.clone()).collect();
    let mut plots = Vec::new();
    for reference in ["teal", "cats", "cett"] {
        let values: Vec<Vec<f64>> =
            reports.iter().map(|r| r.layers.iter().map(|l| l.against[reference].recall).collect()).collect();
        let title = format!("MLP mask recall against {reference} at sparsity {s} (pale 0, dark 1)");
        plots.extend(heatmap(dir, &format!("recall_vs_{reference}"), &title, &names, &values)?);
    }
    Ok(plots)
}

/// The markdown table: achieved sparsity, recall / precision against each reference, reuse
/// and aggregated sparsity per method.
pub(crate) fn table(reports: &[MaskReport], affinities: &[Affinity], ks: &[usize]) -> String {
    let heads: Vec<String> = ks.iter().map(|k| format!("sparsity of last {k}")).collect();
    let mut t = format!(
        "| method | achieved | vs teal | vs cats | vs cett | reuse from previous token | {} |\n|---|---|---|---|---|---|{}\n",
        heads.join(" | "),
        "---|".repeat(heads.len())
    );
    for (r, af) in reports.iter().zip(affinities) {
        let rp = |k: &str| r.overall.get(k).map_or("-".into(), |m| format!("{:.3} / {:.3}", m.recall, m.precision));
        let agg: Vec<String> = af.aggregated.iter().map(|(_, v)| format!("{v:.3}")).collect();
        t += &format!(
            "| {} | {:.3} | {} | {} | {} | {:.3} | {} |\n",
            r.method,
            r.achieved_sparsity,
            rp("teal"),
            rp("cats"),
            rp("cett"),
            af.reuse,
            agg.join(" | ")
        );
    }
    t
}
