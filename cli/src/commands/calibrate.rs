//! `sieve calibrate`: activation statistics of the dense model on calibration text, written
//! as the profile that TEAL and CATS thresholds come from.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;
use sieve_engine::Precision;
use sieve_engine::calibrate::{build_profile, calibrate, self_generated};
use sieve_engine::profile::{default_profile_path, file_sha256};
use sieve_eval::corpus::tokenize_file;

/// Arguments of `sieve calibrate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Calibration text (default: text the model generates itself from seeded starts).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Tokens of calibration text.
    #[arg(long, default_value_t = 50_000)]
    tokens: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Positions of the first sequence that TEAL's greedy allocation measures errors on.
    #[arg(long, default_value_t = sieve_engine::greedy::SAMPLE_TOKENS)]
    greedy_tokens: usize,
    /// Seed of self-generated text.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the profile (default: the cache's profile for this model).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Output {
    profile: String,
    source: String,
    tokens: usize,
    seconds: f64,
}

/// Runs `sieve calibrate`.
pub fn run(model_path: &Path, a: Args) -> Result<()> {
    if a.tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    if a.window < 16 {
        bail!("--window must be at least 16");
    }
    if a.greedy_tokens == 0 || a.greedy_tokens > a.window {
        bail!("--greedy-tokens must be between 1 and --window ({})", a.window);
    }
    let t0 = Instant::now();
    let (tok, model) = super::load(model_path, Precision::Fast)?;
    if a.window > model.config().context_len {
        bail!("--window {} exceeds the model's context of {}", a.window, model.config().context_len);
    }
    let (sequences, source) = match &a.corpus {
        Some(path) => {
            let ids = tokenize_file(&tok, path)?;
            if ids.len() < a.tokens {
                bail!("corpus too short: {} has {} tokens, --tokens asks for {}", path.display(), ids.len(), a.tokens);
            }
            let seqs: Vec<Vec<u32>> = ids[..a.tokens].chunks(a.window).map(<[u32]>::to_vec).collect();
            (seqs, format!("corpus:{}", path.display()))
        }
        None => {
            let bar = super::progress(a.tokens as u64, "generating calibration text");
            let seqs = self_generated(&model, &tok, a.tokens, a.window, a.seed, |n| bar.inc(n as u64))?;
            bar.finish_and_clear();
            (seqs, "self-generated".to_string())
        }
    };
    let tokens: usize = sequences.iter().map(Vec::len).sum();
    let bar = super::progress(sequences.len() as u64, "calibrating");
    let observed = calibrate(&model, &sequences, a.greedy_tokens, || bar.inc(1))?;
    bar.finish_and_clear();
    let bar = super::progress(model.config().n_layers as u64, "greedy allocation");
    let profile = build_profile(&model, &observed, file_sha256(model_path)?, source.clone(), tokens, || bar.inc(1))?;
    bar.finish_and_clear();
    let out = a.out.unwrap_or_else(|| default_profile_path(model_path));
    profile.save(&out)?;
    let o = Output { profile: out.display().to_string(), source, tokens, seconds: t0.elapsed().as_secs_f64() };
    if a.json {
        super::print_json(&o)
    } else {
        println!("profile {} ({} tokens, {}) in {:.1} s", o.profile, o.tokens, o.source, o.seconds);
        Ok(())
    }
}
