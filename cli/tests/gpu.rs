//! The GPU path from the command line. Without a GPU (CI) these check the refusals: a build
//! without the `cuda` feature says how to get it, a build with it says there is no driver or
//! GPU, bad shapes and methods are refused before any GPU work, and the CPU keeps working.
//! With a GPU (scripts/gpu-check.sh's machine) the same tests decode on it and check the logits
//! against the CPU f32 path.

mod common;

use common::*;

/// What `--device cuda` must say on this build and machine when no GPU can run it.
fn gpu_refusal(err: &str) -> bool {
    if cfg!(feature = "cuda") {
        err.contains("no CUDA driver") || err.contains("no CUDA GPU") || err.contains("could not be loaded")
    } else {
        err.contains("--features cuda")
    }
}

#[test]
fn bench_decode_on_cuda_runs_or_refuses_clearly_and_the_cpu_still_works() {
    let o = sieve(&[
        "bench",
        "decode",
        "--device",
        "cuda",
        "--prompt-tokens",
        "16",
        "--new-tokens",
        "16",
        "--runs",
        "1",
        "--json",
    ]);
    if o.status.success() {
        let r: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("JSON");
        let c = &r["dense_check"];
        assert!(c["min_cosine"].as_f64().unwrap() > 0.999, "{c}");
        assert!(c["top1_agreement"].as_f64().unwrap() > 0.9, "{c}");
        assert!(r["dense_tok_s"].as_f64().unwrap() > 0.0);
    } else {
        let err = stderr(&o);
        assert!(gpu_refusal(&err), "unclear refusal: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let cpu = sieve(&["generate", "--max-tokens", "4", "The capital of France is"]);
    assert!(cpu.status.success(), "CPU generation after the GPU attempt: {}", stderr(&cpu));
    assert!(!stdout(&cpu).trim().is_empty());
}

#[test]
fn generate_on_cuda_runs_or_refuses_clearly() {
    let o = sieve(&["generate", "--device", "cuda", "--max-tokens", "4", "The capital of France is"]);
    if o.status.success() {
        assert!(!stdout(&o).trim().is_empty());
    } else {
        let err = stderr(&o);
        assert!(gpu_refusal(&err), "unclear refusal: {err}");
    }
    let o =
        sieve(&["generate", "--device", "cuda", "--audit-every", "2", "--method", "cats", "--sparsity", "0.5", "x"]);
    assert_fails_with(&o, "CPU only");
}

#[test]
fn gpu_bench_refuses_bad_shapes_and_sparsities_before_touching_a_gpu() {
    for (args, needle) in [
        (vec!["gpu-bench", "--shapes", "4096x100"], "multiples of 8"),
        (vec!["gpu-bench", "--shapes", "4096"], "INPUTSxOUTPUTS"),
        (vec!["gpu-bench", "--shapes", "0x8"], "multiples of 8"),
        (vec!["gpu-bench", "--sparsities", "1.5"], "outside [0, 1)"),
        (vec!["gpu-bench", "--replays", "0"], "--replays"),
        (vec!["gpu-bench", "--units-sweep", "0"], "--units-sweep"),
    ] {
        let o = sieve(&args);
        assert_fails_with(&o, needle);
    }
    let o = sieve(&["gpu-bench", "--shapes", "576x1536", "--sparsities", "0.5", "--replays", "1"]);
    if !o.status.success() {
        assert!(gpu_refusal(&stderr(&o)), "{}", stderr(&o));
    } else {
        assert!(stdout(&o).contains("passed"), "{}", stdout(&o));
    }
}

#[test]
fn synthetic_benchmark_refuses_unknown_shapes_and_methods() {
    assert_fails_with(&sieve(&["bench", "gpu-synthetic", "--shape", "gpt-5"]), "llama3-8b");
    assert_fails_with(&sieve(&["bench", "gpu-synthetic", "--methods", "predictor:0.5"]), "cannot be calibrated");
    assert_fails_with(&sieve(&["bench", "gpu-synthetic", "--methods", "teal-uniform:1.2"]), "sparsity");
    assert_fails_with(&sieve(&["bench", "gpu-synthetic", "--steps", "0"]), "--steps");
}

/// `sieve serve --device cuda` on 127.0.0.1:0: with a GPU, a greedy stream equals `sieve
/// generate --device cuda`, Info names the GPU, two concurrent streams both finish (the second
/// waits its turn), an audit is refused by name, and the summary compares with a dense
/// reference measured on the GPU. Without one, the server refuses to start, clearly.
#[test]
fn serve_refuses_a_gpu_stream_count_out_of_range() {
    for n in ["0", "65"] {
        assert_fails_with(&sieve(&["serve", "--device", "cuda", "--gpu-streams", n]), "--gpu-streams");
    }
}

#[test]
fn serve_on_cuda_streams_what_generate_prints_or_refuses_clearly() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    use sieve_proto::v1;
    use sieve_proto::v1::sieve_client::SieveClient;

    let mut child = Command::new(sieve_bin())
        .arg("--model")
        .arg(model_path())
        .args(["serve", "--device", "cuda", "--gpu-streams", "2", "--addr", "127.0.0.1:0"])
        .args(["--predictors", "/nonexistent-predictors"])
        .env_remove("SIEVE_MODEL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sieve serve");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr =
        lines.by_ref().map_while(Result::ok).find_map(|l| l.strip_prefix("sieve listening on ").map(String::from));
    let Some(addr) = addr else {
        let status = child.wait().expect("wait");
        let mut err = String::new();
        child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
        assert!(!status.success());
        assert!(gpu_refusal(&err), "unclear refusal: {err}");
        assert!(!err.contains("panicked"), "{err}");
        return;
    };
    std::thread::spawn(move || for _ in lines {});
    let (prompt, other) = ("The capital of France is", "Once upon a time, in a small village");
    let want = sieve(&["generate", "--device", "cuda", "--max-tokens", "12", "--temperature", "0", prompt]);
    assert!(want.status.success(), "{}", stderr(&want));
    let want_other = sieve(&["generate", "--device", "cuda", "--max-tokens", "12", "--temperature", "0", other]);
    assert!(want_other.status.success(), "{}", stderr(&want_other));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let mut client = SieveClient::connect(format!("http://{addr}")).await.expect("connect");
        let request_for = |text: &str, max_tokens: u32| v1::GenerateRequest {
            input: Some(v1::generate_request::Input::Prompt(text.into())),
            max_tokens,
            ..Default::default()
        };
        let request = |max_tokens: u32| request_for(prompt, max_tokens);
        let info = client.info(v1::InfoRequest::default()).await.expect("info").into_inner();
        assert!(!info.hardware.expect("hardware").gpu.is_empty(), "Info names no GPU");
        // Three streams at once on two slots: two take turns token by token (each in its own
        // KV cache), the third waits for a slot; each equals its prompt's generate.
        let (mut a, mut b, mut c) = (client.clone(), client.clone(), client.clone());
        let (first, second, third) = tokio::join!(
            async move { collect_text(&mut a, request(12)).await },
            async move { collect_text(&mut b, request_for(other, 12)).await },
            async move { collect_text(&mut c, request(12)).await }
        );
        let (text, summary) = first.expect("first stream");
        assert_eq!(text.trim(), stdout(&want).trim(), "GPU stream differs from generate --device cuda");
        let other_text = second.expect("second stream").0;
        assert_eq!(other_text.trim(), stdout(&want_other).trim(), "interleaved GPU stream differs");
        assert_eq!(third.expect("third stream").0, text);
        let timing = summary.timing.expect("timing");
        assert!(timing.decode_tok_s > 0.0 && timing.dense_decode_tok_s > 0.0, "{timing:?}");
        let mut audited = request(4);
        audited.audit_every = 2;
        audited.sparsity = Some(v1::Sparsity { method: v1::Method::Dense as i32, target: 0.0 });
        let err = collect_text(&mut client, audited).await.expect_err("an audit on the GPU");
        assert!(err.message().contains("CPU only"), "{err:?}");
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// The text and summary of one stream.
async fn collect_text(
    client: &mut sieve_proto::v1::sieve_client::SieveClient<tonic::transport::Channel>,
    req: sieve_proto::v1::GenerateRequest,
) -> Result<(String, sieve_proto::v1::GenerationSummary), tonic::Status> {
    let mut stream = client.generate(req).await?.into_inner();
    let (mut text, mut summary) = (String::new(), None);
    while let Some(m) = stream.message().await? {
        text.push_str(&m.text);
        summary = m.summary.or(summary);
    }
    Ok((text, summary.ok_or_else(|| tonic::Status::internal("no summary"))?))
}
