//! Kernel launches, optionally with programmatic dependent launch (PDL, sm_90+).
//!
//! A decode step is some 250 small dependent kernels; between two of them the GPU drains
//! one grid, then schedules the next one's blocks, a few microseconds each time. With PDL
//! (`CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION`) the next kernel's blocks are
//! scheduled while the previous one still runs; every sieve kernel starts with
//! `griddepcontrol.wait` (see `pdl_wait` in `cuda/common.cuh`), which holds it until the previous
//! grid has finished and its writes are visible, so results are the same either way (up to the
//! rounding of atomic sums, whose order varies from run to run anyway).
//! cudarc's launch builder has no launch attributes, hence this one.

use std::ffi::c_void;

use cudarc::driver::sys::{
    CUlaunchAttribute, CUlaunchAttributeID, CUlaunchAttributeValue, CUlaunchConfig, cuLaunchKernelEx,
};
use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig};

use super::{Gpu, GpuError};

/// Arguments of one launch of a sieve kernel (values only: device pointers go as `u64`).
pub(crate) struct Launch<'a> {
    gpu: &'a Gpu,
    func: &'a CudaFunction,
    name: &'static str,
    args: Vec<*mut c_void>,
}

impl<'a> Launch<'a> {
    pub(crate) fn new(gpu: &'a Gpu, func: &'a CudaFunction, name: &'static str) -> Launch<'a> {
        Launch { gpu, func, name, args: Vec::with_capacity(12) }
    }

    /// Appends one kernel argument; it must outlive the launch call.
    pub(crate) fn arg<T: DeviceRepr>(&mut self, value: &'a T) -> &mut Self {
        self.args.push(value as *const T as *mut c_void);
        self
    }

    /// Launches on the GPU's stream (captured into a graph when one is being captured).
    ///
    /// # Safety
    /// The arguments must match the kernel's parameters in number, order and type, and every
    /// device range the kernel touches must be live and large enough.
    pub(crate) unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), GpuError> {
        let stream = self.gpu.stream();
        stream.context().bind_to_thread().map_err(|e| GpuError::driver(self.name, e))?;
        let mut value = CUlaunchAttributeValue { pad: [0; 64] };
        value.programmaticStreamSerializationAllowed = 1;
        let mut attr = CUlaunchAttribute {
            id: CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value,
        };
        let early = self.gpu.early_launch();
        let config = CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: stream.cu_stream(),
            attrs: if early { &mut attr } else { std::ptr::null_mut() },
            numAttrs: early as u32,
        };
        // SAFETY: `config` and `attr` live across the call; `args` holds one pointer per
        // kernel parameter, each to a value borrowed for 'a (the caller vouches for their
        // number and types); the function belongs to this stream's context, bound above.
        unsafe { cuLaunchKernelEx(&config, self.func.cu_function(), self.args.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(|e| GpuError::driver(self.name, e))
    }
}
