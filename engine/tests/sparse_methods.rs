//! Sparsity methods on the real model: the sparse decode kernels against the accuracy path
//! (the same plan applied by zeroing activations for the dense kernels; the kernels' own
//! exactness is tested in sieve-kernels), the CETT oracle's exact budget, and the mask audit
//! against references it must agree with exactly.

mod common;

use std::sync::{Arc, OnceLock};

use ndarray::ArrayView2;
use sieve_engine::trace::collect_trace;
use sieve_predictor::store::{LabelKind, Manifest, PREDICTOR_VERSION, Tap};
use sieve_predictor::train::{RuleChoice, finish, fit_gate_regression};
use sieve_predictor::{Family, Output, PredictorSet};

use sieve_engine::audit::{MaskAudit, Reference};
use sieve_engine::calibrate::{build_profile, calibrate};
use sieve_engine::profile::{Profile, file_sha256};
use sieve_engine::sparsity::{Method, Proj, SparsityPlan, SparsityStats};
use sieve_engine::tokenizer::Tokenizer;
use sieve_engine::{Hooks, Logits, Model, Precision};

const TEXT: &str = "The tower is 324 metres tall, about the same height as an 81-storey building, and \
the tallest structure in Paris. Its base is square, measuring 125 metres on each side. During its \
construction, the Eiffel Tower surpassed the Washington Monument to become the tallest man-made \
structure in the world, a title it held for 41 years until the Chrysler Building in New York City \
was finished in 1930. It was the first structure to reach a height of 300 metres. Due to the \
addition of a broadcasting aerial at the top of the tower in 1957, it is now taller than the \
Chrysler Building by 5.2 metres. Excluding transmitters, the Eiffel Tower is the second tallest \
free-standing structure in France after the Millau Viaduct.";

struct Setup {
    model: Model,
    tokens: Vec<u32>,
    profile: Profile,
}

/// The fast model and a profile calibrated on a short text (shared by the tests).
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let path = common::model_path();
        let model = Model::load(&path, Precision::Fast).expect("model");
        let gguf = sieve_engine::gguf::GgufFile::open(&path).expect("gguf");
        let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer");
        let tokens = tok.encode(TEXT).expect("encode");
        let observed = calibrate(&model, std::slice::from_ref(&tokens), 32, || {}).expect("calibrate");
        let profile =
            build_profile(&model, &observed, file_sha256(&path).expect("sha"), "test".into(), tokens.len(), || {})
                .expect("profile");
        Setup { model, tokens, profile }
    })
}

/// Logits of the next position after `prompt`, one decode step under `method` at 50%, by
/// the sparse kernels or by the accuracy path; with the step's sparsity counts.
fn step(s: &Setup, method: Method, accuracy_path: bool) -> (Vec<f32>, SparsityStats) {
    step_with(s, &s.profile.plan(method, 0.5).expect("plan"), accuracy_path)
}

fn step_with(s: &Setup, plan: &SparsityPlan, accuracy_path: bool) -> (Vec<f32>, SparsityStats) {
    step_on(&s.model, &s.tokens, plan, accuracy_path)
}

