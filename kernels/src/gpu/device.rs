//! Opening a GPU: driver probe, context and stream, kernels compiled and loaded, plus the
//! small helpers every caller needs (device views, uploads, events, graph capture).

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaSlice, CudaStream, DevicePtr, DeviceRepr, ValidAsZeroBits,
};

use super::{GpuError, WeightType, module::compile_ptx};

/// What the opened GPU is.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    /// Device name as the driver reports it.
    pub name: String,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: usize,
    /// Device memory in bytes.
    pub memory_bytes: usize,
    /// L2 cache in bytes.
    pub l2_bytes: usize,
}

/// Kernels of one weight type.
pub(crate) struct TypedKernels {
    pub sparse_gemv: CudaFunction,
    pub sparse_gemv_wide: CudaFunction,
    pub rows_gemv: CudaFunction,
    /// `rows_gemv` with an RMSNorm of x folded in.
    pub rows_gemv_norm: CudaFunction,
    pub swiglu_rows: CudaFunction,
    /// `swiglu_rows` with an RMSNorm of x folded in.
    pub swiglu_rows_norm: CudaFunction,
    pub up_gated: CudaFunction,
}

pub(crate) struct Kernels {
    pub f16: TypedKernels,
    pub bf16: TypedKernels,
    pub reduce_splits: CudaFunction,
    pub predicted_swiglu_f16: CudaFunction,
    pub rms_norm: CudaFunction,
    pub embed_f16: CudaFunction,
    pub attention: CudaFunction,
    pub attention_part: CudaFunction,
    pub attention_combine: CudaFunction,
    pub to_f16: CudaFunction,
    pub fill_uniform_f16: CudaFunction,
}

/// An open GPU: one context, one stream (every launch goes to it, so graph capture sees
/// them all), the compiled kernels.
pub struct Gpu {
    stream: Arc<CudaStream>,
    pub(crate) kernels: Kernels,
    info: GpuInfo,
    /// Launches ask for programmatic dependent launch.
    early: AtomicBool,
}

/// A read-only range of device memory borrowed from a live [`CudaSlice`].
#[derive(Clone, Copy)]
pub struct DevPtr<'a, T> {
    ptr: u64,
    len: usize,
    _borrow: PhantomData<&'a T>,
}

impl<'a, T> DevPtr<'a, T> {
    /// Elements in the range.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The raw device address (for kernel arguments).
    pub(crate) fn addr(&self) -> u64 {
        self.ptr
    }
    /// The sub-range `start..start + len`, if it lies inside this one.
    pub fn sub(&self, start: usize, len: usize) -> Option<DevPtr<'a, T>> {
        (start.checked_add(len)? <= self.len).then(|| DevPtr {
            ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64,
            len,
            _borrow: PhantomData,
        })
    }
}

