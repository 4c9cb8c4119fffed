//! Decode on an NVIDIA GPU (feature `cuda`): the whole step — embedding, every layer,
//! final norm and LM head — on the device with fp16 weights and an fp16 KV cache, captured
//! once per sparsity plan as one CUDA graph and replayed for every token.
//!
//! Methods: dense, TEAL (input-sparse GEMVs on all seven projections, thresholds per layer
//! and projection) and CATS (dense gate, up rows of kept neurons only, input-sparse down).
//! The weights come from a loaded [`crate::Model`] ([`GpuModel::from_model`]) or are random
//! at a real model's shape ([`GpuModel::synthetic`], e.g. Llama-3-8B) to measure throughput
//! at scale.

mod model;
mod plan;
mod session;
mod step;

pub use model::{GpuModel, method_step_weight_bytes, step_weight_bytes};
pub use plan::{GpuLayerPlan, GpuPlan, achieved_sparsity, calibrate_uniform};
pub use session::GpuSession;
pub use step::StepTiming;
