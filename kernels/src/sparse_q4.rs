//! Input-sparse GEMV over Q4_1 weights: `y = W (x ⊙ [|x| > t])` at the fast path's
//! precision, reading only the codes of active input channels.
//!
//! [`InputMajorQ4_1`] is a lossless transposition of a [`MatQ4_1`]: per input channel, the
//! 4-bit codes of all outputs (outputs padded to a multiple of 64, 32 bytes per 64 outputs,
//! nibbles placed for the AVX2 unpacking, see `cpu::sparse_q4::position`); per input block
//! of 32 channels, the f16 scale `d` and minimum `m` of every output. An active channel costs
//! half a byte per output, an input block with any active channel four more bytes per output
//! (its `d` and `m`), so at 50% sparsity about 0.375 bytes per dense weight are read against
//! the dense GEMV's 0.625.
//!
//! The result equals (up to f32 summation order) [`crate::matmul_q4_1`] on the masked input
//! quantized by [`crate::ActsQ8::quantize_from`]: per block `sx = absmax / 127`,
//! `x̂ = round(x / sx)`, and `y_j = Σ_b d_jb sx_b Σ_i code_ij x̂_i + m_jb sx_b Σ_i x̂_i`.
//! Blocks without an active channel are skipped entirely.

use half::f16;

use crate::cpu::sparse_q4::{self as inner, ActiveBlock, CODE_TILE_BYTES, DM_TILE_BYTES, Pair, TILE, TileRun};
use crate::pool::{global, parallel_for};
use crate::sparse::{Shared, SparseScratch, check_io, check_threshold};
use crate::{KernelError, MatQ4_1, QK};

/// Most tiles (of 64 outputs) per task when outputs are split: the task's f32 outputs
/// (8 KB) stay in L1 while each active row is read 1 KB at a time.
const MAX_TASK_TILES: usize = 32;

/// Fewest tiles per task when outputs are split (256 outputs: 128-byte row segments).
const MIN_TASK_TILES: usize = 4;

/// Tasks per thread when there is enough work: with more tasks than threads a thread that
/// is descheduled or slow holds up less of the product (as in the dense products).
const TASKS_PER_THREAD: usize = 4;

/// Below this many tiles per thread the product is split over input blocks instead (all
/// outputs per task, partial sums added at the end).
const MIN_TILES_PER_THREAD: usize = 8;

/// Cost of a block's scaling per tile, in pairs (for balancing a split over blocks).
const BLOCK_COST_PAIRS: usize = 5;

/// One cache line, so that code rows and scale tiles start 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A zero-initialized, 64-byte aligned byte buffer.
#[derive(Clone)]
struct Lines {
    lines: Vec<Line>,
    len: usize,
}

impl Lines {
    fn zeroed(len: usize) -> Self {
        Self { lines: vec![Line([0; 64]); len.div_ceil(64)], len }
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes (repr(C), no padding), the vector holds at least
        // `len` of them, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably through `self`; any byte value is valid.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// Q4_1 weights stored input-major for [`gemv_input_sparse_q4_1`] (a lossless
/// transposition of [`MatQ4_1`], the same bytes per weight).
#[derive(Clone)]
pub struct InputMajorQ4_1 {
    inputs: usize,
    outputs: usize,
    /// Tiles of 64 outputs per input row.
    tiles: usize,
    /// `inputs` rows of `tiles * 32` bytes.
    codes: Lines,
    /// Per input block and tile: 64 f16 scales, then 64 f16 minima (little-endian bits).
    dm: Lines,
}

impl std::fmt::Debug for InputMajorQ4_1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputMajorQ4_1").field("inputs", &self.inputs).field("outputs", &self.outputs).finish()
    }
}

impl InputMajorQ4_1 {
    /// Transposes a row-major `outputs x inputs` Q4_1 matrix (codes, scales and minima
    /// are kept bit for bit). Fails only when the codes would exceed 4 GiB.
    pub fn from_row_major(w: &MatQ4_1) -> Result<Self, KernelError> {
        let (outputs, inputs) = (w.rows(), w.cols());
        let tiles = outputs.div_ceil(TILE);
        let row_bytes = tiles * CODE_TILE_BYTES;
        let code_len = inputs
            .checked_mul(row_bytes)
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| KernelError::Shape(format!("{outputs} x {inputs} is too large for InputMajorQ4_1")))?;
        let nb = inputs / QK;
        let mut codes = Lines::zeroed(code_len);
        let mut dm = Lines::zeroed(nb * tiles * DM_TILE_BYTES);
        let (cb, db) = (codes.bytes_mut(), dm.bytes_mut());
        // Output by output: the 64 outputs of a tile write the same cache lines of every
        // row, so the rows' lines stay in cache while a tile is filled.
        for j in 0..outputs {
            let row = w.row_view(j);
            let (tile, o) = (j / TILE, j % TILE);
            let (byte, shift) = inner::position(o);
            for b in 0..nb {
                let at = (b * tiles + tile) * DM_TILE_BYTES;
                db[at + 2 * o..at + 2 * o + 2].copy_from_slice(&row.d[b].to_le_bytes());
                db[at + 2 * (TILE + o)..at + 2 * (TILE + o) + 2].copy_from_slice(&row.m[b].to_le_bytes());
                for (k, &c) in row.codes[b * 16..(b + 1) * 16].iter().enumerate() {
                    let i = b * QK + k;
                    cb[i * row_bytes + tile * CODE_TILE_BYTES + byte] |= (c & 0x0f) << shift;
                    cb[(i + 16) * row_bytes + tile * CODE_TILE_BYTES + byte] |= (c >> 4) << shift;
                }
            }
        }
        Ok(Self { inputs, outputs, tiles, codes, dm })
    }
    /// Input channels.
    pub fn inputs(&self) -> usize {
        self.inputs
    }
    /// Output channels.
    pub fn outputs(&self) -> usize {
        self.outputs
    }
    /// Bytes held (codes and f16 scales and minima, outputs padded to a multiple of 64).
    pub fn bytes(&self) -> usize {
        self.codes.len + self.dm.len
    }
    /// Weight (input `i`, output `j`) in f32 (panics if out of range).
    pub fn get(&self, i: usize, j: usize) -> f32 {
        assert!(i < self.inputs && j < self.outputs, "index out of range");
        let (tile, o) = (j / TILE, j % TILE);
        let (byte, shift) = inner::position(o);
        let code =
            (self.codes.bytes()[i * self.tiles * CODE_TILE_BYTES + tile * CODE_TILE_BYTES + byte] >> shift) & 0x0f;
        let at = (i / QK * self.tiles + tile) * DM_TILE_BYTES;
        let f = |k: usize| {
            let b = self.dm.bytes();
            f16::from_bits(u16::from_le_bytes([b[at + 2 * k], b[at + 2 * k + 1]])).to_f32()
        };
        f(o) * code as f32 + f(TILE + o)
    }
}

