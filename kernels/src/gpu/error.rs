//! Errors of the GPU path.

/// Why a GPU operation could not run.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// This build has no GPU support.
    #[error("this sieve was built without GPU support: rebuild with `--features cuda`")]
    NotBuilt,
    /// The CUDA driver library (libcuda) could not be loaded.
    #[error("no CUDA driver found (libcuda.so could not be loaded): is this a machine with an NVIDIA GPU and driver?")]
    NoDriver,
    /// A CUDA library other than the driver is missing.
    #[error("the CUDA library {0} could not be loaded (install the CUDA toolkit's runtime libraries)")]
    MissingLibrary(&'static str),
    /// The driver is present but reports no GPU (or not the one asked for).
    #[error("no CUDA GPU with ordinal {ordinal} (the driver reports {count})")]
    NoDevice { ordinal: usize, count: usize },
    /// NVRTC rejected the kernel source.
    #[error("NVRTC could not compile sieve's kernels: {0}")]
    Compile(String),
    /// A driver call failed.
    #[error("CUDA driver error in {what}: {message}")]
    Driver { what: &'static str, message: String },
    /// A cuBLAS call failed.
    #[error("cuBLAS error in {what}: {message}")]
    Blas { what: &'static str, message: String },
    /// The kernels do not support this shape or argument.
    #[error("unsupported by the GPU kernels: {0}")]
    Unsupported(String),
}

impl GpuError {
    /// Wraps a driver error with the operation that failed.
    pub fn driver(what: &'static str, e: impl std::fmt::Display) -> Self {
        GpuError::Driver { what, message: e.to_string() }
    }
}
