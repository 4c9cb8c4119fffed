//! The model on the GPU: fp16 weights in the layouts the kernels read (input-major for the
//! input-sparse GEMVs, a row-major copy of the up projection for CATS, a row-major LM head),
//! the fp16 KV cache and the step's activation buffers.

use sieve_kernels::gpu::{AttentionShape, CudaSlice, Gather, Gpu, GpuError, Reduction, SparseGemv, WeightType};

use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::model::Model;
use crate::sparsity::Method;
use crate::weights::Linear;

/// Caches longer than this many positions use the split (flash-decoding) attention: one more
/// launch per layer, paid back once a head's positions no longer fit one block's pass.
pub(crate) const SPLIT_ATTENTION_FROM: usize = 256;

/// Bytes of fp16 weights one decode step reads with nothing skipped: every layer's seven
/// projections and the LM head (one embedding row is negligible).
pub fn step_weight_bytes(cfg: &Config) -> usize {
    let (d, f, kv) = (cfg.d_model, cfg.d_ff, cfg.kv_dim());
    let layer = d * (d + 2 * kv) + d * d + 3 * d * f;
    2 * (cfg.n_layers * layer + cfg.vocab_size * d)
}

/// Bytes of fp16 weights one decode step reads under `method` at target sparsity `s`: TEAL's
/// input-sparse products read the rows of their active inputs (a fraction 1 - s of each
/// matrix), CATS reads the whole gate and the kept rows of up and down; attention under CATS,
/// and the LM head always, are read whole. (The synthetic model's thresholds are calibrated
/// to `s` on its own activations, so this is the bytes at the target, not measured ones.)
pub fn method_step_weight_bytes(cfg: &Config, method: Method, s: f32) -> f64 {
    let (d, f, kv) = (cfg.d_model as f64, cfg.d_ff as f64, cfg.kv_dim() as f64);
    let kept = 1.0 - f64::from(s.clamp(0.0, 1.0));
    let (attn, mlp) = (d * (d + 2.0 * kv) + d * d, 3.0 * d * f);
    let layer = match method {
        Method::Teal | Method::TealUniform => kept * (attn + mlp),
        Method::Cats => attn + d * f + kept * 2.0 * d * f,
        _ => attn + mlp,
    };
    2.0 * (cfg.n_layers as f64 * layer + (cfg.vocab_size * cfg.d_model) as f64)
}

pub(crate) fn attention_shape(cfg: &Config, max_len: usize) -> AttentionShape {
    AttentionShape {
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        rot_pairs: cfg.rope_dim.min(cfg.head_dim) / 2,
        theta: cfg.rope_theta,
        max_len,
    }
}

/// Whether the GPU kernels can run a model of this shape.
fn check_shape(s: &Config) -> Result<()> {
    let ok = s.n_layers > 0
        && s.d_model.is_multiple_of(8)
        && s.d_ff.is_multiple_of(8)
        && s.kv_dim().is_multiple_of(8)
        && s.n_heads * s.head_dim == s.d_model
        && s.n_kv_heads > 0
        && s.n_heads.is_multiple_of(s.n_kv_heads)
        && s.vocab_size > 0;
    if ok {
        Ok(())
    } else {
        Err(GpuError::Unsupported(format!(
            "model shape {s:?}: the GPU path needs widths that are multiples of 8 and heads * head_dim = d_model"
        ))
        .into())
    }
}

/// One layer's weights on the device.
pub(crate) struct GpuLayer {
    pub attn_norm: CudaSlice<f32>,
    pub ffn_norm: CudaSlice<f32>,
    /// Input-major (W^T) copies of q, k, v, o, gate, up, down.
    pub proj: [CudaSlice<u16>; 7],
    /// Row-major gate and up projections (dense, CATS and the predictor read rows).
    pub gate_rows: CudaSlice<u16>,
    pub up_rows: CudaSlice<u16>,
    /// Row-major q, k and v stacked, o and down: the dense step reads whole rows (the
    /// fastest dense GEMV here, so speedups are measured against the best dense).
    pub qkv_rows: CudaSlice<u16>,
    pub o_rows: CudaSlice<u16>,
    pub down_rows: CudaSlice<u16>,
}

