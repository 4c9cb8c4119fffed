//! The Llama forward pass: embeddings, blocks (RMSNorm, GQA attention with RoPE and the KV
//! cache, SwiGLU MLP), final norm and LM head. One call handles a batch of consecutive
//! positions: many for prefill (matrix-matrix products), one for decode (matrix-vector).

use std::path::Path;

use sieve_kernels::ActsQ8;
use sieve_kernels::attention::attend_head;
use sieve_kernels::ops::{self, Rope};

use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::KvCache;
use crate::sparsity::{Method, SparsityPlan, SparsityStats, Tap, zero_below};
use crate::weights::{LayerWeights, Linear, Precision, Prepared, Weights};

/// Which positions of a forward call need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position (perplexity).
    All,
}

/// A loaded model, ready to run.
pub struct Model {
    config: Config,
    weights: Weights,
    rope: Rope,
}

impl Model {
    /// Loads the model in `path` at `precision`.
    pub fn load(path: &Path, precision: Precision) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        Self::from_gguf(&mut gguf, precision)
    }

    /// Builds the model from an opened GGUF file.
    pub fn from_gguf(gguf: &mut GgufFile, precision: Precision) -> Result<Self> {
        let config = Config::from_gguf(gguf)?;
        let weights = Weights::load(gguf, &config, precision)?;
        let rope = Rope::new(config.head_dim, config.rope_dim, config.rope_theta, config.context_len);
        Ok(Self { config, weights, rope })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The weights (for reports of size and precision).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Precision the weights were loaded at.
    pub fn precision(&self) -> Precision {
        self.weights.precision
    }

    /// A fresh KV cache sized for the full context.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.n_layers, self.config.kv_dim(), self.config.context_len)
    }

    /// Runs `tokens` at the positions after those already in `cache`, appends their keys and
    /// values, and returns logits: `vocab` values for [`Logits::Last`], `tokens.len() * vocab`
    /// for [`Logits::All`].
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, logits: Logits) -> Result<Vec<f32>> {
        self.forward_with(tokens, cache, logits, &mut Hooks::default())
    }

    /// [`Model::forward`] with a sparsity plan applied and/or activations observed.
    pub fn forward_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        logits: Logits,
        hooks: &mut Hooks<'_>,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let n = tokens.len();
        if n == 0 {
            return Err(EngineError::InvalidInput("no tokens to run".into()));
        }
        let needed = cache.len() + n;
        if needed > cache.max_len() || needed > self.rope.max_pos() {
            return Err(EngineError::ContextOverflow { needed, max: cache.max_len().min(self.rope.max_pos()) });
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
            return Err(EngineError::InvalidInput(format!(
                "token id {bad} is outside the vocabulary ({})",
                cfg.vocab_size
            )));
        }
        let d = cfg.d_model;
        let mut x = vec![0f32; n * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            self.weights.token_embd.row_f32(t as usize, row);
        }
        let mut s = Scratch::new(cfg, n);
        let start = cache.len();
        for (l, layer) in self.weights.layers.iter().enumerate() {
            if let Err(e) = self.block(l, layer, &mut x, cache, &mut s, hooks) {
                // Leave the cache as it was: some layers may already hold these positions.
                cache.truncate(start);
                return Err(e);
            }
        }
        cache.advance(n);

        let rows: &[f32] = match logits {
            Logits::Last => &x[(n - 1) * d..],
            Logits::All => &x,
        };
        let m = rows.len() / d;
        let mut normed = vec![0f32; m * d];
        for (o, r) in normed.chunks_exact_mut(d).zip(rows.chunks_exact(d)) {
            ops::rms_norm(r, &self.weights.output_norm, cfg.rms_eps, o);
        }
        let head = self.weights.lm_head();
        let mut out = vec![0f32; m * head.rows()];
        head.forward(&prepare(self.precision(), &normed, m, &mut s.qa)?, &mut out)?;
        Ok(out)
    }

    fn block(
        &self,
        l: usize,
        w: &LayerWeights,
        x: &mut [f32],
        cache: &mut KvCache,
        s: &mut Scratch,
        hooks: &mut Hooks<'_>,
    ) -> Result<()> {
        let cfg = &self.config;
        let (n, d, kvd) = (s.n, cfg.d_model, cfg.kv_dim());
        let p0 = cache.len();
        let prec = self.precision();

        for (o, r) in s.normed.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            ops::rms_norm(r, &w.attn_norm, cfg.rms_eps, o);
        }
        hooks.apply(l, Tap::AttnIn, &mut s.normed);
        {
            let a = prepare(prec, &s.normed, n, &mut s.qa)?;
            w.wq.forward(&a, &mut s.q)?;
            w.wk.forward(&a, &mut s.k)?;
            w.wv.forward(&a, &mut s.v)?;
        }
        for t in 0..n {
            self.rope.apply(&mut s.q[t * d..(t + 1) * d], p0 + t);
            self.rope.apply(&mut s.k[t * kvd..(t + 1) * kvd], p0 + t);
        }
        cache.append(l, &s.k, &s.v);
        let (keys, values) = cache.layer(l);
        attention(cfg, &s.q, keys, values, p0, &mut s.attn);
        hooks.apply(l, Tap::AttnOut, &mut s.attn);
        add_projection(&w.wo, prec, &s.attn, n, &mut s.qa, &mut s.proj, x)?;

        for (o, r) in s.normed.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            ops::rms_norm(r, &w.ffn_norm, cfg.rms_eps, o);
        }
        hooks.apply(l, Tap::MlpIn, &mut s.normed);
        {
            let m = prepare(prec, &s.normed, n, &mut s.qa)?;
            w.w_gate.forward(&m, &mut s.gate)?;
            w.w_up.forward(&m, &mut s.up)?;
        }
        if hooks.is_empty() {
            ops::silu_mul(&mut s.gate, &s.up);
        } else {
            s.gate.iter_mut().for_each(|g| *g = ops::silu(*g));
            hooks.apply(l, Tap::GateAct, &mut s.gate);
            s.gate.iter_mut().zip(&s.up).for_each(|(g, u)| *g *= u);
            hooks.apply(l, Tap::DownIn, &mut s.gate);
        }
        add_projection(&w.w_down, prec, &s.gate, n, &mut s.qa, &mut s.proj, x)?;
        Ok(())
    }
}

