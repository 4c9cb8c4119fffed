//! Run-time choice of the instruction set the kernels use.
//!
//! Detected once per process. `SIEVE_ISA=scalar` forces the portable fallback, which the tests
//! use to check the SIMD paths against it; `SIEVE_ISA=avx2` keeps the AVX2 prefill GEMM where
//! AVX-512 VNNI is present.

use std::sync::OnceLock;

/// An instruction set the kernels have an implementation for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, no explicit SIMD.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
}

impl Isa {
    /// Lower-case name, as printed by `sieve info`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2+fma",
        }
    }
}

/// The best instruction set this CPU supports.
pub fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            return Isa::Avx2;
        }
    }
    Isa::Scalar
}

/// The instruction set in use: [`detect`], unless `SIEVE_ISA=scalar` asks for the fallback.
pub fn active() -> Isa {
    static ACTIVE: OnceLock<Isa> = OnceLock::new();
    *ACTIVE.get_or_init(|| match std::env::var("SIEVE_ISA").as_deref() {
        Ok("scalar") => Isa::Scalar,
        _ => detect(),
    })
}

/// Whether the f32 loops that need only AVX-512F run (the input-sparse GEMV's mask and
/// register-held sums): on an AVX2 machine that also has AVX-512F, unless `SIEVE_ISA=avx2`
/// asks to keep to AVX2.
pub fn avx512f() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            active() == Isa::Avx2
                && std::env::var("SIEVE_ISA").as_deref() != Ok("avx2")
                && std::arch::is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// The instruction sets in use, for reports: [`active`]'s name, plus the AVX-512 VNNI
/// kernels (prefill GEMM, dense decode GEMV) where they run.
pub fn describe() -> String {
    if crate::gemm_vnni::enabled() {
        format!("{} (prefill GEMM and dense decode GEMV: avx512-vnni)", active().name())
    } else {
        active().name().to_string()
    }
}
