//! `sieve eval sweep | ppl-p | ab`: quality against sparsity and speed, for several methods
//! on the same corpus windows (dense runs once per window and is every method's reference).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sieve_engine::sparsity::{Method, SparsityPlan, check_target};
use sieve_engine::{Model, Precision};
use sieve_eval::ab::{Verdict, paired_bootstrap};
use sieve_eval::bench::{BenchOptions, bench_decode, paired_decode};
use sieve_eval::corpus::tokenize_file;
use sieve_eval::perplexity::{PplOptions, perplexity, plan as window_count};
use sieve_eval::plot::{Chart, Series, check_dir, line_chart};
use sieve_eval::search::{PplPPoint, ppl_p};
use sieve_eval::windows::{MethodScores, score_windows};

/// What every trade-off command reads.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// UTF-8 text to score.
    #[arg(long)]
    corpus: PathBuf,
    /// Tokens per window.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Windows scored.
    #[arg(long, default_value_t = 10)]
    windows: usize,
    /// Decode steps timed per point against dense, taking turns (0: no speed measurement).
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Weight precision of every point, scoring and decoding: fast (the GGUF's Q4_1, int8
    /// activations) or f32 (the reference, where skipped rows save their whole cost).
    #[arg(long, default_value = "fast")]
    precision: Precision,
    /// Calibration profile (default: the one `sieve calibrate` wrote for this model).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Predictor set for the predictor methods (default: beside the profile).
    #[arg(long)]
    predictors: Option<PathBuf>,
    /// Also draw the plots into this directory (SVG and PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Lines of `y` against `x`, one per method (dense, a single point, is left out).
pub(crate) fn series(points: &[Point], x: impl Fn(&Point) -> f64, y: impl Fn(&Point) -> f64) -> Vec<Series> {
    Series::group(points.iter().filter(|p| p.method != "dense").map(|p| (p.method.clone(), (x(p), y(p)))))
}

/// Arguments of `sieve eval sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    #[command(flatten)]
    common: Common,
    /// Methods to sweep.
    #[arg(long, value_delimiter = ',', default_value = "teal,teal-uniform,cats,cett")]
    methods: Vec<Method>,
    /// Target sparsities.
    #[arg(long, value_delimiter = ',', default_value = "0.25,0.4,0.5,0.6,0.7")]
    sparsities: Vec<f32>,
}

/// Arguments of `sieve eval ppl-p`.
#[derive(Debug, clap::Args)]
pub struct PplPArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, value_delimiter = ',', default_value = "teal,cats,cett")]
    methods: Vec<Method>,
    /// Allowed perplexity rises over dense, percent.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    p: Vec<f64>,
    /// The search stops when the bracket is narrower than this (in sparsity).
    #[arg(long, default_value_t = 0.01)]
    tolerance: f32,
    /// Highest sparsity searched.
    #[arg(long, default_value_t = 0.9)]
    ceiling: f32,
}

/// Arguments of `sieve eval ab`.
#[derive(Debug, clap::Args)]
pub struct AbArgs {
    #[command(flatten)]
    common: Common,
    /// Method A as METHOD:SPARSITY, e.g. cats:0.5.
    #[arg(long)]
    a: String,
    /// Method B as METHOD:SPARSITY.
    #[arg(long)]
    b: String,
    /// Bootstrap resamples of the windows.
    #[arg(long, default_value_t = 2000)]
    resamples: usize,
    /// Runs of A against B, steps paired (each `--decode-tokens` steps), for the speed axis.
    #[arg(long, default_value_t = 3)]
    speed_runs: usize,
    /// Perplexities within this fraction of each other count as equal in the dominance verdict.
    #[arg(long, default_value_t = 0.005)]
    ppl_band: f64,
}

/// Where the trade-off commands read from.
pub(crate) struct Inputs<'a> {
    pub corpus: &'a Path,
    pub ctx: usize,
    pub windows: usize,
    pub precision: Precision,
    pub profile: Option<&'a Path>,
    pub predictors: Option<&'a Path>,
    pub plot: Option<&'a Path>,
}

