//! The generation loop: a loaded model bundle, a sequence whose state is reused across
//! turns, and one function that runs prompt → tokens → text → parsed events.
//!
//! Per generated token: sample (with penalties) → stop ids → stream-decode to text →
//! stop strings → output parser (reasoning / content / tool calls) → caller's callback.
//! The callback can cancel at any token (Ctrl-C, a disconnected client).
//!
//! A reasoning budget ends runaway thinking gracefully: when the model has spent the budget
//! inside `<think>`, the tokens of `"\n</think>\n\n"` are forced (fed through the model like
//! generated ones), and it goes on with its answer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use qinfer_cache::{Miss, SequenceState, Snapshot};
use qinfer_formats::gguf::keys;
use qinfer_model::{ForwardError, LoadError, Qwen35, Rows};

use crate::decode::{Decoder, Step};
use crate::parser::{Event, Parsed, ParserOptions, ToolCall};
use crate::prompt_cache::{self, PromptCache};
use crate::sampler::{SamplingError, SamplingParams};
use crate::template::{ChatTemplate, TemplateError, special_tokens_from_config};
use crate::tokenizer::{Tokenizer, TokenizerError};

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
    #[error("prompt of {prompt} tokens + {max_tokens} new tokens exceeds the context of {context}")]
    ContextOverflow {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("the prompt is empty")]
    EmptyPrompt,
}

/// Everything needed to turn text into text: weights, tokenizer, template, defaults.
#[derive(Debug)]
pub struct ModelBundle {
    pub name: String,
    pub model: Qwen35,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Sampling defaults from `generation_config.json`.
    pub defaults: SamplingParams,
    /// Token ids that end generation (`generation_config.json` `eos_token_id`, plus
    /// `<|im_end|>` and `<|endoftext|>` when the vocabulary has them).
    pub stop_ids: Vec<u32>,
    /// The built-in demo model (random weights).
    pub is_demo: bool,
}

