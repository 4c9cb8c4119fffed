//! sieve-kernels: the compute kernels of sieve, as pure functions over slices.
//!
//! Matrices are row-major (`rows` outputs x `cols` inputs). Two precisions:
//! - [`MatF32`]: the f32 reference path;
//! - [`MatQ8`]: the fast path, int8 weights in blocks of [`QK`] along each row with one f32
//!   scale per block, multiplied against activations quantized the same way ([`ActsQ8`]).
//!
//! Products dispatch at run time to the best instruction set the CPU has ([`isa`]) and split
//! rows over the spinning worker pool ([`pool`]). No model code lives here.

pub mod attention;
mod cpu;
mod decode_panels;
pub mod error;
pub mod gemm_vnni;
pub mod gpu;
pub mod isa;
mod lines;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod q4;
mod q4_rows;
pub mod quant;
pub mod sparse;
pub mod sparse_q4;
pub mod sparse_rows;
pub mod swiglu_down;
pub mod testdata;

pub use cpu::prefetch;
pub use error::KernelError;
pub use matmul::{matmul_f32, matmul_q8};
pub use q4::{MatQ4_1, matmul_q4_1, matmul_q4_1_many};
pub use quant::{ActsQ8, MatF32, MatQ8, QK};
pub use sparse_q4::{InputMajorQ4_1, gemv_input_sparse_q4_1};
