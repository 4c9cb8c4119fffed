//! `sieve loadtest`: N concurrent streaming clients against a `sieve serve` on the loopback
//! interface for a bounded time. Reports time to first token and inter-token latency (p50,
//! p99), total and per-stream tok/s as the clients saw them, requests by final status, and
//! any accepted stream that ended with neither a final message nor an error ("lost").

use std::collections::BTreeMap;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use sieve_engine::sparsity::Method;
use sieve_proto::v1;
use sieve_proto::v1::sieve_client::SieveClient;
use sieve_server::request::method_to_wire;
use tonic::transport::Channel;

/// Arguments of `sieve loadtest`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server address (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Concurrent clients (1-1024).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds to run (1-3600); requests in flight at the end are finished, not cut.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// New tokens per request.
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
    #[arg(long, default_value = "dense")]
    method: Method,
    #[arg(long, default_value_t = 0.0)]
    sparsity: f32,
    /// Sampling temperature of every request (top-k 40, a seed per request); 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    ttft_ms: Vec<f64>,
    itl_ms: Vec<f64>,
    stream_tok_s: Vec<f64>,
    tokens: u64,
    statuses: BTreeMap<String, u64>,
    lost: u64,
}

#[derive(Serialize)]
struct Report {
    clients: usize,
    seconds: f64,
    requests: u64,
    completed: u64,
    lost: u64,
    by_status: BTreeMap<String, u64>,
    tokens: u64,
    total_tok_s: f64,
    ttft_ms_p50: f64,
    ttft_ms_p99: f64,
    itl_ms_p50: f64,
    itl_ms_p99: f64,
    stream_tok_s_p50: f64,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// First and longest wait after RESOURCE_EXHAUSTED.
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

const PROMPTS: [&str; 4] = [
    "The history of the Roman empire",
    "Once upon a time, in a small village,",
    "The main ideas of thermodynamics are",
    "A good recipe for bread needs",
];

/// What every client request asks for.
#[derive(Clone, Copy)]
struct Load {
    temperature: f32,
    method: Method,
    sparsity: f32,
    max_tokens: u32,
}

async fn client_loop(mut client: SieveClient<Channel>, id: usize, until: Instant, a: Load) -> ClientLog {
    let mut log = ClientLog::default();
    let mut n = id;
    let mut backoff = BACKOFF_START;
    while Instant::now() < until {
        n += 1;
        let req = v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Prompt(PROMPTS[n % PROMPTS.len()].into())),
            sparsity: Some(v1::Sparsity { method: method_to_wire(a.method) as i32, target: a.sparsity }),
            sampling: Some(v1::Sampling { temperature: a.temperature, top_k: 40, top_p: None, seed: n as u64 }),
            max_tokens: a.max_tokens,
            ..Default::default()
        };
        let t0 = Instant::now();
        let mut stream = match client.generate(req).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                *log.statuses.entry(format!("{:?}", e.code())).or_default() += 1;
                if e.code() == tonic::Code::ResourceExhausted {
                    // The queue is full: back off exponentially, with jitter, as a polite
                    // client does (a tight retry loop would load the server it measures).
                    let jitter = Duration::from_micros((n as u64 * 7919) % 1000 * backoff.as_micros() as u64 / 2000);
                    tokio::time::sleep(backoff + jitter).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                continue;
            }
        };
        backoff = BACKOFF_START;
        let (mut first, mut last, mut tokens, mut finished) = (None::<Instant>, t0, 0u64, false);
        let outcome = loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    let now = Instant::now();
                    if !m.token_ids.is_empty() {
                        match first {
                            None => {
                                log.ttft_ms.push((now - t0).as_secs_f64() * 1e3);
                                first = Some(now);
                            }
                            Some(_) => log.itl_ms.push((now - last).as_secs_f64() * 1e3),
                        }
                        last = now;
                        tokens += m.token_ids.len() as u64;
                    }
                    finished |= m.summary.is_some();
                }
                Ok(None) => break if finished { "Ok".to_string() } else { "lost".to_string() },
                Err(e) => break format!("{:?}", e.code()),
            }
        };
        if outcome == "lost" {
            log.lost += 1;
        }
        if let Some(f) = first.filter(|_| tokens > 1) {
            log.stream_tok_s.push((tokens - 1) as f64 / (last - f).as_secs_f64().max(1e-9));
        }
        log.tokens += tokens;
        *log.statuses.entry(outcome).or_default() += 1;
    }
    log
}