impl<'a> From<&'a Common> for Inputs<'a> {
    fn from(c: &'a Common) -> Self {
        Inputs {
            corpus: &c.corpus,
            ctx: c.ctx,
            windows: c.windows,
            precision: c.precision,
            profile: c.profile.as_deref(),
            predictors: c.predictors.as_deref(),
            plot: c.plot.as_deref(),
        }
    }
}

/// Loaded model, tokens and what makes plans.
pub(crate) struct Setup {
    pub model: Model,
    pub tokenizer: sieve_engine::tokenizer::Tokenizer,
    pub tokens: Vec<u32>,
    pub opts: PplOptions,
    pub profile: Option<sieve_engine::profile::Profile>,
    pub predictors: Option<Arc<sieve_predictor::PredictorSet>>,
}

impl Setup {
    fn load(model_path: &Path, c: &Common, methods: &[Method]) -> Result<Self> {
        Self::open(model_path, &Inputs::from(c), methods)
    }

    /// Checks the plot directory and the corpus, then loads the model, the profile (when a
    /// sparse method is asked for) and the predictors (when a predictor method is).
    pub fn open(model_path: &Path, c: &Inputs, methods: &[Method]) -> Result<Self> {
        if let Some(dir) = c.plot {
            check_dir(dir)?;
        }
        let tokenizer = super::load_tokenizer(model_path)?;
        let tokens = tokenize_file(&tokenizer, c.corpus)?;
        let opts = PplOptions { ctx: c.ctx, windows: Some(c.windows) };
        window_count(tokens.len(), opts, usize::MAX).with_context(|| format!("corpus {}", c.corpus.display()))?;
        let (_, model) = super::load(model_path, c.precision)?;
        let sparse = methods.iter().any(|&m| m != Method::Dense);
        let profile = if sparse { Some(super::load_profile(model_path, &model, c.profile)?) } else { None };
        let predictors = if methods.iter().any(|m| m.needs_predictors()) {
            Some(Arc::new(super::load_predictors(model_path, &model, c.profile, c.predictors)?))
        } else {
            None
        };
        Ok(Self { model, tokenizer, tokens, opts, profile, predictors })
    }

    /// The plan of `method` at `s` from the loaded profile, prepared for the sparse kernels
    /// (`None`: dense).
    pub fn plan(&self, method: Method, s: f32) -> Result<Option<SparsityPlan>> {
        check_target(s)?;
        let Some(profile) = self.profile.as_ref().filter(|_| method != Method::Dense) else { return Ok(None) };
        let plan = profile.plan_with_predictors(method, s, self.predictors.clone())?;
        self.model.prepare_sparse(&plan)?;
        Ok(Some(plan))
    }

    /// Decode tok/s of the plan, its speedup over dense (taking turns step by step) and the
    /// speedup the bytes it reads allow.
    pub fn speed(&self, plan: Option<&SparsityPlan>, steps: usize) -> Result<Speed> {
        if steps == 0 {
            return Ok(Speed { tok_s: 0.0, speedup: 0.0, bound: 0.0 });
        }
        let text = self.tokens.get(..256).unwrap_or(&self.tokens);
        let opts =
            BenchOptions { prompt_tokens: 64.min(text.len() - 1), new_tokens: steps, runs: 1, plan: plan.cloned() };
        let r = bench_decode(&self.model, text, opts, || {})?;
        Ok(Speed {
            tok_s: r.decode_tok_s,
            speedup: r.dense.map_or(1.0, |d| d.decode_speedup),
            bound: r.traffic.map_or(1.0, |t| t.bound_speedup),
        })
    }

    /// Decode speed of two plans against each other, taking turns step by step.
    pub fn paired_speed(
        &self,
        plans: [Option<&SparsityPlan>; 2],
        steps: usize,
        runs: usize,
    ) -> Result<sieve_eval::bench::PairedDecode> {
        let text = self.tokens.get(..256).unwrap_or(&self.tokens);
        Ok(paired_decode(&self.model, text, plans, 64.min(text.len() - 1), steps, runs)?)
    }
}

/// What [`Setup::speed`] measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Speed {
    /// Decode tok/s.
    pub tok_s: f64,
    /// Decode speedup over dense, steps paired.
    pub speedup: f64,
    /// The speedup the bytes a step reads allow at equal bandwidth (1 for dense).
    pub bound: f64,
}

