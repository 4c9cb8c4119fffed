//! Activation-sparsity methods: which activations a method drops, per layer and projection,
//! and how sparse each projection actually ran.
//!
//! TEAL zeroes entries with |x| <= t on the inputs of the seven projections (one threshold
//! per projection: the greedy allocation gives q, k and v different thresholds on the same
//! input); CATS drops MLP neurons with |silu(g)| <= t; the CETT oracle keeps, per token, the
//! neurons of largest |h_i|·||Wd[:,i]||; the predictor methods let a trained predictor pick
//! the neurons (and CATS confirm them, for predictor-verify). Zeroed inputs give the same result a sparse kernel
//! gives by skipping them, so the accuracy path measures the methods' quality exactly.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sieve_predictor::PredictorSet;

use crate::error::{EngineError, Result};

/// A tapped activation of a block (what calibration observes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tap {
    /// Attention input (after RMSNorm): q, k, v read it.
    AttnIn,
    /// Attention output: o reads it.
    AttnOut,
    /// MLP input (after RMSNorm): gate and up read it.
    MlpIn,
    /// Down-projection input h = silu(g) * u.
    DownIn,
    /// The gate activation silu(g) (CATS's criterion).
    GateAct,
}

impl Tap {
    /// Every tap, in block order.
    pub const ALL: [Tap; 5] = [Tap::AttnIn, Tap::AttnOut, Tap::MlpIn, Tap::DownIn, Tap::GateAct];

    /// Position in [`Tap::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One of the seven weight matrices of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    /// Every projection, in block order.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// Position in [`Proj::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
    /// The activation this projection reads.
    pub fn input(self) -> Tap {
        match self {
            Proj::Q | Proj::K | Proj::V => Tap::AttnIn,
            Proj::O => Tap::AttnOut,
            Proj::Gate | Proj::Up => Tap::MlpIn,
            Proj::Down => Tap::DownIn,
        }
    }
    /// Short name (`q`, `gate`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q",
            Proj::K => "k",
            Proj::V => "v",
            Proj::O => "o",
            Proj::Gate => "gate",
            Proj::Up => "up",
            Proj::Down => "down",
        }
    }
}

/// A sparsity method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// No sparsity.
    Dense,
    /// TEAL with the calibrated greedy per-projection allocation.
    Teal,
    /// TEAL with the same target on the input of every projection (the paper's baseline).
    TealUniform,
    /// CATS: MLP neurons by gate threshold.
    Cats,
    /// Oracle: per token, the MLP neurons of largest |h_i|·||Wd[:,i]||, computed densely.
    Cett,
    /// A trained predictor picks the MLP neurons (its threshold set for the target sparsity);
    /// only their gate, up and down weights are read.
    Predictor,
    /// The predictor proposes (its trained recall rule), the exact gate of the proposed rows
    /// is computed and CATS's threshold confirms; up and down run on the confirmed rows.
    PredictorVerify,
}

/// Every method, in the order reports list them.
pub const METHODS: [Method; 7] = [
    Method::Dense,
    Method::Teal,
    Method::TealUniform,
    Method::Cats,
    Method::Cett,
    Method::Predictor,
    Method::PredictorVerify,
];

impl std::str::FromStr for Method {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        METHODS.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = METHODS.iter().map(|m| m.name()).collect();
            EngineError::InvalidInput(format!("unknown method '{s}' (available: {})", names.join(", ")))
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Method {
    /// The method's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Dense => "dense",
            Method::Teal => "teal",
            Method::TealUniform => "teal-uniform",
            Method::Cats => "cats",
            Method::Cett => "cett",
            Method::Predictor => "predictor",
            Method::PredictorVerify => "predictor-verify",
        }
    }
    /// Whether the method sparsifies the MLP only (its sparsity counts MLP neurons).
    pub fn mlp_only(self) -> bool {
        matches!(self, Method::Cats | Method::Cett | Method::Predictor | Method::PredictorVerify)
    }
    /// Whether the method needs a trained predictor set.
    pub fn needs_predictors(self) -> bool {
        matches!(self, Method::Predictor | Method::PredictorVerify)
    }
}

