//! Element-wise and small vector operations of a Llama block: RMSNorm, SwiGLU, softmax,
//! rotary embeddings, and the dot/axpy loops of attention.
//!
//! The plain functions never panic: given slices of different lengths they work over the
//! common prefix. The `try_` variants check the lengths first and return a [`KernelError`].

use crate::KernelError;

fn same_len(what: &'static str, expected: usize, got: usize) -> Result<(), KernelError> {
    if expected == got { Ok(()) } else { Err(KernelError::Length { what, expected, got }) }
}

/// `out = x / sqrt(mean(x^2) + eps) * weight` (over the common length of the three slices).
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = crate::cpu::dot_f32(x, x);
    let scale = 1.0 / (ss / x.len().max(1) as f32 + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
        *o = xi * scale * wi;
    }
}

/// [`rms_norm`], after checking that `weight` and `out` have the length of `x`.
pub fn try_rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    same_len("rms_norm weight", x.len(), weight.len())?;
    same_len("rms_norm output", x.len(), out.len())?;
    rms_norm(x, weight, eps, out);
    Ok(())
}

/// SiLU: `x * sigmoid(x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `gate[i] = silu(gate[i]) * up[i]`, in place (over the common length).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    crate::cpu::silu::silu_mul(gate, up);
}

/// `x[i] = silu(x[i])`, vectorized where the CPU allows (within a few ulp of [`silu`]).
pub fn silu_in_place(x: &mut [f32]) {
    crate::cpu::silu::silu_in_place(x);
}

/// [`silu_mul`], after checking that `up` has the length of `gate`.
pub fn try_silu_mul(gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
    same_len("silu_mul up", gate.len(), up.len())?;
    silu_mul(gate, up);
    Ok(())
}

/// Numerically stable softmax, in place. (A row of only `-inf` has no defined softmax and
/// comes out as NaN.)
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Dot product of two f32 slices (SIMD when available), over their common length.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    crate::cpu::dot_f32(a, b)
}

/// `y += a * x` (SIMD when available), over the common length.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    crate::cpu::axpy_f32(a, x, y)
}

/// Precomputed rotary tables: cos/sin per (position, pair), for GGML's "normal" RoPE that
/// rotates adjacent pairs `(x[2i], x[2i+1])` (the layout llama.cpp's converter stores Q/K in).
/// Pair `i` of position `p` turns by `p * theta^(-2i / rot_dim)`.
#[derive(Debug, Clone)]
pub struct Rope {
    head_dim: usize,
    pairs: usize,
    max_pos: usize,
    theta: f64,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for positions `0..max_pos`; the leading `rot_dim` dims of each head rotate.
    pub fn new(head_dim: usize, rot_dim: usize, theta: f32, max_pos: usize) -> Self {
        let pairs = rot_dim.min(head_dim) / 2;
        let mut rope = Self { head_dim, pairs, max_pos, theta: theta as f64, cos: Vec::new(), sin: Vec::new() };
        rope.cos.reserve(max_pos * pairs);
        rope.sin.reserve(max_pos * pairs);
        for p in 0..max_pos {
            for i in 0..pairs {
                let (s, c) = rope.angle(p, i).sin_cos();
                rope.cos.push(c as f32);
                rope.sin.push(s as f32);
            }
        }
        rope
    }

    /// Rotation angle of pair `i` at position `pos`.
    fn angle(&self, pos: usize, i: usize) -> f64 {
        pos as f64 * self.theta.powf(-2.0 * i as f64 / (2 * self.pairs) as f64)
    }

    /// Positions `0..max_pos()` come from the tables (later ones are computed on the fly).
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    /// Rotates every whole head of `x` (heads of `head_dim` values) for position `pos`.
    /// Positions past [`Rope::max_pos`] are computed directly, more slowly; a trailing
    /// partial head is left as it is.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let p = self.pairs;
        if self.head_dim == 0 || p == 0 {
            return;
        }
        let rotate = |x: &mut [f32], cos: &[f32], sin: &[f32]| {
            for head in x.chunks_exact_mut(self.head_dim) {
                for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                    let (a, b) = (pair[0], pair[1]);
                    pair[0] = a * c - b * s;
                    pair[1] = a * s + b * c;
                }
            }
        };
        if pos < self.max_pos {
            rotate(x, &self.cos[pos * p..(pos + 1) * p], &self.sin[pos * p..(pos + 1) * p]);
        } else {
            let (sin, cos): (Vec<f32>, Vec<f32>) = (0..p)
                .map(|i| {
                    let (s, c) = self.angle(pos, i).sin_cos();
                    (s as f32, c as f32)
                })
                .unzip();
            rotate(x, &cos, &sin);
        }
    }

    /// [`Rope::apply`], after checking that `x` is a whole number of heads.
    pub fn try_apply(&self, x: &mut [f32], pos: usize) -> Result<(), KernelError> {
        if self.head_dim == 0 || !x.len().is_multiple_of(self.head_dim) {
            return Err(KernelError::Shape(format!(
                "{} values is not a whole number of heads of {}",
                x.len(),
                self.head_dim
            )));
        }
        self.apply(x, pos);
        Ok(())
    }
}