/// Optional extras of a forward pass: a sparsity plan to apply, counters of what it zeroed,
/// and an observer that sees every tapped activation (before the plan zeroes it).
#[derive(Default)]
pub struct Hooks<'a> {
    pub plan: Option<&'a SparsityPlan>,
    pub stats: Option<&'a mut SparsityStats>,
    pub observe: Option<&'a mut dyn FnMut(usize, Tap, &[f32])>,
}

impl Hooks<'_> {
    fn is_empty(&self) -> bool {
        self.plan.is_none_or(|p| p.method == Method::Dense) && self.observe.is_none() && self.stats.is_none()
    }

    /// Observes `x` at (`layer`, `tap`), then zeroes what the plan drops there.
    fn apply(&mut self, layer: usize, tap: Tap, x: &mut [f32]) {
        if let Some(f) = self.observe.as_mut() {
            f(layer, tap, x);
        }
        let zeroed = match self.plan.and_then(|p| p.threshold(layer, tap)) {
            Some(t) => zero_below(x, t),
            None => 0,
        };
        if let Some(stats) = self.stats.as_mut() {
            stats.add(layer, tap, zeroed, x.len());
        }
    }
}

/// `x += W input`, quantizing `input` first on the fast path.
fn add_projection(
    w: &Linear,
    prec: Precision,
    input: &[f32],
    n: usize,
    qa: &mut ActsQ8,
    proj: &mut [f32],
    x: &mut [f32],
) -> Result<()> {
    w.forward(&prepare(prec, input, n, qa)?, proj)?;
    for (xi, pi) in x.iter_mut().zip(proj.iter()) {
        *xi += pi;
    }
    Ok(())
}

/// `n` activation rows prepared for [`Linear::forward`] at `prec` (quantized into `qa` on the
/// fast path, so projections that share an input quantize it once).
fn prepare<'a>(prec: Precision, x: &'a [f32], n: usize, qa: &'a mut ActsQ8) -> Result<Prepared<'a>> {
    match prec {
        Precision::F32 => Ok(Prepared::F32 { x, n }),
        Precision::Fast => {
            qa.quantize_from(x, n, x.len() / n)?;
            Ok(Prepared::Q8(qa))
        }
    }
}

/// Causal GQA attention of `n` query rows at positions `p0..p0+n` over the cached keys and
/// values (which already include these positions). (token, head) pairs run in parallel.
fn attention(cfg: &Config, q: &[f32], keys: &[f32], values: &[f32], p0: usize, out: &mut [f32]) {
    let (hd, nh, kvd) = (cfg.head_dim, cfg.n_heads, cfg.kv_dim());
    let group = cfg.n_heads / cfg.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let pairs = out.len() / hd;
    // A few pairs per task, so a long prefill is not thousands of tiny tasks.
    let per_task = pairs.div_ceil(8 * sieve_kernels::pool::global().threads()).max(1);
    let tasks = pairs.div_ceil(per_task);
    let heads = HeadsOut(out.as_mut_ptr());
    sieve_kernels::pool::parallel_for(tasks, |task| {
        let mut scores = Vec::with_capacity(p0 + 1);
        for i in task * per_task..((task + 1) * per_task).min(pairs) {
            let (t, h) = (i / nh, i % nh);
            let qh = &q[t * nh * hd + h * hd..][..hd];
            // SAFETY: pair i owns out[i * hd..(i + 1) * hd]; pairs are disjoint across tasks,
            // and `parallel_for` returns only after every task finished.
            let o = unsafe { heads.slice(i * hd, hd) };
            // Shapes come from the validated config and the cache this call filled, so the
            // kernel's bounds checks cannot fail.
            let _ = attend_head(qh, keys, values, kvd, (h / group) * hd, p0 + t + 1, scale, &mut scores, o);
        }
    });
}

/// The attention output, shared by tasks that each write their own (token, head) slices.
#[derive(Clone, Copy)]
struct HeadsOut(*mut f32);
// SAFETY: tasks write disjoint slices (see `attention`), and the buffer outlives the job.
unsafe impl Send for HeadsOut {}
unsafe impl Sync for HeadsOut {}

impl HeadsOut {
    /// `len` values from `start`.
    ///
    /// # Safety
    /// The range lies inside the buffer and no other live reference overlaps it.
    unsafe fn slice<'a>(self, start: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Per-call buffers of one forward pass.
struct Scratch {
    n: usize,
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    qa: ActsQ8,
}

impl Scratch {
    fn new(cfg: &Config, n: usize) -> Self {
        let (d, f, kv) = (cfg.d_model, cfg.d_ff, cfg.kv_dim());
        Self {
            n,
            normed: vec![0.0; n * d],
            q: vec![0.0; n * d],
            k: vec![0.0; n * kv],
            v: vec![0.0; n * kv],
            attn: vec![0.0; n * d],
            proj: vec![0.0; n * d],
            gate: vec![0.0; n * f],
            up: vec![0.0; n * f],
            qa: ActsQ8::default(),
        }
    }
}
