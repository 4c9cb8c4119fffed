//! The GPU decode commands, built with the `cuda` feature.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use sieve_engine::config::Config;
use sieve_engine::gpu::{
    GpuModel, GpuPlan, achieved_sparsity, calibrate_uniform, method_step_weight_bytes, step_weight_bytes,
};
use sieve_engine::model::{Hooks, Logits};
use sieve_engine::sampling::{Sampler, SamplingParams, argmax};
use sieve_engine::sparsity::SparsityPlan;
use sieve_engine::{Model, Precision};
use sieve_eval::corpus::{BUILTIN_BENCH_TEXT, tokenize_file};
use sieve_kernels::gpu::{Gather, Gpu};

use super::SyntheticArgs;
use crate::commands::bench::DecodeArgs;

fn open_gpu(ordinal: usize) -> Result<Gpu> {
    Gpu::open(ordinal).context("opening the GPU (--device cuda)")
}

/// How the GPU's logits compare with the CPU f32 path's over the same decode steps.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogitCheck {
    /// Steps compared.
    pub steps: usize,
    /// Largest |gpu - cpu| over all logits, relative to the largest |cpu| logit of its step.
    pub max_rel_diff: f64,
    /// Smallest cosine similarity of a step's logit vectors.
    pub min_cosine: f64,
    /// Share of steps whose top token agrees.
    pub top1_agreement: f64,
}

/// Decodes `tokens` one at a time on the CPU (f32, the plan applied by zeroing) and on the
/// GPU, comparing logits step by step.
fn compare(
    model: &Model,
    gm: &mut GpuModel,
    tokens: &[u32],
    plan: Option<&SparsityPlan>,
    gpu_plan: &GpuPlan,
) -> Result<LogitCheck> {
    let mut cache = model.new_cache();
    gm.reset();
    let (mut max_rel, mut min_cos, mut agree) = (0f64, 1f64, 0usize);
    for &t in tokens {
        let mut hooks = Hooks { plan, accuracy_path: true, ..Default::default() };
        let cpu = model.forward_with(&[t], &mut cache, Logits::Last, &mut hooks)?;
        let gpu = gm.step(t, gpu_plan)?;
        let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6) as f64;
        let diff = cpu.iter().zip(&gpu).fold(0f32, |m, (a, b)| m.max((a - b).abs())) as f64;
        max_rel = max_rel.max(diff / scale);
        let dot: f64 = cpu.iter().zip(&gpu).map(|(&a, &b)| a as f64 * b as f64).sum();
        let na: f64 = cpu.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = gpu.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
        min_cos = min_cos.min(dot / (na * nb).max(f64::MIN_POSITIVE));
        agree += (argmax(&cpu) == argmax(&gpu)) as usize;
    }
    Ok(LogitCheck {
        steps: tokens.len(),
        max_rel_diff: max_rel,
        min_cosine: min_cos,
        top1_agreement: agree as f64 / tokens.len().max(1) as f64,
    })
}

/// Median GPU microseconds per step of `plan` over `runs` runs of `tokens` from position 0.
fn time_plan(gm: &mut GpuModel, tokens: &[u32], plan: &GpuPlan) -> Result<f64> {
    gm.reset();
    Ok(gm.time_steps(tokens, plan)?.us_per_step)
}

