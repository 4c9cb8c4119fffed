//! One decode step on the GPU: the launches of a whole step, captured into a CUDA graph per
//! plan and sequence and replayed for every token; the token and position are written to
//! the device before each replay, so the graph never changes between steps.

use sieve_kernels::gpu::{
    AttentionIo, CudaSlice, DevPtr, FoldedNorm, GemvOut, Gpu, GpuError, LowRankPredictor, SparseGemv, StepArgs,
    WeightType,
};

use super::model::GpuModel;
use super::plan::{GpuPlan, LayerSample};
use crate::error::{EngineError, Result};
use crate::sparsity::Proj;

/// Widest model whose row kernels (the dense products and the LM head) fold in the RMSNorm
/// they read, unless told otherwise ([`GpuModel::set_folded_norms`]). On an H100 folding took
/// SmolLM2's first five blocks (576 wide) from 156.1 to 141.6-141.9 µs per dense step. On the
/// synthetic Llama-3-8B (4096 wide) a first build of the fold took the dense step from 5654 to
/// 6132 µs: each warp loads the norm's weights beside x, and at 4096 inputs those loads cost
/// more than the launch they save (that build chose at run time, which alone cost the unfolded
/// step 2.5%: 5654 against 5516; the kernels now have a folded twin each).
pub(crate) const FOLD_ROWS_MAX_WIDTH: usize = 2048;

/// Warp units per SM of the o projection's input-sparse GEMV. At the default 8, Llama-3-8B's
/// 4096 inputs over eight 512-output tiles leave each unit 32 inputs; at 4 each has 64 (SmolLM2's
/// 576 inputs split the same either way). The synthetic Llama-3-8B step on an H100 (Nov 27,
/// the two taking turns in one device call): TEAL-uniform 50% 3505-3510 against 3529-3537 µs,
/// 75% 2236-2239 against 2250-2255, CATS 50% 4537-4538 against 4555-4557 (o read densely by the
/// same kernel). 2 and 3 units (128 and 96 inputs) measured slower, 6 level with 4, 12 as 8.
const O_UNITS_PER_SM: usize = 4;

/// The input of a row kernel that reads the RMSNorm of `x` with these weights: `x` itself
/// with the norm folded in, or `normed` after a norm launch.
fn row_input<'w>(
    g: &Gpu,
    fold: bool,
    x: DevPtr<'w, f32>,
    normed: DevPtr<'w, f32>,
    weight: &'w CudaSlice<f32>,
    eps: f32,
) -> std::result::Result<(DevPtr<'w, f32>, Option<FoldedNorm<'w>>), GpuError> {
    if fold {
        Ok((x, Some(FoldedNorm { weight: g.view(weight), eps })))
    } else {
        g.rms_norm(x, g.view(weight), normed, eps, None)?;
        Ok((normed, None))
    }
}

/// GPU time of decode steps, measured with CUDA events around the graph replays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTiming {
    /// Steps timed.
    pub steps: usize,
    /// Mean microseconds per step.
    pub us_per_step: f64,
}

impl StepTiming {
    /// Steps per second.
    pub fn tok_s(&self) -> f64 {
        1e6 / self.us_per_step
    }
}

/// Where calibration wants each layer's activations copied (device buffers per layer).
struct Taps<'a> {
    attn_in: &'a [sieve_kernels::gpu::CudaSlice<f32>],
    attn_out: &'a [sieve_kernels::gpu::CudaSlice<f32>],
    mlp_in: &'a [sieve_kernels::gpu::CudaSlice<f32>],
    gate_up: &'a [sieve_kernels::gpu::CudaSlice<f32>],
}

