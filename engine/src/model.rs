//! The Llama forward pass: embeddings, blocks (RMSNorm, GQA attention with RoPE and the KV
//! cache, SwiGLU MLP), final norm and LM head. One call handles a batch of consecutive
//! positions: many for prefill (matrix-matrix products), one for decode (matrix-vector).

use std::path::Path;
use std::time::{Duration, Instant};

use sieve_kernels::ActsQ8;
use sieve_kernels::ops::{self, Rope};

use serde::Serialize;

use crate::attention::attention;
use crate::audit::MaskAudit;
use crate::config::Config;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kv_cache::{CacheFormat, KvCache};
use crate::predict::{self, PredictScratch};
use crate::sparse_decode::{self, DecodeScratch, SparseWeights, supports};
use crate::sparsity::{LayerPlan, Method, Proj, SparsityPlan, SparsityStats, Tap, keep_top_importance, zero_below};
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
    /// Input-major copies for the sparse decode kernels, built on first use.
    pub(crate) sparse: SparseWeights,
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
        let sparse = SparseWeights::new(config.n_layers);
        Ok(Self { config, weights, rope, sparse })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The weights (for reports of size and precision).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// The rotary embedding tables.
    pub(crate) fn rope(&self) -> &Rope {
        &self.rope
    }

    /// Precision the weights were loaded at.
    pub fn precision(&self) -> Precision {
        self.weights.precision
    }

    /// Builds the dense decode copies of every matrix (the fast path's VNNI panels; nothing
    /// on the f32 path or without VNNI), otherwise built inside the first decode step that
    /// multiplies each: benchmarks and the server call this before they time or serve.
    pub fn prepare_decode(&self) {
        let layers = &self.weights.layers;
        let linears = layers.iter().flat_map(|w| [&w.wq, &w.wk, &w.wv, &w.wo, &w.w_gate, &w.w_up, &w.w_down]);
        for linear in linears.chain([self.weights.lm_head()]) {
            linear.prepare_decode();
        }
    }

    /// Builds the weight copies that decoding under `plan` reads, its predictors' included
    /// (otherwise built on first use, inside a decode step).
    pub fn prepare_sparse(&self, plan: &SparsityPlan) -> Result<()> {
        if let Some(set) = &plan.predictors {
            set.0.layers.iter().for_each(|p| p.prepare_decode());
        }
        if plan.is_dense() { Ok(()) } else { self.sparse.prepare(plan, &self.weights.layers) }
    }

    /// Bytes of the input-major weight copies built so far.
    pub fn sparse_bytes(&self) -> usize {
        self.sparse.bytes()
    }

    /// An empty KV cache for this model: f16 on the fast path (as its int8 activations, a
    /// precision below the reference's), f32 on the f32 path.
    pub fn new_cache(&self) -> KvCache {
        let c = &self.config;
        KvCache::new(c.n_layers, c.n_kv_heads, c.head_dim, c.context_len, self.cache_format())
    }

    /// Element type of the caches [`Model::new_cache`] makes.
    pub fn cache_format(&self) -> CacheFormat {
        match self.precision() {
            Precision::F32 => CacheFormat::F32,
            Precision::Fast => CacheFormat::F16,
        }
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
        if let Some(plan) = hooks.plan.filter(|p| p.layers.len() != cfg.n_layers) {
            return Err(EngineError::InvalidInput(format!(
                "the sparsity plan has {} layers, the model {}",
                plan.layers.len(),
                cfg.n_layers
            )));
        }
        let d = cfg.d_model;
        let embed_start = hooks.timing.is_some().then(Instant::now);
        let mut x = vec![0f32; n * d];
        for (row, &t) in x.chunks_exact_mut(d).zip(tokens) {
            self.weights.token_embd.row_f32(t as usize, row);
        }
        let mut s = Scratch::new(cfg, n);
        let embed_time = embed_start.map(|t| t.elapsed());
        let start = cache.len();
        let sparse_decode = n == 1
            && !hooks.accuracy_path
            && hooks.audit.is_none()
            && hooks.plan.is_some_and(|p| !p.is_dense() && supports(p.method));
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let done = if sparse_decode {
                self.sparse_block(l, layer, &mut x, cache, &mut s, hooks)
            } else {
                self.block(l, layer, &mut x, cache, &mut s, hooks)
            };
            if let Err(e) = done {
                // Leave the cache as it was: some layers may already hold these positions.
                cache.truncate(start);
                return Err(e);
            }
        }
        cache.advance(n);

        let head_start = hooks.timing.is_some().then(Instant::now);
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
        if let (Some(times), Some(head), Some(embed)) = (hooks.timing.as_deref_mut(), head_start, embed_time) {
            times.outside_blocks += embed + head.elapsed();
        }
        Ok(out)
    }

    /// [`Model::block`] for one position with the plan run by sparse kernels.
    fn sparse_block(
        &self,
        l: usize,
        w: &LayerWeights,
        x: &mut [f32],
        cache: &mut KvCache,
        s: &mut Scratch,
        hooks: &mut Hooks<'_>,
    ) -> Result<()> {
        let cfg = &self.config;
        let d = cfg.d_model;
        let (Some(plan), Some(lp)) = (hooks.plan, hooks.plan.and_then(|p| p.layers.get(l))) else {
            return Err(EngineError::InvalidInput(format!("the sparsity plan has no layer {l}")));
        };
        let method = plan.method;
        let sw = &self.sparse;
        let t0 = hooks.timing.is_some().then(Instant::now);
        ops::rms_norm(x, &w.attn_norm, cfg.rms_eps, &mut s.normed);
        let mut qkv = [(Proj::Q, &mut s.q[..]), (Proj::K, &mut s.k[..]), (Proj::V, &mut s.v[..])];
        sparse_decode::project_all(sw, l, w, method, lp, &s.normed, &mut qkv, &mut s.decode, &mut hooks.stats)?;
        let p0 = cache.len();
        self.rope.apply(&mut s.q, p0);
        self.rope.apply(&mut s.k, p0);
        cache.append(l, &s.k, &s.v);
        attention(cfg, &s.q, cache.layer(l), p0, &mut s.attn);
        sparse_decode::project(sw, l, w, method, lp, Proj::O, &s.attn, &mut s.proj, &mut s.decode, &mut hooks.stats)?;
        add_into(x, &s.proj);
        let t1 = hooks.timing.is_some().then(Instant::now);
        ops::rms_norm(x, &w.ffn_norm, cfg.rms_eps, &mut s.normed[..d]);
        let (gate, h) = (&mut s.gate[..], &mut s.up[..]);
        let predictors = plan.predictors.as_ref().map(|p| &*p.0);
        sparse_decode::mlp(
            sw,
            l,
            w,
            method,
            lp,
            &s.normed[..d],
            gate,
            h,
            &mut s.proj,
            &mut s.decode,
            &mut hooks.stats,
            predictors,
            plan.lookahead_overlap.then(|| plan.layers.get(l + 1)).flatten(),
        )?;
        add_into(x, &s.proj);
        if let (Some(t0), Some(t1), Some(timing)) = (t0, t1, hooks.timing.as_mut()) {
            timing.add(l, t1 - t0, t1.elapsed());
        }
        Ok(())
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
        let t0 = hooks.timing.is_some().then(Instant::now);

        for (o, r) in s.normed.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            ops::rms_norm(r, &w.attn_norm, cfg.rms_eps, o);
        }
        hooks.observe(l, Tap::AttnIn, &s.normed);
        let mut qkv = [(Proj::Q, &w.wq, &mut s.q[..]), (Proj::K, &w.wk, &mut s.k[..]), (Proj::V, &w.wv, &mut s.v[..])];
        project_each(prec, l, &s.normed, n, &mut qkv, hooks, &mut s.masked, &mut s.qa)?;
        for t in 0..n {
            self.rope.apply(&mut s.q[t * d..(t + 1) * d], p0 + t);
            self.rope.apply(&mut s.k[t * kvd..(t + 1) * kvd], p0 + t);
        }
        cache.append(l, &s.k, &s.v);
        attention(cfg, &s.q, cache.layer(l), p0, &mut s.attn);
        hooks.observe(l, Tap::AttnOut, &s.attn);
        project_each(prec, l, &s.attn, n, &mut [(Proj::O, &w.wo, &mut s.proj[..])], hooks, &mut s.masked, &mut s.qa)?;
        add_into(x, &s.proj);
        let t1 = hooks.timing.is_some().then(Instant::now);

        for (o, r) in s.normed.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
            ops::rms_norm(r, &w.ffn_norm, cfg.rms_eps, o);
        }
        hooks.observe(l, Tap::MlpIn, &s.normed);
        let mut gate_up = [(Proj::Gate, &w.w_gate, &mut s.gate[..]), (Proj::Up, &w.w_up, &mut s.up[..])];
        project_each(prec, l, &s.normed, n, &mut gate_up, hooks, &mut s.masked, &mut s.qa)?;
        if hooks.is_empty() {
            ops::silu_mul(&mut s.gate, &s.up);
        } else {
            ops::silu_in_place(&mut s.gate);
            hooks.observe(l, Tap::GateAct, &s.gate);
            let mut dropped = hooks.drop_neurons_by_gate(l, &mut s.gate);
            let mut gate_skipped = 0;
            if let Some((plan, set)) =
                hooks.plan.filter(|p| !p.is_dense()).and_then(|p| Some((p, p.predictors.as_ref()?)))
                && let Some(lp) = plan.layers.get(l)
            {
                let (skipped, gone) =
                    predict::drop_neurons(&set.0, plan.method, lp, l, &s.normed, &mut s.gate, &mut s.predict)?;
                dropped += gone;
                gate_skipped = skipped;
            }
            s.gate.iter_mut().zip(&s.up).for_each(|(g, u)| *g *= u);
            let by_importance = hooks.drop_neurons_by_importance(l, cfg.d_ff, &mut s.gate, &mut s.order);
            if let Some(method) = hooks.plan.map(|p| p.method).filter(|m| m.mlp_only()) {
                // Predict-then-verify reads the up rows of every proposed neuron before
                // ranking them; CETT's oracle counts as skipping what it drops.
                let up_skipped = if method == Method::PredictorVerify { dropped } else { dropped + by_importance };
                hooks.count(l, Proj::Gate, gate_skipped, s.gate.len());
                hooks.count(l, Proj::Up, up_skipped, s.gate.len());
            }
            hooks.observe(l, Tap::DownIn, &s.gate);
            if hooks.audit.is_some() {
                self.audit_mlp(l, w, s, hooks)?;
            }
        }
        project_each(
            prec,
            l,
            &s.gate,
            n,
            &mut [(Proj::Down, &w.w_down, &mut s.proj[..])],
            hooks,
            &mut s.masked,
            &mut s.qa,
        )?;
        add_into(x, &s.proj);
        if let (Some(t0), Some(t1), Some(timing)) = (t0, t1, hooks.timing.as_mut()) {
            timing.add(l, t1 - t0, t1.elapsed());
        }
        Ok(())
    }
}

