//! Fitting predictors to traced activations: the closed-form gate regression (`lowrank-g`),
//! the b-bit gate copy (`lowbit`), and the DejaVu-style low-rank classifier (`lowrank`)
//! trained with candle-nn (AdamW, minibatches, a numerically stable weighted BCE, a
//! validation split and early stopping). [`finish`] then picks the layer's decision rule on
//! validation tokens and measures it.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::error::{PredictorError, Result};
use crate::labels::Labels;
use crate::model::{Body, LayerPredictor, Output, batch_scores, quantize_bits};
use crate::pca::leading_eigenvectors;
use crate::rule::{Rule, measure, threshold_for_recall};

/// Rows of `x` per f32 GEMM when accumulating Xᵀ X: within a chunk the f32 sums carry a
/// relative error of about 1e-6 (a few thousand terms), and the chunks add in f64.
const MOMENT_CHUNK: usize = 4096;

/// The second moment of the inputs, Xᵀ X / n (d x d, f64), accumulated chunk by chunk in
/// f32 GEMMs on both cores (an f64 copy of a 200k-token trace would be 0.9 GB per layer and
/// an f64 GEMM half as fast).
pub fn input_moment(x: ArrayView2<'_, f32>) -> Result<Array2<f64>> {
    let (n, d) = x.dim();
    if n == 0 {
        return Err(PredictorError::TooLittleData("no input to measure the second moment on".into()));
    }
    let mut sum = Array2::<f64>::zeros((d, d));
    let mut part = Array2::<f32>::zeros((d, d));
    for start in (0..n).step_by(MOMENT_CHUNK) {
        let chunk = x.slice(ndarray::s![start..(start + MOMENT_CHUNK).min(n), ..]);
        ndarray::linalg::general_mat_mul(1.0, &chunk.t(), &chunk, 0.0, &mut part);
        sum.zip_mut_with(&part, |s, &p| *s += f64::from(p));
    }
    Ok(sum / n as f64)
}

/// `lowrank-g`: the rank-r map that best reproduces g = W_gate x over the inputs `x` (n x d)
/// in least squares — W_gate followed by the projection on the r leading principal
/// directions of g (from the gate covariance W_gate Cov(x) W_gateᵀ).
pub fn fit_gate_regression(x: ArrayView2<'_, f32>, w_gate: &[f32], f: usize, rank: usize) -> Result<Body> {
    let moment = input_moment(x)?;
    fit_gate_regression_from_moment(&moment, w_gate, f, rank)
}

/// [`fit_gate_regression`] from the inputs' second moment ([`input_moment`]), so that one
/// pass over the inputs serves the fit and [`neuron_scales_from_moment`].
pub fn fit_gate_regression_from_moment(moment: &Array2<f64>, w_gate: &[f32], f: usize, rank: usize) -> Result<Body> {
    let d = moment.nrows();
    let wg = gate_matrix(w_gate, d, f, rank)?;
    if moment.ncols() != d {
        return Err(PredictorError::Shape(format!("a {d} x {} moment is not square", moment.ncols())));
    }
    let l = cholesky_with_ridge(moment)?;
    Ok(project_gate(&wg, &wg.dot(&l), rank))
}

/// The anchor the low-rank families must beat: the rank-r truncated SVD of W_gate alone
/// (no data), as a gate regression.
pub fn fit_gate_svd(w_gate: &[f32], d: usize, f: usize, rank: usize) -> Result<Body> {
    let wg = gate_matrix(w_gate, d, f, rank)?;
    Ok(project_gate(&wg, &wg, rank))
}

/// W_gate (f x d) in f64, after checking its size and the rank.
fn gate_matrix(w_gate: &[f32], d: usize, f: usize, rank: usize) -> Result<Array2<f64>> {
    check_rank(rank, d)?;
    if w_gate.len() != f * d {
        return Err(PredictorError::Shape(format!("W_gate has {} values, want {f} x {d}", w_gate.len())));
    }
    Ok(ArrayView2::from_shape((f, d), w_gate).map_err(|e| PredictorError::Shape(e.to_string()))?.mapv(f64::from))
}

