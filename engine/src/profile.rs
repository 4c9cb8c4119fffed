//! Calibration profiles: per-layer quantiles of every tapped activation's magnitude,
//! measured on calibration text, from which any method's thresholds at any target follow;
//! TEAL's greedy allocation tables; the column norms of each down projection (CETT).
//! Versioned and tied to the model file's SHA-256; a profile for another model is refused.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sieve_predictor::PredictorSet;
use sieve_predictor::store::LabelKind;

use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::sparsity::{Method, Predictors, Proj, SparsityPlan, Tap, check_target};

/// Format version written by this build.
pub const PROFILE_VERSION: u32 = 2;
/// Quantile levels stored per (layer, tap): fractions k / LEVELS, k = 0..LEVELS.
pub const LEVELS: usize = 200;

/// A calibration profile.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub version: u32,
    pub model_sha256: String,
    pub model_name: String,
    /// What the statistics were measured on: `corpus:<path>` or `self-generated`.
    pub source: String,
    pub tokens: usize,
    pub created_unix: u64,
    pub sieve_version: String,
    /// `quantiles[layer][tap][k]`: the |x| below which a fraction k / LEVELS of the entries lie.
    pub quantiles: Vec<Vec<Vec<f32>>>,
    /// `greedy[layer]`: TEAL's block-wise greedy allocation, one step per row, block
    /// sparsity non-decreasing (see [`crate::greedy`]).
    pub greedy: Vec<Vec<GreedyStep>>,
    /// `down_col_norms[layer][i]`: ||Wd[:, i]||, the weight of neuron i in CETT's importance.
    pub down_col_norms: Vec<Vec<f32>>,
}

/// One step of a greedy allocation: the sparsity of each projection's input, and the block's
/// sparsity (the fraction of its weights not read).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct GreedyStep {
    pub block_sparsity: f32,
    pub levels: [f32; 7],
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|source| EngineError::Io { path: path.into(), source })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|source| EngineError::Io { path: path.into(), source })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Where `sieve calibrate` writes the profile of `model` by default.
pub fn default_profile_path(model: &Path) -> PathBuf {
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    crate::paths::cache_dir().join("profiles").join(stem).join("profile.json")
}

fn bad(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::InvalidInput(format!("profile {}: {}", path.display(), reason.into()))
}

