//! x86-64 AVX2 + FMA + F16C Q4_1 x int8 loops. Callers guarantee the features and that
//! every slice covers the same number of blocks.

use std::arch::x86_64::*;

use super::{ActRow, Q4Row};
use crate::cpu::avx2::{hsum, hsum4};

/// One f16 (as bits) to f32 through F16C.
#[inline(always)]
unsafe fn f16(bits: u16) -> f32 {
    // SAFETY: register-only intrinsics; the caller enabled f16c.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
}

/// The 32 codes of block `b` as unsigned bytes, in value order.
#[inline(always)]
unsafe fn codes(w: &Q4Row<'_>, b: usize) -> __m256i {
    // SAFETY: reads bytes [16b, 16b + 16) of `codes`, which holds 16 bytes per block.
    unsafe {
        let packed = _mm_loadu_si128(w.codes.as_ptr().add(b * 16) as *const __m128i);
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(packed, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
        _mm256_set_m128i(hi, lo)
    }
}

/// Σ codes * x of one block as 8 f32 lanes. Codes are <= 15, so the pairwise i16 sums of
/// maddubs stay far from saturation (2 * 15 * 128).
#[inline(always)]
unsafe fn block(q: __m256i, x: &[i8], b: usize) -> __m256 {
    // SAFETY: reads bytes [32b, 32b + 32) of `x`, which holds 32 values per block.
    unsafe {
        let xv = _mm256_loadu_si256(x.as_ptr().add(b * 32) as *const __m256i);
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(p)
    }
}

/// Σ codes * x of blocks b and b + 1 at once: 32 bytes of codes split into low and high
/// nibbles line up with the pair-ordered activations. Lanes 0-3 hold block b's sum, 4-7
/// block b + 1's. Two maddubs sums stay below 2 * 2 * 15 * 128, far from i16 saturation.
#[inline(always)]
unsafe fn block_pair(w: &Q4Row<'_>, pair_q: &[i8], b: usize) -> __m256 {
    // SAFETY: reads codes [16b, 16b + 32) and pair_q [32b, 32b + 64); the caller ensures
    // b + 1 < nb.
    unsafe {
        let xlo = _mm256_loadu_si256(pair_q.as_ptr().add(b * 32) as *const __m256i);
        let xhi = _mm256_loadu_si256(pair_q.as_ptr().add(b * 32 + 32) as *const __m256i);
        pair_sums(w.codes.as_ptr().add(b * 16), xlo, xhi)
    }
}

/// [`block_pair`] on the 32 code bytes at `codes` with the pair's activations loaded
/// (`xlo` against the low nibbles, `xhi` against the high ones).
#[inline(always)]
unsafe fn pair_sums(codes: *const u8, xlo: __m256i, xhi: __m256i) -> __m256 {
    // SAFETY: reads 32 bytes at `codes` (the caller's bound); the rest is register-only.
    unsafe {
        let packed = _mm256_loadu_si256(codes as *const __m256i);
        let mask = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(packed, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
        let p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo), _mm256_maddubs_epi16(hi, xhi));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }
}

