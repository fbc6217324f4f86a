//! Readers (and small writers) for the files a model comes in.
//!
//! * [`safetensors`]: single files and sharded `model.safetensors.index.json` checkpoints,
//!   memory-mapped and validated; tensors come out as zero-copy [`qinfer_tensor::ByteView`]s.
//! * [`hf_config`]: a raw serde mirror of Hugging Face `config.json` (no logic, no defaults:
//!   the model crate validates it).
//! * [`gguf`]: GGUF v2/v3 files (llama.cpp's format): memory-mapped reader with typed
//!   metadata and split files, and a streaming writer.
//! * [`npy`]: `float32` `.npy` arrays, for logits dumps and test fixtures.
//!
//! Architecture invariant: this crate knows no model architecture. It never interprets tensor
//! names or config values; errors name the file and the entry that is wrong.

pub mod gguf;
pub mod hf_cache;
pub mod hf_config;
pub mod hf_tokenizer;
mod load;
pub mod npy;
pub mod safetensors;
