//! PPL-p% sparsity: the largest target sparsity of a method whose perplexity stays within
//! (1 + p%) of dense, found by bisection on the method's knob (perplexity is taken to rise
//! with sparsity). The answer is a bracket: perplexity at `sparsity` is within the budget,
//! at `sparsity + tolerance` (or the search's ceiling) it is not.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::{EvalError, Result};

/// Where a search ended.
#[derive(Debug, Clone, Serialize)]
pub struct PplPPoint {
    /// The allowed rise over dense, percent.
    pub p: f64,
    /// (1 + p/100) x dense perplexity.
    pub budget: f64,
    /// Largest sparsity found within the budget.
    pub sparsity: f32,
    /// Perplexity measured there.
    pub perplexity: f64,
    /// The first sparsity above it that was measured over the budget (`None`: the ceiling
    /// itself is within the budget).
    pub over_at: Option<f32>,
    /// Perplexity there.
    pub over_perplexity: Option<f64>,
    /// Bracket width the search stopped at.
    pub tolerance: f32,
}

/// Bisects each budget in `ps` on `[0, ceiling]` until the bracket is narrower than
/// `tolerance`, evaluating `ppl_at(s)` (memoised across budgets, so later budgets reuse
/// earlier points).
pub fn ppl_p(
    dense_ppl: f64,
    ps: &[f64],
    ceiling: f32,
    tolerance: f32,
    mut ppl_at: impl FnMut(f32) -> Result<f64>,
) -> Result<Vec<PplPPoint>> {
    if ps.is_empty() || ps.iter().any(|&p| !p.is_finite() || p <= 0.0) {
        return Err(EvalError::InvalidOption(format!("every p must be above 0 (got {ps:?})")));
    }
    // Written so that NaN fails too.
    let within = |v: f32, lo: f32, hi: f32| v > lo && v < hi;
    if !(within(tolerance, 0.0, 0.5) && within(ceiling, 0.0, 1.0)) {
        return Err(EvalError::InvalidOption("tolerance must be in (0, 0.5) and the ceiling in (0, 1)".into()));
    }
    // Keyed by sparsity in 1e-4 steps.
    let mut seen: BTreeMap<u32, f64> = BTreeMap::new();
    let mut eval = |s: f32, seen: &mut BTreeMap<u32, f64>| -> Result<f64> {
        let key = (s * 1e4).round() as u32;
        if let Some(&v) = seen.get(&key) {
            return Ok(v);
        }
        let v = ppl_at(s)?;
        seen.insert(key, v);
        Ok(v)
    };
    let mut out = Vec::new();
    for &p in ps {
        let budget = dense_ppl * (1.0 + p / 100.0);
        let (mut lo, mut lo_ppl) = (0f32, dense_ppl);
        let (mut hi, mut hi_ppl) = (ceiling, eval(ceiling, &mut seen)?);
        if hi_ppl <= budget {
            out.push(PplPPoint {
                p,
                budget,
                sparsity: ceiling,
                perplexity: hi_ppl,
                over_at: None,
                over_perplexity: None,
                tolerance,
            });
            continue;
        }
        while hi - lo > tolerance {
            let mid = (lo + hi) / 2.0;
            let v = eval(mid, &mut seen)?;
            if v <= budget {
                (lo, lo_ppl) = (mid, v);
            } else {
                (hi, hi_ppl) = (mid, v);
            }
        }
        out.push(PplPPoint {
            p,
            budget,
            sparsity: lo,
            perplexity: lo_ppl,
            over_at: Some(hi),
            over_perplexity: Some(hi_ppl),
            tolerance,
        });
    }
    Ok(out)
}

/// A PPL-p% point read off a measured curve instead of searched for.
#[derive(Debug, Clone, Serialize)]
pub struct InterpolatedPoint {
    /// The allowed rise over dense, percent.
    pub p: f64,
    /// (1 + p/100) x dense perplexity.
    pub budget: f64,
    /// Where the curve crosses the budget, linear in log-perplexity between `below` and
    /// `above` (`below`'s sparsity when the curve never crosses it).
    pub sparsity: f32,
    /// The last measured point within the budget (sparsity, perplexity); dense is (0, dense).
    pub below: (f32, f64),
    /// The first measured point over it (`None`: the whole curve is within the budget).
    pub above: Option<(f32, f64)>,
}

