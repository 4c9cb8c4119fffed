//! `sieve serve` end to end: the real binary on an ephemeral 127.0.0.1 port, called through
//! the generated gRPC client — streamed generation equal to `sieve generate`, per-layer
//! reports, stop strings, Compare, Info, LayerStats, health, reflection and metrics; every
//! invalid field refused with INVALID_ARGUMENT naming it; a full queue, a cancelled stream,
//! a deadline, fair progress of concurrent streams and a graceful SIGTERM.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sieve_proto::v1;
use sieve_proto::v1::sieve_client::SieveClient;
use tonic::Code;
use tonic::transport::Channel;

/// A running `sieve serve`, killed when dropped.
struct ServerProcess {
    child: Child,
    addr: String,
    metrics: Option<String>,
}

impl ServerProcess {
    fn start(profile: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(sieve_bin())
            .arg("--model")
            .arg(model_path())
            .args(["serve", "--addr", "127.0.0.1:0", "--profile"])
            .arg(profile)
            .args(["--predictors", "/nonexistent-predictors"])
            .args(extra)
            .env_remove("SIEVE_MODEL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sieve serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut addr = None;
        let mut metrics = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(a) = line.strip_prefix("sieve listening on ") {
                addr = Some(format!("http://{a}"));
            }
            if let Some(m) = line.strip_prefix("metrics on ") {
                metrics = Some(m.to_string());
            }
            if addr.is_some() && (metrics.is_some() || !extra.contains(&"--metrics-addr")) {
                break;
            }
        }
        let Some(addr) = addr else {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("the server did not start: {err}");
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr, metrics }
    }

    async fn client(&self) -> SieveClient<Channel> {
        SieveClient::connect(self.addr.clone()).await.expect("connect")
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.addr.clone()).unwrap().connect().await.unwrap()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sparsity(method: v1::Method, target: f32) -> Option<v1::Sparsity> {
    Some(v1::Sparsity { method: method as i32, target })
}

fn prompt_request(prompt: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Prompt(prompt.into())),
        max_tokens,
        ..Default::default()
    }
}

/// Streams a generation to the end: (text, ids, messages, summary).
async fn collect(
    client: &mut SieveClient<Channel>,
    req: v1::GenerateRequest,
) -> Result<(String, Vec<u32>, usize, v1::GenerationSummary), tonic::Status> {
    let mut stream = client.generate(req).await?.into_inner();
    let (mut text, mut ids, mut messages, mut summary) = (String::new(), Vec::new(), 0, None);
    while let Some(m) = stream.message().await? {
        text.push_str(&m.text);
        ids.extend(m.token_ids);
        messages += 1;
        if m.summary.is_some() {
            assert!(summary.is_none(), "two summaries");
            summary = m.summary;
        }
    }
    Ok((text, ids, messages, summary.expect("the last message carries the summary")))
}

