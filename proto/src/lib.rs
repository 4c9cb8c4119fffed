//! sieve-proto: the `sieve.v1` gRPC API generated from `sieve/v1/sieve.proto` — messages,
//! the `Sieve` client and server traits, and the encoded descriptor set for reflection.

/// The `sieve.v1` package.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("sieve.v1");
}

/// The encoded `FileDescriptorSet` of the API (for server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sieve_descriptor.bin"));
