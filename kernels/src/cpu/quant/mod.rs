//! Activation quantization to int8 blocks (one f32 scale per 32 values): the dispatch to a
//! SIMD loop where one exists. Every loop gives bit-for-bit the result of the portable one in
//! `quant.rs` (same scale arithmetic, same rounding half away from zero).

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Quantizes whole blocks of `x` into `qs` and `scales` if this CPU has a SIMD loop for it;
/// returns false (nothing written) otherwise. `qs` holds `x.len()` values and `scales` one per
/// block of 32.
#[inline]
pub fn quantize_blocks(x: &[f32], qs: &mut [i8], scales: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::gemm_vnni::enabled() {
        // SAFETY: `enabled()` is true only where avx512f and avx512bw are present.
        unsafe { avx512::quantize_blocks(x, qs, scales) };
        return true;
    }
    let _ = (x, qs, scales);
    false
}