/// Per-call lists of [`gemv_input_sparse_q4_1`], kept in [`SparseScratch`].
#[derive(Debug, Default)]
pub(crate) struct Q4Lists {
    pairs: Vec<Pair>,
    blocks: Vec<ActiveBlock>,
    partial: Vec<f32>,
}

/// `out = W (x ⊙ [|x| > threshold])` for Q4_1 input-major weights, the active values
/// quantized to int8 per block of 32 inputs as the dense fast path does; returns how many
/// input channels were active.
pub fn gemv_input_sparse_q4_1(
    w: &InputMajorQ4_1,
    x: &[f32],
    threshold: f32,
    out: &mut [f32],
    scratch: &mut SparseScratch,
) -> Result<usize, KernelError> {
    check_threshold(threshold)?;
    check_io(w.inputs, w.outputs, x.len(), out.len())?;
    let lists = &mut scratch.q4;
    let count = inner::gather(x, threshold, w.tiles * CODE_TILE_BYTES, &mut lists.pairs, &mut lists.blocks);
    if lists.blocks.is_empty() {
        out.fill(0.0);
        return Ok(count);
    }
    let Q4Lists { pairs, blocks, partial } = lists;
    let op = TileRun::new(w.codes.bytes(), w.dm.bytes(), w.tiles, blocks, pairs)
        .ok_or_else(|| KernelError::Shape("input-sparse Q4_1 operands out of range".into()))?;
    let threads = global().threads();
    let padded = w.tiles * TILE;
    if threads == 1 || w.tiles >= MIN_TILES_PER_THREAD * threads {
        // Split over outputs: each task runs every active block over its own tiles.
        let tasks = w.tiles.div_ceil(MAX_TASK_TILES).max(TASKS_PER_THREAD * threads);
        let per = w.tiles.div_ceil(tasks).max(MIN_TASK_TILES);
        let tasks = w.tiles.div_ceil(per);
        partial.resize(padded, 0.0);
        let p = Shared(partial.as_mut_ptr());
        parallel_for(tasks, |t| {
            let (t0, t1) = (t * per, ((t + 1) * per).min(w.tiles));
            // SAFETY: task t owns partial[t0 * 64..t1 * 64], inside its `padded` values.
            let y = unsafe { p.range(t0 * TILE, (t1 - t0) * TILE) };
            y.fill(0.0);
            inner::accumulate(&op, t0, y);
        });
        out.copy_from_slice(&partial[..w.outputs]);
    } else {
        // Few outputs: split over input blocks, balanced by pairs; partial sums per task.
        let cost = |b: &ActiveBlock| (b.end - b.start) as usize + BLOCK_COST_PAIRS;
        let total: usize = blocks.iter().map(cost).sum();
        let tasks = (2 * threads).min(blocks.len());
        let mut bounds = Vec::with_capacity(tasks + 1);
        bounds.push(0);
        let mut acc = 0;
        for (k, b) in blocks.iter().enumerate() {
            acc += cost(b);
            if acc * tasks >= total * bounds.len() && bounds.len() < tasks {
                bounds.push(k + 1);
            }
        }
        bounds.push(blocks.len());
        let tasks = bounds.len() - 1;
        partial.resize(tasks * padded, 0.0);
        let p = Shared(partial.as_mut_ptr());
        parallel_for(tasks, |t| {
            // SAFETY: task t owns partial[t * padded..(t + 1) * padded].
            let y = unsafe { p.range(t * padded, padded) };
            y.fill(0.0);
            inner::accumulate(&op.with_blocks(bounds[t]..bounds[t + 1]), 0, y);
        });
        out.copy_from_slice(&partial[..w.outputs]);
        for t in 1..tasks {
            for (o, v) in out.iter_mut().zip(&partial[t * padded..]) {
                *o += v;
            }
        }
    }
    Ok(count)
}