/// One layer's low-rank predictor on the device.
pub(crate) struct GpuPredictor {
    /// First factor, rank x d (row-major fp16).
    pub w1: CudaSlice<u16>,
    /// Second factor, f x rank (row-major fp16), and its bias.
    pub w2: CudaSlice<u16>,
    pub b2: CudaSlice<f32>,
    pub scale: Option<CudaSlice<f32>>,
    pub relu: bool,
    pub gate_output: bool,
    /// `W1 x`, rank values.
    pub hidden: CudaSlice<f32>,
}

/// The step's activations.
pub(crate) struct Activations {
    pub x: CudaSlice<f32>,
    pub normed: CudaSlice<f32>,
    /// q, k, v back to back (one buffer, cleared by one norm).
    pub qkv: CudaSlice<f32>,
    pub attn: CudaSlice<f32>,
    /// gate, up back to back.
    pub gate_up: CudaSlice<f32>,
    pub h: CudaSlice<f32>,
    pub logits: CudaSlice<f32>,
    /// Per-split partial results of the split attention (caches longer than
    /// [`SPLIT_ATTENTION_FROM`] positions); None: one block per head.
    pub attn_splits: Option<CudaSlice<f32>>,
    /// `[token, position]` of the step.
    pub step: CudaSlice<i32>,
}

/// A model resident on the GPU, ready to decode.
pub struct GpuModel {
    pub(crate) gpu: Gpu,
    pub(crate) shape: Config,
    pub(crate) max_len: usize,
    pub(crate) embed: CudaSlice<u16>,
    /// Row-major LM head; `None` when tied to the embedding.
    pub(crate) head: Option<CudaSlice<u16>>,
    pub(crate) out_norm: CudaSlice<f32>,
    pub(crate) layers: Vec<GpuLayer>,
    /// The sequences the model holds, each with its own KV cache; steps run on `current`.
    pub(crate) seqs: Vec<Sequence>,
    pub(crate) current: usize,
    pub(crate) act: Activations,
    pub(crate) gemv: SparseGemv,
    /// The row kernels (dense products, the LM head) fold in the RMSNorm they read.
    pub(crate) fold_norms: bool,
    /// The uploaded predictor set (keyed by the plan's shared set) and its layers.
    pub(crate) predictors: Option<(crate::sparsity::Predictors, Vec<GpuPredictor>)>,
}

/// One sequence on the GPU: its KV cache (per layer keys and values), how many positions it
/// holds, and the step graph captured for it (a graph bakes in the cache's addresses, so each
/// sequence has its own; the activations are shared, as steps run one at a time).
pub(crate) struct Sequence {
    pub caches: Vec<(CudaSlice<u16>, CudaSlice<u16>)>,
    pub pos: usize,
    /// The plan and launch mode (early or not) it was captured with, and the graph.
    pub graph: Option<(super::GpuPlan, bool, sieve_kernels::gpu::CudaGraph)>,
}

impl Sequence {
    fn alloc(gpu: &Gpu, s: &Config, max_len: usize) -> Result<Sequence> {
        let caches = (0..s.n_layers)
            .map(|_| Ok((gpu.zeros::<u16>(max_len * s.kv_dim())?, gpu.zeros::<u16>(max_len * s.kv_dim())?)))
            .collect::<std::result::Result<Vec<_>, GpuError>>()?;
        Ok(Sequence { caches, pos: 0, graph: None })
    }
}

/// Row-major (rows x cols) values to input-major fp16.
fn input_major_f16(m: &[f32], rows: usize, cols: usize) -> Vec<u16> {
    let mut t = vec![0f32; m.len()];
    for (r, row) in m.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            t[c * rows + r] = v;
        }
    }
    WeightType::F16.encode(&t)
}

