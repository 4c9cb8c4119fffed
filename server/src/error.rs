//! Errors of starting and running the server (request errors are gRPC statuses instead).

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The model, profile or predictors could not be loaded.
    #[error(transparent)]
    Engine(#[from] sieve_engine::EngineError),
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not read the API's descriptor set.
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A socket or thread failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// The GPU could not be used (no driver or GPU, a build without `cuda`, or a model the
    /// GPU path does not support).
    #[error("GPU: {0}")]
    Gpu(String),
    /// The engine thread ended unexpectedly.
    #[error("the engine thread stopped: {0}")]
    EngineThread(String),
}
