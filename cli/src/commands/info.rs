//! `sieve info`: the model's metadata and the engine's build.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use sieve_engine::Config;
use sieve_engine::gguf::GgufFile;

/// Arguments of `sieve info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Info {
    model_path: String,
    file_bytes: u64,
    tensors: usize,
    config: Config,
    block_params: usize,
    tokenizer: String,
    isa: String,
    threads: usize,
    sieve_version: &'static str,
}

/// Runs `sieve info`.
pub fn run(model_path: &Path, a: Args) -> Result<()> {
    let gguf = GgufFile::open(model_path).with_context(|| format!("loading model {}", model_path.display()))?;
    let config = Config::from_gguf(&gguf)?;
    let info = Info {
        model_path: model_path.display().to_string(),
        file_bytes: std::fs::metadata(model_path).map(|m| m.len()).unwrap_or(0),
        tensors: gguf.tensor_count(),
        block_params: config.block_params(),
        tokenizer: format!(
            "{} / pre {}",
            gguf.get_str("tokenizer.ggml.model").unwrap_or("?"),
            gguf.get_str("tokenizer.ggml.pre").unwrap_or("?")
        ),
        config,
        isa: sieve_kernels::isa::describe(),
        threads: sieve_kernels::pool::global().threads(),
        sieve_version: env!("CARGO_PKG_VERSION"),
    };
    if a.json {
        return super::print_json(&info);
    }
    let c = &info.config;
    println!("model        {} ({})", c.name, info.model_path);
    println!("file         {:.1} MB, {} tensors", info.file_bytes as f64 / 1e6, info.tensors);
    println!(
        "architecture {}: {} layers, d={}, f={}, heads {}/{} (head dim {})",
        c.architecture, c.n_layers, c.d_model, c.d_ff, c.n_heads, c.n_kv_heads, c.head_dim
    );
    println!("rope         theta {}, {} dims; rms eps {:e}", c.rope_theta, c.rope_dim, c.rms_eps);
    println!("context      {} tokens; vocab {}", c.context_len, c.vocab_size);
    println!("params       {:.1} M in blocks", info.block_params as f64 / 1e6);
    println!("tokenizer    {}", info.tokenizer);
    println!("engine       sieve {}, {} on {} threads", info.sieve_version, info.isa, info.threads);
    Ok(())
}
