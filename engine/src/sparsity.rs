//! Activation-sparsity methods on the accuracy path: which activations a method zeroes, per
//! layer, and how sparse each tap actually ran.
//!
//! TEAL zeroes entries with |x| <= t on the inputs of the projections (four taps per block);
//! CATS zeroes MLP neurons with |silu(g)| <= t. Zeroed inputs give the same result a sparse
//! kernel gives by skipping them, so these numbers are the methods' quality.

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};

/// A tapped activation of a block.
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

/// A sparsity method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// No sparsity.
    Dense,
    /// TEAL with the same target on all four inputs of every layer.
    TealUniform,
    /// CATS: MLP neurons by gate threshold.
    Cats,
}

impl std::str::FromStr for Method {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "dense" => Ok(Method::Dense),
            "teal-uniform" => Ok(Method::TealUniform),
            "cats" => Ok(Method::Cats),
            _ => Err(EngineError::InvalidInput(format!("unknown method '{s}' (available: dense, teal-uniform, cats)"))),
        }
    }
}

impl Method {
    /// The method's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Dense => "dense",
            Method::TealUniform => "teal-uniform",
            Method::Cats => "cats",
        }
    }
    /// Taps the method thresholds.
    pub fn taps(self) -> &'static [Tap] {
        match self {
            Method::Dense => &[],
            Method::TealUniform => &[Tap::AttnIn, Tap::AttnOut, Tap::MlpIn, Tap::DownIn],
            Method::Cats => &[Tap::GateAct],
        }
    }
}

/// Checks a target sparsity.
pub fn check_target(s: f32) -> Result<()> {
    if !(0.0..1.0).contains(&s) {
        return Err(EngineError::InvalidInput(format!("sparsity {s} must be in [0, 1)")));
    }
    Ok(())
}

/// Thresholds of one method at one target: `thresholds[layer][tap]` (0 = keep everything).
#[derive(Debug, Clone, PartialEq)]
pub struct SparsityPlan {
    pub method: Method,
    pub target: f32,
    pub thresholds: Vec<[f32; Tap::ALL.len()]>,
}

impl SparsityPlan {
    /// The plan of the dense model.
    pub fn dense(layers: usize) -> Self {
        Self { method: Method::Dense, target: 0.0, thresholds: vec![[0.0; Tap::ALL.len()]; layers] }
    }
    /// Threshold of `tap` in `layer`, if the method sparsifies it.
    pub fn threshold(&self, layer: usize, tap: Tap) -> Option<f32> {
        if self.method.taps().contains(&tap) { self.thresholds.get(layer).map(|t| t[tap.index()]) } else { None }
    }
}

/// Counts of zeroed and total entries per (layer, tap).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SparsityStats {
    zeroed: Vec<[u64; Tap::ALL.len()]>,
    total: Vec<[u64; Tap::ALL.len()]>,
}

impl SparsityStats {
    /// Empty counters for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self { zeroed: vec![[0; 5]; layers], total: vec![[0; 5]; layers] }
    }
    pub(crate) fn add(&mut self, layer: usize, tap: Tap, zeroed: usize, total: usize) {
        if let (Some(z), Some(t)) = (self.zeroed.get_mut(layer), self.total.get_mut(layer)) {
            z[tap.index()] += zeroed as u64;
            t[tap.index()] += total as u64;
        }
    }
    /// Fraction of `tap` entries zeroed in `layer`.
    pub fn layer(&self, layer: usize, tap: Tap) -> f64 {
        let (z, t) = (self.zeroed[layer][tap.index()], self.total[layer][tap.index()]);
        if t == 0 { 0.0 } else { z as f64 / t as f64 }
    }
    /// Fraction of `tap` entries zeroed over all layers.
    pub fn overall(&self, tap: Tap) -> f64 {
        let z: u64 = self.zeroed.iter().map(|z| z[tap.index()]).sum();
        let t: u64 = self.total.iter().map(|t| t[tap.index()]).sum();
        if t == 0 { 0.0 } else { z as f64 / t as f64 }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_parse_and_targets_are_checked() {
        assert_eq!("cats".parse::<Method>().unwrap(), Method::Cats);
        assert!("teal-greedy".parse::<Method>().is_err());
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
}