/// Whole groups of 8 blocks take their scales as vectors, the blocks after the last whole
/// group one by one as scalars (not through a partial vector in memory, which stalls on
/// store forwarding); two chains of sums. The decode GEMVs go through [`dot_rows4`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot(w: &Q4Row<'_>, x: &ActRow<'_>) -> f32 {
    let nb = w.d.len().min(w.m.len()).min(w.codes.len() / 16).min(x.d.len()).min(x.sum.len());
    let nb = nb.min(x.q.len() / 32).min(x.pair_q.len() / 32);
    // SAFETY: every block index read is < nb, within all slices; pairs start at even blocks
    // and need b + 1 < nb.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut b0 = 0;
        while b0 + 8 <= nb {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(b0) as *const __m128i));
            let m = _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(b0) as *const __m128i));
            let scale = _mm256_mul_ps(d, _mm256_loadu_ps(x.d.as_ptr().add(b0)));
            acc[1] = _mm256_fmadd_ps(m, _mm256_loadu_ps(x.sum.as_ptr().add(b0)), acc[1]);
            for i in [0i32, 2, 4, 6] {
                let lanes = _mm256_setr_epi32(i, i, i, i, i + 1, i + 1, i + 1, i + 1);
                let p = block_pair(w, x.pair_q, b0 + i as usize);
                acc[(i as usize / 2) & 1] =
                    _mm256_fmadd_ps(p, _mm256_permutevar8x32_ps(scale, lanes), acc[(i as usize / 2) & 1]);
            }
            b0 += 8;
        }
        let mut mins = 0f32;
        let block_scale = |b: usize| f16(w.d[b]) * x.d[b];
        while b0 + 2 <= nb {
            let scale = _mm256_set_m128(_mm_set1_ps(block_scale(b0 + 1)), _mm_set1_ps(block_scale(b0)));
            acc[0] = _mm256_fmadd_ps(block_pair(w, x.pair_q, b0), scale, acc[0]);
            mins += f16(w.m[b0]) * x.sum[b0] + f16(w.m[b0 + 1]) * x.sum[b0 + 1];
            b0 += 2;
        }
        if b0 < nb {
            // A last odd block (pair order leaves it as it was).
            acc[1] = _mm256_fmadd_ps(block(codes(w, b0), x.q, b0), _mm256_set1_ps(block_scale(b0)), acc[1]);
            mins += f16(w.m[b0]) * x.sum[b0];
        }
        hsum(_mm256_add_ps(acc[0], acc[1])) + mins
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_x4(w: &Q4Row<'_>, x: &[ActRow<'_>; 4]) -> [f32; 4] {
    let mut nb = w.d.len().min(w.m.len()).min(w.codes.len() / 16);
    for xk in x {
        nb = nb.min(xk.d.len()).min(xk.sum.len()).min(xk.q.len() / 32);
    }
    let mut out = [0f32; 4];
    // SAFETY: every block index is < nb, within all slices.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for b in 0..nb {
            let q = codes(w, b);
            let (d, m) = (f16(w.d[b]), f16(w.m[b]));
            for k in 0..4 {
                let p = block(q, x[k].q, b);
                acc[k] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * x[k].d[b]), acc[k]);
                out[k] += m * x[k].sum[b];
            }
        }
        for k in 0..4 {
            out[k] += hsum(acc[k]);
        }
    }
    out
}

/// Blocks `from..to` of four rows into their sums, with the scales and minima of the 8
/// blocks from `base` on (`base <= from < to <= base + 8`, `from` even): the minima of the
/// blocks from `from` on join the sums lane by lane (one horizontal sum ends all), and each
/// block pair's activations are loaded once for the four rows.
#[inline(always)]
unsafe fn window4(w: &[Q4Row<'_>; 4], x: &ActRow<'_>, base: usize, from: usize, to: usize, acc: &mut [__m256; 4]) {
    // SAFETY: the caller guarantees that the scale slices (each row's d and m, x.d, x.sum)
    // hold at least base + 8 blocks, the codes and activations at least `to` blocks, and an
    // even `from` (the pair order's); scales are read at base..base + 8, codes and
    // activations below block `to`.
    unsafe {
        let first = (from - base) as i32;
        let xd = _mm256_loadu_ps(x.d.as_ptr().add(base));
        let fresh = _mm256_cmpgt_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(first - 1));
        let xsum = _mm256_and_ps(_mm256_loadu_ps(x.sum.as_ptr().add(base)), _mm256_castsi256_ps(fresh));
        let mut scale = [_mm256_setzero_ps(); 4];
        for r in 0..4 {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(w[r].d.as_ptr().add(base) as *const __m128i));
            let m = _mm256_cvtph_ps(_mm_loadu_si128(w[r].m.as_ptr().add(base) as *const __m128i));
            scale[r] = _mm256_mul_ps(d, xd);
            acc[r] = _mm256_fmadd_ps(m, xsum, acc[r]);
        }
        let mut b = from;
        while b + 2 <= to {
            let xlo = _mm256_loadu_si256(x.pair_q.as_ptr().add(b * 32) as *const __m256i);
            let xhi = _mm256_loadu_si256(x.pair_q.as_ptr().add(b * 32 + 32) as *const __m256i);
            // Lanes 0-3 of a pair's sums belong to its first block, 4-7 to the second.
            let lane = (b - base) as i32;
            let lanes = _mm256_setr_epi32(lane, lane, lane, lane, lane + 1, lane + 1, lane + 1, lane + 1);
            for r in 0..4 {
                let p = pair_sums(w[r].codes.as_ptr().add(b * 16), xlo, xhi);
                acc[r] = _mm256_fmadd_ps(p, _mm256_permutevar8x32_ps(scale[r], lanes), acc[r]);
            }
            b += 2;
        }
        if b < to {
            // A last odd block (pair order leaves it as it was).
            let lanes = _mm256_set1_epi32((b - base) as i32);
            for r in 0..4 {
                let p = block(codes(&w[r], b), x.q, b);
                acc[r] = _mm256_fmadd_ps(p, _mm256_permutevar8x32_ps(scale[r], lanes), acc[r]);
            }
        }
    }
}

