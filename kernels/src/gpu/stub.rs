//! Stand-in for the GPU path when sieve is built without the `cuda` feature: opening a GPU
//! says so, everything else in sieve keeps working on the CPU.

use super::GpuError;

/// What [`Gpu::open`] found (never produced without the `cuda` feature).
#[derive(Debug, Clone)]
pub struct GpuInfo {
    /// Device name.
    pub name: String,
}

/// A GPU handle; without the `cuda` feature none can be opened.
#[derive(Debug)]
pub struct Gpu {
    _private: (),
}

impl Gpu {
    /// Always [`GpuError::NotBuilt`] in this build.
    pub fn open(_ordinal: usize) -> Result<Gpu, GpuError> {
        Err(GpuError::NotBuilt)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn open_says_the_feature_is_missing() {
        let err = super::Gpu::open(0).unwrap_err();
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
