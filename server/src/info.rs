//! The `Info` answer: model, methods and why any is unavailable, loaded profiles, limits and
//! the hardware the kernels run on.

use sieve_engine::sparsity::METHODS;
use sieve_proto::v1;

use crate::request::method_to_wire;
use crate::state::Shared;

/// The CPU's model name (from /proc/cpuinfo where there is one).
fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Builds the answer.
pub fn info(shared: &Shared) -> v1::InfoResponse {
    let a = &shared.assets;
    let c = &a.config;
    let mut profiles = Vec::new();
    if let Some(p) = a.profile() {
        profiles.push(v1::ProfileInfo {
            kind: "calibration".into(),
            path: a.profile.path.display().to_string(),
            source: p.source.clone(),
            tokens: p.tokens as u64,
        });
    }
    if let Ok(set) = &a.predictors.value {
        let m = &set.manifest;
        profiles.push(v1::ProfileInfo {
            kind: "predictors".into(),
            path: a.predictors.path.display().to_string(),
            source: format!("{:?} family, {:?} tap, {:?} label", m.family, m.tap, m.label).to_lowercase(),
            tokens: m.train_tokens as u64,
        });
    }
    v1::InfoResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        model: Some(v1::ModelInfo {
            name: c.name.clone(),
            path: a.model_path.display().to_string(),
            sha256: a.model_sha256.clone(),
            layers: c.n_layers as u32,
            d_model: c.d_model as u32,
            d_ff: c.d_ff as u32,
            vocab_size: c.vocab_size as u32,
            context_len: c.context_len as u32,
            precision: format!("{:?}", a.precision).to_lowercase(),
        }),
        methods: METHODS
            .iter()
            .map(|&m| {
                let why = a.unavailable(m);
                v1::MethodInfo {
                    method: method_to_wire(m) as i32,
                    available: why.is_none(),
                    reason: why.unwrap_or_default(),
                }
            })
            .collect(),
        profiles,
        hardware: Some(v1::Hardware {
            cpu: cpu_name(),
            threads: sieve_kernels::pool::global().threads() as u32,
            simd: vec![sieve_kernels::isa::describe()],
            gpu: shared.gpu.clone().unwrap_or_default(),
        }),
        limits: Some(v1::Limits { max_queue: shared.max_queue as u32, max_tokens: shared.max_tokens_limit as u32 }),
        dense_reference: Some(shared.dense().to_wire()),
    }
}