fn step_on(model: &Model, tokens: &[u32], plan: &SparsityPlan, accuracy_path: bool) -> (Vec<f32>, SparsityStats) {
    let plan = plan.clone();
    let (prompt, next) = tokens.split_at(40);
    let mut cache = model.new_cache();
    let mut hooks = Hooks { plan: Some(&plan), ..Hooks::default() };
    model.forward_with(prompt, &mut cache, Logits::Last, &mut hooks).expect("prefill");
    let mut stats = SparsityStats::new(model.config().n_layers);
    let mut hooks = Hooks { plan: Some(&plan), stats: Some(&mut stats), accuracy_path, ..Hooks::default() };
    let logits = model.forward_with(&next[..1], &mut cache, Logits::Last, &mut hooks).expect("decode");
    (logits, stats)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn sparse_decode_kernels_match_the_accuracy_path() {
    let s = setup();
    for method in [Method::Teal, Method::TealUniform, Method::Cats] {
        let (fast, fast_stats) = step(s, method, false);
        let (reference, ref_stats) = step(s, method, true);
        // Same masks, same quantization: only the f32 summation order differs (the accuracy
        // path's dense GEMV sums sixteen rows at a time on VNNI CPUs, the input-sparse kernel
        // one input pair at a time). A mask is a step function, so an activation within
        // rounding of its threshold may flip and the difference grows through later layers
        // (TEAL measured cosine 0.9945 there); compare the logit vectors' direction.
        let cosine = cosine(&fast, &reference);
        assert!(cosine > 0.99, "{method}: logits cosine {cosine}");
        let params = s.model.config().proj_params();
        let (a, b) = (fast_stats.achieved(method, &params), ref_stats.achieved(method, &params));
        assert!(a > 0.2 && (a - b).abs() < 0.01, "{method}: achieved sparsity {a} by kernels, {b} by masking");
    }
}

/// The f32 (reference) precision decodes with its own sparse kernels too: f32 input-sparse
/// GEMVs for TEAL; for CATS the dense attention projections in f32 beside the f32 gate rows
/// and each kept neuron's up row and down column read as one run (`swiglu_down_f32`; this
/// path once fed the gate and up rows int8 activations and failed); for the predictors each
/// neuron's gate row too.
#[test]
fn f32_sparse_decode_matches_its_accuracy_path() {
    let s = setup();
    let model = Model::load(&common::model_path(), Precision::F32).expect("f32 model");
    for method in [Method::Teal, Method::Cats] {
        let plan = s.profile.plan(method, 0.5).expect("plan");
        let (sparse, stats) = step_on(&model, &s.tokens, &plan, false);
        let (reference, ref_stats) = step_on(&model, &s.tokens, &plan, true);
        let cosine = cosine(&sparse, &reference);
        assert!(cosine > 0.99, "f32 {method}: logits cosine {cosine}");
        let params = model.config().proj_params();
        let (a, b) = (stats.achieved(method, &params), ref_stats.achieved(method, &params));
        assert!(a > 0.2 && (a - b).abs() < 0.01, "f32 {method}: achieved sparsity {a} by kernels, {b} by masking");
    }
    // The predictors at f32 read each neuron's gate row, up row and down column as one run
    // (`swiglu_down_rows_f32`, and `swiglu_down_confirmed_f32` for a proposal CATS's rule
    // confirms), the lookahead proposal riding along those kernels' jobs. Only the summation
    // order differs from the accuracy path (cosine 1 - 1e-13 when this was written).
    let set = predictors(s, LabelKind::Cats, Tap::Lookahead);
    for method in [Method::Predictor, Method::PredictorVerify] {
        let plan = s.profile.plan_with_predictors(method, 0.5, Some(set.clone())).expect("plan");
        let (sparse, stats) = step_on(&model, &s.tokens, &plan, false);
        let (reference, ref_stats) = step_on(&model, &s.tokens, &plan, true);
        let cosine = cosine(&sparse, &reference);
        assert!(cosine > 0.9999, "f32 {method}: logits cosine {cosine}");
        for p in [Proj::Gate, Proj::Up, Proj::Down] {
            let (a, b) = (stats.overall(p), ref_stats.overall(p));
            assert!(a > 0.15 && (a - b).abs() < 0.03, "f32 {method} {p:?}: {a} by kernels, {b} by masking");
        }
        let in_place = SparsityPlan { lookahead_overlap: false, ..plan.clone() };
        let (serial, _) = step_on(&model, &s.tokens, &in_place, false);
        let differ = sparse.iter().zip(&serial).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "f32 {method}: {differ} logits differ with and without the overlap");
    }
}

/// A rank-32 gate-regression predictor set fitted on a trace of the test text under `label`,
/// reading the input of `tap`.
fn predictors(s: &Setup, label: LabelKind, tap: Tap) -> Arc<PredictorSet> {
    let cfg = s.model.config();
    let trace = collect_trace(&s.model, &s.profile, std::slice::from_ref(&s.tokens), label, 0.5, "test".into(), || {})
        .expect("trace");
    let n = trace.manifest.tokens;
    let layers = (0..cfg.n_layers)
        .map(|l| {
            let inputs = trace.inputs(tap.source_layer(l));
            let x = ArrayView2::from_shape((n, cfg.d_model), &inputs).expect("inputs");
            let gate = s.model.weights().layers[l].w_gate.to_f32();
            let body = fit_gate_regression(x, &gate, cfg.d_ff, 32).expect("fit");
            finish(body, Output::Gate, Vec::new(), x, trace.labels(l), RuleChoice::TargetRecall(0.9)).expect("finish").0
        })
        .collect();
    let manifest = Manifest {
        version: PREDICTOR_VERSION,
        model_sha256: s.profile.model_sha256.clone(),
        n_layers: cfg.n_layers,
        d_model: cfg.d_model,
        d_ff: cfg.d_ff,
        family: Family::LowrankG,
        rank: Some(32),
        bits: None,
        relu: false,
        tap,
        label,
        label_sparsity: 0.5,
        target_recall: Some(0.9),
        train_tokens: n,
        validation_tokens: n,
        train_seconds: 0.0,
        layers: Vec::new(),
    };
    Arc::new(PredictorSet { manifest, layers })
}

