//! Predictor sets through the file format, refusals of bad files and options, and the
//! families learning what they should on synthetic data with a known structure.

use ndarray::{Array2, ArrayView2};
use sieve_kernels::testdata::values;
use sieve_predictor::rule::{check_recall, measure};
use sieve_predictor::store::{LabelKind, Manifest, PREDICTOR_VERSION, Tap};
use sieve_predictor::train::{
    Init, RuleChoice, TrainOptions, finish, fit_gate_regression, fit_gate_svd, fit_lowbit, train_lowrank,
};
use sieve_predictor::{Body, Family, Labels, Output, PredictorError, PredictorSet, Rule};

const D: usize = 64;
const F: usize = 96;

/// Inputs with most variance in a few directions, a gate matrix, and CATS-like labels:
/// |silu(g)| above its median.
fn data(n: usize, seed: u64) -> (Array2<f32>, Vec<f32>, Labels) {
    let basis = values(8 * D, seed + 1);
    let coef = values(n * 8, seed + 2);
    let noise = values(n * D, seed + 3);
    let x = Array2::from_shape_fn((n, D), |(t, j)| {
        (0..8).map(|k| coef[t * 8 + k] * basis[k * D + j]).sum::<f32>() + 0.05 * noise[t * D + j]
    });
    let w = values(F * D, seed + 4);
    let wv = ArrayView2::from_shape((F, D), &w).unwrap();
    let g = x.dot(&wv.t());
    let act: Vec<f32> = g.iter().map(|&v| sieve_kernels::ops::silu(v).abs()).collect();
    let mut sorted = act.clone();
    sorted.sort_by(f32::total_cmp);
    let t = sorted[sorted.len() / 2];
    let mut labels = Labels::zeros(n, F);
    for r in 0..n {
        labels.set_row(r, |i| act[r * F + i] > t);
    }
    (x, w, labels)
}

fn manifest(family: Family, layers: usize, rank: usize) -> Manifest {
    Manifest {
        version: PREDICTOR_VERSION,
        model_sha256: "abc".into(),
        n_layers: layers,
        d_model: D,
        d_ff: F,
        family,
        rank: (family != Family::Lowbit).then_some(rank),
        bits: (family == Family::Lowbit).then_some(2),
        relu: false,
        tap: Tap::MlpInput,
        label: LabelKind::Cats,
        label_sparsity: 0.5,
        target_recall: Some(0.9),
        train_tokens: 0,
        validation_tokens: 0,
        train_seconds: 0.0,
        layers: Vec::new(),
    }
}

