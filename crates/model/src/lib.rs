//! The Qwen3.5 / Qwen3.6 text model (dense and MoE).
//!
//! * [`config`]: the validated configuration, built from the raw `config.json` mirror.
//! * [`names`]: the one table from tensor roles to checkpoint names. Tensor-name strings
//!   appear nowhere else.
//! * [`loader`]: fetches and checks tensors by role (shape, dtype, norm convention).
//! * `layers/`: the mechanisms (norms, RoPE, gated attention, Gated DeltaNet, SwiGLU MLP, MoE),
//!   each loading its weights and running its forward step through a
//!   [`qinfer_backend::Backend`].
//! * [`qwen35`]: binds them into the forward pass.
//! * [`export`]: writing llama.cpp-compatible GGUF files (`qinfer quantize`).
//! * [`gguf`]: llama.cpp `qwen35` / `qwen35moe` GGUF files through the same code.
//! * [`vision`]: the vision tower (images to embeddings) and the mRoPE positions of a prompt
//!   with images.
//!
//! Architecture invariant: model code never touches SIMD, threads, file formats or the numbers
//! of an activation; it calls the op vocabulary of the [`qinfer_backend::Backend`] the model
//! runs on ([`Qwen35::with_backend`]; the CPU backend by default, the only mention of
//! `qinfer_cpu` outside the GGUF writer's quantizer), and state lives in
//! `qinfer_cache::SequenceState`. `crates/model/tests/tidy.rs` checks this.

pub mod config;
mod error;
pub mod export;
pub mod gguf;
pub mod layers;
pub mod loader;
pub mod mtp;
pub mod names;
pub mod qwen35;
pub mod vision;

pub use config::{FeedForwardConfig, LayerKind, ModelConfig, NormConvention};
pub use error::{ConfigError, ForwardError, LoadError};
pub use layers::rope::{Position3, text_position};
pub use mtp::{MtpOutput, MtpSpan};
pub use qwen35::{
    DeltaNetPath, MAX_KEPT_POSITIONS, MAX_PIECE_TOKENS, Qwen35, Rows, Span, SpanInput, SpanOutput,
    TracePoint,
};
pub use vision::{
    EncodeJob, ImagePlacement, VisionConfig, VisionError, VisionTower, mrope_positions,
};

/// `n` token ids drawn by xorshift32 from `seed` (nonzero), each below `vocab`: a fixed prompt
/// that is the same on every run, for `qinfer bench` and tests whose outcome must not depend on
/// particular text.
///
/// # Panics
/// If `vocab` is 0 (a validated [`ModelConfig`] never has that).
pub fn pseudo_random_tokens(n: usize, vocab: u32, seed: u32) -> Vec<u32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s % vocab
        })
        .collect()
}
