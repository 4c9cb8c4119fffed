//! The forward pass against an independent f64 reference written here from the Llama
//! equations (methods.md), on the real model's dequantized weights; plus KV-cache
//! consistency (prefill == token-by-token decode).

mod common;

use sieve_engine::gguf::GgufFile;
use sieve_engine::{Logits, Model, Precision};

/// Token ids of "The capital of France is Paris. The capital of Germany is" (llama.cpp).
const PROMPT: [u32; 12] = [504, 3575, 282, 4649, 314, 7042, 30, 378, 3575, 282, 4521, 314];

struct RefLayer {
    attn_norm: Vec<f64>,
    wq: Vec<f64>,
    wk: Vec<f64>,
    wv: Vec<f64>,
    wo: Vec<f64>,
    ffn_norm: Vec<f64>,
    wg: Vec<f64>,
    wu: Vec<f64>,
    wd: Vec<f64>,
}

fn mv(w: &[f64], rows: usize, cols: usize, x: &[f64]) -> Vec<f64> {
    (0..rows).map(|r| w[r * cols..(r + 1) * cols].iter().zip(x).map(|(a, b)| a * b).sum()).collect()
}

fn rms(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let s = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a / s * b).collect()
}

fn rope(x: &mut [f64], pos: usize, hd: usize, theta: f64) {
    for head in x.chunks_mut(hd) {
        for i in 0..hd / 2 {
            let a = pos as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
            let (c, s) = (a.cos(), a.sin());
            let (x0, x1) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = x0 * c - x1 * s;
            head[2 * i + 1] = x0 * s + x1 * c;
        }
    }
}

/// Logits of the last position, computed naively in f64.
fn reference_logits(path: &std::path::Path, tokens: &[u32]) -> Vec<f64> {
    let mut g = GgufFile::open(path).unwrap();
    let cfg = sieve_engine::Config::from_gguf(&g).unwrap();
    let (d, f, kvd, hd) = (cfg.d_model, cfg.d_ff, cfg.kv_dim(), cfg.head_dim);
    let eps = cfg.rms_eps as f64;
    let theta = cfg.rope_theta as f64;
    let mut rd = |n: &str, s: &[usize]| -> Vec<f64> { g.read_f32(n, s).unwrap().into_iter().map(f64::from).collect() };
    let emb = rd("token_embd.weight", &[cfg.vocab_size, d]);
    let out_norm = rd("output_norm.weight", &[d]);
    let layers: Vec<RefLayer> = (0..cfg.n_layers)
        .map(|l| {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            RefLayer {
                attn_norm: rd(&n("attn_norm"), &[d]),
                wq: rd(&n("attn_q"), &[d, d]),
                wk: rd(&n("attn_k"), &[kvd, d]),
                wv: rd(&n("attn_v"), &[kvd, d]),
                wo: rd(&n("attn_output"), &[d, d]),
                ffn_norm: rd(&n("ffn_norm"), &[d]),
                wg: rd(&n("ffn_gate"), &[f, d]),
                wu: rd(&n("ffn_up"), &[f, d]),
                wd: rd(&n("ffn_down"), &[d, f]),
            }
        })
        .collect();
    let mut xs: Vec<Vec<f64>> = tokens.iter().map(|&t| emb[t as usize * d..(t as usize + 1) * d].to_vec()).collect();
    let group = cfg.n_heads / cfg.n_kv_heads;
    for lw in &layers {
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut qs = Vec::new();
        for (p, x) in xs.iter().enumerate() {
            let a = rms(x, &lw.attn_norm, eps);
            let mut q = mv(&lw.wq, d, d, &a);
            let mut k = mv(&lw.wk, kvd, d, &a);
            rope(&mut q, p, hd, theta);
            rope(&mut k, p, hd, theta);
            qs.push(q);
            ks.push(k);
            vs.push(mv(&lw.wv, kvd, d, &a));
        }
        for (p, x) in xs.iter_mut().enumerate() {
            let mut att = vec![0f64; d];
            for h in 0..cfg.n_heads {
                let g = h / group;
                let q = &qs[p][h * hd..(h + 1) * hd];
                let sc: Vec<f64> = (0..=p)
                    .map(|j| {
                        q.iter().zip(&ks[j][g * hd..(g + 1) * hd]).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|s| (s - m).exp()).sum();
                for (j, s) in sc.iter().enumerate() {
                    let w = (s - m).exp() / z;
                    for i in 0..hd {
                        att[h * hd + i] += w * vs[j][g * hd + i];
                    }
                }
            }
            let o = mv(&lw.wo, d, d, &att);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let m = rms(x, &lw.ffn_norm, eps);
            let gt = mv(&lw.wg, f, d, &m);
            let up = mv(&lw.wu, f, d, &m);
            let h: Vec<f64> = gt.iter().zip(&up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect();
            let dn = mv(&lw.wd, d, f, &h);
            x.iter_mut().zip(&dn).for_each(|(a, b)| *a += b);
        }
    }
    let last = rms(xs.last().unwrap(), &out_norm, eps);
    mv(&emb, cfg.vocab_size, d, &last)
}

fn log_softmax(l: &[f64]) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z = l.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    l.iter().map(|v| v - m - z).collect()
}

fn kl(p_log: &[f64], q_log: &[f64]) -> f64 {
    p_log.iter().zip(q_log).map(|(p, q)| p.exp() * (p - q)).sum()
}

fn argmax(v: &[f64]) -> usize {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b })
}

