//! The generation loop: prefill the prompt, then decode token by token until a stop token,
//! the token budget or the end of the context, streaming each token to a callback.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::audit::MaskAudit;
use crate::error::{EngineError, Result};
use crate::kv_cache::KvCache;
use crate::model::{Hooks, LayerTimes, Logits, Model};
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

/// What one [`Session::step`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A new token; more may follow.
    Token(u32),
    /// The last token of the generation, followed by nothing (the budget or context is used).
    Last(u32, FinishReason),
    /// The generation ended without a new token (a stop token was chosen).
    Done(FinishReason),
}

/// A generation advanced one token at a time, so a scheduler can interleave several: the
/// prompt runs in [`Session::start`], each [`Session::step`] samples one token and runs the
/// forward pass that produces the next logits.
pub struct Session<'m> {
    model: &'m Model,
    opts: GenerateOptions,
    progress: Progress,
    cache: KvCache,
    logits: Vec<f32>,
    steps: usize,
    stats: Option<SparsityStats>,
    audit: Option<MaskAudit>,
    timing: Option<LayerTimes>,
}

impl<'m> Session<'m> {
    /// Validates the request and runs the prompt.
    pub fn start(model: &'m Model, prompt: &[u32], opts: GenerateOptions) -> Result<Self> {
        validate(model, prompt, &opts)?;
        let sampler = Sampler::new(opts.sampling)?;
        let mut cache = model.new_cache();
        let t0 = Instant::now();
        let mut hooks = Hooks { plan: opts.sparsity.as_ref(), ..Hooks::default() };
        let logits = model.forward_with(prompt, &mut cache, Logits::Last, &mut hooks)?;
        let prefill = t0.elapsed();
        let stats = opts.sparsity.as_ref().map(|_| SparsityStats::new(model.config().n_layers));
        let audit = if opts.audit_every > 0 { opts.audit.clone() } else { None };
        Ok(Self {
            model,
            progress: Progress::new(sampler, prompt.len(), prefill),
            cache,
            logits,
            steps: 0,
            stats,
            audit,
            timing: None,
            opts,
        })
    }

    /// Also measures attention and MLP time per layer on the timed steps (a clock read per
    /// layer half; audited steps are not timed).
    pub fn with_layer_timing(mut self) -> Self {
        self.timing = Some(LayerTimes::default());
        self
    }

    /// Samples the next token and, unless the generation ends with it, runs it through the
    /// model. Calling it again after the end returns the same [`Step::Done`].
    pub fn step(&mut self) -> Result<Step> {
        let context_full = self.cache.len() >= self.cache.max_len();
        let next = match self.progress.choose(&self.logits, &self.opts, context_full) {
            ControlFlow::Break(step) => return Ok(step),
            ControlFlow::Continue(next) => next,
        };
        self.steps += 1;
        let plan = self.opts.sparsity.as_ref();
        let every = self.opts.audit_every;
        if let Some(a) = self.audit.as_mut().filter(|_| self.steps.is_multiple_of(every)) {
            let mut hooks = Hooks { plan, audit: Some(a), accuracy_path: true, ..Hooks::default() };
            self.logits = self.model.forward_with(&[next], &mut self.cache, Logits::Last, &mut hooks)?;
            return Ok(Step::Token(next));
        }
        let t = Instant::now();
        let mut hooks = Hooks { plan, stats: self.stats.as_mut(), timing: self.timing.as_mut(), ..Hooks::default() };
        self.logits = self.model.forward_with(&[next], &mut self.cache, Logits::Last, &mut hooks)?;
        self.progress.timed(t.elapsed());
        Ok(Step::Token(next))
    }

    /// Ends the generation early (the caller stopped it).
    pub fn cancel(&mut self) {
        self.progress.cancel();
    }

    /// New tokens so far.
    pub fn tokens(&self) -> &[u32] {
        self.progress.tokens()
    }

    /// The options the session runs under.
    pub fn options(&self) -> &GenerateOptions {
        &self.opts
    }

