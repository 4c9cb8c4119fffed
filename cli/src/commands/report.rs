//! `sieve eval report`: every evaluation of the current profile in one run, written as one
//! markdown file that stands alone (plots embedded as PNG data URIs): the sweep, PPL-p%
//! sparsity read off the sweep, A/B verdicts, the mask audit with hardware affinity, and
//! calibration robustness (profiles calibrated on different text, scored on the same windows).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sieve_engine::Precision;
use sieve_engine::profile::{Profile, default_profile_path};
use sieve_engine::sparsity::{Method, SparsityPlan};
use sieve_eval::ab::{Verdict, paired_bootstrap};
use sieve_eval::affinity::Affinity;
use sieve_eval::masks::MaskReport;
use sieve_eval::perplexity::PplOptions;
use sieve_eval::search::{InterpolatedPoint, interpolate_ppl_p};
use sieve_eval::windows::{MethodScores, score_windows};

use super::calibrate::{CalibrationSpec, make_profile};
use super::masks_table::{AuditSpec, audit_methods};
use super::tradeoff::{Inputs, Point, Setup, point};

/// Arguments of `sieve eval report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// UTF-8 text the windows are cut from (e.g. WikiText-2 test).
    #[arg(long)]
    pub corpus: PathBuf,
    /// The markdown file to write.
    #[arg(long, default_value = "sieve-report.md")]
    pub out: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Windows scored by the sweep.
    #[arg(long, default_value_t = 40)]
    pub windows: usize,
    /// Sparse methods (dense is always the reference).
    #[arg(long, value_delimiter = ',', default_value = "teal,cats,cett,predictor")]
    pub methods: Vec<Method>,
    /// Target sparsities of the sweep.
    #[arg(long, value_delimiter = ',', default_value = "0.1,0.25,0.4,0.5,0.7")]
    pub sparsities: Vec<f32>,
    /// PPL-p% budgets, percent over dense.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    pub p: Vec<f64>,
    /// Decode steps timed per point against dense, taking turns (0: no speed measurement).
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Target sparsity of the mask audit and the robustness comparison.
    #[arg(long, default_value_t = 0.5)]
    pub audit_sparsity: f32,
    /// Positions of the mask audit.
    #[arg(long, default_value_t = 512)]
    pub audit_positions: usize,
    /// Window sizes k of the aggregated sparsity.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub affinity_k: Vec<usize>,
    /// Text for a corpus-calibrated profile in the robustness section (e.g. WikiText-2
    /// validation); a self-generated profile is always made.
    #[arg(long)]
    pub calibration_corpus: Option<PathBuf>,
    /// Tokens of each fresh calibration.
    #[arg(long, default_value_t = 8192)]
    pub calibration_tokens: usize,
    /// Windows (the first of the sweep's) scored per profile for robustness; 0 skips it
    /// [default: 10, or --windows if fewer].
    #[arg(long)]
    pub robustness_windows: Option<usize>,
    /// Calibration profile (default: the one `sieve calibrate` wrote for this model).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Predictor set (default: beside the profile).
    #[arg(long)]
    pub predictors: Option<PathBuf>,
    /// Also keep the plots (SVG and PNG) in this directory.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the report's data as JSON on stdout as well.
    #[arg(long)]
    pub json: bool,
}

/// A PPL-p% point of one method, with the speed measured at it.
#[derive(Debug, Serialize)]
pub(crate) struct PplPRow {
    pub method: String,
    #[serde(flatten)]
    pub point: InterpolatedPoint,
    pub decode_tok_s: f64,
    pub speedup: f64,
}

/// One A/B comparison on the sweep's windows.
#[derive(Debug, Serialize)]
pub(crate) struct AbRow {
    pub a: String,
    pub b: String,
    pub sparsity: f32,
    pub verdict: Verdict,
}

/// One profile's quality at the audit sparsity.
#[derive(Debug, Serialize)]
pub(crate) struct RobustnessRow {
    pub profile: String,
    pub source: String,
    pub tokens: usize,
    pub method: String,
    pub perplexity: f64,
    pub kl_vs_dense: f64,
    pub top1_agreement: f64,
}

/// The robustness section.
#[derive(Debug, Serialize)]
pub(crate) struct Robustness {
    pub windows: usize,
    pub sparsity: f32,
    pub dense_perplexity: f64,
    pub rows: Vec<RobustnessRow>,
}