impl GpuModel {
    fn alloc(
        gpu: Gpu,
        shape: Config,
        max_len: usize,
        layers: Vec<GpuLayer>,
        embed: CudaSlice<u16>,
        head: Option<CudaSlice<u16>>,
        out_norm: CudaSlice<f32>,
    ) -> Result<GpuModel> {
        let s = &shape;
        let max_len = max_len.clamp(1, sieve_kernels::gpu::MAX_ATTENTION_LEN);
        let seqs = vec![Sequence::alloc(&gpu, s, max_len)?];
        let act = Activations {
            x: gpu.zeros(s.d_model)?,
            normed: gpu.zeros(s.d_model)?,
            qkv: gpu.zeros(s.d_model + 2 * s.kv_dim())?,
            attn: gpu.zeros(s.d_model)?,
            gate_up: gpu.zeros(2 * s.d_ff)?,
            h: gpu.zeros(s.d_ff)?,
            logits: gpu.zeros(s.vocab_size)?,
            attn_splits: if max_len > SPLIT_ATTENTION_FROM {
                Some(gpu.zeros(Gpu::attention_split_scratch(&attention_shape(s, max_len)))?)
            } else {
                None
            },
            step: gpu.zeros(2)?,
        };
        let gemv = SparseGemv {
            weight_type: WeightType::F16,
            reduction: Reduction::Atomic,
            gather: Gather::Auto,
            units_per_sm: None,
        };
        let fold_norms = shape.d_model <= super::step::FOLD_ROWS_MAX_WIDTH;
        Ok(GpuModel {
            gpu,
            shape,
            max_len,
            embed,
            head,
            out_norm,
            layers,
            seqs,
            current: 0,
            act,
            gemv,
            fold_norms,
            predictors: None,
        })
    }

    /// Uploads a loaded model's weights (dequantized to fp16) to GPU `gpu`, with a KV cache
    /// of `max_len` positions.
    pub fn from_model(model: &Model, gpu: Gpu, max_len: usize) -> Result<GpuModel> {
        let cfg = model.config();
        check_shape(cfg)?;
        let w = model.weights();
        let upload_t = |lin: &Linear| -> Result<CudaSlice<u16>> {
            Ok(gpu.upload(&input_major_f16(&lin.to_f32(), lin.rows(), lin.cols()))?)
        };
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for lw in &w.layers {
            let proj = [
                upload_t(&lw.wq)?,
                upload_t(&lw.wk)?,
                upload_t(&lw.wv)?,
                upload_t(&lw.wo)?,
                upload_t(&lw.w_gate)?,
                upload_t(&lw.w_up)?,
                upload_t(&lw.w_down)?,
            ];
            let mut qkv = lw.wq.to_f32();
            qkv.extend(lw.wk.to_f32());
            qkv.extend(lw.wv.to_f32());
            let rows = |lin: &Linear| gpu.upload(&WeightType::F16.encode(&lin.to_f32()));
            layers.push(GpuLayer {
                attn_norm: gpu.upload(&lw.attn_norm)?,
                ffn_norm: gpu.upload(&lw.ffn_norm)?,
                gate_rows: rows(&lw.w_gate)?,
                up_rows: rows(&lw.w_up)?,
                qkv_rows: gpu.upload(&WeightType::F16.encode(&qkv))?,
                o_rows: rows(&lw.wo)?,
                down_rows: rows(&lw.w_down)?,
                proj,
            });
        }
        let embed = gpu.upload(&WeightType::F16.encode(&w.token_embd.to_f32()))?;
        let head = match &w.output {
            Some(out) => Some(gpu.upload(&WeightType::F16.encode(&out.to_f32()))?),
            None => None,
        };
        let out_norm = gpu.upload(&w.output_norm)?;
        let max_len = max_len.min(cfg.context_len.max(1));
        GpuModel::alloc(gpu, cfg.clone(), max_len, layers, embed, head, out_norm)
    }

