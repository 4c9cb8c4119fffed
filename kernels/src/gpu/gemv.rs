//! Launchers of the GEMV kernels: input-sparse over input-major weights (several outputs
//! sharing one input, each with its own threshold), output-sparse over row-major weights
//! (listed rows, fused SwiGLU, CATS's gated up projection). Shapes are checked here so the
//! kernels can index freely.

use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig};

use super::device::DevPtr;
use super::launch::Launch;
use super::{Gpu, GpuError, WeightType};

/// Outputs per 16-byte load of a warp (`SG_TILE` in cuda/sparse_gemv.cu): a unit of the input-sparse
/// kernel covers this many outputs times its gather's loads per row.
const TILE: usize = 256;
/// Threads per block of the input-sparse kernel (4 independent warps).
const THREADS: usize = 128;
/// Threads per block of the deterministic reduction (`REDUCE_THREADS` in cuda/sparse_gemv.cu).
const REDUCE_THREADS: u32 = 256;

/// Threads that share each output of the deterministic reduction: one per 8 splits, a power
/// of two from 1 to 8 (so that a block's outputs divide a 256-output tile). On an H100, eight
/// lanes beat one per output at every shape but 4096->14336 (32 splits), which wants fewer.
fn reduce_lanes(splits: usize) -> usize {
    (splits / 8).clamp(1, 8).next_power_of_two()
}
/// Warps per block of the row kernels.
const ROW_WARPS: u32 = 8;

/// How split-K partial sums become the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Each block adds its partial sums into the output with atomics (fastest; the order of
    /// additions, so the last bits, can vary run to run).
    Atomic,
    /// Each block stores its partial sums; a second kernel adds them in a fixed order, so
    /// results are bit-identical run to run.
    Deterministic,
}

/// One output of an input-sparse GEMV: `out[j] (+)= sum over i with |x_i| > threshold of
/// x_i * W^T[i][j]`.
pub struct GemvOut<'a> {
    /// Input-major weights, `k * n` values (row `i` = input `i`'s weights).
    pub weights: DevPtr<'a, u16>,
    /// The `n` outputs.
    pub out: DevPtr<'a, f32>,
    /// Inputs with `|x| <= threshold` are skipped (their weight rows are never read); a
    /// negative threshold keeps every input (dense).
    pub threshold: f32,
}

/// An RMSNorm folded into the row kernel that reads its output: the kernel reads the
/// un-normalized `x` and normalizes it (`x / rms(x) * weight`) as it goes, one launch fewer
/// than a norm kernel followed by the product.
#[derive(Clone, Copy)]
pub struct FoldedNorm<'a> {
    /// The norm's weights, one per input.
    pub weight: DevPtr<'a, f32>,
    /// Added to the mean square.
    pub eps: f32,
}

impl FoldedNorm<'_> {
    /// The weights' address and eps, checked against `k` inputs.
    fn args(&self, k: usize) -> Result<(u64, f32), GpuError> {
        if self.weight.len() == k {
            Ok((self.weight.addr(), self.eps))
        } else {
            Err(GpuError::Unsupported(format!("norm weights of {} values for {k} inputs", self.weight.len())))
        }
    }
}

/// Warp units per SM the input-sparse GEMV aims at unless told otherwise.
pub const DEFAULT_UNITS_PER_SM: usize = 8;

/// How the input dimension is split across blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitPlan {
    /// Most inputs one block handles.
    pub chunk: usize,
    /// Blocks along the input.
    pub splits: usize,
}

impl SplitPlan {
    /// About `units_per_sm` (default 8) warp units per SM: inputs cut in chunks of a multiple
    /// of 32, small enough that the units spread evenly, large enough that each warp keeps
    /// loads in flight and that the random share of active inputs evens out (on the H100,
    /// 8 beat 12, 16, 32 and 64 at s = 0, 0.5 and 0.75 on the 8B shapes).
    pub fn new(k: usize, tiles: usize, sm_count: usize, units_per_sm: Option<usize>) -> SplitPlan {
        let units = units_per_sm.unwrap_or(DEFAULT_UNITS_PER_SM).max(1) * sm_count.max(1);
        let chunk = (k * tiles).div_ceil(units).next_multiple_of(32).clamp(32, 1 << 16);
        SplitPlan { chunk, splits: k.div_ceil(chunk).max(1) }
    }
}

/// Kernel-side segment descriptor (`Seg` in cuda/sparse_gemv.cu).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Seg {
    w: u64,
    y: u64,
    n: i32,
    thr: f32,
    tiles: i32,
    pad: i32,
}