/// PPL-p% sparsity from perplexities measured at a grid of sparsities (`curve`, any order):
/// the first crossing of the budget walking up from dense, interpolated linearly in
/// log-perplexity. The answer is only as fine as the grid: the true point lies in
/// `[below, above]` if perplexity rises monotonically between them.
pub fn interpolate_ppl_p(dense_ppl: f64, curve: &[(f32, f64)], p: f64) -> Result<InterpolatedPoint> {
    if !p.is_finite() || p <= 0.0 {
        return Err(EvalError::InvalidOption(format!("p must be above 0 (got {p})")));
    }
    if !(dense_ppl.is_finite() && dense_ppl > 0.0)
        || curve.iter().any(|&(s, v)| !(0.0..1.0).contains(&s) || !v.is_finite())
    {
        return Err(EvalError::InvalidOption("the curve needs finite perplexities at sparsities in [0, 1)".into()));
    }
    let budget = dense_ppl * (1.0 + p / 100.0);
    let mut points: Vec<(f32, f64)> = curve.to_vec();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut below = (0f32, dense_ppl);
    for &(s, v) in &points {
        if v > budget {
            let (lo, hi) = (below.1.ln(), v.ln());
            let t = if hi > lo { ((budget.ln() - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 0.0 };
            let sparsity = below.0 + (s - below.0) * t as f32;
            return Ok(InterpolatedPoint { p, budget, sparsity, below, above: Some((s, v)) });
        }
        below = (s, v);
    }
    Ok(InterpolatedPoint { p, budget, sparsity: below.0, below, above: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_the_budget_of_a_monotone_curve() {
        // ppl(s) = 10 * (1 + s^2): the 5% budget is reached at s = sqrt(0.05) = 0.2236.
        let mut calls = 0;
        let points = ppl_p(10.0, &[1.0, 5.0, 10.0], 0.9, 0.01, |s| {
            calls += 1;
            Ok(10.0 * (1.0 + (s as f64).powi(2)))
        })
        .unwrap();
        for (pt, exact) in points.iter().zip([0.1f32, 0.2236, 0.3162]) {
            assert!(pt.perplexity <= pt.budget && pt.over_perplexity.unwrap() > pt.budget, "{pt:?}");
            assert!(pt.sparsity <= exact && exact <= pt.over_at.unwrap() && pt.over_at.unwrap() - pt.sparsity <= 0.01);
        }
        assert!(calls < 3 * 8, "{calls} evaluations: the memo did not help");
    }

    #[test]
    fn interpolation_finds_the_crossing_between_grid_points() {
        // log ppl linear in s: ppl = 10 * exp(s); the 20% budget is crossed at ln(1.2).
        let curve: Vec<(f32, f64)> = [0.4f32, 0.1, 0.25].iter().map(|&s| (s, 10.0 * (s as f64).exp())).collect();
        let pt = interpolate_ppl_p(10.0, &curve, 20.0).unwrap();
        assert!((pt.sparsity - 1.2f32.ln()).abs() < 1e-4, "{pt:?}");
        assert_eq!((pt.below.0, pt.above.map(|a| a.0)), (0.1, Some(0.25)));
        let first = interpolate_ppl_p(10.0, &curve, 0.5).unwrap();
        assert_eq!(first.below.0, 0.0, "the crossing before the first grid point starts from dense");
        let none = interpolate_ppl_p(10.0, &curve, 80.0).unwrap();
        assert_eq!((none.sparsity, none.above), (0.4, None));
        assert!(interpolate_ppl_p(10.0, &curve, 0.0).is_err());
        assert!(interpolate_ppl_p(10.0, &[(1.5, 11.0)], 1.0).is_err());
    }

    #[test]
    fn a_flat_curve_returns_the_ceiling_and_bad_p_is_refused() {
        let pts = ppl_p(10.0, &[5.0], 0.9, 0.01, |_| Ok(10.0)).unwrap();
        assert_eq!((pts[0].sparsity, pts[0].over_at), (0.9, None));
        assert!(ppl_p(10.0, &[0.0], 0.9, 0.01, |_| Ok(10.0)).is_err());
        assert!(ppl_p(10.0, &[-1.0], 0.9, 0.01, |_| Ok(10.0)).is_err());
        assert!(ppl_p(10.0, &[], 0.9, 0.01, |_| Ok(10.0)).is_err());
    }
}
