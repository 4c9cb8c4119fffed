//! x86-64 AVX2 + FMA SiLU. e^-x is 2^n · e^r with n = round(-x / ln 2) and |r| <= ln 2 / 2,
//! e^r by its Taylor series to degree 7 (truncation below 2e-8 relative on that interval);
//! the argument is clamped to where 2^n stays a normal float: beyond it x / (1 + e^-x) is x
//! to f32 precision, or below 1e-35 in magnitude and flushed to zero.

use std::arch::x86_64::*;

/// -x is clamped to [-MAX_ARG, MAX_ARG] so that n + 127 stays in 1..=254.
const MAX_ARG: f32 = 87.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that n · LN2_HI is exact in f32 for |n| <= 127.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// silu of 8 lanes.
#[inline(always)]
unsafe fn silu8(x: __m256) -> __m256 {
    // SAFETY: register-only intrinsics; the caller enabled avx2 and fma.
    unsafe {
        let t = _mm256_max_ps(
            _mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), _mm256_set1_ps(MAX_ARG)),
            _mm256_set1_ps(-MAX_ARG),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            t,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), t);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        // Horner on 1 + r + r²/2! + ... + r⁷/7!.
        let mut p = _mm256_set1_ps(1.0 / 5040.0);
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        )));
        let e = _mm256_mul_ps(p, scale);
        // NaN inputs: min/max above return the clamp bound for NaN, so restore them here.
        let y = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        // Below -MAX_ARG the true value is under 1e-35 in magnitude: flush it to zero.
        let y = _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-MAX_ARG)), y);
        _mm256_blendv_ps(y, x, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
    }
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_in_place(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds exactly 8 f32.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), silu8(_mm256_loadu_ps(c.as_ptr()))) };
    }
    let tail = chunks.into_remainder();
    let mut buf = [0f32; 8];
    buf[..tail.len()].copy_from_slice(tail);
    // SAFETY: `buf` holds 8 f32.
    unsafe { _mm256_storeu_ps(buf.as_mut_ptr(), silu8(_mm256_loadu_ps(buf.as_ptr()))) };
    let n = tail.len();
    tail.copy_from_slice(&buf[..n]);
}

#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let mut g = gate.chunks_exact_mut(8);
    let mut u = up.chunks_exact(8);
    for (gc, uc) in (&mut g).zip(&mut u) {
        // SAFETY: `gc` and `uc` hold exactly 8 f32 each.
        unsafe {
            let v = _mm256_mul_ps(silu8(_mm256_loadu_ps(gc.as_ptr())), _mm256_loadu_ps(uc.as_ptr()));
            _mm256_storeu_ps(gc.as_mut_ptr(), v);
        }
    }
    for (gv, &uv) in g.into_remainder().iter_mut().zip(u.remainder()) {
        *gv = crate::ops::silu(*gv) * uv;
    }
}
