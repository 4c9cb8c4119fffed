//! Checking and converting requests: every field from the wire is validated here, and a bad
//! one becomes INVALID_ARGUMENT naming it (FAILED_PRECONDITION when the server lacks what a
//! method needs).

use sieve_engine::audit::MaskAudit;
use sieve_engine::chat::{ChatMessage, chat_prompt};
use sieve_engine::generate::GenerateOptions;
use sieve_engine::sampling::SamplingParams;
use sieve_engine::sparsity::Method;
use sieve_proto::v1;
use tonic::Status;

use crate::assets::Assets;

/// Most stop strings per request.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, bytes.
pub const MAX_STOP_BYTES: usize = 256;

fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

/// The engine's method for a wire enum value.
pub fn method_from_wire(field: &str, value: i32) -> Result<Method, Status> {
    let m = v1::Method::try_from(value).map_err(|_| invalid(field, format!("unknown method value {value}")))?;
    Ok(match m {
        v1::Method::Unspecified | v1::Method::Dense => Method::Dense,
        v1::Method::Teal => Method::Teal,
        v1::Method::TealUniform => Method::TealUniform,
        v1::Method::Cats => Method::Cats,
        v1::Method::Cett => Method::Cett,
        v1::Method::Predictor => Method::Predictor,
        v1::Method::PredictorVerify => Method::PredictorVerify,
    })
}

/// The wire enum value of a method.
pub fn method_to_wire(m: Method) -> v1::Method {
    match m {
        Method::Dense => v1::Method::Dense,
        Method::Teal => v1::Method::Teal,
        Method::TealUniform => v1::Method::TealUniform,
        Method::Cats => v1::Method::Cats,
        Method::Cett => v1::Method::Cett,
        Method::Predictor => v1::Method::Predictor,
        Method::PredictorVerify => v1::Method::PredictorVerify,
    }
}

/// A validated method and target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MethodAt {
    pub method: Method,
    pub target: f32,
}

impl MethodAt {
    /// Dense.
    pub const DENSE: MethodAt = MethodAt { method: Method::Dense, target: 0.0 };

    /// The wire form.
    pub fn to_wire(self) -> v1::Sparsity {
        v1::Sparsity { method: method_to_wire(self.method) as i32, target: self.target }
    }

    /// A key for aggregates and metrics labels, e.g. `cats@0.50`.
    pub fn label(self) -> String {
        if self.method == Method::Dense { "dense".into() } else { format!("{}@{:.2}", self.method, self.target) }
    }
}

/// Checks `field` (a `Sparsity` message, unset = dense) against what this server can run.
pub fn sparsity(field: &str, s: Option<&v1::Sparsity>, assets: &Assets) -> Result<MethodAt, Status> {
    let Some(s) = s else { return Ok(MethodAt::DENSE) };
    let method = method_from_wire(&format!("{field}.method"), s.method)?;
    let target = s.target;
    if !(0.0..1.0).contains(&target) {
        return Err(invalid(&format!("{field}.target"), format!("{target} must be in [0, 1)")));
    }
    if method == Method::Dense && target != 0.0 {
        return Err(invalid(&format!("{field}.target"), format!("{target} must be 0 for dense (choose a method)")));
    }
    if let Some(why) = assets.unavailable(method) {
        return Err(Status::failed_precondition(format!("{field}.method: {why}")));
    }
    Ok(MethodAt { method, target })
}

/// Checks the sampling fields.
pub fn sampling(s: Option<&v1::Sampling>) -> Result<SamplingParams, Status> {
    let Some(s) = s else { return Ok(SamplingParams::default()) };
    let p = SamplingParams {
        temperature: s.temperature,
        top_k: s.top_k as usize,
        top_p: s.top_p.unwrap_or(1.0),
        seed: s.seed,
    };
    if !p.temperature.is_finite() || !(0.0..=100.0).contains(&p.temperature) {
        return Err(invalid("sampling.temperature", format!("{} must be in [0, 100]", s.temperature)));
    }
    if !p.top_p.is_finite() || p.top_p <= 0.0 || p.top_p > 1.0 {
        return Err(invalid("sampling.top_p", format!("{} must be in (0, 1]", p.top_p)));
    }
    Ok(p)
}

/// The prompt text (raw, or chat messages rendered with the template) and the name of the
/// field it came from.
fn prompt_text(prompt: Option<&str>, chat: Option<&v1::Chat>) -> Result<(String, &'static str), Status> {
    let field = if chat.is_some() { "chat" } else { "prompt" };
    prompt_or_chat(prompt, chat).map(|text| (text, field))
}

fn prompt_or_chat(prompt: Option<&str>, chat: Option<&v1::Chat>) -> Result<String, Status> {
    match (prompt, chat) {
        (Some(""), _) => Err(invalid("prompt", "is empty")),
        (Some(p), _) => Ok(p.to_string()),
        (None, Some(c)) => {
            if c.messages.is_empty() {
                return Err(invalid("chat.messages", "is empty"));
            }
            let mut messages = Vec::with_capacity(c.messages.len());
            for (i, m) in c.messages.iter().enumerate() {
                if !sieve_engine::chat::ROLES.contains(&m.role.as_str()) {
                    return Err(invalid(
                        &format!("chat.messages[{i}].role"),
                        format!("'{}' is not one of system, user, assistant", m.role),
                    ));
                }
                messages.push(ChatMessage::new(m.role.clone(), m.content.clone()));
            }
            chat_prompt(&messages).map_err(|e| invalid("chat.messages", e))
        }
        (None, None) => Err(invalid("input", "set prompt or chat")),
    }
}

