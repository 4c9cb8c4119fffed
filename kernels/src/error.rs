//! Typed errors of the kernels crate.

/// What a kernel refused to do, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    /// A buffer's length does not match the shape it was declared with.
    #[error("{what}: expected {expected} elements, got {got}")]
    Length { what: &'static str, expected: usize, got: usize },
    /// Quantized layouts need the contiguous axis to be a multiple of the block size.
    #[error("{what}: {cols} columns is not a multiple of the block size {block}")]
    Block { what: &'static str, cols: usize, block: usize },
    /// Two operands disagree on a dimension.
    #[error("shape mismatch: {0}")]
    Shape(String),
}