impl Profile {
    /// Loads and validates a profile for the model with `model_sha256` and configuration `cfg`.
    pub fn load(path: &Path, model_sha256: &str, cfg: &Config) -> Result<Self> {
        let layers = cfg.n_layers;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad(path, "not found; make it with `sieve calibrate`"));
            }
            Err(source) => return Err(EngineError::Io { path: path.into(), source }),
        };
        let p: Profile = serde_json::from_str(&text).map_err(|e| bad(path, format!("corrupt or truncated: {e}")))?;
        if p.version != PROFILE_VERSION {
            return Err(bad(
                path,
                format!("version {} (this build reads {PROFILE_VERSION}); run `sieve calibrate` again", p.version),
            ));
        }
        if p.model_sha256 != model_sha256 {
            return Err(bad(
                path,
                format!("made for another model (sha256 {}), not this one ({model_sha256})", p.model_sha256),
            ));
        }
        if p.quantiles.len() != layers {
            return Err(bad(path, format!("{} layers, the model has {layers}", p.quantiles.len())));
        }
        for (l, taps) in p.quantiles.iter().enumerate() {
            if taps.len() != Tap::ALL.len() {
                return Err(bad(path, format!("layer {l}: {} taps, expected {}", taps.len(), Tap::ALL.len())));
            }
            for q in taps {
                let ok = q.len() == LEVELS + 1
                    && q.iter().all(|v| v.is_finite() && *v >= 0.0)
                    && q.windows(2).all(|w| w[0] <= w[1]);
                if !ok {
                    return Err(bad(
                        path,
                        format!(
                            "layer {l}: quantiles must be {} finite, non-negative, non-decreasing values",
                            LEVELS + 1
                        ),
                    ));
                }
            }
        }
        if p.greedy.len() != layers || p.down_col_norms.len() != layers {
            return Err(bad(path, format!("greedy tables or column norms are not given for all {layers} layers")));
        }
        for (l, steps) in p.greedy.iter().enumerate() {
            let ok = !steps.is_empty()
                && steps
                    .iter()
                    .all(|s| s.block_sparsity.is_finite() && s.levels.iter().all(|v| (0.0..1.0).contains(v)))
                && steps.windows(2).all(|w| w[0].block_sparsity <= w[1].block_sparsity);
            if !ok {
                return Err(bad(path, format!("layer {l}: greedy table is empty, out of range or not ordered")));
            }
        }
        for (l, norms) in p.down_col_norms.iter().enumerate() {
            if norms.len() != cfg.d_ff || !norms.iter().all(|v| v.is_finite() && *v >= 0.0) {
                return Err(bad(path, format!("layer {l}: expected {} finite down-column norms", cfg.d_ff)));
            }
        }
        Ok(p)
    }

    /// Writes the profile as JSON (creating the directory).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| EngineError::Io { path: dir.into(), source })?;
        }
        let text = serde_json::to_string(self).map_err(|e| EngineError::InvalidInput(e.to_string()))?;
        std::fs::write(path, text).map_err(|source| EngineError::Io { path: path.into(), source })
    }

    /// The |x| threshold zeroing a fraction `s` of `tap` in `layer` (linear between levels).
    pub fn threshold(&self, layer: usize, tap: Tap, s: f32) -> f32 {
        let q = &self.quantiles[layer][tap.index()];
        let pos = (s.clamp(0.0, 1.0) * LEVELS as f32).min(LEVELS as f32);
        let k = (pos.floor() as usize).min(LEVELS - 1);
        let f = pos - k as f32;
        q[k] + (q[k + 1] - q[k]) * f
    }

    /// What `method` drops at target sparsity `s` in every layer (the predictor methods
    /// need [`Profile::plan_with_predictors`]).
    pub fn plan(&self, method: Method, s: f32) -> Result<SparsityPlan> {
        self.plan_with_predictors(method, s, None)
    }

    /// [`Profile::plan`], with the predictor set the predictor methods read.
    pub fn plan_with_predictors(
        &self,
        method: Method,
        s: f32,
        predictors: Option<Arc<PredictorSet>>,
    ) -> Result<SparsityPlan> {
        check_target(s)?;
        if method.needs_predictors() {
            let Some(set) = predictors.as_ref() else {
                return Err(EngineError::InvalidInput(format!(
                    "{method} needs trained predictors: run `sieve train-predictors` first"
                )));
            };
            if set.layers.len() != self.quantiles.len() || set.manifest.model_sha256 != self.model_sha256 {
                return Err(EngineError::InvalidInput(
                    "the predictor set was made for another model than this profile".into(),
                ));
            }
        }
        let mut plan = SparsityPlan::dense(self.quantiles.len());
        plan.method = method;
        plan.target = s;
        plan.predictors = predictors.filter(|_| method.needs_predictors()).map(Predictors);
        if s == 0.0 {
            return Ok(plan);
        }
        for (l, lp) in plan.layers.iter_mut().enumerate() {
            match method {
                Method::Dense => {}
                Method::TealUniform => {
                    for p in Proj::ALL {
                        lp.proj[p.index()] = self.threshold(l, p.input(), s);
                    }
                }
                Method::Teal => {
                    let levels = self.greedy_levels(l, s);
                    for p in Proj::ALL {
                        lp.proj[p.index()] = self.threshold(l, p.input(), levels[p.index()]);
                    }
                }
                Method::Cats => lp.gate_act = self.threshold(l, Tap::GateAct, s),
                // The proposal is confirmed by the rule of the label the predictor learnt.
                Method::PredictorVerify => {
                    lp.propose_threshold = plan.predictors.as_ref().and_then(|set| {
                        let p = set.0.layers.get(l)?;
                        verify_proposal(p, set.0.manifest.label_sparsity, s)
                    });
                    match plan.predictors.as_ref().map(|p| p.0.manifest.label) {
                        Some(LabelKind::Teal) => lp.proj[Proj::Down.index()] = self.threshold(l, Tap::DownIn, s),
                        Some(LabelKind::Cett) => {
                            let width = self.down_col_norms[l].len();
                            lp.cett_keep = ((1.0 - s as f64) * width as f64).round() as usize;
                            lp.down_col_norms = self.down_col_norms[l].clone();
                        }
                        _ => lp.gate_act = self.threshold(l, Tap::GateAct, s),
                    }
                }
                Method::Predictor => {
                    let p = plan.predictors.as_ref().and_then(|set| set.0.layers.get(l));
                    lp.predict_threshold = p.and_then(|p| p.threshold_at_sparsity(s)).ok_or_else(|| {
                        EngineError::InvalidInput(format!("the predictor of layer {l} has no score percentiles"))
                    })?;
                }
                Method::Cett => {
                    let width = self.down_col_norms[l].len();
                    lp.cett_keep = ((1.0 - s as f64) * width as f64).round() as usize;
                    lp.down_col_norms = self.down_col_norms[l].clone();
                }
            }
        }
        Ok(plan)
    }

    /// The greedy allocation of `layer` for block sparsity `s`: the first step that reaches
    /// it (the last step if none does).
    pub fn greedy_levels(&self, layer: usize, s: f32) -> [f32; 7] {
        let steps = &self.greedy[layer];
        steps.iter().find(|st| st.block_sparsity >= s - 1e-4).or(steps.last()).map_or([s; 7], |st| st.levels)
    }
}

