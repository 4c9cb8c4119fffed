//! `Compare`: one prompt under dense and two methods — each one's text and decode speed, then
//! teacher-forced on a common continuation (the request's reference, else dense's text):
//! perplexity, KL(dense || method) and top-1 agreement with dense.

use std::time::Instant;

use sieve_engine::Model;
use sieve_engine::divergence::{Divergence, teacher_forced};
use sieve_engine::generate::{GenerateOptions, Generation, generate};
use sieve_proto::v1;
use tonic::Status;

use crate::assets::Assets;
use crate::request::{CompareSpec, MethodAt};

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn check_deadline(deadline: Option<Instant>) -> Result<(), Status> {
    match deadline {
        Some(d) if Instant::now() >= d => Err(Status::deadline_exceeded("the deadline passed during the comparison")),
        _ => Ok(()),
    }
}

/// Runs a validated comparison.
pub fn run(
    model: &Model,
    assets: &Assets,
    spec: &CompareSpec,
    deadline: Option<Instant>,
) -> Result<v1::CompareResponse, Status> {
    let methods = [MethodAt::DENSE, spec.a, spec.b];
    let mut runs: Vec<(Generation, Option<sieve_engine::sparsity::SparsityPlan>)> = Vec::new();
    for m in methods {
        check_deadline(deadline)?;
        let plan = assets.plan(m.method, m.target).map_err(Status::failed_precondition)?;
        let opts = GenerateOptions {
            sparsity: plan.clone(),
            ..GenerateOptions::new(spec.max_tokens, spec.sampling, assets.tokenizer.stop_ids().to_vec())
        };
        let g = generate(model, &spec.prompt, &opts, |_| std::ops::ControlFlow::Continue(())).map_err(internal)?;
        runs.push((g, plan));
    }
    let (continuation, scored_on) = if spec.reference.is_empty() {
        (runs[0].0.tokens.clone(), "dense continuation")
    } else {
        (spec.reference.clone(), "reference")
    };
    let vocab = model.config().vocab_size;
    let mut divergences = [Divergence::default(); 3];
    if !continuation.is_empty() {
        check_deadline(deadline)?;
        let dense = teacher_forced(model, &spec.prompt, &continuation, None).map_err(internal)?;
        for (i, (_, plan)) in runs.iter().enumerate() {
            check_deadline(deadline)?;
            let logits = match plan {
                None => dense.clone(),
                Some(p) => teacher_forced(model, &spec.prompt, &continuation, Some(p)).map_err(internal)?,
            };
            divergences[i] = Divergence::measure(&dense, &logits, &continuation, vocab).map_err(internal)?;
        }
    }
    let params = model.config().proj_params();
    let result = |i: usize| {
        let (g, plan) = &runs[i];
        let d = &divergences[i];
        v1::MethodResult {
            sparsity: Some(methods[i].to_wire()),
            text: assets.tokenizer.decode(&g.tokens),
            perplexity: if d.positions > 0 { d.perplexity() } else { 0.0 },
            kl_vs_dense: d.mean_kl(),
            top1_agreement: if d.positions > 0 { d.agreement() } else { 0.0 },
            decode_tok_s: g.decode_tok_s(),
            achieved_sparsity: match (plan, &g.stats) {
                (Some(p), Some(s)) => s.achieved(p.method, &params),
                _ => 0.0,
            },
        }
    };
    Ok(v1::CompareResponse {
        a: Some(result(1)),
        b: Some(result(2)),
        dense: Some(result(0)),
        scored_tokens: continuation.len() as u32,
        scored_on: scored_on.into(),
    })
}