impl Model {
    /// Compares the method's down input (in `s.gate`) with the reference masks, on the dense
    /// MLP of the same (unmasked) input in `s.normed`.
    fn audit_mlp(&self, l: usize, w: &LayerWeights, s: &mut Scratch, hooks: &mut Hooks<'_>) -> Result<()> {
        let (prec, n) = (self.precision(), s.n);
        let mut act = vec![0f32; s.gate.len()];
        let mut h = vec![0f32; s.gate.len()];
        {
            let m = prepare(prec, &s.normed, n, &mut s.qa)?;
            w.w_gate.forward(&m, &mut act)?;
            w.w_up.forward(&m, &mut h)?;
        }
        for (a, hi) in act.iter_mut().zip(h.iter_mut()) {
            *a = ops::silu(*a);
            *hi *= *a;
        }
        let method_t = hooks.input_threshold(l, Proj::Down).unwrap_or(0.0);
        if let Some(audit) = hooks.audit.as_mut() {
            audit.add(l, &s.gate, method_t, &act, &h);
        }
        Ok(())
    }
}

/// A [`Hooks::observe`] callback: gets the layer, the tap and that tap's activations.
pub type Observer<'a> = dyn FnMut(usize, Tap, &[f32]) + 'a;

/// Optional extras of a forward pass: a sparsity plan to apply, counters of what it dropped,
/// and an observer that sees every tapped activation (before the plan drops anything).
#[derive(Default)]
pub struct Hooks<'a> {
    pub plan: Option<&'a SparsityPlan>,
    pub stats: Option<&'a mut SparsityStats>,
    pub observe: Option<&'a mut Observer<'a>>,
    /// Mask audit against the reference masks (accuracy path only).
    pub audit: Option<&'a mut MaskAudit>,
    /// Per-layer attention and MLP wall time, when wanted.
    pub timing: Option<&'a mut LayerTimes>,
    /// Run the plan by zeroing activations for the dense kernels, even for one position
    /// (the reference the sparse decode kernels are checked against).
    pub accuracy_path: bool,
}

