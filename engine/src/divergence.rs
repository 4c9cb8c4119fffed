//! Teacher-forced comparison of a sparsity method with dense: run the same prompt and
//! continuation under both, then per continuation position the method's negative
//! log-likelihood of the true next token, KL(dense || method) and whether both put the same
//! token first.

use std::sync::Mutex;

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

/// Rows per parallel task of [`Divergence::measure`] (a row is two passes over the vocabulary).
const ROWS_PER_TASK: usize = 16;

impl Divergence {
    /// Compares row by row: `dense` and `method` hold one row of `vocab` logits per target.
    /// Rows are spread over the kernel pool; each costs two exponentials per logit.
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
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::InvalidInput(format!("target token {t} is outside the vocabulary ({vocab})")));
        }
        let tasks = rows.div_ceil(ROWS_PER_TASK);
        let parts: Vec<Mutex<Divergence>> = (0..tasks).map(|_| Mutex::default()).collect();
        sieve_kernels::pool::parallel_for(tasks, |task| {
            let mut scratch = vec![0f64; vocab];
            let mut d = Divergence::default();
            for i in task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(rows) {
                let (p, q) = (&dense[i * vocab..(i + 1) * vocab], &method[i * vocab..(i + 1) * vocab]);
                let row = compare_row(p, q, targets[i] as usize, &mut scratch);
                d.nll_sum += row.nll;
                d.kl_sum += row.kl;
                d.top1_agree += usize::from(row.same_top);
                d.positions += 1;
            }
            if let Ok(mut slot) = parts[task].lock() {
                *slot = d;
            }
        });
        Ok(parts.into_iter().map(|m| m.into_inner().unwrap_or_default()).fold(Divergence::default(), |a, w| a.plus(&w)))
    }

    /// The sums of both.
    pub fn plus(&self, other: &Divergence) -> Divergence {
        Divergence {
            nll_sum: self.nll_sum + other.nll_sum,
            kl_sum: self.kl_sum + other.kl_sum,
            top1_agree: self.top1_agree + other.top1_agree,
            positions: self.positions + other.positions,
        }
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

/// One position's comparison.
struct RowDivergence {
    nll: f64,
    kl: f64,
    same_top: bool,
}

/// With `lp = p - max_p - ln Z_p` and `lq` alike,
/// KL(p || q) = Σ softmax(p)_i (p_i - q_i) - (max_p + ln Z_p) + (max_q + ln Z_q): the dense
/// exponentials are kept in `scratch` so the KL sum needs none of its own.
fn compare_row(p: &[f32], q: &[f32], target: usize, scratch: &mut [f64]) -> RowDivergence {
    let (p_max, p_top) = max_and_first_argmax(p);
    let (q_max, q_top) = max_and_first_argmax(q);
    let mut zp = 0f64;
    for (e, &l) in scratch.iter_mut().zip(p) {
        *e = (l as f64 - p_max).exp();
        zp += *e;
    }
    let zq: f64 = q.iter().map(|&l| (l as f64 - q_max).exp()).sum();
    let (p_lse, q_lse) = (p_max + zp.ln(), q_max + zq.ln());
    let cross: f64 = scratch.iter().zip(p.iter().zip(q)).map(|(&e, (&a, &b))| e * (a as f64 - b as f64)).sum();
    RowDivergence { nll: q_lse - q[target] as f64, kl: (cross / zp - p_lse + q_lse).max(0.0), same_top: p_top == q_top }
}

/// The largest logit and the first index holding it.
fn max_and_first_argmax(v: &[f32]) -> (f64, usize) {
    let (i, m) =
        v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bm), (i, &x)| if x > bm { (i, x) } else { (bi, bm) });
    (m as f64, i)
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

    /// Plain f64 log-softmax, the reference for the fused row comparison.
    fn log_softmax(logits: &[f32]) -> Vec<f64> {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max + logits.iter().map(|&l| (l as f64 - max).exp()).sum::<f64>().ln();
        logits.iter().map(|&l| l as f64 - lse).collect()
    }

    #[test]
    fn parallel_fused_rows_match_the_plain_formula() {
        let (rows, vocab) = (37, 301);
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 16.0 - 8.0
        };
        let dense: Vec<f32> = (0..rows * vocab).map(|_| next()).collect();
        let method: Vec<f32> = dense.iter().map(|&d| d + 0.5 * next()).collect();
        let targets: Vec<u32> = (0..rows as u32).map(|i| (i * 97) % vocab as u32).collect();
        let got = Divergence::measure(&dense, &method, &targets, vocab).unwrap();
        let mut want = Divergence::default();
        for (i, &t) in targets.iter().enumerate() {
            let p = log_softmax(&dense[i * vocab..(i + 1) * vocab]);
            let q = log_softmax(&method[i * vocab..(i + 1) * vocab]);
            want.nll_sum -= q[t as usize];
            want.kl_sum += p.iter().zip(&q).map(|(&lp, &lq)| lp.exp() * (lp - lq)).sum::<f64>();
            let top = |v: &[f64]| v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b });
            want.top1_agree += usize::from(top(&p) == top(&q));
            want.positions += 1;
        }
        assert_eq!((got.positions, got.top1_agree), (want.positions, want.top1_agree));
        assert!((got.nll_sum - want.nll_sum).abs() < 1e-9 * want.nll_sum.abs(), "{got:?} vs {want:?}");
        assert!((got.kl_sum - want.kl_sum).abs() < 1e-9 * want.kl_sum.abs().max(1.0), "{got:?} vs {want:?}");
        assert!(want.top1_agree < rows, "the test should include disagreements");
    }

    #[test]
    fn mismatched_rows_and_bad_targets_are_refused() {
        assert!(Divergence::measure(&[0.0; 4], &[0.0; 3], &[0, 1], 2).is_err());
        assert!(Divergence::measure(&[0.0; 2], &[0.0; 2], &[5], 2).is_err());
    }
}