/// Tokenizes `text` and checks it leaves room in the context.
fn prompt_ids(field: &str, text: &str, assets: &Assets) -> Result<Vec<u32>, Status> {
    let ids = assets.tokenizer.encode(text).map_err(|e| invalid(field, e))?;
    let ctx = assets.config.context_len;
    if ids.is_empty() {
        return Err(invalid(field, "has no tokens"));
    }
    if ids.len() >= ctx {
        return Err(invalid(field, format!("{} tokens leave no room in the model's context of {ctx}", ids.len())));
    }
    Ok(ids)
}

fn max_tokens(asked: u32, limit: usize) -> Result<usize, Status> {
    match asked as usize {
        0 => Err(invalid("max_tokens", "must be at least 1")),
        n if n > limit => Err(invalid("max_tokens", format!("{n} exceeds this server's limit of {limit}"))),
        n => Ok(n),
    }
}

/// A validated generation request.
pub struct GenerateSpec {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
    pub stops: Vec<String>,
    pub method: MethodAt,
}

/// Validates a `GenerateRequest`.
pub fn generate(req: &v1::GenerateRequest, assets: &Assets, limit: usize) -> Result<GenerateSpec, Status> {
    use v1::generate_request::Input;
    let (prompt, chat) = match &req.input {
        Some(Input::Prompt(p)) => (Some(p.as_str()), None),
        Some(Input::Chat(c)) => (None, Some(c)),
        None => (None, None),
    };
    let (text, field) = prompt_text(prompt, chat)?;
    let method = sparsity("sparsity", req.sparsity.as_ref(), assets)?;
    let sampling = sampling(req.sampling.as_ref())?;
    let max_tokens = max_tokens(req.max_tokens, limit)?;
    if req.stop.len() > MAX_STOP_STRINGS {
        return Err(invalid("stop", format!("{} strings, at most {MAX_STOP_STRINGS}", req.stop.len())));
    }
    for (i, s) in req.stop.iter().enumerate() {
        if s.is_empty() || s.len() > MAX_STOP_BYTES {
            return Err(invalid(&format!("stop[{i}]"), format!("must be 1 to {MAX_STOP_BYTES} bytes")));
        }
    }
    let audit_every = req.audit_every as usize;
    let audit = if audit_every > 0 {
        if method.method == Method::Dense || method.target == 0.0 {
            return Err(invalid("audit_every", "needs a sparse method with a target above 0"));
        }
        let profile =
            assets.profile().ok_or_else(|| Status::failed_precondition("audit_every: no calibration profile"))?;
        Some(MaskAudit::new(profile, method.target).map_err(|e| invalid("audit_every", e))?)
    } else {
        None
    };
    let plan = assets.plan(method.method, method.target).map_err(Status::failed_precondition)?;
    let prompt = prompt_ids(field, &text, assets)?;
    let options = GenerateOptions {
        sparsity: plan,
        audit_every,
        audit,
        ..GenerateOptions::new(max_tokens, sampling, assets.tokenizer.stop_ids().to_vec())
    };
    Ok(GenerateSpec { prompt, options, stops: req.stop.clone(), method })
}

/// A validated comparison request.
pub struct CompareSpec {
    pub prompt: Vec<u32>,
    pub reference: Vec<u32>,
    pub a: MethodAt,
    pub b: MethodAt,
    pub sampling: SamplingParams,
    pub max_tokens: usize,
}

/// Validates a `CompareRequest`.
pub fn compare(req: &v1::CompareRequest, assets: &Assets, limit: usize) -> Result<CompareSpec, Status> {
    use v1::compare_request::Input;
    let (prompt, chat) = match &req.input {
        Some(Input::Prompt(p)) => (Some(p.as_str()), None),
        Some(Input::Chat(c)) => (None, Some(c)),
        None => (None, None),
    };
    let (text, field) = prompt_text(prompt, chat)?;
    let Some(a) = req.a.as_ref() else { return Err(invalid("a", "is unset (give a method and target)")) };
    let Some(b) = req.b.as_ref() else { return Err(invalid("b", "is unset (give a method and target)")) };
    let (a, b) = (sparsity("a", Some(a), assets)?, sparsity("b", Some(b), assets)?);
    let sampling = sampling(req.sampling.as_ref())?;
    let max_tokens = max_tokens(req.max_tokens, limit)?;
    let prompt = prompt_ids(field, &text, assets)?;
    let reference = if req.reference.is_empty() {
        Vec::new()
    } else {
        // encode adds no BOS, so the ids continue the prompt's.
        let ids = assets.tokenizer.encode(&req.reference).map_err(|e| invalid("reference", e))?;
        if ids.is_empty() {
            return Err(invalid("reference", "has no tokens"));
        }
        ids
    };
    let ctx = assets.config.context_len;
    let needed = prompt.len() + reference.len().max(max_tokens);
    if needed > ctx {
        return Err(invalid(field, format!("prompt and continuation need {needed} tokens, the context is {ctx}")));
    }
    Ok(CompareSpec { prompt, reference, a, b, sampling, max_tokens })
}
