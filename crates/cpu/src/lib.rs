//! The op vocabulary model code may call, and the CPU implementations behind it.
//!
//! This crate is the kernel seam: `qinfer-model` calls the functions in [`ops`] and nothing
//! else computes. Each op documents its shapes and exact semantics. Matmuls run the kernels in
//! [`kernels`] (AVX-512 VNNI when the CPU has it, a scalar reference tier beside every one);
//! parallel ops (matmul by weight rows, attention and DeltaNet by head) run on the engine's own
//! pool ([`pool`]), started by [`init_threads`].
//!
//! Architecture invariant: this crate knows nothing about Qwen, files or tokens; it sees
//! numbers and shapes.

mod backend;
pub mod kernels;
pub mod membw;
#[cfg(test)]
mod noise;
pub mod ops;
pub mod pool;
mod settings;
mod threads;

pub use kernels::{Isa, MatmulPrecision};
pub use settings::Cpu;
pub use threads::{init_threads, threads};