/// Checks a target sparsity.
pub fn check_target(s: f32) -> Result<()> {
    if !(0.0..1.0).contains(&s) {
        return Err(EngineError::InvalidInput(format!("sparsity {s} must be in [0, 1)")));
    }
    Ok(())
}

/// What a method drops in one layer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LayerPlan {
    /// Input threshold of each projection (|x| <= t is zeroed; 0 keeps everything).
    pub proj: [f32; 7],
    /// CATS threshold on |silu(g)| (0: off).
    pub gate_act: f32,
    /// CETT: neurons kept per token (0: off).
    pub cett_keep: usize,
    /// CETT: ||Wd[:, i]|| of every neuron (empty unless CETT).
    pub down_col_norms: Vec<f32>,
    /// Predictor: neurons scoring above this are kept.
    pub predict_threshold: f32,
    /// Predictor-verify at a target other than its label's sparsity: neurons scoring above
    /// this are proposed (`None`: the trained rule proposes).
    pub propose_threshold: Option<f32>,
}

/// A method at one target: what it drops in every layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SparsityPlan {
    pub method: Method,
    pub target: f32,
    pub layers: Vec<LayerPlan>,
    /// The trained predictors of the predictor methods.
    pub predictors: Option<Predictors>,
    /// With a lookahead predictor set, on sparse decode: propose the next layer's neurons
    /// while this layer's MLP runs, on whichever core is free (else just before its MLP).
    pub lookahead_overlap: bool,
}

/// A shared, loaded predictor set; plans holding the same set compare equal.
#[derive(Debug, Clone)]
pub struct Predictors(pub Arc<PredictorSet>);

impl PartialEq for Predictors {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl SparsityPlan {
    /// The plan of the dense model.
    pub fn dense(layers: usize) -> Self {
        Self {
            method: Method::Dense,
            target: 0.0,
            layers: vec![LayerPlan::default(); layers],
            predictors: None,
            lookahead_overlap: true,
        }
    }
    /// Whether the plan drops nothing.
    pub fn is_dense(&self) -> bool {
        self.method == Method::Dense || self.target == 0.0
    }
}

/// Counts of zeroed and total entries per (layer, projection input); for CATS and CETT the
/// up and down entries count MLP neurons skipped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SparsityStats {
    zeroed: Vec<[u64; 7]>,
    total: Vec<[u64; 7]>,
}

impl SparsityStats {
    /// Empty counters for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self { zeroed: vec![[0; 7]; layers], total: vec![[0; 7]; layers] }
    }
    /// Records that `zeroed` of `total` inputs of `proj` in `layer` were dropped.
    pub fn add(&mut self, layer: usize, proj: Proj, zeroed: usize, total: usize) {
        if let (Some(z), Some(t)) = (self.zeroed.get_mut(layer), self.total.get_mut(layer)) {
            z[proj.index()] += zeroed as u64;
            t[proj.index()] += total as u64;
        }
    }
    /// Fraction of `proj`'s inputs dropped in `layer`.
    pub fn layer(&self, layer: usize, proj: Proj) -> f64 {
        let (z, t) = (self.zeroed[layer][proj.index()], self.total[layer][proj.index()]);
        if t == 0 { 0.0 } else { z as f64 / t as f64 }
    }
    /// Fraction of `proj`'s inputs dropped over all layers.
    pub fn overall(&self, proj: Proj) -> f64 {
        let z: u64 = self.zeroed.iter().map(|z| z[proj.index()]).sum();
        let t: u64 = self.total.iter().map(|t| t[proj.index()]).sum();
        if t == 0 { 0.0 } else { z as f64 / t as f64 }
    }
    /// The method's headline sparsity: MLP neurons skipped for CATS and CETT; for TEAL the
    /// fraction of weights not read, each projection weighted by its parameter count.
    pub fn achieved(&self, method: Method, params: &[usize; 7]) -> f64 {
        if method.mlp_only() {
            return self.overall(Proj::Down);
        }
        let total: usize = params.iter().sum();
        if total == 0 {
            return 0.0;
        }
        Proj::ALL.iter().map(|&p| self.overall(p) * params[p.index()] as f64).sum::<f64>() / total as f64
    }
    /// Layers counted.
    pub fn layers(&self) -> usize {
        self.total.len()
    }
}

