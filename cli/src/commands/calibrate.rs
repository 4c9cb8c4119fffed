//! `sieve calibrate`: activation statistics of the dense model on calibration text, written
//! as the profile that TEAL and CATS thresholds come from.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, bail};
use serde::Serialize;
use sieve_engine::calibrate::{build_profile, calibrate, self_generated};
use sieve_engine::profile::Profile;
use sieve_engine::profile::{default_profile_path, file_sha256};
use sieve_engine::tokenizer::Tokenizer;
use sieve_engine::{Model, Precision};
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

/// What a profile is calibrated on.
pub struct CalibrationSpec<'a> {
    /// Calibration text; `None`: text the model generates itself.
    pub corpus: Option<&'a Path>,
    pub tokens: usize,
    pub window: usize,
    pub greedy_tokens: usize,
    pub seed: u64,
}

/// Calibrates a profile of the model at `model_path` (histograms, thresholds, greedy tables),
/// with progress bars.
pub fn make_profile(model_path: &Path, tok: &Tokenizer, model: &Model, spec: &CalibrationSpec) -> Result<Profile> {
    let (sequences, source) = match spec.corpus {
        Some(path) => {
            let ids = tokenize_file(tok, path)?;
            if ids.len() < spec.tokens {
                bail!(
                    "corpus too short: {} has {} tokens, --tokens asks for {}",
                    path.display(),
                    ids.len(),
                    spec.tokens
                );
            }
            let seqs: Vec<Vec<u32>> = ids[..spec.tokens].chunks(spec.window).map(<[u32]>::to_vec).collect();
            (seqs, format!("corpus:{}", path.display()))
        }
        None => {
            let bar = super::progress(spec.tokens as u64, "generating calibration text");
            let seqs = self_generated(model, tok, spec.tokens, spec.window, spec.seed, |n| bar.inc(n as u64))?;
            bar.finish_and_clear();
            (seqs, "self-generated".to_string())
        }
    };
    let tokens: usize = sequences.iter().map(Vec::len).sum();
    let bar = super::progress(sequences.len() as u64, "calibrating");
    let observed = calibrate(model, &sequences, spec.greedy_tokens, || bar.inc(1))?;
    bar.finish_and_clear();
    let bar = super::progress(model.config().n_layers as u64, "greedy allocation");
    let profile = build_profile(model, &observed, file_sha256(model_path)?, source, tokens, || bar.inc(1))?;
    bar.finish_and_clear();
    Ok(profile)
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
    let spec = CalibrationSpec {
        corpus: a.corpus.as_deref(),
        tokens: a.tokens,
        window: a.window,
        greedy_tokens: a.greedy_tokens,
        seed: a.seed,
    };
    let profile = make_profile(model_path, &tok, &model, &spec)?;
    let (source, tokens) = (profile.source.clone(), profile.tokens);
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
