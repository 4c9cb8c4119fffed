//! `sieve eval report` on the real model over small windows: the JSON agrees with `eval ppl`,
//! each PPL-p% point lies inside its measured bracket, every section is present in the
//! markdown with its plots embedded, predictor methods without predictors are left out with
//! a note, and bad input is refused before any slow work.

mod common;

use common::*;

#[test]
fn report_has_every_section_and_agrees_with_eval_ppl() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path());
    let corpus = dir.path().join("eval.txt");
    std::fs::write(&corpus, PASSAGE.repeat(2)).unwrap();
    let calib = dir.path().join("calib.txt");
    let out = dir.path().join("out").join("report.md");
    let (corpus, calib, out_s) = (corpus.to_str().unwrap(), calib.to_str().unwrap(), out.to_str().unwrap());
    let o = sieve(&[
        "eval",
        "report",
        "--corpus",
        corpus,
        "--ctx",
        "64",
        "--windows",
        "3",
        "--sparsities",
        "0.3,0.6",
        "--decode-tokens",
        "4",
        "--audit-positions",
        "64",
        "--calibration-corpus",
        calib,
        "--calibration-tokens",
        "128",
        "--robustness-windows",
        "2",
        "--profile",
        profile.to_str().unwrap(),
        "--out",
        out_s,
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();

    // No predictor set beside this profile: the predictor method is left out, and said so.
    assert!(v["notes"][0].as_str().unwrap().contains("predictor methods left out"), "{}", v["notes"]);
    let sweep = v["sweep"].as_array().unwrap();
    assert_eq!(sweep.len(), 1 + 3 * 2, "dense plus teal, cats, cett at two sparsities");
    let dense = sweep[0]["perplexity"].as_f64().unwrap();
    let ppl = sieve(&["eval", "ppl", "--corpus", corpus, "--ctx", "64", "--windows", "3", "--json"]);
    let ppl: serde_json::Value = serde_json::from_str(&stdout(&ppl)).unwrap();
    assert!((ppl["perplexity"].as_f64().unwrap() - dense).abs() < 1e-6 * dense, "{ppl} vs {dense}");

    let rows = v["ppl_p"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * 3);
    for r in rows {
        let s = r["sparsity"].as_f64().unwrap();
        let below = r["below"][0].as_f64().unwrap();
        assert!(s >= below - 1e-6, "{r}");
        if let Some(above) = r["above"].as_array() {
            assert!(
                s <= above[0].as_f64().unwrap() + 1e-6 && above[1].as_f64().unwrap() > r["budget"].as_f64().unwrap(),
                "{r}"
            );
        }
        assert!(r["speedup"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(v["ab"].as_array().unwrap().len(), 2 * 2, "cats and cett against teal at each sparsity");
    assert_eq!(v["masks"].as_array().unwrap().len(), 3);
    let robust = v["robustness"]["rows"].as_array().unwrap();
    assert_eq!(robust.len(), 3 * 2, "three profiles, teal and cats");
    assert!(robust.iter().any(|r| r["source"] == "self-generated"), "{robust:?}");

    let md = std::fs::read_to_string(&out).unwrap();
    for section in [
        "## Headline: PPL-p% sparsity",
        "Sparsing Law",
        "Llama-3-8B",
        "## Quality against sparsity",
        "## A/B at equal target sparsity",
        "## MLP masks at target sparsity",
        "## Calibration robustness",
    ] {
        assert!(md.contains(section), "missing {section}");
    }
    assert!(md.matches("](data:image/png;base64,").count() >= 7, "4 line charts and 3 heat maps embedded");
}

#[test]
fn bad_report_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("eval.txt");
    std::fs::write(&corpus, PASSAGE.repeat(2)).unwrap();
    let out = dir.path().join("r.md");
    let run = |extra: &[&str]| {
        let mut args = vec!["eval", "report", "--corpus", corpus.to_str().unwrap(), "--ctx", "64", "--windows", "2"];
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        sieve(&args)
    };
    assert_fails_with(&run(&["--sparsities", ""]), "--sparsities");
    assert_fails_with(&run(&["--sparsities", "0.5,1"]), "--sparsities");
    assert_fails_with(&run(&["--p", "0"]), "--p");
    assert_fails_with(&run(&["--methods", "dense"]), "--methods");
    assert_fails_with(&run(&["--methods", "bogus"]), "bogus");
    assert_fails_with(&run(&["--robustness-windows", "3"]), "--robustness-windows");
    assert_fails_with(&run(&["--plot", "/proc/sieve-plots"]), "cannot write plots");
    let o = sieve(&["eval", "report", "--corpus", corpus.to_str().unwrap(), "--out", "/proc/sieve/r.md"]);
    assert_fails_with(&o, "--out /proc/sieve/r.md");
    let o = sieve(&["eval", "report", "--corpus", corpus.to_str().unwrap(), "--ctx", "64", "--windows", "500"]);
    assert_fails_with(&o, "500 windows of 64");
    assert!(!out.exists(), "nothing is written for a refused request");
}
