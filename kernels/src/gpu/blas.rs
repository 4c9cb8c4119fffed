//! cuBLAS as the dense baseline: fp16 GEMV (`y = W x`, row-major `W`, fp32 accumulation).

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::CudaSlice;
use half::f16;

use super::{Gpu, GpuError};

/// A cuBLAS handle bound to the GPU's stream.
pub struct CublasGemv {
    blas: CudaBlas,
}

impl CublasGemv {
    /// Creates the handle (fails with a clear error when libcublas is missing).
    pub fn new(gpu: &Gpu) -> Result<CublasGemv, GpuError> {
        // SAFETY: only probes whether the shared library can be opened.
        if !unsafe { cudarc::cublas::sys::is_culib_present() } {
            return Err(GpuError::MissingLibrary("libcublas"));
        }
        let blas = CudaBlas::new(gpu.stream().clone())
            .map_err(|e| GpuError::Blas { what: "create", message: format!("{e:?}") })?;
        Ok(CublasGemv { blas })
    }

    /// `y = W x` for row-major fp16 `W` (`y.len()` rows of `x.len()`), fp16 in and out,
    /// fp32 accumulation (what a framework's fp16 linear layer calls at batch 1).
    pub fn gemv_f16(&self, w: &CudaSlice<u16>, x: &CudaSlice<u16>, y: &mut CudaSlice<u16>) -> Result<(), GpuError> {
        let (n, k) = (y.len(), x.len());
        if w.len() != n * k || n == 0 || k == 0 {
            return Err(GpuError::Unsupported(format!("cuBLAS GEMV: {} weights for {n} x {k}", w.len())));
        }
        let too_big = |v: usize| i32::try_from(v).is_err();
        if too_big(n) || too_big(k) {
            return Err(GpuError::Unsupported(format!("cuBLAS GEMV of {n} x {k}")));
        }
        // Column-major view: W is a k x n matrix with leading dimension k, so y = W^T x.
        let cfg = GemmConfig {
            transa: cublasOperation_t::CUBLAS_OP_T,
            transb: cublasOperation_t::CUBLAS_OP_N,
            m: n as i32,
            n: 1,
            k: k as i32,
            alpha: f16::ONE,
            lda: k as i32,
            ldb: k as i32,
            beta: f16::ZERO,
            ldc: n as i32,
        };
        // SAFETY: the buffers are u16 bit patterns of fp16 values with the sizes checked above;
        // reinterpreting them as f16 (same size and alignment) is sound.
        let (w16, x16, y16) = unsafe {
            (
                w.transmute::<f16>(w.len()).ok_or_else(|| GpuError::Unsupported("weights view".into()))?,
                x.transmute::<f16>(x.len()).ok_or_else(|| GpuError::Unsupported("input view".into()))?,
                y.transmute_mut::<f16>(n).ok_or_else(|| GpuError::Unsupported("output view".into()))?,
            )
        };
        let mut y16 = y16;
        // SAFETY: shapes and leading dimensions match the buffers (checked above).
        unsafe { self.blas.gemm(cfg, &w16, &x16, &mut y16) }
            .map_err(|e| GpuError::Blas { what: "gemm (fp16 GEMV)", message: format!("{e:?}") })
    }
}
