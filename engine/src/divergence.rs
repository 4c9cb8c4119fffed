//! Teacher-forced comparison of a sparsity method with dense: run the same prompt and
//! continuation under both, then per continuation position the method's negative
//! log-likelihood of the true next token, KL(dense || method) and whether both put the same
//! token first.

use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::model::{Hooks, Logits, Model};
use crate::sparsity::SparsityPlan;

/// The logits that predict each token of `continuation` after `prompt` (one row of `vocab`
/// values per continuation token), under `plan` (dense when `None`).
pub fn teacher_forced(
    model: &Model,
    prompt: &[u32],
    continuation: &[u32],
    plan: Option<&SparsityPlan>,
) -> Result<Vec<f32>> {
    if prompt.is_empty() || continuation.is_empty() {
        return Err(EngineError::InvalidInput("teacher forcing needs a prompt and a continuation".into()));
    }
    let mut input = Vec::with_capacity(prompt.len() + continuation.len() - 1);
    input.extend_from_slice(prompt);
    input.extend_from_slice(&continuation[..continuation.len() - 1]);
    let mut cache = model.new_cache();
    let mut hooks = Hooks { plan, ..Hooks::default() };
    let logits = model.forward_with(&input, &mut cache, Logits::All, &mut hooks)?;
    let vocab = model.config().vocab_size;
    Ok(logits[(prompt.len() - 1) * vocab..].to_vec())
}

/// Sums over scored positions of how a method's next-token distribution compares with the
/// dense one and with the true tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Divergence {
    /// Sum of -log p_method(true token), nats.
    pub nll_sum: f64,
    /// Sum of KL(dense || method), nats.
    pub kl_sum: f64,
    /// Positions where the method's most likely token is dense's.
    pub top1_agree: usize,
    /// Positions scored.
    pub positions: usize,
}

impl Divergence {
    /// Compares row by row: `dense` and `method` hold one row of `vocab` logits per target.
    pub fn measure(dense: &[f32], method: &[f32], targets: &[u32], vocab: usize) -> Result<Self> {
        let rows = targets.len();
        if vocab == 0 || dense.len() != rows * vocab || method.len() != rows * vocab {
            return Err(EngineError::InvalidInput(format!(
                "logit rows do not match: {} targets of {vocab}, {} dense and {} method values",
                rows,
                dense.len(),
                method.len()
            )));
        }
        let mut d = Divergence::default();
        for (i, &t) in targets.iter().enumerate() {
            let p = log_softmax(&dense[i * vocab..(i + 1) * vocab]);
            let q = log_softmax(&method[i * vocab..(i + 1) * vocab]);
            let Some(&qt) = q.get(t as usize) else {
                return Err(EngineError::InvalidInput(format!("target token {t} is outside the vocabulary ({vocab})")));
            };
            d.nll_sum -= qt;
            d.kl_sum += p.iter().zip(&q).map(|(&lp, &lq)| lp.exp() * (lp - lq)).sum::<f64>().max(0.0);
            d.top1_agree += usize::from(argmax(&p) == argmax(&q));
            d.positions += 1;
        }
        Ok(d)
    }

    /// exp(mean NLL): the method's perplexity of the true tokens.
    pub fn perplexity(&self) -> f64 {
        (self.nll_sum / self.positions.max(1) as f64).exp()
    }

    /// Mean KL(dense || method), nats per position.
    pub fn mean_kl(&self) -> f64 {
        self.kl_sum / self.positions.max(1) as f64
    }

    /// Share of positions whose top token matches dense.
    pub fn agreement(&self) -> f64 {
        self.top1_agree as f64 / self.positions.max(1) as f64
    }
}

/// log softmax in f64.
fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_logits_have_zero_kl_and_full_agreement() {
        let l = [0.5f32, 2.0, -1.0, 0.0, 1.0, 3.0];
        let d = Divergence::measure(&l, &l, &[1, 2], 3).unwrap();
        assert!(d.kl_sum.abs() < 1e-12);
        assert_eq!(d.top1_agree, 2);
        let z0: f64 = [0.5f64, 2.0, -1.0].iter().map(|v| v.exp()).sum();
        let z1: f64 = [0.0f64, 1.0, 3.0].iter().map(|v| v.exp()).sum();
        let nll = -(2.0 - z0.ln()) - (3.0 - z1.ln());
        assert!((d.nll_sum - nll).abs() < 1e-9);
    }

    #[test]
    fn kl_matches_the_formula_and_disagreement_counts() {
        let p = [1.0f32, 0.0];
        let q = [0.0f32, 1.0];
        let d = Divergence::measure(&p, &q, &[0], 2).unwrap();
        let (a, b) = (1f64.exp() / (1f64.exp() + 1.0), 1.0 / (1f64.exp() + 1.0));
        let kl = a * (a / b).ln() + b * (b / a).ln();
        assert!((d.kl_sum - kl).abs() < 1e-9);
        assert_eq!(d.top1_agree, 0);
    }

    #[test]
    fn mismatched_rows_and_bad_targets_are_refused() {
        assert!(Divergence::measure(&[0.0; 4], &[0.0; 3], &[0, 1], 2).is_err());
        assert!(Divergence::measure(&[0.0; 2], &[0.0; 2], &[5], 2).is_err());
    }
}