/// Times dense and `plan` in alternation (`runs` each) and returns their medians.
fn paired_times(gm: &mut GpuModel, tokens: &[u32], dense: &GpuPlan, plan: &GpuPlan, runs: usize) -> Result<(f64, f64)> {
    time_plan(gm, tokens, dense)?;
    time_plan(gm, tokens, plan)?;
    let (mut d, mut m) = (Vec::new(), Vec::new());
    for r in 0..runs.max(1) {
        if r % 2 == 0 {
            d.push(time_plan(gm, tokens, dense)?);
            m.push(time_plan(gm, tokens, plan)?);
        } else {
            m.push(time_plan(gm, tokens, plan)?);
            d.push(time_plan(gm, tokens, dense)?);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok((median(&mut d), median(&mut m)))
}

/// `sieve bench decode --device cuda`.
pub fn bench(model_path: &Path, a: &DecodeArgs) -> Result<()> {
    if a.prompt_tokens == 0 || a.runs == 0 {
        bail!("--prompt-tokens and --runs must be at least 1");
    }
    let (tok, model) = super::super::load(model_path, Precision::F32)?;
    let text = match &a.corpus {
        Some(p) => tokenize_file(&tok, p)?,
        None => tok.encode(BUILTIN_BENCH_TEXT)?,
    };
    let steps = a.prompt_tokens + a.new_tokens;
    let tokens: Vec<u32> = text.iter().copied().cycle().take(steps).collect();
    if tokens.is_empty() {
        bail!("the prompt text has no tokens");
    }
    let cpu_plan = a.sparsity.plan(model_path, &model)?;
    let n_layers = model.config().n_layers;
    let plan = match &cpu_plan {
        Some(p) => GpuPlan::from_plan(p)?,
        None => GpuPlan::dense(n_layers),
    };
    let dense = GpuPlan::dense(n_layers);
    let mut gm = GpuModel::from_model(&model, open_gpu(0)?, steps + 1)?;
    if gm.max_len() < steps {
        bail!("{steps} steps do not fit the model's {}-position context", gm.max_len());
    }
    let check_tokens = &tokens[..tokens.len().min(32)];
    let dense_check = compare(&model, &mut gm, check_tokens, None, &dense)?;
    let method_check = match &cpu_plan {
        Some(p) => Some(compare(&model, &mut gm, check_tokens, Some(p), &plan)?),
        None => None,
    };
    let (dense_us, method_us) = paired_times(&mut gm, &tokens, &dense, &plan, a.runs)?;
    let info = gm.gpu().info().clone();
    let out = serde_json::json!({
        "device": "cuda",
        "gpu": info.name,
        "model": model.config().name,
        "layers": n_layers,
        "method": plan.method,
        "sparsity": a.sparsity.sparsity,
        "steps": steps,
        "runs": a.runs,
        "dense_check": dense_check,
        "method_check": method_check,
        "dense_us_per_step": dense_us,
        "dense_tok_s": 1e6 / dense_us,
        "method_us_per_step": method_us,
        "method_tok_s": 1e6 / method_us,
        "decode_speedup": dense_us / method_us,
    });
    if a.json {
        return super::super::print_json(&out);
    }
    println!(
        "GPU: {} | model {} ({} layers), fp16 weights and KV cache, one CUDA graph per step",
        info.name,
        model.config().name,
        n_layers
    );
    let show = |name: &str, c: &LogitCheck| {
        println!(
            "{name} logits vs CPU f32 over {} steps: max |diff| {:.2e} of the largest logit, min cosine {:.6}, top-1 agreement {:.3}",
            c.steps, c.max_rel_diff, c.min_cosine, c.top1_agreement
        )
    };
    show("dense", &dense_check);
    if let Some(c) = &method_check {
        show(plan.method.name(), c);
    }
    println!(
        "decode over {steps} steps (median of {} paired runs, GPU time): dense {:.1} µs/step ({:.0} tok/s); {} at {}: {:.1} µs/step ({:.0} tok/s), speedup {:.2}x",
        a.runs,
        dense_us,
        1e6 / dense_us,
        plan.method,
        a.sparsity.sparsity,
        method_us,
        1e6 / method_us,
        dense_us / method_us
    );
    Ok(())
}

/// Projection names in the order of [`achieved_sparsity`]'s shares.
const PROJECTIONS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

/// Shares skipped per projection, weighted by the projections' weights (as bytes are).
fn weighted_sparsity(cfg: &Config, by: &[f64; 7]) -> f64 {
    let (d, f, kv) = (cfg.d_model as f64, cfg.d_ff as f64, cfg.kv_dim() as f64);
    let weights = [d * d, d * kv, d * kv, d * d, d * f, d * f, d * f];
    weights.iter().zip(by).map(|(w, s)| w * s).sum::<f64>() / weights.iter().sum::<f64>()
}

/// `sieve bench gpu-synthetic`.
pub fn synthetic(a: SyntheticArgs) -> Result<()> {
    let methods = super::validate_synthetic(&a)?;
    let gpu = open_gpu(a.gpu)?;
    let copy_bw = gpu.copy_bandwidth(1 << 30)?;
    let shape = Config::llama3_8b();
    let bytes = step_weight_bytes(&shape);
    let t0 = Instant::now();
    let mut gm = GpuModel::synthetic(gpu, shape.clone(), a.steps + a.calibration_steps + 1, 42)?;
    let build_s = t0.elapsed().as_secs_f64();
    let vocab = shape.vocab_size as u64;
    let token = |i: usize| ((i as u64 * 7919 + 13) % vocab) as u32;
    let cal: Vec<u32> = (0..a.calibration_steps).map(token).collect();
    gm.reset();
    let samples = gm.sample_activations(&cal)?;
    let steps: Vec<u32> = (0..a.steps).map(|i| token(i + 1000)).collect();
    // The timed steps' own activations (up to 64 of them), to report what the thresholds skip
    // where they are applied: per projection, and as a share of the layers' weights.
    gm.reset();
    let timed = gm.sample_activations(&steps[..steps.len().min(64)])?;
    let dense = GpuPlan::dense(shape.n_layers);
    let roofline_us = bytes as f64 / copy_bw * 1e6;
    let mut rows = Vec::new();
    // Every method with kernels launched early (PDL) and one after the other, in one run.
    let modes: Vec<bool> = if gm.gpu().early_launch() { vec![true, false] } else { vec![false] };
    for &(m, s) in &methods {
        let plan = calibrate_uniform(m, s, &samples)?;
        let achieved = achieved_sparsity(&plan, &timed).map(|by| (weighted_sparsity(&shape, &by), by));
        for (&early, &gather) in modes.iter().flat_map(|e| a.gathers.iter().map(move |g| (e, g))) {
            gm.set_early_launch(early);
            gm.set_gather(match gather {
                super::GatherArg::Auto => Gather::Auto,
                super::GatherArg::Narrow => Gather::Narrow,
                super::GatherArg::Wide => Gather::Wide,
            });
            let (dense_us, method_us) = paired_times(&mut gm, &steps, &dense, &plan, 3)?;
            let method_bytes = method_step_weight_bytes(&shape, m, s);
            let method_roofline_us = method_bytes / copy_bw * 1e6;
            rows.push(serde_json::json!({
                "method": plan.method, "sparsity": s, "early_launch": early, "gather": format!("{gather:?}").to_lowercase(),
                "dense_us_per_step": dense_us, "method_us_per_step": method_us,
                "speedup": dense_us / method_us,
                "dense_of_roofline": roofline_us / dense_us,
                "method_weight_bytes_per_step": method_bytes,
                "method_of_roofline": method_roofline_us / method_us,
                "bound_speedup": bytes as f64 / method_bytes,
                "weights_skipped": achieved.map(|a| a.0),
                "skipped_by_projection": achieved.map(|(_, by)| {
                    PROJECTIONS.iter().zip(by).map(|(p, s)| (p.to_string(), serde_json::json!(s))).collect::<serde_json::Map<_, _>>()
                }),
            }));
        }
    }
    gm.set_early_launch(modes[0]);
    gm.set_gather(Gather::Auto);
    let out = serde_json::json!({
        "gpu": gm.gpu().info().name,
        "shape": a.shape,
        "weight_bytes_per_step": bytes,
        "copy_bandwidth_gbs": copy_bw / 1e9,
        "roofline_us_per_step": roofline_us,
        "steps": a.steps,
        "build_s": build_s,
        "methods": rows,
    });
    if a.json {
        return super::super::print_json(&out);
    }
    println!(
        "GPU: {} | synthetic {} ({:.2} GB of fp16 weights per step), copy bandwidth {:.0} GB/s -> roofline {:.0} µs/step ({:.1} tok/s)",
        gm.gpu().info().name,
        a.shape,
        bytes as f64 / 1e9,
        copy_bw / 1e9,
        roofline_us,
        1e6 / roofline_us
    );
    println!(
        "| method | sparsity | weights skipped | early launch | gather | dense µs/step | dense of roofline | method µs/step | method of its roofline | tok/s | speedup | bytes allow |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {:.3} | {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1} | {:.2}x | {:.2}x |",
            r["method"].as_str().unwrap_or("?"),
            f("sparsity"),
            f("weights_skipped"),
            if r["early_launch"].as_bool().unwrap_or(false) { "on" } else { "off" },
            r["gather"].as_str().unwrap_or("?"),
            f("dense_us_per_step"),
            f("dense_of_roofline"),
            f("method_us_per_step"),
            f("method_of_roofline"),
            1e6 / f("method_us_per_step"),
            f("speedup"),
            f("bound_speedup")
        );
    }
    Ok(())
}

/// `sieve generate --device cuda`: prompt and new tokens decoded step by step on the GPU.
pub fn generate(model_path: &Path, a: &super::super::generate::Args) -> Result<()> {
    let sampling = SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    sampling.validate()?;
    let (tok, model) = super::super::load(model_path, Precision::F32)?;
    let plan = match a.sparsity.plan(model_path, &model)? {
        Some(p) => GpuPlan::from_plan(&p)?,
        None => GpuPlan::dense(model.config().n_layers),
    };
    let text = if a.chat { sieve_engine::chat::user_prompt(&a.prompt) } else { a.prompt.clone() };
    let ids = tok.encode(&text)?;
    if ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    let mut gm = GpuModel::from_model(&model, open_gpu(0)?, ids.len() + a.max_tokens)?;
    if ids.len() + a.max_tokens > gm.max_len() {
        bail!("{} prompt + {} new tokens exceed the context of {}", ids.len(), a.max_tokens, gm.max_len());
    }
    let mut sampler = Sampler::new(sampling)?;
    let t0 = Instant::now();
    let mut logits = Vec::new();
    for &t in &ids {
        logits = gm.step(t, &plan)?;
    }
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    let mut dec = sieve_engine::tokenizer::StreamDecoder::default();
    let t1 = Instant::now();
    let mut produced = 0usize;
    for _ in 0..a.max_tokens {
        let next = sampler.sample(&logits);
        if tok.stop_ids().contains(&next) {
            break;
        }
        produced += 1;
        match out.write_all(dec.push(&tok, next).as_bytes()).and_then(|_| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r?,
        }
        if produced == a.max_tokens {
            break;
        }
        logits = gm.step(next, &plan)?;
    }
    writeln!(out, "{}", dec.finish())?;
    if a.stats {
        let decode_s = t1.elapsed().as_secs_f64();
        eprintln!(
            "[GPU {}: {} prompt tokens in {:.3} s, {} new at {:.1} tok/s, {} plan]",
            gm.gpu().info().name,
            ids.len(),
            prefill_s,
            produced,
            produced as f64 / decode_s.max(1e-9),
            plan.method
        );
    }
    Ok(())
}
