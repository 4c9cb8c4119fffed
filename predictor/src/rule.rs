//! Decision rules (scores -> predicted active neurons), their choice on validation data,
//! and the quality of a prediction against labels: recall, precision, predicted sparsity,
//! and predictivity curves (recall against predicted sparsity).

use serde::{Deserialize, Serialize};

use crate::error::{PredictorError, Result};
use crate::labels::Labels;

/// How scores become a mask.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "kebab-case")]
pub enum Rule {
    /// Active where score > the threshold.
    Threshold(f32),
    /// The k highest scores of each token are active.
    TopK(usize),
}

impl Rule {
    /// Indices the rule keeps, appended to `out` (cleared first), in ascending order.
    pub fn select(&self, scores: &[f32], out: &mut Vec<u32>) {
        out.clear();
        match *self {
            Rule::Threshold(t) => out.extend((0..scores.len() as u32).filter(|&i| scores[i as usize] > t)),
            Rule::TopK(k) => {
                let k = k.min(scores.len());
                if k == 0 {
                    return;
                }
                let mut v: Vec<f32> = scores.to_vec();
                let (_, kth, _) = v.select_nth_unstable_by(scores.len() - k, |a, b| a.total_cmp(b));
                let kth = *kth;
                out.extend((0..scores.len() as u32).filter(|&i| scores[i as usize] > kth));
                // Ties at the k-th value fill what is left, lowest index first.
                for i in 0..scores.len() as u32 {
                    if out.len() >= k {
                        break;
                    }
                    if scores[i as usize] == kth {
                        out.push(i);
                    }
                }
                out.sort_unstable();
            }
        }
    }
}

/// A prediction measured against labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Labelled-active neurons predicted active, over labelled-active.
    pub recall: f64,
    /// Predicted-active neurons that are labelled active, over predicted-active.
    pub precision: f64,
    /// Fraction of neurons predicted inactive.
    pub predicted_sparsity: f64,
    /// Fraction of neurons labelled inactive.
    pub label_sparsity: f64,
}

impl Quality {
    /// Harmonic mean of recall and precision.
    pub fn f1(&self) -> f64 {
        let s = self.recall + self.precision;
        if s > 0.0 { 2.0 * self.recall * self.precision / s } else { 0.0 }
    }
}

/// Counts of one comparison; [`Counts::quality`] turns them into rates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub true_pos: u64,
    pub predicted: u64,
    pub labelled: u64,
    pub total: u64,
}

impl Counts {
    /// Adds one token: `predicted` holds the indices predicted active.
    pub fn add(&mut self, labels: &Labels, t: usize, predicted: &[u32]) {
        let f = labels.f();
        self.total += f as u64;
        self.predicted += predicted.len() as u64;
        self.labelled += (0..f).filter(|&i| labels.get(t, i)).count() as u64;
        self.true_pos += predicted.iter().filter(|&&i| labels.get(t, i as usize)).count() as u64;
    }

    /// The rates.
    pub fn quality(&self) -> Quality {
        let total = self.total.max(1) as f64;
        Quality {
            recall: if self.labelled > 0 { self.true_pos as f64 / self.labelled as f64 } else { 1.0 },
            precision: if self.predicted > 0 { self.true_pos as f64 / self.predicted as f64 } else { 1.0 },
            predicted_sparsity: 1.0 - self.predicted as f64 / total,
            label_sparsity: 1.0 - self.labelled as f64 / total,
        }
    }
}

/// Quality of `rule` over every token of `scores` (`labels.n()` rows of `labels.f()`).
pub fn measure(scores: &[f32], labels: &Labels, rule: Rule) -> Quality {
    let mut counts = Counts::default();
    let mut picked = Vec::new();
    for (t, row) in scores.chunks_exact(labels.f()).enumerate().take(labels.n()) {
        rule.select(row, &mut picked);
        counts.add(labels, t, &picked);
    }
    counts.quality()
}

/// The largest float below `x` (for `score > threshold` to keep `x` itself).
fn below(x: f32) -> f32 {
    if x.is_nan() || x == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    if x == 0.0 {
        return -f32::from_bits(1);
    }
    let bits = x.to_bits();
    f32::from_bits(if x > 0.0 { bits - 1 } else { bits + 1 })
}

