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
use crate::lines::Lines;
use crate::pool::{global, parallel_for};
use crate::sparse::{Shared, SparseScratch, check_io, check_threshold};
use crate::{KernelError, MatQ4_1, QK};

/// Most tiles (of 64 outputs) per task when outputs are split: the task's f32 outputs
/// (8 KB) stay in L1 while each active row is read 1 KB at a time.
const MAX_TASK_TILES: usize = 32;

/// Least work (active pairs x tiles) worth a second thread: below it (k_v, 192 x 576, at
/// 50% sparsity is about 450) the pool's hand-off and the partial sums cost about what a
/// second thread saves.
const MIN_PARALLEL_WORK: usize = 1024;

/// Cost of a block's scaling per tile, in pairs (for balancing a split over blocks).
const BLOCK_COST_PAIRS: usize = 5;

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
        self.codes.bytes().len() + self.dm.bytes().len()
    }
    /// Bytes one product reads with `active` input channels (a count, or a mean over
    /// products): each active channel's codes, and the scales and minima of every input
    /// block. A block without an active channel is skipped, but at the sparsities the methods
    /// reach that is rare (at 50%, one block of 32 channels in 2^32; at 90%, 3%), so this
    /// counts them all.
    pub fn bytes_read(&self, active: f64) -> f64 {
        let row = (self.tiles * CODE_TILE_BYTES) as f64;
        active.clamp(0.0, self.inputs as f64) * row + self.dm.bytes().len() as f64
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

/// Per-call storage of [`gemv_input_sparse_q4_1`], kept in [`SparseScratch`].
#[derive(Debug, Default)]
pub(crate) struct Q4Lists {
    pairs: Vec<Pair>,
    blocks: Vec<ActiveBlock>,
    partial: Vec<f32>,
    bounds: Vec<usize>,
}

/// How a product is cut into tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Runs of `per` tiles (64 outputs), every active block each.
    Outputs { per: usize },
    /// About `tasks` runs of active blocks balanced by pairs, all outputs each, partial
    /// sums added at the end.
    Blocks { tasks: usize },
}

/// The split for `tiles` tiles and `pairs` active pairs on `threads` threads: one run of
/// blocks per thread, each reading its rows whole, or below [`MIN_PARALLEL_WORK`] one
/// thread for it all. Measured at 2 threads, cold weights, s = 0.5: runs of blocks beat runs
/// of outputs (whose tasks each read part of every row's lines and restart per block) and
/// more, smaller tasks at the SmolLM2 shapes; at Llama-3-8B's up shape (14336 x 4096), with
/// whole 7 KB rows that the hardware prefetcher streams, 470-530 µs against 850-900 µs for
/// eight runs of 32 tiles (896-byte runs of each row, prefetched in software).
fn choose(tiles: usize, pairs: usize, threads: usize) -> Split {
    if threads == 1 || pairs * tiles < MIN_PARALLEL_WORK {
        Split::Outputs { per: MAX_TASK_TILES }
    } else {
        Split::Blocks { tasks: threads }
    }
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
    gemv_split(w, x, threshold, out, scratch, None)
}

