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

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use qinfer_cache::{KeyElem, Miss, SequenceState, Snapshot};
use qinfer_formats::gguf::keys;
use qinfer_model::Qwen35;

use crate::engine::{
    CacheHook, Ended, Engine, EngineModel, Gone, Out, Request, SchedulerConfig, Sink, Start,
    Summary,
};
use crate::images::{
    DecodeLimits, ImageOptions, PreprocessConfig, PromptImage, image_keys, mmproj_files_beside,
    overlay_key, preprocess_config_in,
};
use crate::parser::{Event, Parsed, ToolCall};
use crate::prompt_cache::PromptCache;
pub use crate::request::{EngineError, FinishReason, Flow, GenerateOptions};
use crate::sampler::SamplingParams;
use crate::speculative::DraftConfig;
use crate::template::{ChatTemplate, special_tokens_from_config};
use crate::tokenizer::Tokenizer;

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
    /// The built-in demo model.
    pub is_demo: bool,
    /// Speculative decoding with the model's MTP head (`--draft`, `--draft-max`).
    pub draft: DraftConfig,
    /// How images are read, when the model has a vision tower (`preprocessor_config.json`,
    /// or the Qwen processor's defaults).
    pub images: Option<ImageOptions>,
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
        let images = match model.vision {
            None => None,
            Some(_) => Some(ImageOptions {
                preprocess: preprocess_config_in(dir).map_err(EngineError::Image)?,
                limits: DecodeLimits::default(),
            }),
        };
        Ok(ModelBundle {
            name: dir.display().to_string(),
            model,
            tokenizer,
            template,
            defaults,
            stop_ids,
            is_demo: false,
            draft: DraftConfig::default(),
            images,
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
        let mut bundle = ModelBundle {
            name: path.display().to_string(),
            model,
            tokenizer,
            template,
            defaults,
            stop_ids,
            is_demo: false,
            draft: DraftConfig::default(),
            images: None,
        };
        // A llama.cpp-style `mmproj*.gguf` beside the model brings its vision tower; one that
        // does not fit leaves the model text-only (`--mmproj` names one and then must load).
        if let [mmproj] = &mmproj_files_beside(path)[..]
            && let Err(e) = bundle.attach_mmproj(mmproj)
        {
            tracing::warn!(mmproj = %mmproj.display(), error = %e, "vision tower not loaded");
        }
        Ok(bundle)
    }

    /// Gives the model the vision tower of a llama.cpp `mmproj` GGUF file (`--mmproj`).
    pub fn attach_mmproj(&mut self, path: &Path) -> Result<(), EngineError> {
        let image_token = self.tokenizer.token_id("<|image_pad|>").ok_or_else(|| {
            EngineError::Image(format!(
                "{}: the model's tokenizer has no <|image_pad|> token",
                path.display()
            ))
        })?;
        let file =
            qinfer_formats::gguf::GgufFile::open(path).map_err(|e| EngineError::Load(e.into()))?;
        self.model.load_mmproj(&file, image_token)?;
        let mut preprocess = PreprocessConfig::qwen35();
        if let Some((mean, std)) = qinfer_model::gguf::mmproj_image_norm(&file) {
            preprocess.mean = mean;
            preprocess.std = std;
        }
        let c = &self.model.vision.as_ref().expect("just loaded").config;
        preprocess.patch_size = c.patch;
        preprocess.merge_size = c.merge;
        preprocess.temporal_patch_size = c.temporal_patch;
        self.images = Some(ImageOptions {
            preprocess,
            limits: DecodeLimits::default(),
        });
        Ok(())
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
        let mut model = crate::demo::demo_model();
        let tower = crate::demo::demo_vision_tower(model.config.hidden, model.config.vocab)
            .map_err(EngineError::Image)?;
        model.attach_vision(tower)?;
        Ok(ModelBundle {
            name: crate::demo::DEMO_NAME.to_string(),
            model,
            tokenizer,
            template: Some(template),
            // A small model: Qwen's lower-temperature preset without a presence penalty.
            defaults: SamplingParams::preset("thinking-coding")?,
            stop_ids,
            is_demo: true,
            draft: DraftConfig::default(),
            images: Some(ImageOptions {
                preprocess: PreprocessConfig::qwen35(),
                limits: DecodeLimits::default(),
            }),
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

    /// The model and tokenizer as the engine loop runs them.
    pub fn engine_model(&self) -> EngineModel<'_> {
        EngineModel {
            model: &self.model,
            tokenizer: Some(&self.tokenizer),
            stop_ids: &self.stop_ids,
            draft: self.draft,
        }
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
    /// `(index, key)` of the image tokens among `tokens` (an image-pad token is the same id
    /// whatever the image: the key says which).
    image_keys: Vec<(usize, KeyElem)>,
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
            image_keys: Vec::new(),
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
            image_keys: Vec::new(),
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
    fn resume(
        &mut self,
        model: &Qwen35,
        prompt: &[u32],
        images: &[(usize, KeyElem)],
    ) -> (usize, Option<Miss>) {
        let local = self.reuse_keyed(model, prompt, images);
        let Some(cache) = self.cache.clone() else {
            return (local, None);
        };
        if local + 1 >= prompt.len() || (local > 0 && local == self.tokens.len()) {
            // Nothing to gain, or the prompt extends this very sequence.
            return (local, None);
        }
        let found = cache.admit_key(&overlay_key(prompt, images));
        if found.cached <= local {
            return (local, None);
        }
        self.state = found.state;
        self.tokens = prompt[..found.cached].to_vec();
        self.image_keys = images
            .iter()
            .copied()
            .filter(|(i, _)| *i < found.cached)
            .collect();
        self.marks.clear();
        (found.cached, found.miss)
    }

    /// Rewinds to the longest reusable prefix of `prompt`; returns how many of its tokens are
    /// already in the state. Always leaves at least one token to process, since the logits of
    /// the prompt's last position are needed.
    pub fn reuse(&mut self, model: &Qwen35, prompt: &[u32]) -> usize {
        self.reuse_keyed(model, prompt, &[])
    }

    /// [`Sequence::reuse`] for a prompt whose image tokens are `images` (`(index, key)`): a
    /// prefix is reusable only if its images are the same too.
    fn reuse_keyed(
        &mut self,
        model: &Qwen35,
        prompt: &[u32],
        images: &[(usize, KeyElem)],
    ) -> usize {
        let held = std::mem::take(&mut self.image_keys);
        let within = |keys: &[(usize, KeyElem)], n: usize| -> Vec<(usize, KeyElem)> {
            keys.iter().copied().filter(|(i, _)| *i < n).collect()
        };
        let extends = |n: usize, tokens: &[u32]| {
            n < prompt.len()
                && n <= tokens.len()
                && prompt[..n] == tokens[..n]
                && within(images, n) == within(&held, n)
        };
        if !self.tokens.is_empty() && extends(self.tokens.len(), &self.tokens) {
            self.image_keys = held;
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
                self.image_keys = within(&held, n);
                self.marks.retain(|(m, _)| *m <= n);
                return n;
            }
        }
        self.reset(model);
        0
    }
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
    /// What MTP drafts did (all zero when the sequence did not draft).
    pub drafts: crate::speculative::DraftStats,
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

/// Generates after `prompt` in `seq`, reporting parser events as they happen: one request
/// through the engine loop, on the calling thread, starting from (and handing back) `seq`'s
/// state.
pub fn generate(
    bundle: &ModelBundle,
    seq: &mut Sequence,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_event: &mut dyn FnMut(&Event) -> Flow,
) -> Result<Generation, EngineError> {
    generate_with_images(bundle, seq, prompt, &[], opts, on_event)
}

/// [`generate`] for a prompt with images, each at its run of image-pad tokens
/// ([`crate::images::expand_image_pads`]). A sequence reuses a prefix only where its images
/// are the same ones.
pub fn generate_with_images(
    bundle: &ModelBundle,
    seq: &mut Sequence,
    prompt: &[u32],
    images: &[PromptImage],
    opts: &GenerateOptions,
    on_event: &mut dyn FnMut(&Event) -> Flow,
) -> Result<Generation, EngineError> {
    opts.sampling.validate()?;
    let keys = image_keys(&bundle.model, images).map_err(EngineError::Image)?;
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
            hint: model.config.context_hint(),
        });
    }
    let arrived = Instant::now();
    let (reused, cache_miss) = seq.resume(model, prompt, &keys);
    // The state travels with the request and comes back at its end; meanwhile the sequence
    // holds an empty placeholder.
    let state = std::mem::replace(&mut seq.state, SequenceState::from_layers(Vec::new(), 0));
    let mut request = Request::new(prompt.to_vec(), opts.clone(), ());
    request.images = images.to_vec();
    request.arrived = arrived;
    request.start = Some(Start {
        state,
        cached: reused,
    });
    let cache = CacheHook::new(seq.cache.clone());
    let (ended, summary) = match run_one(bundle.engine_model(), cache, request, on_event) {
        Ok(done) => done,
        Err(e) => {
            // The state went down with the request: start over rather than keep a state that
            // no longer matches `tokens`.
            seq.reset(model);
            return Err(e);
        }
    };
    match ended.sequence {
        Some(kept) => {
            seq.state = kept.state;
            seq.tokens = kept.tokens;
            seq.image_keys = keys
                .into_iter()
                .filter(|(i, _)| *i < seq.tokens.len())
                .collect();
            if let Some(snapshot) = kept.prompt_end {
                seq.push_mark(snapshot);
            }
        }
        None => seq.reset(model),
    }
    Ok(Generation {
        ids: ended.ids,
        text: ended.text,
        parsed: ended.parsed,
        finish: summary.finish,
        prompt_tokens: prompt.len(),
        reused_tokens: reused,
        cache_miss,
        reasoning_tokens: summary.reasoning_tokens,
        prefill_time: summary.prefill_time,
        decode_time: summary.decode_time,
        drafts: summary.drafts,
    })
}