/// The highest threshold whose rule keeps at least `target` of the labelled-active neurons
/// in `scores`; `target` in (0, 1].
pub fn threshold_for_recall(scores: &[f32], labels: &Labels, target: f64) -> Result<f32> {
    check_recall(target)?;
    let f = labels.f();
    let mut positives: Vec<f32> = Vec::new();
    for (t, row) in scores.chunks_exact(f).enumerate().take(labels.n()) {
        positives.extend(row.iter().enumerate().filter(|&(i, _)| labels.get(t, i)).map(|(_, &s)| s));
    }
    if positives.is_empty() {
        return Err(PredictorError::TooLittleData("no labelled-active neuron to set a recall threshold on".into()));
    }
    positives.sort_by(f32::total_cmp);
    let keep = ((target * positives.len() as f64).ceil() as usize).clamp(1, positives.len());
    Ok(below(positives[positives.len() - keep]))
}

/// Checks a target recall: in (0, 1].
pub fn check_recall(target: f64) -> Result<()> {
    if !(target > 0.0 && target <= 1.0) {
        return Err(PredictorError::InvalidOption(format!("target recall {target} is outside (0, 1]")));
    }
    Ok(())
}

/// One point of a predictivity curve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct CurvePoint {
    pub predicted_sparsity: f64,
    pub recall: f64,
    pub precision: f64,
}

/// Recall and precision when the threshold is the `s`-quantile of all scores, for each `s`.
pub fn predictivity_curve(scores: &[f32], labels: &Labels, sparsities: &[f64]) -> Vec<CurvePoint> {
    let mut sorted: Vec<f32> = scores[..labels.n() * labels.f()].to_vec();
    sorted.sort_by(f32::total_cmp);
    sparsities
        .iter()
        .filter(|_| !sorted.is_empty())
        .map(|&s| {
            let idx = ((s * sorted.len() as f64) as usize).min(sorted.len() - 1);
            let q = measure(scores, labels, Rule::Threshold(below(sorted[idx])));
            CurvePoint { predicted_sparsity: q.predicted_sparsity, recall: q.recall, precision: q.precision }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_k_with_ties_and_sorted() {
        let mut out = Vec::new();
        Rule::TopK(3).select(&[0.5, 2.0, 0.5, 0.5, 3.0], &mut out);
        assert_eq!(out, vec![0, 1, 4]);
        Rule::TopK(0).select(&[1.0], &mut out);
        assert!(out.is_empty());
        Rule::Threshold(0.5).select(&[0.5, 0.6, -1.0], &mut out);
        assert_eq!(out, vec![1]);
    }

    #[test]
    fn recall_threshold_reaches_the_target() {
        let mut labels = Labels::zeros(2, 4);
        labels.set_row(0, |i| i < 2);
        labels.set_row(1, |i| i == 3);
        let scores = [0.9, 0.1, 0.5, 0.0, 0.2, 0.2, 0.2, 0.3];
        let t = threshold_for_recall(&scores, &labels, 1.0).unwrap();
        let q = measure(&scores, &labels, Rule::Threshold(t));
        assert_eq!(q.recall, 1.0);
        let t = threshold_for_recall(&scores, &labels, 0.6).unwrap();
        let q = measure(&scores, &labels, Rule::Threshold(t));
        assert!(q.recall >= 0.6 && q.recall < 1.0, "{q:?}");
        assert!(threshold_for_recall(&scores, &labels, 0.0).is_err());
        assert!(threshold_for_recall(&scores, &labels, 1.5).is_err());
    }

    #[test]
    fn curve_is_monotone_in_recall() {
        let mut labels = Labels::zeros(1, 8);
        labels.set_row(0, |i| i % 2 == 0);
        let scores = [8.0, 1.0, 6.0, 2.0, 4.0, 3.0, 5.0, 0.0];
        let c = predictivity_curve(&scores, &labels, &[0.0, 0.25, 0.5, 0.75]);
        assert!(c.windows(2).all(|w| w[0].recall >= w[1].recall));
        assert_eq!(c[0].recall, 1.0);
        assert_eq!(c[2].recall, 1.0);
        assert_eq!(c[3].recall, 0.5);
    }
}
