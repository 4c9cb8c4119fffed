//! Corpus text: read and validated as UTF-8, tokenized without BOS.

use std::path::Path;

use sieve_engine::tokenizer::Tokenizer;

use crate::error::{EvalError, Result};

/// The built-in benchmark text, used when no corpus is given.
pub const BUILTIN_BENCH_TEXT: &str = include_str!("../data/bench_prompt.txt");

/// Reads `path` as UTF-8 text, naming the offset of the first invalid byte otherwise.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| EvalError::Io { path: path.to_path_buf(), source })?;
    String::from_utf8(bytes)
        .map_err(|e| EvalError::NotUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })
}

/// Reads and tokenizes `path` (no BOS, as llama.cpp's perplexity tool does with this model).
pub fn tokenize_file(tokenizer: &Tokenizer, path: &Path) -> Result<Vec<u32>> {
    let text = read_text(path)?;
    Ok(tokenizer.encode(&text)?)
}
