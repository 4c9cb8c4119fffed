//! The generation loop: prefill the prompt, then decode token by token until a stop token,
//! the token budget or the end of the context, streaming each token to a callback.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audit::MaskAudit;
use crate::error::{EngineError, Result};
use crate::model::{Hooks, Logits, Model};
use crate::sampling::{Sampler, SamplingParams};
use crate::sparsity::{SparsityPlan, SparsityStats, check_target};

/// What a generation asks for.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Most new tokens; at least 1, at most the model's context.
    pub max_tokens: usize,
    /// Token choice.
    pub sampling: SamplingParams,
    /// Token ids that end the generation (not emitted).
    pub stop_ids: Vec<u32>,
    /// Activation sparsity applied at every step (dense when `None`).
    pub sparsity: Option<SparsityPlan>,
    /// Mask audit of every `audit_every`-th decode step (0: none). Audited steps run the
    /// accuracy path plus the dense MLP, so they are left out of the decode timing.
    pub audit_every: usize,
    /// The references to audit against (needed when `audit_every > 0`).
    pub audit: Option<MaskAudit>,
}

impl GenerateOptions {
    /// Greedy or sampled generation of at most `max_tokens`, dense, no audit.
    pub fn new(max_tokens: usize, sampling: SamplingParams, stop_ids: Vec<u32>) -> Self {
        Self { max_tokens, sampling, stop_ids, sparsity: None, audit_every: 0, audit: None }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_tokens` were produced.
    Length,
    /// The context window is full.
    ContextFull,
    /// The callback asked to stop.
    Cancelled,
}

/// The result of a generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// New token ids (stop token excluded).
    pub tokens: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Time to run the prompt and produce the first logits.
    pub prefill: Duration,
    /// Time spent producing the tokens after the first, audited steps excluded.
    pub decode: Duration,
    /// Decode steps timed (audited steps excluded).
    pub timed_steps: usize,
    /// What the plan dropped over the decode steps (when a plan was given).
    pub stats: Option<SparsityStats>,
    /// The audit of the sampled steps (when asked for).
    #[serde(skip)]
    pub audit: Option<MaskAudit>,
}

impl Generation {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }
    /// Decode steps per second (forward passes after the prefill).
    pub fn decode_tok_s(&self) -> f64 {
        let steps = self.timed_steps;
        if steps == 0 { 0.0 } else { steps as f64 / self.decode.as_secs_f64().max(1e-9) }
    }
}

/// Checks a prompt and options against the model before any work.
pub fn validate(model: &Model, prompt: &[u32], opts: &GenerateOptions) -> Result<()> {
    let ctx = model.config().context_len;
    if prompt.is_empty() {
        return Err(EngineError::InvalidInput("the prompt is empty".into()));
    }
    if prompt.len() >= ctx {
        return Err(EngineError::ContextOverflow { needed: prompt.len() + 1, max: ctx });
    }
    if opts.max_tokens == 0 {
        return Err(EngineError::InvalidInput("max_tokens must be at least 1".into()));
    }
    if opts.max_tokens > ctx {
        return Err(EngineError::InvalidInput(format!(
            "max_tokens {} exceeds the model's context of {ctx}",
            opts.max_tokens
        )));
    }
    if opts.audit_every > 0 && opts.audit.is_none() {
        return Err(EngineError::InvalidInput("an audit rate was given without audit references".into()));
    }
    if let Some(plan) = &opts.sparsity {
        check_target(plan.target)?;
        if plan.layers.len() != model.config().n_layers {
            return Err(EngineError::InvalidInput(format!(
                "the sparsity plan has {} layers, the model {}",
                plan.layers.len(),
                model.config().n_layers
            )));
        }
    }
    opts.sampling.validate()
}

/// Generates from `prompt`; `on_token` sees each new token id as it is chosen and may stop
/// the generation by returning `ControlFlow::Break`.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    validate(model, prompt, opts)?;
    let mut sampler = Sampler::new(opts.sampling)?;
    let mut cache = model.new_cache();
    let t0 = Instant::now();
    let plan = opts.sparsity.as_ref();
    let mut hooks = Hooks { plan, ..Hooks::default() };
    let mut logits = model.forward_with(prompt, &mut cache, Logits::Last, &mut hooks)?;
    let prefill = t0.elapsed();
    let mut stats = plan.map(|_| SparsityStats::new(model.config().n_layers));
    let mut audit = if opts.audit_every > 0 { opts.audit.clone() } else { None };
    let (mut decode, mut timed_steps, mut step) = (Duration::ZERO, 0usize, 0usize);
    let mut tokens = Vec::new();
    let finish = loop {
        let next = sampler.sample(&logits);
        if opts.stop_ids.contains(&next) {
            break FinishReason::Stop;
        }
        tokens.push(next);
        if on_token(next).is_break() {
            break FinishReason::Cancelled;
        }
        if tokens.len() >= opts.max_tokens {
            break FinishReason::Length;
        }
        if cache.len() >= cache.max_len() {
            break FinishReason::ContextFull;
        }
        step += 1;
        if let Some(a) = audit.as_mut().filter(|_| step % opts.audit_every == 0) {
            let mut hooks = Hooks { plan, audit: Some(a), accuracy_path: true, ..Hooks::default() };
            logits = model.forward_with(&[next], &mut cache, Logits::Last, &mut hooks)?;
            continue;
        }
        let t = Instant::now();
        let mut hooks = Hooks { plan, stats: stats.as_mut(), ..Hooks::default() };
        logits = model.forward_with(&[next], &mut cache, Logits::Last, &mut hooks)?;
        decode += t.elapsed();
        timed_steps += 1;
    };
    Ok(Generation { tokens, finish, prompt_tokens: prompt.len(), prefill, decode, timed_steps, stats, audit })
}
