//! Trace collection for predictor training: the dense model over a corpus, recording per
//! layer the MLP input of every token (f16) and its neuron labels under one definition
//! (CATS, TEAL or CETT at a target sparsity, bit-packed), with a manifest. A lookahead
//! predictor of layer l reads layer l-1's recorded input, so one trace serves both taps.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use half::f16;
use serde::{Deserialize, Serialize};
use sieve_predictor::Labels;
use sieve_predictor::store::LabelKind;

use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::model::{Hooks, Logits, Model};
use crate::profile::Profile;
use crate::sparsity::{Method, Tap, check_target, rank_by_importance};

/// Trace format version.
pub const TRACE_VERSION: u32 = 1;
const MANIFEST: &str = "trace.json";
const INPUTS: &str = "inputs.f16";
const LABELS: &str = "labels.bits";

/// `trace.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TraceManifest {
    pub version: u32,
    pub model_sha256: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub tokens: usize,
    pub label: LabelKind,
    pub sparsity: f32,
    /// What the trace was collected on.
    pub source: String,
}

/// Recorded inputs and labels of every layer.
#[derive(Debug, Clone)]
pub struct Trace {
    pub manifest: TraceManifest,
    /// `inputs[l]`: tokens x d_model, layer l's MLP input.
    inputs: Vec<Vec<f16>>,
    labels: Vec<Labels>,
}

impl Trace {
    /// Layer `l`'s MLP inputs as f32, tokens x d_model.
    pub fn inputs(&self, l: usize) -> Vec<f32> {
        self.inputs[l].iter().map(|v| v.to_f32()).collect()
    }

    /// Layer `l`'s labels.
    pub fn labels(&self, l: usize) -> &Labels {
        &self.labels[l]
    }

    /// Writes the three files into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |path: &Path, source: std::io::Error| EngineError::Io { path: path.into(), source };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let path = dir.join(INPUTS);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| io(&path, e))?);
        for layer in &self.inputs {
            for v in layer {
                w.write_all(&v.to_bits().to_le_bytes()).map_err(|e| io(&path, e))?;
            }
        }
        w.flush().map_err(|e| io(&path, e))?;
        let path = dir.join(LABELS);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&path).map_err(|e| io(&path, e))?);
        for layer in &self.labels {
            for word in layer.words() {
                w.write_all(&word.to_le_bytes()).map_err(|e| io(&path, e))?;
            }
        }
        w.flush().map_err(|e| io(&path, e))?;
        let path = dir.join(MANIFEST);
        let json =
            serde_json::to_string_pretty(&self.manifest).map_err(|e| EngineError::InvalidInput(e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| io(&path, e))
    }

    /// Reads a trace, refusing one of another model or shape, or with files of the wrong size.
    pub fn load(dir: &Path, model_sha256: &str, cfg: &Config) -> Result<Self> {
        let bad = |file: &str, reason: String| EngineError::Trace { path: dir.join(file), reason };
        let text = std::fs::read_to_string(dir.join(MANIFEST)).map_err(|e| bad(MANIFEST, e.to_string()))?;
        let manifest: TraceManifest =
            serde_json::from_str(&text).map_err(|e| bad(MANIFEST, format!("corrupt or truncated: {e}")))?;
        if manifest.version != TRACE_VERSION {
            return Err(bad(MANIFEST, format!("version {} (this sieve reads {TRACE_VERSION})", manifest.version)));
        }
        if manifest.model_sha256 != model_sha256 {
            return Err(bad(MANIFEST, "made for another model (its SHA-256 differs)".into()));
        }
        if (manifest.n_layers, manifest.d_model, manifest.d_ff) != (cfg.n_layers, cfg.d_model, cfg.d_ff) {
            return Err(bad(
                MANIFEST,
                format!(
                    "shaped for {} layers, d={} f={}; the model has {} layers, d={} f={}",
                    manifest.n_layers, manifest.d_model, manifest.d_ff, cfg.n_layers, cfg.d_model, cfg.d_ff
                ),
            ));
        }
        let (layers, n, d, f) = (manifest.n_layers, manifest.tokens, manifest.d_model, manifest.d_ff);
        // Read a layer at a time: a 200k-token trace is 6.9 GB of inputs, and a whole-file
        // buffer beside its decoded copy would double the peak memory.
        let layer_bytes = [n * d * 2, n * f.div_ceil(64) * 8];
        let mut files = Vec::with_capacity(2);
        for (name, per_layer) in [INPUTS, LABELS].into_iter().zip(layer_bytes) {
            let path = dir.join(name);
            let file = std::fs::File::open(&path).map_err(|e| bad(name, e.to_string()))?;
            let len = file.metadata().map_err(|e| bad(name, e.to_string()))?.len();
            if len != (layers * per_layer) as u64 {
                return Err(bad(name, format!("{len} bytes, want {} (truncated?)", layers * per_layer)));
            }
            files.push((name, std::io::BufReader::new(file), vec![0u8; per_layer]));
        }
        let (mut inputs, mut labels) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
        for _ in 0..layers {
            let (name, reader, buf) = &mut files[0];
            reader.read_exact(buf).map_err(|e| bad(name, e.to_string()))?;
            inputs.push(buf.chunks_exact(2).map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]]))).collect());
            let (name, reader, buf) = &mut files[1];
            reader.read_exact(buf).map_err(|e| bad(name, e.to_string()))?;
            let words = buf.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).collect();
            labels.push(Labels::from_words(n, f, words)?);
        }
        Ok(Self { manifest, inputs, labels })
    }
}

