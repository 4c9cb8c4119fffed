//! The GPU path from the command line. Without a GPU (CI) these check the refusals: a build
//! without the `cuda` feature says how to get it, a build with it says there is no driver or
//! GPU, bad shapes and methods are refused before any GPU work, and the CPU keeps working.
//! With a GPU (scripts/gpu-check.sh's machine) the same tests decode on it and check the logits
//! against the CPU f32 path.

mod common;

use common::*;

/// What `--device cuda` must say on this build and machine when no GPU can run it.
fn gpu_refusal(err: &str) -> bool {
    if cfg!(feature = "cuda") {
        err.contains("no CUDA driver") || err.contains("no CUDA GPU") || err.contains("could not be loaded")
    } else {
        err.contains("--features cuda")
    }
}

#[test]
fn bench_decode_on_cuda_runs_or_refuses_clearly_and_the_cpu_still_works() {
    let o = sieve(&[
        "bench",
        "decode",
        "--device",
        "cuda",
        "--prompt-tokens",
        "16",
        "--new-tokens",
        "16",
        "--runs",
        "1",
        "--json",
    ]);
    if o.status.success() {
        let r: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
        let c = &r["dense_check"];
        assert!(c["min_cosine"].as_f64().unwrap() > 0.999, "{c}");
        assert!(c["top1_agreement"].as_f64().unwrap() > 0.9, "{c}");
        assert!(r["dense_tok_s"].as_f64().unwrap() > 0.0);
    } else {
        let err = stderr(&o);
        assert!(gpu_refusal(&err), "unclear refusal: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let cpu = sieve(&["generate", "--max-tokens", "4", "The capital of France is"]);
    assert!(cpu.status.success(), "CPU generation after the GPU attempt: {}", stderr(&cpu));
    assert!(!stdout(&cpu).trim().is_empty());
}

#[test]
fn generate_on_cuda_runs_or_refuses_clearly() {
    let o = sieve(&["generate", "--device", "cuda", "--max-tokens", "4", "The capital of France is"]);
    if o.status.success() {
        assert!(!stdout(&o).trim().is_empty());
    } else {
        let err = stderr(&o);
        assert!(gpu_refusal(&err), "unclear refusal: {err}");
    }
    let o =
        sieve(&["generate", "--device", "cuda", "--audit-every", "2", "--method", "cats", "--sparsity", "0.5", "x"]);
    assert_fails_with(&o, "CPU only");
}

#[test]
fn gpu_bench_refuses_bad_shapes_and_sparsities_before_touching_a_gpu() {
    for (args, needle) in [
        (vec!["gpu-bench", "--shapes", "4096x100"], "multiples of 8"),
        (vec!["gpu-bench", "--shapes", "4096"], "INPUTSxOUTPUTS"),
        (vec!["gpu-bench", "--shapes", "0x8"], "multiples of 8"),
        (vec!["gpu-bench", "--sparsities", "1.5"], "outside [0, 1)"),
        (vec!["gpu-bench", "--replays", "0"], "--replays"),
        (vec!["gpu-bench", "--units-sweep", "0"], "--units-sweep"),
    ] {
        let o = sieve(&args);
        assert_fails_with(&o, needle);
    }
    let o = sieve(&["gpu-bench", "--shapes", "576x1536", "--sparsities", "0.5", "--replays", "1"]);
    if !o.status.success() {
        assert!(gpu_refusal(&stderr(&o)), "{}", stderr(&o));
    } else {
        assert!(stdout(&o).contains("passed"), "{}", stdout(&o));
    }
}

#[test]
fn synthetic_benchmark_refuses_unknown_shapes_and_methods() {
    assert_fails_with(&sieve(&["bench", "gpu-synthetic", "--shape", "gpt-5"]), "llama3-8b");
    assert_fails_with(&sieve(&["bench", "gpu-synthetic", "--methods", "predictor:0.5"]), "cannot be calibrated");
    assert_fails_with(&sieve(&["bench", "gpu-synthetic", "--methods", "teal-uniform:1.2"]), "sparsity");
    assert_fails_with(&sieve(&["bench", "gpu-synthetic", "--steps", "0"]), "--steps");
}
