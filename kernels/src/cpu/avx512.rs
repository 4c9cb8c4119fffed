//! AVX-512 VNNI inner loops, one `vpdpbusd` (64 multiply-adds) per four input columns of
//! sixteen weight rows and one token: the int8 GEMM of prefill and the Q4_1 GEMV of decode.

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

/// Bytes of one block of a Q4_1 decode panel (the same 0.625 bytes per weight as GGML's Q4_1).
const Q4_PANEL_BLOCK_BYTES: usize = crate::decode_panels::BLOCK_BYTES;

/// Software prefetch distance of the decode panel kernels, in bytes: about one L3 latency of
/// one core's streaming (~120 ns at ~20 GB/s). Decode weights come from L3 at best; two
/// blocks ahead (640 bytes) left dense decode about 1.1x slower on the Emerald Rapids VM
/// (median of 12 alternating pairs of `sieve bench decode`).
const PANEL_PREFETCH_BYTES: usize = 2560;

/// [`PANEL_PREFETCH_BYTES`] in whole Q4_1 panel blocks.
const Q4_PANEL_PREFETCH: usize = PANEL_PREFETCH_BYTES.div_ceil(Q4_PANEL_BLOCK_BYTES) * Q4_PANEL_BLOCK_BYTES;

/// `out[16 p + r] = Σ_b d[r][b] · xs[b] · Σ_i code[r][32 b + i] · x[32 b + i] + m[r][b] · xsum[b]`
/// for the panels `panels` holds (`nb` blocks each, see `decode_panels.rs` for the layout): one
/// `vpdpbusd` multiplies four columns of sixteen rows by a broadcast quadruple of activations
/// (codes are 0..15, so they are the unsigned operand and the activations need no offset).
/// `out` receives 16 values per panel.
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vnni and f16c. Lengths are checked here: a
/// short slice makes the function return without writing.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub unsafe fn gemv_q4_panels(panels: &[u8], nb: usize, x: &[i8], xs: &[f32], xsum: &[f32], out: &mut [f32]) {
    let panel_bytes = nb * Q4_PANEL_BLOCK_BYTES;
    let count = out.len() / PANEL_ROWS;
    if panel_bytes == 0 || panels.len() < count * panel_bytes || x.len() < nb * QK || xs.len() < nb || xsum.len() < nb {
        return;
    }
    // SAFETY: panel p block b reads panels[(p nb + b) 320 .. +320], inside the length checked
    // above; activations x[32 b .. 32 b + 32], xs[b] and xsum[b] likewise; out[16 p .. +16]
    // for p < count. Prefetches never fault, so their addresses (`wrapping_add`) may run past the end.
    unsafe {
        let mask = _mm512_set1_epi8(0x0f);
        let (px, pxs, pxsum) = (x.as_ptr(), xs.as_ptr(), xsum.as_ptr());
        for p in 0..count {
            let base = panels.as_ptr().add(p * panel_bytes);
            let mut scaled = _mm512_setzero_ps();
            let mut mins = _mm512_setzero_ps();
            for b in 0..nb {
                let blk = base.add(b * Q4_PANEL_BLOCK_BYTES);
                for line in 0..5 {
                    _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(Q4_PANEL_PREFETCH + 64 * line) as *const i8);
                }
                let mut lo_acc = _mm512_setzero_si512();
                let mut hi_acc = _mm512_setzero_si512();
                for g in 0..4 {
                    let codes = _mm512_loadu_si512(blk.add(64 * g) as *const __m512i);
                    let lo = _mm512_and_si512(codes, mask);
                    let hi = _mm512_and_si512(_mm512_srli_epi16(codes, 4), mask);
                    let q = px.add(b * QK + 8 * g);
                    let x_lo = _mm512_set1_epi32((q as *const i32).read_unaligned());
                    let x_hi = _mm512_set1_epi32((q.add(4) as *const i32).read_unaligned());
                    lo_acc = _mm512_dpbusd_epi32(lo_acc, lo, x_lo);
                    hi_acc = _mm512_dpbusd_epi32(hi_acc, hi, x_hi);
                }
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(256) as *const __m256i));
                let m = _mm512_cvtph_ps(_mm256_loadu_si256(blk.add(288) as *const __m256i));
                let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(lo_acc, hi_acc));
                scaled = _mm512_fmadd_ps(sums, _mm512_mul_ps(d, _mm512_set1_ps(*pxs.add(b))), scaled);
                mins = _mm512_fmadd_ps(m, _mm512_set1_ps(*pxsum.add(b)), mins);
            }
            _mm512_storeu_ps(out.as_mut_ptr().add(p * PANEL_ROWS), _mm512_add_ps(scaled, mins));
        }
    }
}

