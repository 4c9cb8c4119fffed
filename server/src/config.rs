//! What a server is started with.

use std::path::PathBuf;
use std::time::Duration;

use sieve_engine::Precision;

/// Where generations decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU kernels: streams interleave token by token.
    #[default]
    Cpu,
    /// NVIDIA GPU `ordinal` (a build with the `cuda` feature): up to
    /// [`ServerConfig::gpu_streams`] streams take turns token by token (one KV cache each),
    /// the others wait; Compare and the mask audit stay on the CPU.
    Cuda(usize),
}

/// Settings of one server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// GGUF model file.
    pub model: PathBuf,
    /// Weight precision.
    pub precision: Precision,
    /// Calibration profile (default: the one `sieve calibrate` wrote for the model).
    pub profile: Option<PathBuf>,
    /// Predictor set directory (default: beside the profile).
    pub predictors: Option<PathBuf>,
    /// Requests admitted at once, running or waiting; more are refused with RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// Largest `max_tokens` a request may ask for.
    pub max_tokens_limit: usize,
    /// How long a shutdown lets running generations finish before cancelling them.
    pub grace: Duration,
    /// The dense reference timing is measured again when older than this and the engine is idle.
    pub dense_refresh: Duration,
    /// Where generations decode.
    pub device: Device,
    /// On a GPU, generations decoding at once (each holds a KV cache of the model's context
    /// on the device); later ones wait in arrival order.
    pub gpu_streams: usize,
}

impl ServerConfig {
    /// Defaults for `model`: fast precision, default profile and predictors, 16 requests,
    /// 1024 tokens, 10 s grace, dense reference refreshed every 5 minutes, on the CPU (4
    /// streams at once on a GPU).
    pub fn new(model: PathBuf) -> Self {
        Self {
            model,
            precision: Precision::Fast,
            profile: None,
            predictors: None,
            max_queue: 16,
            max_tokens_limit: 1024,
            grace: Duration::from_secs(10),
            dense_refresh: Duration::from_secs(300),
            device: Device::Cpu,
            gpu_streams: 4,
        }
    }
}
