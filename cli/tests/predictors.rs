//! `sieve train-predictors` and the predictor methods end to end on the real model: a small
//! trace and training run, its set used by `eval ppl` and `generate`, and each bad input
//! refused with a clear error.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const TEXT: &str = include_str!("../../eval/data/bench_prompt.txt");

/// A corpus of the built-in passage repeated, and a profile calibrated on it.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, TEXT.repeat(4)).unwrap();
    let profile = dir.join("profile.json");
    let o = sieve(&[
        "calibrate",
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "512",
        "--window",
        "128",
        "--greedy-tokens",
        "32",
        "--out",
        profile.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    (corpus, profile)
}

fn train(corpus: &Path, profile: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "train-predictors",
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "1024",
        "--window",
        "128",
        "--profile",
        profile.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    if !extra.contains(&"--rank") {
        args.extend_from_slice(&["--rank", "32"]);
    }
    args.extend_from_slice(extra);
    sieve(&args)
}

fn ppl(corpus: &Path, profile: &Path, predictors: &Path, method: &str) -> std::process::Output {
    ppl_at(corpus, profile, predictors, method, "0.5")
}

fn ppl_at(corpus: &Path, profile: &Path, predictors: &Path, method: &str, sparsity: &str) -> std::process::Output {
    sieve(&[
        "eval",
        "ppl",
        "--corpus",
        corpus.to_str().unwrap(),
        "--ctx",
        "128",
        "--windows",
        "2",
        "--method",
        method,
        "--sparsity",
        sparsity,
        "--profile",
        profile.to_str().unwrap(),
        "--predictors",
        predictors.to_str().unwrap(),
        "--json",
    ])
}

#[test]
fn a_four_bit_gate_copy_runs_in_q4_1_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, profile) = setup(dir.path());
    let out = dir.path().join("lowbit4");
    let o = train(&corpus, &profile, &out, &["--family", "lowbit", "--bits", "4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for l in r["layers"].as_array().unwrap() {
        // Q4_1 blocks, as SmolLM2's own gate: 20 bytes per 32 weights, 5/32 of the f32 gate.
        let share = |k: &str| l[k].as_f64().unwrap();
        assert!((share("bytes_share_of_gate") - 1.0).abs() < 1e-9, "{l}");
        assert!((share("bytes_share_of_f32_gate") - 20.0 / 128.0).abs() < 1e-9, "{l}");
    }
    // A 4-bit copy of the gate ranks neurons almost as the gate does.
    assert!(r["mean_recall_at_half"].as_f64().unwrap() > 0.9, "{r}");
    let o = ppl(&corpus, &profile, &out, "predictor");
    assert!(o.status.success(), "{}", stderr(&o));
    // Predict-then-verify proposes for the target, not for the labels' 50% only: at 25% it
    // keeps about three quarters of the neurons.
    let achieved = |s: &str| {
        let o = ppl_at(&corpus, &profile, &out, "predictor-verify", s);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["achieved_sparsity"].as_f64().unwrap()
    };
    let (quarter, half) = (achieved("0.25"), achieved("0.5"));
    assert!(quarter > 0.15 && quarter < 0.35 && half > 0.4 && half < 0.6, "{quarter} at 0.25, {half} at 0.5");
}

#[test]
fn trained_predictors_beat_the_svd_anchor_and_run_as_methods() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, profile) = setup(dir.path());
    let out = dir.path().join("predictors");
    let o = train(&corpus, &profile, &out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["layers"].as_array().unwrap().len(), 30);
    // The rule is set on held-out tokens to reach the target recall there.
    assert!((r["mean_recall"].as_f64().unwrap() - 0.95).abs() < 0.02, "{r}");
    let (ours, svd) = (r["mean_recall_at_half"].as_f64().unwrap(), r["mean_svd_recall_at_half"].as_f64().unwrap());
    assert!(ours > svd, "gate regression {ours} vs SVD of W_gate {svd}");

    let dense = ppl(&corpus, &profile, &out, "dense");
    assert!(dense.status.success(), "{}", stderr(&dense));
    let dense: serde_json::Value = serde_json::from_str(&stdout(&dense)).unwrap();
    for method in ["predictor", "predictor-verify"] {
        let o = ppl(&corpus, &profile, &out, method);
        assert!(o.status.success(), "{method}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let achieved = v["achieved_sparsity"].as_f64().unwrap();
        assert!(achieved > 0.3 && achieved < 0.7, "{method}: achieved {achieved}");
        assert!(v["perplexity"].as_f64().unwrap() > dense["perplexity"].as_f64().unwrap(), "{method}: {v}");
        assert!(v["achieved_by_projection"]["gate"].as_f64().unwrap() > 0.0 || method == "predictor-verify");
    }
    // The decode path (sparse kernels) generates.
    let o = sieve(&[
        "generate",
        "--method",
        "predictor",
        "--sparsity",
        "0.5",
        "--profile",
        profile.to_str().unwrap(),
        "--predictors",
        out.to_str().unwrap(),
        "--max-tokens",
        "8",
        "The history of",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).len() > "The history of".len(), "{}", stdout(&o));

    // A truncated weights file and a set of another model are refused, naming the file.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let manifest = std::fs::read_to_string(out.join("predictors.json")).unwrap();
    let sha = r#""model_sha256": ""#;
    let at = manifest.find(sha).unwrap() + sha.len();
    let edited = format!("{}0{}", &manifest[..at], &manifest[at + 1..]);
    std::fs::write(other.join("predictors.json"), edited).unwrap();
    std::fs::copy(out.join("predictors.safetensors"), other.join("predictors.safetensors")).unwrap();
    assert_fails_with(&ppl(&corpus, &profile, &other, "predictor"), "another model");
    std::fs::write(other.join("predictors.json"), &manifest).unwrap();
    let weights = std::fs::read(out.join("predictors.safetensors")).unwrap();
    std::fs::write(other.join("predictors.safetensors"), &weights[..weights.len() / 2]).unwrap();
    assert_fails_with(&ppl(&corpus, &profile, &other, "predictor"), "predictors.safetensors");
    assert_fails_with(&ppl(&corpus, &profile, &dir.path().join("none"), "predictor"), "train-predictors");
}

#[test]
fn bad_training_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, profile) = setup(dir.path());
    let out = dir.path().join("p");
    assert_fails_with(&train(&corpus, &profile, &out, &["--rank", "0"]), "rank 0");
    assert_fails_with(&train(&corpus, &profile, &out, &["--rank", "577"]), "rank 577");
    assert_fails_with(&train(&corpus, &profile, &out, &["--family", "lowbit", "--bits", "0"]), "bits 0");
    assert_fails_with(&train(&corpus, &profile, &out, &["--family", "lowbit", "--bits", "9"]), "bits 9");
    assert_fails_with(&train(&corpus, &profile, &out, &["--target-recall", "0"]), "target recall 0");
    assert_fails_with(&train(&corpus, &profile, &out, &["--target-recall", "1.5"]), "target recall 1.5");
    assert_fails_with(&train(&corpus, &profile, &out, &["--family", "sparse-magic"]), "unknown predictor family");
    let o = sieve(&[
        "train-predictors",
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "100",
        "--profile",
        profile.to_str().unwrap(),
    ]);
    assert_fails_with(&o, "too few tokens");
    let o = sieve(&[
        "train-predictors",
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "900000",
        "--profile",
        profile.to_str().unwrap(),
    ]);
    assert_fails_with(&o, "corpus too short");
}
