//! A/B verdicts: a paired bootstrap over windows of the perplexity ratio of two methods scored
//! on the same windows, and which of the two dominates on (perplexity, decode speed).

use serde::Serialize;
use sieve_engine::divergence::Divergence;
use sieve_engine::sampling::SplitMix64;

use crate::error::{EvalError, Result};

/// The bootstrap's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// PPL(A) / PPL(B) on all windows.
    pub ppl_ratio: f64,
    /// 95% percentile interval of the ratio over window resamples.
    pub ci_low: f64,
    pub ci_high: f64,
    pub resamples: usize,
    /// "A", "B" (lower perplexity, the interval excludes 1) or "tie".
    pub better: String,
}

/// Resamples windows with replacement `resamples` times (deterministic for a seed), each time
/// summing both methods' NLL over the same windows.
pub fn paired_bootstrap(a: &[Divergence], b: &[Divergence], resamples: usize, seed: u64) -> Result<Verdict> {
    if a.len() != b.len() || a.is_empty() {
        return Err(EvalError::InvalidOption(format!(
            "the bootstrap needs the same windows for A and B ({} and {})",
            a.len(),
            b.len()
        )));
    }
    if resamples < 100 {
        return Err(EvalError::InvalidOption(format!("{resamples} resamples are too few (at least 100)")));
    }
    let ratio = |idx: &mut dyn Iterator<Item = usize>| {
        let (mut na, mut nb, mut pa, mut pb) = (0.0, 0.0, 0usize, 0usize);
        for i in idx {
            na += a[i].nll_sum;
            nb += b[i].nll_sum;
            pa += a[i].positions;
            pb += b[i].positions;
        }
        (na / pa.max(1) as f64 - nb / pb.max(1) as f64).exp()
    };
    let n = a.len();
    let ppl_ratio = ratio(&mut (0..n));
    let mut rng = SplitMix64::new(seed);
    let mut next = move || rng.next_u64();
    let mut samples: Vec<f64> = (0..resamples)
        .map(|_| {
            let picks: Vec<usize> = (0..n).map(|_| (next() % n as u64) as usize).collect();
            ratio(&mut picks.into_iter())
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((resamples - 1) as f64 * q).round() as usize];
    let (ci_low, ci_high) = (at(0.025), at(0.975));
    let better = if ci_high < 1.0 {
        "A"
    } else if ci_low > 1.0 {
        "B"
    } else {
        "tie"
    };
    Ok(Verdict { ppl_ratio, ci_low, ci_high, resamples, better: better.into() })
}

/// Where two settings stand on (perplexity, decode speed).
#[derive(Debug, Clone, Serialize)]
pub struct Dominance {
    /// "A" or "B" (the lower perplexity, by more than the band), or "equal" (within it).
    pub quality: String,
    /// "A" or "B" (faster in every paired run), or "tie" (the runs disagree).
    pub speed: String,
    /// "A dominates" / "B dominates" (ahead on one axis, not behind on the other), "equal",
    /// or "trade-off" (each ahead on one axis).
    pub verdict: String,
    /// Perplexities within this fraction of each other count as equal.
    pub ppl_band: f64,
}

/// Which of A and B dominates, from PPL(A) / PPL(B) and the paired runs' A-over-B speed
/// ratios (above 1: A faster).
pub fn dominance(ppl_ratio: f64, speed_ratios: &[f64], ppl_band: f64) -> Result<Dominance> {
    if speed_ratios.is_empty() || !(0.0..1.0).contains(&ppl_band) || !ppl_ratio.is_finite() {
        return Err(EvalError::InvalidOption(format!(
            "dominance needs paired speed runs ({}), a finite perplexity ratio ({ppl_ratio}) and a band in [0, 1) ({ppl_band})",
            speed_ratios.len()
        )));
    }
    let quality = if ppl_ratio < 1.0 - ppl_band {
        "A"
    } else if ppl_ratio > 1.0 + ppl_band {
        "B"
    } else {
        "equal"
    };
    let speed = if speed_ratios.iter().all(|&r| r > 1.0) {
        "A"
    } else if speed_ratios.iter().all(|&r| r < 1.0) {
        "B"
    } else {
        "tie"
    };
    let ahead = |x: &str| quality == x || speed == x;
    let verdict = match (ahead("A"), ahead("B")) {
        (true, false) => "A dominates",
        (false, true) => "B dominates",
        (false, false) => "equal",
        (true, true) => "trade-off",
    };
    Ok(Dominance { quality: quality.into(), speed: speed.into(), verdict: verdict.into(), ppl_band })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominance_needs_one_axis_ahead_and_none_behind() {
        let v = |ppl: f64, speed: &[f64]| dominance(ppl, speed, 0.005).unwrap().verdict;
        assert_eq!(v(1.003, &[1.08, 1.05, 1.10]), "A dominates", "faster at equal perplexity");
        assert_eq!(v(0.97, &[1.02, 0.98]), "A dominates", "better at equal speed");
        assert_eq!(v(1.02, &[0.95, 0.97]), "B dominates");
        assert_eq!(v(0.97, &[0.95, 0.97]), "trade-off");
        assert_eq!(v(1.001, &[1.02, 0.99]), "equal");
        assert!(dominance(1.0, &[], 0.005).is_err());
        assert!(dominance(f64::NAN, &[1.0], 0.005).is_err());
        assert!(dominance(1.0, &[1.0], 1.5).is_err());
    }

    fn windows(nll_per_token: &[f64]) -> Vec<Divergence> {
        nll_per_token.iter().map(|&x| Divergence { nll_sum: x * 100.0, positions: 100, ..Default::default() }).collect()
    }

    #[test]
    fn a_clearly_better_and_a_tie() {
        let a = windows(&[3.0, 3.1, 2.9, 3.05, 3.0, 2.95, 3.1, 3.0]);
        let b: Vec<f64> = [3.0, 3.1, 2.9, 3.05, 3.0, 2.95, 3.1, 3.0].iter().map(|x| x + 0.2).collect();
        let v = paired_bootstrap(&a, &windows(&b), 1000, 1).unwrap();
        assert_eq!(v.better, "A");
        assert!((v.ppl_ratio - (-0.2f64).exp()).abs() < 1e-9);
        assert!(v.ci_low <= v.ppl_ratio && v.ppl_ratio <= v.ci_high);
        let noisy: Vec<f64> = [3.0, 3.1, 2.9, 3.05, 3.0, 2.95, 3.1, 3.0]
            .iter()
            .enumerate()
            .map(|(i, x)| x + if i % 2 == 0 { 0.3 } else { -0.3 })
            .collect();
        assert_eq!(paired_bootstrap(&a, &windows(&noisy), 1000, 1).unwrap().better, "tie");
    }

    #[test]
    fn mismatched_or_empty_windows_are_refused() {
        assert!(paired_bootstrap(&windows(&[1.0]), &windows(&[1.0, 2.0]), 1000, 0).is_err());
        assert!(paired_bootstrap(&[], &[], 1000, 0).is_err());
        assert!(paired_bootstrap(&windows(&[1.0]), &windows(&[1.0]), 10, 0).is_err());
    }
}
