//! Compiles sieve/v1/sieve.proto with protox (pure Rust, no system protoc) and generates the
//! messages, client and server with tonic-prost-build; also writes the descriptor set that
//! server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "sieve/v1/sieve.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("sieve_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    // Serialize lets the CLI print any answer as JSON.
    tonic_prost_build::configure().type_attribute(".", "#[derive(serde::Serialize)]").compile_fds(fds)?;
    Ok(())
}
