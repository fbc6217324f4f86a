//! The mechanisms a Qwen3.5 decoder is built from. Each owns its weights, loads them by role
//! through [`crate::loader::Loader`], and runs its step through the [`qinfer_backend::Backend`] it is given.

pub mod attention;
pub mod gated_deltanet;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod rope;
