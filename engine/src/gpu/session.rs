//! A generation on the GPU advanced one token at a time, as [`crate::generate::Session`] is on
//! the CPU, so a server can stream it: the prompt runs in [`GpuSession::start`] (one graph
//! replay per prompt token), each [`GpuSession::step`] samples one token on the host from the
//! downloaded logits and replays the step graph for it. The session owns no device memory: it
//! runs on the sequence of the [`GpuModel`] that was current when it started (one KV cache
//! each), so sessions on different sequences of one model can take turns step by step; the
//! caller passes that model to every call.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::error::{EngineError, Result};
use crate::generate::{GenerateOptions, Generation, Progress, Step};
use crate::sampling::Sampler;

use super::{GpuModel, GpuPlan};

/// One generation on a [`GpuModel`].
pub struct GpuSession {
    /// The model's sequence this session decodes on.
    seq: usize,
    plan: GpuPlan,
    opts: GenerateOptions,
    progress: Progress,
    logits: Vec<f32>,
}

impl GpuSession {
    /// Checks the request against the GPU model (prompt, options, and a plan the GPU can run:
    /// no mask audit, which needs the CPU's dense MLP), restarts the model's current sequence
    /// and runs the prompt on it.
    pub fn start(gm: &mut GpuModel, prompt: &[u32], opts: GenerateOptions) -> Result<Self> {
        if prompt.is_empty() {
            return Err(EngineError::InvalidInput("the prompt is empty".into()));
        }
        if prompt.len() >= gm.max_len() {
            return Err(EngineError::ContextOverflow { needed: prompt.len() + 1, max: gm.max_len() });
        }
        if opts.max_tokens == 0 {
            return Err(EngineError::InvalidInput("max_tokens must be at least 1".into()));
        }
        if opts.audit_every > 0 {
            return Err(EngineError::InvalidInput(
                "the mask audit runs on the CPU only (it needs the dense MLP); decode on the CPU to audit".into(),
            ));
        }
        let plan = match &opts.sparsity {
            Some(p) => GpuPlan::from_plan(p)?,
            None => GpuPlan::dense(gm.shape().n_layers),
        };
        let sampler = Sampler::new(opts.sampling)?;
        gm.reset();
        let t0 = Instant::now();
        let mut logits = Vec::new();
        for &t in prompt {
            logits = gm.step(t, &plan)?;
        }
        Ok(Self { seq: gm.current(), plan, opts, progress: Progress::new(sampler, prompt.len(), t0.elapsed()), logits })
    }

    /// Samples the next token and, unless the generation ends with it, runs it through `gm`
    /// (the model the session started on). After the end it returns the same [`Step::Done`].
    pub fn step(&mut self, gm: &mut GpuModel) -> Result<Step> {
        gm.select(self.seq)?;
        let context_full = gm.position() >= gm.max_len();
        let next = match self.progress.choose(&self.logits, &self.opts, context_full) {
            ControlFlow::Break(step) => return Ok(step),
            ControlFlow::Continue(next) => next,
        };
        let t = Instant::now();
        self.logits = gm.step(next, &self.plan)?;
        self.progress.timed(t.elapsed());
        Ok(Step::Token(next))
    }

    /// The model's sequence this session decodes on.
    pub fn sequence(&self) -> usize {
        self.seq
    }

    /// Ends the generation early (the caller stopped it).
    pub fn cancel(&mut self) {
        self.progress.cancel();
    }

    /// The options the session runs under.
    pub fn options(&self) -> &GenerateOptions {
        &self.opts
    }

    /// A copy of the generation so far (finish `Cancelled` if it has not ended; no sparsity
    /// statistics or audit: the GPU step does not count masks).
    pub fn snapshot(&self) -> Generation {
        self.progress.generation(None, None)
    }
}
