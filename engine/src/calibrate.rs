//! Calibration runs: the dense model over calibration text (a corpus, or text the model
//! writes itself from several seeded starts), every tapped activation into a [`Calibrator`],
//! then the greedy tables and the down projections' column norms into the [`Profile`].

use std::ops::ControlFlow;

use crate::error::{EngineError, Result};
use crate::generate::{GenerateOptions, generate};
use crate::greedy::{GreedySamples, greedy_tables};
use crate::model::{Hooks, Logits, Model};
use crate::profile::{Calibrator, Profile};
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

/// What a calibration pass observed: magnitude histograms of every tap, and the inputs the
/// greedy allocation is measured on.
pub struct Observed {
    pub histograms: Calibrator,
    pub samples: GreedySamples,
}

/// Runs the dense model over `sequences` (each from an empty cache), histograms every tap
/// and keeps the first `greedy_tokens` positions of the first sequence for the greedy
/// allocation; `on_sequence` is called after each.
pub fn calibrate(
    model: &Model,
    sequences: &[Vec<u32>],
    greedy_tokens: usize,
    mut on_sequence: impl FnMut(),
) -> Result<Observed> {
    let layers = model.config().n_layers;
    let d = model.config().d_model;
    let mut cal = Calibrator::new(layers);
    let mut samples = GreedySamples::new(layers, greedy_tokens);
    let mut cache = model.new_cache();
    for seq in sequences {
        if seq.is_empty() {
            continue;
        }
        cache.clear();
        let mut observe = |l: usize, tap: Tap, x: &[f32]| {
            cal.observe(l, tap, x);
            samples.observe(l, tap, x, d);
        };
        let mut hooks = Hooks { observe: Some(&mut observe), ..Hooks::default() };
        model.forward_with(seq, &mut cache, Logits::Last, &mut hooks)?;
        on_sequence();
    }
    Ok(Observed { histograms: cal, samples })
}

/// The profile of a calibration pass: quantiles, TEAL's greedy tables (`on_layer` is called
/// after each layer's table) and the down projections' column norms.
pub fn build_profile(
    model: &Model,
    observed: &Observed,
    model_sha256: String,
    source: String,
    tokens: usize,
    on_layer: impl FnMut(),
) -> Result<Profile> {
    let mut profile = observed.histograms.finish(model_sha256, model.config().name.clone(), source, tokens);
    profile.greedy = greedy_tables(model, &profile, &observed.samples, on_layer)?;
    profile.down_col_norms = model.weights().layers.iter().map(|w| column_norms(&w.w_down)).collect();
    Ok(profile)
}

/// ||W[:, i]|| for every input column i.
fn column_norms(w: &crate::weights::Linear) -> Vec<f32> {
    let mut sums = vec![0f64; w.cols()];
    let mut row = vec![0f32; w.cols()];
    for r in 0..w.rows() {
        w.row_f32(r, &mut row);
        for (s, v) in sums.iter_mut().zip(&row) {
            *s += (*v as f64) * (*v as f64);
        }
    }
    sums.into_iter().map(|s| s.sqrt() as f32).collect()
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
        let sampling = SamplingParams { temperature: 0.8, top_k: 0, top_p: 0.95, seed: seed.wrapping_add(i) };
        let opts = GenerateOptions::new(room, sampling, tok.stop_ids().to_vec());
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
