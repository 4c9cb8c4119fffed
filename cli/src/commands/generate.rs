//! `sieve generate`: stream a completion of a prompt to stdout.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{Result, bail};
use sieve_engine::Precision;
use sieve_engine::audit::{MaskAudit, Reference};
use sieve_engine::chat::user_prompt;
use sieve_engine::generate::{GenerateOptions, generate};
use sieve_engine::sampling::SamplingParams;
use sieve_engine::sparsity::check_target;
use sieve_engine::tokenizer::StreamDecoder;

/// Arguments of `sieve generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The prompt.
    pub(crate) prompt: String,
    /// Wrap the prompt in the model's chat template (ChatML) as a user message.
    #[arg(long)]
    pub(crate) chat: bool,
    /// Most new tokens.
    #[arg(long, default_value_t = 128)]
    pub(crate) max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) temperature: f32,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub(crate) top_k: usize,
    /// Nucleus sampling mass (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) top_p: f32,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Weight precision: f32 (reference) or fast (int8).
    #[arg(long, default_value = "fast")]
    pub(crate) precision: Precision,
    #[command(flatten)]
    pub(crate) sparsity: super::SparsityArgs,
    /// Audit every Nth decode step's MLP masks against TEAL, CATS and CETT at the method's
    /// target (off the timed path); the summary goes to stderr. 0: off.
    #[arg(long, default_value_t = 0)]
    pub(crate) audit_every: usize,
    /// Print timing and memory to stderr after the text.
    #[arg(long)]
    pub(crate) stats: bool,
    /// Where to run: cpu, or cuda (an NVIDIA GPU; needs a build with `--features cuda`).
    #[arg(long, value_enum, default_value = "cpu")]
    pub(crate) device: super::gpu_decode::Device,
}

/// Runs `sieve generate`.
pub fn run(model_path: &Path, a: Args) -> Result<()> {
    if a.prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let sampling = SamplingParams { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p, seed: a.seed };
    sampling.validate()?;
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    check_target(a.sparsity.sparsity)?;
    if a.device == super::gpu_decode::Device::Cuda {
        if a.audit_every > 0 {
            bail!("--audit-every runs on the CPU only");
        }
        return super::gpu_decode::generate(model_path, &a);
    }
    let (tok, model) = super::load(model_path, a.precision)?;
    let sparsity = a.sparsity.plan(model_path, &model)?;
    model.prepare_decode();
    if let Some(plan) = &sparsity {
        model.prepare_sparse(plan)?;
    }
    let audit = if a.audit_every > 0 {
        if a.sparsity.sparsity == 0.0 {
            bail!("--audit-every needs a method and a --sparsity above 0 (the references are taken at its target)");
        }
        let profile = super::load_profile(model_path, &model, a.sparsity.profile.as_deref())?;
        Some(MaskAudit::new(&profile, a.sparsity.sparsity)?)
    } else {
        None
    };
    let text = if a.chat { user_prompt(&a.prompt) } else { a.prompt.clone() };
    let ids = tok.encode(&text)?;
    let opts = GenerateOptions {
        sparsity,
        audit_every: a.audit_every,
        audit,
        ..GenerateOptions::new(a.max_tokens, sampling, tok.stop_ids().to_vec())
    };
    let mut out = std::io::stdout().lock();
    let mut dec = StreamDecoder::default();
    let mut write_err = None;
    let g = generate(&model, &ids, &opts, |id| {
        let piece = dec.push(&tok, id);
        match out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                write_err = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = write_err {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(e.into());
    }
    writeln!(out, "{}", dec.finish())?;
    if let Some(audit) = &g.audit {
        for r in Reference::ALL {
            let m = audit.overall(r);
            eprintln!(
                "[audit of {} decode steps vs {r:?}: recall {:.3} precision {:.3} F1 {:.3} Jaccard {:.3}]",
                audit.positions,
                m.recall(),
                m.precision(),
                m.f1(),
                m.jaccard()
            );
        }
    }
    if a.stats {
        eprintln!(
            "[{} prompt tokens, {} new, finish {:?}; prefill {:.1} tok/s, decode {:.1} tok/s; peak RSS {:.0} MiB]",
            g.prompt_tokens,
            g.tokens.len(),
            g.finish,
            g.prefill_tok_s(),
            g.decode_tok_s(),
            sieve_eval::bench::peak_rss_mb().unwrap_or(0.0)
        );
        if let (Some(stats), Some(plan)) = (&g.stats, &opts.sparsity) {
            eprintln!(
                "[{} at {}: achieved sparsity {:.3} over the decode steps]",
                plan.method,
                plan.target,
                stats.achieved(plan.method, &model.config().proj_params())
            );
        }
    }
    Ok(())
}
