//! The dense reference a request's speed is compared with: measured on this server with the
//! same model and thread pool, [`ROUNDS`] dense greedy decodes of [`STEPS`] steps after a
//! fixed prompt of [`PROMPT_TOKENS`] tokens, timed per layer; the round of median speed is
//! kept, so one round disturbed by other work on the machine does not skew it. Measured at
//! start-up and again when stale and the engine is idle, so it follows the machine's speed.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sieve_engine::Model;
use sieve_engine::generate::{GenerateOptions, Session, Step};
use sieve_engine::sampling::SamplingParams;
use sieve_proto::v1;

/// Decode steps timed per round.
pub const STEPS: usize = 24;
/// Rounds measured; the median one is kept.
pub const ROUNDS: usize = 3;
/// Prompt length.
pub const PROMPT_TOKENS: usize = 16;

/// The measurement's fixed, ordinary-looking prompt: ids spread over the vocabulary.
pub fn reference_prompt(vocab_size: usize) -> Vec<u32> {
    let vocab = vocab_size.max(1) as u32;
    (0..PROMPT_TOKENS as u32).map(|i| (1000 + 977 * i) % vocab).collect()
}

/// A dense decode measurement.
#[derive(Debug, Clone)]
pub struct DenseReference {
    pub decode_tok_s: f64,
    pub steps: usize,
    /// Mean attention and MLP time per step and layer, microseconds.
    pub attention_us: Vec<f64>,
    pub mlp_us: Vec<f64>,
    pub measured_at: SystemTime,
    pub measured: Instant,
}

impl DenseReference {
    /// Runs the measurement (about `ROUNDS * STEPS` decode steps of wall time).
    pub fn measure(model: &Model) -> sieve_engine::Result<Self> {
        let mut rounds = (0..ROUNDS).map(|_| Self::round(model)).collect::<sieve_engine::Result<Vec<_>>>()?;
        rounds.sort_by(|a, b| a.decode_tok_s.total_cmp(&b.decode_tok_s));
        Ok(rounds.swap_remove(ROUNDS / 2))
    }

    fn round(model: &Model) -> sieve_engine::Result<Self> {
        let prompt = reference_prompt(model.config().vocab_size);
        let opts = GenerateOptions::new(STEPS + 1, SamplingParams::default(), Vec::new());
        let mut session = Session::start(model, &prompt, opts)?.with_layer_timing();
        while matches!(session.step()?, Step::Token(_)) {}
        let (attention_us, mlp_us) = session.layer_times().map(crate::report::per_step_us).unwrap_or_default();
        let g = session.finish();
        Ok(Self {
            decode_tok_s: g.decode_tok_s(),
            steps: g.timed_steps,
            attention_us,
            mlp_us,
            measured_at: SystemTime::now(),
            measured: Instant::now(),
        })
    }

    /// The wire form.
    pub fn to_wire(&self) -> v1::DenseReference {
        v1::DenseReference {
            decode_tok_s: self.decode_tok_s,
            steps: self.steps as u32,
            measured_at_unix_ms: self.measured_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        }
    }
}