impl Hooks<'_> {
    fn is_empty(&self) -> bool {
        self.plan.is_none_or(|p| p.is_dense()) && self.observe.is_none() && self.stats.is_none() && self.audit.is_none()
    }

    fn layer_plan(&self, layer: usize) -> Option<&LayerPlan> {
        self.plan.filter(|p| !p.is_dense()).and_then(|p| p.layers.get(layer))
    }

    fn observe(&mut self, layer: usize, tap: Tap, x: &[f32]) {
        if let Some(f) = self.observe.as_mut() {
            f(layer, tap, x);
        }
    }

    fn count(&mut self, layer: usize, proj: Proj, zeroed: usize, total: usize) {
        if let Some(stats) = self.stats.as_mut() {
            stats.add(layer, proj, zeroed, total);
        }
    }

    /// The input mask of `proj`: `Some(t)` zeroes |x| <= t (t = 0 for the down projection of
    /// the MLP methods, whose dropped neurons are exact zeros by then).
    fn input_threshold(&self, layer: usize, proj: Proj) -> Option<f32> {
        let method = self.plan?.method;
        let lp = self.layer_plan(layer)?;
        match method {
            Method::Teal | Method::TealUniform => Some(lp.proj[proj.index()]).filter(|&t| t > 0.0),
            Method::PredictorVerify if proj == Proj::Down => Some(lp.proj[proj.index()]),
            m if m.mlp_only() && proj == Proj::Down => Some(0.0),
            _ => None,
        }
    }

    /// CATS: zeroes silu(g) where |silu(g)| <= t; returns how many neurons it dropped.
    fn drop_neurons_by_gate(&self, layer: usize, act: &mut [f32]) -> usize {
        match (self.plan.map(|p| p.method), self.layer_plan(layer)) {
            (Some(Method::Cats), Some(lp)) => zero_below(act, lp.gate_act),
            _ => 0,
        }
    }

    /// CETT: keeps the most important neurons of each token's h; returns how many it dropped.
    fn drop_neurons_by_importance(&self, layer: usize, width: usize, h: &mut [f32], order: &mut Vec<u32>) -> usize {
        match (self.plan.map(|p| p.method), self.layer_plan(layer)) {
            (Some(Method::Cett | Method::PredictorVerify), Some(lp)) if lp.cett_keep > 0 => {
                keep_top_importance(h, width, &lp.down_col_norms, lp.cett_keep, order)
            }
            _ => 0,
        }
    }
}