/// Bytes of one block of a Q8 decode panel.
const Q8_PANEL_BLOCK_BYTES: usize = crate::decode_panels::Q8_BLOCK_BYTES;

/// [`PANEL_PREFETCH_BYTES`] in whole Q8 panel blocks.
const Q8_PANEL_PREFETCH: usize = PANEL_PREFETCH_BYTES.div_ceil(Q8_PANEL_BLOCK_BYTES) * Q8_PANEL_BLOCK_BYTES;

/// `out[16 p + r] = Σ_b s[r][b] · xs[b] · (Σ_i u[r][32 b + i] · x[32 b + i] − 128 · Σ_i x[32 b + i])`
/// for the Q8 panels `panels` holds, where `u = w + 128` are the int8 weights offset to
/// unsigned bytes (`vpdpbusd` multiplies unsigned by signed bytes) and `offset[b]` is
/// `128 · Σ_i x[32 b + i]`, which removes the offset exactly in i32.
///
/// # Safety
/// The CPU must support avx512f, avx512bw and avx512vnni. Lengths are checked here: a short
/// slice makes the function return without writing.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn gemv_q8_panels(panels: &[u8], nb: usize, x: &[i8], xs: &[f32], offset: &[i32], out: &mut [f32]) {
    let panel_bytes = nb * Q8_PANEL_BLOCK_BYTES;
    let count = out.len() / PANEL_ROWS;
    if panel_bytes == 0 || panels.len() < count * panel_bytes || x.len() < nb * QK || xs.len() < nb || offset.len() < nb
    {
        return;
    }
    // SAFETY: panel p block b reads panels[(p nb + b) 576 .. +576], inside the length checked
    // above; x[32 b .. 32 b + 32], xs[b] and offset[b] likewise; out[16 p .. +16] for
    // p < count. Prefetches never fault (their addresses, `wrapping_add`, may run past the end).
    unsafe {
        let px = x.as_ptr();
        for p in 0..count {
            let base = panels.as_ptr().add(p * panel_bytes);
            let mut y = _mm512_setzero_ps();
            for b in 0..nb {
                let blk = base.add(b * Q8_PANEL_BLOCK_BYTES);
                for line in 0..9 {
                    _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(Q8_PANEL_PREFETCH + 64 * line) as *const i8);
                }
                let mut acc = [_mm512_setzero_si512(); 2];
                for g in 0..8 {
                    let w = _mm512_loadu_si512(blk.add(64 * g) as *const __m512i);
                    let quad = _mm512_set1_epi32((px.add(b * QK + 4 * g) as *const i32).read_unaligned());
                    acc[g & 1] = _mm512_dpbusd_epi32(acc[g & 1], w, quad);
                }
                let sums =
                    _mm512_sub_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_set1_epi32(*offset.get_unchecked(b)));
                let s = _mm512_loadu_ps(blk.add(512) as *const f32);
                let scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(sums), _mm512_set1_ps(*xs.get_unchecked(b)));
                y = _mm512_fmadd_ps(scaled, s, y);
            }
            _mm512_storeu_ps(out.as_mut_ptr().add(p * PANEL_ROWS), y);
        }
    }
}
