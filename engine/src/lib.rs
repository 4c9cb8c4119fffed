//! sieve-engine: the model side of sieve.
//!
//! GGUF loading ([`gguf`]), the model's configuration ([`config`]) and weights in the
//! layouts the kernels want ([`weights`]), the tokenizer ([`tokenizer`], [`chat`]), the Llama
//! forward pass with its KV cache ([`model`], [`kv_cache`]), sampling ([`sampling`]) and the
//! generation loop ([`generate`]).

mod attention;
pub mod audit;
pub mod calibrate;
pub mod chat;
pub mod divergence;
pub mod error;
pub mod gguf;
#[cfg(feature = "cuda")]
pub mod gpu;
pub mod greedy;
pub mod paths;
pub mod profile;
pub mod tokenizer;
pub mod trace;

pub use error::{EngineError, Result};
pub mod config;
pub mod kv_cache;
pub mod model;
pub mod weights;

pub use config::Config;
pub use kv_cache::{CacheFormat, KvCache};
pub use model::{Hooks, Logits, Model};
pub use weights::Precision;
pub mod generate;
mod predict;
pub mod sampling;
pub mod sparse_decode;
pub mod sparsity;
pub mod stop;
pub mod traffic;
