//! Shared helpers of the engine's integration tests: where the real model is.

use std::path::PathBuf;

/// The installed model (SIEVE_MODEL, else the setup step's cache path). Panics with the
/// command to run when it is absent: these tests need the real model.
pub fn model_path() -> PathBuf {
    let p = std::env::var_os("SIEVE_MODEL").map(PathBuf::from).unwrap_or_else(sieve_engine::paths::default_model_path);
    assert!(p.exists(), "model not found at {} — run ./scripts/setup.sh first", p.display());
    p
}
