//! `sieve calibrate` and sparse `eval ppl` end to end on the real model: a small calibration
//! run, its profile used by CATS and TEAL, and each bad input refused with a clear error.

mod common;

use std::path::Path;

use common::*;

const TEXT: &str = include_str!("../../eval/data/bench_prompt.txt");

/// Calibrates on the built-in passage into `dir`, returning the profile path.
fn small_profile(dir: &Path) -> std::path::PathBuf {
    let corpus = dir.join("calib.txt");
    std::fs::write(&corpus, TEXT).unwrap();
    let out = dir.join("profile.json");
    let o = sieve(&[
        "calibrate",
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "256",
        "--window",
        "128",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

fn ppl(dir: &Path, profile: &Path, method: &str, sparsity: &str) -> serde_json::Value {
    let corpus = dir.join("eval.txt");
    std::fs::write(&corpus, TEXT).unwrap();
    let o = sieve(&[
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
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn calibrated_methods_reach_their_target_and_cost_quality() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path());
    let dense = ppl(dir.path(), &profile, "dense", "0");
    assert_eq!(dense["achieved_sparsity"], 0.0);
    for method in ["cats", "teal-uniform"] {
        let half = ppl(dir.path(), &profile, method, "0.5");
        let achieved = half["achieved_sparsity"].as_f64().unwrap();
        // Calibrated and evaluated on the same text: the thresholds land on target.
        assert!((achieved - 0.5).abs() < 0.05, "{method}: achieved {achieved}");
        let (p0, p1) = (dense["perplexity"].as_f64().unwrap(), half["perplexity"].as_f64().unwrap());
        assert!(p1 > p0, "{method}: sparse perplexity {p1} not above dense {p0}");
        assert_eq!(half["method"], method);
    }
}

#[test]
fn bad_sparsity_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("eval.txt");
    std::fs::write(&corpus, TEXT).unwrap();
    let c = corpus.to_str().unwrap();
    let base = ["eval", "ppl", "--corpus", c, "--ctx", "128", "--windows", "1"];
    let run = |extra: &[&str]| sieve(&[&base[..], extra].concat());

    assert_fails_with(&run(&["--method", "cats", "--sparsity", "1.0"]), "must be in [0, 1)");
    assert_fails_with(&run(&["--method", "cats", "--sparsity=-0.1"]), "must be in [0, 1)");
    let o = run(&["--method", "magic", "--sparsity", "0.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown method 'magic'"), "{}", stderr(&o));
    assert_fails_with(
        &run(&["--method", "cats", "--sparsity", "0.5", "--profile", "/nonexistent/p.json"]),
        "sieve calibrate",
    );

    let profile = small_profile(dir.path());
    let text = std::fs::read_to_string(&profile).unwrap();
    let other = dir.path().join("other.json");
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["model_sha256"] = "0".repeat(64).into();
    std::fs::write(&other, v.to_string()).unwrap();
    assert_fails_with(
        &run(&["--method", "cats", "--sparsity", "0.5", "--profile", other.to_str().unwrap()]),
        "another model",
    );
    let cut = dir.path().join("cut.json");
    std::fs::write(&cut, &text[..text.len() / 3]).unwrap();
    assert_fails_with(
        &run(&["--method", "cats", "--sparsity", "0.5", "--profile", cut.to_str().unwrap()]),
        "corrupt or truncated",
    );

    assert_fails_with(&sieve(&["calibrate", "--corpus", c, "--tokens", "1000000"]), "corpus too short");
    assert_fails_with(&sieve(&["calibrate", "--tokens", "0"]), "--tokens must be at least 1");
}

#[test]
fn generate_runs_a_calibrated_method_and_refuses_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path());
    let p = profile.to_str().unwrap();
    let o = sieve(&[
        "generate",
        "--max-tokens",
        "8",
        "--method",
        "cats",
        "--sparsity",
        "0.3",
        "--profile",
        p,
        "The capital of France is",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stdout(&o).trim().is_empty());
    assert_fails_with(&sieve(&["generate", "--method", "cats", "--sparsity", "2", "hi"]), "must be in [0, 1)");
    assert_fails_with(
        &sieve(&["generate", "--method", "cats", "--sparsity", "0.5", "--profile", "/nonexistent.json", "hi"]),
        "sieve calibrate",
    );
}