/// Everything the report shows.
#[derive(Debug, Serialize)]
pub(crate) struct ReportData {
    pub command: String,
    pub model: String,
    pub model_name: String,
    pub corpus: String,
    pub windows: usize,
    pub ctx: usize,
    pub profile: String,
    pub profile_source: String,
    pub profile_tokens: usize,
    pub threads: usize,
    pub decode_tokens: usize,
    pub notes: Vec<String>,
    pub sweep: Vec<Point>,
    pub ppl_p: Vec<PplPRow>,
    /// TEAL's published Llama-3-8B WikiText perplexities, read by the same interpolation.
    pub teal_llama3_8b: Vec<InterpolatedPoint>,
    pub ab: Vec<AbRow>,
    pub audit_sparsity: f32,
    pub audit_positions: usize,
    pub affinity_k: Vec<usize>,
    pub masks: Vec<MaskReport>,
    pub affinity: Vec<Affinity>,
    pub robustness: Option<Robustness>,
    /// Seconds per section.
    pub seconds: BTreeMap<&'static str, f64>,
    pub total_seconds: f64,
}

/// TEAL's Llama-3-8B WikiText perplexity at 0 / 25 / 40 / 50% (methods.md).
pub(crate) const TEAL_LLAMA3_8B: [(f32, f64); 4] = [(0.0, 5.87), (0.25, 5.94), (0.4, 6.21), (0.5, 6.67)];

fn validate(a: &ReportArgs) -> Result<()> {
    if a.methods.is_empty() || a.methods.contains(&Method::Dense) {
        bail!("--methods: give sparse methods (dense is always the reference)");
    }
    if a.sparsities.is_empty() || a.sparsities.iter().any(|&s| !(s > 0.0 && s < 1.0)) {
        bail!("--sparsities: give at least one value, each in (0, 1) (got {:?})", a.sparsities);
    }
    if a.p.is_empty() || a.p.iter().any(|&p| !p.is_finite() || p <= 0.0) {
        bail!("--p: every value must be above 0 (got {:?})", a.p);
    }
    if !(a.audit_sparsity > 0.0 && a.audit_sparsity < 1.0) {
        bail!("--audit-sparsity {} must be in (0, 1)", a.audit_sparsity);
    }
    if a.affinity_k.is_empty() || a.affinity_k.contains(&0) {
        bail!("--affinity-k: window sizes must be at least 1");
    }
    if a.windows == 0 || a.robustness_windows.is_some_and(|r| r > a.windows) {
        bail!("--windows must be at least 1 and --robustness-windows at most --windows");
    }
    if robustness_windows(a) > 0 && a.calibration_tokens < 16 {
        bail!("--calibration-tokens must be at least 16");
    }
    let dir = a.out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sieve_eval::plot::check_dir(dir).with_context(|| format!("--out {}", a.out.display()))?;
    Ok(())
}

/// Windows of the robustness section.
fn robustness_windows(a: &ReportArgs) -> usize {
    a.robustness_windows.unwrap_or(a.windows.min(10))
}

