//! The model's weights in the layouts and precisions the kernels read.
//!
//! The reference path dequantizes every matrix to f32. The fast path keeps Q4_1 tensors in
//! their own blocks (the bytes llama.cpp reads) and re-quantizes everything else to int8
//! blocks of 32 (the GGUF's Q8_0 embedding round-trips exactly).

use candle_core::quantized::GgmlDType;
use serde::Serialize;
use sieve_kernels::{ActsQ8, MatF32, MatQ4_1, MatQ8, QK};

use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::sparsity::Proj;

/// Numeric precision of the weights and of the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and activations: the reference.
    F32,
    /// Q4_1 (as stored) or int8 weights, int8-quantized activations, f32 accumulation of
    /// integer block sums.
    Fast,
}

impl std::str::FromStr for Precision {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "fast" | "int8" => Ok(Self::Fast),
            _ => Err(EngineError::InvalidInput(format!("unknown precision '{s}' (expected f32 or fast)"))),
        }
    }
}

/// One weight matrix, row-major (`rows` outputs x `cols` inputs).
#[derive(Debug, Clone)]
pub enum Linear {
    /// Reference precision.
    F32(MatF32),
    /// Fast precision, int8 blocks (tensors not stored as Q4_1).
    Q8(MatQ8),
    /// Fast precision, the GGUF's own Q4_1 blocks.
    Q4(MatQ4_1),
}

impl Linear {
    /// Builds the copy the decode GEMV reads, where it has one (see
    /// [`crate::Model::prepare_decode`]).
    pub fn prepare_decode(&self) {
        match self {
            Linear::F32(_) => {}
            Linear::Q8(m) => m.prepare_decode(),
            Linear::Q4(m) => m.prepare_decode(),
        }
    }

    /// Reads tensor `name` (`rows x cols`) at `precision`: f32 for the reference path; on the
    /// fast path Q4_1 tensors keep their blocks and everything else becomes int8.
    fn read(gguf: &mut GgufFile, name: &str, precision: Precision, rows: usize, cols: usize) -> Result<Self> {
        if precision == Precision::Fast {
            match gguf.tensor_dtype(name) {
                Some(GgmlDType::Q4_1) => {
                    let (_, raw) = gguf.read_raw(name, &[rows, cols])?;
                    return Ok(Linear::Q4(MatQ4_1::from_ggml(rows, cols, &raw)?));
                }
                Some(GgmlDType::Q8_0) => {
                    let (_, raw) = gguf.read_raw(name, &[rows, cols])?;
                    return Ok(Linear::Q8(q8_0_blocks(rows, cols, &raw)?));
                }
                _ => {}
            }
        }
        let data = gguf.read_f32(name, &[rows, cols])?;
        Ok(match precision {
            Precision::F32 => Linear::F32(MatF32::new(rows, cols, data)?),
            Precision::Fast => Linear::Q8(MatQ8::quantize(rows, cols, &data)?),
        })
    }
    /// Outputs.
    pub fn rows(&self) -> usize {
        match self {
            Linear::F32(m) => m.rows(),
            Linear::Q8(m) => m.rows(),
            Linear::Q4(m) => m.rows(),
        }
    }
    /// Inputs.
    pub fn cols(&self) -> usize {
        match self {
            Linear::F32(m) => m.cols(),
            Linear::Q8(m) => m.cols(),
            Linear::Q4(m) => m.cols(),
        }
    }
    /// Bytes of weights (and scales).
    pub fn bytes(&self) -> usize {
        match self {
            Linear::F32(m) => m.bytes(),
            Linear::Q8(m) => m.bytes(),
            Linear::Q4(m) => m.bytes(),
        }
    }
    /// Bytes one row costs when rows are read one by one (output-sparse products).
    pub fn listed_row_bytes(&self) -> usize {
        match self {
            Linear::F32(m) => 4 * m.cols(),
            Linear::Q8(m) => m.bytes() / m.rows().max(1),
            Linear::Q4(m) => m.listed_row_bytes(),
        }
    }
    /// Row `r` in f32 (embedding lookup).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        match self {
            Linear::F32(m) => out.copy_from_slice(m.row(r)),
            Linear::Q8(m) => m.dequantize_row(r, out),
            Linear::Q4(m) => m.dequantize_row(r, out),
        }
    }
    /// The whole matrix in f32, row-major (rows x cols).
    pub fn to_f32(&self) -> Vec<f32> {
        let cols = self.cols();
        let mut out = vec![0f32; self.rows() * cols];
        for (r, row) in out.chunks_exact_mut(cols).enumerate() {
            self.row_f32(r, row);
        }
        out
    }
    /// `out[t] = W x[t]` for the prepared activation rows.
    pub fn forward(&self, x: &Prepared<'_>, out: &mut [f32]) -> Result<()> {
        match (self, x) {
            (Linear::F32(w), Prepared::F32 { x, n }) => sieve_kernels::matmul_f32(w, x, *n, out)?,
            (Linear::Q8(w), Prepared::Q8(q)) => sieve_kernels::matmul_q8(w, q, out)?,
            (Linear::Q4(w), Prepared::Q8(q)) => sieve_kernels::matmul_q4_1(w, q, out)?,
            _ => return Err(EngineError::InvalidInput("activations prepared for the other precision".into())),
        }
        Ok(())
    }
}