/// Predictor-verify's proposal threshold at target `s` for a predictor trained on labels at
/// `label_sparsity`: `None` at the label's own sparsity (the trained rule, set for its target
/// recall, proposes). Elsewhere the trained rule would still propose about half of the neurons
/// however many CATS keeps, so the proposal no longer holds what the confirming rule wants; it
/// is sized instead to keep the rule's ratio of predicted to label sparsity at this target,
/// the slack that gave the rule its recall.
fn verify_proposal(p: &sieve_predictor::LayerPredictor, label_sparsity: f32, s: f32) -> Option<f32> {
    let (label, rule) = (p.quality.label_sparsity, p.quality.predicted_sparsity);
    if (s - label_sparsity).abs() < 1e-6 || label <= 0.0 {
        return None;
    }
    p.threshold_at_sparsity((s as f64 * rule / label).clamp(0.0, 1.0) as f32)
}

/// Magnitude histogram binned by the top 16 bits of the f32 (sign dropped): 8 exponent and
/// 7 mantissa bits, so bins are 2^-7 (0.8%) wide in relative terms over the whole f32 range,
/// and binning is a shift, not a logarithm.
#[derive(Debug, Clone)]
struct MagHist {
    bins: Vec<u64>,
}

const BINS: usize = 1 << 15;

impl MagHist {
    fn new() -> Self {
        Self { bins: vec![0; BINS] }
    }
    fn add(&mut self, x: &[f32]) {
        for v in x {
            let b = (v.abs().to_bits() >> 16) as usize;
            // NaN and infinities land in the top bins, exact zeros in bin 0.
            self.bins[b.min(BINS - 1)] += 1;
        }
    }
    /// Upper edges at each level k / LEVELS (0 when the level falls among exact zeros).
    fn quantiles(&self) -> Vec<f32> {
        let total: u64 = self.bins.iter().sum();
        let edge = |b: usize| if b == 0 { 0.0 } else { f32::from_bits(((b as u32) + 1) << 16) };
        let mut out = Vec::with_capacity(LEVELS + 1);
        let (mut acc, mut b) = (0u64, 0usize);
        for k in 0..=LEVELS {
            let want = (k as f64 / LEVELS as f64 * total as f64).ceil() as u64;
            if k == 0 || want == 0 {
                out.push(0.0);
                continue;
            }
            while b < BINS && acc + self.bins[b] < want {
                acc += self.bins[b];
                b += 1;
            }
            let e = edge(b.min(BINS - 1));
            out.push(if e.is_finite() { e } else { f32::MAX });
        }
        out
    }
}

/// Accumulates tapped activations into histograms; [`Calibrator::finish`] makes a profile.
#[derive(Debug, Clone)]
pub struct Calibrator {
    hist: Vec<Vec<MagHist>>,
}