/// [`gemv_input_sparse_q4_1`] with the split `force` instead of the chosen one (tests).
fn gemv_split(
    w: &InputMajorQ4_1,
    x: &[f32],
    threshold: f32,
    out: &mut [f32],
    scratch: &mut SparseScratch,
    force: Option<Split>,
) -> Result<usize, KernelError> {
    check_threshold(threshold)?;
    check_io(w.inputs, w.outputs, x.len(), out.len())?;
    let range_err = || KernelError::Shape("input-sparse Q4_1 operands out of range".into());
    let Q4Lists { pairs, blocks, partial, bounds } = &mut scratch.q4;
    let g = inner::gather(x, threshold, w.tiles * CODE_TILE_BYTES, pairs, blocks).ok_or_else(range_err)?;
    let count = g.count;
    let blocks = g.blocks();
    if blocks.is_empty() || w.outputs == 0 {
        out.fill(0.0);
        return Ok(count);
    }
    let op = TileRun::from_gathered(w.codes.bytes(), w.dm.bytes(), w.tiles, &g).ok_or_else(range_err)?;
    let threads = global().threads();
    let padded = w.tiles * TILE;
    let npairs = blocks.last().map_or(0, |b| b.end as usize);
    // Outputs a multiple of 64 are written in place, else through `partial`.
    let direct = padded == w.outputs;
    match force.unwrap_or_else(|| choose(w.tiles, npairs, threads)) {
        Split::Outputs { per } => {
            let per = per.max(1);
            let tasks = w.tiles.div_ceil(per);
            let y: &mut [f32] = if direct {
                out
            } else {
                partial.resize(padded, 0.0);
                partial
            };
            if tasks == 1 {
                inner::accumulate(&op, 0, y);
            } else {
                let p = Shared(y.as_mut_ptr());
                parallel_for(tasks, |t| {
                    let (t0, t1) = (t * per, ((t + 1) * per).min(w.tiles));
                    // SAFETY: task t owns y[t0 * 64..t1 * 64], inside its `padded` values.
                    inner::accumulate(&op, t0, unsafe { p.range(t0 * TILE, (t1 - t0) * TILE) });
                });
            }
            if !direct {
                out.copy_from_slice(&partial[..w.outputs]);
            }
        }
        Split::Blocks { tasks } => {
            let runs = BlockRuns::new(op, npairs, tasks, w.outputs, bounds, partial, out);
            run_all(std::slice::from_ref(&runs));
        }
    }
    Ok(count)
}

/// One product's active blocks cut into runs balanced by pairs (each block's scaling
/// counted as [`BLOCK_COST_PAIRS`] pairs), every run one pool task over all outputs: run 0
/// writes the output where it is a whole number of tiles, every other run its own partial
/// row, added in at the end.
struct BlockRuns<'a> {
    op: TileRun<'a>,
    /// Run t covers active blocks `bounds[t]..bounds[t + 1]`.
    bounds: &'a [usize],
    padded: usize,
    outputs: usize,
    direct: bool,
    out: Shared<f32>,
    partial: Shared<f32>,
}

impl<'a> BlockRuns<'a> {
    /// About `tasks` runs of `op`'s blocks (`npairs` pairs in all), with `bounds` and
    /// `partial` as storage and `out` (`outputs` values) as the result.
    fn new(
        op: TileRun<'a>,
        npairs: usize,
        tasks: usize,
        outputs: usize,
        bounds: &'a mut Vec<usize>,
        partial: &'a mut Vec<f32>,
        out: &'a mut [f32],
    ) -> Self {
        let cost = |b: &ActiveBlock| (b.end - b.start) as usize + BLOCK_COST_PAIRS;
        let total: usize = npairs + BLOCK_COST_PAIRS * op.blocks().len();
        let tasks = tasks.clamp(1, op.blocks().len().max(1));
        bounds.clear();
        bounds.push(0);
        let mut acc = 0;
        for (k, b) in op.blocks().iter().enumerate() {
            acc += cost(b);
            if acc * tasks >= total * bounds.len() && bounds.len() < tasks {
                bounds.push(k + 1);
            }
        }
        bounds.push(op.blocks().len());
        let padded = op.tiles() * TILE;
        let direct = padded == outputs;
        partial.resize((bounds.len() - 1 - usize::from(direct)) * padded, 0.0);
        BlockRuns {
            op,
            bounds,
            padded,
            outputs,
            direct,
            out: Shared(out.as_mut_ptr()),
            partial: Shared(partial.as_mut_ptr()),
        }
    }

    fn count(&self) -> usize {
        self.bounds.len() - 1
    }

    /// Run `t` (each run is called once, from one task).
    fn run(&self, t: usize) {
        let y = if t == 0 && self.direct {
            // SAFETY: only run 0 writes the output, which holds `padded` values when direct.
            unsafe { self.out.range(0, self.padded) }
        } else {
            let row = t - usize::from(self.direct);
            // SAFETY: run t alone writes partial row `row`, inside the resize in `new`.
            unsafe { self.partial.range(row * self.padded, self.padded) }
        };
        inner::accumulate(&self.op.with_blocks(self.bounds[t]..self.bounds[t + 1]), 0, y);
    }