/// Products of several projections with the same quantized input (q, k and v; gate and
/// up): one parallel job for a decode step where every weight is Q4_1 (see
/// [`sieve_kernels::matmul_q4_1_many`]), else one product after the other.
pub fn forward_many(x: &ActsQ8, jobs: &mut [(&Linear, &mut [f32])]) -> Result<()> {
    let count = jobs.len();
    let mut q4: Vec<(&MatQ4_1, &mut [f32])> = Vec::with_capacity(count);
    for (w, out) in jobs.iter_mut() {
        if let Linear::Q4(m) = w {
            q4.push((m, &mut **out));
        }
    }
    if q4.len() == count {
        sieve_kernels::matmul_q4_1_many(x, &mut q4)?;
        return Ok(());
    }
    drop(q4);
    for (w, out) in jobs.iter_mut() {
        w.forward(&Prepared::Q8(x), out)?;
    }
    Ok(())
}

/// GGML `block_q8_0` bytes (f16 scale, 32 int8 values) as a [`MatQ8`], without a detour
/// through f32 (which would cost a transient f32 copy of the whole embedding).
fn q8_0_blocks(rows: usize, cols: usize, raw: &[u8]) -> Result<MatQ8> {
    const BLOCK: usize = 2 + QK;
    let blocks = rows * cols / QK;
    if raw.len() != blocks * BLOCK || !cols.is_multiple_of(QK) {
        return Err(EngineError::Tensor {
            tensor: "Q8_0".into(),
            reason: format!("{} bytes for {rows}x{cols}, expected {}", raw.len(), blocks * BLOCK),
        });
    }
    let mut qs = Vec::with_capacity(rows * cols);
    let mut scales = Vec::with_capacity(blocks);
    for b in raw.chunks_exact(BLOCK) {
        scales.push(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
        qs.extend(b[2..].iter().map(|&v| v as i8));
    }
    Ok(MatQ8::from_parts(rows, cols, qs, scales)?)
}

/// Activation rows ready for [`Linear::forward`]: as they are (f32) or quantized once and
/// shared by every projection that reads them (q, k and v; gate and up).
pub enum Prepared<'a> {
    /// f32 rows.
    F32 { x: &'a [f32], n: usize },
    /// int8 rows.
    Q8(&'a ActsQ8),
}

/// Weights of one transformer block.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Linear,
    pub w_up: Linear,
    pub w_down: Linear,
}

impl LayerWeights {
    /// The matrix of projection `p`.
    pub fn proj(&self, p: Proj) -> &Linear {
        match p {
            Proj::Q => &self.wq,
            Proj::K => &self.wk,
            Proj::V => &self.wv,
            Proj::O => &self.wo,
            Proj::Gate => &self.w_gate,
            Proj::Up => &self.w_up,
            Proj::Down => &self.w_down,
        }
    }
}

/// All weights of the model.
#[derive(Debug, Clone)]
pub struct Weights {
    pub precision: Precision,
    pub token_embd: Linear,
    /// Separate output head; `None` when tied to the embedding.
    pub output: Option<Linear>,
    pub output_norm: Vec<f32>,
    pub layers: Vec<LayerWeights>,
}

impl Weights {
    /// Loads every tensor of `cfg`'s architecture from `gguf`.
    pub fn load(gguf: &mut GgufFile, cfg: &Config, precision: Precision) -> Result<Self> {
        let (d, f, kv) = (cfg.d_model, cfg.d_ff, cfg.kv_dim());
        if precision == Precision::Fast {
            for (what, n) in [("embedding_length", d), ("feed_forward_length", f)] {
                if n % QK != 0 {
                    return Err(EngineError::Metadata {
                        key: what.into(),
                        reason: format!("{n} is not a multiple of {QK}; use --precision f32"),
                    });
                }
            }
        }
        let has_output = gguf.tensor_shape("output.weight").is_some();
        let mut mat = |name: &str, rows: usize, cols: usize| Linear::read(gguf, name, precision, rows, cols);
        let token_embd = mat("token_embd.weight", cfg.vocab_size, d)?;
        let output = if has_output { Some(mat("output.weight", cfg.vocab_size, d)?) } else { None };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(LayerWeights {
                wq: mat(&n("attn_q"), d, d)?,
                wk: mat(&n("attn_k"), kv, d)?,
                wv: mat(&n("attn_v"), kv, d)?,
                wo: mat(&n("attn_output"), d, d)?,
                w_gate: mat(&n("ffn_gate"), f, d)?,
                w_up: mat(&n("ffn_up"), f, d)?,
                w_down: mat(&n("ffn_down"), d, f)?,
                attn_norm: Vec::new(),
                ffn_norm: Vec::new(),
            });
        }
        for (l, layer) in layers.iter_mut().enumerate() {
            layer.attn_norm = gguf.read_f32(&format!("blk.{l}.attn_norm.weight"), &[d])?;
            layer.ffn_norm = gguf.read_f32(&format!("blk.{l}.ffn_norm.weight"), &[d])?;
        }
        let output_norm = gguf.read_f32("output_norm.weight", &[d])?;
        Ok(Self { precision, token_embd, output, output_norm, layers })
    }

    /// The matrix that maps the final hidden state to logits.
    pub fn lm_head(&self) -> &Linear {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }

    /// Bytes held by all weights.
    pub fn bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down].iter().map(|m| m.bytes()).sum::<usize>()
                    + 4 * (l.attn_norm.len() + l.ffn_norm.len())
            })
            .sum();
        layers + self.token_embd.bytes() + self.output.as_ref().map_or(0, Linear::bytes) + 4 * self.output_norm.len()
    }
}
