//! `sieve client`: a gRPC client of a running `sieve serve` — generate (streamed), compare,
//! info, stats and health (the Docker health check uses it).

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sieve_engine::sparsity::Method;
use sieve_proto::v1;
use sieve_proto::v1::sieve_client::SieveClient;
use sieve_server::request::method_to_wire;
use tonic::transport::Channel;

/// Arguments of `sieve client`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051", global = true)]
    addr: String,
    /// Give up after this many seconds (sent to the server as the request's deadline).
    #[arg(long, global = true)]
    timeout_s: Option<f64>,
    /// Print the answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: ClientCommand,
}

/// The client's calls.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Stream a generation.
    Generate(GenerateArgs),
    /// One prompt under two methods (A/B) against dense.
    Compare(CompareArgs),
    /// The server's model, methods, profiles and hardware.
    Info,
    /// Running per-method, per-layer aggregates.
    Stats {
        /// Only this method.
        #[arg(long)]
        method: Option<Method>,
    },
    /// Exit 0 when the server reports SERVING.
    Health,
}

/// Flags of `sieve client generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    prompt: String,
    /// Send the prompt as a user chat message.
    #[arg(long)]
    chat: bool,
    #[arg(long, default_value = "dense")]
    method: Method,
    #[arg(long, default_value_t = 0.0)]
    sparsity: f32,
    /// Most new tokens.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop strings (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Audit every Nth decode step's masks.
    #[arg(long, default_value_t = 0)]
    audit_every: u32,
}

/// Flags of `sieve client compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    prompt: String,
    /// Method A as METHOD:SPARSITY, e.g. cats:0.5.
    #[arg(long)]
    a: String,
    /// Method B as METHOD:SPARSITY.
    #[arg(long)]
    b: String,
    /// Continuation to score (default: dense's own continuation).
    #[arg(long, default_value = "")]
    reference: String,
    /// Most new tokens of each text.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
}

/// Parses `METHOD:SPARSITY` into the wire form.
fn method_at(flag: &str, s: &str) -> Result<v1::Sparsity> {
    let (method, target) = super::parse_method_at(flag, s)?;
    Ok(v1::Sparsity { method: method_to_wire(method) as i32, target })
}

