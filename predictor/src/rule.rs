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
    let keep = ((target * positives.len() as f64).ceil() as usize).clamp(1, positives.len());
    let at = positives.len() - keep;
    positives.select_nth_unstable_by(at, f32::total_cmp);
    Ok(below(positives[at]))
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

/// Recall and precision when the threshold is the `s`-quantile of all scores, for each `s`:
/// the quantiles by selection, then every threshold counted in one pass over the scores.
pub fn predictivity_curve(scores: &[f32], labels: &Labels, sparsities: &[f64]) -> Vec<CurvePoint> {
    let scores = &scores[..(labels.n() * labels.f()).min(scores.len())];
    if scores.is_empty() {
        return Vec::new();
    }
    let thresholds: Vec<f32> = quantiles(scores, sparsities).into_iter().map(below).collect();
    let counts = count_at_thresholds(scores, labels, &thresholds);
    counts
        .iter()
        .map(|c| {
            let q = c.quality();
            CurvePoint { predicted_sparsity: q.predicted_sparsity, recall: q.recall, precision: q.precision }
        })
        .collect()
}

/// [`Counts`] of the rule `score > t` for every `t` in `thresholds`, in one pass: each score
/// is placed among the sorted thresholds and counted once, then the counts are summed from
/// the top.
pub fn count_at_thresholds(scores: &[f32], labels: &Labels, thresholds: &[f32]) -> Vec<Counts> {
    let mut order: Vec<usize> = (0..thresholds.len()).collect();
    order.sort_by(|&a, &b| thresholds[a].total_cmp(&thresholds[b]));
    let sorted: Vec<f32> = order.iter().map(|&k| thresholds[k]).collect();
    // above[b]: scores above exactly the b lowest thresholds (b = how many thresholds < score).
    let (mut above, mut above_pos) = (vec![0u64; sorted.len() + 1], vec![0u64; sorted.len() + 1]);
    let f = labels.f();
    let mut labelled = 0u64;
    for (t, row) in scores.chunks_exact(f).enumerate().take(labels.n()) {
        for (i, &s) in row.iter().enumerate() {
            let b = sorted.partition_point(|&th| th < s);
            let pos = labels.get(t, i);
            above[b] += 1;
            above_pos[b] += u64::from(pos);
            labelled += u64::from(pos);
        }
    }
    let total = (labels.n().min(scores.len() / f.max(1)) * f) as u64;
    let mut out = vec![Counts::default(); thresholds.len()];
    let (mut predicted, mut true_pos) = (0u64, 0u64);
    for b in (1..=sorted.len()).rev() {
        predicted += above[b];
        true_pos += above_pos[b];
        out[order[b - 1]] = Counts { true_pos, predicted, labelled, total };
    }
    out
}

/// The values at fractions `qs` (each in [0, 1]) of `v` in ascending order: entry
/// `floor(q * len)` (the last one for q = 1) of the sorted values.
pub fn quantiles(v: &[f32], qs: &[f64]) -> Vec<f32> {
    let n = v.len();
    let positions: Vec<usize> =
        qs.iter().map(|&q| ((q.clamp(0.0, 1.0) * n as f64) as usize).min(n.saturating_sub(1))).collect();
    order_statistics(v, &positions)
}

/// Entries `positions` (each below `v.len()`) of `v` sorted ascending, found by nested
/// selection: about `len * log2(positions.len())` comparisons instead of a full sort.
/// Empty for an empty `v`.
pub fn order_statistics(v: &[f32], positions: &[usize]) -> Vec<f32> {
    if v.is_empty() {
        return Vec::new();
    }
    let positions: Vec<usize> = positions.iter().map(|&p| p.min(v.len() - 1)).collect();
    let mut wanted = positions.clone();
    wanted.sort_unstable();
    wanted.dedup();
    let mut work = v.to_vec();
    let mut found = vec![0f32; wanted.len()];
    select_all(&mut work, 0, &wanted, &mut found);
    positions.iter().map(|p| found[wanted.partition_point(|w| w < p)]).collect()
}

/// Places the order statistics `wanted` (sorted, offsets of `base + index`) of `v` into `found`.
fn select_all(v: &mut [f32], base: usize, wanted: &[usize], found: &mut [f32]) {
    if wanted.is_empty() {
        return;
    }
    let mid = wanted.len() / 2;
    let k = wanted[mid] - base;
    let (left, kth, right) = v.select_nth_unstable_by(k, f32::total_cmp);
    found[mid] = *kth;
    let (found_left, found_right) = found.split_at_mut(mid);
    select_all(left, base, &wanted[..mid], found_left);
    select_all(right, base + k + 1, &wanted[mid + 1..], &mut found_right[1..]);
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

    /// Pseudo-random scores with ties (values on a coarse grid) and labels.
    fn sample(n: usize, f: usize) -> (Vec<f32>, Labels) {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let scores: Vec<f32> = (0..n * f).map(|_| (next() % 97) as f32 / 7.0 - 3.0).collect();
        let mut labels = Labels::zeros(n, f);
        for t in 0..n {
            let row = &scores[t * f..(t + 1) * f];
            let noise: Vec<bool> = (0..f).map(|_| next() % 5 == 0).collect();
            labels.set_row(t, |i| (row[i] > 0.5) != noise[i]);
        }
        (scores, labels)
    }

    #[test]
    fn selection_gives_the_sorted_entries() {
        let (scores, _) = sample(37, 29);
        let mut sorted = scores.clone();
        sorted.sort_by(f32::total_cmp);
        let positions = [0, 1, 5, 5, 500, 1072, 1072, 300, 1];
        let want: Vec<f32> = positions.iter().map(|&p| sorted[p]).collect();
        assert_eq!(order_statistics(&scores, &positions), want);
        let qs = [0.0, 0.1, 0.5, 0.9, 1.0];
        let want: Vec<f32> = qs.iter().map(|&q| sorted[((q * 1073.0) as usize).min(1072)]).collect();
        assert_eq!(quantiles(&scores, &qs), want);
        assert!(quantiles(&[], &qs).is_empty());
    }

    #[test]
    fn one_pass_counts_equal_a_measure_per_threshold() {
        let (scores, labels) = sample(41, 67);
        let thresholds = [0.5f32, -10.0, 2.0, 0.5, 1.0 / 7.0, 100.0];
        let counts = count_at_thresholds(&scores, &labels, &thresholds);
        for (c, &t) in counts.iter().zip(&thresholds) {
            let want = measure(&scores, &labels, Rule::Threshold(t));
            assert_eq!(c.quality(), want, "threshold {t}");
        }
    }
}