/// `out = W input` for each listed projection, `input` masked by that projection's threshold
/// first (quantized once for consecutive projections with the same mask), counting what the
/// mask dropped.
#[allow(clippy::too_many_arguments)]
fn project_each(
    prec: Precision,
    layer: usize,
    input: &[f32],
    n: usize,
    jobs: &mut [(Proj, &Linear, &mut [f32])],
    hooks: &mut Hooks<'_>,
    masked: &mut Vec<f32>,
    qa: &mut ActsQ8,
) -> Result<()> {
    // The MLP methods count gate's and up's skipped rows where they drop neurons.
    let mlp_only = hooks.plan.is_some_and(|p| p.method.mlp_only());
    let mlp_counted = |p: Proj| matches!(p, Proj::Gate | Proj::Up) && mlp_only;
    // A decode step whose projections share one mask: one quantization, then one parallel
    // job for all of them (after the loop) instead of one per projection.
    let t0 = jobs.first().and_then(|j| hooks.input_threshold(layer, j.0));
    let fused = prec == Precision::Fast
        && n == 1
        && jobs.len() > 1
        && jobs.iter().all(|j| hooks.input_threshold(layer, j.0) == t0);
    let mut ready: Option<Option<f32>> = None;
    let mut zeroed = 0;
    for (proj, w, out) in jobs.iter_mut() {
        let t = hooks.input_threshold(layer, *proj);
        if ready != Some(t) {
            zeroed = match (prec, t) {
                (Precision::Fast, Some(t)) => qa.quantize_masked_from(input, n, input.len() / n, t)?,
                (Precision::Fast, None) => {
                    qa.quantize_from(input, n, input.len() / n)?;
                    0
                }
                (Precision::F32, Some(t)) => {
                    masked.clear();
                    masked.extend_from_slice(input);
                    zero_below(masked, t)
                }
                (Precision::F32, None) => 0,
            };
            ready = Some(t);
        }
        if !mlp_counted(*proj) {
            hooks.count(layer, *proj, zeroed, input.len());
        }
        if fused {
            continue;
        }
        let prepared = match prec {
            Precision::F32 => Prepared::F32 { x: if t.is_some() { &masked[..] } else { input }, n },
            Precision::Fast => Prepared::Q8(qa),
        };
        w.forward(&prepared, out)?;
    }
    if fused {
        let mut many: Vec<(&Linear, &mut [f32])> = jobs.iter_mut().map(|(_, w, out)| (*w, &mut **out)).collect();
        crate::weights::forward_many(qa, &mut many)?;
    }
    Ok(())
}

