//! The engine thread's GPU backend (feature `cuda`): the model's weights in fp16 on an NVIDIA
//! GPU, generations decoded there one at a time (the GPU model holds one KV cache; the
//! scheduler queues the others), and the dense reference measured there, so a stream's
//! speedup compares like with like.

use std::time::{Instant, SystemTime};

use sieve_engine::Model;
use sieve_engine::generate::{GenerateOptions, Step};
use sieve_engine::gpu::{GpuModel, GpuSession};
use sieve_engine::sampling::SamplingParams;
use sieve_kernels::gpu::Gpu;

use crate::dense_ref::{DenseReference, PROMPT_TOKENS, ROUNDS, STEPS, reference_prompt};
use crate::error::ServerError;

/// A generation running on the GPU.
pub type GpuStream = GpuSession;

/// The model on a GPU.
pub struct GpuBackend {
    model: GpuModel,
    name: String,
}

impl GpuBackend {
    /// Opens GPU `ordinal` and uploads `model` with a KV cache of the model's context.
    pub fn open(model: &Model, ordinal: usize) -> Result<Self, ServerError> {
        let gpu = Gpu::open(ordinal).map_err(|e| ServerError::Gpu(e.to_string()))?;
        let name = gpu.info().name.clone();
        let ctx = model.config().context_len;
        let model = GpuModel::from_model(model, gpu, ctx).map_err(|e| ServerError::Gpu(e.to_string()))?;
        tracing::info!(gpu = %name, "model uploaded to the GPU");
        Ok(Self { model, name })
    }

    /// The GPU's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts a generation (its prompt runs now); the previous one is over.
    pub fn start(&mut self, prompt: &[u32], opts: GenerateOptions) -> sieve_engine::Result<GpuStream> {
        GpuSession::start(&mut self.model, prompt, opts)
    }

    /// Advances `stream`, the last one started.
    pub fn step(&mut self, stream: &mut GpuStream) -> sieve_engine::Result<Step> {
        stream.step(&mut self.model)
    }

    /// The dense reference on the GPU: the CPU measurement's prompt, steps and rounds, median
    /// round kept; no per-layer times (the step is one CUDA graph).
    pub fn dense_reference(&mut self) -> sieve_engine::Result<DenseReference> {
        let prompt = reference_prompt(self.model.shape().vocab_size);
        debug_assert_eq!(prompt.len(), PROMPT_TOKENS);
        let mut rounds = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let opts = GenerateOptions::new(STEPS + 1, SamplingParams::default(), Vec::new());
            let mut s = self.start(&prompt, opts)?;
            while matches!(self.step(&mut s)?, Step::Token(_)) {}
            let g = s.snapshot();
            rounds.push(DenseReference {
                decode_tok_s: g.decode_tok_s(),
                steps: g.timed_steps,
                attention_us: Vec::new(),
                mlp_us: Vec::new(),
                measured_at: SystemTime::now(),
                measured: Instant::now(),
            });
        }
        rounds.sort_by(|a, b| a.decode_tok_s.total_cmp(&b.decode_tok_s));
        Ok(rounds.swap_remove(ROUNDS / 2))
    }
}