const PROMPT: &str = "The history of the Roman empire";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_what_generate_prints_and_reports_every_layer() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path());
    let server = ServerProcess::start(&profile, &["--metrics-addr", "127.0.0.1:0", "--max-queue", "2"]);
    let mut client = server.client().await;

    // Sampled CATS generation: the stream equals the CLI's text for the same seed and method.
    let mut req = prompt_request(PROMPT, 24);
    req.sparsity = sparsity(v1::Method::Cats, 0.5);
    req.sampling = Some(v1::Sampling { temperature: 0.8, top_k: 40, top_p: Some(0.95), seed: 7 });
    req.audit_every = 3;
    let (text, ids, messages, summary) = collect(&mut client, req).await.unwrap();
    let cli = sieve(&[
        "generate",
        PROMPT,
        "--max-tokens",
        "24",
        "--method",
        "cats",
        "--sparsity",
        "0.5",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--seed",
        "7",
        "--audit-every",
        "3",
        "--profile",
        profile.to_str().unwrap(),
    ]);
    assert!(cli.status.success(), "{}", stderr(&cli));
    assert_eq!(text, stdout(&cli).strip_suffix('\n').unwrap());
    assert_eq!(ids.len(), 24);
    assert!(messages > 10, "tokens were not streamed: {messages} messages");
    assert_eq!(summary.finish_reason, v1::FinishReason::Length as i32);
    assert_eq!(summary.usage.unwrap().completion_tokens, 24);
    let timing = summary.timing.unwrap();
    assert!(timing.prefill_ms > 0.0 && timing.decode_tok_s > 0.0 && timing.dense_decode_tok_s > 0.0);
    assert!((timing.speedup - timing.decode_tok_s / timing.dense_decode_tok_s).abs() < 1e-9);
    assert!(summary.achieved_sparsity > 0.3 && summary.achieved_sparsity < 0.7, "{}", summary.achieved_sparsity);
    assert_eq!(summary.layers.len(), 30);
    assert!(summary.audited_tokens >= 6, "{}", summary.audited_tokens);
    for l in &summary.layers {
        // CATS's mask is the CATS reference at the same target, by construction (up to a
        // neuron exactly at the threshold).
        let cats = l.vs_cats.unwrap();
        assert!(cats.recall > 0.999 && cats.precision > 0.999, "{l:?}");
        assert!(l.vs_teal.unwrap().recall < 1.0 && l.vs_cett.is_some());
        assert!(l.up_sparsity > 0.2 && l.q_sparsity == 0.0, "{l:?}");
        assert!(l.mlp_us > 0.0 && l.dense_mlp_us > 0.0 && l.attention_us > 0.0);
        assert!((l.mlp_speedup - l.dense_mlp_us / l.mlp_us).abs() < 1e-9);
    }

    // A stop string cuts the text before it, and is not returned.
    let (full, ..) = collect(&mut client, prompt_request(PROMPT, 32)).await.unwrap();
    let cut = full.len() / 2;
    let stop: String = full[cut..].chars().take(6).collect();
    let mut req = prompt_request(PROMPT, 32);
    req.stop = vec![stop.clone()];
    let (text, _, _, summary) = collect(&mut client, req).await.unwrap();
    assert_eq!(text, full[..full.find(&stop).unwrap()]);
    assert_eq!(summary.finish_reason, v1::FinishReason::StopString as i32);

    // Chat input works and ends at the end of the assistant's turn or the budget.
    let chat = v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Chat(v1::Chat {
            messages: vec![v1::ChatMessage { role: "user".into(), content: "Say hello.".into() }],
        })),
        max_tokens: 16,
        ..Default::default()
    };
    let (text, ..) = collect(&mut client, chat).await.unwrap();
    assert!(!text.contains("<|im_end|>") && !text.is_empty(), "{text:?}");

    // Compare: dense is its own reference; the methods differ from it.
    let cmp = client
        .compare(v1::CompareRequest {
            input: Some(v1::compare_request::Input::Prompt(PROMPT.into())),
            reference: " was long and full of wars, emperors and roads that crossed the known world.".into(),
            a: sparsity(v1::Method::Cats, 0.5),
            b: sparsity(v1::Method::Teal, 0.5),
            sampling: None,
            max_tokens: 12,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cmp.scored_on, "reference");
    assert!(cmp.scored_tokens > 10);
    let dense = cmp.dense.unwrap();
    assert!(dense.kl_vs_dense < 1e-9 && (dense.top1_agreement - 1.0).abs() < 1e-9);
    for m in [cmp.a.unwrap(), cmp.b.unwrap()] {
        assert!(m.kl_vs_dense > 0.0 && m.perplexity.is_finite() && m.perplexity > 1.0, "{m:?}");
        assert!(m.achieved_sparsity > 0.2 && m.decode_tok_s > 0.0 && !m.text.is_empty(), "{m:?}");
    }

    // Info names what is missing; LayerStats has aggregated the CATS request.
    let info = client.info(v1::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.model.unwrap().layers, 30);
    let pred = info.methods.iter().find(|m| m.method == v1::Method::Predictor as i32).unwrap();
    assert!(!pred.available && pred.reason.contains("sieve train-predictors"), "{pred:?}");
    assert!(info.methods.iter().find(|m| m.method == v1::Method::Cats as i32).unwrap().available);
    let stats =
        client.layer_stats(v1::LayerStatsRequest { method: v1::Method::Cats as i32 }).await.unwrap().into_inner();
    assert_eq!(stats.methods.len(), 1);
    let cats = &stats.methods[0];
    assert_eq!((cats.requests, cats.completion_tokens), (1, 24));
    assert!(cats.layers.iter().all(|l| l.mlp_sparsity > 0.2 && l.vs_cats.is_some()));

    // Health, reflection and metrics.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    for service in ["", "sieve.v1.Sieve"] {
        let r = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(r.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }
    let services = reflected_services(server.channel().await).await;
    for s in ["sieve.v1.Sieve", "grpc.health.v1.Health"] {
        assert!(services.contains(&s.to_string()), "reflection lacks {s}: {services:?}");
    }
    let metrics = http_get(server.metrics.as_ref().unwrap());
    for needle in [
        "process_resident_memory_bytes",
        "sieve_requests_total{rpc=\"Generate\",code=\"Ok\"} 4",
        "sieve_requests_total{rpc=\"Compare\",code=\"Ok\"} 1",
        "sieve_generated_tokens_total{method=\"cats@0.50\"} 24",
        "sieve_queue_depth 0",
        "sieve_mask_recall{method=\"cats@0.50\",reference=\"cats\"} ",
        "sieve_decode_tok_s{method=\"dense\"}",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle}: {metrics}");
    }
    loadtest(&server);
}

