//! x86-64 AVX-512 VNNI input-sparse Q4_1 accumulation (with VBMI byte permutes).
//!
//! Per active block and 64-output tile: two pairs (four active rows) per step. Their 32 code
//! bytes are loaded two rows per 512-bit register, and two `vpermt2b` place the four rows'
//! bytes of each output side by side in a 32-bit lane. The layout of [`super::position`] puts
//! outputs o and o + 32 in one byte, so the permutes can pick natural output order: the low
//! nibbles of the first result are outputs 0..16, its high nibbles 32..48, those of the second
//! 16..32 and 48..64. `vpdpbusd` multiplies each lane's four codes by the four int8 values and
//! sums in i32, with no widening. The sums are scaled by `d · sx` and added to the f32 outputs
//! with `m · Σx`, 16 outputs per vector. Rows and scales are prefetched as in the AVX2 loop.

use std::arch::x86_64::*;

use super::{CODE_TILE_BYTES, Pair, TILE, TileRun, position, prefetch, prefetch_blocks_ahead};

/// `vpermt2b` indices into the table [row 0 | row 1 | row 2 | row 3] (32 bytes each): lane i
/// of the result takes byte `position(first + i)` of each of the four rows.
const fn byte_index(first: usize) -> [u8; 64] {
    let mut idx = [0u8; 64];
    let mut i = 0;
    while i < 16 {
        let (byte, _) = position(first + i);
        let mut r = 0;
        while r < 4 {
            idx[4 * i + r] = (32 * r + byte) as u8;
            r += 1;
        }
        i += 1;
    }
    idx
}

/// Lanes of outputs 0..16 (low nibbles) and 32..48 (high nibbles).
static FIRST_HALF: [u8; 64] = byte_index(0);
/// Lanes of outputs 16..32 (low nibbles) and 48..64 (high nibbles).
static SECOND_HALF: [u8; 64] = byte_index(16);

/// Σ over the block's pairs of code · x in i32, outputs 16c..16c + 16 in vector c; vectors 2
/// and 3 (the high nibbles) hold 16 times their sums (the nibble is left in place, not
/// shifted down: the caller scales them by 1/16, exactly).
///
/// # Safety
/// avx512f/bw/vnni/vbmi are enabled; every pair's row offset plus the tile's 32 bytes lies
/// in the codes buffer that `codes` points into.
#[inline(always)]
unsafe fn quad_sums(codes: *const u8, pairs: &[Pair], first: __m512i, second: __m512i) -> [__m512i; 4] {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let low = _mm512_set1_epi8(0x0f);
        let high = _mm512_set1_epi8(0xf0u8 as i8);
        let row = |off: u32| _mm256_loadu_si256(codes.add(off as usize) as *const __m256i);
        let two_rows = |p: &Pair| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(row(p.off[0])), row(p.off[1]));
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut add = |ab: __m512i, cd: __m512i, x: i32| {
            let x = _mm512_set1_epi32(x);
            let lo = _mm512_permutex2var_epi8(ab, first, cd);
            let hi = _mm512_permutex2var_epi8(ab, second, cd);
            acc[0] = _mm512_dpbusd_epi32(acc[0], _mm512_and_si512(lo, low), x);
            acc[1] = _mm512_dpbusd_epi32(acc[1], _mm512_and_si512(hi, low), x);
            acc[2] = _mm512_dpbusd_epi32(acc[2], _mm512_and_si512(lo, high), x);
            acc[3] = _mm512_dpbusd_epi32(acc[3], _mm512_and_si512(hi, high), x);
        };
        let mut quads = pairs.chunks_exact(2);
        for q in &mut quads {
            // Values as bytes [x1, x2] of the first pair, then [x1, x2] of the second.
            add(two_rows(&q[0]), two_rows(&q[1]), (q[0].x & 0xffff) | (q[1].x << 16));
        }
        if let [p] = quads.remainder() {
            // An odd last pair: its rows again in the upper half, at value 0.
            let ab = two_rows(p);
            add(ab, ab, p.x & 0xffff);
        }
        acc
    }
}

/// See [`super::accumulate`].
///
/// # Safety
/// avx512f/bw/vnni/vbmi are enabled; the `TileRun` constructors checked every pair's row and
/// block's scales, and `t0 + y.len() / 64 <= op.tiles`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub unsafe fn accumulate(op: &TileRun<'_>, t0: usize, y: &mut [f32]) {
    let tiles = y.len() / TILE;
    // SAFETY: the rows and scales lie in the buffers (see above), so each tile's 32 code bytes
    // and 256 scale bytes are inside, and y has 64 values per tile.
    unsafe {
        if op.blocks.is_empty() {
            y.fill(0.0);
            return;
        }
        let first = _mm512_loadu_si512(FIRST_HALF.as_ptr() as *const __m512i);
        let second = _mm512_loadu_si512(SECOND_HALF.as_ptr() as *const __m512i);
        let ahead = prefetch_blocks_ahead(tiles);
        for blk in op.blocks.iter().take(ahead.unwrap_or(0)).skip(1) {
            for t in 0..tiles {
                prefetch(op, blk, t0 + t);
            }
        }
        for (bi, blk) in op.blocks.iter().enumerate() {
            let pairs = op.pairs_of(blk);
            let next = ahead.and_then(|a| op.blocks.get(bi + a));
            let sx = _mm512_set1_ps(blk.sx);
            // The high nibbles' sums come 16 times too large (see `quad_sums`); both scalings
            // are by powers of two, so the products equal those of shifted nibbles bit for bit.
            let sx_high = _mm512_set1_ps(blk.sx / 16.0);
            let sum = _mm512_set1_ps(blk.sum);
            for t in 0..tiles {
                let tile = t0 + t;
                if let Some(nb) = next {
                    prefetch(op, nb, tile);
                }
                let v = quad_sums(op.codes.as_ptr().add(tile * CODE_TILE_BYTES), pairs, first, second);
                let dm = op.dm.as_ptr().add(op.dm_at(blk.b, tile));
                let yp = y.as_mut_ptr().add(t * TILE);
                for (c, vc) in v.iter().enumerate() {
                    let d = _mm512_cvtph_ps(_mm256_loadu_si256(dm.add(32 * c) as *const __m256i));
                    let m = _mm512_cvtph_ps(_mm256_loadu_si256(dm.add(2 * TILE + 32 * c) as *const __m256i));
                    // The first block overwrites `y` (m · sum + 0 is exactly m · sum).
                    let yc = if bi == 0 {
                        _mm512_mul_ps(m, sum)
                    } else {
                        _mm512_fmadd_ps(m, sum, _mm512_loadu_ps(yp.add(16 * c)))
                    };
                    let scale = if c < 2 { sx } else { sx_high };
                    let yc = _mm512_fmadd_ps(d, _mm512_mul_ps(_mm512_cvtepi32_ps(*vc), scale), yc);
                    _mm512_storeu_ps(yp.add(16 * c), yc);
                }
            }
        }
    }
}
