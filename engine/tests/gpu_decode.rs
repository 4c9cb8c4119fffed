//! Decode on the GPU (feature `cuda`) against the CPU f32 path on the real model. Skips when
//! no GPU or driver is present (CI); scripts/gpu-check.sh's machine runs it with
//! SIEVE_MODEL pointing at the model (or a truncated copy of it).
#![cfg(feature = "cuda")]

mod common;

use sieve_engine::config::Config;
use sieve_engine::gpu::{GpuModel, GpuPlan, calibrate_uniform};
use sieve_engine::model::{Hooks, Logits};
use sieve_engine::sparsity::Method;
use sieve_engine::{Model, Precision};
use sieve_kernels::gpu::{FoldedNorm, Gpu, GpuError, WeightType};

fn gpu() -> Option<Gpu> {
    match Gpu::open(0) {
        Ok(g) => Some(g),
        Err(GpuError::NoDriver | GpuError::NoDevice { .. } | GpuError::MissingLibrary(_)) => {
            eprintln!("skipped: no GPU");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A 2-layer Llama shape with 2 KV heads of 64.
fn small(d: usize, f: usize, heads: usize, vocab: usize) -> Config {
    Config {
        name: "small".into(),
        architecture: "llama".into(),
        n_layers: 2,
        d_model: d,
        d_ff: f,
        n_heads: heads,
        n_kv_heads: 2,
        head_dim: 64,
        rope_dim: 64,
        rope_theta: 10_000.0,
        rms_eps: 1e-5,
        context_len: 4096,
        vocab_size: vocab,
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn gpu_decode_matches_the_cpu_and_sparse_plans_stay_close() {
    let Some(gpu) = gpu() else { return };
    let model = Model::load(&common::model_path(), Precision::F32).unwrap();
    let n = model.config().n_layers;
    let mut gm = GpuModel::from_model(&model, gpu, 64).unwrap();
    let tokens: Vec<u32> = (0..16u32).map(|i| 100 + 37 * i).collect();
    let dense = GpuPlan::dense(n);
    let mut cache = model.new_cache();
    let mut gpu_dense = Vec::new();
    for &t in &tokens {
        let cpu = model.forward_with(&[t], &mut cache, Logits::Last, &mut Hooks::default()).unwrap();
        let g = gm.step(t, &dense).unwrap();
        assert!(cosine(&cpu, &g) > 0.999, "step {t}: cosine {}", cosine(&cpu, &g));
        gpu_dense.push(g);
    }
    // Thresholds from the model's own activations; 25% sparsity moves logits only a little.
    gm.reset();
    let samples = gm.sample_activations(&tokens).unwrap();
    for method in [Method::TealUniform, Method::Cats] {
        let plan = calibrate_uniform(method, 0.25, &samples).unwrap();
        gm.reset();
        for (i, &t) in tokens.iter().enumerate() {
            let g = gm.step(t, &plan).unwrap();
            assert!(cosine(&gpu_dense[i], &g) > 0.95, "{method:?} step {i}: cosine {}", cosine(&gpu_dense[i], &g));
        }
        gm.reset();
        assert!(gm.time_steps(&tokens, &plan).unwrap().us_per_step > 0.0);
    }
    // Bad input is refused, not run.
    gm.reset();
    assert!(gm.step(model.config().vocab_size as u32, &dense).is_err());
    assert!(gm.step(1, &GpuPlan::dense(n + 1)).is_err());
}

#[test]
fn a_small_synthetic_model_runs_every_method() {
    let Some(gpu) = gpu() else { return };
    let shape = small(512, 1536, 8, 1000);
    let mut gm = GpuModel::synthetic(gpu, shape, 32, 1).unwrap();
    let tokens: Vec<u32> = (0..8).collect();
    let samples = gm.sample_activations(&tokens).unwrap();
    for (m, s) in [(Method::Dense, 0.0), (Method::TealUniform, 0.5), (Method::Cats, 0.5)] {
        let plan = calibrate_uniform(m, s, &samples).unwrap();
        gm.reset();
        let logits = gm.step(3, &plan).unwrap();
        assert_eq!(logits.len(), 1000);
        assert!(logits.iter().all(|v| v.is_finite()), "{m:?}");
    }
}

#[test]
fn split_attention_over_long_caches_matches_the_single_block_attention() {
    let (Some(a), Some(b)) = (gpu(), gpu()) else { return };
    let shape = small(256, 512, 4, 500);
    // The same random model with a short cache (one block per head) and a long one (split
    // over positions once past 128); both decode 300 tokens.
    let mut single = GpuModel::synthetic(a, shape.clone(), 256, 9).unwrap();
    let mut split = GpuModel::synthetic(b, shape, 512, 9).unwrap();
    let plan = GpuPlan::dense(2);
    for i in 0..250u32 {
        let t = (i * 7) % 500;
        let x = single.step(t, &plan).unwrap();
        let y = split.step(t, &plan).unwrap();
        if i % 50 == 49 {
            assert!(cosine(&x, &y) > 0.99999, "position {i}: cosine {}", cosine(&x, &y));
        }
    }
}

#[test]
fn sequences_taking_turns_decode_as_each_would_alone() {
    let Some(gpu) = gpu() else { return };
    let shape = small(256, 512, 4, 500);
    let mut gm = GpuModel::synthetic(gpu, shape, 64, 5).unwrap();
    let plan = GpuPlan::dense(2);
    let a: Vec<u32> = (0..20).map(|i| (i * 13 + 1) % 500).collect();
    let b: Vec<u32> = (0..20).map(|i| (i * 29 + 7) % 500).collect();
    // Each sequence alone, one after the other on sequence 0.
    let mut alone = Vec::new();
    for tokens in [&a, &b] {
        gm.reset();
        alone.push(tokens.iter().map(|&t| gm.step(t, &plan).unwrap()).collect::<Vec<_>>());
    }
    // Both at once on sequences 0 and 1, a token of each in turn: bit-identical logits.
    gm.set_sequences(2).unwrap();
    assert_eq!(gm.sequences(), 2);
    for seq in 0..2 {
        gm.select(seq).unwrap();
        gm.reset();
    }
    for i in 0..a.len() {
        for (seq, tokens) in [&a, &b].into_iter().enumerate() {
            gm.select(seq).unwrap();
            let logits = gm.step(tokens[i], &plan).unwrap();
            assert_eq!(gm.position(), i + 1);
            let differ = logits.iter().zip(&alone[seq][i]).filter(|(x, y)| x != y).count();
            assert_eq!(differ, 0, "sequence {seq}, position {i}: {differ} logits differ");
        }
    }
    assert!(gm.select(2).is_err(), "a sequence the model does not hold is refused");
}

#[test]
fn early_launch_changes_no_result() {
    let Some(gpu) = gpu() else { return };
    if !gpu.early_launch() {
        eprintln!("skipped: this GPU has no programmatic dependent launch (sm_90+)");
        return;
    }
    let shape = small(512, 1536, 8, 1000);
    // A cache longer than 256 positions: attention runs split over positions (two kernels).
    let mut gm = GpuModel::synthetic(gpu, shape, 300, 3).unwrap();
    let cal: Vec<u32> = (0..8).collect();
    let samples = gm.sample_activations(&cal).unwrap();
    let tokens: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % 1000).collect();
    // The flag says which mode the graphs are captured in; whether the driver overlapped the
    // kernels is for the benchmarks to show. What this checks is that results do not depend
    // on it: removing the waits from the kernels makes every comparison below fail.
    let run = |gm: &mut GpuModel, plan: &GpuPlan, early: bool| {
        gm.set_early_launch(early);
        assert_eq!(gm.gpu().early_launch(), early);
        gm.reset();
        tokens.iter().map(|&t| gm.step(t, plan).unwrap()).collect::<Vec<_>>()
    };
    // Dense reads whole rows with no atomics: the same logits to the bit either way.
    let dense = GpuPlan::dense(2);
    let (on, off) = (run(&mut gm, &dense, true), run(&mut gm, &dense, false));
    for (i, (a, b)) in on.iter().zip(&off).enumerate() {
        let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(differ, 0, "dense, position {i}: {differ} logits differ");
    }
    // TEAL and CATS sum with atomics in any order, which can flip an activation across its
    // threshold (cosine down to ~0.9993 between two runs in the same mode); a kernel reading
    // before the previous one finished gives ~0.2.
    for (m, s) in [(Method::TealUniform, 0.5), (Method::Cats, 0.5)] {
        let plan = calibrate_uniform(m, s, &samples).unwrap();
        let (on, off) = (run(&mut gm, &plan, true), run(&mut gm, &plan, false));
        for (i, (a, b)) in on.iter().zip(&off).enumerate() {
            assert!(cosine(a, b) > 0.999, "{m:?}, position {i}: cosine {}", cosine(a, b));
        }
    }
}

#[test]
fn folded_norms_match_norm_launches() {
    let Some(gpu) = gpu() else { return };
    let shape = small(512, 1536, 8, 1000);
    let mut gm = GpuModel::synthetic(gpu, shape, 32, 5).unwrap();
    let tokens: Vec<u32> = (0..12).map(|i| (i * 53 + 7) % 1000).collect();
    let mut run = |fold: bool| {
        gm.set_folded_norms(fold);
        gm.reset();
        tokens.iter().map(|&t| gm.step(t, &GpuPlan::dense(2)).unwrap()).collect::<Vec<_>>()
    };
    let (folded, launched) = (run(true), run(false));
    // The same sums in another order (x * w then the scale, against x * scale * w): rounding
    // apart, the same logits; a wrong scale or weight would not come close.
    for (i, (a, b)) in folded.iter().zip(&launched).enumerate() {
        assert!(cosine(a, b) > 0.99999, "position {i}: cosine {}", cosine(a, b));
        let top = |v: &[f32]| v.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).map(|(j, _)| j);
        assert_eq!(top(a), top(b), "position {i}");
    }
    // Norm weights that do not match the input are refused, not read.
    let g = gm.gpu();
    let (w, x, y) = (g.zeros::<u16>(8 * 16).unwrap(), g.zeros::<f32>(16).unwrap(), g.zeros::<f32>(8).unwrap());
    let short = g.zeros::<f32>(15).unwrap();
    let bad = FoldedNorm { weight: g.view(&short), eps: 1e-5 };
    let (wv, xv, yv) = (g.view(&w), g.view(&x), g.view(&y));
    assert!(g.rows_gemv(WeightType::F16, wv, xv, yv, None, false, Some(&bad)).is_err());
}
