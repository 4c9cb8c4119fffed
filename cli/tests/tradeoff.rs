//! `sieve eval sweep | ppl-p | ab` on the real model over small windows: dense in the sweep
//! equals `eval ppl`, the methods diverge from dense, the PPL-p search brackets its budget,
//! the A/B verdict comes with its interval; bad input is refused with a clear error.

mod common;

use std::path::Path;

use common::*;

fn corpus(dir: &Path) -> String {
    let p = dir.join("eval.txt");
    std::fs::write(&p, PASSAGE.repeat(2)).unwrap();
    p.to_str().unwrap().to_string()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).unwrap()
}

#[test]
fn sweep_ppl_p_and_ab_measure_methods_against_dense() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path());
    let (corpus, profile) = (corpus(dir.path()), profile.to_str().unwrap().to_string());
    let common =
        ["--corpus", &corpus, "--ctx", "64", "--windows", "3", "--decode-tokens", "4", "--profile", &profile, "--json"];
    let run = |cmd: &[&str]| {
        let mut args = vec!["eval"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&common);
        sieve(&args)
    };

    let plots = dir.path().join("plots");
    let sweep =
        json(&run(&["sweep", "--methods", "cats,teal", "--sparsities", "0.3,0.6", "--plot", plots.to_str().unwrap()]));
    for f in ["ppl_vs_sparsity.svg", "ppl_vs_sparsity.png", "ppl_vs_tok_s.svg", "ppl_vs_tok_s.png"] {
        assert!(std::fs::metadata(plots.join(f)).unwrap().len() > 1000, "{f}");
    }
    let points = sweep["points"].as_array().unwrap();
    assert_eq!(points.len(), 5);
    let dense_ppl = points[0]["perplexity"].as_f64().unwrap();
    let ppl_plot = dir.path().join("ppl");
    let ppl_plot_s = ppl_plot.to_str().unwrap();
    // `eval ppl` over the sweep's windows.
    let ppl_of = |extra: &[&str]| {
        let mut args = vec!["eval", "ppl", "--corpus", &corpus, "--ctx", "64", "--windows", "3", "--json"];
        args.extend_from_slice(extra);
        json(&sieve(&args))
    };
    let ppl = ppl_of(&["--plot", ppl_plot_s]);
    assert!((ppl["perplexity"].as_f64().unwrap() - dense_ppl).abs() < 1e-6 * dense_ppl, "{ppl} vs {dense_ppl}");
    let per_window: Vec<f64> =
        ppl["per_window_perplexity"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(per_window.len(), 3);
    let mean_nll = per_window.iter().map(|p| p.ln()).sum::<f64>() / 3.0;
    assert!((mean_nll.exp() - dense_ppl).abs() < 1e-6 * dense_ppl, "equal windows: the geometric mean is the whole");
    assert!(std::fs::metadata(ppl_plot.join("ppl_per_window.png")).unwrap().len() > 1000);
    for p in &points[1..] {
        let f = |k: &str| p[k].as_f64().unwrap();
        assert!(f("kl_vs_dense") > 0.0 && f("top1_agreement") < 1.0 && f("perplexity") > dense_ppl * 0.9, "{p}");
        assert!(f("decode_tok_s") > 0.0 && f("speedup") > 0.0, "{p}");
    }
    // More sparsity, more divergence (same method), and fewer bytes read: a larger bound.
    assert!(points[2]["kl_vs_dense"].as_f64() > points[1]["kl_vs_dense"].as_f64(), "{sweep}");
    let bound = |k: usize| points[k]["bound_speedup"].as_f64().unwrap();
    assert_eq!(bound(0), 1.0, "dense reads what dense reads");
    assert!(bound(1) > 1.0 && bound(2) > bound(1) && bound(3) > 1.0 && bound(4) > bound(3), "{sweep}");
    // `eval ppl` of a method reports the same KL as the sweep.
    let cats = ppl_of(&["--method", "cats", "--sparsity", "0.3", "--profile", &profile]);
    assert!((cats["kl_vs_dense"].as_f64().unwrap() - points[1]["kl_vs_dense"].as_f64().unwrap()).abs() < 1e-9);

    let search = json(&run(&["ppl-p", "--methods", "cats", "--p", "5", "--tolerance", "0.05"]));
    let row = &search["rows"][0];
    let budget = row["budget"].as_f64().unwrap();
    assert!((budget - 1.05 * search["dense_perplexity"].as_f64().unwrap()).abs() < 1e-9);
    assert!(row["perplexity"].as_f64().unwrap() <= budget, "{row}");
    if let Some(over) = row["over_perplexity"].as_f64() {
        assert!(over > budget && row["over_at"].as_f64().unwrap() - row["sparsity"].as_f64().unwrap() <= 0.05 + 1e-6);
    }

    let ab_plots = dir.path().join("ab");
    let ab = json(&run(&[
        "ab",
        "--a",
        "cats:0.2",
        "--b",
        "cats:0.7",
        "--resamples",
        "200",
        "--plot",
        ab_plots.to_str().unwrap(),
    ]));
    for f in ["ab_sparsity_by_layer.png", "ab_ppl_per_window.svg"] {
        assert!(std::fs::metadata(ab_plots.join(f)).unwrap().len() > 1000, "{f}");
    }
    let v = &ab["verdict"];
    assert!(
        v["ci_low"].as_f64() <= v["ppl_ratio"].as_f64() && v["ppl_ratio"].as_f64() <= v["ci_high"].as_f64(),
        "{ab}"
    );
    assert!(v["ppl_ratio"].as_f64().unwrap() < 1.0, "30% kept should beat 80% kept: {ab}");
    assert_eq!(ab["down_input_sparsity_by_layer"][0].as_array().unwrap().len(), 30);
    // A against B directly: three paired runs, and where each stands on (perplexity, speed).
    let paired = &ab["paired_decode"];
    let ratios = paired["a_over_b"].as_array().unwrap();
    assert_eq!(ratios.len(), 3, "{ab}");
    assert!(ratios.iter().all(|r| r.as_f64().unwrap() > 0.0) && paired["b_tok_s"].as_f64().unwrap() > 0.0);
    let d = &ab["dominance"];
    if v["ppl_ratio"].as_f64().unwrap() < 0.995 {
        assert_eq!(d["quality"], "A", "{ab}");
        assert!(d["verdict"] == "A dominates" || d["verdict"] == "trade-off", "{ab}");
    }
    assert_eq!(ab["precision"], "fast");

    // The reference precision, scoring and decoding: its dense perplexity is `eval ppl`'s at
    // f32, and not the fast path's.
    let f32_sweep = json(&run(&["sweep", "--methods", "cats", "--sparsities", "0.5", "--precision", "f32"]));
    let f32_dense = f32_sweep["points"][0]["perplexity"].as_f64().unwrap();
    let f32_ppl = ppl_of(&["--precision", "f32"]);
    assert!((f32_ppl["perplexity"].as_f64().unwrap() - f32_dense).abs() < 1e-6 * f32_dense, "{f32_sweep}");
    assert!((f32_dense - dense_ppl).abs() > 1e-6 * dense_ppl, "f32 and fast score alike: {f32_sweep}");
    assert_eq!(f32_sweep["precision"], "f32");
    assert!(f32_sweep["points"][1]["speedup"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_tradeoff_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path());
    let run = |cmd: &[&str]| {
        let mut args = vec!["eval"];
        args.extend_from_slice(cmd);
        args.extend_from_slice(&["--corpus", &corpus, "--ctx", "64", "--windows", "2"]);
        sieve(&args)
    };
    assert_fails_with(&run(&["ab", "--a", "bogus:0.5", "--b", "cats:0.5"]), "unknown method 'bogus'");
    assert_fails_with(&run(&["ab", "--a", "cats:0.5", "--b", "cats:1.5"]), "--b cats:1.5");
    assert_fails_with(&run(&["ab", "--a", "cats:0.5", "--b", "teal:0.5", "--speed-runs", "0"]), "--speed-runs");
    assert_fails_with(&run(&["ab", "--a", "cats:0.5", "--b", "teal:0.5", "--ppl-band", "2"]), "--ppl-band");
    assert_fails_with(&run(&["sweep", "--precision", "f16"]), "unknown precision 'f16'");
    assert_fails_with(&run(&["sweep", "--sparsities", ""]), "--sparsities");
    assert_fails_with(&run(&["sweep", "--sparsities", "0"]), "--sparsities");
    assert_fails_with(&run(&["ppl-p", "--p", "0"]), "--p");
    assert_fails_with(&run(&["sweep", "--methods", "cats", "--plot", "/proc/sieve-plots"]), "cannot write plots");
    assert_fails_with(&run(&["ppl-p", "--p=-5"]), "--p");
    let mut args = vec!["eval", "sweep", "--corpus", &corpus, "--ctx", "512", "--windows", "500"];
    args.extend_from_slice(&["--methods", "cats"]);
    assert_fails_with(&sieve(&args), "500 windows of 512");
}

#[test]
fn masks_of_several_methods_with_affinity_and_heat_maps() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path());
    let corpus = corpus(dir.path());
    let plots = dir.path().join("heat");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "eval",
            "masks",
            "--corpus",
            &corpus,
            "--sparsity",
            "0.5",
            "--positions",
            "128",
            "--ctx",
            "64",
            "--timed-steps",
            "0",
            "--profile",
            profile.to_str().unwrap(),
        ];
        v.extend_from_slice(extra);
        sieve(&v)
    };
    let v = json(&args(&["--methods", "cats,teal", "--plot", plots.to_str().unwrap(), "--json"]));
    let cats = &v["reports"][0];
    assert_eq!(cats["method"], "cats");
    // The same rule at the same target: equal up to a neuron exactly at the threshold.
    assert!(cats["overall"]["cats"]["recall"].as_f64().unwrap() > 0.9999);
    for af in v["affinity"].as_array().unwrap() {
        let reuse = af["reuse"].as_f64().unwrap();
        assert!(reuse > 0.0 && reuse <= 1.0, "{af}");
        let agg: Vec<f64> = af["aggregated"].as_array().unwrap().iter().map(|p| p[1].as_f64().unwrap()).collect();
        assert!(agg[0] > 0.3 && agg[0] > agg[1] && agg[1] > agg[2], "{af}");
    }
    for f in ["recall_vs_teal.svg", "recall_vs_cats.png", "recall_vs_cett.png"] {
        assert!(std::fs::metadata(plots.join(f)).unwrap().len() > 1000, "{f}");
    }
    assert_fails_with(&args(&["--methods", "dense,cats"]), "dense has no mask");
    assert_fails_with(&args(&["--methods", "cats", "--affinity-k", "0"]), "--affinity-k");
    assert_fails_with(&args(&["--methods", "cats", "--plot", "/proc/sieve-plots"]), "cannot write plots");
}
