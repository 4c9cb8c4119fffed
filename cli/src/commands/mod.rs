//! One module per subcommand, plus the loading helpers they share.

pub mod bench;
pub mod calibrate;
pub mod client;
pub mod eval;
pub mod generate;
pub mod gpu_bench;
pub mod gpu_decode;
pub mod info;
pub mod loadtest;
pub mod masks_table;
pub mod report;
pub mod report_md;
pub mod serve;
pub mod tokenize;
pub mod tradeoff;
pub mod train;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use sieve_engine::gguf::GgufFile;
use sieve_engine::profile::{Profile, default_profile_path, file_sha256};
use sieve_engine::sparsity::{Method, SparsityPlan, check_target};
use sieve_engine::tokenizer::Tokenizer;
use sieve_engine::{Model, Precision};
use sieve_predictor::PredictorSet;
use sieve_predictor::store::predictor_dir;

/// Loads the tokenizer and the model at `precision`.
pub fn load(path: &Path, precision: Precision) -> Result<(Tokenizer, Model)> {
    let t0 = Instant::now();
    let mut gguf = GgufFile::open(path).with_context(|| format!("loading model {}", path.display()))?;
    let tokenizer = Tokenizer::from_gguf(&gguf).context("building the tokenizer from the GGUF metadata")?;
    let model = Model::from_gguf(&mut gguf, precision).with_context(|| format!("loading model {}", path.display()))?;
    tracing::info!(ms = t0.elapsed().as_millis() as u64, ?precision, "model loaded");
    Ok((tokenizer, model))
}

/// The sparsity flags shared by the commands that run the model.
#[derive(Debug, clap::Args)]
pub struct SparsityArgs {
    /// Sparsity method: dense, teal (greedy allocation), teal-uniform, cats, cett (oracle),
    /// predictor or predictor-verify (trained predictors, see `sieve train-predictors`).
    #[arg(long, default_value = "dense")]
    pub method: Method,
    /// Target sparsity in [0, 1) for the method.
    #[arg(long, default_value_t = 0.0)]
    pub sparsity: f32,
    /// Calibration profile (default: the one `sieve calibrate` wrote for this model).
    #[arg(long)]
    pub profile: Option<std::path::PathBuf>,
    /// Predictor set of the predictor methods (default: the one `sieve train-predictors`
    /// wrote beside the profile).
    #[arg(long)]
    pub predictors: Option<std::path::PathBuf>,
    /// With a lookahead predictor set (`train-predictors --tap lookahead`), on decode: make
    /// each layer's proposal while the previous layer's MLP runs, on the free core (on), or
    /// just before its own MLP (off).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub lookahead_overlap: Switch,
}

/// An on/off command-line setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl SparsityArgs {
    /// The plan these flags ask for, `None` for dense.
    pub fn plan(&self, model_path: &Path, model: &Model) -> Result<Option<SparsityPlan>> {
        check_target(self.sparsity)?;
        if self.method == Method::Dense {
            return Ok(None);
        }
        let profile = load_profile(model_path, model, self.profile.as_deref())?;
        let predictors = if self.method.needs_predictors() {
            Some(Arc::new(load_predictors(model_path, model, self.profile.as_deref(), self.predictors.as_deref())?))
        } else {
            None
        };
        let mut plan = profile.plan_with_predictors(self.method, self.sparsity, predictors)?;
        plan.lookahead_overlap = self.lookahead_overlap == Switch::On;
        Ok(Some(plan))
    }
}

/// The predictor set at `dir`, or by default the one beside the profile; checked against
/// the model.
pub fn load_predictors(
    model_path: &Path,
    model: &Model,
    profile: Option<&Path>,
    dir: Option<&Path>,
) -> Result<PredictorSet> {
    let dir = match dir {
        Some(d) => d.to_path_buf(),
        None => {
            let profile = profile.map(Path::to_path_buf).unwrap_or_else(|| default_profile_path(model_path));
            predictor_dir(profile.parent().unwrap_or(Path::new(".")))
        }
    };
    let cfg = model.config();
    let sha = file_sha256(model_path)?;
    Ok(PredictorSet::load(&dir, &sha, cfg.n_layers, cfg.d_model, cfg.d_ff)?)
}

/// The calibration profile at `profile`, or by default the one `sieve calibrate` wrote for
/// this model; checked against the model.
pub fn load_profile(model_path: &Path, model: &Model, profile: Option<&Path>) -> Result<Profile> {
    let path = profile.map(Path::to_path_buf).unwrap_or_else(|| default_profile_path(model_path));
    let sha = file_sha256(model_path)?;
    Ok(Profile::load(&path, &sha, model.config())?)
}

/// Parses `METHOD:SPARSITY` (e.g. `cats:0.5`; a bare method means sparsity 0), naming `flag`
/// in errors.
pub fn parse_method_at(flag: &str, s: &str) -> Result<(Method, f32)> {
    let (m, t) = s.split_once(':').unwrap_or((s, "0"));
    let method: Method = m.parse().with_context(|| format!("{flag} {s}"))?;
    let target: f32 = t.parse().with_context(|| format!("{flag} {s}: sparsity '{t}' is not a number"))?;
    check_target(target).with_context(|| format!("{flag} {s}"))?;
    Ok((method, target))
}

/// Loads only the tokenizer.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let gguf = GgufFile::open(path).with_context(|| format!("loading model {}", path.display()))?;
    Tokenizer::from_gguf(&gguf).context("building the tokenizer from the GGUF metadata")
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}
