//! x86-64 AVX2 + FMA + F16C input-sparse Q4_1 accumulation.
//!
//! Per active block and 64-output tile: two active rows per step, their 32 code bytes
//! interleaved (`vpunpckl/hbw`), nibbles masked out and multiplied by the pair of int8
//! values with `vpmaddubsw` (unsigned codes x signed values) into four i16 accumulators;
//! after at most [`I16_PAIRS`] pairs the sums are widened to i32 by shifts (the layout puts
//! outputs so that this yields natural order), then scaled by `d · sx` and added to the f32
//! outputs with `m · Σx`. Rows and scales are prefetched about 16 tiles of work ahead.

use std::arch::x86_64::*;

use super::{ActiveBlock, CODE_TILE_BYTES, I16_PAIRS, Pair, TILE, TileRun, prefetch, prefetch_blocks_ahead};
use crate::QK;
use crate::cpu::avx2::hmax;

/// Σ over `pairs` of code · x in i16, as the four vectors A0..A3 (see `super::position`).
#[inline(always)]
unsafe fn pair_sums(codes: *const u8, pairs: &[Pair]) -> [__m256i; 4] {
    // SAFETY: every pair's row offset plus the tile's 32 bytes lies in the codes buffer
    // (checked by `TileRun::new` and the tile assert of `accumulate`).
    unsafe {
        let mask = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_si256(); 4];
        for p in pairs {
            let a = _mm256_loadu_si256(codes.add(p.off[0] as usize) as *const __m256i);
            let b = _mm256_loadu_si256(codes.add(p.off[1] as usize) as *const __m256i);
            let x = _mm256_set1_epi32(p.x);
            let lo = _mm256_unpacklo_epi8(a, b);
            let hi = _mm256_unpackhi_epi8(a, b);
            acc[0] = _mm256_add_epi16(acc[0], _mm256_maddubs_epi16(_mm256_and_si256(lo, mask), x));
            acc[1] = _mm256_add_epi16(acc[1], _mm256_maddubs_epi16(_mm256_and_si256(hi, mask), x));
            let lo4 = _mm256_and_si256(_mm256_srli_epi16(lo, 4), mask);
            let hi4 = _mm256_and_si256(_mm256_srli_epi16(hi, 4), mask);
            acc[2] = _mm256_add_epi16(acc[2], _mm256_maddubs_epi16(lo4, x));
            acc[3] = _mm256_add_epi16(acc[3], _mm256_maddubs_epi16(hi4, x));
        }
        acc
    }
}

/// The i16 sums widened to i32: vector 2k holds the even words of A_k, 2k + 1 the odd ones,
/// which the layout makes outputs 8v..8v + 8 of vector v.
#[inline(always)]
unsafe fn widen(a: [__m256i; 4]) -> [__m256i; 8] {
    // SAFETY: register-only intrinsics; the caller enabled avx2.
    unsafe {
        let mut v = [_mm256_setzero_si256(); 8];
        for k in 0..4 {
            v[2 * k] = _mm256_srai_epi32(_mm256_slli_epi32(a[k], 16), 16);
            v[2 * k + 1] = _mm256_srai_epi32(a[k], 16);
        }
        v
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn accumulate(op: &TileRun<'_>, t0: usize, y: &mut [f32]) {
    let tiles = y.len() / TILE;
    // SAFETY: the `TileRun` constructors checked that every pair's row (tiles * 32 bytes) and every
    // block's scales lie in the buffers; the caller checked t0 + tiles <= op.tiles, so the
    // tile's 32 code bytes and 256 scale bytes are inside, and y has 64 values per tile.
    unsafe {
        if op.blocks.is_empty() {
            y.fill(0.0);
            return;
        }
        // Blocks ahead to prefetch: about 16 tiles of work, so that few tiles per task still
        // leave an L3 latency or more between a prefetch and its use.
        let ahead = prefetch_blocks_ahead(tiles);
        for blk in op.blocks.iter().take(ahead.unwrap_or(0)).skip(1) {
            for t in 0..tiles {
                prefetch(op, blk, t0 + t);
            }
        }
        for (bi, blk) in op.blocks.iter().enumerate() {
            let pairs = op.pairs_of(blk);
            let next = ahead.and_then(|a| op.blocks.get(bi + a));
            let sx = _mm256_set1_ps(blk.sx);
            let sum = _mm256_set1_ps(blk.sum);
            for t in 0..tiles {
                let tile = t0 + t;
                let codes = op.codes.as_ptr().add(tile * CODE_TILE_BYTES);
                if let Some(nb) = next {
                    prefetch(op, nb, tile);
                }
                let mut chunks = pairs.chunks(I16_PAIRS);
                let mut v = match chunks.next() {
                    Some(c) => widen(pair_sums(codes, c)),
                    None => [_mm256_setzero_si256(); 8],
                };
                for c in chunks {
                    let w = widen(pair_sums(codes, c));
                    for k in 0..8 {
                        v[k] = _mm256_add_epi32(v[k], w[k]);
                    }
                }
                let dm = op.dm.as_ptr().add(op.dm_at(blk.b, tile));
                let yp = y.as_mut_ptr().add(t * TILE);
                for (k, vk) in v.iter().enumerate() {
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(dm.add(16 * k) as *const __m128i));
                    let m = _mm256_cvtph_ps(_mm_loadu_si128(dm.add(2 * TILE + 16 * k) as *const __m128i));
                    // The first block overwrites `y` (m · sum + 0 is exactly m · sum).
                    let yk = if bi == 0 {
                        _mm256_mul_ps(m, sum)
                    } else {
                        _mm256_fmadd_ps(m, sum, _mm256_loadu_ps(yp.add(8 * k)))
                    };
                    let yk = _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_cvtepi32_ps(*vk), sx), yk);
                    _mm256_storeu_ps(yp.add(8 * k), yk);
                }
            }
        }
    }
}

