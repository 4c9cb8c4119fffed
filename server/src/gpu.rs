//! The engine thread's GPU backend (feature `cuda`): the model's weights in fp16 on an NVIDIA
//! GPU with a KV cache per stream slot, generations decoded there taking turns token by token
//! (the scheduler queues those beyond the slots), and the dense reference measured there, so
//! a stream's speedup compares like with like.

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
    /// Sequences of the model no stream holds.
    free: Vec<usize>,
}

impl GpuBackend {
    /// Opens GPU `ordinal` and uploads `model` with `streams` KV caches of the model's context.
    pub fn open(model: &Model, ordinal: usize, streams: usize) -> Result<Self, ServerError> {
        let gpu = Gpu::open(ordinal).map_err(|e| ServerError::Gpu(e.to_string()))?;
        let name = gpu.info().name.clone();
        let ctx = model.config().context_len;
        let gpu_err = |e: sieve_engine::EngineError| ServerError::Gpu(e.to_string());
        let mut model = GpuModel::from_model(model, gpu, ctx).map_err(gpu_err)?;
        model.set_sequences(streams.max(1)).map_err(gpu_err)?;
        tracing::info!(gpu = %name, streams = model.sequences(), "model uploaded to the GPU");
        let free = (0..model.sequences()).rev().collect();
        Ok(Self { model, name, free })
    }

    /// Whether a stream slot is free for [`GpuBackend::start`].
    pub fn has_free_slot(&self) -> bool {
        !self.free.is_empty()
    }

    /// The GPU's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts a generation in a free slot (its prompt runs now); the slot stays taken until
    /// [`GpuBackend::finish`].
    pub fn start(&mut self, prompt: &[u32], opts: GenerateOptions) -> sieve_engine::Result<GpuStream> {
        let Some(seq) = self.free.pop() else {
            return Err(sieve_engine::EngineError::InvalidInput("every GPU stream slot is busy".into()));
        };
        let started = self.model.select(seq).and_then(|()| GpuSession::start(&mut self.model, prompt, opts));
        if started.is_err() {
            self.free.push(seq);
        }
        started
    }

    /// Advances `stream` by one token.
    pub fn step(&mut self, stream: &mut GpuStream) -> sieve_engine::Result<Step> {
        stream.step(&mut self.model)
    }

    /// Frees the slot of an ended (or abandoned) stream.
    pub fn finish(&mut self, stream: &GpuStream) {
        let seq = stream.sequence();
        if !self.free.contains(&seq) {
            self.free.push(seq);
        }
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
            let ran = (|| {
                while matches!(self.step(&mut s)?, Step::Token(_)) {}
                Ok::<_, sieve_engine::EngineError>(())
            })();
            self.finish(&s);
            ran?;
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