/// Kernel-side list of up to three segments (`Segs` in cuda/sparse_gemv.cu).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Segs {
    s: [Seg; 3],
    count: i32,
}

// SAFETY: plain-old-data with the same #[repr(C)] layout as the CUDA structs (8-byte
// pointers, 4-byte ints/floats, explicit padding), passed by value as a kernel parameter.
unsafe impl DeviceRepr for Segs {}

fn to_i32(v: usize, what: &str) -> Result<i32, GpuError> {
    i32::try_from(v).map_err(|_| GpuError::Unsupported(format!("{what} = {v} exceeds the kernels' 32-bit indices")))
}

/// How many outputs one warp unit of the input-sparse kernel covers, so how long the runs it
/// reads of each active weight row are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Gather {
    /// [`Gather::Wide`] when every output is at least [`WIDE_MIN_OUTPUTS`] wide, or the
    /// product has [`WIDE_FROM_INPUTS`] inputs or more and every output is at least
    /// [`WIDE_MIN_FROM_INPUTS`] wide; else [`Gather::Narrow`].
    #[default]
    Auto,
    /// One 16-byte load per lane and row: 256 outputs per unit, rows read in 512-byte runs.
    Narrow,
    /// Two loads per lane and row: 512 outputs per unit, 1 KB runs (fewer, longer runs per
    /// row; an output of only a few units would leave lanes idle).
    Wide,
}

/// Narrowest output [`Gather::Auto`] reads with [`Gather::Wide`] (measured on an H100:
/// wide 1.71-1.79x vs narrow 1.67-1.72x over cuBLAS at 50% on 4096->14336 and 14336->4096,
/// narrow ahead at 4096 outputs and high sparsity).
pub const WIDE_MIN_OUTPUTS: usize = 8192;

/// Inputs from which [`Gather::Auto`] reads every output of at least [`WIDE_MIN_FROM_INPUTS`]
/// wide, below [`WIDE_MIN_OUTPUTS`] too. Alone, the narrow units win at 4096 outputs
/// (4096->4096 at 50%: 1.66x against 1.56x, decode form), but inside the step the wide ones do:
/// the synthetic 8B decode with every product wide (q/k/v and o as well as gate/up and down)
/// took 3530-3532 µs against 3556-3559 at TEAL 50% and 2249-2255 against 2308-2310 at 75%,
/// two runs on one H100 (Nov 27). SmolLM2's products (576 or 1536 inputs) stay narrow.
pub const WIDE_FROM_INPUTS: usize = 4096;

/// Narrowest output [`WIDE_FROM_INPUTS`] reads wide (two units of 512, no idle lanes).
pub const WIDE_MIN_FROM_INPUTS: usize = 1024;

impl Gather {
    /// The gather used for outputs of these widths over `k` inputs.
    pub fn resolve(self, k: usize, widths: &[usize]) -> Gather {
        let wide = |n: usize| n >= WIDE_MIN_OUTPUTS || (k >= WIDE_FROM_INPUTS && n >= WIDE_MIN_FROM_INPUTS);
        match self {
            Gather::Auto if widths.iter().all(|&n| wide(n)) => Gather::Wide,
            Gather::Auto => Gather::Narrow,
            g => g,
        }
    }

    /// Outputs one warp unit covers (of a resolved gather).
    fn tile(self) -> usize {
        match self {
            Gather::Wide => 2 * TILE,
            Gather::Auto | Gather::Narrow => TILE,
        }
    }
}

/// A configured input-sparse GEMV: weight type, reduction, split plan.
#[derive(Debug, Clone, Copy)]
pub struct SparseGemv {
    /// Storage type of the weights.
    pub weight_type: WeightType,
    /// How partial sums are combined.
    pub reduction: Reduction,
    /// How active inputs are gathered.
    pub gather: Gather,
    /// Warp units per SM to aim for (None: [`DEFAULT_UNITS_PER_SM`]).
    pub units_per_sm: Option<usize>,
}

impl SparseGemv {
    /// The split plan this GEMV uses for `k` inputs and the given outputs' widths.
    pub fn plan(&self, gpu: &Gpu, k: usize, widths: &[usize]) -> SplitPlan {
        SplitPlan::new(k, self.tiles(k, widths), gpu.info().sm_count, self.units_per_sm)
    }

