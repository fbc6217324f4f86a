//! Element types, byte views and the two tensor shapes the model code passes around.
//!
//! qinfer keeps weights where they are (a memory-mapped file, usually) and computes activations in
//! `f32`. So this crate has exactly two kinds of data:
//!
//! * [`Weight`]: a row-major matrix `[rows, cols]` in some storage format ([`DType`]), viewing bytes
//!   owned by someone else (an mmap, or a buffer produced at load time). Model code never looks
//!   inside; it hands weights to the ops in `qinfer-cpu`.
//! * [`Mat`]: an owned `f32` activation matrix `[rows, cols]`, rows = tokens.
//!
//! Shape letters used across the workspace (declared once here):
//! `T` tokens in a step, `H` hidden size, `V` vocabulary, `Hq`/`Hkv` attention query/kv heads,
//! `D` attention head dim, `Nk`/`Nv` DeltaNet key/value heads, `Dk`/`Dv` DeltaNet head dims,
//! `C` DeltaNet conv channels, `K` conv kernel width, `E` experts, `I` FFN width.

mod bytes;
mod dtype;
mod mat;
mod weight;

pub use bytes::{ByteOwner, ByteView};
pub use dtype::DType;
pub use mat::Mat;
pub use weight::{DeviceCopy, Weight, WeightError};
