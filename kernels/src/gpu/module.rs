//! The kernel source and its run-time compilation by NVRTC.

use super::GpuError;
use cudarc::nvrtc::{CompileOptions, Ptx, compile_ptx_with_opts};

/// CUDA C++ source of every sieve GPU kernel: the shared helpers, then one file per family,
/// compiled as one translation unit.
pub const KERNEL_SOURCE: &str = concat!(
    include_str!("cuda/common.cuh"),
    include_str!("cuda/sparse_gemv.cu"),
    include_str!("cuda/rows_gemv.cu"),
    include_str!("cuda/decode.cu"),
);

/// Compiles [`KERNEL_SOURCE`] to PTX for a virtual architecture such as `compute_90`; the
/// driver JIT-compiles the PTX for the GPU it runs on.
pub fn compile_ptx(arch: &str) -> Result<Ptx, GpuError> {
    // SAFETY: probes whether the shared library can be opened; loads nothing else.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(GpuError::MissingLibrary("libnvrtc (NVRTC)"));
    }
    if !arch.starts_with("compute_") || !arch[8..].chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(GpuError::Unsupported(format!("GPU architecture name {arch:?}")));
    }
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        fmad: Some(true),
        name: Some("sieve_kernels.cu".into()),
        ..Default::default()
    };
    compile_ptx_with_opts(KERNEL_SOURCE, opts).map_err(|e| GpuError::Compile(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles the real kernels wherever NVRTC is installed (no GPU needed); scripts/test.sh
    /// installs it from PyPI when it can.
    #[test]
    fn kernels_compile_with_nvrtc() {
        match compile_ptx("compute_90") {
            Ok(ptx) => {
                let text = ptx.to_src();
                for name in [
                    "sparse_gemv_f16",
                    "sparse_gemv_wide2_f16",
                    "sparse_gemv_bf16",
                    "reduce_splits",
                    "swiglu_rows_f16",
                    "swiglu_rows_f16_norm",
                    "rows_gemv_f16_norm",
                    "attention",
                ] {
                    assert!(text.contains(name), "{name} missing from the PTX");
                }
                // Early launch depends on every kernel waiting for the previous grid.
                for body in text.split(".entry").skip(1) {
                    let name = body.split_whitespace().next().unwrap_or("?");
                    assert!(body.contains("griddepcontrol.wait"), "{name} never waits for the previous kernel");
                }
            }
            Err(GpuError::MissingLibrary(lib)) => eprintln!("skipped: {lib} not installed"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn bad_architecture_names_are_refused() {
        if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            assert!(matches!(compile_ptx("sm_90; rm"), Err(GpuError::Unsupported(_))));
        }
    }
}
