//! x86-64 AVX2 + FMA + F16C input-sparse Q4_1 accumulation.
//!
//! Per active block and 64-output tile: two active rows per step, their 32 code bytes
//! interleaved (`vpunpckl/hbw`), nibbles masked out and multiplied by the pair of int8
//! values with `vpmaddubsw` (unsigned codes x signed values) into four i16 accumulators;
//! after at most [`I16_PAIRS`] pairs the sums are widened to i32 by shifts (the layout puts
//! outputs so that this yields natural order), then scaled by `d · sx` and added to the f32
//! outputs with `m · Σx`. Rows and scales are prefetched about 16 tiles of work ahead.

use std::arch::x86_64::*;

use super::{ActiveBlock, CODE_TILE_BYTES, DM_TILE_BYTES, I16_PAIRS, Pair, TILE, TileRun, push_block};
use crate::QK;

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

/// Tiles of work between a prefetch and its use (see `accumulate`).
const PREFETCH_TILES: usize = 16;

/// Prefetches block `blk`'s rows and scales of tile `tile`: the loads are latency-bound
/// when the weights come from L3. Every tile, even where two tiles share a line (fewer
/// prefetches measured no faster).
#[inline(always)]
unsafe fn prefetch(op: &TileRun<'_>, blk: &ActiveBlock, tile: usize) {
    // SAFETY: a prefetch never faults; the addresses are inside the buffers anyway (the
    // caller's tile is in range, and `TileRun::new` checked the rows and scales).
    unsafe {
        let codes = op.codes.as_ptr().add(tile * CODE_TILE_BYTES);
        for p in op.pairs_of(blk) {
            _mm_prefetch::<_MM_HINT_T0>(codes.add(p.off[0] as usize) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(codes.add(p.off[1] as usize) as *const i8);
        }
        let dm = op.dm.as_ptr().add(op.dm_at(blk.b, tile));
        for l in 0..DM_TILE_BYTES / 64 {
            _mm_prefetch::<_MM_HINT_T0>(dm.add(64 * l) as *const i8);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn accumulate(op: &TileRun<'_>, t0: usize, y: &mut [f32]) {
    let tiles = y.len() / TILE;
    // SAFETY: `TileRun::new` checked that every pair's row (tiles * 32 bytes) and every
    // block's scales lie in the buffers; the caller checked t0 + tiles <= op.tiles, so the
    // tile's 32 code bytes and 256 scale bytes are inside, and y has 64 values per tile.
    unsafe {
        // Blocks ahead to prefetch: about 16 tiles of work, so that few tiles per task still
        // leave an L3 latency or more between a prefetch and its use.
        let ahead = (PREFETCH_TILES / tiles.max(1)).clamp(1, 4);
        for blk in op.blocks.iter().take(ahead).skip(1) {
            for t in 0..tiles {
                prefetch(op, blk, t0 + t);
            }
        }
        for (bi, blk) in op.blocks.iter().enumerate() {
            let pairs = op.pairs_of(blk);
            let next = op.blocks.get(bi + ahead);
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
                    let yk = _mm256_fmadd_ps(m, sum, _mm256_loadu_ps(yp.add(8 * k)));
                    let yk = _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_cvtepi32_ps(*vk), sx), yk);
                    _mm256_storeu_ps(yp.add(8 * k), yk);
                }
            }
        }
    }
}

/// Largest of 8 non-negative lanes.
#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics; the caller enabled avx.
    unsafe {
        let h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)))
    }
}

/// As `super::scalar::gather`, a block of 32 values per step: the mask, absmax and
/// rounding (truncate, then step away from zero when the exact remainder is >= 0.5) in
/// vectors, the pairs from the bits of the nonzero values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn gather(
    x: &[f32],
    threshold: f32,
    row_bytes: usize,
    pairs: &mut Vec<Pair>,
    blocks: &mut Vec<ActiveBlock>,
) -> usize {
    let mut count = 0;
    // SAFETY: each block reads its own 32 values of `x` (chunks_exact); stores go to `q`.
    unsafe {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let tv = _mm256_set1_ps(threshold);
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
            let mut q = [0i32; QK];
            let mut nonzero = 0u32;
            let one = _mm256_set1_ps(1.0);
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
                let qi = _mm256_and_si256(_mm256_cvttps_epi32(r), _mm256_castps_si256(keep));
                _mm256_storeu_si256(q.as_mut_ptr().add(8 * k) as *mut __m256i, qi);
                let zero = _mm256_cmpeq_epi32(qi, _mm256_setzero_si256());
                nonzero |= (!_mm256_movemask_ps(_mm256_castsi256_ps(zero)) as u32 & 0xff) << (8 * k);
            }
            push_block(b, &q, nonzero, sx, row_bytes, pairs, blocks);
        }
    }
    count
}
