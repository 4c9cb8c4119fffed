//! Inner loop of the input-sparse Q4_1 GEMV (one file per ISA: AVX-512 VNNI where the CPU
//! has it and the VNNI kernels are on, else AVX2, else portable) and its dispatch.
//!
//! Layout (see `crate::sparse_q4`): every input row holds the 4-bit codes of all outputs,
//! [`TILE`] outputs per 32 bytes; each tile's nibbles are placed (see [`position`]) so that
//! two rows interleaved byte by byte, multiplied by `vpmaddubsw` and widened by shifts give
//! eight f32 vectors of outputs in natural order. Per input block, each tile's f16 scales
//! and minima follow as 64 `d` then 64 `m` ([`DM_TILE_BYTES`]).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod scalar;

use crate::QK;
use crate::isa::{Isa, active};

/// Outputs per tile (32 bytes of codes per input row).
pub const TILE: usize = 64;

/// Bytes of codes per tile and input row.
pub const CODE_TILE_BYTES: usize = TILE / 2;

/// Bytes of f16 scales and minima per tile and input block.
pub const DM_TILE_BYTES: usize = TILE * 4;

/// Pairs of active inputs summed in i16 before widening: a pair adds at most
/// 2 * 15 * 127 = 3810 per output, and 8 * 3810 < 32768.
pub const I16_PAIRS: usize = 8;

/// Where output `o` of a tile (0..64) sits in its 32 bytes: (byte, shift of its nibble).
///
/// Byte k of the interleaved rows feeds i16 word k of `vpmaddubsw` in its 128-bit lane; the
/// low/high 8 bytes of a lane (unpacklo/hi) and the low/high nibbles give four i16 vectors
/// A0..A3, and the even/odd words of each, widened by shifts, give f32 vectors 2k and 2k + 1.
/// Vector v, lane L, element e is made output 8v + 4L + e.
pub const fn position(o: usize) -> (usize, u32) {
    let (v, lane, e) = (o >> 3, (o >> 2) & 1, o & 3);
    let (k, parity) = (v >> 1, v & 1);
    (16 * lane + 8 * (k & 1) + 2 * e + parity, 4 * (k >> 1) as u32)
}

/// Two active inputs of one block: byte offsets of their code rows and their int8 values,
/// as bytes `[x1, x2, x1, x2]` (one i16 pair of `vpmaddubsw` operands, twice). An odd last
/// input is paired with itself at value 0. 16 bytes (`pad` is 0), so that the AVX2 gather
/// writes two per 32-byte store.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(16))]
pub struct Pair {
    pub off: [u32; 2],
    pub x: i32,
    pub pad: u32,
}

impl Pair {
    /// The pair of rows at byte offsets `off` with int8 values `x1`, `x2`.
    pub fn new(off: [u32; 2], x1: i8, x2: i8) -> Self {
        let w = x1 as u8 as u32 | (x2 as u8 as u32) << 8;
        Self { off, x: (w | w << 16) as i32, pad: 0 }
    }
    /// The two int8 values.
    pub fn values(&self) -> [i8; 2] {
        [self.x as u8 as i8, (self.x >> 8) as u8 as i8]
    }
}

/// An input block with active inputs: its index, its pairs `start..end`, the activation
/// scale and the scaled sum of its quantized values (what the minima multiply).
#[derive(Debug, Clone, Copy, Default)]
pub struct ActiveBlock {
    pub b: u32,
    pub start: u32,
    pub end: u32,
    pub sx: f32,
    pub sum: f32,
}

/// What [`gather`] found in one input vector: its active blocks and their pairs. Every
/// pair's rows start below `inputs * row_bytes` at multiples of `row_bytes`, every block's
/// index is below `inputs / 32` and its pairs `start..end` lie in `pairs`, so that
/// [`TileRun::from_gathered`] checks the operands in constant time.
pub struct Gathered<'a> {
    pairs: &'a [Pair],
    blocks: &'a [ActiveBlock],
    inputs: usize,
    row_bytes: usize,
    /// Active input channels (|x| above the threshold).
    pub count: usize,
}