#[test]
fn f32_and_fast_paths_match_the_f64_reference() {
    let path = common::model_path();
    let reference = reference_logits(&path, &PROMPT);
    let ref_lp = log_softmax(&reference);
    let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));

    let f32_model = Model::load(&path, Precision::F32).unwrap();
    let mut cache = f32_model.new_cache();
    let got: Vec<f64> =
        f32_model.forward(&PROMPT, &mut cache, Logits::Last).unwrap().into_iter().map(f64::from).collect();
    let max_err = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
    assert!(max_err < 1e-3 * scale, "f32 path: max |logit error| {max_err} (scale {scale})");
    assert_eq!(argmax(&got), argmax(&reference));

    let fast = Model::load(&path, Precision::Fast).unwrap();
    let mut cache = fast.new_cache();
    let got: Vec<f64> = fast.forward(&PROMPT, &mut cache, Logits::Last).unwrap().into_iter().map(f64::from).collect();
    let k = kl(&ref_lp, &log_softmax(&got));
    assert!(k < 0.02, "fast path: KL(reference || fast) = {k}");
    assert_eq!(argmax(&got), argmax(&reference), "fast path changes the top token");
}

#[test]
fn prefill_equals_token_by_token_decode() {
    let path = common::model_path();
    for precision in [Precision::F32, Precision::Fast] {
        let model = Model::load(&path, precision).unwrap();
        let mut batch = model.new_cache();
        let all = model.forward(&PROMPT, &mut batch, Logits::All).unwrap();
        let vocab = model.config().vocab_size;
        let mut step = model.new_cache();
        for (i, &t) in PROMPT.iter().enumerate() {
            let l = model.forward(&[t], &mut step, Logits::Last).unwrap();
            let row = &all[i * vocab..(i + 1) * vocab];
            if precision == Precision::F32 {
                let err = l.iter().zip(row).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(err < 1e-3, "f32 position {i}: max |diff| {err}");
            } else {
                // int8 activations: the batched and single-row kernels sum in different orders,
                // which can move a value across a rounding step; the distributions must agree.
                let to64 = |v: &[f32]| log_softmax(&v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
                let k = kl(&to64(row), &to64(&l));
                assert!(k < 3e-2, "fast position {i}: KL(prefill || decode) = {k}");
            }
        }
        assert_eq!(batch.len(), step.len());
    }
}

/// A decode step over a long cache splits its positions across threads and merges the parts'
/// softmax states; it must give what one pass over the positions (prefill) gives.
#[test]
fn decode_over_a_long_cache_equals_prefill() {
    let path = common::model_path();
    let model = Model::load(&path, Precision::F32).unwrap();
    // 200 positions: PROMPT repeated, a cache long enough to be split in parts.
    let tokens: Vec<u32> = PROMPT.iter().copied().cycle().take(200).collect();
    let mut whole = model.new_cache();
    let want = model.forward(&tokens, &mut whole, Logits::Last).unwrap();
    let mut step = model.new_cache();
    model.forward(&tokens[..199], &mut step, Logits::Last).unwrap();
    let got = model.forward(&tokens[199..], &mut step, Logits::Last).unwrap();
    let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-3, "max |logit diff| {err}");
    assert_eq!(whole.len(), step.len());
}