    /// Adds the partial rows into the output, once every run has finished.
    fn finish(&self) {
        let rows = self.count() - usize::from(self.direct);
        // SAFETY: no run is active any more; these are the buffers `new` was given (the
        // output holds `outputs` values, the partial rows `rows * padded`).
        let (out, partial) = unsafe { (self.out.range(0, self.outputs), self.partial.range(0, rows * self.padded)) };
        let mut rows = partial.chunks_exact(self.padded);
        if !self.direct
            && let Some(first) = rows.next()
        {
            out.copy_from_slice(&first[..self.outputs]);
        }
        for row in rows {
            for (o, v) in out.iter_mut().zip(row) {
                *o += v;
            }
        }
    }
}

/// Every run of every product as one pool job, then each product's partial rows added in.
fn run_all(runs: &[BlockRuns<'_>]) {
    let tasks = runs.iter().map(BlockRuns::count).sum();
    parallel_for(tasks, |mut t| {
        for r in runs {
            if t < r.count() {
                r.run(t);
                return;
            }
            t -= r.count();
        }
    });
    runs.iter().for_each(BlockRuns::finish);
}

/// One product of [`gemv_input_sparse_q4_1_many`], with its own scratch.
pub struct SparseQ4Job<'a> {
    /// The weights.
    pub w: &'a InputMajorQ4_1,
    /// The input vector.
    pub x: &'a [f32],
    /// Inputs with `|x| <= threshold` are skipped.
    pub threshold: f32,
    /// The outputs.
    pub out: &'a mut [f32],
    /// This product's buffers.
    pub scratch: &'a mut SparseScratch,
    /// Set to how many input channels were active.
    pub active: usize,
}

