//! The on-disk predictor set: `predictors.json` (what was trained, on what, and per layer
//! the rule and its validation quality) beside `predictors.safetensors` (the weights), tied
//! to the model by its SHA-256 and shape. Loading checks all of it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{PredictorError, Result};
use crate::model::{Body, Family, LayerPredictor, Output};
use crate::rule::{Quality, Rule};

/// Format version of the pair of files.
pub const PREDICTOR_VERSION: u32 = 1;
/// File names inside a predictor directory.
pub const MANIFEST_FILE: &str = "predictors.json";
pub const WEIGHTS_FILE: &str = "predictors.safetensors";

/// Which activation a predictor reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tap {
    /// This layer's MLP input.
    MlpInput,
    /// The previous layer's MLP input (layer 0 reads its own): known one layer early.
    Lookahead,
}

impl Tap {
    pub const ALL: [Tap; 2] = [Tap::MlpInput, Tap::Lookahead];
    pub fn name(self) -> &'static str {
        match self {
            Tap::MlpInput => "mlp-input",
            Tap::Lookahead => "lookahead",
        }
    }
    /// The layer whose MLP input layer `l`'s predictor reads.
    pub fn source_layer(self, l: usize) -> usize {
        match self {
            Tap::MlpInput => l,
            Tap::Lookahead => l.saturating_sub(1),
        }
    }
}

impl std::str::FromStr for Tap {
    type Err = PredictorError;
    fn from_str(s: &str) -> Result<Self> {
        Tap::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| PredictorError::InvalidOption(format!("unknown tap {s:?} (mlp-input, lookahead)")))
    }
}

/// Which neurons count as mattering (the training label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelKind {
    /// |silu(g)| above CATS's threshold for the target sparsity.
    Cats,
    /// |h| above TEAL's down-input threshold for the target sparsity.
    Teal,
    /// The top (1 - s) f neurons by |h_i| ||Wd[:, i]|| (CETT's importance).
    Cett,
}

impl LabelKind {
    pub const ALL: [LabelKind; 3] = [LabelKind::Cats, LabelKind::Teal, LabelKind::Cett];
    pub fn name(self) -> &'static str {
        match self {
            LabelKind::Cats => "cats",
            LabelKind::Teal => "teal",
            LabelKind::Cett => "cett",
        }
    }
}

impl std::str::FromStr for LabelKind {
    type Err = PredictorError;
    fn from_str(s: &str) -> Result<Self> {
        LabelKind::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| PredictorError::InvalidOption(format!("unknown label {s:?} (cats, teal, cett)")))
    }
}

/// One layer's entry in the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerEntry {
    pub output: Output,
    pub rule: Rule,
    /// Measured on validation tokens.
    pub quality: Quality,
    /// Bytes the decode path reads.
    pub bytes: usize,
    /// Bytes packed at the family's precision.
    pub packed_bytes: usize,
    /// Percentiles of the validation scores (see [`LayerPredictor::score_quantiles`]).
    pub score_quantiles: Vec<f32>,
    /// Recall and precision against the label at predicted sparsities 0.1 ... 0.9 (validation).
    #[serde(default)]
    pub curve: Vec<crate::rule::CurvePoint>,
    /// The same curve for the truncated SVD of W_gate at the same rank (low-rank families).
    #[serde(default)]
    pub svd_curve: Vec<crate::rule::CurvePoint>,
}

/// `predictors.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub model_sha256: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub family: Family,
    pub rank: Option<usize>,
    pub bits: Option<u8>,
    pub relu: bool,
    pub tap: Tap,
    pub label: LabelKind,
    /// Target sparsity the labels were made at.
    pub label_sparsity: f32,
    /// The recall each layer's threshold was set to reach on validation tokens.
    pub target_recall: Option<f64>,
    pub train_tokens: usize,
    pub validation_tokens: usize,
    pub train_seconds: f64,
    pub layers: Vec<LayerEntry>,
}

/// A predictor per layer and its manifest.
#[derive(Debug, Clone)]
pub struct PredictorSet {
    pub manifest: Manifest,
    pub layers: Vec<LayerPredictor>,
}

fn file_err(path: &Path, reason: impl Into<String>) -> PredictorError {
    PredictorError::File { path: path.display().to_string(), reason: reason.into() }
}

impl PredictorSet {
    /// Rebuilds the manifest's layer entries from the predictors (rule, quality, bytes,
    /// score percentiles), keeping the curves already there.
    pub fn refresh_entries(&mut self) {
        let before = std::mem::take(&mut self.manifest.layers);
        for (l, p) in self.layers.iter().enumerate() {
            let old = before.get(l);
            self.manifest.layers.push(LayerEntry {
                output: p.output,
                rule: p.rule,
                quality: p.quality,
                bytes: p.bytes(),
                packed_bytes: p.packed_bytes(),
                score_quantiles: p.score_quantiles.clone(),
                curve: old.map(|e| e.curve.clone()).unwrap_or_default(),
                svd_curve: old.map(|e| e.svd_curve.clone()).unwrap_or_default(),
            });
        }
    }

