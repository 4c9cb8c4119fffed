//! Calibration profiles: per-layer quantiles of every tapped activation's magnitude,
//! measured on calibration text, from which any method's thresholds at any target follow.
//! Versioned and tied to the model file's SHA-256; a profile for another model is refused.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{EngineError, Result};
use crate::sparsity::{Method, SparsityPlan, Tap, check_target};

/// Format version written by this build.
pub const PROFILE_VERSION: u32 = 1;
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
    /// Loads and validates a profile for the model with `model_sha256` and `layers` layers.
    pub fn load(path: &Path, model_sha256: &str, layers: usize) -> Result<Self> {
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

    /// Thresholds of `method` at target sparsity `s` for every layer.
    pub fn plan(&self, method: Method, s: f32) -> Result<SparsityPlan> {
        check_target(s)?;
        let mut plan = SparsityPlan::dense(self.quantiles.len());
        plan.method = method;
        plan.target = s;
        if s == 0.0 {
            return Ok(plan);
        }
        for (l, t) in plan.thresholds.iter_mut().enumerate() {
            for &tap in method.taps() {
                t[tap.index()] = self.threshold(l, tap, s);
            }
        }
        Ok(plan)
    }
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
    /// The profile of what was observed.
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        let mut c = Calibrator::new(2);
        let x: Vec<f32> = (1..=1000).map(|i| i as f32 / 1000.0).collect();
        for l in 0..2 {
            for tap in Tap::ALL {
                c.observe(l, tap, &x);
            }
        }
        c.finish("abc".into(), "m".into(), "test".into(), 1000)
    }

    #[test]
    fn thresholds_hit_the_target_within_bin_resolution() {
        let p = profile();
        for s in [0.25f32, 0.5, 0.9] {
            let t = p.threshold(1, Tap::MlpIn, s);
            assert!((t - s).abs() < 0.01, "s {s}: t {t}");
        }
        let plan = p.plan(Method::Cats, 0.5).unwrap();
        assert!(plan.threshold(0, Tap::GateAct).unwrap() > 0.49);
        assert_eq!(plan.threshold(0, Tap::MlpIn), None);
        assert!(p.plan(Method::Cats, 1.0).is_err());
    }

    #[test]
    fn load_validates() {
        let dir = std::env::temp_dir().join(format!("sieve-profile-test-{}", std::process::id()));
        let path = dir.join("p.json");
        let p = profile();
        p.save(&path).unwrap();
        assert_eq!(Profile::load(&path, "abc", 2).unwrap(), p);
        let other = Profile::load(&path, "def", 2).unwrap_err().to_string();
        assert!(other.contains("another model"), "{other}");
        assert!(Profile::load(&path, "abc", 3).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() / 2]).unwrap();
        assert!(Profile::load(&path, "abc", 2).unwrap_err().to_string().contains("corrupt or truncated"));
        let missing = Profile::load(&dir.join("none.json"), "abc", 2).unwrap_err().to_string();
        assert!(missing.contains("sieve calibrate"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