/// ĝ = V Vᵀ W_gate x with V the `rank` leading eigenvectors of A Aᵀ (f x f), where A = W_gate L
/// for a factor L Lᵀ of the input moment (L = I for the data-free anchor): W1 = Vᵀ W_gate,
/// W2 = V. The eigenvectors come from the d x d matrix Aᵀ A (u = A q / |A q| for each of its
/// eigenvectors q), 7x less work than iterating on the f x f matrix at SmolLM2's shapes and
/// the same leading directions.
fn project_gate(wg: &Array2<f64>, a: &Array2<f64>, rank: usize) -> Body {
    let q = leading_eigenvectors(&a.t().dot(a), rank); // d x r
    let mut v = a.dot(&q); // f x r
    for mut col in v.columns_mut() {
        let norm = col.dot(&col).sqrt();
        if norm > 0.0 {
            col.mapv_inplace(|c| c / norm);
        }
    }
    let w1 = v.t().dot(wg); // r x d
    Body::LowRank {
        rank,
        relu: false,
        w1: w1.iter().map(|&a| a as f32).collect(),
        w2: v.iter().map(|&a| a as f32).collect(),
        b2: vec![0.0; wg.nrows()],
    }
}

/// Lower-triangular L with L Lᵀ = `m` + ε I, ε a tiny multiple of the mean diagonal, raised
/// until the factorization succeeds (a dead input channel makes the moment singular).
fn cholesky_with_ridge(m: &Array2<f64>) -> Result<Array2<f64>> {
    let d = m.nrows();
    let mean_diag = m.diag().sum() / d.max(1) as f64;
    if !(mean_diag.is_finite() && mean_diag > 0.0) {
        return Err(PredictorError::TooLittleData("the inputs are all zero or not finite".into()));
    }
    let mut ridge = 1e-10 * mean_diag;
    for _ in 0..8 {
        if let Some(l) = cholesky(m, ridge) {
            return Ok(l);
        }
        ridge *= 100.0;
    }
    Err(PredictorError::Shape("the input moment is not positive semi-definite".into()))
}

/// Cholesky factor of `m + ridge I`, or `None` when a pivot is not positive.
fn cholesky(m: &Array2<f64>, ridge: f64) -> Option<Array2<f64>> {
    let d = m.nrows();
    let mut l = Array2::<f64>::zeros((d, d));
    for j in 0..d {
        let row_j = l.row(j).to_owned();
        let pivot = m[[j, j]] + ridge - row_j.slice(ndarray::s![..j]).dot(&row_j.slice(ndarray::s![..j]));
        if pivot.is_nan() || pivot <= 0.0 {
            return None;
        }
        let ljj = pivot.sqrt();
        l[[j, j]] = ljj;
        for i in j + 1..d {
            let dot = l.row(i).slice(ndarray::s![..j]).dot(&row_j.slice(ndarray::s![..j]));
            l[[i, j]] = (m[[i, j]] - dot) / ljj;
        }
    }
    Some(l)
}

/// Per-neuron factors that turn a gate score |silu(ĝ_i)| into an estimate of |h_i| (times
/// ||Wd[:, i]|| when `down_norms` is given, CETT's importance): the RMS over the inputs `x`
/// of u_i = W_up[i] · x.
pub fn neuron_scales(x: ArrayView2<'_, f32>, w_up: &[f32], f: usize, down_norms: Option<&[f32]>) -> Result<Vec<f32>> {
    neuron_scales_from_moment(&input_moment(x)?, w_up, f, down_norms)
}

/// [`neuron_scales`] from the inputs' second moment ([`input_moment`]).
pub fn neuron_scales_from_moment(
    moment: &Array2<f64>,
    w_up: &[f32],
    f: usize,
    down_norms: Option<&[f32]>,
) -> Result<Vec<f32>> {
    let d = moment.nrows();
    if w_up.len() != f * d || down_norms.is_some_and(|n| n.len() != f) || moment.ncols() != d {
        return Err(PredictorError::Shape(format!("W_up / down norms do not fit {f} neurons of {d} inputs")));
    }
    let wu = ArrayView2::from_shape((f, d), w_up).map_err(|e| PredictorError::Shape(e.to_string()))?.mapv(f64::from);
    let wc = wu.dot(moment);
    Ok((0..f)
        .map(|i| {
            let rms = wc.row(i).dot(&wu.row(i)).max(0.0).sqrt() as f32;
            rms * down_norms.map_or(1.0, |n| n[i])
        })
        .collect())
}