/// One (method, sparsity) point.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub method: String,
    pub sparsity: f32,
    pub perplexity: f64,
    pub kl_vs_dense: f64,
    pub top1_agreement: f64,
    pub achieved_sparsity: f64,
    pub decode_tok_s: f64,
    pub speedup: f64,
    /// The speedup the bytes a decode step reads allow at equal bandwidth.
    pub bound_speedup: f64,
}

/// A point's quality figures from its scores, with its measured speed.
pub(crate) fn point(m: &MethodScores, speed: Speed) -> Point {
    let t = m.total();
    Point {
        method: m.method.clone(),
        sparsity: m.sparsity,
        perplexity: t.perplexity(),
        kl_vs_dense: t.mean_kl(),
        top1_agreement: t.agreement(),
        achieved_sparsity: m.achieved_sparsity,
        decode_tok_s: speed.tok_s,
        speedup: speed.speedup,
        bound_speedup: speed.bound,
    }
}

/// The markdown table of `points`.
pub(crate) fn points_table(points: &[Point]) -> String {
    let mut t = String::from(
        "| method | sparsity | perplexity | KL vs dense | top-1 agreement | achieved | decode tok/s | speedup | bytes allow |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for p in points {
        t += &format!(
            "| {} | {:.2} | {:.3} | {:.4} | {:.3} | {:.3} | {:.1} | {:.2}x | {:.2}x |\n",
            p.method,
            p.sparsity,
            p.perplexity,
            p.kl_vs_dense,
            p.top1_agreement,
            p.achieved_sparsity,
            p.decode_tok_s,
            p.speedup,
            p.bound_speedup
        );
    }
    t
}