/// Wall time per layer of the attention half (norm to residual add) and the MLP half.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LayerTimes {
    /// Summed attention time per layer.
    pub attention: Vec<Duration>,
    /// Summed MLP time per layer.
    pub mlp: Vec<Duration>,
    /// Summed time of the forward calls outside the blocks: embedding lookup, final norm
    /// and LM head (which sparsity leaves alone).
    pub outside_blocks: Duration,
    /// Forward calls timed.
    pub calls: usize,
}

impl LayerTimes {
    fn add(&mut self, l: usize, attention: Duration, mlp: Duration) {
        if self.attention.len() <= l {
            self.attention.resize(l + 1, Duration::ZERO);
            self.mlp.resize(l + 1, Duration::ZERO);
        }
        self.attention[l] += attention;
        self.mlp[l] += mlp;
        if l == 0 {
            self.calls += 1;
        }
    }
}

/// `x += p`.
fn add_into(x: &mut [f32], p: &[f32]) {
    for (xi, pi) in x.iter_mut().zip(p) {
        *xi += pi;
    }
}

/// `n` activation rows prepared for [`Linear::forward`] at `prec` (quantized into `qa` on the
/// fast path, so projections that share an input quantize it once).
pub(crate) fn prepare<'a>(prec: Precision, x: &'a [f32], n: usize, qa: &'a mut ActsQ8) -> Result<Prepared<'a>> {
    match prec {
        Precision::F32 => Ok(Prepared::F32 { x, n }),
        Precision::Fast => {
            qa.quantize_from(x, n, x.len() / n)?;
            Ok(Prepared::Q8(qa))
        }
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
    /// A masked copy of a projection's input.
    masked: Vec<f32>,
    /// Neuron order of the CETT selection.
    order: Vec<u32>,
    /// Buffers of the sparse decode kernels.
    decode: DecodeScratch,
    /// Buffers of the predictor methods on the accuracy path.
    predict: PredictScratch,
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
            masked: Vec::new(),
            order: Vec::new(),
            decode: DecodeScratch::default(),
            predict: PredictScratch::default(),
        }
    }
}