impl Gpu {
    /// Opens GPU `ordinal`: loads the driver, creates a context and a stream, compiles the
    /// kernels with NVRTC for this GPU's architecture.
    pub fn open(ordinal: usize) -> Result<Gpu, GpuError> {
        // SAFETY: only tries to open the shared library; nothing is called through it yet.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(GpuError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(|e| GpuError::driver("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(GpuError::NoDevice { ordinal, count: count.max(0) as usize });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| GpuError::driver("cuCtxCreate", e))?;
        // One stream and no cross-stream hazards to track; the tracking events would also
        // break graph capture.
        // SAFETY: called before any allocation or launch on this context.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| GpuError::driver("cuStreamCreate", e))?;
        let attr = |a: CUdevice_attribute| ctx.attribute(a).map(|v| v.max(0) as usize);
        let cc = ctx.compute_capability().map_err(|e| GpuError::driver("compute capability", e))?;
        let info = GpuInfo {
            name: ctx.name().map_err(|e| GpuError::driver("cuDeviceGetName", e))?,
            compute_capability: cc,
            sm_count: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(|e| GpuError::driver("SM count", e))?,
            memory_bytes: ctx.total_mem().map_err(|e| GpuError::driver("cuDeviceTotalMem", e))?,
            l2_bytes: attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
                .map_err(|e| GpuError::driver("L2 size", e))?,
        };
        let ptx = compile_ptx(&format!("compute_{}{}", cc.0, cc.1))?;
        let module = ctx.load_module(ptx).map_err(|e| GpuError::driver("cuModuleLoadData", e))?;
        let f = |name: &'static str| module.load_function(name).map_err(|e| GpuError::driver(name, e));
        let typed = |suffix: &str| -> Result<TypedKernels, GpuError> {
            let load = |base: &'static str, name: String| -> Result<CudaFunction, GpuError> {
                module.load_function(&name).map_err(|e| GpuError::Driver { what: base, message: e.to_string() })
            };
            let g = |base: &'static str| load(base, format!("{base}_{suffix}"));
            let normed = |base: &'static str| load(base, format!("{base}_{suffix}_norm"));
            Ok(TypedKernels {
                sparse_gemv: g("sparse_gemv")?,
                sparse_gemv_wide: g("sparse_gemv_wide2")?,
                rows_gemv: g("rows_gemv")?,
                rows_gemv_norm: normed("rows_gemv")?,
                swiglu_rows: g("swiglu_rows")?,
                swiglu_rows_norm: normed("swiglu_rows")?,
                up_gated: g("up_gated")?,
            })
        };
        let kernels = Kernels {
            f16: typed("f16")?,
            bf16: typed("bf16")?,
            reduce_splits: f("reduce_splits")?,
            predicted_swiglu_f16: f("predicted_swiglu_f16")?,
            rms_norm: f("rms_norm")?,
            embed_f16: f("embed_f16")?,
            attention: f("attention")?,
            attention_part: f("attention_part")?,
            attention_combine: f("attention_combine")?,
            to_f16: f("to_f16")?,
            fill_uniform_f16: f("fill_uniform_f16")?,
        };
        // PDL needs sm_90; older GPUs launch every kernel after the previous one has drained.
        let early = AtomicBool::new(cc.0 >= 9);
        Ok(Gpu { stream, kernels, info, early })
    }

    /// What this GPU is.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// Whether kernels launch early (programmatic dependent launch): the next kernel's blocks
    /// are scheduled while the previous one drains and wait for it on the device. On by
    /// default on sm_90 and newer; results are the same either way (up to the rounding of
    /// atomic sums, whose order varies from run to run anyway).
    pub fn early_launch(&self) -> bool {
        self.early.load(Ordering::Relaxed)
    }

    /// Turns early launch on or off for later launches and graph captures (ignored, off,
    /// below sm_90).
    pub fn set_early_launch(&self, on: bool) {
        self.early.store(on && self.info.compute_capability.0 >= 9, Ordering::Relaxed)
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub(crate) fn typed(&self, t: WeightType) -> &TypedKernels {
        match t {
            WeightType::F16 => &self.kernels.f16,
            WeightType::Bf16 => &self.kernels.bf16,
        }
    }

    /// A device view of a whole buffer.
    pub fn view<'a, T>(&self, s: &'a CudaSlice<T>) -> DevPtr<'a, T> {
        let (ptr, _no_tracking) = s.device_ptr(&self.stream);
        DevPtr { ptr, len: s.len(), _borrow: PhantomData }
    }

    /// Copies host data into a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, GpuError> {
        self.stream.clone_htod(host).map_err(|e| GpuError::driver("upload", e))
    }

    /// Copies host data into an existing device buffer of the same length.
    pub fn write<T: DeviceRepr>(&self, host: &[T], dst: &mut CudaSlice<T>) -> Result<(), GpuError> {
        if host.len() != dst.len() {
            return Err(GpuError::Unsupported(format!("copy of {} values into {}", host.len(), dst.len())));
        }
        self.stream.memcpy_htod(host, dst).map_err(|e| GpuError::driver("upload", e))
    }

    /// A new zeroed device buffer.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>, GpuError> {
        self.stream.alloc_zeros(len).map_err(|e| GpuError::driver("alloc", e))
    }

    /// Zeroes a device buffer (asynchronously; captured into graphs as a memset node).
    pub fn clear<T: DeviceRepr + ValidAsZeroBits>(&self, s: &mut CudaSlice<T>) -> Result<(), GpuError> {
        self.stream.memset_zeros(s).map_err(|e| GpuError::driver("memset", e))
    }

    /// Copies a device buffer back to the host (waits for the stream).
    pub fn download<T: DeviceRepr>(&self, s: &CudaSlice<T>) -> Result<Vec<T>, GpuError> {
        self.stream.clone_dtoh(s).map_err(|e| GpuError::driver("download", e))
    }

    /// Copies `src` into `dst` on the device.
    pub fn copy<T: DeviceRepr>(&self, src: &CudaSlice<T>, dst: &mut CudaSlice<T>) -> Result<(), GpuError> {
        if src.len() != dst.len() {
            return Err(GpuError::Unsupported(format!("device copy of {} values into {}", src.len(), dst.len())));
        }
        self.stream.memcpy_dtod(src, dst).map_err(|e| GpuError::driver("device copy", e))
    }

    /// Copies one device range into another of the same length (asynchronously).
    pub fn copy_view<T>(&self, src: DevPtr<'_, T>, dst: DevPtr<'_, T>) -> Result<(), GpuError> {
        if src.len() != dst.len() {
            return Err(GpuError::Unsupported(format!("device copy of {} values into {}", src.len(), dst.len())));
        }
        // SAFETY: both ranges are live device memory of len values (DevPtr borrows their buffers).
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                dst.addr(),
                src.addr(),
                src.len() * std::mem::size_of::<T>(),
                self.stream.cu_stream(),
            )
        }
        .map_err(|e| GpuError::driver("device copy", e))
    }

    /// Waits for every launch so far.
    pub fn sync(&self) -> Result<(), GpuError> {
        self.stream.synchronize().map_err(|e| GpuError::driver("synchronize", e))
    }

    /// Records a timing event on the stream.
    pub fn event(&self) -> Result<CudaEvent, GpuError> {
        self.stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| GpuError::driver("cuEventRecord", e))
    }

    /// Captures every launch `body` makes into a CUDA graph (nothing runs during capture).
    pub fn capture(&self, body: impl FnOnce() -> Result<(), GpuError>) -> Result<CudaGraph, GpuError> {
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| GpuError::driver("cuStreamBeginCapture", e))?;
        let recorded = body();
        let graph = self.stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        graph
            .map_err(|e| GpuError::driver("cuStreamEndCapture", e))?
            .ok_or_else(|| GpuError::Unsupported("graph capture recorded nothing".into()))
    }

    /// Replays a captured graph on the stream.
    pub fn replay(&self, graph: &CudaGraph) -> Result<(), GpuError> {
        graph.launch().map_err(|e| GpuError::driver("cuGraphLaunch", e))
    }

    /// Measures device-to-device copy bandwidth in bytes per second, counting bytes read
    /// and written (the convention of CUDA's bandwidth test), over a buffer of `bytes`.
    pub fn copy_bandwidth(&self, bytes: usize) -> Result<f64, GpuError> {
        let n = (bytes / 4).max(1);
        let src = self.zeros::<f32>(n)?;
        let mut dst = self.zeros::<f32>(n)?;
        self.copy(&src, &mut dst)?;
        let reps = 20;
        let t0 = self.event()?;
        for _ in 0..reps {
            self.copy(&src, &mut dst)?;
        }
        let t1 = self.event()?;
        self.sync()?;
        let ms = t0.elapsed_ms(&t1).map_err(|e| GpuError::driver("cuEventElapsedTime", e))? as f64;
        Ok(2.0 * (n * 4) as f64 * reps as f64 / (ms / 1e3))
    }

    /// Milliseconds between two recorded events (waits for the second).
    pub fn elapsed_ms(&self, from: &CudaEvent, to: &CudaEvent) -> Result<f64, GpuError> {
        to.synchronize().map_err(|e| GpuError::driver("cuEventSynchronize", e))?;
        from.elapsed_ms(to).map(|v| v as f64).map_err(|e| GpuError::driver("cuEventElapsedTime", e))
    }
}
