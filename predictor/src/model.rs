//! One layer's predictor: its weights (a family), how a score comes out of them, the rule
//! that turns scores into a mask, and the quality measured on validation tokens. Scores run
//! in f64-accumulated f32 on batches (training, validation) and through the int8 kernels
//! for one token (decode).

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};
use sieve_kernels::{ActsQ8, MatF32, MatQ4_1, MatQ8, QK, matmul_f32, matmul_q4_1, matmul_q8, ops};

use crate::error::{PredictorError, Result};
use crate::rule::{Quality, Rule};

/// Predictor families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// DejaVu / PowerInfer: logits = W2 phi(W1 x), trained on the labels (weighted BCE).
    Lowrank,
    /// Regresses the gate g itself with a rank-r map fitted to the data (the principal
    /// directions of g over calibration inputs), then applies the label's rule to |silu(ĝ)|.
    LowrankG,
    /// A b-bit copy of W_gate, full rank: ĝ = Q_b(W_gate) x, scored by |silu(ĝ)|.
    Lowbit,
}

impl Family {
    /// Every family, in CLI order.
    pub const ALL: [Family; 3] = [Family::Lowrank, Family::LowrankG, Family::Lowbit];

    /// The CLI / file name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Lowrank => "lowrank",
            Family::LowrankG => "lowrank-g",
            Family::Lowbit => "lowbit",
        }
    }
}

impl std::str::FromStr for Family {
    type Err = PredictorError;
    fn from_str(s: &str) -> Result<Self> {
        Family::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            PredictorError::InvalidOption(format!("unknown predictor family {s:?} (lowrank, lowrank-g, lowbit)"))
        })
    }
}

/// What a predictor's raw output z means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Output {
    /// z is a logit: score = z.
    Logit,
    /// z estimates the gate g: score = |silu(z)|.
    Gate,
}

/// A predictor's weights.
#[derive(Debug, Clone)]
pub enum Body {
    /// z = W2 phi(W1 x) + b2; w1 is rank x d, w2 is f x rank.
    LowRank { rank: usize, relu: bool, w1: Vec<f32>, w2: Vec<f32>, b2: Vec<f32> },
    /// z = W x with W (f x d) on a b-bit grid (per 32-weight group scale), kept dequantized.
    LowBit { bits: u8, w: Vec<f32> },
}

/// A matrix for the one-token path: int8 when its width is a multiple of the block size;
/// 4-bit codes for low-bit copies of at most 4 bits (see [`crate::grid`]).
#[derive(Debug, Clone)]
enum Fast {
    F32(MatF32),
    Q8(MatQ8),
    Q4(MatQ4_1),
}

impl Fast {
    fn new(rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        Ok(if cols % QK == 0 {
            Fast::Q8(MatQ8::quantize(rows, cols, data)?)
        } else {
            Fast::F32(MatF32::new(rows, cols, data.to_vec())?)
        })
    }

    /// A b-bit grid copy: in 4-bit codes where it fits them, else as [`Fast::new`] makes it.
    fn grid(rows: usize, cols: usize, data: &[f32], bits: u8) -> Result<Self> {
        match crate::grid::grid_to_q4_1(rows, cols, data, bits) {
            Some(m) => Ok(Fast::Q4(m)),
            None => {
                if bits <= crate::grid::MAX_GRID_BITS {
                    tracing::warn!("a {bits}-bit copy ({rows} x {cols}) is not on a {bits}-bit grid: kept in int8");
                }
                Self::new(rows, cols, data)
            }
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Fast::F32(m) => m.bytes(),
            Fast::Q8(m) => m.bytes(),
            Fast::Q4(m) => m.bytes(),
        }
    }

    /// Builds the copies the one-token product reads, so that no timed step pays for them.
    fn prepare_decode(&self) {
        match self {
            Fast::F32(_) => {}
            Fast::Q8(m) => m.prepare_decode(),
            Fast::Q4(m) => m.prepare_decode(),
        }
    }

    fn forward(&self, x: &[f32], qa: &mut ActsQ8, out: &mut [f32]) -> Result<()> {
        match self {
            Fast::F32(m) => matmul_f32(m, x, 1, out)?,
            Fast::Q8(m) => {
                qa.quantize_from(x, 1, x.len())?;
                matmul_q8(m, qa, out)?
            }
            Fast::Q4(m) => {
                qa.quantize_from(x, 1, x.len())?;
                matmul_q4_1(m, qa, out)?
            }
        }
        Ok(())
    }
}

/// Scratch for [`LayerPredictor::scores`].
#[derive(Debug, Default)]
pub struct Scratch {
    qa: ActsQ8,
    hidden: Vec<f32>,
}