/// Several input-sparse products (q, k and v of one input, each with its own threshold) as
/// one pool job: each product's active blocks are cut into runs (one per thread, or a
/// single run for a product too small to share) and every run of every product is one task,
/// so the small products (k and v) no longer run on one thread while the other waits.
/// Results equal [`gemv_input_sparse_q4_1`]'s up to f32 summation order.
pub fn gemv_input_sparse_q4_1_many(jobs: &mut [SparseQ4Job<'_>]) -> Result<(), KernelError> {
    let threads = global().threads();
    if jobs.len() < 2 || threads == 1 {
        for j in jobs.iter_mut() {
            j.active = gemv_input_sparse_q4_1(j.w, j.x, j.threshold, j.out, j.scratch)?;
        }
        return Ok(());
    }
    let range_err = || KernelError::Shape("input-sparse Q4_1 operands out of range".into());
    let mut runs: Vec<BlockRuns<'_>> = Vec::with_capacity(jobs.len());
    for j in jobs.iter_mut() {
        check_threshold(j.threshold)?;
        check_io(j.w.inputs, j.w.outputs, j.x.len(), j.out.len())?;
        let w = j.w;
        let Q4Lists { pairs, blocks, partial, bounds } = &mut j.scratch.q4;
        let g = inner::gather(j.x, j.threshold, w.tiles * CODE_TILE_BYTES, pairs, blocks).ok_or_else(range_err)?;
        j.active = g.count;
        if g.blocks().is_empty() || w.outputs == 0 {
            j.out.fill(0.0);
            continue;
        }
        let op = TileRun::from_gathered(w.codes.bytes(), w.dm.bytes(), w.tiles, &g).ok_or_else(range_err)?;
        let npairs = g.blocks().last().map_or(0, |b| b.end as usize);
        // A product too small to share runs whole on one thread, beside the others.
        let tasks = if npairs * w.tiles < MIN_PARALLEL_WORK { 1 } else { threads };
        runs.push(BlockRuns::new(op, npairs, tasks, w.outputs, bounds, partial, j.out));
    }
    run_all(&runs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// All channels active read every byte held; none, only the scales.
    #[test]
    fn bytes_read_spans_scales_to_everything() {
        let (outputs, inputs) = (200, 96);
        let w: Vec<f32> = (0..outputs * inputs).map(|i| ((i * 31 % 17) as f32) - 8.0).collect();
        let wt = InputMajorQ4_1::from_row_major(&MatQ4_1::quantize(outputs, inputs, &w).unwrap()).unwrap();
        assert_eq!(wt.bytes_read(inputs as f64), wt.bytes() as f64);
        // 4 tiles of 64 outputs: 128 code bytes per channel, 3 blocks x 4 tiles x 256 of scales.
        assert_eq!(wt.bytes_read(0.0), 3.0 * 4.0 * 256.0);
        assert_eq!(wt.bytes_read(10.0), 10.0 * 128.0 + 3.0 * 4.0 * 256.0);
    }

    /// Several products in one job equal each product alone: q/k/v shapes (one output not a
    /// whole number of tiles), thresholds keeping all, some and no inputs.
    #[test]
    fn many_products_equal_each_alone() {
        let inputs = 576;
        let ws: Vec<InputMajorQ4_1> = [576usize, 192, 200]
            .iter()
            .map(|&outputs| {
                let w: Vec<f32> = (0..outputs * inputs).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 997.0).collect();
                InputMajorQ4_1::from_row_major(&MatQ4_1::quantize(outputs, inputs, &w).unwrap()).unwrap()
            })
            .collect();
        let x: Vec<f32> = (0..inputs).map(|i| ((i * 104_729 % 1009) as f32 - 504.0) / 300.0).collect();
        for thresholds in [[0.0, 0.0, 0.0], [0.8, 0.3, 1.2], [0.8, 9.0, 0.5]] {
            let mut want: Vec<Vec<f32>> = Vec::new();
            let mut scratch = SparseScratch::default();
            for (w, &t) in ws.iter().zip(&thresholds) {
                let mut o = vec![f32::NAN; w.outputs()];
                gemv_input_sparse_q4_1(w, &x, t, &mut o, &mut scratch).unwrap();
                want.push(o);
            }
            let mut got: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; w.outputs()]).collect();
            let mut scratches: Vec<SparseScratch> = (0..3).map(|_| SparseScratch::default()).collect();
            let mut jobs: Vec<SparseQ4Job<'_>> = ws
                .iter()
                .zip(got.iter_mut())
                .zip(scratches.iter_mut())
                .zip(thresholds)
                .map(|(((w, out), scratch), threshold)| SparseQ4Job { w, x: &x, threshold, out, scratch, active: 0 })
                .collect();
            gemv_input_sparse_q4_1_many(&mut jobs).unwrap();
            let active: Vec<usize> = jobs.iter().map(|j| j.active).collect();
            for (k, t) in thresholds.iter().enumerate() {
                assert_eq!(active[k], x.iter().filter(|v| v.abs() > *t).count());
            }
            for (g, w) in got.iter().zip(&want) {
                let scale = w.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for (a, b) in g.iter().zip(w) {
                    assert!((a - b).abs() <= 1e-5 * scale, "{thresholds:?}: {a} vs {b}");
                }
            }
        }
    }

    /// Every split, with one scratch reused across shapes, gives the one-task result (the
    /// same f32 sums per block; only the order of adding partial rows differs).
    #[test]
    fn every_split_agrees() {
        let mut scratch = SparseScratch::default();
        // 2112 outputs: 33 tiles, rows longer than the software prefetch covers.
        for &(outputs, inputs) in &[(1536usize, 576usize), (77, 1536), (192, 576), (64, 32), (130, 96), (2112, 64)] {
            let w: Vec<f32> = (0..outputs * inputs).map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 997.0).collect();
            let wt = InputMajorQ4_1::from_row_major(&MatQ4_1::quantize(outputs, inputs, &w).unwrap()).unwrap();
            let x: Vec<f32> = (0..inputs).map(|i| ((i * 104_729 % 1009) as f32 - 504.0) / 300.0).collect();
            for t in [0.0, 0.8, 1.6] {
                let mut want = vec![f32::NAN; outputs];
                gemv_split(&wt, &x, t, &mut want, &mut scratch, Some(Split::Outputs { per: usize::MAX })).unwrap();
                let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                for split in [
                    None,
                    Some(Split::Outputs { per: 1 }),
                    Some(Split::Outputs { per: 2 }),
                    Some(Split::Blocks { tasks: 1 }),
                    Some(Split::Blocks { tasks: 2 }),
                    Some(Split::Blocks { tasks: 5 }),
                ] {
                    let mut got = vec![f32::NAN; outputs];
                    gemv_split(&wt, &x, t, &mut got, &mut scratch, split).unwrap();
                    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * scale,
                            "{outputs}x{inputs} t {t} {split:?} output {j}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
