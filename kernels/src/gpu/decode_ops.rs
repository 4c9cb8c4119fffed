//! Launchers of the decode glue: RMSNorm, embedding lookup, attention (with the step's RoPE
//! and KV-cache append folded in), conversions and synthetic fills.
//! The token and position of a step live on the device ([`StepArgs`]), so one captured graph
//! serves every step.

use cudarc::driver::LaunchConfig;

use super::device::DevPtr;
use super::launch::Launch;
use super::{Gpu, GpuError};

/// Largest context the attention kernel's shared-memory scores allow (32 KiB of f32, beside about 11 KiB of
/// partial sums, query, rotation and the new key and value).
pub const MAX_ATTENTION_LEN: usize = 8 * 1024;

/// Positions per block of the split attention (`ATT_CHUNK` in cuda/decode.cu).
const ATTENTION_CHUNK: usize = 128;

/// Values each clearing block of the RMSNorm zeroes (`NORM_CLEAR` in cuda/decode.cu).
const NORM_CLEAR: usize = 4096;

/// The device-side step arguments: `[token, position]` as two i32.
pub struct StepArgs<'a>(pub DevPtr<'a, i32>);

/// Attention geometry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Values per head (even).
    pub head_dim: usize,
    /// Rotated pairs per head (RoPE on the leading `2 * rot_pairs` values).
    pub rot_pairs: usize,
    /// RoPE base.
    pub theta: f32,
    /// Positions the cache holds.
    pub max_len: usize,
}

/// The step's query, key and value (f32, before RoPE) and the caches the key and value join.
#[derive(Clone, Copy)]
pub struct AttentionIo<'a> {
    /// `n_heads * head_dim` values.
    pub q: DevPtr<'a, f32>,
    /// `n_kv_heads * head_dim` values.
    pub k: DevPtr<'a, f32>,
    /// `n_kv_heads * head_dim` values.
    pub v: DevPtr<'a, f32>,
    /// fp16 keys, `max_len` rows of `n_kv_heads * head_dim`.
    pub k_cache: DevPtr<'a, u16>,
    /// fp16 values, same shape.
    pub v_cache: DevPtr<'a, u16>,
}