#[test]
fn gate_regression_beats_the_svd_anchor_and_round_trips_through_files() {
    let (x, w, labels) = data(600, 1);
    let (train, val) = (x.slice(ndarray::s![..500, ..]), x.slice(ndarray::s![500.., ..]));
    let val_labels = labels.rows(500..600);
    let fitted = fit_gate_regression(train, &w, F, 8).unwrap();
    let svd = fit_gate_svd(&w, D, F, 8).unwrap();
    let (p, scores) = finish(fitted, Output::Gate, Vec::new(), val, &val_labels, RuleChoice::TopK(F / 2)).unwrap();
    let (_, svd_scores) = finish(svd, Output::Gate, Vec::new(), val, &val_labels, RuleChoice::TopK(F / 2)).unwrap();
    let ours = measure(scores.as_slice().unwrap(), &val_labels, Rule::TopK(F / 2)).recall;
    let anchor = measure(svd_scores.as_slice().unwrap(), &val_labels, Rule::TopK(F / 2)).recall;
    // The inputs live in 8 directions: a rank-8 map fitted to them is nearly exact, the
    // weight-only SVD is not.
    assert!(ours > 0.9 && ours > anchor + 0.05, "fitted {ours}, svd {anchor}");

    let (lb, _) = finish(
        fit_lowbit(&w, 4).unwrap(),
        Output::Gate,
        (0..F).map(|i| 1.0 + i as f32 / F as f32).collect(),
        val,
        &val_labels,
        RuleChoice::TargetRecall(0.9),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (family, layer) in [(Family::LowrankG, p.clone()), (Family::Lowbit, lb)] {
        let mut set = PredictorSet { manifest: manifest(family, 2, 8), layers: vec![layer.clone(), layer.clone()] };
        set.save(dir.path()).unwrap();
        let back = PredictorSet::load(dir.path(), "abc", 2, D, F).unwrap();
        let xv: Vec<f32> = val.row(3).to_vec();
        let (mut a, mut b) = (vec![0f32; F], vec![0f32; F]);
        layer.scores(&xv, &mut Default::default(), &mut a).unwrap();
        back.layers[1].scores(&xv, &mut Default::default(), &mut b).unwrap();
        assert_eq!(a, b);
        assert_eq!(back.layers[1].rule, layer.rule);
        assert_eq!(back.layers[1].score_quantiles, layer.score_quantiles);
        assert_eq!(back.layers[1].neuron_scale, layer.neuron_scale);
        // Another model, another shape.
        let err = PredictorSet::load(dir.path(), "other", 2, D, F).unwrap_err().to_string();
        assert!(err.contains("another model"), "{err}");
        let err = PredictorSet::load(dir.path(), "abc", 3, D, F).unwrap_err().to_string();
        assert!(err.contains("layers"), "{err}");
    }
}

#[test]
fn truncated_or_corrupt_files_are_refused_with_their_name() {
    let (x, w, labels) = data(200, 2);
    let (p, _) =
        finish(fit_gate_svd(&w, D, F, 16).unwrap(), Output::Gate, Vec::new(), x.view(), &labels, RuleChoice::TopK(10))
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut set = PredictorSet { manifest: manifest(Family::LowrankG, 1, 16), layers: vec![p] };
    set.save(dir.path()).unwrap();
    let weights = dir.path().join("predictors.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = PredictorSet::load(dir.path(), "abc", 1, D, F).unwrap_err().to_string();
    assert!(err.contains("predictors.safetensors"), "{err}");
    let json = dir.path().join("predictors.json");
    let text = std::fs::read_to_string(&json).unwrap();
    std::fs::write(&json, &text[..text.len() / 3]).unwrap();
    let err = PredictorSet::load(dir.path(), "abc", 1, D, F).unwrap_err().to_string();
    assert!(err.contains("predictors.json") && err.contains("corrupt"), "{err}");
    let err = PredictorSet::load(&dir.path().join("missing"), "abc", 1, D, F).unwrap_err().to_string();
    assert!(err.contains("train-predictors"), "{err}");
}

#[test]
fn bad_options_are_refused() {
    let (x, w, labels) = data(64, 3);
    assert!(matches!(fit_gate_regression(x.view(), &w, F, 0), Err(PredictorError::InvalidOption(_))));
    assert!(matches!(fit_gate_regression(x.view(), &w, F, D + 1), Err(PredictorError::InvalidOption(_))));
    assert!(matches!(fit_lowbit(&w, 0), Err(PredictorError::InvalidOption(_))));
    assert!(matches!(fit_lowbit(&w, 9), Err(PredictorError::InvalidOption(_))));
    assert!(check_recall(0.0).is_err() && check_recall(1.01).is_err() && check_recall(1.0).is_ok());
    let opts = TrainOptions { rank: 8, batch: 128, ..Default::default() };
    let err = train_lowrank(x.view(), &labels, x.view(), &labels, opts).unwrap_err();
    assert!(matches!(err, PredictorError::TooLittleData(_)), "{err}");
}

#[test]
fn the_lowrank_classifier_learns_a_low_rank_rule() {
    let (x, _, labels) = data(2400, 4);
    let (train, val) = (x.slice(ndarray::s![..2000, ..]), x.slice(ndarray::s![2000.., ..]));
    let (ty, vy) = (labels.rows(0..2000), labels.rows(2000..2400));
    let opts =
        TrainOptions { rank: 16, epochs: 20, batch: 64, lr: 1e-2, patience: 3, init: Init::InputPca, relu: false };
    let (body, log) = train_lowrank(train, &ty, val, &vy, opts).unwrap();
    assert!(log.val_loss.len() >= 2 && log.best_epoch >= 1);
    assert!(log.val_loss[log.best_epoch - 1] < log.val_loss[0] || log.best_epoch == 1);
    let (p, _) = finish(body, Output::Logit, Vec::new(), val, &vy, RuleChoice::TopK(F / 2)).unwrap();
    // Chance is 0.5 at half the neurons; the labels are a function of 8 input directions.
    assert!(p.quality.recall > 0.7, "{:?}", p.quality);
    assert!(matches!(p.body, Body::LowRank { rank: 16, .. }));
}
