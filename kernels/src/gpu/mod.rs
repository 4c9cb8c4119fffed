//! GPU kernels (feature `cuda`): cudarc over the CUDA driver, kernels compiled from
//! `cuda/*.cu` by NVRTC when a [`Gpu`] opens, cuBLAS as the dense baseline.
//!
//! The CUDA libraries are loaded at run time (cudarc's `dynamic-loading`), so a binary built
//! on a machine without CUDA runs on one with a GPU; without a driver [`Gpu::open`] returns
//! [`GpuError::NoDriver`] instead of panicking. Built without the feature, [`Gpu::open`]
//! returns [`GpuError::NotBuilt`].
//!
//! Layouts: weights are 16-bit ([`WeightType`]) in either input-major form (`W^T`, `k` rows of
//! `n`: input-sparse GEMV, TEAL) or row-major form (`n` rows of `k`: output-sparse GEMV, CATS
//! and predictors). Activations and sums are f32.

mod error;
pub use error::GpuError;

#[cfg(feature = "cuda")]
pub mod bench;
#[cfg(feature = "cuda")]
mod blas;
#[cfg(feature = "cuda")]
mod decode_ops;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod gemv;
#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
mod module;

#[cfg(feature = "cuda")]
pub use blas::CublasGemv;
#[cfg(feature = "cuda")]
pub use cudarc::driver::{CudaGraph, CudaSlice};
#[cfg(feature = "cuda")]
pub use decode_ops::{AttentionIo, AttentionShape, MAX_ATTENTION_LEN, StepArgs};
#[cfg(feature = "cuda")]
pub use device::{DevPtr, Gpu, GpuInfo};
#[cfg(feature = "cuda")]
pub use gemv::{DEFAULT_UNITS_PER_SM, FoldedNorm, Gather, GemvOut, LowRankPredictor, Reduction, SparseGemv, SplitPlan};
#[cfg(feature = "cuda")]
pub use module::{KERNEL_SOURCE, compile_ptx};

#[cfg(not(feature = "cuda"))]
mod stub;
#[cfg(not(feature = "cuda"))]
pub use stub::{Gpu, GpuInfo};

/// Storage type of 16-bit weights on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// IEEE half precision.
    F16,
    /// bfloat16 (f32's exponent, 8-bit mantissa).
    Bf16,
}

impl WeightType {
    /// The name used in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WeightType::F16 => "fp16",
            WeightType::Bf16 => "bf16",
        }
    }

    /// Converts f32 values to this type's bit patterns (round to nearest even).
    pub fn encode(self, values: &[f32]) -> Vec<u16> {
        match self {
            WeightType::F16 => values.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect(),
            WeightType::Bf16 => values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect(),
        }
    }

    /// Converts one stored value back to f32.
    pub fn decode(self, bits: u16) -> f32 {
        match self {
            WeightType::F16 => half::f16::from_bits(bits).to_f32(),
            WeightType::Bf16 => half::bf16::from_bits(bits).to_f32(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_types_round_trip_representable_values() {
        let v = [0.0f32, 1.0, -2.5, 0.125, 65504.0];
        for t in [WeightType::F16, WeightType::Bf16] {
            for (&x, &b) in v.iter().zip(&t.encode(&v)) {
                if t == WeightType::Bf16 && x == 65504.0 {
                    continue; // not representable in bf16's 8-bit mantissa
                }
                assert_eq!(t.decode(b), x, "{} {x}", t.name());
            }
        }
    }
}