#[test]
fn predictor_methods_decode_like_their_accuracy_path() {
    let s = setup();
    let params = s.model.config().proj_params();
    let cases = [
        (LabelKind::Cats, Tap::MlpInput),
        (LabelKind::Teal, Tap::MlpInput),
        (LabelKind::Cett, Tap::MlpInput),
        (LabelKind::Cats, Tap::Lookahead),
    ];
    for (label, tap) in cases {
        let set = predictors(s, label, tap);
        for method in [Method::Predictor, Method::PredictorVerify] {
            let plan = s.profile.plan_with_predictors(method, 0.5, Some(set.clone())).expect("plan");
            let (fast, fast_stats) = step_with(s, &plan, false);
            let (reference, ref_stats) = step_with(s, &plan, true);
            let dot: f64 = fast.iter().zip(&reference).map(|(a, b)| *a as f64 * *b as f64).sum();
            let norm = |v: &[f32]| v.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
            let cosine = dot / (norm(&fast) * norm(&reference));
            assert!(cosine > 0.99, "{method} ({label:?}, {tap:?}): logits cosine {cosine}");
            for p in [Proj::Gate, Proj::Up, Proj::Down] {
                let (a, b) = (fast_stats.overall(p), ref_stats.overall(p));
                assert!((a - b).abs() < 0.03, "{method} ({label:?}, {tap:?}) {p:?}: {a} by kernels, {b} by masking");
            }
            let achieved = fast_stats.achieved(method, &params);
            assert!(achieved > 0.25, "{method} ({label:?}, {tap:?}): achieved {achieved}");
            if tap == Tap::Lookahead {
                // Proposals made ahead, on the other core, are the proposals made in place:
                // only the schedule differs, so the step is the same to the bit.
                assert!(plan.lookahead_overlap, "overlap is the default");
                let in_place = SparsityPlan { lookahead_overlap: false, ..plan.clone() };
                let (serial, serial_stats) = step_with(s, &in_place, false);
                let differ = fast.iter().zip(&serial).filter(|(a, b)| a != b).count();
                assert!(differ == 0, "{method}: {differ} logits differ with and without the overlap");
                for p in [Proj::Gate, Proj::Up, Proj::Down] {
                    assert_eq!(fast_stats.overall(p), serial_stats.overall(p), "{method} {p:?}");
                }
            }
        }
    }
    // Without a predictor set the predictor methods are refused with the command to run.
    let err = s.profile.plan(Method::Predictor, 0.5).unwrap_err().to_string();
    assert!(err.contains("train-predictors"), "{err}");
}

#[test]
fn cett_keeps_exactly_its_budget() {
    let s = setup();
    let plan = s.profile.plan(Method::Cett, 0.5).expect("plan");
    let mut stats = SparsityStats::new(s.model.config().n_layers);
    let mut cache = s.model.new_cache();
    let mut hooks = Hooks { plan: Some(&plan), stats: Some(&mut stats), ..Hooks::default() };
    s.model.forward_with(&s.tokens[..64], &mut cache, Logits::Last, &mut hooks).expect("forward");
    assert!((stats.overall(Proj::Down) - 0.5).abs() < 1e-3, "{}", stats.overall(Proj::Down));
    assert_eq!(stats.overall(Proj::Gate), 0.0);
}

/// Runs `method` at 50% over the text with the audit on.
fn audit(s: &Setup, method: Method) -> MaskAudit {
    let plan = s.profile.plan(method, 0.5).expect("plan");
    let mut audit = MaskAudit::new(&s.profile, 0.5).expect("audit");
    let mut cache = s.model.new_cache();
    let mut hooks = Hooks { plan: Some(&plan), audit: Some(&mut audit), ..Hooks::default() };
    s.model.forward_with(&s.tokens[..64], &mut cache, Logits::Last, &mut hooks).expect("forward");
    audit
}

#[test]
fn audit_agrees_with_the_methods_own_reference() {
    let s = setup();
    let cats = audit(s, Method::Cats);
    assert_eq!(cats.positions, 64);
    let c = cats.overall(Reference::Cats);
    assert!(c.recall() > 0.999 && c.precision() > 0.999, "cats vs cats {c:?}");
    // Another criterion keeps other neurons: strictly less than perfect agreement.
    assert!(cats.overall(Reference::Cett).f1() < 0.99);
    let cett = audit(s, Method::Cett);
    let o = cett.overall(Reference::Cett);
    assert!(o.recall() > 0.999 && o.precision() > 0.999, "cett vs cett {o:?}");
    let dense = audit(s, Method::Dense);
    let d = dense.overall(Reference::Teal);
    assert!(d.recall() > 0.999 && d.precision() < 0.6, "dense keeps everything: {d:?}");
}
