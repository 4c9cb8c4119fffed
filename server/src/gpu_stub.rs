//! The GPU backend when sieve is built without the `cuda` feature: opening it says how to get
//! one; the types have no values, so the scheduler's GPU branches cannot run.

use sieve_engine::Model;
use sieve_engine::generate::{GenerateOptions, Generation, Step};

use crate::dense_ref::DenseReference;
use crate::error::ServerError;

/// A generation running on the GPU (none without `cuda`).
pub enum GpuStream {}

impl GpuStream {
    /// Never called: no stream exists.
    pub fn cancel(&mut self) {
        match *self {}
    }
    /// Never called: no stream exists.
    pub fn options(&self) -> &GenerateOptions {
        match *self {}
    }
    /// Never called: no stream exists.
    pub fn snapshot(&self) -> Generation {
        match *self {}
    }
}

/// The model on a GPU (none without `cuda`).
pub enum GpuBackend {}

impl GpuBackend {
    /// Refuses: this build has no GPU path.
    pub fn open(_model: &Model, _ordinal: usize, _streams: usize) -> Result<Self, ServerError> {
        Err(ServerError::Gpu(sieve_kernels::gpu::GpuError::NotBuilt.to_string()))
    }
    /// Never called: no backend exists.
    pub fn name(&self) -> &str {
        match *self {}
    }
    /// Never called: no backend exists.
    pub fn start(&mut self, _prompt: &[u32], _opts: GenerateOptions) -> sieve_engine::Result<GpuStream> {
        match *self {}
    }
    /// Never called: no backend exists.
    pub fn step(&mut self, _stream: &mut GpuStream) -> sieve_engine::Result<Step> {
        match *self {}
    }
    /// Never called: no backend exists.
    pub fn has_free_slot(&self) -> bool {
        match *self {}
    }
    /// Never called: no backend exists.
    pub fn finish(&mut self, _stream: &GpuStream) {
        match *self {}
    }
    /// Never called: no backend exists.
    pub fn dense_reference(&mut self) -> sieve_engine::Result<DenseReference> {
        match *self {}
    }
}