impl GpuModel {
    /// Launches one whole decode step (into the graph being captured, or directly).
    fn record(&self, plan: &GpuPlan, taps: Option<&Taps<'_>>) -> std::result::Result<(), GpuError> {
        let (g, a, s) = (&self.gpu, &self.act, &self.shape);
        let (d, f, kv) = (s.d_model, s.d_ff, s.kv_dim());
        let bad = || GpuError::Unsupported("activation buffer sizes".into());
        let step = StepArgs(g.view(&a.step));
        let attn_shape = super::model::attention_shape(s, self.max_len);
        let (x, normed, attn, h) = (g.view(&a.x), g.view(&a.normed), g.view(&a.attn), g.view(&a.h));
        let qkv = g.view(&a.qkv);
        let (q, k, v) =
            (qkv.sub(0, d).ok_or_else(bad)?, qkv.sub(d, kv).ok_or_else(bad)?, qkv.sub(d + kv, kv).ok_or_else(bad)?);
        let gate_up = g.view(&a.gate_up);
        let (gate, up) = (gate_up.sub(0, f).ok_or_else(bad)?, gate_up.sub(f, f).ok_or_else(bad)?);
        let tap = |dst: Option<&sieve_kernels::gpu::CudaSlice<f32>>,
                   src: DevPtr<'_, f32>|
         -> std::result::Result<(), GpuError> {
            match dst {
                Some(dst) => g.copy_view(src, g.view(dst)),
                None => Ok(()),
            }
        };

        let caches = &self.seqs[self.current].caches;
        g.embed(g.view(&self.embed), &step, x)?;
        // Dense reads whole rows (faster than the input-sparse kernel at s = 0); calibration
        // taps need gate and up apart, so they take the general path.
        let dense_rows = plan.method == crate::sparsity::Method::Dense && taps.is_none();
        let row_input = |weight| row_input(g, self.fold_norms, x, normed, weight, s.rms_eps);
        for (l, (w, lp)) in self.layers.iter().zip(&plan.layers).enumerate() {
            if dense_rows {
                let (kc, vc) = (&caches[l].0, &caches[l].1);
                let f16 = WeightType::F16;
                let (input, norm) = row_input(&w.attn_norm)?;
                g.rows_gemv(f16, g.view(&w.qkv_rows), input, qkv, None, false, norm.as_ref())?;
                let io = AttentionIo { q, k, v, k_cache: g.view(kc), v_cache: g.view(vc) };
                self.attend(&attn_shape, &io, attn, &step)?;
                g.rows_gemv(f16, g.view(&w.o_rows), attn, x, None, true, None)?;
                let (input, norm) = row_input(&w.ffn_norm)?;
                g.swiglu_rows(f16, g.view(&w.gate_rows), g.view(&w.up_rows), input, h, None, norm.as_ref())?;
                g.rows_gemv(f16, g.view(&w.down_rows), h, x, None, true, None)?;
                continue;
            }
            let (kc, vc) = (&caches[l].0, &caches[l].1);
            let wv = |p: Proj| g.view(&w.proj[p.index()]);
            g.rms_norm(x, g.view(&w.attn_norm), normed, s.rms_eps, Some(qkv))?;
            tap(taps.map(|t| &t.attn_in[l]), normed)?;
            let outs = [(Proj::Q, q), (Proj::K, k), (Proj::V, v)].map(|(p, y)| GemvOut {
                weights: wv(p),
                out: y,
                threshold: lp.proj[p.index()],
            });
            self.gemv.launch(g, normed, None, &outs, true, None)?;
            let io = AttentionIo { q, k, v, k_cache: g.view(kc), v_cache: g.view(vc) };
            self.attend(&attn_shape, &io, attn, &step)?;
            tap(taps.map(|t| &t.attn_out[l]), attn)?;
            let o = GemvOut { weights: wv(Proj::O), out: x, threshold: lp.proj[Proj::O.index()] };
            let o_gemv = SparseGemv { units_per_sm: Some(O_UNITS_PER_SM), ..self.gemv };
            o_gemv.launch(g, attn, None, &[o], true, None)?;
            g.rms_norm(x, g.view(&w.ffn_norm), normed, s.rms_eps, Some(gate_up))?;
            tap(taps.map(|t| &t.mlp_in[l]), normed)?;
            let down_t = lp.proj[Proj::Down.index()];
            let predictor = match (&plan.predictors, &self.predictors) {
                (Some(_), Some((_, layers))) => Some(layers.get(l).ok_or_else(bad)?),
                (Some(_), None) => return Err(GpuError::Unsupported("the predictor set is not on the device".into())),
                _ => None,
            };
            // The MLP's front half, per method; it leaves the down GEMV's input (and SwiGLU's
            // second operand when the down GEMV forms silu(gate) * up itself).
            let (down_in, down_x2) = if let Some(p) = predictor {
                let hidden = g.view(&p.hidden);
                g.rows_gemv(WeightType::F16, g.view(&p.w1), normed, hidden, None, false, None)?;
                let lr = LowRankPredictor {
                    w2: g.view(&p.w2),
                    b2: g.view(&p.b2),
                    scale: p.scale.as_ref().map(|s| g.view(s)),
                    relu: p.relu,
                    gate_output: p.gate_output,
                };
                g.predicted_swiglu(&lr, hidden, lp.predict, g.view(&w.gate_rows), g.view(&w.up_rows), normed, h)?;
                (h, None)
            } else if plan.is_cats() {
                // CATS needs the whole gate: whole rows are the fastest dense read.
                g.rows_gemv(WeightType::F16, g.view(&w.gate_rows), normed, gate, None, false, None)?;
                tap(taps.map(|t| &t.gate_up[l]), gate_up)?;
                g.up_gated(WeightType::F16, g.view(&w.up_rows), normed, gate, lp.gate_act, h)?;
                (h, None)
            } else {
                let og = GemvOut { weights: wv(Proj::Gate), out: gate, threshold: lp.proj[Proj::Gate.index()] };
                let ou = GemvOut { weights: wv(Proj::Up), out: up, threshold: lp.proj[Proj::Up.index()] };
                self.gemv.launch(g, normed, None, &[og, ou], true, None)?;
                tap(taps.map(|t| &t.gate_up[l]), gate_up)?;
                // Dense and TEAL: silu(gate) * up is formed while the down GEMV reads it.
                (gate, Some(up))
            };
            let od = GemvOut { weights: wv(Proj::Down), out: x, threshold: down_t };
            self.gemv.launch(g, down_in, down_x2, &[od], true, None)?;
        }
        let head = g.view(self.head.as_ref().unwrap_or(&self.embed));
        let (input, norm) = row_input(&self.out_norm)?;
        g.rows_gemv(WeightType::F16, head, input, g.view(&a.logits), None, false, norm.as_ref())
    }