/// Zeroes entries with |x| <= t; returns how many it zeroed.
pub(crate) fn zero_below(x: &mut [f32], t: f32) -> usize {
    let mut n = 0;
    for v in x.iter_mut() {
        if v.abs() <= t {
            *v = 0.0;
            n += 1;
        }
    }
    n
}

/// Fills `idx` with every index of `row` such that `idx[..keep]` are the `keep` entries of
/// largest |row_i|·norms_i (CETT's importance), in no particular order.
pub(crate) fn rank_by_importance(row: &[f32], norms: &[f32], keep: usize, idx: &mut Vec<u32>) {
    idx.clear();
    idx.extend(0..row.len() as u32);
    let score = |i: u32| row[i as usize].abs() * norms[i as usize];
    if keep > 0 && keep < row.len() {
        idx.select_nth_unstable_by(keep - 1, |&a, &b| score(b).total_cmp(&score(a)));
    }
}

/// Keeps the `keep` entries of each `width`-row with the largest |x_i|·norms_i, zeroes the
/// rest; returns how many it zeroed.
pub(crate) fn keep_top_importance(
    x: &mut [f32],
    width: usize,
    norms: &[f32],
    keep: usize,
    idx: &mut Vec<u32>,
) -> usize {
    if keep >= width || norms.len() != width {
        return 0;
    }
    let mut zeroed = 0;
    for row in x.chunks_exact_mut(width) {
        rank_by_importance(row, norms, keep, idx);
        for &i in &idx[keep..] {
            row[i as usize] = 0.0;
        }
        zeroed += width - keep;
    }
    zeroed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_targets_are_checked() {
        assert_eq!("cats".parse::<Method>().unwrap(), Method::Cats);
        assert_eq!("teal".parse::<Method>().unwrap(), Method::Teal);
        assert_eq!("cett".parse::<Method>().unwrap(), Method::Cett);
        let e = "teal-greedy".parse::<Method>().unwrap_err().to_string();
        assert!(e.contains("unknown method 'teal-greedy'") && e.contains("teal-uniform"), "{e}");
        assert!(check_target(1.0).is_err());
        assert!(check_target(-0.1).is_err());
        assert!(check_target(f32::NAN).is_err());
        assert!(check_target(0.5).is_ok());
    }

    #[test]
    fn zero_below_counts() {
        let mut x = [0.1, -0.5, 0.2, 3.0];
        assert_eq!(zero_below(&mut x, 0.2), 2);
        assert_eq!(x, [0.0, -0.5, 0.0, 3.0]);
    }

    #[test]
    fn top_importance_keeps_the_largest_products() {
        let mut x = [1.0, -4.0, 2.0, 0.5, /* row 2 */ 3.0, 1.0, -1.0, 0.0];
        let norms = [1.0, 0.1, 1.0, 10.0];
        let mut idx = Vec::new();
        assert_eq!(keep_top_importance(&mut x, 4, &norms, 2, &mut idx), 4);
        // Row 1 scores 1, 0.4, 2, 5; row 2 scores 3, 0.1, 1, 0.
        assert_eq!(x, [0.0, 0.0, 2.0, 0.5, 3.0, 0.0, -1.0, 0.0]);
    }
}