impl ModelBundle {
    /// Loads a model directory: weights, `tokenizer.json`, the chat template and
    /// `generation_config.json`.
    pub fn load_dir(dir: &Path) -> Result<Self, EngineError> {
        let model = Qwen35::load_dir(dir)?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(EngineError::NoTokenizer(dir.to_path_buf()));
        }
        let tokenizer = Tokenizer::from_file(&tok_path)?;
        let template = ChatTemplate::from_model_dir(dir)?;
        let gen_path = dir.join("generation_config.json");
        let defaults = SamplingParams::from_generation_config(&gen_path)?;
        let mut stop_ids = SamplingParams::eos_ids_from_generation_config(&gen_path)?;
        add_chat_stops(&tokenizer, &mut stop_ids);
        Ok(ModelBundle {
            name: dir.display().to_string(),
            model,
            tokenizer,
            template,
            defaults,
            stop_ids,
            is_demo: false,
        })
    }

    /// Loads a GGUF file: weights, and the tokenizer and chat template from a `tokenizer.json`
    /// beside it or, failing that, from the file's metadata.
    pub fn load_gguf(path: &Path) -> Result<Self, EngineError> {
        let file =
            qinfer_formats::gguf::GgufFile::open(path).map_err(|e| EngineError::Load(e.into()))?;
        let model = Qwen35::from_gguf(&file)?;
        let beside = path
            .parent()
            .map(|d| d.join("tokenizer.json"))
            .filter(|p| p.is_file());
        let tokenizer = match beside {
            Some(p) => Tokenizer::from_file(&p)?,
            None => crate::gguf_text::tokenizer_from_gguf(&file)?,
        };
        let mut stop_ids = crate::gguf_text::special_ids(&file);
        add_chat_stops(&tokenizer, &mut stop_ids);
        let template = match crate::gguf_text::chat_template_source(&file) {
            Some(src) => {
                let mut specials = std::collections::BTreeMap::new();
                for (name, key) in [
                    ("eos_token", keys::TOKENIZER_EOS_ID),
                    ("pad_token", keys::TOKENIZER_PAD_ID),
                    ("bos_token", keys::TOKENIZER_BOS_ID),
                ] {
                    if let Some(tok) = file
                        .get(key)
                        .and_then(|v| v.as_u64())
                        .and_then(|id| tokenizer.token_str(id as u32))
                    {
                        specials.insert(name.to_string(), tok);
                    }
                }
                Some(ChatTemplate::new(src)?.with_special_tokens(specials))
            }
            None => None,
        };
        let gen_path = path.with_file_name("generation_config.json");
        let defaults = if gen_path.is_file() {
            SamplingParams::from_generation_config(&gen_path)?
        } else {
            SamplingParams::preset("thinking")?
        };
        Ok(ModelBundle {
            name: path.display().to_string(),
            model,
            tokenizer,
            template,
            defaults,
            stop_ids,
            is_demo: false,
        })
    }

    /// The built-in demo model with the real Qwen3.5/3.6 tokenizer and the Qwen3.6 template.
    pub fn demo() -> Result<Self, EngineError> {
        let tokenizer = Tokenizer::from_gz_bytes(DEMO_TOKENIZER_GZ)?;
        let config: serde_json::Value = serde_json::from_str(DEMO_TOKENIZER_CONFIG)
            .expect("built-in tokenizer_config.json is valid JSON");
        let template = ChatTemplate::new(DEMO_TEMPLATE)?
            .with_special_tokens(special_tokens_from_config(&config));
        let mut stop_ids = Vec::new();
        add_chat_stops(&tokenizer, &mut stop_ids);
        Ok(ModelBundle {
            name: crate::demo::DEMO_NAME.to_string(),
            model: crate::demo::demo_model(),
            tokenizer,
            template: Some(template),
            defaults: SamplingParams::preset("thinking")?,
            stop_ids,
            is_demo: true,
        })
    }

    /// The demo model's tokenizer (the real Qwen3.5/3.6 vocabulary), without its weights.
    pub fn demo_tokenizer() -> Result<Tokenizer, EngineError> {
        Ok(Tokenizer::from_gz_bytes(DEMO_TOKENIZER_GZ)?)
    }

    /// The demo model's chat template (Qwen3.6), without its weights.
    pub fn demo_template() -> Result<ChatTemplate, EngineError> {
        let config: serde_json::Value = serde_json::from_str(DEMO_TOKENIZER_CONFIG)
            .expect("built-in tokenizer_config.json is valid JSON");
        Ok(ChatTemplate::new(DEMO_TEMPLATE)?
            .with_special_tokens(special_tokens_from_config(&config)))
    }

    /// The chat template, or an error naming the model.
    pub fn template(&self) -> Result<&ChatTemplate, EngineError> {
        self.template
            .as_ref()
            .ok_or_else(|| EngineError::NoTemplate(self.name.clone()))
    }
}

const DEMO_TOKENIZER_GZ: &[u8] =
    include_bytes!("../../../assets/qwen3.5-tokenizer/tokenizer.json.gz");
const DEMO_TOKENIZER_CONFIG: &str =
    include_str!("../../../assets/qwen3.5-tokenizer/tokenizer_config.json");
const DEMO_TEMPLATE: &str = include_str!("../../../assets/chat-templates/qwen3.6.jinja");

