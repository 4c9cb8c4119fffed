//! Calibration runs: the dense model over calibration text (a corpus, or text the model
//! writes itself from several seeded starts), every tapped activation into a [`Calibrator`].

use std::ops::ControlFlow;

use crate::error::{EngineError, Result};
use crate::generate::{GenerateOptions, generate};
use crate::model::{Hooks, Logits, Model};
use crate::profile::Calibrator;
use crate::sampling::SamplingParams;
use crate::sparsity::Tap;
use crate::tokenizer::Tokenizer;

/// Openings for self-generated calibration text: varied registers, so the statistics are
/// not those of one topic.
const STARTS: [&str; 8] = [
    "The history of the city begins",
    "In this tutorial we will write a small program that",
    "Dear committee members,",
    "The results of the experiment show that",
    "Once upon a time, in a village by the sea,",
    "The main causes of the war were",
    "To cook the perfect rice, first",
    "Photosynthesis is the process by which",
];

/// Runs the dense model over `sequences` (each from an empty cache) and histograms every
/// tap; `on_sequence` is called after each.
pub fn calibrate(model: &Model, sequences: &[Vec<u32>], mut on_sequence: impl FnMut()) -> Result<Calibrator> {
    let mut cal = Calibrator::new(model.config().n_layers);
    let mut cache = model.new_cache();
    for seq in sequences {
        if seq.is_empty() {
            continue;
        }
        cache.clear();
        let mut observe = |l: usize, tap: Tap, x: &[f32]| cal.observe(l, tap, x);
        let mut hooks = Hooks { observe: Some(&mut observe), ..Hooks::default() };
        model.forward_with(seq, &mut cache, Logits::Last, &mut hooks)?;
        on_sequence();
    }
    Ok(cal)
}

/// About `tokens` tokens of text the model writes itself (temperature 0.8, top-p 0.95, seeded),
/// as sequences of at most `window` tokens (prompt included).
pub fn self_generated(
    model: &Model,
    tok: &Tokenizer,
    tokens: usize,
    window: usize,
    seed: u64,
    mut on_sequence: impl FnMut(usize),
) -> Result<Vec<Vec<u32>>> {
    if tokens == 0 || window < 16 {
        return Err(EngineError::InvalidInput(
            "self-generated calibration needs tokens > 0 and a window of at least 16".into(),
        ));
    }
    let mut out = Vec::new();
    let mut total = 0;
    let mut i = 0u64;
    while total < tokens {
        let start = STARTS[(i as usize) % STARTS.len()];
        let prompt = tok.encode(start)?;
        let room = (tokens - total).min(window).saturating_sub(prompt.len()).max(1);
        let opts = GenerateOptions {
            max_tokens: room,
            sampling: SamplingParams { temperature: 0.8, top_k: 0, top_p: 0.95, seed: seed.wrapping_add(i) },
            stop_ids: tok.stop_ids().to_vec(),
            sparsity: None,
        };
        let g = generate(model, &prompt, &opts, |_| ControlFlow::Continue(()))?;
        let mut seq = prompt;
        seq.extend(&g.tokens);
        total += seq.len();
        on_sequence(seq.len());
        out.push(seq);
        i += 1;
    }
    Ok(out)
}