/// `sieve loadtest` against this server: a few clients over a queue of two, nothing lost, no
/// status but OK and the deliberate RESOURCE_EXHAUSTED.
fn loadtest(server: &ServerProcess) {
    let o = std::process::Command::new(sieve_bin())
        .args(["loadtest", "--addr", &server.addr, "--clients", "4", "--duration", "2", "--max-tokens", "8", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["completed"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["lost"].as_u64(), Some(0), "{v}");
    let statuses = v["by_status"].as_object().unwrap();
    assert!(statuses.keys().all(|k| k == "Ok" || k == "ResourceExhausted"), "{v}");
    assert!(v["ttft_ms_p50"].as_f64().unwrap() > 0.0 && v["itl_ms_p99"].as_f64().unwrap() > 0.0, "{v}");
    for (args, needle) in [
        (vec!["--addr", "http://10.1.2.3:50051"], "not a loopback"),
        (vec!["--clients", "0"], "--clients"),
        (vec!["--duration", "0"], "--duration"),
        (vec!["--max-tokens", "0"], "--max-tokens"),
    ] {
        let o = std::process::Command::new(sieve_bin()).arg("loadtest").args(&args).output().unwrap();
        assert_fails_with(&o, needle);
    }
}

async fn reflected_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let mut names = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        if let Some(MessageResponse::ListServicesResponse(l)) = r.message_response {
            names.extend(l.service.into_iter().map(|s| s.name));
        }
    }
    names
}