/// One layer's predictor.
#[derive(Debug, Clone)]
pub struct LayerPredictor {
    pub body: Body,
    pub output: Output,
    pub rule: Rule,
    /// Measured on validation tokens when the rule was chosen.
    pub quality: Quality,
    /// `score_quantiles[k]`: the validation score below which a fraction k / 100 of all
    /// (token, neuron) scores lie; how a target sparsity becomes a threshold.
    pub score_quantiles: Vec<f32>,
    /// Per-neuron factor on |silu(ĝ)| (empty: none): the typical |u_i| (and ||Wd[:, i]||)
    /// when the label ranks by |h| or by CETT's importance rather than by the gate alone.
    pub neuron_scale: Vec<f32>,
    d: usize,
    f: usize,
    first: Fast,
    second: Option<Fast>,
    /// Rank rounded up to the block size, so the second product runs in int8.
    rank_padded: usize,
}

impl LayerPredictor {
    /// Checks the body against `d` inputs and `f` neurons and prepares the one-token path.
    pub fn new(body: Body, output: Output, rule: Rule, quality: Quality, d: usize, f: usize) -> Result<Self> {
        let (first, second, rank_padded) = match &body {
            Body::LowRank { rank, w1, w2, b2, .. } => {
                let r = *rank;
                if r == 0 || r > d {
                    return Err(PredictorError::InvalidOption(format!(
                        "rank {r} must be in 1..={d} (the input width)"
                    )));
                }
                if w1.len() != r * d || w2.len() != f * r || b2.len() != f {
                    return Err(PredictorError::Shape(format!(
                        "low-rank weights {} / {} / {} for rank {r}, {d} inputs, {f} neurons",
                        w1.len(),
                        w2.len(),
                        b2.len()
                    )));
                }
                let rp = r.next_multiple_of(QK);
                let mut w2p = vec![0f32; f * rp];
                for (dst, src) in w2p.chunks_exact_mut(rp).zip(w2.chunks_exact(r)) {
                    dst[..r].copy_from_slice(src);
                }
                (Fast::new(r, d, w1)?, Some(Fast::new(f, rp, &w2p)?), rp)
            }
            Body::LowBit { bits, w } => {
                check_bits(*bits)?;
                if w.len() != f * d {
                    return Err(PredictorError::Shape(format!("low-bit weights {} for {f} x {d}", w.len())));
                }
                (Fast::grid(f, d, w, *bits)?, None, 0)
            }
        };
        Ok(Self {
            body,
            output,
            rule,
            quality,
            score_quantiles: Vec::new(),
            neuron_scale: Vec::new(),
            d,
            f,
            first,
            second,
            rank_padded,
        })
    }

    /// Input width.
    pub fn d(&self) -> usize {
        self.d
    }

    /// Neurons.
    pub fn f(&self) -> usize {
        self.f
    }

    /// Bytes the one-token path reads.
    pub fn bytes(&self) -> usize {
        self.first.bytes() + self.second.as_ref().map_or(0, Fast::bytes)
    }

    /// Builds the copies the one-token path reads (decode panels), so that no timed decode
    /// step pays for them.
    pub fn prepare_decode(&self) {
        self.first.prepare_decode();
        if let Some(second) = &self.second {
            second.prepare_decode();
        }
    }

    /// Bytes of the weights as a format packed to the family's precision would store them
    /// (int8 + f32 group scales for low rank, b bits + f16 group scales for low bit).
    pub fn packed_bytes(&self) -> usize {
        match &self.body {
            Body::LowRank { .. } => self.bytes(),
            Body::LowBit { bits, .. } => self.f * self.d * *bits as usize / 8 + self.f * self.d / QK * 2,
        }
    }

    /// Scores of one token (`x` of `d`), higher = more likely active; `out` has `f` values.
    pub fn scores(&self, x: &[f32], scratch: &mut Scratch, out: &mut [f32]) -> Result<()> {
        if x.len() != self.d || out.len() != self.f {
            return Err(PredictorError::Shape(format!(
                "predictor of {} inputs / {} neurons given {} / {}",
                self.d,
                self.f,
                x.len(),
                out.len()
            )));
        }
        match (&self.body, &self.second) {
            (Body::LowRank { rank, relu, b2, .. }, Some(second)) => {
                scratch.hidden.clear();
                scratch.hidden.resize(self.rank_padded, 0.0);
                self.first.forward(x, &mut scratch.qa, &mut scratch.hidden[..*rank])?;
                if *relu {
                    scratch.hidden.iter_mut().for_each(|h| *h = h.max(0.0));
                }
                second.forward(&scratch.hidden, &mut scratch.qa, out)?;
                out.iter_mut().zip(b2).for_each(|(o, b)| *o += b);
            }
            _ => self.first.forward(x, &mut scratch.qa, out)?,
        }
        if self.output == Output::Gate {
            ops::silu_in_place(out);
            out.iter_mut().for_each(|v| *v = v.abs());
            if self.neuron_scale.len() == out.len() {
                out.iter_mut().zip(&self.neuron_scale).for_each(|(v, s)| *v *= s);
            }
        }
        Ok(())
    }