fn add_chat_stops(tok: &Tokenizer, ids: &mut Vec<u32>) {
    for t in ["<|im_end|>", "<|endoftext|>"] {
        if let Some(id) = tok.token_id(t)
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
}

/// One sequence's state plus the tokens it holds, so a prompt that extends the previous
/// turn (a chat history) is processed only from where the two differ.
///
/// Gated DeltaNet state cannot be truncated, so besides exact extension the sequence keeps
/// snapshots at the ends of its last few prompts: a new prompt that shares a shorter prefix
/// (e.g. the template dropped reasoning from history) resumes from the longest such snapshot.
///
/// With a shared [`PromptCache`], a prompt that does not extend this sequence is looked up
/// there (any earlier request's prefix), and prompts and answers are stored there.
#[derive(Debug)]
pub struct Sequence {
    pub state: SequenceState,
    /// Tokens processed into `state`, in order.
    pub tokens: Vec<u32>,
    /// `(position, snapshot)` at the ends of recent prompts, oldest first; every position is
    /// within `tokens`.
    marks: Vec<(usize, Snapshot)>,
    /// The prefix cache shared with other sequences, if any.
    pub cache: Option<Arc<PromptCache>>,
}

/// Prompt-end snapshots kept per sequence.
const MAX_MARKS: usize = 4;

impl Sequence {
    pub fn new(model: &Qwen35) -> Self {
        Sequence {
            state: model.new_state(),
            tokens: Vec::new(),
            marks: Vec::new(),
            cache: None,
        }
    }

    /// An empty sequence that looks prompts up in, and stores them to, `cache`.
    pub fn with_cache(model: &Qwen35, cache: Arc<PromptCache>) -> Self {
        Sequence {
            cache: Some(cache),
            ..Sequence::new(model)
        }
    }

    /// A sequence holding `tokens` in `state` (a restored session).
    pub fn from_state(state: SequenceState, tokens: Vec<u32>) -> Self {
        assert_eq!(state.pos(), tokens.len(), "state holds exactly the tokens");
        Sequence {
            state,
            tokens,
            marks: Vec::new(),
            cache: None,
        }
    }

    /// Snapshots at the ends of recent prompts: `(position, snapshot)`, oldest first.
    pub fn marks(&self) -> &[(usize, Snapshot)] {
        &self.marks
    }

    /// Adds a prompt-end snapshot (a restored session's); ignored unless `snapshot` is at a
    /// position within `tokens`.
    pub fn push_mark(&mut self, snapshot: Snapshot) {
        let n = snapshot.pos();
        if n <= self.tokens.len() && !self.marks.iter().any(|(m, _)| *m == n) {
            if self.marks.len() == MAX_MARKS {
                self.marks.remove(0);
            }
            self.marks.push((n, snapshot));
        }
    }

    /// Empties the sequence (it keeps its cache).
    pub fn reset(&mut self, model: &Qwen35) {
        let cache = self.cache.take();
        *self = Sequence::new(model);
        self.cache = cache;
    }

    /// Rewinds to the longest reusable prefix of `prompt`, from this sequence or the shared
    /// cache; returns how many of its tokens are already in the state and, when tokens the
    /// cache had seen are computed again, why.
    fn resume(&mut self, model: &Qwen35, prompt: &[u32]) -> (usize, Option<Miss>) {
        let local = self.reuse(model, prompt);
        let Some(cache) = self.cache.clone() else {
            return (local, None);
        };
        if local + 1 >= prompt.len() || (local > 0 && local == self.tokens.len()) {
            // Nothing to gain, or the prompt extends this very sequence.
            return (local, None);
        }
        let found = cache.admit(prompt);
        if found.cached <= local {
            return (local, None);
        }
        self.state = found.state;
        self.tokens = prompt[..found.cached].to_vec();
        self.marks.clear();
        (found.cached, found.miss)
    }

    /// Rewinds to the longest reusable prefix of `prompt`; returns how many of its tokens are
    /// already in the state. Always leaves at least one token to process, since the logits of
    /// the prompt's last position are needed.
    pub fn reuse(&mut self, model: &Qwen35, prompt: &[u32]) -> usize {
        let extends = |n: usize, tokens: &[u32]| {
            n < prompt.len() && n <= tokens.len() && prompt[..n] == tokens[..n]
        };
        if !self.tokens.is_empty() && extends(self.tokens.len(), &self.tokens) {
            return self.tokens.len();
        }
        let best = self
            .marks
            .iter()
            .enumerate()
            .filter(|(_, (n, _))| extends(*n, &self.tokens))
            .max_by_key(|(_, (n, _))| *n)
            .map(|(i, _)| i);
        if let Some(i) = best {
            let n = self.marks[i].0;
            if self.state.restore(&self.marks[i].1).is_ok() {
                self.tokens.truncate(n);
                self.marks.retain(|(m, _)| *m <= n);
                return n;
            }
        }
        self.reset(model);
        0
    }

    /// Records a snapshot at the current end (called after a prompt is processed).
    fn mark(&mut self) {
        self.push_mark(self.state.snapshot());
    }
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

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (forced budget tokens included, the stop token excluded).
    pub ids: Vec<u32>,
    /// The decoded text of `ids`, up to a stop string.
    pub text: String,
    pub parsed: Parsed,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens that were already in the sequence state or the prompt cache (not
    /// processed again).
    pub reused_tokens: usize,
    /// Why prompt tokens the prompt cache had seen were processed again, if they were.
    pub cache_miss: Option<Miss>,
    pub reasoning_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    pub fn tool_calls(&self) -> &[ToolCall] {
        &self.parsed.tool_calls
    }

    /// Decode speed in tokens per second (the first token comes from the prefill).
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.ids.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// What the callback wants after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Cancel,
}

/// Generates after `prompt` in `seq`, reporting parser events as they happen.
pub fn generate(
    bundle: &ModelBundle,
    seq: &mut Sequence,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_event: &mut dyn FnMut(&Event) -> Flow,
) -> Result<Generation, EngineError> {
    opts.sampling.validate()?;
    let model = &bundle.model;
    if prompt.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    let context = model.config.max_positions;
    if prompt.len() + opts.max_tokens > context {
        return Err(EngineError::ContextOverflow {
            prompt: prompt.len(),
            max_tokens: opts.max_tokens,
            context,
        });
    }
    let started = Instant::now();
    let (reused, cache_miss) = seq.resume(model, prompt);
    let cache = seq.cache.clone();
    let logits =
        match prompt_cache::prefill(model, &mut seq.state, prompt, reused, cache.as_deref()) {
            Ok(l) => l,
            Err(e) => {
                // Pieces before the failing one advanced the state: start over rather than
                // keep a state that no longer matches `tokens`.
                seq.reset(model);
                return Err(e.into());
            }
        };
    seq.tokens.truncate(reused);
    seq.tokens.extend_from_slice(&prompt[reused..]);
    seq.mark();
    let prefill_time = started.elapsed();

    let mut decoder = Decoder::new(&bundle.tokenizer, &bundle.stop_ids, prompt, opts, None)?;
    let decode_start = Instant::now();
    let mut logits = logits.row(0).to_vec();
    loop {
        match decoder.step(&logits, on_event) {
            Step::Feed(token) => {
                seq.tokens.push(token);
                logits = model
                    .forward(&[token], &mut seq.state, Rows::Last)?
                    .row(0)
                    .to_vec();
            }
            Step::Finished { unfed } => {
                if let Some(token) = unfed {
                    // The last emitted token is fed so the state matches `tokens`.
                    seq.tokens.push(token);
                    model.forward(&[token], &mut seq.state, Rows::Last)?;
                }
                break;
            }
        }
    }
    let (finish, _) = decoder.finish(on_event);
    let out = Generation {
        ids: std::mem::take(&mut decoder.ids),
        text: std::mem::take(&mut decoder.text),
        parsed: std::mem::take(&mut decoder.parsed),
        finish,
        prompt_tokens: prompt.len(),
        reused_tokens: reused,
        cache_miss,
        reasoning_tokens: decoder.reasoning_tokens,
        prefill_time,
        decode_time: decode_start.elapsed(),
    };
    if let Some(cache) = &cache {
        cache.complete(&seq.tokens, &seq.state);
    }
    Ok(out)
}
