//! `sieve tokenize`: the token ids of a text (special tokens recognised).

use std::path::Path;

use anyhow::Result;

/// Arguments of `sieve tokenize`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The text to tokenize.
    text: String,
    /// Print `{"ids": [...]}`.
    #[arg(long)]
    json: bool,
}

/// Runs `sieve tokenize`.
pub fn run(model_path: &Path, a: Args) -> Result<()> {
    let tok = super::load_tokenizer(model_path)?;
    let ids = tok.encode(&a.text)?;
    if a.json {
        super::print_json(&serde_json::json!({ "ids": ids }))
    } else {
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        println!("{}", list.join(" "));
        Ok(())
    }
}
