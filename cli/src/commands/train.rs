//! `sieve train-predictors`: traces the dense model over a corpus (or self-generated text),
//! fits one predictor per layer of the chosen family, picks each layer's rule on held-out
//! tokens, and writes the set beside the model's profile, with a per-layer report: recall,
//! precision and predicted sparsity at the rule, the predictivity curve against the SVD
//! anchor at the same rank, bytes against W_gate's, and predictor time against the MLP's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ndarray::ArrayView2;
use serde::Serialize;
use sieve_engine::calibrate::self_generated;
use sieve_engine::profile::file_sha256;
use sieve_engine::trace::{Trace, collect_trace};
use sieve_engine::weights::Prepared;
use sieve_engine::{Model, Precision};
use sieve_eval::corpus::tokenize_file;
use sieve_predictor::model::Scratch;
use sieve_predictor::rule::{CurvePoint, predictivity_curve};
use sieve_predictor::store::{LabelKind, Manifest, PREDICTOR_VERSION, Tap, predictor_dir};
use sieve_predictor::train::{
    Init, RuleChoice, TrainOptions, check_rank, finish, fit_gate_regression, fit_gate_regression_from_moment,
    fit_gate_svd, fit_lowbit, input_moment, neuron_scales, neuron_scales_from_moment, train_lowrank,
};
use sieve_predictor::{Body, Family, Labels, LayerPredictor, Output, PredictorSet};

/// Predicted sparsities of the predictivity curves.
const CURVE: [f64; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Arguments of `sieve train-predictors`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Training text (default: text the model generates itself from seeded starts).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Tokens traced (the last --val-fraction of them are held out).
    #[arg(long, default_value_t = 32_768)]
    tokens: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Predictor family: lowrank (DejaVu classifier), lowrank-g (gate regression), lowbit.
    #[arg(long, default_value = "lowrank-g")]
    family: Family,
    /// Rank of the low-rank families (1 to d_model).
    #[arg(long, default_value_t = 64)]
    rank: usize,
    /// Bits of the low-bit family (1 to 8). Up to 4 run in Q4_1 blocks (0.625 bytes per
    /// weight whatever the bits), more in int8: 4 is the most a Q4_1 block's bytes buy.
    #[arg(long, default_value_t = 4)]
    bits: u8,
    /// Input: this layer's MLP input, or the previous layer's (lookahead).
    #[arg(long, default_value = "mlp-input")]
    tap: Tap,
    /// Label: cats (|silu(g)| > t), teal (|h| > t on the down input) or cett (top importance).
    #[arg(long, default_value = "cats")]
    label: LabelKind,
    /// Target sparsity the labels are made at.
    #[arg(long, default_value_t = 0.5)]
    label_sparsity: f32,
    /// Recall each layer's threshold must reach on held-out tokens, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    target_recall: f64,
    /// Fraction of tokens held out for validation.
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Epochs of the lowrank family (early stopping may end sooner).
    #[arg(long, default_value_t = 12)]
    epochs: usize,
    /// ReLU between the two low-rank factors of the lowrank family.
    #[arg(long)]
    relu: bool,
    /// Start of the lowrank family: input-pca or random.
    #[arg(long, default_value = "input-pca", value_parser = parse_init)]
    init: Init,
    /// Calibration profile (default: the one `sieve calibrate` wrote for this model).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// A trace directory: reused when it matches the model, label and token count, else
    /// written (default: a fresh trace, not kept).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Where to write the predictor set (default: `predictors/` beside the profile).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_init(s: &str) -> Result<Init, String> {
    match s {
        "input-pca" => Ok(Init::InputPca),
        "random" => Ok(Init::Random),
        _ => Err(format!("unknown init {s:?} (input-pca, random)")),
    }
}

