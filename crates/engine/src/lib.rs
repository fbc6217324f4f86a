//! Text in, text out.
//!
//! * [`tokenizer`]: the model's `tokenizer.json` (Hugging Face `tokenizers`, pure-Rust build)
//!   and a streaming detokenizer that never emits broken UTF-8.
//! * [`template`]: the model's own Jinja chat template, rendered byte-identically to Python
//!   jinja2 as transformers renders it.
//! * [`sampler`]: temperature, top-k/p, min-p, penalties, seeds, stop conditions.
//! * [`request`]: what a generation is asked to do and how it ends (options, finish reasons,
//!   errors).
//! * [`decode`]: the per-token step: one logits row in, one token and its events out.
//! * [`engine`]: the engine loop: continuous batching over [`qinfer_model::Qwen35::step`],
//!   the one place where sampling, stops, reasoning budgets and the prompt cache meet the
//!   model; [`scheduler`] runs it on its own thread; [`counters`] is what it counts.
//! * [`generate`]: the model bundle, sequences reused across turns, and `generate` (one
//!   request through the engine loop on the caller's thread).
//! * [`demo`]: the built-in demo model.
//! * [`json_constraint`]: the JSON syntax automaton behind `response_format: json_object`.
//! * [`gguf_text`]: the tokenizer and chat template stored in a GGUF file.
//! * [`prompt_cache`]: the prefix cache shared across requests (KV blocks + DeltaNet
//!   snapshots), where snapshots are taken, exact chunk-aligned prefill, the disk tier.
//! * [`session`]: a conversation saved with its model state (`qinfer run --session`).
//! * [`parser`]: one incremental state machine splitting model output into reasoning,
//!   content and Qwen XML tool calls; streaming-safe, never panics.
//!
//! Architecture invariant: this crate knows nothing about HTTP or async runtimes; the server
//! maps its types to wire formats and implements [`engine::Sink`] for its channels.

pub mod counters;
pub mod decode;
pub mod demo;
pub mod engine;
pub mod generate;
pub mod gguf_text;
pub mod images;
pub mod json_constraint;
pub mod parser;
pub mod plan;
pub mod prompt_cache;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod schema;
pub mod session;
pub mod speculative;
pub mod template;
pub mod tokenizer;
