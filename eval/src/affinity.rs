//! Hardware affinity of a method's MLP masks (the figures of ReLU^2 Wins and ReLU Strikes
//! Back): how many of a token's active neurons were already active at the previous token
//! (reuse: weights already in cache), and how sparse the union of the last k tokens' masks
//! is (what a kernel loading k tokens' neurons at once could still skip).

use serde::Serialize;
use sieve_engine::sparsity::{Method, Proj, SparsityPlan, Tap};
use sieve_engine::{Hooks, Logits, Model};

use crate::error::{EvalError, Result};
use crate::perplexity::{PplOptions, plan as window_count};

/// Affinity figures of one method.
#[derive(Debug, Clone, Serialize)]
pub struct Affinity {
    pub method: String,
    pub sparsity: f32,
    /// Mean over tokens and layers of |active now ∩ active at the previous token| / |active now|.
    pub reuse: f64,
    /// (k, mean sparsity of the union of the last k tokens' masks).
    pub aggregated: Vec<(usize, f64)>,
    /// Reuse per layer.
    pub reuse_by_layer: Vec<f64>,
}

/// Measures the affinity of `plan` (dense when `None`) on the windows of `opts`.
pub fn affinity(
    model: &Model,
    tokens: &[u32],
    opts: PplOptions,
    plan: Option<&SparsityPlan>,
    ks: &[usize],
) -> Result<Affinity> {
    if ks.is_empty() || ks.contains(&0) {
        return Err(EvalError::InvalidOption("window sizes k must be at least 1".into()));
    }
    let windows = window_count(tokens.len(), opts, model.config().context_len)?;
    let layers = model.config().n_layers;
    let threshold = |l: usize| match plan {
        Some(p) if matches!(p.method, Method::Teal | Method::TealUniform) => p.layers[l].proj[Proj::Down.index()],
        _ => 0.0,
    };
    let (mut reuse, mut reuse_n) = (vec![0.0; layers], vec![0usize; layers]);
    let mut agg = vec![(0.0, 0usize); ks.len()];
    let mut cache = model.new_cache();
    for w in 0..windows {
        let chunk = &tokens[w * opts.ctx..(w + 1) * opts.ctx];
        cache.clear();
        let mut observe = |l: usize, tap: Tap, x: &[f32]| {
            if tap != Tap::DownIn {
                return;
            }
            let f = x.len() / chunk.len();
            let t = threshold(l);
            let masks: Vec<Vec<bool>> =
                x.chunks_exact(f).map(|row| row.iter().map(|v| v.abs() > t).collect()).collect();
            for pair in masks.windows(2) {
                let active = pair[1].iter().filter(|&&b| b).count();
                if active > 0 {
                    let both = pair[0].iter().zip(&pair[1]).filter(|(a, b)| **a && **b).count();
                    reuse[l] += both as f64 / active as f64;
                    reuse_n[l] += 1;
                }
            }
            // A sliding count per neuron of the last k masks that have it active.
            for (slot, &k) in agg.iter_mut().zip(ks) {
                let mut count = vec![0u32; f];
                let mut live = 0usize;
                for (t, m) in masks.iter().enumerate() {
                    for (c, &on) in count.iter_mut().zip(m) {
                        if on {
                            live += usize::from(*c == 0);
                            *c += 1;
                        }
                    }
                    if t >= k {
                        for (c, &on) in count.iter_mut().zip(&masks[t - k]) {
                            if on {
                                *c -= 1;
                                live -= usize::from(*c == 0);
                            }
                        }
                    }
                    if t + 1 >= k {
                        slot.0 += 1.0 - live as f64 / f as f64;
                        slot.1 += 1;
                    }
                }
            }
        };
        let mut hooks = Hooks { plan, observe: Some(&mut observe), ..Hooks::default() };
        model.forward_with(chunk, &mut cache, Logits::Last, &mut hooks)?;
    }
    let reuse_by_layer: Vec<f64> = reuse.iter().zip(&reuse_n).map(|(s, &n)| s / n.max(1) as f64).collect();
    Ok(Affinity {
        method: plan.map_or("dense", |p| p.method.name()).into(),
        sparsity: plan.map_or(0.0, |p| p.target),
        reuse: reuse_by_layer.iter().sum::<f64>() / layers.max(1) as f64,
        aggregated: ks.iter().zip(agg).map(|(&k, (s, n))| (k, s / n.max(1) as f64)).collect(),
        reuse_by_layer,
    })
}