    /// f32 values of scratch the deterministic reduction needs for these widths.
    pub fn scratch_len(&self, gpu: &Gpu, k: usize, widths: &[usize]) -> usize {
        match self.reduction {
            Reduction::Atomic => 0,
            Reduction::Deterministic => {
                self.plan(gpu, k, widths).splits * self.tiles(k, widths) * self.gather.resolve(k, widths).tile()
            }
        }
    }

    /// 256-output tiles over all outputs.
    fn tiles(&self, k: usize, widths: &[usize]) -> usize {
        let tile = self.gather.resolve(k, widths).tile();
        widths.iter().map(|n| n.div_ceil(tile)).sum()
    }

    /// Launches `outs[j] (+)= W_j^T-masked x` for one to three outputs sharing input `x`
    /// (`k` values). With `gated_by = Some(u)`, the input is `silu(x) * u` (SwiGLU's down
    /// projection reads the gate and up outputs directly). With `accumulate`, results are
    /// added to the outputs' current values, otherwise they replace them. `scratch` must hold
    /// [`SparseGemv::scratch_len`] values for the deterministic reduction.
    pub fn launch(
        &self,
        gpu: &Gpu,
        x: DevPtr<'_, f32>,
        gated_by: Option<DevPtr<'_, f32>>,
        outs: &[GemvOut<'_>],
        accumulate: bool,
        scratch: Option<&CudaSlice<f32>>,
    ) -> Result<(), GpuError> {
        let k = x.len();
        if outs.is_empty() || outs.len() > 3 {
            return Err(GpuError::Unsupported(format!("{} outputs in one GEMV (1 to 3)", outs.len())));
        }
        if k == 0 {
            return Err(GpuError::Unsupported("a GEMV over zero inputs".into()));
        }
        if let Some(u) = gated_by
            && u.len() != k
        {
            return Err(GpuError::Unsupported(format!("gate has {k} values, up {}", u.len())));
        }
        let widths: Vec<usize> = outs.iter().map(|o| o.out.len()).collect();
        let gather = self.gather.resolve(k, &widths);
        let mut segs = Segs { count: outs.len() as i32, ..Default::default() };
        let mut total_tiles = 0usize;
        for (seg, o) in segs.s.iter_mut().zip(outs) {
            let n = o.out.len();
            if n == 0 || !n.is_multiple_of(8) {
                return Err(GpuError::Unsupported(format!("{n} outputs (the GEMV needs a positive multiple of 8)")));
            }
            if o.weights.len() != k * n {
                return Err(GpuError::Unsupported(format!(
                    "weights of {} values for {k} inputs x {n} outputs",
                    o.weights.len()
                )));
            }
            let tiles = n.div_ceil(gather.tile());
            total_tiles += tiles;
            *seg = Seg {
                w: o.weights.addr(),
                y: o.out.addr(),
                n: to_i32(n, "outputs")?,
                thr: o.threshold,
                tiles: tiles as i32,
                pad: 0,
            };
        }
        to_i32(k * outs.iter().map(|o| o.out.len()).max().unwrap_or(0), "weights")?;
        let plan = self.plan(gpu, k, &widths);
        let stream = gpu.stream();
        let partial_addr = match self.reduction {
            Reduction::Atomic => {
                if !accumulate {
                    for o in outs {
                        // SAFETY: `out` is a live device range of `len` f32 values.
                        unsafe {
                            cudarc::driver::result::memset_d8_async(
                                o.out.addr(),
                                0,
                                o.out.len() * 4,
                                stream.cu_stream(),
                            )
                        }
                        .map_err(|e| GpuError::driver("memset", e))?;
                    }
                }
                0u64
            }
            Reduction::Deterministic => {
                let need = plan.splits * total_tiles * gather.tile();
                let s = scratch.filter(|s| s.len() >= need).ok_or_else(|| {
                    GpuError::Unsupported(format!("the deterministic reduction needs {need} values of scratch"))
                })?;
                gpu.view(s).addr()
            }
        };
        let (x_addr, x2_addr) = (x.addr(), gated_by.map_or(0u64, |u| u.addr()));
        let (k_i, tiles_i) = (to_i32(k, "inputs")?, total_tiles as i32);
        let (chunk_i, splits_i) = (plan.chunk as i32, plan.splits as i32);
        let units = total_tiles * plan.splits;
        let cfg = LaunchConfig {
            grid_dim: (units.div_ceil(THREADS / 32) as u32, 1, 1),
            block_dim: (THREADS as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let typed = gpu.typed(self.weight_type);
        let kernel = match gather {
            Gather::Wide => &typed.sparse_gemv_wide,
            Gather::Auto | Gather::Narrow => &typed.sparse_gemv,
        };
        let mut b = Launch::new(gpu, kernel, "sparse_gemv");
        b.arg(&segs).arg(&x_addr).arg(&x2_addr).arg(&k_i).arg(&chunk_i).arg(&splits_i).arg(&partial_addr).arg(&tiles_i);
        // SAFETY: every segment's weights hold k * n values and its output n (checked above);
        // the kernel reads x[0..k] (and the gate's twin), writes out[0..n] and, when
        // deterministic, partial[0..splits * tiles * 256] (scratch checked above).
        unsafe { b.launch(cfg) }?;
        if self.reduction == Reduction::Deterministic {
            let (width_i, acc_i) = (gather.tile() as i32, accumulate as i32);
            // Each block covers REDUCE_THREADS / lanes outputs of a tile (256 or 512 wide).
            let lanes = reduce_lanes(plan.splits);
            let blocks = total_tiles * gather.tile() / (REDUCE_THREADS as usize / lanes);
            let cfg = LaunchConfig {
                grid_dim: (blocks as u32, 1, 1),
                block_dim: (REDUCE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let lanes_i = lanes as i32;
            let mut b = Launch::new(gpu, &gpu.kernels.reduce_splits, "reduce_splits");
            b.arg(&segs).arg(&partial_addr).arg(&splits_i).arg(&tiles_i).arg(&width_i).arg(&acc_i).arg(&lanes_i);
            // SAFETY: reads the partial sums the launch above wrote, writes each segment's n outputs.
            unsafe { b.launch(cfg) }?;
        }
        Ok(())
    }
}

/// A low-rank neuron predictor on the device: `z = W2 phi(W1 x) + b2` (row-major fp16 `W1`,
/// rank x d, and `W2`, f x rank), scored as `z` or as `|silu(z)| * scale`.
pub struct LowRankPredictor<'a> {
    /// Second factor, `f * rank` values.
    pub w2: DevPtr<'a, u16>,
    /// Bias, `f` values.
    pub b2: DevPtr<'a, f32>,
    /// Per-neuron factor on `|silu(z)|` (gate output only).
    pub scale: Option<DevPtr<'a, f32>>,
    /// ReLU between the factors.
    pub relu: bool,
    /// `z` estimates the gate (score `|silu(z)|`), rather than a logit.
    pub gate_output: bool,
}

fn row_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.div_ceil(ROW_WARPS as usize).max(1) as u32, 1, 1),
        block_dim: (32 * ROW_WARPS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check_rows(what: &str, w: usize, n: usize, k: usize) -> Result<(), GpuError> {
    if k == 0 || !k.is_multiple_of(8) {
        return Err(GpuError::Unsupported(format!("{what}: {k} inputs (a positive multiple of 8 is needed)")));
    }
    if w != n * k {
        return Err(GpuError::Unsupported(format!("{what}: weights of {w} values for {n} rows x {k} inputs")));
    }
    to_i32(n * k, "weights")?;
    Ok(())
}

/// Row-major gate and up weights of `f` neurons over `k` inputs.
fn check_gate_up(gate: usize, up: usize, f: usize, k: usize) -> Result<(), GpuError> {
    check_rows("SwiGLU gate", gate, f, k)?;
    check_rows("SwiGLU up", up, f, k)
}

impl Gpu {
    /// `y[r] = W[r] . x` (with `accumulate`, `y[r] += W[r] . x`) for the listed rows of
    /// row-major `W` (`y.len()` rows of `x.len()`), or for every row when `rows` is None;
    /// with `norm`, `x` is RMS-normalized first. Outputs of unlisted rows are left untouched;
    /// listed rows outside `0..n` are skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn rows_gemv(
        &self,
        wt: WeightType,
        w: DevPtr<'_, u16>,
        x: DevPtr<'_, f32>,
        y: DevPtr<'_, f32>,
        rows: Option<DevPtr<'_, i32>>,
        accumulate: bool,
        norm: Option<&FoldedNorm<'_>>,
    ) -> Result<(), GpuError> {
        let (n, k) = (y.len(), x.len());
        check_rows("rows GEMV", w.len(), n, k)?;
        let count = rows.map_or(n, |r| r.len());
        let (w_a, x_a, y_a, r_a) = (w.addr(), x.addr(), y.addr(), rows.map_or(0u64, |r| r.addr()));
        let (n_i, k_i, c_i, acc_i) = (n as i32, k as i32, to_i32(count, "rows")?, accumulate as i32);
        let norm_args = norm.map(|nm| nm.args(k)).transpose()?;
        if count == 0 {
            return Ok(());
        }
        let typed = self.typed(wt);
        let kernel = if norm_args.is_some() { &typed.rows_gemv_norm } else { &typed.rows_gemv };
        let mut b = Launch::new(self, kernel, "rows_gemv");
        b.arg(&w_a).arg(&x_a).arg(&y_a).arg(&n_i).arg(&k_i).arg(&r_a).arg(&c_i).arg(&acc_i);
        if let Some((nw_a, eps)) = &norm_args {
            b.arg(nw_a).arg(eps);
        }
        // SAFETY: w holds n * k values, x (and the norm's weights) k, y n; listed rows are
        // bounds-checked in the kernel.
        unsafe { b.launch(row_config(count)) }?;
        Ok(())
    }

    /// Fused SwiGLU rows: `h[j] = silu(Wg[j] . x) * (Wu[j] . x)` where `keep[j] != 0` (every
    /// neuron when `keep` is None), 0 elsewhere; row-major gate and up weights; with `norm`,
    /// `x` is RMS-normalized first.
    #[allow(clippy::too_many_arguments)]
    pub fn swiglu_rows(
        &self,
        wt: WeightType,
        w_gate: DevPtr<'_, u16>,
        w_up: DevPtr<'_, u16>,
        x: DevPtr<'_, f32>,
        h: DevPtr<'_, f32>,
        keep: Option<DevPtr<'_, u8>>,
        norm: Option<&FoldedNorm<'_>>,
    ) -> Result<(), GpuError> {
        let (f, k) = (h.len(), x.len());
        check_gate_up(w_gate.len(), w_up.len(), f, k)?;
        let norm_args = norm.map(|nm| nm.args(k)).transpose()?;
        if let Some(m) = keep
            && m.len() != f
        {
            return Err(GpuError::Unsupported(format!("mask of {} for {f} neurons", m.len())));
        }
        let (g_a, u_a, x_a, h_a, m_a) =
            (w_gate.addr(), w_up.addr(), x.addr(), h.addr(), keep.map_or(0u64, |m| m.addr()));
        let (f_i, k_i) = (f as i32, k as i32);
        let typed = self.typed(wt);
        let kernel = if norm_args.is_some() { &typed.swiglu_rows_norm } else { &typed.swiglu_rows };
        let mut b = Launch::new(self, kernel, "swiglu_rows");
        b.arg(&g_a).arg(&u_a).arg(&x_a).arg(&h_a).arg(&f_i).arg(&k_i).arg(&m_a);
        if let Some((nw_a, eps)) = &norm_args {
            b.arg(nw_a).arg(eps);
        }
        // SAFETY: gate and up hold f * k values, x (and the norm's weights) k, h and the mask
        // f (checked above).
        unsafe { b.launch(row_config(f)) }?;
        Ok(())
    }

    /// SwiGLU on the neurons a low-rank predictor keeps: `hidden` is `W1 x` (see
    /// [`Gpu::rows_gemv`]); where the score exceeds `threshold`, `h[j] = silu(Wg[j] . x) *
    /// (Wu[j] . x)` from row-major fp16 gate and up weights, else 0 without reading them.
    #[allow(clippy::too_many_arguments)]
    pub fn predicted_swiglu(
        &self,
        p: &LowRankPredictor<'_>,
        hidden: DevPtr<'_, f32>,
        threshold: f32,
        w_gate: DevPtr<'_, u16>,
        w_up: DevPtr<'_, u16>,
        x: DevPtr<'_, f32>,
        h: DevPtr<'_, f32>,
    ) -> Result<(), GpuError> {
        let (f, k, rank) = (h.len(), x.len(), hidden.len());
        check_gate_up(w_gate.len(), w_up.len(), f, k)?;
        if rank == 0 || p.w2.len() != f * rank || p.b2.len() != f || p.scale.is_some_and(|s| s.len() != f) {
            return Err(GpuError::Unsupported(format!(
                "predictor of rank {rank}: {} second-factor weights, {} biases for {f} neurons",
                p.w2.len(),
                p.b2.len()
            )));
        }
        let a = [p.w2.addr(), p.b2.addr(), p.scale.map_or(0u64, |s| s.addr()), hidden.addr()];
        let ints = [rank as i32, p.relu as i32, p.gate_output as i32];
        let b_addr = [w_gate.addr(), w_up.addr(), x.addr(), h.addr()];
        let (f_i, k_i) = (f as i32, k as i32);
        let mut b = Launch::new(self, &self.kernels.predicted_swiglu_f16, "predicted_swiglu");
        for v in &a {
            b.arg(v);
        }
        for v in &ints {
            b.arg(v);
        }
        b.arg(&threshold);
        for v in &b_addr {
            b.arg(v);
        }
        b.arg(&f_i).arg(&k_i);
        // SAFETY: W2 holds f * rank values, b2 and scale f, hidden rank; gate and up f * k, x k,
        // h f (all checked above).
        unsafe { b.launch(row_config(f)) }?;
        Ok(())
    }

    /// CATS's up projection: `h[j] = silu(g[j]) * (Wu[j] . x)` where `|silu(g[j])| > threshold`,
    /// else 0 without reading the up row.
    pub fn up_gated(
        &self,
        wt: WeightType,
        w_up: DevPtr<'_, u16>,
        x: DevPtr<'_, f32>,
        gate: DevPtr<'_, f32>,
        threshold: f32,
        h: DevPtr<'_, f32>,
    ) -> Result<(), GpuError> {
        let (f, k) = (h.len(), x.len());
        check_rows("gated up", w_up.len(), f, k)?;
        if gate.len() != f {
            return Err(GpuError::Unsupported(format!("gate of {} for {f} neurons", gate.len())));
        }
        let (u_a, x_a, g_a, h_a) = (w_up.addr(), x.addr(), gate.addr(), h.addr());
        let (f_i, k_i) = (f as i32, k as i32);
        let mut b = Launch::new(self, &self.typed(wt).up_gated, "up_gated");
        b.arg(&u_a).arg(&x_a).arg(&g_a).arg(&threshold).arg(&h_a).arg(&f_i).arg(&k_i);
        // SAFETY: up holds f * k values, x k, gate and h f (checked above).
        unsafe { b.launch(row_config(f)) }?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_plans_cover_the_input_in_whole_groups_of_32() {
        for (k, tiles) in [(4096, 56), (14336, 16), (576, 6), (100, 1)] {
            let p = SplitPlan::new(k, tiles, 132, None);
            assert_eq!(p.chunk % 32, 0);
            assert!(p.chunk * p.splits >= k && p.chunk * (p.splits - 1) < k, "{k}: {p:?}");
        }
        // About 8 warp units per SM at Llama-3-8B's MLP shape (12 would give 1456).
        let p = SplitPlan::new(4096, 56, 132, None);
        let units = p.splits * 56;
        assert!((900..1300).contains(&units), "{units}");
    }

    #[test]
    fn reduction_lanes_divide_a_tile() {
        for splits in 1..300 {
            let lanes = reduce_lanes(splits);
            assert!(lanes.is_power_of_two() && lanes <= 8, "{splits}: {lanes}");
            assert_eq!(256 % (REDUCE_THREADS as usize / lanes), 0);
        }
        assert_eq!((reduce_lanes(18), reduce_lanes(32), reduce_lanes(132)), (2, 4, 8));
    }

    #[test]
    fn wide_units_only_for_wide_outputs() {
        assert_eq!(Gather::Auto.resolve(4096, &[14336]), Gather::Wide);
        assert_eq!(Gather::Auto.resolve(4096, &[14336, 14336]), Gather::Wide);
        // Llama-3-8B's down projection: 4096 outputs, but 58.7M weights.
        assert_eq!(Gather::Auto.resolve(14336, &[4096]), Gather::Wide);
        // Llama-3-8B's o and q/k/v (one launch: the narrowest output decides).
        assert_eq!(Gather::Auto.resolve(4096, &[4096]), Gather::Wide);
        assert_eq!(Gather::Auto.resolve(4096, &[4096, 1024, 1024]), Gather::Wide);
        assert_eq!(Gather::Auto.resolve(4096, &[4096, 512, 512]), Gather::Narrow);
        // SmolLM2: down, gate/up.
        assert_eq!(Gather::Auto.resolve(1536, &[576]), Gather::Narrow);
        assert_eq!(Gather::Auto.resolve(576, &[1536, 1536]), Gather::Narrow);
        assert_eq!(Gather::Narrow.resolve(4096, &[14336]), Gather::Narrow);
        assert_eq!(Gather::Wide.resolve(576, &[576]), Gather::Wide);
        assert_eq!((Gather::Wide.tile(), Gather::Narrow.tile()), (512, 256));
    }
}
