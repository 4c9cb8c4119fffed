//! Helpers shared by the CLI tests: the real model, and running the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn model_path() -> PathBuf {
    let p = std::env::var_os("SIEVE_MODEL").map(PathBuf::from).unwrap_or_else(sieve_engine::paths::default_model_path);
    assert!(p.exists(), "model not found at {} — run ./scripts/setup.sh first", p.display());
    p
}

pub fn sieve(args: &[&str]) -> Output {
    sieve_with_model(&model_path(), args)
}

pub fn sieve_with_model(model: &Path, args: &[&str]) -> Output {
    Command::new(sieve_bin())
        .arg("--model")
        .arg(model)
        .args(args)
        .env_remove("SIEVE_MODEL")
        .output()
        .expect("run sieve")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with `needle` in stderr, without a panic.
pub fn assert_fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure; stdout: {}", stdout(o));
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
}

/// The binary under test.
pub fn sieve_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sieve"))
}

/// The built-in passage the small calibrations run on.
pub const PASSAGE: &str = include_str!("../../../eval/data/bench_prompt.txt");

/// Calibrates on the built-in passage into `dir` (256 tokens: seconds), returning the profile.
pub fn small_profile(dir: &Path) -> PathBuf {
    let corpus = dir.join("calib.txt");
    std::fs::write(&corpus, PASSAGE).unwrap();
    let out = dir.join("profile.json");
    let o = sieve(&[
        "calibrate",
        "--corpus",
        corpus.to_str().unwrap(),
        "--tokens",
        "256",
        "--window",
        "128",
        "--greedy-tokens",
        "32",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}