    /// A model of `shape` with reproducible random fp16 weights (uniform, scaled by
    /// 1/sqrt(inputs)), filled on the device: a real architecture at real scale without
    /// moving its weights.
    pub fn synthetic(gpu: Gpu, shape: Config, max_len: usize, seed: u64) -> Result<GpuModel> {
        check_shape(&shape)?;
        let s = &shape;
        let (d, f, kv) = (s.d_model, s.d_ff, s.kv_dim());
        // A rows x cols matrix (outputs x inputs) of seed `id`, input-major or row-major;
        // uniform with variance 1/cols.
        let fill_into =
            |w: sieve_kernels::gpu::DevPtr<'_, u16>, id: u64, rows: usize, cols: usize, input_major: bool| {
                let scale = (3.0 / cols as f32).sqrt();
                let seed = seed.wrapping_add(id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                gpu.fill_uniform_f16(w, seed, scale, input_major.then_some((rows, cols)))
            };
        let fill = |id: u64, rows: usize, cols: usize, input_major: bool| -> Result<CudaSlice<u16>> {
            let w = gpu.zeros::<u16>(rows * cols)?;
            fill_into(gpu.view(&w), id, rows, cols, input_major)?;
            Ok(w)
        };
        let mut layers = Vec::with_capacity(s.n_layers);
        for l in 0..s.n_layers as u64 {
            let id = |p: u64| 1 + 8 * l + p;
            let wq = fill(id(0), d, d, true)?;
            let wk = fill(id(1), kv, d, true)?;
            let wv = fill(id(2), kv, d, true)?;
            let wo = fill(id(3), d, d, true)?;
            let gate = fill(id(4), f, d, true)?;
            let gate_rows = fill(id(4), f, d, false)?;
            // The up projection in both layouts, from one seed.
            let up = fill(id(5), f, d, true)?;
            let up_rows = fill(id(5), f, d, false)?;
            let down = fill(id(6), d, f, true)?;
            let qkv_rows = gpu.zeros::<u16>((d + 2 * kv) * d)?;
            let stacked = gpu.view(&qkv_rows);
            let part = |start: usize, rows: usize| {
                stacked.sub(start * d, rows * d).ok_or_else(|| GpuError::Unsupported("stacked q/k/v".into()))
            };
            fill_into(part(0, d)?, id(0), d, d, false)?;
            fill_into(part(d, kv)?, id(1), kv, d, false)?;
            fill_into(part(d + kv, kv)?, id(2), kv, d, false)?;
            let o_rows = fill(id(3), d, d, false)?;
            let down_rows = fill(id(6), d, f, false)?;
            layers.push(GpuLayer {
                qkv_rows,
                o_rows,
                down_rows,
                attn_norm: gpu.upload(&vec![1.0f32; d])?,
                ffn_norm: gpu.upload(&vec![1.0f32; d])?,
                proj: [wq, wk, wv, wo, gate, up, down],
                gate_rows,
                up_rows,
            });
        }
        // Embedding rows of unit scale (like a trained model's normed inputs), head scaled.
        let embed = gpu.zeros::<u16>(s.vocab_size * d)?;
        gpu.fill_uniform_f16(gpu.view(&embed), seed ^ 0xe, 1.0, None)?;
        let head = fill(0, s.vocab_size, d, false)?;
        let out_norm = gpu.upload(&vec![1.0f32; d])?;
        gpu.sync()?;
        GpuModel::alloc(gpu, shape, max_len, layers, embed, Some(head), out_norm)
    }

    /// The model's shape.
    pub fn shape(&self) -> &Config {
        &self.shape
    }

    /// The GPU it lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Launches each step's kernels early (programmatic dependent launch, sm_90+) or one after
    /// the other; each sequence's step graph is captured again at its next step.
    pub fn set_early_launch(&mut self, on: bool) {
        self.gpu.set_early_launch(on);
    }

    /// How the input-sparse GEMVs gather active rows ([`Gather::Auto`] unless set); each
    /// sequence's step graph is captured again at its next step.
    pub fn set_gather(&mut self, gather: Gather) {
        self.gemv.gather = gather;
        for seq in &mut self.seqs {
            seq.graph = None;
        }
    }

    /// Folds each RMSNorm into the row kernels that read its output (dense products and the
    /// LM head; on by default for models up to 2048 wide, where it measured faster) or runs
    /// it as its own launch; each sequence's step graph is captured again at its next step.
    pub fn set_folded_norms(&mut self, on: bool) {
        self.fold_norms = on;
        for seq in &mut self.seqs {
            seq.graph = None;
        }
    }

    /// Positions the KV cache holds.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Positions the current sequence holds (decoded since its last [`GpuModel::reset`]).
    pub fn position(&self) -> usize {
        self.seqs[self.current].pos
    }