/// Runs one request through an engine on the calling thread until it ends, its parser events
/// going to `on_event` as they come (`Flow::Cancel` stops it after the current token).
/// Returns what it produced and its accounting.
pub fn run_one(
    model: EngineModel<'_>,
    cache: CacheHook,
    request: Request<()>,
    on_event: &mut dyn FnMut(&Event) -> Flow,
) -> Result<(Ended, Summary), EngineError> {
    let mut outcome = Outcome::default();
    let mut engine = Engine::new(model, SchedulerConfig::lone(), cache, Arc::default());
    engine.submit(request.with_sink(Callback {
        on_event,
        outcome: &mut outcome,
    }));
    engine.run_until_idle();
    drop(engine);
    match (outcome.ended, outcome.summary) {
        (Some(ended), Some(summary)) => Ok((ended, summary)),
        _ => {
            Err(EngineError::Failed(outcome.failed.unwrap_or_else(|| {
                "the request ended without a result".into()
            })))
        }
    }
}

/// What [`run_one`]'s request left behind.
#[derive(Default)]
struct Outcome {
    /// The callback asked to stop.
    cancelled: bool,
    ended: Option<Ended>,
    summary: Option<Summary>,
    failed: Option<String>,
}

/// [`run_one`]'s sink: parser events to the caller's callback as they come.
struct Callback<'c> {
    on_event: &'c mut dyn FnMut(&Event) -> Flow,
    outcome: &'c mut Outcome,
}

impl Sink for Callback<'_> {
    fn send(&mut self, out: Out) -> Result<(), Gone> {
        match out {
            Out::Token { events, .. } => {
                // Every event of the token reaches the callback, even after one asks to stop.
                for e in &events {
                    if (self.on_event)(e) == Flow::Cancel {
                        self.outcome.cancelled = true;
                    }
                }
            }
            Out::Done(summary) => self.outcome.summary = Some(summary),
            Out::Failed(message) => self.outcome.failed = Some(message),
        }
        if self.outcome.cancelled {
            Err(Gone)
        } else {
            Ok(())
        }
    }

    fn is_closed(&self) -> bool {
        self.outcome.cancelled
    }

    fn ended(&mut self, ended: Ended) {
        self.outcome.ended = Some(ended);
    }
}