/// Runs `sieve eval report`.
pub fn run(model_path: &Path, a: ReportArgs) -> Result<()> {
    validate(&a)?;
    let t0 = Instant::now();
    let mut seconds = BTreeMap::new();
    let mut notes = Vec::new();
    let mut methods = a.methods.clone();
    let inputs = Inputs {
        corpus: &a.corpus,
        ctx: a.ctx,
        windows: a.windows,
        precision: Precision::Fast,
        profile: a.profile.as_deref(),
        predictors: a.predictors.as_deref(),
        plot: a.plot.as_deref(),
    };
    // The profile is always loaded (the audit and robustness need it); predictors only if found.
    let mut setup = Setup::open(model_path, &inputs, &[Method::Teal])?;
    if methods.iter().any(|m| m.needs_predictors()) {
        match super::load_predictors(model_path, &setup.model, a.profile.as_deref(), a.predictors.as_deref()) {
            Ok(set) => setup.predictors = Some(Arc::new(set)),
            Err(e) => {
                let why = format!("predictor methods left out: {e:#} (make them with `sieve train-predictors`)");
                tracing::warn!("{why}");
                notes.push(why);
                methods.retain(|m| !m.needs_predictors());
            }
        }
    }
    let Some(profile) = setup.profile.as_ref() else { bail!("no profile loaded") };
    let profile_path = a.profile.clone().unwrap_or_else(|| default_profile_path(model_path));
    let (profile_source, profile_tokens) = (profile.source.clone(), profile.tokens);

    // Sweep: dense once per window, every (method, sparsity) on the same windows.
    let mut plans: Vec<Option<SparsityPlan>> = Vec::new();
    for &m in &methods {
        for &s in &a.sparsities {
            plans.push(setup.plan(m, s)?);
        }
    }
    let refs: Vec<Option<&SparsityPlan>> = plans.iter().map(Option::as_ref).collect();
    let section = Instant::now();
    let bar = super::progress(a.windows as u64, &format!("report: {} settings on each window", plans.len() + 1));
    let (dense, scores) = score_windows(&setup.model, &setup.tokens, setup.opts, &refs, || bar.inc(1))?;
    bar.finish_and_clear();
    seconds.insert("sweep_quality", section.elapsed().as_secs_f64());

    let section = Instant::now();
    let bar = super::progress(plans.len() as u64 + 1, "report: decode speed");
    let mut sweep = vec![point(&dense, setup.speed(None, a.decode_tokens)?)];
    for (m, plan) in scores.iter().zip(&plans) {
        sweep.push(point(m, setup.speed(plan.as_ref(), a.decode_tokens)?));
        bar.inc(1);
    }
    bar.finish_and_clear();
    seconds.insert("sweep_speed", section.elapsed().as_secs_f64());

    let section = Instant::now();
    let ppl_p = ppl_p_rows(&setup, &sweep, &methods, &a.p, a.decode_tokens)?;
    let teal_llama3_8b =
        a.p.iter()
            .map(|&p| interpolate_ppl_p(TEAL_LLAMA3_8B[0].1, &TEAL_LLAMA3_8B[1..], p))
            .collect::<Result<Vec<_>, _>>()?;
    seconds.insert("ppl_p", section.elapsed().as_secs_f64());
    let ab = ab_rows(&scores, &methods)?;

    let section = Instant::now();
    let spec = AuditSpec {
        sparsity: a.audit_sparsity,
        positions: a.audit_positions,
        ctx: a.ctx.min(a.audit_positions.max(16)),
        timed_steps: 0,
        ks: &a.affinity_k,
    };
    let bar = super::progress(methods.len() as u64, "report: mask audit");
    let audits =
        audit_methods(&setup.model, &setup.tokens, profile, setup.predictors.clone(), &methods, &spec, || bar.inc(1))?;
    bar.finish_and_clear();
    let (masks, affinity): (Vec<MaskReport>, Vec<Affinity>) = audits.into_iter().unzip();
    seconds.insert("masks", section.elapsed().as_secs_f64());

    let section = Instant::now();
    let robustness = if robustness_windows(&a) > 0 { Some(robustness(model_path, &setup, profile, &a)?) } else { None };
    seconds.insert("robustness", section.elapsed().as_secs_f64());

    let data = ReportData {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        model: model_path.display().to_string(),
        model_name: setup.model.config().name.clone(),
        corpus: a.corpus.display().to_string(),
        windows: a.windows,
        ctx: a.ctx,
        profile: profile_path.display().to_string(),
        profile_source,
        profile_tokens,
        threads: sieve_kernels::pool::global().threads(),
        decode_tokens: a.decode_tokens,
        notes,
        sweep,
        ppl_p,
        teal_llama3_8b,
        ab,
        audit_sparsity: a.audit_sparsity,
        audit_positions: a.audit_positions,
        affinity_k: a.affinity_k.clone(),
        masks,
        affinity,
        robustness,
        total_seconds: t0.elapsed().as_secs_f64(),
        seconds,
    };
    let markdown = super::report_md::render(&data, a.plot.as_deref())?;
    std::fs::write(&a.out, markdown).with_context(|| format!("writing {}", a.out.display()))?;
    if a.json {
        return super::print_json(&data);
    }
    println!("report written to {} in {:.1} min", a.out.display(), data.total_seconds / 60.0);
    Ok(())
}