/// Per byte value: the positions (0..8) of its set bits, packed from the low byte up.
static COMPRESS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut m = 0;
    while m < 256 {
        let (mut k, mut at) = (0, 0);
        while k < 8 {
            if m & (1 << k) != 0 {
                t[m] |= (k as u64) << (8 * at);
                at += 1;
            }
            k += 1;
        }
        m += 1;
    }
    t
};

/// Writes block `b` (scale `sx`, scaled value sum `sum`) at `blocks[nblk]` and its pairs
/// from `pairs[np]` on, in vectors: the positions of the `nonzero` bits are compressed
/// byte by byte through [`COMPRESS`] (an odd last one repeated, its value zeroed), their
/// values picked from `q8` with `vpshufb`, and four pairs at a time written as whole
/// structs. Up to 3 pairs past the block's last are written with unused contents; the next
/// block overwrites them. Returns the new `np`.
///
/// # Safety
/// avx2 is enabled; `pairs` holds at least `np + 16` pairs and `blocks` `nblk + 1`
/// blocks; `(b * 32 + 31) * row_bytes` fits in u32.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn emit_block(
    b: usize,
    q8: __m256i,
    nonzero: u32,
    sx: f32,
    sum: f32,
    row_bytes: usize,
    pairs: &mut [Pair],
    np: usize,
    blocks: &mut [ActiveBlock],
    nblk: usize,
) -> usize {
    let n = nonzero.count_ones() as usize;
    let npairs = n.div_ceil(2);
    // SAFETY: `idx` has room for 4 unaligned 8-byte stores at positions up to 24 and the
    // two 16-byte loads; the pair stores reach `np + 4 * npairs.div_ceil(4) <= np + 16`.
    unsafe {
        let mut idx = [0u8; 48];
        let mut at = 0;
        for j in 0..4 {
            let m = (nonzero >> (8 * j)) as usize & 0xff;
            let e = COMPRESS[m] + 0x0808_0808_0808_0808 * j as u64;
            std::ptr::write_unaligned(idx.as_mut_ptr().add(at) as *mut u64, e);
            at += (m as u32).count_ones() as usize;
        }
        if n % 2 == 1 {
            // The odd last value is paired with its own row (at value 0 below).
            idx[n] = idx[n - 1];
        }
        let base = _mm256_set1_epi32((b * QK * row_bytes) as i32);
        let row = _mm256_set1_epi32(row_bytes as i32);
        let (qa, qb) = (_mm256_castsi256_si128(q8), _mm256_extracti128_si256(q8, 1));
        let iota = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        let out = pairs.as_mut_ptr().add(np) as *mut __m256i;
        for h in 0..npairs.div_ceil(8) {
            let iv = _mm_loadu_si128(idx.as_ptr().add(16 * h) as *const __m128i);
            let hi = _mm_cmpgt_epi8(iv, _mm_set1_epi8(15));
            let v = _mm_blendv_epi8(_mm_shuffle_epi8(qa, iv), _mm_shuffle_epi8(qb, iv), hi);
            // Values at positions n.. (the odd last one's partner) are 0.
            let v = _mm_and_si128(v, _mm_cmpgt_epi8(_mm_set1_epi8((n - 16 * h).min(16) as i8), iota));
            let xs = [_mm_unpacklo_epi16(v, v), _mm_unpackhi_epi16(v, v)];
            for (g, &xg) in xs.iter().enumerate() {
                if 8 * h + 4 * g >= npairs {
                    break;
                }
                let o = _mm256_cvtepu8_epi32(if g == 0 { iv } else { _mm_srli_si128(iv, 8) });
                let off = _mm256_add_epi32(base, _mm256_mullo_epi32(o, row));
                let x = _mm256_cvtepu32_epi64(xg);
                let (lo, hi) = (_mm256_unpacklo_epi64(off, x), _mm256_unpackhi_epi64(off, x));
                let dst = out.add(4 * h + 2 * g);
                _mm256_storeu_si256(dst, _mm256_permute2x128_si256(lo, hi, 0x20));
                _mm256_storeu_si256(dst.add(1), _mm256_permute2x128_si256(lo, hi, 0x31));
            }
        }
        let (start, end) = (np as u32, (np + npairs) as u32);
        blocks.as_mut_ptr().add(nblk).write(ActiveBlock { b: b as u32, start, end, sx, sum });
    }
    np + npairs
}