/// [`dot`] of four weight rows against one activation row: each block pair's activations
/// are loaded once for the four rows, the four rows' sums run as four independent chains
/// (one row alone waits on its FMA chain), and one horizontal sum finishes all four rows.
/// Whole groups of 8 blocks take their scales as vectors, and so do the blocks after the
/// last whole group, from the 8 blocks ending at the row's end (a partial vector built in
/// memory instead stalled its load on store forwarding: a third of the time at 18 blocks;
/// scalar scales for those blocks: 1536 x 576 36.8 against 35.0 µs, 1536 x 608 33.0 against
/// 30.9, on a Zen 3 VM, weights from memory, taking turns in one process). Only rows under
/// 8 blocks pad theirs in memory.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows4(w: &[Q4Row<'_>; 4], x: &ActRow<'_>) -> [f32; 4] {
    let mut nb = x.d.len().min(x.sum.len()).min(x.q.len() / 32).min(x.pair_q.len() / 32);
    for row in w {
        nb = nb.min(row.d.len()).min(row.m.len()).min(row.codes.len() / 16);
    }
    // SAFETY: every block index read is < nb, within all slices (a short row's scales are
    // read from its padded copies); windows end at or below nb and start their pairs at
    // even blocks (multiples of 8).
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut b0 = 0;
        while b0 + 8 <= nb {
            window4(w, x, b0, b0, b0 + 8, &mut acc);
            b0 += 8;
        }
        if b0 < nb && nb >= 8 {
            window4(w, x, nb - 8, b0, nb, &mut acc);
        } else if b0 < nb {
            // Rows under 8 blocks (rare): their scales padded with zeros to a window of 8.
            fn pad<T: Copy + Default>(v: &[T], n: usize) -> [T; 8] {
                let mut out = [T::default(); 8];
                out[..n].copy_from_slice(&v[..n]);
                out
            }
            let (d, m): ([[u16; 8]; 4], [[u16; 8]; 4]) =
                (w.each_ref().map(|r| pad(r.d, nb)), w.each_ref().map(|r| pad(r.m, nb)));
            let rows = [0, 1, 2, 3].map(|r| Q4Row { codes: w[r].codes, d: &d[r], m: &m[r] });
            let (xd, xsum) = (pad(x.d, nb), pad(x.sum, nb));
            let act = ActRow { q: x.q, pair_q: x.pair_q, d: &xd, sum: &xsum };
            window4(&rows, &act, 0, 0, nb, &mut acc);
        }
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), hsum4(acc));
        out
    }
}
