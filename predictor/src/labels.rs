//! Bit-packed neuron labels: one bit per (token, neuron), 1 = the neuron matters.

use crate::error::{PredictorError, Result};

/// Labels of `n` tokens over `f` neurons, row-major, each row padded to whole u64 words.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    n: usize,
    f: usize,
    words: Vec<u64>,
}

impl Labels {
    /// All-zero labels.
    pub fn zeros(n: usize, f: usize) -> Self {
        Self { n, f, words: vec![0; n * f.div_ceil(64)] }
    }

    /// Labels from packed words as [`Labels::words`] returns them; checks the length.
    pub fn from_words(n: usize, f: usize, words: Vec<u64>) -> Result<Self> {
        if words.len() != n * f.div_ceil(64) {
            return Err(PredictorError::Shape(format!(
                "{} label words for {n} tokens x {f} neurons (want {})",
                words.len(),
                n * f.div_ceil(64)
            )));
        }
        Ok(Self { n, f, words })
    }

    /// Tokens.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Neurons per token.
    pub fn f(&self) -> usize {
        self.f
    }

    /// The packed words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn row_words(&self) -> usize {
        self.f.div_ceil(64)
    }

    /// Label of neuron `i` at token `t` (both in range).
    pub fn get(&self, t: usize, i: usize) -> bool {
        self.words[t * self.row_words() + i / 64] >> (i % 64) & 1 == 1
    }

    /// Sets token `t`'s labels from a per-neuron predicate.
    pub fn set_row(&mut self, t: usize, active: impl Fn(usize) -> bool) {
        let rw = self.row_words();
        let row = &mut self.words[t * rw..(t + 1) * rw];
        row.fill(0);
        for i in 0..self.f {
            if active(i) {
                row[i / 64] |= 1 << (i % 64);
            }
        }
    }

    /// Appends the rows of `other` (same `f`).
    pub fn extend(&mut self, other: &Labels) -> Result<()> {
        if other.f != self.f {
            return Err(PredictorError::Shape(format!("labels of {} neurons onto {}", other.f, self.f)));
        }
        self.words.extend_from_slice(&other.words);
        self.n += other.n;
        Ok(())
    }

    /// Rows `range` as their own labels.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Labels {
        let rw = self.row_words();
        Labels { n: range.len(), f: self.f, words: self.words[range.start * rw..range.end * rw].to_vec() }
    }

    /// Fraction of labels that are 1.
    pub fn positive_rate(&self) -> f64 {
        let ones: u64 = self.words.iter().map(|w| w.count_ones() as u64).sum();
        ones as f64 / (self.n * self.f).max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_slice_round_trip() {
        let mut l = Labels::zeros(3, 70);
        l.set_row(1, |i| i % 3 == 0 || i == 69);
        assert!(l.get(1, 0) && l.get(1, 69) && !l.get(1, 1) && !l.get(0, 0));
        let r = l.rows(1..2);
        assert!(r.get(0, 66) && !r.get(0, 67));
        assert!(Labels::from_words(3, 70, vec![0; 5]).is_err());
        let rate = l.positive_rate();
        assert!((rate - 24.0 / 210.0).abs() < 1e-12, "{rate}");
    }
}
