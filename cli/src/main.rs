//! `sieve`: the command line of the sieve inference engine. Thin: parses arguments, loads the
//! model, calls the engine and eval crates, renders text or JSON.

mod commands;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// sieve: sparse LLM inference, measured.
#[derive(Debug, Parser)]
#[command(name = "sieve", version, about)]
struct Cli {
    /// GGUF model file (default: the model installed by ./scripts/setup.sh).
    #[arg(long, global = true, env = "SIEVE_MODEL")]
    model: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from a prompt, streamed to stdout.
    Generate(commands::generate::Args),
    /// Print the token ids of a text.
    Tokenize(commands::tokenize::Args),
    /// Evaluations: perplexity, mask audit, sweeps, PPL-p% sparsity, A/B, the full report.
    #[command(subcommand)]
    Eval(commands::eval::EvalCommand),
    /// Benchmarks: decode speed (CPU or GPU), batching, the synthetic 8B model on the GPU.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Measure activation statistics on calibration text and write the sparsity profile.
    Calibrate(commands::calibrate::Args),
    /// Print the model's metadata and the engine's build.
    Info(commands::info::Args),
    /// Serve the gRPC API (sieve.v1, health, reflection) and Prometheus metrics.
    Serve(commands::serve::Args),
    /// Call a running server.
    Client(commands::client::Args),
    /// Concurrent streaming clients against a local server: latency, throughput, statuses.
    Loadtest(commands::loadtest::Args),
    /// Trace the model, train a neuron predictor per layer and write them beside the profile.
    TrainPredictors(commands::train::Args),
    /// GPU kernels: correctness against an f64 reference and timings against cuBLAS
    /// (needs a build with `--features cuda` and an NVIDIA GPU).
    GpuBench(commands::gpu_bench::Args),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIEVE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let model = cli.model.unwrap_or_else(sieve_engine::paths::default_model_path);
    match cli.command {
        Command::Generate(a) => commands::generate::run(&model, a),
        Command::Tokenize(a) => commands::tokenize::run(&model, a),
        Command::Eval(c) => commands::eval::run(&model, c),
        Command::TrainPredictors(a) => commands::train::run(&model, a),
        Command::Bench(c) => commands::bench::run(&model, c),
        Command::Info(a) => commands::info::run(&model, a),
        Command::Calibrate(a) => commands::calibrate::run(&model, a),
        Command::Serve(a) => commands::serve::run(&model, a),
        Command::Client(a) => commands::client::run(a),
        Command::Loadtest(a) => commands::loadtest::run(a),
        Command::GpuBench(a) => commands::gpu_bench::run(a),
    }
}