/// One layer's line of the report.
#[derive(Debug, Serialize)]
struct LayerReport {
    layer: usize,
    recall: f64,
    precision: f64,
    predicted_sparsity: f64,
    recall_at_half: f64,
    svd_recall_at_half: Option<f64>,
    bytes: usize,
    /// Predictor bytes over W_gate's as the model stores it.
    bytes_share_of_gate: f64,
    /// Predictor bytes over W_gate's in f32, what `--precision f32` reads.
    bytes_share_of_f32_gate: f64,
    /// Predictor bytes over the bytes of the layer's seven weight matrices.
    bytes_share_of_layer: f64,
    predictor_us: f64,
    mlp_us: f64,
    epochs: Option<usize>,
    /// Recall / precision at predicted sparsity 0.1 ... 0.9 on held-out tokens.
    curve: Vec<CurvePoint>,
    /// The same for the truncated SVD of W_gate at the same rank.
    svd_curve: Vec<CurvePoint>,
}

#[derive(Debug, Serialize)]
struct Report {
    out: String,
    family: Family,
    tap: Tap,
    label: LabelKind,
    label_sparsity: f32,
    target_recall: f64,
    train_tokens: usize,
    validation_tokens: usize,
    trace_seconds: f64,
    train_seconds: f64,
    mean_recall: f64,
    mean_precision: f64,
    mean_predicted_sparsity: f64,
    mean_recall_at_half: f64,
    mean_svd_recall_at_half: Option<f64>,
    layers: Vec<LayerReport>,
}

