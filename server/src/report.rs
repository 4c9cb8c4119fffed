//! The last message of a generation: finish reason, usage, timing and the per-layer report
//! (achieved sparsity per projection, mask accuracy of audited tokens, measured layer times
//! against the dense reference).

use sieve_engine::audit::{Agreement, MaskAudit};
use sieve_engine::generate::{FinishReason, Generation};
use sieve_engine::model::LayerTimes;
use sieve_engine::sparsity::Proj;
use sieve_proto::v1;

use crate::dense_ref::DenseReference;
use crate::request::MethodAt;

/// The wire finish reason; `stop_string` when a request's stop string ended it.
pub fn finish_reason(f: FinishReason, stop_string: bool) -> v1::FinishReason {
    if stop_string {
        return v1::FinishReason::StopString;
    }
    match f {
        FinishReason::Stop => v1::FinishReason::Stop,
        FinishReason::Length => v1::FinishReason::Length,
        FinishReason::ContextFull => v1::FinishReason::ContextFull,
        FinishReason::Cancelled => v1::FinishReason::Unspecified,
    }
}

/// Recall, precision and F1 of one agreement count.
pub fn accuracy(a: &Agreement) -> v1::MaskAccuracy {
    v1::MaskAccuracy { recall: a.recall(), precision: a.precision(), f1: a.f1() }
}

/// Mean time per call of each layer, microseconds.
pub fn per_step_us(t: &LayerTimes) -> (Vec<f64>, Vec<f64>) {
    let calls = t.calls.max(1) as f64;
    let us = |d: &[std::time::Duration]| d.iter().map(|x| x.as_secs_f64() * 1e6 / calls).collect();
    (us(&t.attention), us(&t.mlp))
}

/// Per-layer audit of a generation: `agreement[layer][reference]`, when it audited anything.
pub fn audited(audit: Option<&MaskAudit>) -> Option<&MaskAudit> {
    audit.filter(|a| a.positions > 0)
}

/// Builds the summary of a finished generation.
pub fn summary(
    g: &Generation,
    times: Option<&LayerTimes>,
    method: MethodAt,
    achieved: f64,
    stop_string: bool,
    dense: &DenseReference,
    layers: usize,
) -> v1::GenerationSummary {
    let decode_tok_s = g.decode_tok_s();
    let (attn, mlp) = times.map(per_step_us).unwrap_or_default();
    let audit = audited(g.audit.as_ref());
    let layer_reports = (0..layers)
        .map(|l| {
            let sp = |p: Proj| g.stats.as_ref().map_or(0.0, |s| s.layer(l, p));
            let acc = |r: usize| audit.and_then(|a| a.agreement.get(l)).map(|row| accuracy(&row[r]));
            let (a_us, m_us) = (attn.get(l).copied().unwrap_or(0.0), mlp.get(l).copied().unwrap_or(0.0));
            let (da, dm) =
                (dense.attention_us.get(l).copied().unwrap_or(0.0), dense.mlp_us.get(l).copied().unwrap_or(0.0));
            v1::LayerReport {
                layer: l as u32,
                q_sparsity: sp(Proj::Q),
                k_sparsity: sp(Proj::K),
                v_sparsity: sp(Proj::V),
                o_sparsity: sp(Proj::O),
                gate_sparsity: sp(Proj::Gate),
                up_sparsity: sp(Proj::Up),
                down_sparsity: sp(Proj::Down),
                vs_teal: acc(0),
                vs_cats: acc(1),
                vs_cett: acc(2),
                attention_us: a_us,
                mlp_us: m_us,
                dense_attention_us: da,
                dense_mlp_us: dm,
                mlp_speedup: if m_us > 0.0 { dm / m_us } else { 0.0 },
            }
        })
        .collect();
    v1::GenerationSummary {
        finish_reason: finish_reason(g.finish, stop_string) as i32,
        usage: Some(v1::Usage { prompt_tokens: g.prompt_tokens as u32, completion_tokens: g.tokens.len() as u32 }),
        timing: Some(v1::Timing {
            prefill_ms: g.prefill.as_secs_f64() * 1e3,
            decode_tok_s,
            timed_steps: g.timed_steps as u32,
            dense_decode_tok_s: dense.decode_tok_s,
            speedup: if dense.decode_tok_s > 0.0 { decode_tok_s / dense.decode_tok_s } else { 0.0 },
        }),
        sparsity: Some(method.to_wire()),
        achieved_sparsity: achieved,
        audited_tokens: audit.map_or(0, |a| a.positions as u32),
        layers: layer_reports,
        dense_reference: Some(dense.to_wire()),
    }
}