    /// Writes both files into `dir` (created if needed), entries refreshed first.
    pub fn save(&mut self, dir: &Path) -> Result<()> {
        self.refresh_entries();
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))?;
        let dev = Device::Cpu;
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (l, p) in self.layers.iter().enumerate() {
            let (d, f) = (p.d(), p.f());
            match &p.body {
                Body::LowRank { rank, w1, w2, b2, .. } => {
                    tensors.insert(format!("layer.{l}.w1"), Tensor::from_slice(w1, (*rank, d), &dev)?);
                    tensors.insert(format!("layer.{l}.w2"), Tensor::from_slice(w2, (f, *rank), &dev)?);
                    tensors.insert(format!("layer.{l}.b2"), Tensor::from_slice(b2, f, &dev)?);
                }
                Body::LowBit { w, .. } => {
                    tensors.insert(format!("layer.{l}.w"), Tensor::from_slice(w, (f, d), &dev)?);
                }
            }
            if !p.neuron_scale.is_empty() {
                tensors.insert(format!("layer.{l}.scale"), Tensor::from_slice(&p.neuron_scale, f, &dev)?);
            }
        }
        let weights = dir.join(WEIGHTS_FILE);
        candle_core::safetensors::save(&tensors, &weights).map_err(|e| file_err(&weights, e.to_string()))?;
        let manifest = dir.join(MANIFEST_FILE);
        let json = serde_json::to_string_pretty(&self.manifest).map_err(|e| file_err(&manifest, e.to_string()))?;
        std::fs::write(&manifest, json).map_err(|e| file_err(&manifest, e.to_string()))
    }

    /// Reads a set from `dir`, refusing one made for another model (hash) or shape.
    pub fn load(dir: &Path, model_sha256: &str, n_layers: usize, d_model: usize, d_ff: usize) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| file_err(&manifest_path, format!("{e} (make it with `sieve train-predictors`)")))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| file_err(&manifest_path, format!("corrupt or truncated manifest: {e}")))?;
        if manifest.version != PREDICTOR_VERSION {
            return Err(file_err(
                &manifest_path,
                format!(
                    "format version {} (this sieve reads {PREDICTOR_VERSION}); run `sieve train-predictors` again",
                    manifest.version
                ),
            ));
        }
        if manifest.model_sha256 != model_sha256 {
            return Err(file_err(
                &manifest_path,
                "made for another model (its SHA-256 differs); run `sieve train-predictors` for this one",
            ));
        }
        if (manifest.n_layers, manifest.d_model, manifest.d_ff) != (n_layers, d_model, d_ff)
            || manifest.layers.len() != n_layers
        {
            return Err(file_err(
                &manifest_path,
                format!(
                    "shaped for {} layers ({} entries), d={} f={}; the model has {n_layers} layers, d={d_model} f={d_ff}",
                    manifest.n_layers,
                    manifest.layers.len(),
                    manifest.d_model,
                    manifest.d_ff
                ),
            ));
        }
        let weights_path = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(|e| file_err(&weights_path, format!("unreadable, truncated or corrupt: {e}")))?;
        let get = |name: String| -> Result<Vec<f32>> {
            let t = tensors.get(&name).ok_or_else(|| file_err(&weights_path, format!("tensor {name} is missing")))?;
            let v = t.flatten_all().and_then(|t| t.to_dtype(candle_core::DType::F32)).and_then(|t| t.to_vec1::<f32>());
            v.map_err(|e| file_err(&weights_path, format!("tensor {name}: {e}")))
        };
        let mut layers = Vec::with_capacity(n_layers);
        for (l, entry) in manifest.layers.iter().enumerate() {
            let body = match manifest.family {
                Family::Lowrank | Family::LowrankG => Body::LowRank {
                    rank: manifest.rank.ok_or_else(|| file_err(&manifest_path, "a low-rank set without a rank"))?,
                    relu: manifest.relu,
                    w1: get(format!("layer.{l}.w1"))?,
                    w2: get(format!("layer.{l}.w2"))?,
                    b2: get(format!("layer.{l}.b2"))?,
                },
                Family::Lowbit => Body::LowBit {
                    bits: manifest.bits.ok_or_else(|| file_err(&manifest_path, "a low-bit set without bits"))?,
                    w: get(format!("layer.{l}.w"))?,
                },
            };
            let mut p = LayerPredictor::new(body, entry.output, entry.rule, entry.quality, d_model, d_ff)
                .map_err(|e| file_err(&weights_path, format!("layer {l}: {e}")))?;
            p.score_quantiles = entry.score_quantiles.clone();
            if tensors.contains_key(&format!("layer.{l}.scale")) {
                let scale = get(format!("layer.{l}.scale"))?;
                if scale.len() != d_ff {
                    return Err(file_err(&weights_path, format!("layer {l}: {} neuron scales", scale.len())));
                }
                p.neuron_scale = scale;
            }
            layers.push(p);
        }
        Ok(Self { manifest, layers })
    }

    /// Mean validation quality over layers.
    pub fn mean_quality(&self) -> Quality {
        let n = self.layers.len().max(1) as f64;
        let mut q = Quality::default();
        for p in &self.layers {
            q.recall += p.quality.recall / n;
            q.precision += p.quality.precision / n;
            q.predicted_sparsity += p.quality.predicted_sparsity / n;
            q.label_sparsity += p.quality.label_sparsity / n;
        }
        q
    }
}

/// Where the predictors of a profile directory live.
pub fn predictor_dir(profile_dir: &Path) -> PathBuf {
    profile_dir.join("predictors")
}