    /// Restarts the current sequence (its cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.seqs[self.current].pos = 0;
    }

    /// Sequences the model holds at once (one KV cache each).
    pub fn sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Allocates KV caches until the model holds `n` sequences (a cache of `max_len`
    /// positions each); a model never drops sequences.
    pub fn set_sequences(&mut self, n: usize) -> Result<()> {
        while self.seqs.len() < n {
            self.seqs.push(Sequence::alloc(&self.gpu, &self.shape, self.max_len)?);
        }
        Ok(())
    }

    /// The sequence later steps, [`GpuModel::position`] and [`GpuModel::reset`] refer to.
    pub fn current(&self) -> usize {
        self.current
    }

    /// Makes sequence `seq` (below [`GpuModel::sequences`]) the current one; the others keep
    /// their caches and positions.
    pub fn select(&mut self, seq: usize) -> Result<()> {
        if seq >= self.seqs.len() {
            return Err(EngineError::InvalidInput(format!(
                "sequence {seq} of a GPU model holding {}",
                self.seqs.len()
            )));
        }
        self.current = seq;
        Ok(())
    }

    /// Uploads the plan's predictor set unless it is the one already on the device.
    pub(crate) fn ensure_predictors(&mut self, set: &crate::sparsity::Predictors) -> Result<()> {
        use sieve_predictor::model::Body;
        if self.predictors.as_ref().is_some_and(|(s, _)| s == set) {
            return Ok(());
        }
        let (d, f) = (self.shape.d_model, self.shape.d_ff);
        if set.0.layers.len() != self.shape.n_layers {
            return Err(EngineError::InvalidInput(format!(
                "the predictor set has {} layers, the model {}",
                set.0.layers.len(),
                self.shape.n_layers
            )));
        }
        let mut layers = Vec::with_capacity(set.0.layers.len());
        for p in &set.0.layers {
            let Body::LowRank { rank, relu, w1, w2, b2 } = &p.body else {
                return Err(EngineError::InvalidInput("the GPU runs low-rank predictors only".into()));
            };
            let rank = *rank;
            if w1.len() != rank * d || w2.len() != f * rank || b2.len() != f || p.d() != d || p.f() != f {
                return Err(EngineError::InvalidInput(format!(
                    "predictor of rank {rank} does not fit the model ({d} -> {f})"
                )));
            }
            let scale = (p.neuron_scale.len() == f).then(|| self.gpu.upload(&p.neuron_scale)).transpose()?;
            layers.push(GpuPredictor {
                w1: self.gpu.upload(&WeightType::F16.encode(w1))?,
                w2: self.gpu.upload(&WeightType::F16.encode(w2))?,
                b2: self.gpu.upload(b2)?,
                scale,
                relu: *relu,
                gate_output: super::plan::gate_output(p.output),
                hidden: self.gpu.zeros(rank)?,
            });
        }
        self.predictors = Some((set.clone(), layers));
        Ok(())
    }

    pub(crate) fn check_token(&self, token: u32) -> Result<()> {
        if token as usize >= self.shape.vocab_size {
            return Err(EngineError::InvalidInput(format!(
                "token id {token} is outside the vocabulary ({})",
                self.shape.vocab_size
            )));
        }
        let pos = self.position();
        if pos >= self.max_len {
            return Err(EngineError::ContextOverflow { needed: pos + 1, max: self.max_len });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_shapes_are_checked_before_any_upload() {
        assert!(check_shape(&Config::llama3_8b()).is_ok());
        let mut odd = Config::llama3_8b();
        odd.d_ff = 14_337;
        let err = check_shape(&odd).unwrap_err().to_string();
        assert!(err.contains("multiples of 8"), "{err}");
        let mut heads = Config::llama3_8b();
        heads.n_kv_heads = 5;
        assert!(check_shape(&heads).is_err());
        // 8B at fp16: 15.0 GB read per step (layers + LM head).
        assert_eq!(step_weight_bytes(&Config::llama3_8b()), 2 * (32 * 218_103_808 + 128_256 * 4096));
    }

    #[test]
    fn method_bytes_shrink_with_what_each_method_skips() {
        let cfg = Config::llama3_8b();
        let dense = step_weight_bytes(&cfg) as f64;
        assert_eq!(method_step_weight_bytes(&cfg, Method::Dense, 0.5), dense);
        assert_eq!(method_step_weight_bytes(&cfg, Method::TealUniform, 0.0), dense);
        let head = 2.0 * 128_256.0 * 4096.0;
        let teal = method_step_weight_bytes(&cfg, Method::TealUniform, 0.5);
        assert!((teal - (head + (dense - head) / 2.0)).abs() < 1.0, "{teal}");
        // CATS at 50% skips half of up and down: a third of the MLP's bytes.
        let mlp = 2.0 * 32.0 * 3.0 * 4096.0 * 14336.0;
        let cats = method_step_weight_bytes(&cfg, Method::Cats, 0.5);
        assert!((cats - (dense - mlp / 3.0)).abs() < 1.0, "{cats}");
    }
}