fn request<T>(msg: T, timeout: Option<Duration>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = timeout {
        r.set_timeout(t);
    }
    r
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs `sieve client`.
pub fn run(a: Args) -> Result<()> {
    let timeout = match a.timeout_s {
        Some(s) if !s.is_finite() || s <= 0.0 => bail!("--timeout-s {s} must be above 0"),
        Some(s) => Some(Duration::from_secs_f64(s)),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let endpoint = Channel::from_shared(a.addr.clone()).with_context(|| format!("--addr {}", a.addr))?;
        let channel = endpoint.connect().await.with_context(|| format!("connecting to {}", a.addr))?;
        let mut client = SieveClient::new(channel.clone());
        match a.command {
            ClientCommand::Generate(g) => generate(&mut client, g, timeout, a.json).await,
            ClientCommand::Compare(c) => {
                let req = v1::CompareRequest {
                    input: Some(v1::compare_request::Input::Prompt(c.prompt)),
                    reference: c.reference,
                    a: Some(method_at("--a", &c.a)?),
                    b: Some(method_at("--b", &c.b)?),
                    sampling: None,
                    max_tokens: c.max_tokens,
                };
                let r = client.compare(request(req, timeout)).await?.into_inner();
                if a.json {
                    return print_json(&r);
                }
                println!("scored {} tokens of the {}", r.scored_tokens, r.scored_on);
                println!("| run | perplexity | KL vs dense | top-1 agreement | decode tok/s | achieved sparsity |");
                println!("|---|---|---|---|---|---|");
                for (name, m) in [("dense", &r.dense), ("A", &r.a), ("B", &r.b)] {
                    if let Some(m) = m {
                        println!(
                            "| {name} | {:.3} | {:.4} | {:.3} | {:.1} | {:.3} |",
                            m.perplexity, m.kl_vs_dense, m.top1_agreement, m.decode_tok_s, m.achieved_sparsity
                        );
                    }
                }
                Ok(())
            }
            ClientCommand::Info => {
                let r = client.info(request(v1::InfoRequest {}, timeout)).await?.into_inner();
                if a.json {
                    return print_json(&r);
                }
                if let Some(m) = &r.model {
                    println!(
                        "model    {} ({} layers, d={}, f={}), {}",
                        m.name, m.layers, m.d_model, m.d_ff, m.precision
                    );
                }
                for m in &r.methods {
                    let name = v1::Method::try_from(m.method).map_or("?".into(), |x| x.as_str_name().to_lowercase());
                    println!("method   {name:<32} {}", if m.available { "available".into() } else { m.reason.clone() });
                }
                for p in &r.profiles {
                    println!("profile  {} {} ({}, {} tokens)", p.kind, p.path, p.source, p.tokens);
                }
                if let Some(d) = &r.dense_reference {
                    println!("dense    {:.1} tok/s over {} steps", d.decode_tok_s, d.steps);
                }
                Ok(())
            }
            ClientCommand::Stats { method } => {
                let method = method.map_or(0, |m| method_to_wire(m) as i32);
                let r = client.layer_stats(request(v1::LayerStatsRequest { method }, timeout)).await?.into_inner();
                if a.json {
                    return print_json(&r);
                }
                for m in &r.methods {
                    println!(
                        "{:?}: {} requests, {} tokens, {:.1} tok/s, {} audited",
                        m.sparsity, m.requests, m.completion_tokens, m.decode_tok_s, m.audited_tokens
                    );
                }
                Ok(())
            }
            ClientCommand::Health => {
                use tonic_health::pb::health_client::HealthClient;
                let mut h = HealthClient::new(channel);
                let r = h
                    .check(request(tonic_health::pb::HealthCheckRequest { service: "sieve.v1.Sieve".into() }, timeout))
                    .await?
                    .into_inner();
                let serving = r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
                println!("{}", if serving { "SERVING" } else { "NOT_SERVING" });
                if !serving {
                    bail!("the server is not serving");
                }
                Ok(())
            }
        }
    })
}

async fn generate(
    client: &mut SieveClient<Channel>,
    g: GenerateArgs,
    timeout: Option<Duration>,
    json: bool,
) -> Result<()> {
    let input = if g.chat {
        v1::generate_request::Input::Chat(v1::Chat {
            messages: vec![v1::ChatMessage { role: "user".into(), content: g.prompt }],
        })
    } else {
        v1::generate_request::Input::Prompt(g.prompt)
    };
    let req = v1::GenerateRequest {
        input: Some(input),
        sparsity: Some(v1::Sparsity { method: method_to_wire(g.method) as i32, target: g.sparsity }),
        sampling: Some(v1::Sampling { temperature: g.temperature, top_k: g.top_k, top_p: g.top_p, seed: g.seed }),
        max_tokens: g.max_tokens,
        stop: g.stop,
        audit_every: g.audit_every,
    };
    let mut stream = client.generate(request(req, timeout)).await?.into_inner();
    let (mut text, mut ids, mut summary) = (String::new(), Vec::new(), None);
    let mut out = std::io::stdout().lock();
    while let Some(msg) = stream.message().await? {
        if !json {
            out.write_all(msg.text.as_bytes())?;
            out.flush()?;
        }
        text.push_str(&msg.text);
        ids.extend_from_slice(&msg.token_ids);
        if msg.summary.is_some() {
            summary = msg.summary;
        }
    }
    if json {
        return print_json(&serde_json::json!({ "text": text, "token_ids": ids, "summary": summary }));
    }
    writeln!(out)?;
    if let Some(s) = summary {
        let reason = v1::FinishReason::try_from(s.finish_reason).map_or("?", |r| r.as_str_name());
        let (t, u) = (s.timing.unwrap_or_default(), s.usage.unwrap_or_default());
        eprintln!(
            "[{reason}; {} prompt + {} new tokens; prefill {:.1} ms; decode {:.1} tok/s = {:.2}x the dense reference; achieved sparsity {:.3}]",
            u.prompt_tokens, u.completion_tokens, t.prefill_ms, t.decode_tok_s, t.speedup, s.achieved_sparsity
        );
    }
    Ok(())
}
