//! What a GPU decode step drops: per layer, the input threshold of each projection and
//! CATS's gate threshold, from a CPU sparsity plan or calibrated on the GPU model itself.

use sieve_kernels::ops::silu;
use sieve_predictor::model::{Body, Output};
use sieve_predictor::store::Tap as PredictorTap;

use crate::error::{EngineError, Result};
use crate::sparsity::{Method, Predictors, Proj, SparsityPlan};

/// One layer's thresholds. Inputs with `|x| > proj[p]` are kept (a negative threshold keeps
/// every input); with CATS, neurons with `|silu(g)| > gate_act` are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuLayerPlan {
    /// Input thresholds of q, k, v, o, gate, up, down.
    pub proj: [f32; 7],
    /// CATS gate threshold (negative: not CATS).
    pub gate_act: f32,
    /// Predictor: neurons scoring above this are kept.
    pub predict: f32,
}

impl GpuLayerPlan {
    /// Keeps everything.
    pub const DENSE: GpuLayerPlan = GpuLayerPlan { proj: [-1.0; 7], gate_act: -1.0, predict: 0.0 };
}

/// A method's thresholds for every layer, as the GPU step applies them.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuPlan {
    /// The method (dense, teal, teal-uniform or cats).
    pub method: Method,
    /// Per layer.
    pub layers: Vec<GpuLayerPlan>,
    /// The predictor set of the predictor method.
    pub predictors: Option<Predictors>,
}

impl GpuPlan {
    /// The dense plan.
    pub fn dense(layers: usize) -> GpuPlan {
        GpuPlan { method: Method::Dense, layers: vec![GpuLayerPlan::DENSE; layers], predictors: None }
    }

    /// Whether the MLP runs CATS's gated up projection.
    pub fn is_cats(&self) -> bool {
        self.method == Method::Cats
    }

    /// The GPU form of a CPU plan (dense, teal, teal-uniform, cats, and predictor with
    /// low-rank predictors of this layer's MLP input; other methods are not on the GPU yet).
    pub fn from_plan(plan: &SparsityPlan) -> Result<GpuPlan> {
        let keep_all = |t: f32| if t > 0.0 { t } else { -1.0 };
        let layers = match plan.method {
            Method::Dense => return Ok(GpuPlan::dense(plan.layers.len())),
            Method::Teal | Method::TealUniform => plan
                .layers
                .iter()
                .map(|lp| GpuLayerPlan { proj: lp.proj.map(keep_all), ..GpuLayerPlan::DENSE })
                .collect(),
            Method::Cats => plan
                .layers
                .iter()
                .map(|lp| {
                    let mut proj = [-1.0; 7];
                    // Dropped neurons have h = 0 exactly; the down GEMV skips them.
                    proj[Proj::Down.index()] = 0.0;
                    GpuLayerPlan { proj, gate_act: keep_all(lp.gate_act), ..GpuLayerPlan::DENSE }
                })
                .collect(),
            Method::Predictor => {
                let Some(set) = plan.predictors.as_ref() else {
                    return Err(EngineError::InvalidInput("the predictor plan has no predictor set".into()));
                };
                if set.0.manifest.tap != PredictorTap::MlpInput {
                    return Err(EngineError::InvalidInput(
                        "lookahead predictors do not run on the GPU yet (train with --tap mlp-input)".into(),
                    ));
                }
                if set.0.layers.iter().any(|p| !matches!(p.body, Body::LowRank { .. })) {
                    return Err(EngineError::InvalidInput(
                        "the GPU runs low-rank predictors only (lowrank, lowrank-g), not lowbit".into(),
                    ));
                }
                plan.layers
                    .iter()
                    .map(|lp| {
                        let mut proj = [-1.0; 7];
                        proj[Proj::Down.index()] = 0.0;
                        GpuLayerPlan { proj, predict: lp.predict_threshold, ..GpuLayerPlan::DENSE }
                    })
                    .collect()
            }
            m => {
                return Err(EngineError::InvalidInput(format!(
                    "method {} does not run on the GPU yet (dense, teal, teal-uniform and cats do)",
                    m.name()
                )));
            }
        };
        Ok(GpuPlan { method: plan.method, layers, predictors: plan.predictors.clone() })
    }
}