/// PPL-p% of each method, interpolated on its sweep curve, with the speed measured there.
fn ppl_p_rows(setup: &Setup, sweep: &[Point], methods: &[Method], ps: &[f64], steps: usize) -> Result<Vec<PplPRow>> {
    let dense = sweep[0].perplexity;
    let mut rows = Vec::new();
    for &m in methods {
        let curve: Vec<(f32, f64)> =
            sweep.iter().filter(|p| p.method == m.name()).map(|p| (p.sparsity, p.perplexity)).collect();
        for &p in ps {
            let point = interpolate_ppl_p(dense, &curve, p)?;
            let (decode_tok_s, speedup) = if point.sparsity > 0.0 {
                let plan = setup.plan(m, point.sparsity)?;
                let speed = setup.speed(plan.as_ref(), steps)?;
                (speed.tok_s, speed.speedup)
            } else {
                (sweep[0].decode_tok_s, 1.0)
            };
            rows.push(PplPRow { method: m.name().into(), point, decode_tok_s, speedup });
        }
    }
    Ok(rows)
}

/// Every method against the first one (TEAL by default) at each sparsity, paired over windows.
fn ab_rows(scores: &[MethodScores], methods: &[Method]) -> Result<Vec<AbRow>> {
    let Some(base) = methods.first() else { return Ok(Vec::new()) };
    let mut rows = Vec::new();
    for b in scores.iter().filter(|s| s.method == base.name()) {
        for a in scores.iter().filter(|s| s.method != base.name() && s.sparsity == b.sparsity) {
            let verdict = paired_bootstrap(&a.per_window, &b.per_window, 2000, 0x5eed)?;
            rows.push(AbRow { a: a.method.clone(), b: b.method.clone(), sparsity: a.sparsity, verdict });
        }
    }
    Ok(rows)
}

/// TEAL and CATS at the audit sparsity under the report's profile and fresh profiles
/// calibrated on self-generated text (and on `--calibration-corpus`), on the first windows.
fn robustness(model_path: &Path, setup: &Setup, profile: &Profile, a: &ReportArgs) -> Result<Robustness> {
    fn spec<'a>(corpus: Option<&'a Path>, a: &ReportArgs, context_len: usize) -> CalibrationSpec<'a> {
        CalibrationSpec {
            corpus,
            tokens: a.calibration_tokens,
            window: a.ctx.min(context_len),
            greedy_tokens: sieve_engine::greedy::SAMPLE_TOKENS.min(a.ctx),
            seed: 0,
        }
    }
    let context_len = setup.model.config().context_len;
    let mut profiles: Vec<(String, Profile)> = Vec::new();
    if let Some(corpus) = a.calibration_corpus.as_deref() {
        let fresh = make_profile(model_path, &setup.tokenizer, &setup.model, &spec(Some(corpus), a, context_len))
            .with_context(|| format!("--calibration-corpus {}", corpus.display()))?;
        profiles.push(("fresh, corpus".into(), fresh));
    }
    profiles.push((
        "fresh, self-generated".into(),
        make_profile(model_path, &setup.tokenizer, &setup.model, &spec(None, a, context_len))?,
    ));
    let methods = [Method::Teal, Method::Cats];
    let mut plans = Vec::new();
    for p in std::iter::once(profile).chain(profiles.iter().map(|(_, p)| p)) {
        for m in methods {
            plans.push(p.plan_with_predictors(m, a.audit_sparsity, None)?);
        }
    }
    let refs: Vec<Option<&SparsityPlan>> = plans.iter().map(Some).collect();
    let windows = robustness_windows(a);
    let opts = PplOptions { ctx: a.ctx, windows: Some(windows) };
    let bar = super::progress(windows as u64, "report: calibration robustness");
    let (dense, scores) = score_windows(&setup.model, &setup.tokens, opts, &refs, || bar.inc(1))?;
    bar.finish_and_clear();
    let names =
        std::iter::once(("this report's".to_string(), profile)).chain(profiles.iter().map(|(n, p)| (n.clone(), p)));
    let mut rows = Vec::new();
    for ((name, p), chunk) in names.zip(scores.chunks(methods.len())) {
        for s in chunk {
            let t = s.total();
            rows.push(RobustnessRow {
                profile: name.clone(),
                source: p.source.clone(),
                tokens: p.tokens,
                method: s.method.clone(),
                perplexity: t.perplexity(),
                kl_vs_dense: t.mean_kl(),
                top1_agreement: t.agreement(),
            });
        }
    }
    Ok(Robustness { windows, sparsity: a.audit_sparsity, dense_perplexity: dense.total().perplexity(), rows })
}