/// `lowbit`: W_gate on a b-bit grid.
pub fn fit_lowbit(w_gate: &[f32], bits: u8) -> Result<Body> {
    Ok(Body::LowBit { bits, w: quantize_bits(w_gate, bits)? })
}

/// Checks a rank against the input width.
pub fn check_rank(rank: usize, d: usize) -> Result<()> {
    if rank == 0 || rank > d {
        return Err(PredictorError::InvalidOption(format!("rank {rank} must be in 1..={d} (the input width)")));
    }
    Ok(())
}

/// How the low-rank classifier starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Small uniform weights (fixed seed).
    Random,
    /// W1 from the leading principal directions of the inputs.
    InputPca,
}

/// Options of [`train_lowrank`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct TrainOptions {
    pub rank: usize,
    pub relu: bool,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    /// Epochs without a better validation loss before stopping.
    pub patience: usize,
    pub init: Init,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self { rank: 64, relu: false, epochs: 12, batch: 256, lr: 3e-3, patience: 2, init: Init::InputPca }
    }
}

/// What training did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainLog {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub val_loss: Vec<f64>,
}

/// The weights of the best epoch so far: its validation loss, then W1, W2 and b2 flattened.
type BestEpoch = (f64, Vec<f32>, Vec<f32>, Vec<f32>);

/// The DejaVu-style classifier: logits = W2 phi(W1 x) + b2, trained on `labels` with
/// positives weighted by the negative/positive ratio; the weights of the epoch with the
/// lowest validation loss are kept.
pub fn train_lowrank(
    train_x: ArrayView2<'_, f32>,
    train_y: &Labels,
    val_x: ArrayView2<'_, f32>,
    val_y: &Labels,
    opts: TrainOptions,
) -> Result<(Body, TrainLog)> {
    let (n, d, f) = (train_x.nrows(), train_x.ncols(), train_y.f());
    check_rank(opts.rank, d)?;
    if n != train_y.n() || val_x.nrows() != val_y.n() || val_x.ncols() != d || val_y.f() != f {
        return Err(PredictorError::Shape("training inputs and labels disagree in size".into()));
    }
    if n < opts.batch.max(1) || val_y.n() == 0 {
        return Err(PredictorError::TooLittleData(format!(
            "{n} training and {} validation tokens (need at least one batch of {} and one validation token)",
            val_y.n(),
            opts.batch
        )));
    }
    if opts.batch == 0 || opts.epochs == 0 || opts.lr.is_nan() || opts.lr <= 0.0 {
        return Err(PredictorError::InvalidOption("batch, epochs and learning rate must be positive".into()));
    }
    let r = opts.rank;
    let dev = Device::Cpu;
    let w1_init = match opts.init {
        Init::Random => uniform(r * d, (3.0 / d as f64).sqrt(), 1),
        Init::InputPca => {
            let v = leading_eigenvectors(&input_moment(train_x)?, r); // d x r
            v.t().iter().map(|&a| a as f32).collect()
        }
    };
    let w1 = Var::from_tensor(&Tensor::from_vec(w1_init, (r, d), &dev)?)?;
    let w2 = Var::from_tensor(&Tensor::from_vec(uniform(f * r, (3.0 / r as f64).sqrt(), 2), (f, r), &dev)?)?;
    let b2 = Var::from_tensor(&Tensor::zeros(f, DType::F32, &dev)?)?;
    let params = ParamsAdamW { lr: opts.lr, weight_decay: 1e-4, ..Default::default() };
    let mut opt = AdamW::new(vec![w1.clone(), w2.clone(), b2.clone()], params)?;
    let p = train_y.positive_rate().clamp(1e-4, 1.0 - 1e-4);
    let pos_weight = ((1.0 - p) / p) as f32;

    let xs = train_x.as_standard_layout();
    let x_flat = xs.as_slice().unwrap_or(&[]);
    let val_x_t =
        Tensor::from_vec(val_x.as_standard_layout().iter().copied().collect::<Vec<f32>>(), (val_y.n(), d), &dev)?;
    let val_y_t = labels_tensor(val_y, 0..val_y.n(), &dev)?;
    let mut order: Vec<usize> = (0..n).collect();
    let mut log = TrainLog { epochs_run: 0, best_epoch: 0, val_loss: Vec::new() };
    let mut best: Option<BestEpoch> = None;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for epoch in 0..opts.epochs {
        shuffle(&mut order, &mut rng);
        for chunk in order.chunks(opts.batch) {
            let mut xb = Vec::with_capacity(chunk.len() * d);
            for &t in chunk {
                xb.extend_from_slice(&x_flat[t * d..(t + 1) * d]);
            }
            let xb = Tensor::from_vec(xb, (chunk.len(), d), &dev)?;
            let yb = labels_tensor_rows(train_y, chunk, &dev)?;
            let z = logits(&xb, &w1, &w2, &b2, opts.relu)?;
            let loss = weighted_bce(&z, &yb, pos_weight)?;
            opt.backward_step(&loss)?;
        }
        let z = logits(&val_x_t, &w1, &w2, &b2, opts.relu)?;
        let val = weighted_bce(&z, &val_y_t, pos_weight)?.to_scalar::<f32>()? as f64;
        log.val_loss.push(val);
        log.epochs_run = epoch + 1;
        tracing::debug!(epoch, val, "low-rank predictor epoch");
        if best.as_ref().is_none_or(|b| val < b.0) {
            best = Some((val, flat(&w1)?, flat(&w2)?, flat(&b2)?));
            log.best_epoch = epoch + 1;
        } else if epoch + 1 - log.best_epoch >= opts.patience {
            break;
        }
    }
    let Some((_, w1, w2, b2)) = best else {
        return Err(PredictorError::TooLittleData("training ran no epoch".into()));
    };
    Ok((Body::LowRank { rank: r, relu: opts.relu, w1, w2, b2 }, log))
}