impl Calibrator {
    /// Empty histograms for `layers` layers.
    pub fn new(layers: usize) -> Self {
        Self { hist: (0..layers).map(|_| Tap::ALL.iter().map(|_| MagHist::new()).collect()).collect() }
    }
    /// Adds the activations seen at (`layer`, `tap`).
    pub fn observe(&mut self, layer: usize, tap: Tap, x: &[f32]) {
        if let Some(h) = self.hist.get_mut(layer) {
            h[tap.index()].add(x);
        }
    }
    /// The profile of what was observed, with the greedy tables and column norms computed
    /// elsewhere (empty here).
    pub fn finish(&self, model_sha256: String, model_name: String, source: String, tokens: usize) -> Profile {
        Profile {
            version: PROFILE_VERSION,
            model_sha256,
            model_name,
            source,
            tokens,
            created_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            sieve_version: env!("CARGO_PKG_VERSION").into(),
            quantiles: self.hist.iter().map(|taps| taps.iter().map(MagHist::quantiles).collect()).collect(),
            greedy: Vec::new(),
            down_col_norms: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(layers: usize, d_ff: usize) -> Config {
        Config {
            name: "m".into(),
            architecture: "llama".into(),
            n_layers: layers,
            d_model: 8,
            d_ff,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            rope_dim: 4,
            rope_theta: 10000.0,
            rms_eps: 1e-5,
            context_len: 64,
            vocab_size: 10,
        }
    }

    fn profile() -> Profile {
        let mut c = Calibrator::new(2);
        let x: Vec<f32> = (1..=1000).map(|i| i as f32 / 1000.0).collect();
        for l in 0..2 {
            for tap in Tap::ALL {
                c.observe(l, tap, &x);
            }
        }
        let mut p = c.finish("abc".into(), "m".into(), "test".into(), 1000);
        let step = |b: f32, v: f32| GreedyStep { block_sparsity: b, levels: [v, v, v, v, 0.0, 0.0, v] };
        p.greedy = vec![vec![step(0.0, 0.0), step(0.3, 0.4), step(0.6, 0.8)]; 2];
        p.down_col_norms = vec![vec![1.0, 2.0, 3.0, 4.0]; 2];
        p
    }

    #[test]
    fn plans_follow_the_profile() {
        let p = profile();
        for s in [0.25f32, 0.5, 0.9] {
            let t = p.threshold(1, Tap::MlpIn, s);
            assert!((t - s).abs() < 0.01, "s {s}: t {t}");
        }
        let cats = p.plan(Method::Cats, 0.5).unwrap();
        assert!(cats.layers[0].gate_act > 0.49 && cats.layers[0].proj == [0.0; 7]);
        let uniform = p.plan(Method::TealUniform, 0.5).unwrap();
        assert!(uniform.layers[1].proj.iter().all(|&t| (t - 0.5).abs() < 0.01));
        // Greedy: block sparsity 0.5 is first reached at the step with levels 0.8 (gate/up 0).
        let teal = p.plan(Method::Teal, 0.5).unwrap();
        assert!((teal.layers[0].proj[Proj::Q.index()] - 0.8).abs() < 0.01);
        assert_eq!(teal.layers[0].proj[Proj::Gate.index()], 0.0);
        let cett = p.plan(Method::Cett, 0.5).unwrap();
        assert_eq!(cett.layers[1].cett_keep, 2);
        assert_eq!(cett.layers[1].down_col_norms, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(p.plan(Method::Cats, 1.0).is_err());
    }

    #[test]
    fn load_validates() {
        let dir = std::env::temp_dir().join(format!("sieve-profile-test-{}", std::process::id()));
        let path = dir.join("p.json");
        let p = profile();
        p.save(&path).unwrap();
        assert_eq!(Profile::load(&path, "abc", &config(2, 4)).unwrap(), p);
        let other = Profile::load(&path, "def", &config(2, 4)).unwrap_err().to_string();
        assert!(other.contains("another model"), "{other}");
        assert!(Profile::load(&path, "abc", &config(3, 4)).is_err());
        assert!(Profile::load(&path, "abc", &config(2, 5)).unwrap_err().to_string().contains("down-column norms"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert!(Profile::load(&path, "abc", &config(2, 4)).unwrap_err().to_string().contains("corrupt or truncated"));
        let missing = Profile::load(&dir.join("none.json"), "abc", &config(2, 4)).unwrap_err().to_string();
        assert!(missing.contains("sieve calibrate"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
