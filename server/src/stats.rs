//! Running aggregates per method and target since the server started (the `LayerStats` RPC
//! and the Prometheus gauges read them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sieve_engine::audit::Agreement;
use sieve_engine::generate::Generation;
use sieve_engine::model::LayerTimes;
use sieve_engine::sparsity::Proj;
use sieve_proto::v1;

use crate::report::accuracy;
use crate::request::MethodAt;

#[derive(Debug, Clone, Default)]
struct LayerTotals {
    /// Sum over requests of (MLP sparsity × timed steps).
    sparsity_steps: f64,
    agreement: [Agreement; 3],
    attention: Duration,
    mlp: Duration,
}

#[derive(Debug, Clone)]
struct MethodTotals {
    method: MethodAt,
    requests: u64,
    completion_tokens: u64,
    timed_steps: u64,
    decode: Duration,
    audited: u64,
    /// Forward calls with layer timing.
    timed_calls: u64,
    layers: Vec<LayerTotals>,
}

/// Aggregates of every method that has run.
#[derive(Debug)]
pub struct Aggregates {
    started: Instant,
    by_method: BTreeMap<String, MethodTotals>,
}

impl Default for Aggregates {
    fn default() -> Self {
        Self { started: Instant::now(), by_method: BTreeMap::new() }
    }
}

impl Aggregates {
    /// Adds a finished (or cancelled) generation.
    pub fn add(&mut self, method: MethodAt, g: &Generation, times: Option<&LayerTimes>, layers: usize) {
        let t = self.by_method.entry(method.label()).or_insert_with(|| MethodTotals {
            method,
            requests: 0,
            completion_tokens: 0,
            timed_steps: 0,
            decode: Duration::ZERO,
            audited: 0,
            timed_calls: 0,
            layers: vec![LayerTotals::default(); layers],
        });
        t.requests += 1;
        t.completion_tokens += g.tokens.len() as u64;
        t.timed_steps += g.timed_steps as u64;
        t.decode += g.decode;
        let audit = g.audit.as_ref().filter(|a| a.positions > 0);
        t.audited += audit.map_or(0, |a| a.positions as u64);
        if let Some(times) = times {
            t.timed_calls += times.calls as u64;
        }
        for (l, lt) in t.layers.iter_mut().enumerate() {
            if let Some(s) = &g.stats {
                lt.sparsity_steps += s.layer(l, Proj::Down) * g.timed_steps as f64;
            }
            if let Some(row) = audit.and_then(|a| a.agreement.get(l)) {
                for (acc, a) in lt.agreement.iter_mut().zip(row) {
                    *acc = acc.merged(a);
                }
            }
            if let Some(times) = times {
                lt.attention += times.attention.get(l).copied().unwrap_or_default();
                lt.mlp += times.mlp.get(l).copied().unwrap_or_default();
            }
        }
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Decode tok/s and mean recall against each reference (TEAL, CATS, CETT; `None` when
    /// nothing was audited), per method label.
    pub fn headline(&self) -> Vec<(String, f64, Option<[f64; 3]>)> {
        self.by_method
            .iter()
            .map(|(label, t)| {
                let tok_s = t.timed_steps as f64 / t.decode.as_secs_f64().max(1e-9);
                let recall = (t.audited > 0).then(|| {
                    let mut sum = [Agreement::default(); 3];
                    for l in &t.layers {
                        for (s, a) in sum.iter_mut().zip(&l.agreement) {
                            *s = s.merged(a);
                        }
                    }
                    sum.map(|a| a.recall())
                });
                (label.clone(), tok_s, recall)
            })
            .collect()
    }

    /// The wire form, optionally for one method only.
    pub fn to_wire(&self, only: Option<sieve_engine::sparsity::Method>) -> Vec<v1::MethodAggregate> {
        self.by_method
            .values()
            .filter(|t| only.is_none_or(|m| m == t.method.method))
            .map(|t| {
                let steps = t.timed_steps.max(1) as f64;
                let calls = t.timed_calls.max(1) as f64;
                v1::MethodAggregate {
                    sparsity: Some(t.method.to_wire()),
                    requests: t.requests,
                    completion_tokens: t.completion_tokens,
                    timed_steps: t.timed_steps,
                    audited_tokens: t.audited,
                    decode_tok_s: t.timed_steps as f64 / t.decode.as_secs_f64().max(1e-9),
                    layers: t
                        .layers
                        .iter()
                        .enumerate()
                        .map(|(l, lt)| {
                            let acc = |r: usize| (t.audited > 0).then(|| accuracy(&lt.agreement[r]));
                            v1::LayerAggregate {
                                layer: l as u32,
                                mlp_sparsity: lt.sparsity_steps / steps,
                                vs_teal: acc(0),
                                vs_cats: acc(1),
                                vs_cett: acc(2),
                                attention_us: lt.attention.as_secs_f64() * 1e6 / calls,
                                mlp_us: lt.mlp.as_secs_f64() * 1e6 / calls,
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