fn logits(x: &Tensor, w1: &Var, w2: &Var, b2: &Var, relu: bool) -> candle_core::Result<Tensor> {
    let h = x.matmul(&w1.as_tensor().t()?)?;
    let h = if relu { h.relu()? } else { h };
    h.matmul(&w2.as_tensor().t()?)?.broadcast_add(b2.as_tensor())
}

/// log(1 + e^z) without overflow: max(z, 0) + log(1 + e^-|z|). (candle's own BCE-with-logits
/// takes log(sigmoid(z)), which is -inf for very negative z.)
fn softplus(z: &Tensor) -> candle_core::Result<Tensor> {
    z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// Mean over every (token, neuron) of pos_weight · y · softplus(-z) + (1 - y) · softplus(z).
fn weighted_bce(z: &Tensor, y: &Tensor, pos_weight: f32) -> candle_core::Result<Tensor> {
    let pos = ((y * softplus(&z.neg()?)?)? * pos_weight as f64)?;
    let neg = (y.affine(-1.0, 1.0)? * softplus(z)?)?;
    (pos + neg)?.mean_all()
}

fn flat(v: &Var) -> candle_core::Result<Vec<f32>> {
    v.as_tensor().flatten_all()?.to_vec1::<f32>()
}

fn labels_tensor(l: &Labels, rows: std::ops::Range<usize>, dev: &Device) -> candle_core::Result<Tensor> {
    let idx: Vec<usize> = rows.collect();
    labels_tensor_rows(l, &idx, dev)
}

fn labels_tensor_rows(l: &Labels, rows: &[usize], dev: &Device) -> candle_core::Result<Tensor> {
    let f = l.f();
    let mut v = Vec::with_capacity(rows.len() * f);
    for &t in rows {
        v.extend((0..f).map(|i| if l.get(t, i) { 1f32 } else { 0.0 }));
    }
    Tensor::from_vec(v, (rows.len(), f), dev)
}

/// Uniform values in [-a, a) from a fixed seed.
fn uniform(len: usize, a: f64, seed: u64) -> Vec<f32> {
    sieve_kernels::testdata::values(len, seed).into_iter().map(|v| v * a as f32).collect()
}

fn shuffle(v: &mut [usize], s: &mut u64) {
    for i in (1..v.len()).rev() {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        v.swap(i, (*s % (i as u64 + 1)) as usize);
    }
}

/// How a layer's rule is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleChoice {
    /// The highest threshold reaching this recall on validation tokens.
    TargetRecall(f64),
    /// A fixed number of neurons per token.
    TopK(usize),
}