/// Runs `sieve eval sweep`.
pub fn sweep(model_path: &Path, a: SweepArgs) -> Result<()> {
    if a.sparsities.is_empty() || a.methods.is_empty() {
        bail!("--methods and --sparsities need at least one value each");
    }
    for &s in &a.sparsities {
        if !(s > 0.0 && s < 1.0) {
            bail!("--sparsities: {s} must be in (0, 1)");
        }
    }
    let setup = Setup::load(model_path, &a.common, &a.methods)?;
    let mut plans = Vec::new();
    for &m in a.methods.iter().filter(|&&m| m != Method::Dense) {
        for &s in &a.sparsities {
            plans.push(setup.plan(m, s)?);
        }
    }
    let refs: Vec<Option<&SparsityPlan>> = plans.iter().map(Option::as_ref).collect();
    let bar = super::progress(a.common.windows as u64, "sweep (perplexity)");
    let (dense, scores) = score_windows(&setup.model, &setup.tokens, setup.opts, &refs, || bar.inc(1))?;
    bar.finish_and_clear();
    let bar = super::progress(plans.len() as u64, "sweep (decode speed)");
    let mut points = vec![point(&dense, setup.speed(None, a.common.decode_tokens)?)];
    for (m, plan) in scores.iter().zip(&plans) {
        points.push(point(m, setup.speed(plan.as_ref(), a.common.decode_tokens)?));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut plots = Vec::new();
    if let Some(dir) = &a.common.plot {
        let by_sparsity = series(&points, |p| p.achieved_sparsity, |p| p.perplexity);
        let title = format!("perplexity vs achieved sparsity (dense {:.2})", points[0].perplexity);
        let chart = Chart { title: &title, x_label: "achieved sparsity", y_label: "perplexity", series: &by_sparsity };
        plots.extend(line_chart(dir, "ppl_vs_sparsity", &chart)?);
        let by_speed = series(&points, |p| p.decode_tok_s, |p| p.perplexity);
        let title = format!("perplexity vs decode tok/s (dense {:.1} tok/s)", points[0].decode_tok_s);
        let chart = Chart { title: &title, x_label: "decode tok/s", y_label: "perplexity", series: &by_speed };
        plots.extend(line_chart(dir, "ppl_vs_tok_s", &chart)?);
    }
    if a.common.json {
        return super::print_json(
            &serde_json::json!({ "points": points, "precision": a.common.precision, "plots": plots }),
        );
    }
    println!("{:?} precision, {} windows x {}", a.common.precision, a.common.windows, a.common.ctx);
    print!("{}", points_table(&points));
    for p in &plots {
        println!("plot: {}", p.display());
    }
    Ok(())
}

#[derive(Serialize)]
struct PplPRow {
    method: String,
    #[serde(flatten)]
    point: PplPPoint,
    decode_tok_s: f64,
    speedup: f64,
}

/// Runs `sieve eval ppl-p`.
pub fn ppl_p_search(model_path: &Path, a: PplPArgs) -> Result<()> {
    if a.p.is_empty() || a.p.iter().any(|&p| !p.is_finite() || p <= 0.0) {
        bail!("--p: every value must be above 0 (got {:?})", a.p);
    }
    if a.methods.is_empty() || a.methods.contains(&Method::Dense) {
        bail!("--methods: give sparse methods (dense is the reference)");
    }
    let setup = Setup::load(model_path, &a.common, &a.methods)?;
    let dense = perplexity(&setup.model, &setup.tokens, setup.opts, None, || {})?.perplexity;
    let bar = super::progress(a.methods.len() as u64, "ppl-p search");
    let mut rows = Vec::new();
    for &m in &a.methods {
        let points = ppl_p(dense, &a.p, a.ceiling, a.tolerance, |s| {
            let plan = setup.plan(m, s).map_err(|e| sieve_eval::EvalError::InvalidOption(format!("{e:#}")))?;
            Ok(perplexity(&setup.model, &setup.tokens, setup.opts, plan.as_ref(), || {})?.perplexity)
        })?;
        for point in points {
            let plan = setup.plan(m, point.sparsity)?;
            let speed = setup.speed(plan.as_ref(), a.common.decode_tokens)?;
            rows.push(PplPRow { method: m.name().into(), point, decode_tok_s: speed.tok_s, speedup: speed.speedup });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut plots = Vec::new();
    if let Some(dir) = &a.common.plot {
        let lines = Series::group(rows.iter().map(|r| (r.method.clone(), (r.point.p, r.point.sparsity as f64))));
        let chart = Chart {
            title: "PPL-p% sparsity",
            x_label: "p (% perplexity over dense)",
            y_label: "sparsity",
            series: &lines,
        };
        plots.extend(line_chart(dir, "ppl_p", &chart)?);
    }
    if a.common.json {
        return super::print_json(&serde_json::json!({
            "dense_perplexity": dense, "precision": a.common.precision, "rows": rows, "plots": plots,
        }));
    }
    println!(
        "dense perplexity {dense:.3} ({} windows x {}); bisection to a bracket of {} in sparsity: the budget holds at `sparsity` and fails at `over at`",
        a.common.windows, a.common.ctx, a.tolerance
    );
    println!("| method | p | budget | sparsity | perplexity | over at | perplexity there | decode tok/s | speedup |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let p = &r.point;
        println!(
            "| {} | {}% | {:.3} | {:.3} | {:.3} | {} | {} | {:.1} | {:.2}x |",
            r.method,
            p.p,
            p.budget,
            p.sparsity,
            p.perplexity,
            p.over_at.map_or("-".into(), |s| format!("{s:.3}")),
            p.over_perplexity.map_or("-".into(), |v| format!("{v:.3}")),
            r.decode_tok_s,
            r.speedup
        );
    }
    Ok(())
}

/// Runs `sieve eval ab`.
pub fn ab(model_path: &Path, a: AbArgs) -> Result<()> {
    let (ma, sa) = super::parse_method_at("--a", &a.a)?;
    let (mb, sb) = super::parse_method_at("--b", &a.b)?;
    if a.speed_runs == 0 {
        bail!("--speed-runs must be at least 1");
    }
    if !(0.0..1.0).contains(&a.ppl_band) {
        bail!("--ppl-band: {} must be in [0, 1)", a.ppl_band);
    }
    let setup = Setup::load(model_path, &a.common, &[ma, mb])?;
    let plans = [setup.plan(ma, sa)?, setup.plan(mb, sb)?];
    let refs: Vec<Option<&SparsityPlan>> = plans.iter().map(Option::as_ref).collect();
    let bar = super::progress(a.common.windows as u64, "A/B");
    let (_, scores) = score_windows(&setup.model, &setup.tokens, setup.opts, &refs, || bar.inc(1))?;
    bar.finish_and_clear();
    let verdict: Verdict = paired_bootstrap(&scores[0].per_window, &scores[1].per_window, a.resamples, 0x5eed)?;
    let points: Vec<Point> = scores
        .iter()
        .zip(&plans)
        .map(|(m, p)| Ok(point(m, setup.speed(p.as_ref(), a.common.decode_tokens)?)))
        .collect::<Result<_>>()?;
    let paired = match a.common.decode_tokens {
        0 => None,
        steps => Some(setup.paired_speed([plans[0].as_ref(), plans[1].as_ref()], steps, a.speed_runs)?),
    };
    let dominance = match &paired {
        Some(p) => Some(sieve_eval::ab::dominance(verdict.ppl_ratio, &p.a_over_b, a.ppl_band)?),
        None => None,
    };
    let layers: Vec<Vec<f64>> = scores
        .iter()
        .map(|m| (0..m.stats.layers()).map(|l| m.stats.layer(l, sieve_engine::sparsity::Proj::Down)).collect())
        .collect();
    let mut plots = Vec::new();
    if let Some(dir) = &a.common.plot {
        let names = [format!("A {}", a.a), format!("B {}", a.b)];
        let by_layer: Vec<Series> = names
            .iter()
            .zip(&layers)
            .map(|(n, l)| Series {
                name: n.clone(),
                points: l.iter().enumerate().map(|(i, &v)| (i as f64, v)).collect(),
            })
            .collect();
        let chart = Chart {
            title: "MLP (down input) sparsity by layer",
            x_label: "layer",
            y_label: "sparsity",
            series: &by_layer,
        };
        plots.extend(line_chart(dir, "ab_sparsity_by_layer", &chart)?);
        let by_window: Vec<Series> = names
            .iter()
            .zip(&scores)
            .map(|(n, m)| Series {
                name: n.clone(),
                points: m.per_window.iter().enumerate().map(|(i, w)| (i as f64, w.perplexity())).collect(),
            })
            .collect();
        let title = format!(
            "perplexity per window: PPL(A)/PPL(B) = {:.4} [{:.4}, {:.4}]",
            verdict.ppl_ratio, verdict.ci_low, verdict.ci_high
        );
        let chart = Chart { title: &title, x_label: "window", y_label: "perplexity", series: &by_window };
        plots.extend(line_chart(dir, "ab_ppl_per_window", &chart)?);
    }
    if a.common.json {
        return super::print_json(&serde_json::json!({
            "a": points[0], "b": points[1], "verdict": verdict, "precision": a.common.precision,
            "paired_decode": paired, "dominance": dominance,
            "down_input_sparsity_by_layer": layers, "plots": plots,
        }));
    }
    print!("{}", points_table(&points));
    let what = match verdict.better.as_str() {
        "A" => format!("A ({}) has the lower perplexity", a.a),
        "B" => format!("B ({}) has the lower perplexity", a.b),
        _ => "no significant perplexity difference".into(),
    };
    println!(
        "PPL(A)/PPL(B) = {:.4}, 95% paired-bootstrap interval over {} windows [{:.4}, {:.4}] ({} resamples): {what}",
        verdict.ppl_ratio, a.common.windows, verdict.ci_low, verdict.ci_high, verdict.resamples
    );
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
    if let (Some(p), Some(d)) = (&paired, &dominance) {
        println!(
            "decode, A and B taking turns ({} runs of {} steps, {:?} precision): A {:.1} tok/s, B {:.1} tok/s, A over B {:.3}x (runs {})",
            a.speed_runs,
            a.common.decode_tokens,
            a.common.precision,
            p.a_tok_s,
            p.b_tok_s,
            p.mean_a_over_b(),
            fmt(&p.a_over_b)
        );
        println!(
            "on (perplexity, decode speed): {} (lower perplexity: {}, perplexities within {:.1}% equal; faster in every run: {})",
            d.verdict,
            d.quality,
            100.0 * d.ppl_band,
            d.speed
        );
    }
    println!("MLP (down input) sparsity by layer, A: {}", fmt(&layers[0]));
    println!("MLP (down input) sparsity by layer, B: {}", fmt(&layers[1]));
    for p in &plots {
        println!("plot: {}", p.display());
    }
    Ok(())
}
