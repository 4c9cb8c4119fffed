//! What the server loads at start: tokenizer and model, the calibration profile and the
//! predictor set when present, and which methods they make available.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sieve_engine::gguf::GgufFile;
use sieve_engine::profile::{Profile, default_profile_path, file_sha256};
use sieve_engine::sparsity::{METHODS, Method, SparsityPlan};
use sieve_engine::tokenizer::Tokenizer;
use sieve_engine::{Config, Model};
use sieve_predictor::PredictorSet;
use sieve_predictor::store::predictor_dir;

use crate::config::ServerConfig;
use crate::error::ServerError;

/// A file the server looked for: loaded, or why not.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// Where it was looked for.
    pub path: PathBuf,
    /// The file, or the reason it is not there (with the command that makes it).
    pub value: Result<Arc<T>, String>,
}

/// The read-only side of the server, shared by the RPC handlers and the engine thread.
pub struct Assets {
    pub model_path: PathBuf,
    pub model_sha256: String,
    pub config: Config,
    pub precision: sieve_engine::Precision,
    pub tokenizer: Tokenizer,
    pub profile: Loaded<Profile>,
    pub predictors: Loaded<PredictorSet>,
}

impl Assets {
    /// Loads everything `cfg` names; a missing profile or predictor set only makes the methods
    /// that need it unavailable.
    pub fn load(cfg: &ServerConfig) -> Result<(Assets, Model), ServerError> {
        let mut gguf = GgufFile::open(&cfg.model)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let model = Model::from_gguf(&mut gguf, cfg.precision)?;
        let sha = file_sha256(&cfg.model)?;
        let config = model.config().clone();
        let profile_path = cfg.profile.clone().unwrap_or_else(|| default_profile_path(&cfg.model));
        let profile = Loaded {
            value: Profile::load(&profile_path, &sha, &config).map(Arc::new).map_err(|e| e.to_string()),
            path: profile_path.clone(),
        };
        let dir =
            cfg.predictors.clone().unwrap_or_else(|| predictor_dir(profile_path.parent().unwrap_or(Path::new("."))));
        let predictors = Loaded {
            value: PredictorSet::load(&dir, &sha, config.n_layers, config.d_model, config.d_ff)
                .map(Arc::new)
                .map_err(|e| e.to_string()),
            path: dir,
        };
        for (what, err) in [("profile", profile.value.as_ref().err()), ("predictors", predictors.value.as_ref().err())]
        {
            if let Some(e) = err {
                tracing::warn!("{what} not loaded: {e}");
            }
        }
        let assets = Assets {
            model_path: cfg.model.clone(),
            model_sha256: sha,
            config,
            precision: cfg.precision,
            tokenizer,
            profile,
            predictors,
        };
        // Built at start, so that no request's first decode step pays for them.
        model.prepare_decode();
        for m in METHODS {
            if let Ok(Some(plan)) = assets.plan(m, 0.5) {
                model.prepare_sparse(&plan)?;
            }
        }
        Ok((assets, model))
    }

    /// Why `method` cannot run here, or `None` when it can.
    pub fn unavailable(&self, method: Method) -> Option<String> {
        if method == Method::Dense {
            return None;
        }
        if let Err(e) = &self.profile.value {
            return Some(format!("{method} needs a calibration profile: {e}"));
        }
        match &self.predictors.value {
            Err(e) if method.needs_predictors() => Some(format!("{method} needs trained predictors: {e}")),
            _ => None,
        }
    }

    /// The plan of `method` at `target`; `None` for dense.
    pub fn plan(&self, method: Method, target: f32) -> Result<Option<SparsityPlan>, String> {
        if method == Method::Dense {
            return Ok(None);
        }
        if let Some(why) = self.unavailable(method) {
            return Err(why);
        }
        let profile = self.profile.value.as_ref().map_err(Clone::clone)?;
        let predictors = self.predictors.value.as_ref().ok().cloned().filter(|_| method.needs_predictors());
        profile.plan_with_predictors(method, target, predictors).map(Some).map_err(|e| e.to_string())
    }

    /// The profile, when loaded.
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.value.as_deref().ok()
    }
}