impl<'a> Gathered<'a> {
    /// The active blocks, in input order.
    pub fn blocks(&self) -> &'a [ActiveBlock] {
        self.blocks
    }
}

/// Operands of one product, checked once so that the loops index without bounds checks.
pub struct TileRun<'a> {
    codes: &'a [u8],
    dm: &'a [u8],
    tiles: usize,
    blocks: &'a [ActiveBlock],
    pairs: &'a [Pair],
}

impl<'a> TileRun<'a> {
    /// `codes`: rows of `tiles * 32` bytes; `dm`: [`DM_TILE_BYTES`] per tile and block.
    /// `None` unless every pair's row and every block's scales lie inside the buffers.
    #[cfg(test)]
    pub fn new(
        codes: &'a [u8],
        dm: &'a [u8],
        tiles: usize,
        blocks: &'a [ActiveBlock],
        pairs: &'a [Pair],
    ) -> Option<Self> {
        let row = tiles.checked_mul(CODE_TILE_BYTES)?;
        let rows_ok = pairs.iter().all(|p| p.off.iter().all(|&o| (o as usize).checked_add(row) <= Some(codes.len())));
        let blocks_ok = blocks.iter().all(|b| {
            b.start <= b.end
                && b.end as usize <= pairs.len()
                && (b.b as usize + 1).checked_mul(tiles * DM_TILE_BYTES).is_some_and(|e| e <= dm.len())
        });
        (rows_ok && blocks_ok).then_some(Self { codes, dm, tiles, blocks, pairs })
    }
    /// As `new` for the output of [`gather`] (whose bounds make the check O(1)): `None`
    /// unless its rows are `tiles * 32` bytes and its rows and blocks fit the buffers.
    pub fn from_gathered(codes: &'a [u8], dm: &'a [u8], tiles: usize, g: &Gathered<'a>) -> Option<Self> {
        let row_ok = tiles.checked_mul(CODE_TILE_BYTES) == Some(g.row_bytes);
        let codes_ok = g.inputs.checked_mul(g.row_bytes).is_some_and(|n| n <= codes.len());
        let dm_ok = (g.inputs / QK).checked_mul(tiles * DM_TILE_BYTES).is_some_and(|n| n <= dm.len());
        (row_ok && codes_ok && dm_ok).then_some(Self { codes, dm, tiles, blocks: g.blocks, pairs: g.pairs })
    }
    /// The pairs of block `blk`.
    fn pairs_of(&self, blk: &ActiveBlock) -> &'a [Pair] {
        &self.pairs[blk.start as usize..blk.end as usize]
    }
    /// Byte offset of the scales of block `b`, tile `t`.
    fn dm_at(&self, b: u32, t: usize) -> usize {
        (b as usize * self.tiles + t) * DM_TILE_BYTES
    }
    /// The active blocks this run covers.
    pub fn blocks(&self) -> &'a [ActiveBlock] {
        self.blocks
    }
    /// Tiles of 64 outputs per row.
    pub fn tiles(&self) -> usize {
        self.tiles
    }
    /// The same product over blocks `range` only.
    pub fn with_blocks(&self, range: std::ops::Range<usize>) -> TileRun<'a> {
        TileRun { blocks: &self.blocks[range], ..*self }
    }
}

impl Clone for TileRun<'_> {
    fn clone(&self) -> Self {
        *self
    }
}
impl Copy for TileRun<'_> {}

/// Tiles of work between a prefetch and its use (see `prefetch_blocks_ahead`).
#[cfg(target_arch = "x86_64")]
const PREFETCH_TILES: usize = 16;

