//! Portable input-sparse Q4_1 accumulation: the reference for the SIMD loop.

use half::f16;

use super::{ActiveBlock, CODE_TILE_BYTES, Pair, TILE, TileRun, emit_block, position};
use crate::QK;

/// f16 number `k` of `bytes` (little-endian bits).
fn f16_at(bytes: &[u8], k: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([bytes[2 * k], bytes[2 * k + 1]])).to_f32()
}

pub fn accumulate(op: &TileRun<'_>, t0: usize, y: &mut [f32]) {
    let pos: [(usize, u32); TILE] = std::array::from_fn(position);
    y.fill(0.0);
    for blk in op.blocks {
        let pairs = op.pairs_of(blk);
        for (t, yt) in y.chunks_exact_mut(TILE).enumerate() {
            let tile = t0 + t;
            let mut acc = [0i32; TILE];
            for p in pairs {
                for (&off, x) in p.off.iter().zip(p.values()) {
                    let row = &op.codes[off as usize + tile * CODE_TILE_BYTES..][..CODE_TILE_BYTES];
                    for (a, &(byte, shift)) in acc.iter_mut().zip(&pos) {
                        *a += ((row[byte] >> shift) & 0x0f) as i32 * x as i32;
                    }
                }
            }
            let dm = &op.dm[op.dm_at(blk.b, tile)..][..super::DM_TILE_BYTES];
            for (o, (yo, &a)) in yt.iter_mut().zip(&acc).enumerate() {
                *yo += f16_at(dm, TILE + o) * blk.sum;
                *yo += f16_at(dm, o) * (a as f32 * blk.sx);
            }
        }
    }
}

/// As `super::gather` into storage sized for every block of `x` (16 pairs and one block
/// each; panics otherwise); returns (active channels, pairs, blocks) written.
pub fn gather(
    x: &[f32],
    threshold: f32,
    row_bytes: usize,
    pairs: &mut [Pair],
    blocks: &mut [ActiveBlock],
) -> (usize, usize, usize) {
    let nb = x.len() / QK;
    assert!(pairs.len() >= nb * QK / 2 && blocks.len() >= nb, "gather storage too small");
    assert!(x.len().checked_mul(row_bytes).is_some_and(|n| n <= u32::MAX as usize), "row offsets exceed u32");
    let (mut count, mut np, mut nblk) = (0, 0, 0);
    for (b, xb) in x.chunks_exact(QK).enumerate() {
        let mut act = 0u32;
        let mut amax = 0f32;
        for (k, v) in xb.iter().enumerate() {
            let a = v.abs();
            if a > threshold {
                amax = amax.max(a);
                act |= 1 << k;
            }
        }
        if act == 0 {
            continue;
        }
        count += act.count_ones() as usize;
        let sx = amax / 127.0;
        let inv = if sx > 0.0 { 1.0 / sx } else { 0.0 };
        let mut q = [0i8; QK];
        let mut nonzero = 0u32;
        for (k, &v) in xb.iter().enumerate() {
            if act & (1 << k) != 0 {
                q[k] = crate::quant::round_away(v * inv).clamp(-127.0, 127.0) as i8;
                nonzero |= ((q[k] != 0) as u32) << k;
            }
        }
        // SAFETY: at most 16 pairs and one block per block of `x`, for which the storage was
        // checked above, as were the offsets.
        np = unsafe { emit_block(b, &q, nonzero, sx, row_bytes, pairs, np, blocks, nblk) };
        nblk += 1;
    }
    (count, np, nblk)
}