/// Whether a predictor's raw output estimates the gate (scored `|silu(z)|`).
pub(crate) fn gate_output(o: Output) -> bool {
    o == Output::Gate
}

/// Activations of one decode step of one layer, as calibration sees them.
#[derive(Debug, Clone, Default)]
pub struct LayerSample {
    /// Attention input (normed), attention output, MLP input (normed).
    pub attn_in: Vec<f32>,
    pub attn_out: Vec<f32>,
    pub mlp_in: Vec<f32>,
    /// Gate and up projections.
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
}

/// The value below which a fraction `s` of `|values|` lies (negative for s = 0).
fn quantile_abs(values: &mut [f32], s: f32) -> f32 {
    let drop = ((s as f64) * values.len() as f64).round() as usize;
    if drop == 0 || values.is_empty() {
        return -1.0;
    }
    values.iter_mut().for_each(|v| *v = v.abs());
    let i = drop.min(values.len()) - 1;
    values.select_nth_unstable_by(i, f32::total_cmp);
    values[i]
}

/// Uniform TEAL (every projection at sparsity `s`) or CATS (gate at `s`) thresholds per layer,
/// from activations the model produced itself (`samples[layer]` gathered over decode steps).
pub fn calibrate_uniform(method: Method, s: f32, samples: &[Vec<LayerSample>]) -> Result<GpuPlan> {
    crate::sparsity::check_target(s)?;
    let mut layers = Vec::with_capacity(samples.len());
    for steps in samples {
        let cat =
            |f: fn(&LayerSample) -> &Vec<f32>| steps.iter().flat_map(|x| f(x).iter().copied()).collect::<Vec<_>>();
        let lp = match method {
            Method::TealUniform | Method::Teal => {
                let t_attn = quantile_abs(&mut cat(|x| &x.attn_in), s);
                let t_o = quantile_abs(&mut cat(|x| &x.attn_out), s);
                let t_mlp = quantile_abs(&mut cat(|x| &x.mlp_in), s);
                let mut h: Vec<f32> =
                    steps.iter().flat_map(|x| x.gate.iter().zip(&x.up).map(|(&g, &u)| silu(g) * u)).collect();
                let t_down = quantile_abs(&mut h, s);
                GpuLayerPlan { proj: [t_attn, t_attn, t_attn, t_o, t_mlp, t_mlp, t_down], ..GpuLayerPlan::DENSE }
            }
            Method::Cats => {
                let mut a: Vec<f32> = steps.iter().flat_map(|x| x.gate.iter().map(|&g| silu(g))).collect();
                let mut proj = [-1.0; 7];
                proj[Proj::Down.index()] = 0.0;
                GpuLayerPlan { proj, gate_act: quantile_abs(&mut a, s), ..GpuLayerPlan::DENSE }
            }
            Method::Dense => GpuLayerPlan::DENSE,
            m => return Err(EngineError::InvalidInput(format!("calibration of {} on the GPU", m.name()))),
        };
        layers.push(lp);
    }
    Ok(GpuPlan { method: if method == Method::Teal { Method::TealUniform } else { method }, layers, predictors: None })
}