/// Blocks ahead to prefetch when a task covers `tiles` tiles: about [`PREFETCH_TILES`] tiles
/// of work, so that few tiles per task still leave an L3 latency or more between a prefetch
/// and its use; `None` when the task's runs are long enough to leave to the hardware (see
/// [`PREFETCH_MAX_RUN_BYTES`]).
#[cfg(target_arch = "x86_64")]
fn prefetch_blocks_ahead(tiles: usize) -> Option<usize> {
    (tiles * CODE_TILE_BYTES <= PREFETCH_MAX_RUN_BYTES).then(|| (PREFETCH_TILES / tiles.max(1)).clamp(1, 4))
}

/// Prefetches block `blk`'s rows and scales of tile `tile`: the loads are latency-bound
/// when the weights come from L3. Every tile, even where two tiles share a line (fewer
/// prefetches measured no faster).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(op: &TileRun<'_>, blk: &ActiveBlock, tile: usize) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // `wrapping_add` keeps the address arithmetic defined for any offset (the callers' tiles
    // are in range anyway).
    let codes = op.codes.as_ptr().wrapping_add(tile * CODE_TILE_BYTES);
    let dm = op.dm.as_ptr().wrapping_add(op.dm_at(blk.b, tile));
    // SAFETY: SSE is part of x86-64, and a prefetch never faults, whatever the address.
    unsafe {
        for p in op.pairs_of(blk) {
            _mm_prefetch::<_MM_HINT_T0>(codes.wrapping_add(p.off[0] as usize) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(codes.wrapping_add(p.off[1] as usize) as *const i8);
        }
        for l in 0..DM_TILE_BYTES / 64 {
            _mm_prefetch::<_MM_HINT_T0>(dm.wrapping_add(64 * l) as *const i8);
        }
    }
}

/// Longest run of a row (bytes of codes a task reads per active row) prefetched in software.
/// Longer runs the hardware prefetcher streams by itself, and the software prefetches into L1
/// then only hold the line fill buffers (Llama-3-8B's down shape, 2 KB runs, s = 0.5: 655-735
/// µs without against 750-930 µs with, taking turns in one process; the SmolLM2 shapes' runs
/// are 96-768 bytes).
#[cfg(target_arch = "x86_64")]
const PREFETCH_MAX_RUN_BYTES: usize = 1024;

/// Whether the AVX-512 VNNI + VBMI loop runs (off with the VNNI kernels, see
/// `crate::gemm_vnni::enabled`).
#[cfg(target_arch = "x86_64")]
fn vnni_vbmi() -> bool {
    static VBMI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    crate::gemm_vnni::enabled() && *VBMI.get_or_init(|| std::arch::is_x86_feature_detected!("avx512vbmi"))
}

/// `y[64 t + o] = Σ_blocks (d · sx · Σ_pairs code · x + m · sum)` for tiles `t0..t0 + y.len() / 64`
/// (overwritten, so `y` needs no zeroing; zero without blocks).
pub fn accumulate(op: &TileRun<'_>, t0: usize, y: &mut [f32]) {
    assert!(y.len().is_multiple_of(TILE) && t0 + y.len() / TILE <= op.tiles, "tile range out of bounds");
    #[cfg(target_arch = "x86_64")]
    if vnni_vbmi() {
        // SAFETY: `vnni_vbmi()` is true only where avx512f, avx512bw, avx512vnni and
        // avx512vbmi are present; the operands were checked as for the AVX2 loop below.
        unsafe { avx512::accumulate(op, t0, y) };
        return;
    }
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2, fma and f16c;
        // `TileRun::new` or `from_gathered` checked every row and scale offset (the latter by
        // `gather`'s bounds), and the assert above the tiles.
        Isa::Avx2 => unsafe { avx2::accumulate(op, t0, y) },
        _ => scalar::accumulate(op, t0, y),
    }
}

