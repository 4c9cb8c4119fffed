//! sieve-eval: measurements over a loaded model — perplexity over corpus windows
//! ([`perplexity`]) and the decode benchmark ([`bench`]) — as plain data that the CLI renders
//! as text or JSON.

pub mod ab;
pub mod affinity;
pub mod batching;
pub mod bench;
pub mod corpus;
pub mod error;
pub mod masks;
pub mod perplexity;
pub mod plot;
pub mod search;
pub mod windows;

pub use error::EvalError;
