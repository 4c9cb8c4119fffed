//! The smallest useful sieve client: stream a CATS generation from a running `sieve serve` and
//! print what the sparsity did.
//!
//! ```sh
//! ./target/release/sieve serve &
//! cargo run --release -p sieve-proto --example generate -- http://127.0.0.1:50051 "Once upon a time"
//! ```

use std::io::Write;

use sieve_proto::v1;
use sieve_proto::v1::sieve_client::SieveClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".into());
    let mut client = SieveClient::connect(addr).await?;
    let request = v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Prompt(prompt)),
        sparsity: Some(v1::Sparsity { method: v1::Method::Cats as i32, target: 0.5 }),
        max_tokens: 48,
        audit_every: 4,
        ..Default::default()
    };
    let mut stream = client.generate(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        print!("{}", message.text);
        std::io::stdout().flush()?;
        if let Some(summary) = message.summary {
            let timing = summary.timing.unwrap_or_default();
            println!(
                "\n[{:.1} tok/s, {:.2}x dense; achieved sparsity {:.3}; {} tokens audited]",
                timing.decode_tok_s, timing.speedup, summary.achieved_sparsity, summary.audited_tokens
            );
            for layer in summary.layers.iter().step_by(10) {
                let recall = |m: Option<v1::MaskAccuracy>| m.map_or(f64::NAN, |m| m.recall);
                println!(
                    "layer {:>2}: MLP {:.0} us (dense {:.0}), recall vs TEAL {:.3}, vs CETT {:.3}",
                    layer.layer,
                    layer.mlp_us,
                    layer.dense_mlp_us,
                    recall(layer.vs_teal),
                    recall(layer.vs_cett)
                );
            }
        }
    }
    Ok(())
}