    /// Scores of many tokens (rows of `x`, n x d) in f32 with f64-free BLAS-like products:
    /// the reference the one-token path is checked against, and what validation uses.
    pub fn scores_batch(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        batch_scores(&self.body, self.output, &self.neuron_scale, x, self.d, self.f)
    }

    /// The threshold whose rule leaves a fraction `s` of neurons inactive on validation
    /// tokens (interpolated between percentiles); `None` without recorded quantiles.
    pub fn threshold_at_sparsity(&self, s: f32) -> Option<f32> {
        let q = &self.score_quantiles;
        if q.len() < 2 {
            return None;
        }
        let pos = s.clamp(0.0, 1.0) * (q.len() - 1) as f32;
        let k = (pos.floor() as usize).min(q.len() - 2);
        Some(q[k] + (q[k + 1] - q[k]) * (pos - k as f32))
    }

    /// The rule applied to one token's scores.
    pub fn select(&self, scores: &[f32], out: &mut Vec<u32>) {
        self.rule.select(scores, out)
    }
}

/// [`LayerPredictor::scores_batch`] for a body not yet wrapped into a predictor.
/// `scale`: per-neuron factors on |silu(ĝ)| (empty: none).
pub fn batch_scores(
    body: &Body,
    output: Output,
    scale: &[f32],
    x: ArrayView2<'_, f32>,
    d: usize,
    f: usize,
) -> Result<Array2<f32>> {
    if x.ncols() != d {
        return Err(PredictorError::Shape(format!("inputs of width {} for a predictor of {d}", x.ncols())));
    }
    let mut z = match body {
        Body::LowRank { rank, relu, w1, w2, b2 } => {
            let w1 = ArrayView2::from_shape((*rank, d), w1).map_err(|e| PredictorError::Shape(e.to_string()))?;
            let w2 = ArrayView2::from_shape((f, *rank), w2).map_err(|e| PredictorError::Shape(e.to_string()))?;
            let mut h = x.dot(&w1.t());
            if *relu {
                h.mapv_inplace(|v| v.max(0.0));
            }
            let mut z = h.dot(&w2.t());
            z.rows_mut().into_iter().for_each(|mut row| row.iter_mut().zip(b2).for_each(|(o, b)| *o += b));
            z
        }
        Body::LowBit { w, .. } => {
            let w = ArrayView2::from_shape((f, d), w).map_err(|e| PredictorError::Shape(e.to_string()))?;
            x.dot(&w.t())
        }
    };
    if output == Output::Gate {
        z.mapv_inplace(|v| ops::silu(v).abs());
        if scale.len() == f {
            z.rows_mut().into_iter().for_each(|mut row| row.iter_mut().zip(scale).for_each(|(v, s)| *v *= s));
        }
    }
    Ok(z)
}

/// Checks a bit width: 1 to 8.
pub fn check_bits(bits: u8) -> Result<()> {
    if !(1..=8).contains(&bits) {
        return Err(PredictorError::InvalidOption(format!("bits {bits} outside 1-8")));
    }
    Ok(())
}