/// The share of each projection's inputs (q, k, v, o, gate, up, down) that `plan` skips on
/// these activations (the dense step's, as [`crate::gpu::GpuModel::sample_activations`]
/// records them), over every layer and step: what the thresholds achieve where they are
/// applied, against the target they were calibrated for. CATS skips the up rows and the down
/// inputs of its dropped neurons; the predictor method is not covered (None).
pub fn achieved_sparsity(plan: &GpuPlan, samples: &[Vec<LayerSample>]) -> Option<[f64; 7]> {
    let mut skipped = [0usize; 7];
    let mut seen = [0usize; 7];
    let mut count = |p: usize, values: &mut dyn Iterator<Item = f32>, t: f32| {
        for v in values {
            seen[p] += 1;
            skipped[p] += (t >= 0.0 && v.abs() <= t) as usize;
        }
    };
    for (lp, steps) in plan.layers.iter().zip(samples) {
        for x in steps {
            let h = || x.gate.iter().zip(&x.up).map(|(&g, &u)| silu(g) * u);
            match plan.method {
                Method::Predictor => return None,
                Method::Cats => {
                    // The gate is read whole.
                    count(4, &mut x.gate.iter().copied(), -1.0);
                    for p in [5, 6] {
                        count(p, &mut x.gate.iter().map(|&g| silu(g)), lp.gate_act);
                    }
                }
                _ => {
                    for p in 0..3 {
                        count(p, &mut x.attn_in.iter().copied(), lp.proj[p]);
                    }
                    count(3, &mut x.attn_out.iter().copied(), lp.proj[3]);
                    count(4, &mut x.mlp_in.iter().copied(), lp.proj[4]);
                    count(5, &mut x.mlp_in.iter().copied(), lp.proj[5]);
                    count(6, &mut h(), lp.proj[6]);
                }
            }
        }
    }
    Some(std::array::from_fn(|p| if seen[p] == 0 { 0.0 } else { skipped[p] as f64 / seen[p] as f64 }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_drop_the_asked_share() {
        let mut v: Vec<f32> = (0..100).map(|i| if i % 2 == 0 { i as f32 } else { -(i as f32) }).collect();
        let t = quantile_abs(&mut v.clone(), 0.5);
        assert_eq!(v.iter().filter(|x| x.abs() <= t).count(), 50);
        assert!(quantile_abs(&mut v, 0.0) < 0.0);
    }

    #[test]
    fn cats_calibration_thresholds_the_gate_activation() {
        let sample = LayerSample {
            attn_in: vec![1.0; 4],
            attn_out: vec![1.0; 4],
            mlp_in: vec![1.0; 4],
            gate: vec![-3.0, -1.0, 0.5, 2.0],
            up: vec![1.0; 4],
        };
        let plan = calibrate_uniform(Method::Cats, 0.5, &[vec![sample.clone()]]).unwrap();
        let t = plan.layers[0].gate_act;
        let silu = |g: f32| g / (1.0 + (-g).exp());
        let kept = [-3.0f32, -1.0, 0.5, 2.0].iter().filter(|&&g| silu(g).abs() > t).count();
        assert_eq!(kept, 2);
        assert!(calibrate_uniform(Method::Cats, 1.5, &[]).is_err());
        // The kept half: up rows and down inputs skip the other two neurons, the gate none.
        let achieved = achieved_sparsity(&plan, &[vec![sample]]).unwrap();
        assert_eq!(achieved, [0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]);
    }

    #[test]
    fn teal_skips_what_its_thresholds_say_on_each_projection() {
        let sample = LayerSample {
            attn_in: vec![0.1, 0.2, 0.3, 0.4],
            attn_out: vec![1.0, 2.0, 3.0, 4.0],
            mlp_in: vec![-1.0, 1.0, -2.0, 2.0],
            gate: vec![5.0; 4],
            up: vec![0.5, 1.0, 2.0, 4.0],
        };
        let lp = GpuLayerPlan { proj: [0.25, -1.0, 0.35, 2.5, 1.0, 1.5, 5.0], ..GpuLayerPlan::DENSE };
        let plan = GpuPlan { method: Method::Teal, layers: vec![lp], predictors: None };
        let achieved = achieved_sparsity(&plan, &[vec![sample]]).unwrap();
        // h = silu(5) * up = 4.97 * up: 2.48 and 4.97 are at or below 5, 9.93 and 19.9 above.
        assert_eq!(achieved, [0.5, 0.0, 0.75, 0.5, 0.5, 0.5, 0.5]);
        assert!(achieved_sparsity(&GpuPlan::dense(1), &[vec![]]).unwrap().iter().all(|&s| s == 0.0));
    }
}