/// As `super::scalar::gather`, a block of 32 values per step: the mask, absmax and
/// rounding (truncate, then step away from zero when the exact remainder is >= 0.5) in
/// vectors, the pairs written by `emit_block`. The caller sized `pairs` and `blocks` for
/// every block of `x` (16 pairs and one block each), and `x.len() * row_bytes` fits in u32.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gather(
    x: &[f32],
    threshold: f32,
    row_bytes: usize,
    pairs: &mut [Pair],
    blocks: &mut [ActiveBlock],
) -> (usize, usize, usize) {
    let (mut count, mut np, mut nblk) = (0, 0, 0);
    // SAFETY: each block reads its own 32 values of `x` (chunks_exact); `emit_block` writes
    // at most 16 pairs (starting at np <= 16 * blocks so far) and one block per block of
    // `x`, for which the caller sized the storage, with offsets the caller checked.
    unsafe {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let tv = _mm256_set1_ps(threshold);
        // Undoes the lane interleaving of the two packs below.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (b, xb) in x.chunks_exact(QK).enumerate() {
            let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(xb.as_ptr().add(8 * k)));
            let mut m = [_mm256_setzero_ps(); 4];
            let mut act = 0u32;
            let mut amax = _mm256_setzero_ps();
            for k in 0..4 {
                let a = _mm256_and_ps(v[k], abs);
                m[k] = _mm256_cmp_ps(a, tv, _CMP_GT_OQ);
                act |= (_mm256_movemask_ps(m[k]) as u32) << (8 * k);
                amax = _mm256_max_ps(amax, _mm256_and_ps(a, m[k]));
            }
            if act == 0 {
                continue;
            }
            count += act.count_ones() as usize;
            let sx = hmax(amax) / 127.0;
            let inv = _mm256_set1_ps(if sx > 0.0 { 1.0 / sx } else { 0.0 });
            let one = _mm256_set1_ps(1.0);
            let mut qi = [_mm256_setzero_si256(); 4];
            for k in 0..4 {
                let y = _mm256_mul_ps(v[k], inv);
                let t = _mm256_round_ps(y, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
                let f = _mm256_sub_ps(y, t);
                let up = _mm256_and_ps(_mm256_cmp_ps(f, _mm256_set1_ps(0.5), _CMP_GE_OQ), one);
                let down = _mm256_and_ps(_mm256_cmp_ps(f, _mm256_set1_ps(-0.5), _CMP_LE_OQ), one);
                let r = _mm256_sub_ps(_mm256_add_ps(t, up), down);
                let r = _mm256_min_ps(_mm256_max_ps(r, _mm256_set1_ps(-127.0)), _mm256_set1_ps(127.0));
                // Inactive channels and NaN (which the clamp above would not keep) give 0.
                let keep = _mm256_and_ps(m[k], _mm256_cmp_ps(y, y, _CMP_ORD_Q));
                qi[k] = _mm256_and_si256(_mm256_cvttps_epi32(r), _mm256_castps_si256(keep));
            }
            // |q| <= 127: the saturating packs are exact.
            let q16 = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
            let q8 = _mm256_permutevar8x32_epi32(q16, order);
            let zero = _mm256_cmpeq_epi8(q8, _mm256_setzero_si256());
            let nonzero = !(_mm256_movemask_epi8(zero) as u32);
            let qsum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3])));
            np = emit_block(b, q8, nonzero, sx, qsum as f32 * sx, row_bytes, pairs, np, blocks, nblk);
            nblk += 1;
        }
    }
    (count, np, nblk)
}

/// Sum of 8 i32 lanes.
#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: register-only intrinsics; the caller enabled avx2.
    unsafe {
        let h = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let h = _mm_add_epi32(h, _mm_unpackhi_epi64(h, h));
        _mm_cvtsi128_si32(_mm_add_epi32(h, _mm_shuffle_epi32(h, 1)))
    }
}