/// `w` (rows x cols, cols a multiple of 32) on a b-bit grid, per 32-weight group: the 2^b
/// levels (k + 1/2) · step for k in -2^(b-1)..2^(b-1) (no zero level, so 1 bit is the sign),
/// the step chosen per group to minimise the squared error (a grid search around the
/// group's RMS: weights are near-Gaussian, so max-scaled grids waste most levels).
pub fn quantize_bits(w: &[f32], bits: u8) -> Result<Vec<f32>> {
    check_bits(bits)?;
    if w.len() % QK != 0 {
        return Err(PredictorError::Shape(format!("{} weights are not whole groups of {QK}", w.len())));
    }
    let half = (1i32 << (bits - 1)) as f32;
    let snap = |v: f32, step: f32| ((v / step - 0.5).round().clamp(-half, half - 1.0) + 0.5) * step;
    let mut out = vec![0f32; w.len()];
    for (dst, src) in out.chunks_exact_mut(QK).zip(w.chunks_exact(QK)) {
        let rms = (src.iter().map(|v| v * v).sum::<f32>() / QK as f32).sqrt();
        if rms == 0.0 {
            dst.fill(0.0);
            continue;
        }
        let mut best = (f32::INFINITY, rms);
        for k in 1..=40 {
            // 0.1 to 4 RMS / sqrt(2^(b-1)): brackets the Gaussian optimum of every width.
            let step = rms * k as f32 * 0.1 / half.sqrt();
            let err: f32 = src.iter().map(|&v| (v - snap(v, step)).powi(2)).sum();
            if err < best.0 {
                best = (err, step);
            }
        }
        dst.iter_mut().zip(src).for_each(|(o, &v)| *o = snap(v, best.1));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_path_matches_the_batch_path() {
        let (d, f, r) = (64, 48, 5);
        let w1: Vec<f32> = (0..r * d).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.2).collect();
        let w2: Vec<f32> = (0..f * r).map(|i| (i * 53 % 97) as f32 / 48.0 - 1.0).collect();
        let b2: Vec<f32> = (0..f).map(|i| i as f32 * 0.01 - 0.2).collect();
        for (relu, output) in [(false, Output::Gate), (true, Output::Logit)] {
            let body = Body::LowRank { rank: r, relu, w1: w1.clone(), w2: w2.clone(), b2: b2.clone() };
            let p = LayerPredictor::new(body, output, Rule::TopK(10), Quality::default(), d, f).unwrap();
            let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.3).sin()).collect();
            assert_one_token_matches_batch(&p, &x, &format!("relu {relu}"));
        }
    }

    /// The one-token path (int8 activations) against the f32 batch path, within 3% of the
    /// largest score.
    fn assert_one_token_matches_batch(p: &LayerPredictor, x: &[f32], what: &str) {
        let mut one = vec![0f32; p.f()];
        p.scores(x, &mut Scratch::default(), &mut one).unwrap();
        let batch = p.scores_batch(ArrayView2::from_shape((1, p.d()), x).unwrap()).unwrap();
        let scale = batch.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in one.iter().zip(batch.iter()) {
            assert!((a - b).abs() <= 0.03 * scale, "{what}: {a} vs {b}");
        }
    }

    #[test]
    fn low_bit_copies_of_up_to_four_bits_read_four_bit_codes() {
        let (d, f) = (64, 40);
        let w: Vec<f32> = (0..f * d).map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * 0.05).collect();
        let x: Vec<f32> = (0..d).map(|i| (i as f32 * 0.3).sin()).collect();
        for bits in [1u8, 3, 4, 6] {
            let body = Body::LowBit { bits, w: quantize_bits(&w, bits).unwrap() };
            let p = LayerPredictor::new(body, Output::Gate, Rule::TopK(10), Quality::default(), d, f).unwrap();
            let blocks = f * d / QK;
            if bits <= 4 {
                assert_eq!(p.bytes(), blocks * 20, "{bits} bits: Q4_1 blocks");
            } else {
                assert!(p.bytes() > blocks * 20, "{bits} bits: an int8 copy");
            }
            p.prepare_decode();
            assert_one_token_matches_batch(&p, &x, &format!("{bits} bits"));
        }
    }

    #[test]
    fn bad_rank_and_bits_are_refused() {
        let body = Body::LowRank { rank: 0, relu: false, w1: vec![], w2: vec![], b2: vec![0.0; 4] };
        assert!(LayerPredictor::new(body, Output::Logit, Rule::TopK(1), Quality::default(), 32, 4).is_err());
        let body =
            Body::LowRank { rank: 33, relu: false, w1: vec![0.0; 33 * 32], w2: vec![0.0; 4 * 33], b2: vec![0.0; 4] };
        assert!(LayerPredictor::new(body, Output::Logit, Rule::TopK(1), Quality::default(), 32, 4).is_err());
        assert!(quantize_bits(&[0.0; 32], 0).is_err());
        assert!(quantize_bits(&[0.0; 32], 9).is_err());
    }

    #[test]
    fn bit_grids_have_the_right_number_of_levels() {
        let w: Vec<f32> = (0..64).map(|i| i as f32 / 10.0 - 3.0).collect();
        for bits in 1..=4u8 {
            let q = quantize_bits(&w, bits).unwrap();
            let mut levels: Vec<i64> = q[..32].iter().map(|v| (v * 1e4).round() as i64).collect();
            levels.sort();
            levels.dedup();
            assert!(levels.len() <= 1 << bits, "{bits}: {levels:?}");
            let err: f32 = w.iter().zip(&q).map(|(a, b)| (a - b).powi(2)).sum();
            let prev = quantize_bits(&w, bits.saturating_sub(1).max(1)).unwrap();
            let prev_err: f32 = w.iter().zip(&prev).map(|(a, b)| (a - b).powi(2)).sum();
            assert!(bits == 1 || err < prev_err, "{bits} bits: error {err} not below {prev_err}");
        }
    }
}