/// Wraps a fitted body into a predictor: chooses the rule on the validation tokens and
/// records its quality there.
pub fn finish(
    body: Body,
    output: Output,
    neuron_scale: Vec<f32>,
    val_x: ArrayView2<'_, f32>,
    val_y: &Labels,
    choice: RuleChoice,
) -> Result<(LayerPredictor, Array2<f32>)> {
    let (d, f) = (val_x.ncols(), val_y.f());
    if !neuron_scale.is_empty() && neuron_scale.len() != f {
        return Err(PredictorError::Shape(format!("{} neuron scales for {f} neurons", neuron_scale.len())));
    }
    let scores = batch_scores(&body, output, &neuron_scale, val_x, d, f)?;
    let flat = scores.as_slice().ok_or_else(|| PredictorError::Shape("scores are not contiguous".into()))?;
    let rule = match choice {
        RuleChoice::TargetRecall(r) => Rule::Threshold(threshold_for_recall(flat, val_y, r)?),
        RuleChoice::TopK(k) => Rule::TopK(k.min(f)),
    };
    let quality = measure(flat, val_y, rule);
    let mut p = LayerPredictor::new(body, output, rule, quality, d, f)?;
    p.score_quantiles = percentiles(flat);
    p.neuron_scale = neuron_scale;
    Ok((p, scores))
}

/// The 101 percentiles of `v`: entry `k (len - 1) / 100` of the sorted values for k = 0..=100
/// (empty for an empty slice).
pub fn percentiles(v: &[f32]) -> Vec<f32> {
    let positions: Vec<usize> = (0..=100).map(|k| k * v.len().saturating_sub(1) / 100).collect();
    crate::rule::order_statistics(v, &positions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs whose channel k has scale 0.7^k: a spectrum with clear gaps.
    fn inputs(n: usize, d: usize) -> Array2<f32> {
        let raw = sieve_kernels::testdata::values(n * d, 3);
        Array2::from_shape_fn((n, d), |(t, k)| raw[t * d + k] * 0.7f32.powi(k as i32))
    }

    #[test]
    fn chunked_moment_equals_the_f64_product() {
        let x = inputs(MOMENT_CHUNK + 123, 24);
        let got = input_moment(x.view()).unwrap();
        let x64 = x.mapv(f64::from);
        let want = x64.t().dot(&x64) / x.nrows() as f64;
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * scale, "{g} vs {w}");
        }
        assert!(input_moment(x.slice(ndarray::s![..0, ..])).is_err());
    }

    /// The d-space route finds the same rank-r subspace as the leading eigenvectors of the
    /// f x f gate covariance W C Wᵀ (compared as projectors, which do not depend on signs).
    #[test]
    fn gate_projection_matches_the_f_space_eigenvectors() {
        let (n, d, f, r) = (2000, 16, 40, 4);
        let x = inputs(n, d);
        let w: Vec<f32> = sieve_kernels::testdata::values(f * d, 9);
        let Body::LowRank { w2, .. } = fit_gate_regression(x.view(), &w, f, r).unwrap() else {
            panic!("low-rank body expected");
        };
        let v = Array2::from_shape_vec((f, r), w2.iter().map(|&a| f64::from(a)).collect()).unwrap();
        let wg = gate_matrix(&w, d, f, r).unwrap();
        let c = input_moment(x.view()).unwrap();
        let want = leading_eigenvectors(&wg.dot(&c).dot(&wg.t()), r);
        let (p, q) = (v.dot(&v.t()), want.dot(&want.t()));
        for (a, b) in p.iter().zip(&q) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn a_dead_input_channel_still_factors() {
        let mut x = inputs(500, 8);
        x.column_mut(3).fill(0.0);
        let w = sieve_kernels::testdata::values(10 * 8, 4);
        assert!(fit_gate_regression(x.view(), &w, 10, 3).is_ok());
        let zeros = Array2::<f32>::zeros((50, 8));
        assert!(matches!(fit_gate_regression(zeros.view(), &w, 10, 3), Err(PredictorError::TooLittleData(_))));
    }
}
