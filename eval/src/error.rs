//! Typed errors of the evaluation crate.

use std::path::PathBuf;

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The corpus file could not be read.
    #[error("cannot read corpus {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The corpus is not UTF-8 text.
    #[error("corpus {path} is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { path: PathBuf, offset: usize },
    /// The corpus has too few tokens for what was asked.
    #[error("corpus too short: {asked} needs {needed} tokens, the corpus has {have}")]
    TooShort { asked: String, needed: usize, have: usize },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A plot could not be drawn or written.
    #[error("plot {path}: {reason}")]
    Plot { path: PathBuf, reason: String },
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] sieve_engine::EngineError),
}

/// Result alias for the evaluation crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