/// Masks and quantizes `x` block by block exactly as `ActsQ8::quantize_from` does on the
/// masked vector (`sx = absmax / 127`, `round(x / sx)` half away from zero, clamped to ±127),
/// and lists each block with an active channel and its nonzero values, two at a time (rows
/// at `i * row_bytes`; values that round to 0 add nothing and are left out). `pairs` and
/// `blocks` are only storage, grown to the most a vector can need and then reused (written
/// in place, no per-value push). `x.len()` is a multiple of 32. `None` if the row offsets
/// would not fit in u32.
pub fn gather<'a>(
    x: &[f32],
    threshold: f32,
    row_bytes: usize,
    pairs: &'a mut Vec<Pair>,
    blocks: &'a mut Vec<ActiveBlock>,
) -> Option<Gathered<'a>> {
    x.len().checked_mul(row_bytes).filter(|&n| n <= u32::MAX as usize)?;
    let nb = x.len() / QK;
    // At most 16 pairs per block.
    if pairs.len() < nb * QK / 2 {
        pairs.resize(nb * QK / 2, Pair::default());
    }
    if blocks.len() < nb {
        blocks.resize(nb, ActiveBlock::default());
    }
    let (count, np, nblk) = match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active()` returns Avx2 only when the CPU reports avx2, fma and f16c;
        // `pairs` and `blocks` were sized above for every block of `x`, and the offsets
        // fit in u32.
        Isa::Avx2 => unsafe { avx2::gather(x, threshold, row_bytes, pairs, blocks) },
        _ => scalar::gather(x, threshold, row_bytes, pairs, blocks),
    };
    let g = Gathered { pairs: &pairs[..np], blocks: &blocks[..nblk], inputs: x.len(), row_bytes, count };
    Some(g)
}

/// Writes block `b` (scale `sx`) at `blocks[nblk]` and the pairs of the values `q` at
/// the set bits of `nonzero` from `pairs[np]` on; returns the new `np`. Bit by bit with
/// `tzcnt`, the pair count known up front (an odd last value is paired with itself at 0).
///
/// # Safety
/// `pairs` has room for `np + nonzero.count_ones().div_ceil(2)` pairs and `blocks` for
/// `nblk + 1` blocks; `(b * 32 + 31) * row_bytes` fits in u32.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn emit_block(
    b: usize,
    q: &[i8; QK],
    nonzero: u32,
    sx: f32,
    row_bytes: usize,
    pairs: &mut [Pair],
    np: usize,
    blocks: &mut [ActiveBlock],
    nblk: usize,
) -> usize {
    let (base, row) = ((b * QK * row_bytes) as u32, row_bytes as u32);
    let n = nonzero.count_ones() as usize;
    let (mut bits, mut qsum) = (nonzero, 0i32);
    // SAFETY: the caller guarantees room for the n.div_ceil(2) pairs and the block.
    unsafe {
        let out = pairs.as_mut_ptr().add(np);
        for k in 0..n / 2 {
            let k0 = bits.trailing_zeros();
            bits &= bits - 1;
            let k1 = bits.trailing_zeros();
            bits &= bits - 1;
            let (q0, q1) = (q[k0 as usize & 31], q[k1 as usize & 31]);
            qsum += q0 as i32 + q1 as i32;
            out.add(k).write(Pair::new([base + k0 * row, base + k1 * row], q0, q1));
        }
        if n % 2 == 1 {
            let k0 = bits.trailing_zeros();
            let q0 = q[k0 as usize & 31];
            qsum += q0 as i32;
            out.add(n / 2).write(Pair::new([base + k0 * row; 2], q0, 0));
        }
        let (start, end) = (np as u32, (np + n.div_ceil(2)) as u32);
        blocks.as_mut_ptr().add(nblk).write(ActiveBlock { b: b as u32, start, end, sx, sum: qsum as f32 * sx });
    }
    np + n.div_ceil(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_a_permutation() {
        let mut seen = [false; TILE];
        for o in 0..TILE {
            let (byte, shift) = position(o);
            let slot = 2 * byte + (shift / 4) as usize;
            assert!(!seen[slot]);
            seen[slot] = true;
        }
    }

    #[test]
    fn simd_matches_scalar_on_every_tail() {
        let (inputs, tiles, nb) = (64usize, 3usize, 2usize);
        let row = tiles * CODE_TILE_BYTES;
        let codes: Vec<u8> = (0..inputs * row).map(|i| (i * 97 % 251) as u8).collect();
        let dm: Vec<u8> = (0..nb * tiles * TILE * 2)
            .flat_map(|i| {
                let v = if i % 128 < 64 { 0.01 + (i % 13) as f32 * 0.002 } else { -0.05 + (i % 7) as f32 * 0.01 };
                half::f16::from_f32(v).to_bits().to_le_bytes()
            })
            .collect();
        // Block 0: 19 pairs (over two i16 chunks and one odd input), block 1: one input.
        let mut pairs: Vec<Pair> = (0..18)
            .map(|k| Pair::new([(k * row) as u32, ((31 - k) * row) as u32], 127 - 14 * k as i8, -127 + k as i8))
            .collect();
        pairs.push(Pair::new([(5 * row) as u32; 2], -127, 0));
        pairs.push(Pair::new([(40 * row) as u32; 2], 77, 0));
        let blocks = [
            ActiveBlock { b: 0, start: 0, end: 19, sx: 0.03, sum: 1.5 },
            ActiveBlock { b: 1, start: 19, end: 20, sx: 0.2, sum: -0.7 },
        ];
        let op = TileRun::new(&codes, &dm, tiles, &blocks, &pairs).expect("in range");
        for (t0, n) in [(0, 3), (1, 2), (2, 1), (0, 1)] {
            let mut want = vec![0.25f32; n * TILE];
            scalar::accumulate(&op, t0, &mut want);
            // The AVX-512 VNNI loop where the CPU has it, then the AVX2 one.
            for avx2_only in [false, true] {
                crate::gemm_vnni::FORCE_OFF.with(|f| f.set(avx2_only));
                let mut got = vec![0.25f32; n * TILE];
                accumulate(&op, t0, &mut got);
                crate::gemm_vnni::FORCE_OFF.with(|f| f.set(false));
                for (j, (w, g)) in want.iter().zip(&got).enumerate() {
                    assert!(
                        (w - g).abs() <= 1e-5 * (1.0 + w.abs()),
                        "t0 {t0} output {j}, avx2 only {avx2_only}: {w} vs {g}"
                    );
                }
            }
        }
        assert!(TileRun::new(&codes, &dm, tiles + 1, &blocks, &pairs).is_none());
    }

    #[test]
    fn avx2_gather_matches_scalar() {
        let mut x: Vec<f32> = (0..320).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 100.0).collect();
        x[3] = f32::NAN;
        x[100] = 0.5 * 5.0 / 127.0 * 3.0; // rounding ties within a block whose max is 5
        x[101] = 5.0;
        x[64..96].fill(0.0);
        x[200..232].iter_mut().enumerate().for_each(|(k, v)| *v = if k == 7 { -2.0 } else { 0.001 });
        for t in [0.0, 0.5, 2.0, 4.9, 10.0] {
            let (mut p1, mut b1, mut p2, mut b2) =
                (vec![Pair::default(); 160], vec![ActiveBlock::default(); 10], Vec::new(), Vec::new());
            let (n1, np1, nb1) = scalar::gather(&x, t, 96, &mut p1, &mut b1);
            let g = gather(&x, t, 96, &mut p2, &mut b2).expect("offsets fit");
            assert_eq!(n1, g.count);
            assert_eq!(
                format!("{:?} {:?}", &p1[..np1], &b1[..nb1]),
                format!("{:?} {:?}", g.pairs, g.blocks),
                "threshold {t}"
            );
        }
    }
}