/// Runs `sieve train-predictors`.
pub fn run(model_path: &Path, a: Args) -> Result<()> {
    sieve_predictor::rule::check_recall(a.target_recall)?;
    sieve_predictor::model::check_bits(a.bits)?;
    sieve_engine::sparsity::check_target(a.label_sparsity)?;
    if a.label_sparsity == 0.0 {
        bail!("--label-sparsity must be above 0");
    }
    if !(a.val_fraction > 0.0 && a.val_fraction < 0.5) {
        bail!("--val-fraction must be in (0, 0.5)");
    }
    if a.window < 16 {
        bail!("--window must be at least 16");
    }
    let (tok, model) = super::load(model_path, Precision::Fast)?;
    let cfg = model.config().clone();
    if a.family != Family::Lowbit {
        check_rank(a.rank, cfg.d_model)?;
    }
    let val_tokens = (a.tokens as f64 * a.val_fraction).round() as usize;
    let min_tokens = 256;
    if a.tokens < min_tokens || val_tokens == 0 {
        bail!("too few tokens to train: --tokens {} (at least {min_tokens})", a.tokens);
    }
    if a.window > cfg.context_len {
        bail!("--window {} exceeds the model's context of {}", a.window, cfg.context_len);
    }
    let profile = super::load_profile(model_path, &model, a.profile.as_deref())?;
    let sha = file_sha256(model_path)?;

    let t0 = Instant::now();
    let trace = match a.trace.as_ref().map(|dir| (dir, Trace::load(dir, &sha, &cfg))) {
        Some((_, Ok(t)))
            if t.manifest.label == a.label
                && t.manifest.sparsity == a.label_sparsity
                && t.manifest.tokens >= a.tokens =>
        {
            t
        }
        other => {
            // Say why a trace that is there was not used (a fresh one replaces it).
            match &other {
                Some((dir, Err(e))) if dir.join("trace.json").exists() => {
                    eprintln!("not reusing the trace in {}: {e}; tracing again", dir.display())
                }
                Some((dir, Ok(t))) => eprintln!(
                    "not reusing the trace in {}: it has {} tokens of {:?} labels at {}, this run asks for {} of {:?} at {}; \
                     tracing again",
                    dir.display(),
                    t.manifest.tokens,
                    t.manifest.label,
                    t.manifest.sparsity,
                    a.tokens,
                    a.label,
                    a.label_sparsity
                ),
                _ => {}
            }
            let sequences = training_text(&model, &tok, &a)?;
            let source = a.corpus.as_ref().map_or("self-generated".into(), |p| format!("corpus:{}", p.display()));
            let bar = super::progress(sequences.len() as u64, "tracing");
            let t = collect_trace(&model, &profile, &sequences, a.label, a.label_sparsity, source, || bar.inc(1))?;
            bar.finish_and_clear();
            if let Some((dir, _)) = other {
                t.save(dir).with_context(|| format!("writing the trace to {}", dir.display()))?;
            }
            t
        }
    };
    let trace_seconds = t0.elapsed().as_secs_f64();
    let n = trace.manifest.tokens.min(a.tokens);
    let n_val = val_tokens.min(n / 2);
    let n_train = n - n_val;

    let t1 = Instant::now();
    let bar = super::progress(cfg.n_layers as u64, "training predictors");
    let (d, f) = (cfg.d_model, cfg.d_ff);
    let mut layers = Vec::with_capacity(cfg.n_layers);
    let mut curves = Vec::with_capacity(cfg.n_layers);
    let mut reports = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let src = a.tap.source_layer(l);
        let inputs = trace.inputs(src);
        let x = ArrayView2::from_shape((trace.manifest.tokens, d), &inputs)?;
        let (x_train, x_val) = (x.slice(ndarray::s![..n_train, ..]), x.slice(ndarray::s![n_train..n, ..]));
        let labels = trace.labels(l);
        let (y_train, y_val): (Labels, Labels) = (labels.rows(0..n_train), labels.rows(n_train..n));
        let w = &model.weights().layers[l];
        let gate = w.w_gate.to_f32();
        let mut epochs = None;
        // One pass over the training inputs serves the gate regression and the neuron scales.
        let needs_moment = a.family == Family::LowrankG || a.label != LabelKind::Cats;
        let moment = if needs_moment { Some(input_moment(x_train)?) } else { None };
        let (body, output): (Body, Output) = match (a.family, &moment) {
            (Family::LowrankG, Some(m)) => (fit_gate_regression_from_moment(m, &gate, f, a.rank)?, Output::Gate),
            (Family::LowrankG, None) => (fit_gate_regression(x_train, &gate, f, a.rank)?, Output::Gate),
            (Family::Lowbit, _) => (fit_lowbit(&gate, a.bits)?, Output::Gate),
            (Family::Lowrank, _) => {
                let opts =
                    TrainOptions { rank: a.rank, relu: a.relu, epochs: a.epochs, init: a.init, ..Default::default() };
                let (body, log) = train_lowrank(x_train, &y_train, x_val, &y_val, opts)?;
                epochs = Some(log.epochs_run);
                (body, Output::Logit)
            }
        };
        // Gate scores become |h| (TEAL) or importance (CETT) estimates for those labels.
        let scale = match (output, a.label) {
            (Output::Gate, LabelKind::Teal | LabelKind::Cett) => {
                let up = w.w_up.to_f32();
                let norms = (a.label == LabelKind::Cett).then(|| profile.down_col_norms[l].as_slice());
                match &moment {
                    Some(m) => neuron_scales_from_moment(m, &up, f, norms)?,
                    None => neuron_scales(x_train, &up, f, norms)?,
                }
            }
            _ => Vec::new(),
        };
        let (p, scores) =
            finish(body, output, scale.clone(), x_val, &y_val, RuleChoice::TargetRecall(a.target_recall))?;
        let flat = scores.as_slice().unwrap_or(&[]);
        let curve = predictivity_curve(flat, &y_val, &CURVE);
        let svd_curve = if a.family == Family::Lowbit {
            Vec::new()
        } else {
            let svd = fit_gate_svd(&gate, d, f, a.rank)?;
            let s = sieve_predictor::model::batch_scores(&svd, Output::Gate, &scale, x_val, d, f)?;
            predictivity_curve(s.as_slice().unwrap_or(&[]), &y_val, &CURVE)
        };
        let (predictor_us, mlp_us) = time_layer(&model, l, &p, x_val.row(0).as_slice().unwrap_or(&[]))?;
        let gate_bytes = w.w_gate.bytes();
        let layer_bytes: usize = sieve_engine::sparsity::Proj::ALL.iter().map(|&p| w.proj(p).bytes()).sum();
        reports.push(LayerReport {
            layer: l,
            recall: p.quality.recall,
            precision: p.quality.precision,
            predicted_sparsity: p.quality.predicted_sparsity,
            recall_at_half: at_half(&curve),
            svd_recall_at_half: (!svd_curve.is_empty()).then(|| at_half(&svd_curve)),
            bytes: p.bytes(),
            bytes_share_of_gate: p.bytes() as f64 / gate_bytes.max(1) as f64,
            bytes_share_of_f32_gate: p.bytes() as f64 / (4 * d * f).max(1) as f64,
            bytes_share_of_layer: p.bytes() as f64 / layer_bytes.max(1) as f64,
            predictor_us,
            mlp_us,
            epochs,
            curve: curve.clone(),
            svd_curve: svd_curve.clone(),
        });
        curves.push((curve, svd_curve));
        layers.push(p);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let train_seconds = t1.elapsed().as_secs_f64();
    let (rank, bits) = match a.family {
        Family::Lowbit => (None, Some(a.bits)),
        _ => (Some(a.rank), None),
    };
    let mut set = PredictorSet {
        manifest: Manifest {
            version: PREDICTOR_VERSION,
            model_sha256: sha,
            n_layers: cfg.n_layers,
            d_model: d,
            d_ff: f,
            family: a.family,
            rank,
            bits,
            relu: a.relu && a.family == Family::Lowrank,
            tap: a.tap,
            label: a.label,
            label_sparsity: a.label_sparsity,
            target_recall: Some(a.target_recall),
            train_tokens: n_train,
            validation_tokens: n_val,
            train_seconds,
            layers: Vec::new(),
        },
        layers,
    };
    set.refresh_entries();
    for (entry, (curve, svd)) in set.manifest.layers.iter_mut().zip(curves) {
        entry.curve = curve;
        entry.svd_curve = svd;
    }
    let out = match &a.out {
        Some(p) => p.clone(),
        None => predictor_dir(&profile_dir(model_path, a.profile.as_deref())),
    };
    set.save(&out).with_context(|| format!("writing predictors to {}", out.display()))?;
    let report = summarize(&a, &set, out, reports, n_train, n_val, trace_seconds, train_seconds);
    if a.json {
        super::print_json(&report)
    } else {
        print_table(&report);
        Ok(())
    }
}

