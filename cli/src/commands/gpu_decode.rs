//! The GPU decode commands: `bench decode --device cuda` (the loaded model on the GPU,
//! logits checked against the CPU f32 path, then GPU step times of dense and the method),
//! `bench gpu-synthetic` (a random model at a real shape, e.g. Llama-3-8B, against the
//! bandwidth roofline) and `generate --device cuda`.

use anyhow::{Result, bail};

/// Where a command runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The CPU kernels (default).
    Cpu,
    /// An NVIDIA GPU (needs a build with `--features cuda`).
    Cuda,
}

/// Arguments of `sieve bench gpu-synthetic`.
#[derive(Debug, clap::Args)]
pub struct SyntheticArgs {
    /// Model shape: llama3-8b.
    #[arg(long, default_value = "llama3-8b")]
    pub shape: String,
    /// Methods at their sparsities, comma-separated (METHOD:SPARSITY; teal-uniform and cats
    /// are calibrated on the model's own activations).
    #[arg(long, value_delimiter = ',', default_value = "teal-uniform:0.5,cats:0.5")]
    pub methods: Vec<String>,
    /// Decode steps timed per method (after as many warm-up steps).
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
    /// How the input-sparse GEMVs gather active rows, comma-separated to compare several in
    /// one run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "auto")]
    pub gathers: Vec<GatherArg>,
    /// Decode steps whose activations calibrate the thresholds.
    #[arg(long, default_value_t = 16)]
    pub calibration_steps: usize,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// How the input-sparse GEMVs gather active rows, as named by `--gathers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GatherArg {
    /// The library's choice for the output widths.
    Auto,
    /// 256 outputs per warp (rows read in 512-byte runs).
    Narrow,
    /// 512 outputs per warp (1 KB runs).
    Wide,
}

/// Checks the synthetic benchmark's arguments before any GPU work.
pub fn validate_synthetic(a: &SyntheticArgs) -> Result<Vec<(sieve_engine::sparsity::Method, f32)>> {
    if a.shape != "llama3-8b" {
        bail!("--shape {}: the synthetic shapes are: llama3-8b", a.shape);
    }
    if a.steps == 0 || a.calibration_steps == 0 {
        bail!("--steps and --calibration-steps must be at least 1");
    }
    if a.gathers.is_empty() {
        bail!("--gathers: give at least one");
    }
    if a.steps + a.calibration_steps > 4096 {
        bail!("--steps + --calibration-steps must fit the 4096-position cache");
    }
    let methods = a.methods.iter().map(|m| super::parse_method_at("--methods", m)).collect::<Result<Vec<_>>>()?;
    use sieve_engine::sparsity::Method;
    if let Some((m, _)) =
        methods.iter().find(|(m, _)| !matches!(m, Method::Dense | Method::TealUniform | Method::Teal | Method::Cats))
    {
        bail!("--methods: {} cannot be calibrated on a synthetic model (dense, teal-uniform, cats)", m.name());
    }
    Ok(methods)
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;

    pub fn bench(_model_path: &std::path::Path, _a: &super::super::bench::DecodeArgs) -> Result<()> {
        Err(sieve_kernels::gpu::GpuError::NotBuilt.into())
    }
    pub fn synthetic(a: SyntheticArgs) -> Result<()> {
        validate_synthetic(&a)?;
        Err(sieve_kernels::gpu::GpuError::NotBuilt.into())
    }
    pub fn generate(_model_path: &std::path::Path, _a: &super::super::generate::Args) -> Result<()> {
        Err(sieve_kernels::gpu::GpuError::NotBuilt.into())
    }
}

#[cfg(feature = "cuda")]
#[path = "gpu_decode_cuda.rs"]
mod imp;

pub use imp::{bench, generate, synthetic};
