//! Typed errors of the engine.

use std::path::PathBuf;

/// Everything the engine can refuse, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file is not there.
    #[error("model file not found: {path} (install it with `./scripts/setup.sh`, or pass --model / set SIEVE_MODEL)")]
    ModelNotFound { path: PathBuf },
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The GGUF container is malformed or truncated.
    #[error("invalid GGUF file {path}: {reason}")]
    Gguf { path: PathBuf, reason: String },
    /// The GGUF holds a model this engine does not run.
    #[error("unsupported architecture '{0}' (sieve runs the llama architecture)")]
    UnsupportedArchitecture(String),
    /// A tensor has a storage type the loader cannot dequantize.
    #[error("tensor {tensor}: unsupported dtype {dtype} (supported: F32, F16, Q8_0, Q4_0, Q4_1)")]
    UnsupportedDtype { tensor: String, dtype: String },
    /// A metadata key is missing or has the wrong type.
    #[error("GGUF metadata {key}: {reason}")]
    Metadata { key: String, reason: String },
    /// A tensor the architecture needs is absent or has the wrong shape.
    #[error("tensor {tensor}: {reason}")]
    Tensor { tensor: String, reason: String },
    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A request the model cannot serve.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The context window would overflow.
    #[error("context overflow: {needed} tokens needed, the model's context is {max}")]
    ContextOverflow { needed: usize, max: usize },
    /// A kernel refused its operands (a bug in the caller if it happens).
    #[error(transparent)]
    Kernel(#[from] sieve_kernels::KernelError),
    /// The GPU path failed or is not available.
    #[error(transparent)]
    Gpu(#[from] sieve_kernels::gpu::GpuError),
    /// A predictor set or trace was refused, or a predictor failed.
    #[error(transparent)]
    Predictor(#[from] sieve_predictor::PredictorError),
    /// A trace file is missing, truncated or made for another model.
    #[error("trace {path}: {reason}")]
    Trace { path: PathBuf, reason: String },
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