fn at_half(curve: &[CurvePoint]) -> f64 {
    curve.iter().find(|c| (c.predicted_sparsity - 0.5).abs() < 0.06).or(curve.get(4)).map_or(0.0, |c| c.recall)
}

/// Median microseconds of one token's predictor scores and of the layer's dense MLP
/// products (gate, up, down) on this machine.
fn time_layer(model: &Model, l: usize, p: &LayerPredictor, x: &[f32]) -> Result<(f64, f64)> {
    let w = &model.weights().layers[l];
    let cfg = model.config();
    let mut scratch = Scratch::default();
    let mut scores = vec![0f32; p.f()];
    let mut qa = sieve_kernels::ActsQ8::default();
    let (mut g, mut u, mut o) = (vec![0f32; cfg.d_ff], vec![0f32; cfg.d_ff], vec![0f32; cfg.d_model]);
    let mut pt = Vec::new();
    let mut mt = Vec::new();
    for _ in 0..31 {
        let t = Instant::now();
        p.scores(x, &mut scratch, &mut scores)?;
        pt.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        qa.quantize_from(x, 1, x.len())?;
        w.w_gate.forward(&Prepared::Q8(&qa), &mut g)?;
        w.w_up.forward(&Prepared::Q8(&qa), &mut u)?;
        sieve_kernels::ops::silu_mul(&mut g, &u);
        qa.quantize_from(&g, 1, g.len())?;
        w.w_down.forward(&Prepared::Q8(&qa), &mut o)?;
        mt.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok((sieve_eval::bench::median(pt), sieve_eval::bench::median(mt)))
}

fn profile_dir(model_path: &Path, profile: Option<&Path>) -> PathBuf {
    let path =
        profile.map(Path::to_path_buf).unwrap_or_else(|| sieve_engine::profile::default_profile_path(model_path));
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn training_text(model: &Model, tok: &sieve_engine::tokenizer::Tokenizer, a: &Args) -> Result<Vec<Vec<u32>>> {
    Ok(match &a.corpus {
        Some(path) => {
            let ids = tokenize_file(tok, path)?;
            if ids.len() < a.tokens {
                bail!("corpus too short: {} has {} tokens, --tokens asks for {}", path.display(), ids.len(), a.tokens);
            }
            ids[..a.tokens].chunks(a.window).map(<[u32]>::to_vec).collect()
        }
        None => {
            let bar = super::progress(a.tokens as u64, "generating training text");
            let seqs = self_generated(model, tok, a.tokens, a.window, 0, |n| bar.inc(n as u64))?;
            bar.finish_and_clear();
            seqs
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    a: &Args,
    set: &PredictorSet,
    out: PathBuf,
    layers: Vec<LayerReport>,
    train_tokens: usize,
    validation_tokens: usize,
    trace_seconds: f64,
    train_seconds: f64,
) -> Report {
    let q = set.mean_quality();
    let n = layers.len().max(1) as f64;
    let svd: Vec<f64> = layers.iter().filter_map(|r| r.svd_recall_at_half).collect();
    Report {
        out: out.display().to_string(),
        family: a.family,
        tap: a.tap,
        label: a.label,
        label_sparsity: a.label_sparsity,
        target_recall: a.target_recall,
        train_tokens,
        validation_tokens,
        trace_seconds,
        train_seconds,
        mean_recall: q.recall,
        mean_precision: q.precision,
        mean_predicted_sparsity: q.predicted_sparsity,
        mean_recall_at_half: layers.iter().map(|r| r.recall_at_half).sum::<f64>() / n,
        mean_svd_recall_at_half: (!svd.is_empty()).then(|| svd.iter().sum::<f64>() / svd.len() as f64),
        layers,
    }
}

fn print_table(r: &Report) {
    println!(
        "{} predictors ({} tap, {} label at {:.2}, target recall {:.2}) -> {}",
        r.family.name(),
        r.tap.name(),
        r.label.name(),
        r.label_sparsity,
        r.target_recall,
        r.out
    );
    println!(
        "{} training + {} held-out tokens; trace {:.1} s, training {:.1} s",
        r.train_tokens, r.validation_tokens, r.trace_seconds, r.train_seconds
    );
    println!(
        "| layer | recall | precision | pred. sparsity | recall @ s=0.5 | SVD recall @ 0.5 | bytes / W_gate | bytes / f32 W_gate | predictor µs | MLP µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for l in &r.layers {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {:.1}% | {:.1}% | {:.1} | {:.1} |",
            l.layer,
            l.recall,
            l.precision,
            l.predicted_sparsity,
            l.recall_at_half,
            l.svd_recall_at_half.map_or("-".into(), |v| format!("{v:.3}")),
            100.0 * l.bytes_share_of_gate,
            100.0 * l.bytes_share_of_f32_gate,
            l.predictor_us,
            l.mlp_us
        );
    }
    println!(
        "| mean | {:.3} | {:.3} | {:.3} | {:.3} | {} | | | | |",
        r.mean_recall,
        r.mean_precision,
        r.mean_predicted_sparsity,
        r.mean_recall_at_half,
        r.mean_svd_recall_at_half.map_or("-".into(), |v| format!("{v:.3}"))
    );
}
