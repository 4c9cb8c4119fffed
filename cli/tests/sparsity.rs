//! `sieve calibrate` and sparse `eval ppl` end to end on the real model: a small calibration
//! run, its profile used by CATS and TEAL, and each bad input refused with a clear error.

mod common;

use std::path::Path;

use common::*;

fn ppl(dir: &Path, profile: &Path, method: &str, sparsity: &str) -> serde_json::Value {
    let corpus = dir.join("eval.txt");
    std::fs::write(&corpus, PASSAGE).unwrap();
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
    for method in ["cats", "teal-uniform", "teal", "cett"] {
        let half = ppl(dir.path(), &profile, method, "0.5");
        let achieved = half["achieved_sparsity"].as_f64().unwrap();
        let by_projection = half["achieved_by_projection"].as_object().unwrap();
        assert_eq!(by_projection.len(), 7, "{half}");
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
    std::fs::write(&corpus, PASSAGE).unwrap();
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

    let old = dir.path().join("old.json");
    v["model_sha256"] = serde_json::from_str::<serde_json::Value>(&text).unwrap()["model_sha256"].clone();
    v["version"] = 1.into();
    std::fs::write(&old, v.to_string()).unwrap();
    assert_fails_with(
        &run(&["--method", "teal", "--sparsity", "0.5", "--profile", old.to_str().unwrap()]),
        "run `sieve calibrate` again",
    );
    assert_fails_with(
        &sieve(&["eval", "masks", "--method", "cats", "--sparsity", "0", "--profile", profile.to_str().unwrap()]),
        "--sparsity must be above 0",
    );
    assert_fails_with(
        &sieve(&["bench", "decode", "--method", "cats", "--sparsity", "1.5", "--runs", "1"]),
        "must be in [0, 1)",
    );
    assert_fails_with(&sieve(&["calibrate", "--corpus", c, "--tokens", "1000000"]), "corpus too short");
    assert_fails_with(&sieve(&["calibrate", "--corpus", c, "--greedy-tokens", "0"]), "--greedy-tokens");
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
    let o = sieve(&[
        "generate",
        "--max-tokens",
        "9",
        "--method",
        "cats",
        "--sparsity",
        "0.3",
        "--profile",
        p,
        "--audit-every",
        "2",
        "The capital of France is",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // CATS audited against itself: perfect recall.
    assert!(stderr(&o).contains("vs Cats: recall 1.000"), "{}", stderr(&o));
    assert_fails_with(&sieve(&["generate", "--audit-every", "2", "hi"]), "--audit-every needs a method");
    assert_fails_with(&sieve(&["generate", "--method", "cats", "--sparsity", "2", "hi"]), "must be in [0, 1)");
    assert_fails_with(
        &sieve(&["generate", "--method", "cats", "--sparsity", "0.5", "--profile", "/nonexistent.json", "hi"]),
        "sieve calibrate",
    );
}

#[test]
fn bench_and_mask_audit_measure_a_method_against_dense() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path());
    let p = profile.to_str().unwrap();
    let o = sieve(&[
        "bench",
        "decode",
        "--prompt-tokens",
        "32",
        "--new-tokens",
        "8",
        "--runs",
        "1",
        "--method",
        "teal",
        "--sparsity",
        "0.5",
        "--profile",
        p,
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(b["method"], "teal");
    assert!(b["achieved_sparsity"].as_f64().unwrap() > 0.3, "{b}");
    assert!(b["dense"]["decode_tok_s"].as_f64().unwrap() > 0.0, "{b}");
    assert!(b["dense"]["decode_speedup"].as_f64().unwrap() > 0.0, "{b}");
    // Bytes per step: SmolLM2's Q4_1 projections (66.4 MB) and its Q8 LM head (31.9 MB);
    // TEAL reads less of the projections, all of the head, and the same cache.
    let t = &b["traffic"];
    let f = |k: &str| t[k].as_f64().unwrap();
    assert!((98.0..98.5).contains(&f("dense_weight_mb")), "{t}");
    assert!(f("method_weight_mb") > 31.8 && f("method_weight_mb") < 0.9 * f("dense_weight_mb"), "{t}");
    let bound = (f("dense_weight_mb") + f("kv_cache_mb")) / (f("method_weight_mb") + f("kv_cache_mb"));
    assert!((f("bound_speedup") - bound).abs() < 1e-9 && bound > 1.1, "{t}");
    assert!(f("kv_cache_mb") > 0.0, "{t}");
    let speedup = b["dense"]["decode_speedup"].as_f64().unwrap();
    assert!((f("of_bound") - speedup / bound).abs() < 1e-9, "{t}");

    let o = sieve(&[
        "eval",
        "masks",
        "--method",
        "cats",
        "--sparsity",
        "0.5",
        "--positions",
        "64",
        "--ctx",
        "64",
        "--timed-steps",
        "2",
        "--profile",
        p,
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 30);
    assert_eq!(m["positions"], 64);
    // CATS's own mask is the CATS reference; the oracle keeps other neurons.
    assert!(m["overall"]["cats"]["recall"].as_f64().unwrap() > 0.999, "{}", m["overall"]);
    assert!(m["overall"]["cett"]["f1"].as_f64().unwrap() < 0.99, "{}", m["overall"]);
    for l in layers {
        assert!(l["mlp_us"].as_f64().unwrap() > 0.0 && l["dense_mlp_us"].as_f64().unwrap() > 0.0, "{l}");
        let s = l["achieved_by_projection"]["down"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s));
    }
}

#[test]
fn batching_union_loses_sparsity_as_streams_grow() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path());
    let p = profile.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["bench", "batching", "--steps", "4", "--prompt-tokens", "8", "--profile", p];
        args.extend_from_slice(extra);
        sieve(&args)
    };
    let o = run(&["--method", "cats", "--sparsity", "0.5", "--streams", "1,2,4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
    assert_eq!(f(&rows[0], "sparsity_lost"), 0.0);
    for r in rows {
        let single = f(r, "single_sparsity");
        assert!(single > 0.2 && single < 0.8, "{r}");
        assert!(f(r, "round_robin_tok_s") > 0.0 && f(r, "dense_batch_gain") > 0.0, "{r}");
    }
    for w in rows.windows(2) {
        assert!(f(&w[1], "union_sparsity") < f(&w[0], "union_sparsity"), "{w:?}");
    }
    assert_fails_with(&run(&["--method", "cats", "--sparsity", "0.5", "--streams", "0"]), "--streams");
    assert_fails_with(&run(&["--method", "cett", "--sparsity", "0.5"]), "union is measured");
    assert_fails_with(&run(&["--method", "dense"]), "--method cats");
}
