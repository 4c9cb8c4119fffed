//! Errors of the predictor crate.

use thiserror::Error;

/// What can go wrong building, training, saving or loading predictors.
#[derive(Debug, Error)]
pub enum PredictorError {
    /// An option or argument outside its valid range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// Data whose shape does not fit (inputs, labels, weights).
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Too little data to train or to pick a rule on.
    #[error("not enough data: {0}")]
    TooLittleData(String),
    /// A predictor file that is missing, truncated, corrupt or made for another model.
    #[error("predictor file {path}: {reason}")]
    File { path: String, reason: String },
    /// Training failed inside candle.
    #[error("training: {0}")]
    Candle(#[from] candle_core::Error),
    /// A kernel refused its operands.
    #[error("kernel: {0}")]
    Kernel(#[from] sieve_kernels::KernelError),
}

/// Result with [`PredictorError`].
pub type Result<T> = std::result::Result<T, PredictorError>;
