//! AVX-512 VNNI inner loop: the int8 GEMM of prefill, one `vpdpbusd` (64 multiply-adds)
//! per four input columns of sixteen weight rows and one token.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::QK;

/// Weight rows per panel: one i32 lane per row of a 512-bit register.
pub const PANEL_ROWS: usize = 16;

/// Sixteen weight rows repacked for [`gemm_panel`]; see `gemm_vnni.rs` for how they are made.
pub struct Panel<'a> {
    /// Per block, per group of four columns: 16 rows x 4 int8 weights (64 bytes).
    pub w: &'a [i8],
    /// Per block: -128 x the block's weight sum, per row (undoes the activations' +128).
    pub bias: &'a [i32],
    /// Per block: the weight scale, per row.
    pub d: &'a [f32],
    /// Per block: the weight minimum, per row (Q4_1: value = d x code + m), if any.
    pub m: Option<&'a [f32]>,
}

/// `out[t][r] = Σ_b d[b][r] · xs[t][b] · Σ_k w[r][32b + k] · x[t][32b + k]` (plus
/// `m[b][r] · xsum[t][b]` with minimums) for the panel's sixteen rows and `T` tokens, where
/// `xu` holds each token's int8 activations offset by 128 (as u8: `vpdpbusd` multiplies
/// unsigned by signed bytes), `xs` its block scales and `xsum` its block sums.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni. Lengths are checked here: a short
/// slice makes the function return zeros instead of reading past it.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn gemm_panel<const T: usize>(
    panel: &Panel<'_>,
    nb: usize,
    xu: [&[u8]; T],
    xs: [&[f32]; T],
    xsum: [&[f32]; T],
) -> [[f32; PANEL_ROWS]; T] {
    let mut out = [[0f32; PANEL_ROWS]; T];
    if panel.w.len() < nb * 8 * 64
        || panel.bias.len() < nb * PANEL_ROWS
        || panel.d.len() < nb * PANEL_ROWS
        || panel.m.is_some_and(|m| m.len() < nb * PANEL_ROWS)
        || xu.iter().any(|x| x.len() < nb * QK)
        || xs.iter().chain(&xsum).any(|s| s.len() < nb)
    {
        return out;
    }
    // SAFETY: block b reads w[(8b + g) * 64 .. +64] for g < 8, bias, d and m [16b .. +16], and
    // per token xu[32b + 4g .. +4], xs[b] and xsum[b]: all inside the lengths checked above.
    // The loads are unaligned ones.
    unsafe {
        let pw = panel.w.as_ptr();
        let mut res = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            let bias = _mm512_loadu_si512(panel.bias.as_ptr().add(PANEL_ROWS * b) as *const __m512i);
            let mut acc = [bias; T];
            for g in 0..8 {
                let wv = _mm512_loadu_si512(pw.add((8 * b + g) * 64) as *const __m512i);
                for (a, x) in acc.iter_mut().zip(xu) {
                    let quad = (x.as_ptr().add(b * QK + 4 * g) as *const i32).read_unaligned();
                    *a = _mm512_dpbusd_epi32(*a, _mm512_set1_epi32(quad), wv);
                }
            }
            let d = _mm512_loadu_ps(panel.d.as_ptr().add(PANEL_ROWS * b));
            for ((r, a), s) in res.iter_mut().zip(acc).zip(xs) {
                let scale = _mm512_mul_ps(d, _mm512_set1_ps(*s.as_ptr().add(b)));
                *r = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), scale, *r);
            }
            if let Some(m) = panel.m {
                let m = _mm512_loadu_ps(m.as_ptr().add(PANEL_ROWS * b));
                for (r, s) in res.iter_mut().zip(xsum) {
                    *r = _mm512_fmadd_ps(m, _mm512_set1_ps(*s.as_ptr().add(b)), *r);
                }
            }
        }
        for (o, r) in out.iter_mut().zip(res) {
            _mm512_storeu_ps(o.as_mut_ptr(), r);
        }
    }
    out
}
