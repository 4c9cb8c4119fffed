//! x86-64 AVX-512 int8 block quantization: two registers per block of 32, the scale from a
//! lane maximum, rounding half away from zero as `round_away` does (truncate, then step by
//! the fraction), NaN to zero.

use std::arch::x86_64::*;

use crate::QK;

/// `scales[b] = max |x| / 127` over block b, `qs = round_away(x / scale)` clamped to ±127.
///
/// # Safety
/// The CPU must support avx512f and avx512bw. Only whole blocks that `x`, `qs` and `scales`
/// all cover are written.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn quantize_blocks(x: &[f32], qs: &mut [i8], scales: &mut [f32]) {
    let blocks = (x.len() / QK).min(qs.len() / QK).min(scales.len());
    // SAFETY: block b reads x[32b..32b + 32] and writes qs[32b..32b + 32], inside the lengths
    // taken above.
    unsafe {
        let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
        let (half, one) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0));
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        for (b, scale) in scales.iter_mut().enumerate().take(blocks) {
            let px = x.as_ptr().add(QK * b);
            let v = [_mm512_loadu_ps(px), _mm512_loadu_ps(px.add(16))];
            let abs = v.map(|v| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask)));
            // NaN first: MAXPS then returns the other operand, as f32::max ignores NaN.
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(
                _mm512_max_ps(abs[0], _mm512_setzero_ps()),
                _mm512_max_ps(abs[1], _mm512_setzero_ps()),
            ));
            let d = amax / 127.0;
            let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
            let q = v.map(|v| {
                let y = _mm512_mul_ps(v, inv);
                let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
                let f = _mm512_sub_ps(y, t);
                let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(f, half);
                let down = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(f, _mm512_sub_ps(_mm512_setzero_ps(), half));
                let r = _mm512_mask_sub_ps(_mm512_mask_add_ps(t, up, t, one), down, t, one);
                let r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
                let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(y, y);
                _mm512_maskz_cvttps_epi32(ordered, r)
            });
            let pq = qs.as_mut_ptr().add(QK * b);
            _mm_storeu_si128(pq as *mut __m128i, _mm512_cvtepi32_epi8(q[0]));
            _mm_storeu_si128(pq.add(16) as *mut __m128i, _mm512_cvtepi32_epi8(q[1]));
            *scale = d;
        }
    }
}
