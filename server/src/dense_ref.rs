//! The dense reference a request's speed is compared with: measured on this server with the
//! same model and thread pool, a dense greedy decode of [`STEPS`] steps after a fixed prompt
//! of [`PROMPT_TOKENS`] tokens, timed per layer. Measured at start-up and again when stale and
//! the engine is idle, so it follows the machine's current speed.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sieve_engine::Model;
use sieve_engine::generate::{GenerateOptions, Session, Step};
use sieve_engine::sampling::SamplingParams;
use sieve_proto::v1;

/// Decode steps timed.
pub const STEPS: usize = 32;
/// Prompt length.
pub const PROMPT_TOKENS: usize = 16;

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
    /// Runs the measurement (about `STEPS` decode steps of wall time).
    pub fn measure(model: &Model) -> sieve_engine::Result<Self> {
        let vocab = model.config().vocab_size as u32;
        // A fixed, ordinary-looking prompt: ids spread over the vocabulary.
        let prompt: Vec<u32> = (0..PROMPT_TOKENS as u32).map(|i| (1000 + 977 * i) % vocab).collect();
        let opts = GenerateOptions::new(STEPS + 1, SamplingParams::default(), Vec::new());
        let mut session = Session::start(model, &prompt, opts)?.with_layer_timing();
        while matches!(session.step()?, Step::Token(_)) {}
        let per_step = |d: &[std::time::Duration], calls: usize| -> Vec<f64> {
            d.iter().map(|t| t.as_secs_f64() * 1e6 / calls.max(1) as f64).collect()
        };
        let (attention_us, mlp_us) = match session.layer_times() {
            Some(t) => (per_step(&t.attention, t.calls), per_step(&t.mlp, t.calls)),
            None => (Vec::new(), Vec::new()),
        };
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
