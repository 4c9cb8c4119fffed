//! The model's hyper-parameters, read from GGUF metadata and checked for consistency.

use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// Shape and constants of a Llama-architecture model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// `general.name`, or the file stem when absent.
    pub name: String,
    /// `general.architecture` (always "llama" once validated).
    pub architecture: String,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size d.
    pub d_model: usize,
    /// MLP intermediate size f.
    pub d_ff: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (GQA groups).
    pub n_kv_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Leading dims of each head that RoPE rotates.
    pub rope_dim: usize,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Trained context length.
    pub context_len: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
}

impl Config {
    /// Reads and validates the configuration of `gguf`.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let architecture = gguf.get_str("general.architecture")?.to_string();
        if architecture != "llama" {
            return Err(EngineError::UnsupportedArchitecture(architecture));
        }
        let key = |k: &str| format!("{architecture}.{k}");
        let n_heads = gguf.get_usize(&key("attention.head_count"))?;
        let d_model = gguf.get_usize(&key("embedding_length"))?;
        let head_dim = d_model.checked_div(n_heads).unwrap_or(0);
        let vocab_size = match gguf.get_usize(&key("vocab_size")) {
            Ok(v) => v,
            Err(_) => gguf.tensor_shape("token_embd.weight").and_then(|s| s.first().copied()).unwrap_or(0),
        };
        let cfg = Config {
            name: gguf.get_str("general.name").map(str::to_string).unwrap_or_else(|_| {
                gguf.path().file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            }),
            n_layers: gguf.get_usize(&key("block_count"))?,
            d_model,
            d_ff: gguf.get_usize(&key("feed_forward_length"))?,
            n_heads,
            n_kv_heads: gguf.get_usize(&key("attention.head_count_kv")).unwrap_or(n_heads),
            head_dim,
            rope_dim: gguf.get_usize(&key("rope.dimension_count")).unwrap_or(head_dim),
            rope_theta: gguf.get_f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: gguf.get_f32(&key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            context_len: gguf.get_usize(&key("context_length"))?,
            vocab_size,
            architecture,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Llama-3-8B's shape (32 layers, d 4096, f 14336, GQA 32/8, vocab 128256): the synthetic
    /// model the GPU benchmark fills with random weights.
    pub fn llama3_8b() -> Config {
        Config {
            name: "synthetic Llama-3-8B".into(),
            architecture: "llama".into(),
            n_layers: 32,
            d_model: 4096,
            d_ff: 14336,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            rope_dim: 128,
            rope_theta: 500_000.0,
            rms_eps: 1e-5,
            context_len: 8192,
            vocab_size: 128_256,
        }
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Parameters of each projection of one block, in [`crate::sparsity::Proj::ALL`] order.
    pub fn proj_params(&self) -> [usize; 7] {
        let (d, f, kv) = (self.d_model, self.d_ff, self.kv_dim());
        [d * d, d * kv, d * kv, d * d, d * f, d * f, d * f]
    }

    /// Parameters in the transformer blocks (embedding and head excluded).
    pub fn block_params(&self) -> usize {
        let attn = self.d_model * (2 * self.d_model + 2 * self.kv_dim());
        let mlp = 3 * self.d_model * self.d_ff;
        self.n_layers * (attn + mlp)
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(EngineError::Metadata { key: key.into(), reason });
        for (k, v) in [
            ("block_count", self.n_layers),
            ("embedding_length", self.d_model),
            ("feed_forward_length", self.d_ff),
            ("attention.head_count", self.n_heads),
            ("attention.head_count_kv", self.n_kv_heads),
            ("context_length", self.context_len),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return bad(k, "must be positive".into());
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return bad(
                "attention.head_count",
                format!("{} does not divide embedding_length {}", self.n_heads, self.d_model),
            );
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(
                "attention.head_count_kv",
                format!("{} does not divide head_count {}", self.n_kv_heads, self.n_heads),
            );
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return bad(
                "rope.dimension_count",
                format!("{} is not an even number <= head size {}", self.rope_dim, self.head_dim),
            );
        }
        if self.n_layers > 1024 || self.d_model > 1 << 16 || self.d_ff > 1 << 18 || self.context_len > 1 << 20 {
            return bad("block_count/embedding_length", "implausibly large model dimensions".into());
        }
        let positive = |v: f32| v.is_finite() && v > 0.0;
        if !(positive(self.rope_theta) && positive(self.rms_eps)) {
            return bad("rope.freq_base/layer_norm_rms_epsilon", "must be finite and positive".into());
        }
        Ok(())
    }
}
