//! The op vocabulary model code may call, and the CPU implementations behind it.
//!
//! This crate is the kernel seam: `qinfer-model` calls the functions in [`ops`] and nothing
//! else computes. Each op documents its shapes and exact semantics. The implementations here
//! are straightforward scalar Rust (the *reference* tier), parallelised with rayon where the work
//! splits obviously (matmul by weight rows, attention and DeltaNet by head). Faster SIMD and
//! quantized kernels slot in behind the same signatures, each tested against these.
//!
//! Architecture invariant: this crate knows nothing about Qwen, files or tokens; it sees
//! numbers and shapes.

pub mod ops;
mod threads;

pub use threads::{init_threads, threads};