    /// RoPE, the KV append and the attention of the step, split over positions for long caches.
    fn attend(
        &self,
        shape: &sieve_kernels::gpu::AttentionShape,
        io: &AttentionIo<'_>,
        out: DevPtr<'_, f32>,
        step: &StepArgs<'_>,
    ) -> std::result::Result<(), GpuError> {
        match &self.act.attn_splits {
            Some(scratch) => self.gpu.attention_split(shape, io, out, self.gpu.view(scratch), step),
            None => self.gpu.attention(shape, io, out, step),
        }
    }

    fn check_plan(&self, plan: &GpuPlan) -> Result<()> {
        if plan.layers.len() != self.shape.n_layers {
            return Err(EngineError::InvalidInput(format!(
                "the GPU plan has {} layers, the model {}",
                plan.layers.len(),
                self.shape.n_layers
            )));
        }
        Ok(())
    }

    /// Makes sure the captured graph is the one of `plan` under the current launch mode.
    fn ensure_graph(&mut self, plan: &GpuPlan) -> Result<()> {
        self.check_plan(plan)?;
        if let Some(set) = &plan.predictors {
            self.ensure_predictors(set)?;
        }
        let current = self.current;
        // A graph bakes in the launch mode too (set on the Gpu, which callers can reach).
        let early = self.gpu.early_launch();
        if self.seqs[current].graph.as_ref().is_some_and(|(p, e, _)| p == plan && *e == early) {
            return Ok(());
        }
        self.seqs[current].graph = None;
        let graph = self.gpu.capture(|| self.record(plan, None))?;
        self.seqs[current].graph = Some((plan.clone(), early, graph));
        Ok(())
    }

    fn launch_step(&mut self, token: u32, plan: &GpuPlan) -> Result<()> {
        self.check_token(token)?;
        self.ensure_graph(plan)?;
        let args = [token as i32, self.position() as i32];
        self.gpu.write(&args, &mut self.act.step)?;
        let seq = &mut self.seqs[self.current];
        let Some((_, _, graph)) = seq.graph.as_ref() else {
            return Err(EngineError::InvalidInput("no captured decode graph".into()));
        };
        self.gpu.replay(graph)?;
        seq.pos += 1;
        Ok(())
    }

    /// Decodes one token at the next position under `plan` and returns the logits.
    pub fn step(&mut self, token: u32, plan: &GpuPlan) -> Result<Vec<f32>> {
        self.launch_step(token, plan)?;
        Ok(self.gpu.download(&self.act.logits)?)
    }

    /// GPU time of `tokens.len()` decode steps under `plan` (CUDA events around the graph
    /// replays; logits stay on the device).
    pub fn time_steps(&mut self, tokens: &[u32], plan: &GpuPlan) -> Result<StepTiming> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidInput("no steps to time".into()));
        }
        self.ensure_graph(plan)?;
        let t0 = self.gpu.event()?;
        for &t in tokens {
            self.launch_step(t, plan)?;
        }
        let t1 = self.gpu.event()?;
        let ms = self.gpu.elapsed_ms(&t0, &t1)?;
        Ok(StepTiming { steps: tokens.len(), us_per_step: ms * 1e3 / tokens.len() as f64 })
    }

    /// Runs dense steps over `tokens` and returns every layer's activations at each step
    /// (for calibrating thresholds on the model's own activations).
    pub fn sample_activations(&mut self, tokens: &[u32]) -> Result<Vec<Vec<LayerSample>>> {
        let (n, d, f) = (self.shape.n_layers, self.shape.d_model, self.shape.d_ff);
        let bufs = |len: usize| -> std::result::Result<Vec<_>, GpuError> {
            (0..n).map(|_| self.gpu.zeros::<f32>(len)).collect()
        };
        let (attn_in, attn_out, mlp_in, gate_up) = (bufs(d)?, bufs(d)?, bufs(d)?, bufs(2 * f)?);
        let taps = Taps { attn_in: &attn_in, attn_out: &attn_out, mlp_in: &mlp_in, gate_up: &gate_up };
        let plan = GpuPlan::dense(n);
        let mut samples = vec![Vec::with_capacity(tokens.len()); n];
        for &t in tokens {
            self.check_token(t)?;
            self.gpu.write(&[t as i32, self.position() as i32], &mut self.act.step)?;
            self.record(&plan, Some(&taps))?;
            self.seqs[self.current].pos += 1;
            for (l, layer) in samples.iter_mut().enumerate() {
                let gu = self.gpu.download(&gate_up[l])?;
                layer.push(LayerSample {
                    attn_in: self.gpu.download(&attn_in[l])?,
                    attn_out: self.gpu.download(&attn_out[l])?,
                    mlp_in: self.gpu.download(&mlp_in[l])?,
                    gate: gu[..f].to_vec(),
                    up: gu[f..].to_vec(),
                });
            }
        }
        Ok(samples)
    }
}