/// Runs `sieve loadtest`.
pub fn run(a: Args) -> Result<()> {
    if a.clients == 0 || a.clients > 1024 {
        bail!("--clients {} must be between 1 and 1024", a.clients);
    }
    if !a.duration.is_finite() || !(1.0..=3600.0).contains(&a.duration) {
        bail!("--duration {} must be between 1 and 3600 seconds", a.duration);
    }
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let hostport =
        a.addr.strip_prefix("http://").with_context(|| format!("--addr {} must start with http://", a.addr))?;
    let resolved: Vec<_> =
        hostport.to_socket_addrs().with_context(|| format!("resolving --addr {}", a.addr))?.collect();
    if resolved.is_empty() || !resolved.iter().all(|s| s.ip().is_loopback()) {
        bail!("--addr {} is not a loopback address: the load test only targets this machine", a.addr);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let report = runtime.block_on(async {
        let channel = Channel::from_shared(a.addr.clone())?
            .connect()
            .await
            .with_context(|| format!("connecting to {}", a.addr))?;
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(a.duration);
        let bar = super::progress(a.duration as u64, "load test");
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                while Instant::now() < until {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    bar.inc(1);
                }
            })
        };
        let load =
            Load { temperature: a.temperature, method: a.method, sparsity: a.sparsity, max_tokens: a.max_tokens };
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..a.clients {
            tasks.spawn(client_loop(SieveClient::new(channel.clone()), i, until, load));
        }
        let mut logs = Vec::with_capacity(a.clients);
        while let Some(log) = tasks.join_next().await {
            logs.push(log.context("a client task failed")?);
        }
        ticker.abort();
        bar.finish_and_clear();
        let seconds = start.elapsed().as_secs_f64();
        let mut all = ClientLog::default();
        for l in logs {
            all.ttft_ms.extend(l.ttft_ms);
            all.itl_ms.extend(l.itl_ms);
            all.stream_tok_s.extend(l.stream_tok_s);
            all.tokens += l.tokens;
            all.lost += l.lost;
            for (k, v) in l.statuses {
                *all.statuses.entry(k).or_default() += v;
            }
        }
        let requests = all.statuses.values().sum();
        anyhow::Ok(Report {
            clients: a.clients,
            seconds,
            requests,
            completed: all.statuses.get("Ok").copied().unwrap_or(0),
            lost: all.lost,
            tokens: all.tokens,
            total_tok_s: all.tokens as f64 / seconds,
            ttft_ms_p50: percentile(&mut all.ttft_ms, 0.5),
            ttft_ms_p99: percentile(&mut all.ttft_ms, 0.99),
            itl_ms_p50: percentile(&mut all.itl_ms, 0.5),
            itl_ms_p99: percentile(&mut all.itl_ms, 0.99),
            stream_tok_s_p50: percentile(&mut all.stream_tok_s, 0.5),
            by_status: all.statuses,
        })
    })?;
    if a.json {
        return super::print_json(&report);
    }
    println!(
        "{} clients, {:.1} s: {} requests, {} completed, {} lost; {} tokens, {:.1} tok/s in total",
        report.clients,
        report.seconds,
        report.requests,
        report.completed,
        report.lost,
        report.tokens,
        report.total_tok_s
    );
    println!(
        "time to first token p50 {:.1} ms, p99 {:.1} ms; inter-token p50 {:.1} ms, p99 {:.1} ms; per-stream p50 {:.1} tok/s",
        report.ttft_ms_p50, report.ttft_ms_p99, report.itl_ms_p50, report.itl_ms_p99, report.stream_tok_s_p50
    );
    println!("by status: {:?}", report.by_status);
    Ok(())
}