impl AttentionShape {
    fn check(&self) -> Result<(), GpuError> {
        let ok = self.n_heads > 0
            && self.n_kv_heads > 0
            && self.n_heads.is_multiple_of(self.n_kv_heads)
            && self.head_dim > 0
            && self.head_dim.is_multiple_of(32)
            && self.head_dim <= 256
            && 2 * self.rot_pairs <= self.head_dim
            && self.max_len > 0
            && self.max_len <= MAX_ATTENTION_LEN;
        if ok {
            Ok(())
        } else {
            Err(GpuError::Unsupported(format!(
                "attention shape {self:?} (heads divisible by kv heads, head size a multiple of 32 up to 256, context 1..={MAX_ATTENTION_LEN})"
            )))
        }
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// The shape, and the attention buffers' sizes against it.
    fn check_attention(&self, io: &AttentionIo<'_>, out: DevPtr<'_, f32>) -> Result<(), GpuError> {
        self.check()?;
        same_len("query", self.n_heads * self.head_dim, io.q.len())?;
        same_len("key", self.kv_dim(), io.k.len())?;
        same_len("value", self.kv_dim(), io.v.len())?;
        same_len("attention output", self.n_heads * self.head_dim, out.len())?;
        same_len("key cache", self.kv_dim() * self.max_len, io.k_cache.len())?;
        same_len("value cache", self.kv_dim() * self.max_len, io.v_cache.len())
    }
}

fn grid_for(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 1024) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn same_len(what: &str, expected: usize, got: usize) -> Result<(), GpuError> {
    if expected == got {
        Ok(())
    } else {
        Err(GpuError::Unsupported(format!("{what}: {got} values where {expected} are needed")))
    }
}

impl Gpu {
    /// `out = x / rms(x) * weight`, and zeroes `clear` (buffers the next GEMVs accumulate into).
    pub fn rms_norm(
        &self,
        x: DevPtr<'_, f32>,
        weight: DevPtr<'_, f32>,
        out: DevPtr<'_, f32>,
        eps: f32,
        clear: Option<DevPtr<'_, f32>>,
    ) -> Result<(), GpuError> {
        same_len("RMSNorm weight", x.len(), weight.len())?;
        same_len("RMSNorm output", x.len(), out.len())?;
        let (x_a, w_a, o_a) = (x.addr(), weight.addr(), out.addr());
        let (c_a, c_n) = (clear.map_or(0u64, |c| c.addr()), clear.map_or(0i32, |c| c.len() as i32));
        let d = x.len() as i32;
        // Block 0 normalizes, the others clear NORM_CLEAR values each (cuda/decode.cu).
        let blocks = 1 + clear.map_or(0, |c| c.len().div_ceil(NORM_CLEAR));
        let cfg = LaunchConfig { grid_dim: (blocks as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        let mut b = Launch::new(self, &self.kernels.rms_norm, "rms_norm");
        b.arg(&x_a).arg(&w_a).arg(&o_a).arg(&d).arg(&eps).arg(&c_a).arg(&c_n);
        // SAFETY: x, weight and out hold d values, clear its own length (checked above).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `x = table[token]` for the token in `step` (fp16 table of `vocab` rows of `x.len()`).
    /// The token must be below `vocab`: callers check it before writing `step`.
    pub fn embed(&self, table: DevPtr<'_, u16>, step: &StepArgs<'_>, x: DevPtr<'_, f32>) -> Result<(), GpuError> {
        same_len("step arguments", 2, step.0.len())?;
        if x.is_empty() || !table.len().is_multiple_of(x.len()) {
            return Err(GpuError::Unsupported(format!("embedding table of {} for width {}", table.len(), x.len())));
        }
        let (t_a, s_a, x_a, d) = (table.addr(), step.0.addr(), x.addr(), x.len() as i32);
        let mut b = Launch::new(self, &self.kernels.embed_f16, "embed");
        b.arg(&t_a).arg(&s_a).arg(&x_a).arg(&d);
        // SAFETY: x holds d values; the row read is token * d..(token + 1) * d, inside the
        // table for any token below the vocabulary size, which the caller guarantees.
        unsafe { b.launch(grid_for(x.len())) }?;
        Ok(())
    }

    /// One block per query head: RoPE on the step's query and key (GGML "normal", adjacent
    /// pairs, position `step[1]`), the key and value appended to the caches as fp16, then
    /// `out = softmax(K q / sqrt(head_dim)) V` over positions `0..=position`.
    pub fn attention(
        &self,
        shape: &AttentionShape,
        io: &AttentionIo<'_>,
        out: DevPtr<'_, f32>,
        step: &StepArgs<'_>,
    ) -> Result<(), GpuError> {
        shape.check_attention(io, out)?;
        same_len("step arguments", 2, step.0.len())?;
        let a =
            [io.q.addr(), io.k.addr(), io.v.addr(), io.k_cache.addr(), io.v_cache.addr(), out.addr(), step.0.addr()];
        let dims = [shape.n_heads as i32, shape.n_kv_heads as i32, shape.head_dim as i32, shape.rot_pairs as i32];
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let cfg = LaunchConfig {
            grid_dim: (shape.n_heads as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: (shape.max_len * 4) as u32,
        };
        let mut b = Launch::new(self, &self.kernels.attention, "attention");
        for p in &a {
            b.arg(p);
        }
        for d in &dims {
            b.arg(d);
        }
        b.arg(&shape.theta).arg(&scale);
        // SAFETY: sizes checked above; scores for up to max_len positions fit the dynamic
        // shared memory requested; the cache row written is the step's position (< max_len,
        // kept there by the caller).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Values of scratch [`Gpu::attention_split`] needs for `shape`.
    pub fn attention_split_scratch(shape: &AttentionShape) -> usize {
        shape.n_heads * shape.max_len.div_ceil(ATTENTION_CHUNK) * (shape.head_dim + 2)
    }

    /// [`Gpu::attention`] split over positions (flash-decoding): blocks of 128 positions per
    /// head run in parallel, then a second kernel combines them. Faster for long caches; one
    /// more launch for short ones.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_split(
        &self,
        shape: &AttentionShape,
        io: &AttentionIo<'_>,
        out: DevPtr<'_, f32>,
        scratch: DevPtr<'_, f32>,
        step: &StepArgs<'_>,
    ) -> Result<(), GpuError> {
        shape.check_attention(io, out)?;
        same_len("step arguments", 2, step.0.len())?;
        same_len("attention scratch", Self::attention_split_scratch(shape), scratch.len())?;
        let max_splits = shape.max_len.div_ceil(ATTENTION_CHUNK);
        let a = [
            io.q.addr(),
            io.k.addr(),
            io.v.addr(),
            io.k_cache.addr(),
            io.v_cache.addr(),
            scratch.addr(),
            step.0.addr(),
        ];
        let dims = [shape.n_heads as i32, shape.n_kv_heads as i32, shape.head_dim as i32, shape.rot_pairs as i32];
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        let splits_i = max_splits as i32;
        let cfg = LaunchConfig {
            grid_dim: (shape.n_heads as u32, max_splits as u32, 1),
            block_dim: (ATTENTION_CHUNK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = Launch::new(self, &self.kernels.attention_part, "attention_part");
        for p in &a {
            b.arg(p);
        }
        for d in &dims {
            b.arg(d);
        }
        b.arg(&shape.theta).arg(&scale).arg(&splits_i);
        // SAFETY: sizes checked above; block (head, split) writes its own head_dim + 2 values
        // of scratch (and one block per KV head the cache row of the step's position, < max_len)
        // and reads cache rows below that position.
        unsafe { b.launch(cfg) }?;
        let (s_a, o_a, st_a, hd) = (scratch.addr(), out.addr(), step.0.addr(), shape.head_dim as i32);
        let cfg = LaunchConfig { grid_dim: (shape.n_heads as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        let mut b = Launch::new(self, &self.kernels.attention_combine, "attention_combine");
        b.arg(&s_a).arg(&o_a).arg(&st_a).arg(&hd).arg(&splits_i);
        // SAFETY: reads the splits the launch above wrote for positions up to the step's, writes
        // n_heads * head_dim outputs (checked above).
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// fp16 copy of f32 values.
    pub fn to_f16(&self, x: DevPtr<'_, f32>, out: DevPtr<'_, u16>) -> Result<(), GpuError> {
        same_len("fp16 output", x.len(), out.len())?;
        let (x_a, o_a, n) = (x.addr(), out.addr(), x.len() as i32);
        let mut b = Launch::new(self, &self.kernels.to_f16, "to_f16");
        b.arg(&x_a).arg(&o_a).arg(&n);
        // SAFETY: both hold n values.
        unsafe { b.launch(grid_for(x.len())) }?;
        Ok(())
    }

    /// Fills fp16 weights with reproducible pseudo-random values, uniform in [-scale, scale).
    /// With `transpose_of = Some((rows, cols))`, `w` (rows * cols values) receives the transpose
    /// of the rows x cols matrix the same seed fills without it: an input-major copy of the
    /// same random matrix.
    pub fn fill_uniform_f16(
        &self,
        w: DevPtr<'_, u16>,
        seed: u64,
        scale: f32,
        transpose_of: Option<(usize, usize)>,
    ) -> Result<(), GpuError> {
        let (w_a, n) = (w.addr(), w.len());
        let (rows, cols) = transpose_of.unwrap_or((0, 0));
        if transpose_of.is_some() && rows * cols != n {
            return Err(GpuError::Unsupported(format!("transpose of {rows} x {cols} into {n} values")));
        }
        // Element i of the transpose (cols x rows) is element (i % rows, i / rows) of the matrix.
        let (t_rows, t_cols) = (rows, cols);
        let cfg = LaunchConfig { grid_dim: (4096, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = Launch::new(self, &self.kernels.fill_uniform_f16, "fill_uniform_f16");
        b.arg(&w_a).arg(&n).arg(&seed).arg(&scale).arg(&t_rows).arg(&t_cols);
        // SAFETY: writes w[0..n] only.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }
}