    /// Per-layer times of the timed steps, when asked for with [`Session::with_layer_timing`].
    pub fn layer_times(&self) -> Option<&LayerTimes> {
        self.timing.as_ref()
    }

    /// A copy of the generation so far (finish `Cancelled` if it has not ended).
    pub fn snapshot(&self) -> Generation {
        self.progress.generation(self.stats.clone(), self.audit.clone())
    }

    /// The generation so far (finish `Cancelled` if it has not ended).
    pub fn finish(self) -> Generation {
        self.progress.generation(self.stats, self.audit)
    }
}

/// What a session has produced so far, shared by the CPU and GPU sessions: the sampler, the
/// new tokens, how the generation ended, and its timing.
pub(crate) struct Progress {
    sampler: Sampler,
    tokens: Vec<u32>,
    finish: Option<FinishReason>,
    prompt_tokens: usize,
    prefill: Duration,
    decode: Duration,
    timed_steps: usize,
}

impl Progress {
    /// A generation whose prompt of `prompt_tokens` took `prefill`.
    pub(crate) fn new(sampler: Sampler, prompt_tokens: usize, prefill: Duration) -> Self {
        Self {
            sampler,
            tokens: Vec::new(),
            finish: None,
            prompt_tokens,
            prefill,
            decode: Duration::ZERO,
            timed_steps: 0,
        }
    }

    /// The token-choosing half of a decode step: samples the next token from `logits` and
    /// records it. `Break` when the generation ends (a stop token; the budget, or a full
    /// context `context_full`, after this token; or it had already ended), `Continue(next)`
    /// when `next` must be run through the model.
    pub(crate) fn choose(
        &mut self,
        logits: &[f32],
        opts: &GenerateOptions,
        context_full: bool,
    ) -> ControlFlow<Step, u32> {
        if let Some(reason) = self.finish {
            return ControlFlow::Break(Step::Done(reason));
        }
        let next = self.sampler.sample(logits);
        if opts.stop_ids.contains(&next) {
            self.finish = Some(FinishReason::Stop);
            return ControlFlow::Break(Step::Done(FinishReason::Stop));
        }
        self.tokens.push(next);
        let end = if self.tokens.len() >= opts.max_tokens {
            Some(FinishReason::Length)
        } else if context_full {
            Some(FinishReason::ContextFull)
        } else {
            None
        };
        match end {
            Some(reason) => {
                self.finish = Some(reason);
                ControlFlow::Break(Step::Last(next, reason))
            }
            None => ControlFlow::Continue(next),
        }
    }

    /// Adds one timed decode step.
    pub(crate) fn timed(&mut self, d: Duration) {
        self.decode += d;
        self.timed_steps += 1;
    }

    /// Ends the generation early (the caller stopped it).
    pub(crate) fn cancel(&mut self) {
        self.finish.get_or_insert(FinishReason::Cancelled);
    }

    /// New tokens so far.
    pub(crate) fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The generation so far (finish `Cancelled` if it has not ended).
    pub(crate) fn generation(&self, stats: Option<SparsityStats>, audit: Option<MaskAudit>) -> Generation {
        Generation {
            tokens: self.tokens.clone(),
            finish: self.finish.unwrap_or(FinishReason::Cancelled),
            prompt_tokens: self.prompt_tokens,
            prefill: self.prefill,
            decode: self.decode,
            timed_steps: self.timed_steps,
            stats,
            audit,
        }
    }
}

/// Generates from `prompt`; `on_token` sees each new token id as it is chosen and may stop
/// the generation by returning `ControlFlow::Break`.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<Generation> {
    let mut session = Session::start(model, prompt, opts.clone())?;
    loop {
        let (token, last) = match session.step()? {
            Step::Token(t) => (t, false),
            Step::Last(t, _) => (t, true),
            Step::Done(_) => break,
        };
        if on_token(token).is_break() {
            session.cancel();
            break;
        }
        if last {
            break;
        }
    }
    Ok(session.finish())
}
