//! What a generation is asked to do and how it ends: the types the decoder, the engine loop
//! and their clients share.

use std::path::PathBuf;

use qinfer_model::{ForwardError, LoadError};

use crate::parser::ParserOptions;
use crate::sampler::{SamplingError, SamplingParams};
use crate::template::TemplateError;
use crate::tokenizer::TokenizerError;

/// Why a bundle could not be loaded or a generation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    GgufText(#[from] crate::gguf_text::GgufTextError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Forward(#[from] ForwardError),
    #[error("{0}: no tokenizer.json: qinfer needs the model's tokenizer for text")]
    NoTokenizer(PathBuf),
    #[error("{0}: no chat template (chat_template.jinja or tokenizer_config.json `chat_template`)")]
    NoTemplate(String),
    #[error(
        "prompt of {prompt} tokens + {max_tokens} new tokens exceeds the context of {context}{hint}"
    )]
    ContextOverflow {
        prompt: usize,
        max_tokens: usize,
        context: usize,
        /// [`qinfer_model::ModelConfig::context_hint`].
        hint: &'static str,
    },
    #[error("the prompt is empty")]
    EmptyPrompt,
    /// A text feature (stop strings, a reasoning budget, JSON mode) asked of a model that
    /// has no tokenizer.
    #[error("{0} needs the model's tokenizer, and this model has none")]
    NeedsTokenizer(&'static str),
    /// A JSON Schema that cannot be enforced (the engine's message names what).
    #[error("the JSON schema cannot be enforced: {0}")]
    Schema(String),
    /// The engine loop could not run the request (a forward step failed).
    #[error("{0}")]
    Failed(String),
    /// An image the request brings cannot be used (unreadable, too large, no vision tower).
    #[error("{0}")]
    Image(String),
}

/// What ends a generation besides the token budget.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop_strings: Vec<String>,
    /// Extra stop ids (the bundle's `stop_ids` always apply unless `ignore_eos`).
    pub stop_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Most tokens spent inside `<think>` before `</think>` is forced.
    pub reasoning_budget: Option<usize>,
    pub parser: ParserOptions,
    /// Constrain the answer (the output after any reasoning) to one JSON object: tokens that
    /// would break JSON syntax are masked, generation stops when the object closes, and the
    /// object is steered closed before `max_tokens` runs out when the budget allows (see
    /// [`crate::json_constraint`]).
    pub json_object: bool,
    /// Constrain the answer to a JSON value valid against this JSON Schema
    /// ([`crate::schema`]); generation stops when the value is complete. Checked when the
    /// decoder is made (an unsupported schema is an error naming it).
    pub json_schema: Option<serde_json::Value>,
    /// Constrain tool calls in the answer to the offered tools' schemas (`parser.tools`:
    /// a tool defined with `strict: true`): [`crate::schema::SchemaIndex::compile_tool_calls`].
    pub strict_tools: bool,
    /// With `strict_tools`: at most one call (`parallel_tool_calls: false`,
    /// `disable_parallel_tool_use`), after which the answer can only end.
    pub single_call: bool,
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence / stop token id.
    Stop(u32),
    /// A stop string.
    StopString(String),
    /// `max_tokens` reached.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

/// What the callback wants after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Cancel,
}
