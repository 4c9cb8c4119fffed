//! `sieve serve`: the gRPC service on an address, with metrics and graceful shutdown.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sieve_engine::Precision;
use sieve_server::{Server, ServerConfig};

/// Arguments of `sieve serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// Requests admitted at once, running or waiting; more get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 16)]
    max_queue: usize,
    /// Largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 1024)]
    max_tokens_limit: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// Seconds running generations get to finish after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10.0)]
    grace_s: f64,
    /// Seconds after which the dense reference timing is measured again (when idle).
    #[arg(long, default_value_t = 300.0)]
    dense_refresh_s: f64,
    /// Weight precision: f32 (reference) or fast (int8).
    #[arg(long, default_value = "fast")]
    precision: Precision,
    /// Calibration profile (default: the one `sieve calibrate` wrote for this model).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Predictor set directory (default: the one `sieve train-predictors` wrote).
    #[arg(long)]
    predictors: Option<PathBuf>,
    /// Where generations decode: cpu, or cuda (an NVIDIA GPU; needs a build with
    /// `--features cuda`). Compare and the mask audit run on the CPU either way.
    #[arg(long, value_enum, default_value = "cpu")]
    device: super::gpu_decode::Device,
    /// GPU ordinal for --device cuda.
    #[arg(long, default_value_t = 0)]
    gpu: usize,
    /// With --device cuda: generations decoding at once, taking turns token by token (each
    /// holds a KV cache of the model's context on the GPU); later ones wait for a slot.
    #[arg(long, default_value_t = 4)]
    gpu_streams: usize,
}

fn seconds(name: &str, s: f64) -> Result<Duration> {
    if !s.is_finite() || !(0.0..=86_400.0).contains(&s) {
        bail!("--{name} {s} must be between 0 and 86400 seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// Resolves when the process gets SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Runs `sieve serve`.
pub fn run(model_path: &Path, a: Args) -> Result<()> {
    if a.max_queue == 0 {
        bail!("--max-queue must be at least 1");
    }
    if a.max_tokens_limit == 0 {
        bail!("--max-tokens-limit must be at least 1");
    }
    if !(1..=64).contains(&a.gpu_streams) {
        bail!("--gpu-streams {} must be between 1 and 64", a.gpu_streams);
    }
    let cfg = ServerConfig {
        precision: a.precision,
        profile: a.profile,
        predictors: a.predictors,
        max_queue: a.max_queue,
        max_tokens_limit: a.max_tokens_limit,
        grace: seconds("grace-s", a.grace_s)?,
        dense_refresh: seconds("dense-refresh-s", a.dense_refresh_s)?.max(Duration::from_secs(1)),
        device: match a.device {
            super::gpu_decode::Device::Cpu => sieve_server::Device::Cpu,
            super::gpu_decode::Device::Cuda => sieve_server::Device::Cuda(a.gpu),
        },
        gpu_streams: a.gpu_streams,
        ..ServerConfig::new(model_path.to_path_buf())
    };
    // One I/O thread: the engine and its pool own the cores, and gRPC work per token is small.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::bind(a.addr).await.with_context(|| format!("binding --addr {}", a.addr))?;
        let metrics = match a.metrics_addr {
            Some(m) => {
                Some(tokio::net::TcpListener::bind(m).await.with_context(|| format!("binding --metrics-addr {m}"))?)
            }
            None => None,
        };
        let server = tokio::task::spawn_blocking(move || Server::start(&cfg)).await??;
        let mut out = std::io::stdout().lock();
        writeln!(out, "sieve listening on {}", listener.local_addr()?)?;
        if let Some(m) = &metrics {
            writeln!(out, "metrics on http://{}/metrics", m.local_addr()?)?;
        }
        out.flush()?;
        drop(out);
        server.run(listener, metrics, shutdown_signal()).await?;
        eprintln!("sieve stopped");
        Ok(())
    })
}