/// A plain HTTP GET of a `http://host:port/path` URL.
fn http_get(url: &str) -> String {
    use std::io::Write;
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

async fn expect_code(client: &mut SieveClient<Channel>, req: v1::GenerateRequest, code: Code, field: &str) {
    let err = collect(client, req).await.expect_err("expected a refusal");
    assert_eq!(err.code(), code, "{field}: {err:?}");
    assert!(err.message().starts_with(field), "message does not name {field}: {}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_field_is_refused_by_name() {
    // No profile: the training-free methods are unavailable, and say how to make one.
    let server = ServerProcess::start(Path::new("/nonexistent/profile.json"), &["--max-tokens-limit", "64"]);
    let mut client = server.client().await;
    let ok = || prompt_request(PROMPT, 4);
    let with = |f: &dyn Fn(&mut v1::GenerateRequest)| {
        let mut r = ok();
        f(&mut r);
        r
    };
    let invalid = Code::InvalidArgument;
    let cases: Vec<(v1::GenerateRequest, Code, &str)> = vec![
        (with(&|r| r.input = None), invalid, "input"),
        (with(&|r| r.input = Some(v1::generate_request::Input::Prompt(String::new()))), invalid, "prompt"),
        (with(&|r| r.input = Some(v1::generate_request::Input::Chat(v1::Chat::default()))), invalid, "chat.messages"),
        (
            with(&|r| {
                r.input = Some(v1::generate_request::Input::Chat(v1::Chat {
                    messages: vec![v1::ChatMessage { role: "robot".into(), content: "hi".into() }],
                }))
            }),
            invalid,
            "chat.messages[0].role",
        ),
        (with(&|r| r.sparsity = Some(v1::Sparsity { method: 99, target: 0.5 })), invalid, "sparsity.method"),
        (with(&|r| r.sparsity = sparsity(v1::Method::Cats, 1.0)), invalid, "sparsity.target"),
        (with(&|r| r.sparsity = sparsity(v1::Method::Cats, f32::NAN)), invalid, "sparsity.target"),
        (with(&|r| r.sparsity = sparsity(v1::Method::Dense, 0.5)), invalid, "sparsity.target"),
        (with(&|r| r.sparsity = sparsity(v1::Method::Predictor, 0.5)), Code::FailedPrecondition, "sparsity.method"),
        (
            with(&|r| r.sampling = Some(v1::Sampling { temperature: -1.0, ..Default::default() })),
            invalid,
            "sampling.temperature",
        ),
        (
            with(&|r| r.sampling = Some(v1::Sampling { top_p: Some(0.0), ..Default::default() })),
            invalid,
            "sampling.top_p",
        ),
        (with(&|r| r.max_tokens = 65), invalid, "max_tokens"),
        (with(&|r| r.max_tokens = 0), invalid, "max_tokens"),
        (with(&|r| r.sparsity = sparsity(v1::Method::Cats, 0.5)), Code::FailedPrecondition, "sparsity.method"),
        (with(&|r| r.stop = vec![String::new()]), invalid, "stop[0]"),
        (with(&|r| r.stop = vec!["x".into(); 17]), invalid, "stop"),
        (with(&|r| r.audit_every = 2), invalid, "audit_every"),
    ];
    for (req, code, field) in cases {
        expect_code(&mut client, req, code, field).await;
    }
    let err = collect(&mut client, with(&|r| r.sparsity = sparsity(v1::Method::Cats, 0.5))).await.unwrap_err();
    assert!(err.message().contains("sieve calibrate"), "{}", err.message());
    let err = collect(&mut client, with(&|r| r.sparsity = sparsity(v1::Method::Predictor, 0.5))).await.unwrap_err();
    assert!(
        err.message().contains("sieve calibrate") || err.message().contains("sieve train-predictors"),
        "{}",
        err.message()
    );
    let long = "word ".repeat(9000);
    expect_code(&mut client, prompt_request(&long, 4), invalid, "prompt").await;
    let bad_cmp = v1::CompareRequest {
        input: Some(v1::compare_request::Input::Prompt(PROMPT.into())),
        a: sparsity(v1::Method::Dense, 0.0),
        max_tokens: 4,
        ..Default::default()
    };
    let err = client.compare(bad_cmp).await.unwrap_err();
    assert_eq!(err.code(), invalid);
    assert!(err.message().starts_with("b:"), "{}", err.message());
    let err = client.layer_stats(v1::LayerStatsRequest { method: 42 }).await.unwrap_err();
    assert_eq!(err.code(), invalid);
    // After all that the server still serves.
    let (_, ids, ..) = collect(&mut client, ok()).await.unwrap();
    assert_eq!(ids.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_cancellation_deadline_fairness_and_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_profile(dir.path());
    let mut server =
        ServerProcess::start(&profile, &["--max-queue", "2", "--max-tokens-limit", "400", "--grace-s", "30"]);
    let mut client = server.client().await;

    // Two long streams progress in turn: both have tokens before either is done.
    let mut a = client.generate(prompt_request(PROMPT, 400)).await.unwrap().into_inner();
    let mut b = client.generate(prompt_request("Once upon a time", 400)).await.unwrap().into_inner();
    let first_a = a.message().await.unwrap().unwrap();
    let first_b = b.message().await.unwrap().unwrap();
    assert!(first_a.summary.is_none() && first_b.summary.is_none());
    for _ in 0..5 {
        assert!(a.message().await.unwrap().unwrap().summary.is_none());
        assert!(b.message().await.unwrap().unwrap().summary.is_none());
    }

    // The queue holds two: a third request is refused.
    let err = collect(&mut client, prompt_request(PROMPT, 4)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Dropping a stream frees its slot at the engine's next step.
    drop(a);
    let t0 = Instant::now();
    loop {
        match collect(&mut client, prompt_request(PROMPT, 4)).await {
            Ok((_, ids, ..)) => {
                assert_eq!(ids.len(), 4);
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted && t0.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the cancelled stream did not free its slot: {e:?}"),
        }
    }

    // A deadline ends a generation that cannot finish in time.
    let mut req = tonic::Request::new(prompt_request(PROMPT, 400));
    req.set_timeout(Duration::from_millis(300));
    let outcome = async {
        let mut s = client.generate(req).await?.into_inner();
        while s.message().await?.is_some() {}
        Ok::<(), tonic::Status>(())
    }
    .await;
    assert_eq!(outcome.unwrap_err().code(), Code::DeadlineExceeded);

    // SIGTERM: the running stream still finishes (within the grace period), then the process exits 0.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut tokens = 1 + 5;
    let mut finished = false;
    while let Some(m) = b.message().await.unwrap() {
        tokens += m.token_ids.len();
        finished |= m.summary.is_some();
    }
    assert!(finished && tokens > 6, "the stream was cut: {tokens} tokens");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
