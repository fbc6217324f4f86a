//! Errors of loading and running a model. Each names the file, field or tensor at fault.

use qinfer_formats::hf_config::ConfigFileError;
use qinfer_formats::safetensors::SafetensorsError;

/// `config.json` is readable JSON but does not describe a model qinfer can run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown model type {found:?}: qinfer runs {expected}")]
    UnknownModelType {
        found: String,
        expected: &'static str,
    },
    #[error("config field `{0}` is missing")]
    Missing(&'static str),
    #[error("config field `{field}`: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("config field `{field}`: {why} is not supported yet")]
    Unsupported { field: &'static str, why: String },
    #[error("GGUF metadata key `{0}` is missing")]
    MissingKey(String),
    #[error("GGUF metadata key `{key}`: {why}")]
    InvalidKey { key: String, why: String },
}

/// A model directory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
    /// The cause is part of the message and deliberately not an error `source`: a reporter that
    /// prints the chain (`anyhow`'s `{:#}`) would print it twice.
    #[error("{path}: {cause}")]
    Config { path: String, cause: ConfigError },
    #[error(transparent)]
    Checkpoint(#[from] SafetensorsError),
    #[error(transparent)]
    Gguf(#[from] qinfer_formats::gguf::GgufError),
    #[error(transparent)]
    Backend(#[from] qinfer_backend::PrepareError),
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("tensor {name} has shape {got:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor {name} has type {dtype}, which qinfer cannot compute with (yet)")]
    DType { name: String, dtype: String },
    #[error("draft vocabulary ({source_name}): {problem}")]
    DraftVocab {
        source_name: String,
        problem: String,
    },
}

/// A forward step was asked to do something impossible. The sequence state is unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    #[error("token id {id} at index {index} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, index: usize, vocab: usize },
    #[error(
        "{needed} positions exceed the context of {limit} (already {used} in this sequence){hint}"
    )]
    ContextOverflow {
        used: usize,
        needed: usize,
        limit: usize,
        /// [`crate::ModelConfig::context_hint`].
        hint: &'static str,
    },
    #[error("empty input: a forward step needs at least one token")]
    Empty,
    #[error("the sequence state does not belong to this model")]
    StateMismatch,
    #[error("embedding rows are {got} wide, the model's hidden size is {hidden}")]
    EmbeddingWidth { got: usize, hidden: usize },
    #[error(
        "{rows} supplied rows for {at} spliced positions of a {len}-token span (positions must \
         ascend within the span)"
    )]
    Splice { rows: usize, at: usize, len: usize },
    #[error("{got} positions given for {rows} input rows")]
    PositionCount { got: usize, rows: usize },
    #[error("a step may keep per-position states for at most {max} positions, not {got}")]
    TooManyKept { got: usize, max: usize },
    #[error(transparent)]
    Rewind(#[from] qinfer_cache::RewindError),
    #[error("the model has no MTP head")]
    NoMtpHead,
}