/// Runs the dense model over `sequences` (each from an empty cache) and records every
/// layer's MLP input and its labels under `label` at target `sparsity` (thresholds from
/// `profile`); `on_sequence` is called after each sequence.
pub fn collect_trace(
    model: &Model,
    profile: &Profile,
    sequences: &[Vec<u32>],
    label: LabelKind,
    sparsity: f32,
    source: String,
    mut on_sequence: impl FnMut(),
) -> Result<Trace> {
    check_target(sparsity)?;
    if sparsity == 0.0 {
        return Err(EngineError::InvalidInput("labels need a target sparsity above 0".into()));
    }
    let cfg = model.config();
    let (layers, d, f) = (cfg.n_layers, cfg.d_model, cfg.d_ff);
    let cats = profile.plan(Method::Cats, sparsity)?;
    let teal = profile.plan(Method::TealUniform, sparsity)?;
    let keep = ((1.0 - sparsity as f64) * f as f64).round() as usize;
    let mut inputs: Vec<Vec<f16>> = vec![Vec::new(); layers];
    let mut labels: Vec<Labels> = (0..layers).map(|_| Labels::zeros(0, f)).collect();
    let mut cache = model.new_cache();
    let mut order = Vec::new();
    let mut failed: Option<EngineError> = None;
    let mut tokens = 0;
    for seq in sequences.iter().filter(|s| !s.is_empty()) {
        cache.clear();
        let n = seq.len();
        let mut observe = |l: usize, tap: Tap, x: &[f32]| {
            let rule_tap = match label {
                LabelKind::Cats => Tap::GateAct,
                LabelKind::Teal | LabelKind::Cett => Tap::DownIn,
            };
            if tap == Tap::MlpIn {
                inputs[l].extend(x.iter().map(|&v| f16::from_f32(v)));
            } else if tap == rule_tap {
                let mut batch = Labels::zeros(n, f);
                for (t, row) in x.chunks_exact(f).enumerate() {
                    match label {
                        LabelKind::Cats => batch.set_row(t, |i| row[i].abs() > cats.layers[l].gate_act),
                        LabelKind::Teal => {
                            let th = teal.layers[l].proj[crate::sparsity::Proj::Down.index()];
                            batch.set_row(t, |i| row[i].abs() > th)
                        }
                        LabelKind::Cett => {
                            rank_by_importance(row, &profile.down_col_norms[l], keep, &mut order);
                            let mut kept = vec![false; f];
                            order.iter().take(keep).for_each(|&i| kept[i as usize] = true);
                            batch.set_row(t, |i| kept[i]);
                        }
                    }
                }
                if let Err(e) = labels[l].extend(&batch) {
                    failed.get_or_insert(e.into());
                }
            }
        };
        let mut hooks = Hooks { observe: Some(&mut observe), ..Hooks::default() };
        model.forward_with(seq, &mut cache, Logits::Last, &mut hooks)?;
        tokens += n;
        on_sequence();
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if tokens == 0 {
        return Err(EngineError::InvalidInput("no tokens to trace".into()));
    }
    let manifest = TraceManifest {
        version: TRACE_VERSION,
        model_sha256: profile.model_sha256.clone(),
        n_layers: layers,
        d_model: d,
        d_ff: f,
        tokens,
        label,
        sparsity,
        source,
    };
    Ok(Trace { manifest, inputs, labels })
}

/// Where traces of a profile directory go by default.
pub fn default_trace_dir(profile_dir: &Path) -> PathBuf {
    profile_dir.join("trace")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small trace of `layers` x `tokens` for a model of `d` x `f` (Llama-3-8B's config with
    /// the layer count and widths replaced).
    fn small(layers: usize, tokens: usize, d: usize, f: usize) -> (Trace, Config) {
        let cfg = Config { n_layers: layers, d_model: d, d_ff: f, ..Config::llama3_8b() };
        let manifest = TraceManifest {
            version: TRACE_VERSION,
            model_sha256: "a".repeat(64),
            n_layers: layers,
            d_model: d,
            d_ff: f,
            tokens,
            label: LabelKind::Cats,
            sparsity: 0.5,
            source: "test".into(),
        };
        let inputs =
            (0..layers).map(|l| (0..tokens * d).map(|i| f16::from_f32((i + l) as f32 / 8.0)).collect()).collect();
        let labels = (0..layers)
            .map(|l| {
                let mut y = Labels::zeros(tokens, f);
                for t in 0..tokens {
                    y.set_row(t, |i| (i + t + l) % 3 == 0);
                }
                y
            })
            .collect();
        (Trace { manifest, inputs, labels }, cfg)
    }

    fn reason(r: Result<Trace>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a bad trace was loaded"),
        }
    }

    #[test]
    fn a_saved_trace_loads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (t, cfg) = small(3, 5, 32, 70);
        t.save(dir.path()).unwrap();
        let back = Trace::load(dir.path(), &t.manifest.model_sha256, &cfg).unwrap();
        assert_eq!(back.manifest, t.manifest);
        for l in 0..3 {
            assert_eq!(back.inputs(l), t.inputs(l));
            assert_eq!(back.labels(l).words(), t.labels(l).words());
        }
    }

    #[test]
    fn truncated_foreign_or_misshapen_traces_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (t, cfg) = small(3, 5, 32, 70);
        let sha = t.manifest.model_sha256.clone();
        t.save(dir.path()).unwrap();
        let other_model = reason(Trace::load(dir.path(), &"b".repeat(64), &cfg));
        assert!(other_model.contains("another model"), "{other_model}");
        let fewer_layers = Config { n_layers: 2, ..cfg.clone() };
        let layers = reason(Trace::load(dir.path(), &sha, &fewer_layers));
        assert!(layers.contains("3 layers") && layers.contains("has 2 layers"), "{layers}");
        for file in [INPUTS, LABELS] {
            let path = dir.path().join(file);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 2]).unwrap();
            let truncated = reason(Trace::load(dir.path(), &sha, &cfg));
            assert!(truncated.contains(file) && truncated.contains("truncated"), "{truncated}");
            std::fs::write(&path, &bytes).unwrap();
        }
        std::fs::write(dir.path().join(MANIFEST), "{\"version\": 1, \"model").unwrap();
        let corrupt = reason(Trace::load(dir.path(), &sha, &cfg));
        assert!(corrupt.contains(MANIFEST) && corrupt.contains("corrupt"), "{corrupt}");
    }
}
