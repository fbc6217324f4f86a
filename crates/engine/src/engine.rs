//! The engine loop: the one place where the model, the sampler, stop conditions, reasoning
//! budgets and the prompt cache meet. Every client drives the model through it: the server's
//! engine thread ([`crate::scheduler`]), [`generate`](crate::generate::generate) (`qinfer run`,
//! `qinfer generate`), the CLI's ids-only path and `qinfer bench`.
//!
//! The loop speaks *tokens per sequence per step*. Each [`Engine::step`] builds one plan:
//!
//! * every decoding sequence gets 1 token (the one it sampled last step);
//! * sequences still in their prompt get a chunk of it, up to the next multiple of
//!   `prefill_chunk` (counted in absolute positions), while the step's token budget lasts;
//!
//! then runs the plan as one [`Qwen35::step`] (the matmuls over all rows at once) and hands
//! each logits row to that sequence's [`Decoder`]. Prefill and decode are properties of the
//! plan, not separate code paths; new requests join at any step, finished ones leave.
//!
//! Scheduler invariant: a sequence's chunk boundaries depend only on its own positions, never on
//! what else is in the batch, and the batched forward computes each row like a lone forward.
//! So a request's tokens are the same whether it runs alone or among 15 others.
//!
//! Scheduler invariant: `Running.tokens` lists exactly the tokens in `Running.state`
//! (`state.pos() == tokens.len()`); the last sampled token waits in `pending` until fed.
//!
//! The loop knows no threads and no channels: a request reports through its [`Sink`]. A sink
//! that is gone (a disconnected client, a callback that asked to stop) cancels the request,
//! which frees its sequence at once or at the start of the next step.
//!
//! Admission and completion go through [`CacheHook::admit`] and [`CacheHook::release`]: the
//! one place where the prompt cache ([`PromptCache`]) supplies a sequence's starting state and
//! takes the final state back. With the cache on, prompt chunks also end at the cache's
//! snapshot points (chunk-aligned positions), where the state is stored. A request may instead
//! bring its own starting state ([`Start`]: `qinfer run`'s multi-turn sequence); it gets the
//! sequence back at the end ([`Ended::sequence`]) with its last emitted token fed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use qinfer_cache::{KeyElem, SequenceState, Snapshot};
use qinfer_model::{DeltaNetPath, Position3, Qwen35, Rows, Span, SpanInput};
use qinfer_tensor::Mat;

use crate::counters::Counters;
use crate::decode::{Decoder, Step, TokenLogprob};
use crate::images::{PromptImage, Spliced};
use crate::parser::{Event, Finished, Parsed};
use crate::prompt_cache::PromptCache;
use crate::request::{EngineError, FinishReason, Flow, GenerateOptions};
use crate::speculative::{
    DraftConfig, DraftStats, Drafter, PREFILL_WINDOW, ProposeItem, StepTimes, propose,
};
use crate::tokenizer::Tokenizer;

/// Limits of the engine.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Sequences that hold a slot at once (prefilling or decoding).
    pub max_seqs: usize,
    /// Requests that may wait for a slot; one more is refused (429).
    pub max_queue: usize,
    /// Tokens one step may carry (decode tokens + prefill chunks).
    pub max_step_tokens: usize,
    /// Prompts are processed in chunks ending at multiples of this many positions.
    pub prefill_chunk: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_seqs: 16,
            max_queue: 64,
            max_step_tokens: 512,
            prefill_chunk: 512,
        }
    }
}

impl SchedulerConfig {
    /// One sequence at a time, its prompt in one chunk (cut only at the prompt cache's
    /// snapshot points): a lone generation has no other sequence waiting for a turn, and the
    /// model runs long spans in bounded pieces itself.
    pub fn lone() -> Self {
        SchedulerConfig {
            max_seqs: 1,
            max_queue: usize::MAX,
            max_step_tokens: usize::MAX,
            prefill_chunk: usize::MAX,
        }
    }
}

/// What the loop runs: the model and, for text, its tokenizer.
#[derive(Clone, Copy, Debug)]
pub struct EngineModel<'a> {
    pub model: &'a Qwen35,
    /// `None`: token ids only (a checkpoint without a tokenizer): no text, parser, stop
    /// strings, reasoning budget or JSON mode.
    pub tokenizer: Option<&'a Tokenizer>,
    /// Ids that end generation unless a request sets `ignore_eos`.
    pub stop_ids: &'a [u32],
    /// Speculative decoding with the model's MTP head (when it has one).
    pub draft: DraftConfig,
}

impl<'a> EngineModel<'a> {
    /// A model without a tokenizer; its requests name their stop ids themselves.
    pub fn ids_only(model: &'a Qwen35) -> Self {
        EngineModel {
            model,
            tokenizer: None,
            stop_ids: &[],
            draft: DraftConfig::default(),
        }
    }
}

/// One generation request.
#[derive(Debug)]
pub struct Request<S> {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    /// Per-token log-probabilities with this many alternatives.
    pub logprobs: Option<usize>,
    /// Tokens forced where the answer starts (a required or named tool call).
    pub answer_prefix: Option<Vec<u32>>,
    /// The rendered prompt text, so the prompt cache can remember the exact ids of prompt +
    /// answer ([`PromptCache::remember`]).
    pub prompt_text: Option<String>,
    /// When the request arrived (time to first token, prefill time).
    pub arrived: Instant,
    /// The caller's own starting state; `None`: the prompt cache (or a fresh state).
    pub start: Option<Start>,
    /// The prompt's images, in order, each at its run of image-pad tokens
    /// ([`crate::images::expand_image_pads`]); through the vision tower after admission, a
    /// block per step.
    pub images: Vec<PromptImage>,
    /// Where the engine reports.
    pub sink: S,
}

impl<S> Request<S> {
    /// A request for `prompt` arriving now, starting wherever the prompt cache has it.
    pub fn new(prompt: Vec<u32>, opts: GenerateOptions, sink: S) -> Self {
        Request {
            prompt,
            opts,
            logprobs: None,
            answer_prefix: None,
            prompt_text: None,
            arrived: Instant::now(),
            start: None,
            images: Vec::new(),
            sink,
        }
    }

    /// The same request, reporting to `sink`.
    pub fn with_sink<T>(self, sink: T) -> Request<T> {
        Request {
            prompt: self.prompt,
            opts: self.opts,
            logprobs: self.logprobs,
            answer_prefix: self.answer_prefix,
            prompt_text: self.prompt_text,
            arrived: self.arrived,
            start: self.start,
            images: self.images,
            sink,
        }
    }
}

/// A starting state a request brings: it holds the first `cached` prompt tokens.
#[derive(Debug)]
pub struct Start {
    pub state: SequenceState,
    /// Leading prompt tokens already in `state` (fewer than the prompt).
    pub cached: usize,
}

/// How the prompt cache served a prompt (reported when the request is admitted).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    pub cached_tokens: usize,
    /// Why cached tokens are computed again, e.g. `first differing token at position 812`.
    pub miss: Option<String>,
}

/// What the engine tells a request, in order: any number of `Token`, then `Done` or `Failed`.
#[derive(Debug)]
pub enum Out {
    /// One generated token: the raw text it completed (after stop strings), the parser events
    /// that text completed, and its log-probability.
    Token {
        text: String,
        events: Vec<Event>,
        logprob: Option<TokenLogprob>,
    },
    /// The end, with accounting.
    Done(Summary),
    /// The engine could not run the request.
    Failed(String),
}

/// Accounting of a finished request.
#[derive(Clone, Debug)]
pub struct Summary {
    pub finish: FinishReason,
    pub parser: Finished,
    pub prompt_tokens: usize,
    /// Prompt tokens whose state came from the prefix cache.
    pub cached_tokens: usize,
    /// Why prompt tokens the cache had seen were computed again.
    pub cache_miss: Option<String>,
    pub completion_tokens: usize,
    pub reasoning_tokens: usize,
    /// From arrival to the end of the prompt.
    pub prefill_time: Duration,
    /// From the end of the prompt to the end.
    pub decode_time: Duration,
    /// Speculative decoding ([`crate::speculative`]): what the drafts did for this request.
    pub drafts: DraftStats,
}

/// What a finished request produced, handed to [`Sink::ended`] just before [`Out::Done`].
#[derive(Debug)]
pub struct Ended {
    /// Generated ids (forced tokens included, the stop token excluded).
    pub ids: Vec<u32>,
    /// Their text, up to a stop string.
    pub text: String,
    pub parsed: Parsed,
    /// Bytes of the sequence's state at the end.
    pub state_bytes: usize,
    /// The sequence, for a request that brought its own state ([`Request::start`]).
    pub sequence: Option<HandBack>,
}

/// A sequence handed back: its tokens, the state holding exactly them (the last emitted token
/// fed), and a snapshot at the end of the prompt.
#[derive(Debug)]
pub struct HandBack {
    pub tokens: Vec<u32>,
    pub state: SequenceState,
    pub prompt_end: Option<Snapshot>,
}

/// The receiver of a request is gone; the request is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

/// Where the engine reports a request's progress: a channel to an HTTP task, a callback.
pub trait Sink {
    /// Reports `out`; `Err(Gone)` cancels the request.
    fn send(&mut self, out: Out) -> Result<(), Gone>;
    /// Whether the receiver is gone; a request whose sink is closed is cancelled at the start
    /// of the next step.
    fn is_closed(&self) -> bool;
    /// How the request's prompt was served, once it holds a slot.
    fn admitted(&mut self, _admission: &Admission) {}
    /// What the request produced, before its [`Out::Done`].
    fn ended(&mut self, _ended: Ended) {}
}

/// The prefix-cache hook: the prompt cache when there is one, else always fresh.
#[derive(Clone, Debug, Default)]
pub struct CacheHook {
    cache: Option<Arc<PromptCache>>,
}

/// A sequence's starting point.
#[derive(Debug)]
pub struct Admitted {
    pub state: SequenceState,
    /// Leading prompt tokens already in `state` (always fewer than the prompt).
    pub cached_tokens: usize,
    /// Why cached tokens are computed again, if they are.
    pub miss: Option<String>,
}

impl CacheHook {
    pub fn new(cache: Option<Arc<PromptCache>>) -> Self {
        CacheHook { cache }
    }

    /// The initial state for a prompt of key `key` and how many of its positions it already
    /// covers.
    pub fn admit(&self, model: &Qwen35, key: &[KeyElem]) -> Admitted {
        match &self.cache {
            Some(c) => {
                let found = c.admit_key(key);
                Admitted {
                    state: found.state,
                    cached_tokens: found.cached,
                    miss: found.miss.map(|m| m.to_string()),
                }
            }
            None => Admitted {
                state: model.new_state(),
                cached_tokens: 0,
                miss: None,
            },
        }
    }

    /// The next snapshot point of a sequence at `fed` of `prompt_len`: a prompt chunk ends
    /// there.
    fn next_cut(&self, fed: usize, prompt_len: usize) -> Option<usize> {
        if fed >= prompt_len {
            return None;
        }
        self.cache
            .as_ref()?
            .snapshot_points(fed, prompt_len)
            .first()
            .copied()
    }

    /// A prompt chunk ended at `key.len()`: stores the state there if it is a snapshot point
    /// or the prompt's end; counts the tokens computed.
    fn prefilled(
        &self,
        key: &[KeyElem],
        state: &SequenceState,
        computed: usize,
        prompt_len: usize,
    ) {
        let Some(c) = &self.cache else { return };
        c.record_processed(computed);
        let end = key.len();
        let start = end - computed;
        if end == prompt_len || c.snapshot_points(start, prompt_len).contains(&end) {
            c.complete_key(key, state);
        }
    }

    /// Takes in a finished (or cancelled) sequence: the key of its positions and the state
    /// holding them.
    pub fn release(&self, key: &[KeyElem], state: &SequenceState) {
        debug_assert_eq!(key.len(), state.pos());
        if let Some(c) = &self.cache {
            c.complete_key(key, state);
        }
    }

    /// Remembers the exact ids of a prompt + answer text (see [`PromptCache::remember`]).
    fn remember(&self, text: String, ids: Vec<u32>) {
        if let Some(c) = &self.cache {
            c.remember(text, ids);
        }
    }
}

struct Running<S> {
    prompt: Vec<u32>,
    /// The prompt's images (embeddings, positions, key), when it has any.
    images: Option<Spliced>,
    /// This step's image rows (relative indices, embeddings) and mRoPE positions, for a
    /// sequence with images.
    step_at: Vec<usize>,
    step_rows: Mat,
    step_positions: Vec<Position3>,
    /// Tokens in `state`.
    tokens: Vec<u32>,
    state: SequenceState,
    cached_tokens: usize,
    cache_miss: Option<String>,
    prompt_text: Option<String>,
    decoder: Decoder,
    /// The last sampled token, to be fed next step.
    pending: Option<u32>,
    /// The MTP draft model's state, when the sequence drafts.
    drafter: Option<Drafter>,
    /// What a decode step feeds: the pending token, then the drafts.
    feed: Vec<u32>,
    /// The sequence goes back to the request at the end (it came with its own state).
    hand_back: bool,
    /// Only feeding `pending` is left (a hand-back sequence whose decoder has finished).
    ending: bool,
    prompt_end: Option<Snapshot>,
    sink: S,
    arrived: Instant,
    prefilled: Option<Instant>,
    last_token: Option<Instant>,
}

/// What a planned item runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Prefill { end: usize },
    Decode,
}

/// What the planner sees of a running sequence.
#[derive(Clone, Copy, Debug)]
struct SeqView {
    /// Tokens in its state.
    fed: usize,
    /// Prompt length.
    prompt: usize,
    /// A sampled token waits to be fed.
    pending: bool,
    /// Where the prompt cache wants the next chunk to end (a snapshot point), if before the
    /// next multiple of `prefill_chunk`.
    cut: Option<usize>,
}

/// One step's plan, in `seqs` order: one token for every decoding sequence, then prompt
/// chunks (each up to the next multiple of `prefill_chunk` positions) while the step budget
/// lasts; the first chunk always fits, so prefill never starves.
fn plan_step(seqs: &[SeqView], config: &SchedulerConfig) -> Vec<(usize, Work)> {
    let mut plan = Vec::new();
    let mut budget = config.max_step_tokens;
    for (i, s) in seqs.iter().enumerate() {
        if s.fed >= s.prompt && s.pending {
            plan.push((i, Work::Decode));
            budget = budget.saturating_sub(1);
        }
    }
    let chunk = config.prefill_chunk.max(1);
    let mut prefilled = false;
    for (i, s) in seqs.iter().enumerate() {
        if s.fed >= s.prompt {
            continue;
        }
        let end = s.prompt.min((s.fed / chunk + 1).saturating_mul(chunk));
        let end = s.cut.map_or(end, |c| c.min(end));
        let n = end - s.fed;
        if n > budget && prefilled {
            break;
        }
        plan.push((i, Work::Prefill { end }));
        budget = budget.saturating_sub(n);
        prefilled = true;
    }
    // Batch items (and so logits rows) come in `seqs` order; the plan must too.
    plan.sort_unstable_by_key(|&(i, _)| i);
    plan
}

/// The engine: a queue of requests, the running sequences, and the step that advances them.
/// Run it on one thread: the server's engine thread, or the caller's own for a lone request.
pub struct Engine<'a, S> {
    model: EngineModel<'a>,
    config: SchedulerConfig,
    counters: Arc<Counters>,
    queue: VecDeque<Request<S>>,
    running: Vec<Running<S>>,
    cache: CacheHook,
    /// Measured costs of speculative steps.
    times: StepTimes,
}

impl<S> std::fmt::Debug for Engine<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .field("queued", &self.queue.len())
            .field("running", &self.running.len())
            .finish_non_exhaustive()
    }
}

impl<'a, S: Sink> Engine<'a, S> {
    pub fn new(
        model: EngineModel<'a>,
        config: SchedulerConfig,
        cache: CacheHook,
        counters: Arc<Counters>,
    ) -> Self {
        Engine {
            model,
            config,
            counters,
            queue: VecDeque::new(),
            running: Vec::new(),
            cache,
            times: StepTimes::default(),
        }
    }

    /// Queues a request; it is admitted when a slot is free.
    pub fn submit(&mut self, req: Request<S>) {
        self.counters.queue_depth.fetch_add(1, Ordering::SeqCst);
        self.enqueue(req);
    }

    /// Queues a request already counted in `queue_depth` (by [`crate::scheduler`]).
    pub(crate) fn enqueue(&mut self, req: Request<S>) {
        self.queue.push_back(req);
    }

    /// Nothing queued, nothing running.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.running.is_empty()
    }

    /// Steps until every request has ended.
    pub fn run_until_idle(&mut self) {
        while !self.is_idle() {
            self.step();
        }
    }

    /// Refuses a request counted in `queue_depth`.
    pub(crate) fn refuse(&self, mut req: Request<S>, message: &str) {
        self.counters.queue_depth.fetch_sub(1, Ordering::SeqCst);
        let _ = req.sink.send(Out::Failed(message.into()));
    }

    /// Refuses every queued request.
    pub(crate) fn refuse_queued(&mut self, message: &str) {
        for req in std::mem::take(&mut self.queue) {
            self.refuse(req, message);
        }
    }

    /// Cancels every running sequence.
    pub(crate) fn cancel_running(&mut self) {
        for mut s in std::mem::take(&mut self.running) {
            s.decoder.cancel();
            self.finish(s);
        }
        self.publish_gauges();
    }

    /// One step: frees cancelled sequences, admits queued requests into free slots, and runs
    /// one planned [`Qwen35::step`] over the running sequences.
    pub fn step(&mut self) {
        self.drop_closed();
        self.admit();
        self.encode_images();
        self.publish_gauges();
        if !self.running.is_empty() {
            self.run_plan();
            self.publish_gauges();
        }
    }

    fn drop_closed(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|r| !r.sink.is_closed());
        let gone = before - self.queue.len();
        if gone > 0 {
            self.counters
                .queue_depth
                .fetch_sub(gone as u64, Ordering::SeqCst);
            Counters::add(&self.counters.cancelled, gone);
        }
        let mut i = 0;
        while i < self.running.len() {
            let s = &mut self.running[i];
            if s.ending || !s.sink.is_closed() {
                i += 1;
                continue;
            }
            tracing::info!(
                generated = s.decoder.ids.len(),
                "receiver gone; sequence freed"
            );
            Counters::add(&self.counters.cancelled, 1);
            s.decoder.cancel();
            if s.hand_back && s.pending.is_some() {
                s.ending = true;
                i += 1;
            } else {
                let s = self.running.swap_remove(i);
                self.finish(s);
            }
        }
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_seqs {
            let Some(mut req) = self.queue.pop_front() else {
                break;
            };
            self.counters.queue_depth.fetch_sub(1, Ordering::SeqCst);
            let m = self.model;
            if req.prompt.is_empty() {
                let _ = req
                    .sink
                    .send(Out::Failed(EngineError::EmptyPrompt.to_string()));
                continue;
            }
            let decoder = match Decoder::new(
                m.tokenizer,
                m.stop_ids,
                &req.prompt,
                &req.opts,
                req.logprobs,
            ) {
                Ok(mut d) => {
                    if let Some(prefix) = req.answer_prefix.take() {
                        d.force_answer_prefix(prefix);
                    }
                    d
                }
                Err(e) => {
                    let _ = req.sink.send(Out::Failed(e.to_string()));
                    continue;
                }
            };
            let mut images = if req.images.is_empty() {
                None
            } else {
                match Spliced::prepare(m.model, &req.prompt, &req.images) {
                    Ok(sp) => Some(sp),
                    Err(e) => {
                        let _ = req.sink.send(Out::Failed(e));
                        continue;
                    }
                }
            };
            let hand_back = req.start.is_some();
            let (state, cached_tokens, miss) = match req.start.take() {
                Some(Start { state, cached }) => {
                    if cached >= req.prompt.len() || state.pos() != cached {
                        let _ = req.sink.send(Out::Failed(format!(
                            "a starting state of {} positions cannot hold {cached} of {} \
                             prompt tokens",
                            state.pos(),
                            req.prompt.len()
                        )));
                        continue;
                    }
                    (state, cached, None)
                }
                None => {
                    let key = key_of(images.as_ref(), &req.prompt);
                    let a = self.cache.admit(m.model, &key);
                    let cached = a.cached_tokens.min(req.prompt.len() - 1);
                    (a.state, cached, a.miss)
                }
            };
            if let Some(sp) = images.as_mut()
                && let Err(e) = sp.begin(m.model, &req.images, cached_tokens)
            {
                let _ = req.sink.send(Out::Failed(e));
                continue;
            }
            req.sink.admitted(&Admission {
                cached_tokens,
                miss: miss.clone(),
            });
            Counters::add(&self.counters.generations, 1);
            Counters::add(&self.counters.prompt_tokens, req.prompt.len());
            Counters::add(&self.counters.cached_prompt_tokens, cached_tokens);
            let tokens = req.prompt[..cached_tokens].to_vec();
            // MTP drafts take text positions: a prompt with images decodes without them.
            let drafts = m.draft.mtp && m.draft.max > 0 && m.model.has_mtp() && images.is_none();
            self.running.push(Running {
                prompt: req.prompt,
                images,
                step_at: Vec::new(),
                step_rows: Mat::zeros(0, 0),
                step_positions: Vec::new(),
                tokens,
                state,
                cached_tokens,
                cache_miss: miss,
                prompt_text: req.prompt_text,
                decoder,
                pending: None,
                drafter: drafts.then(|| {
                    let max = m.draft.max.min(DraftConfig::LIMIT);
                    Drafter::new(m.model, cached_tokens, max)
                }),
                feed: Vec::new(),
                hand_back,
                ending: false,
                prompt_end: None,
                sink: req.sink,
                arrived: req.arrived,
                prefilled: None,
                last_token: None,
            });
        }
    }

    /// One step of the vision tower for the first sequence whose images are being encoded: a
    /// block at a time, between the model's steps, so a large image does not stall the other
    /// sequences for its whole encoding (the sequence's prompt waits until its images are
    /// done).
    fn encode_images(&mut self) {
        let model = self.model.model;
        let Some(i) = self
            .running
            .iter()
            .position(|s| s.images.as_ref().is_some_and(Spliced::encoding))
        else {
            return;
        };
        let s = &mut self.running[i];
        if let Some(Err(e)) = s.images.as_mut().map(|sp| sp.advance(model)) {
            self.remove_failed(&[i], &e);
        }
    }

    fn publish_gauges(&self) {
        let c = &self.counters;
        c.running
            .store(self.running.len() as u64, Ordering::Relaxed);
        let bytes: usize = self
            .running
            .iter()
            .map(|s| s.state.bytes() + s.drafter.as_ref().map_or(0, Drafter::bytes))
            .sum();
        c.state_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    /// The plan: `(index in running, work)` per scheduled sequence.
    fn plan(&self) -> Vec<(usize, Work)> {
        let views: Vec<SeqView> = self
            .running
            .iter()
            .map(|s| SeqView {
                fed: s.tokens.len(),
                // A prompt whose images are in the tower waits whole (prefilling up to them
                // would cut it where a cold prefill does not).
                prompt: match &s.images {
                    Some(sp) if sp.encoding() => s.tokens.len(),
                    _ => s.prompt.len(),
                },
                pending: s.pending.is_some(),
                cut: self.cache.next_cut(s.tokens.len(), s.prompt.len()),
            })
            .collect();
        plan_step(&views, &self.config)
    }

    fn run_plan(&mut self) {
        let plan = self.plan();
        if plan.is_empty() {
            // Every running sequence has a prompt chunk or a pending token, unless its
            // images are still in the tower (`encode_images` advances them each step).
            return;
        }
        let model = self.model.model;
        let mut planned: Vec<Option<Work>> = vec![None; self.running.len()];
        for &(i, w) in &plan {
            planned[i] = Some(w);
        }
        let mut step_tokens = 0;
        let result = {
            let mut spans: Vec<Span<'_>> = Vec::with_capacity(plan.len());
            for (s, work) in self.running.iter_mut().zip(&planned) {
                let Some(work) = work else { continue };
                let span = match *work {
                    // Prompt chunks take the chunked delta rule whatever their length, as a
                    // lone prefill does, so a prompt's numbers do not depend on its cuts.
                    Work::Prefill { end } => {
                        let last = end == s.prompt.len();
                        let hidden = match s.drafter {
                            Some(_) => Rows::Tail(PREFILL_WINDOW),
                            None => Rows::None,
                        };
                        let fed = s.tokens.len();
                        let span = match &s.images {
                            None => Span::tokens(&s.prompt[fed..end], &mut s.state),
                            Some(sp) => {
                                (s.step_at, s.step_rows) = sp.slice(fed..end);
                                Span {
                                    input: SpanInput::Spliced {
                                        tokens: &s.prompt[fed..end],
                                        at: &s.step_at,
                                        rows: &s.step_rows,
                                    },
                                    ..Span::tokens(&[], &mut s.state)
                                }
                                .positions(&sp.positions[fed..end])
                            }
                        };
                        span.logits(if last { Rows::Last } else { Rows::None })
                            .hidden(hidden)
                            .delta_rule(DeltaNetPath::Chunked)
                    }
                    Work::Decode => {
                        s.feed.clear();
                        s.feed.push(s.pending.expect("planned decode"));
                        let mut hidden = Rows::None;
                        if let Some(d) = &s.drafter
                            && !s.ending
                        {
                            s.feed.extend_from_slice(&d.drafts);
                            // Drafts never push a step past the context.
                            let room = model.config.max_positions.saturating_sub(s.tokens.len());
                            s.feed.truncate(room.max(1));
                            hidden = Rows::All;
                        }
                        let logits = match (s.ending, s.feed.len()) {
                            (true, _) => Rows::None,
                            (false, 1) => Rows::Last,
                            (false, _) => Rows::All,
                        };
                        let mut span = Span::tokens(&s.feed, &mut s.state);
                        if let Some(sp) = &s.images {
                            s.step_positions = sp.after(s.tokens.len(), s.feed.len());
                            span = span.positions(&s.step_positions);
                        }
                        span.logits(logits)
                            .hidden(hidden)
                            .keep_states(s.feed.len() > 1)
                    }
                };
                step_tokens += span.input.len();
                spans.push(span);
            }
            let before = model.experts_touched();
            let started = Instant::now();
            let result = model.step(&mut spans);
            // A lone decode step times what feeding 1 + drafts tokens costs.
            if let ([(_, Work::Decode)], [span]) = (&plan[..], &spans[..])
                && span.logits != Rows::None
            {
                self.times
                    .observe_step(span.input.len(), started.elapsed().as_secs_f64());
            }
            if let (Some((f0, e0)), Some((f1, e1))) = (before, model.experts_touched())
                && f1 > f0
            {
                self.counters
                    .observe_experts((e1 - e0) as f64 / (f1 - f0) as f64);
            }
            result
        };
        Counters::add(&self.counters.steps, 1);
        Counters::add(&self.counters.step_tokens, step_tokens);
        let rows = match result {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "forward step failed");
                let failed: Vec<usize> = plan.iter().map(|&(i, _)| i).collect();
                self.remove_failed(&failed, &e.to_string());
                return;
            }
        };
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let now = Instant::now();
        for (&(i, work), row) in plan.iter().zip(rows) {
            let s = &mut self.running[i];
            let fed_before = s.tokens.len();
            match work {
                Work::Prefill { end } => {
                    s.tokens.extend_from_slice(&s.prompt[fed_before..end]);
                    Counters::add(&self.counters.processed_prompt_tokens, end - fed_before);
                    let key = key_of(s.images.as_ref(), &s.tokens);
                    self.cache
                        .prefilled(&key, &s.state, end - fed_before, s.prompt.len());
                    if end == s.prompt.len() {
                        s.prefilled = Some(now);
                        if s.hand_back {
                            s.prompt_end = Some(s.state.snapshot());
                        }
                    }
                    if let (Some(d), Some(h)) = (&mut s.drafter, &row.hidden) {
                        d.push_hidden(h, end);
                    }
                }
                Work::Decode if s.ending => {
                    let t = s.pending.take().expect("planned decode");
                    s.tokens.push(t);
                }
                Work::Decode => {}
            }
            if s.ending {
                done.push(i);
                continue;
            }
            let Some(logits) = row.logits else { continue };
            // Walk the logit rows as plain decode steps would, while the decoder's pick is
            // the draft fed after that row.
            let drafts = if work == Work::Decode {
                s.feed.len() - 1
            } else {
                0
            };
            let mut accepted = 0;
            let mut step = Step::Finished { unfed: None };
            for r in 0..logits.rows {
                step = Self::decode_row(&self.counters, s, logits.row(r), now);
                match step {
                    Step::Feed(t) if r < drafts && t == s.feed[r + 1] => accepted += 1,
                    _ => break,
                }
            }
            if work == Work::Decode {
                s.pending = None;
                let keep = 1 + accepted;
                s.tokens.extend_from_slice(&s.feed[..keep]);
                if keep < s.feed.len()
                    && let Err(e) = model.rewind(&mut s.state, fed_before + keep)
                {
                    tracing::error!(error = %e, "rewind after verification failed");
                    failed.push(i);
                    continue;
                }
                if let Some(d) = &mut s.drafter {
                    d.observe(drafts, accepted);
                    Counters::add(&self.counters.drafted_tokens, drafts);
                    Counters::add(&self.counters.accepted_tokens, accepted);
                    if let Some(h) = &row.hidden {
                        d.push_hidden(&h.rows_range(0, keep), fed_before + keep);
                    }
                }
            }
            match step {
                Step::Feed(t) => s.pending = Some(t),
                Step::Finished { unfed: Some(t) } if s.hand_back => {
                    s.pending = Some(t);
                    s.ending = true;
                }
                Step::Finished { .. } => done.push(i),
            }
        }
        let ended: Vec<usize> = done.iter().chain(&failed).copied().collect();
        self.draft(&ended);
        if !failed.is_empty() {
            done.retain(|i| !failed.contains(i));
            self.remove_failed(&failed, "the sequence state could not be rewound");
        }
        // Remove finished sequences, highest index first so indices stay valid.
        done.sort_unstable_by(|a, b| b.cmp(a));
        for i in done {
            let s = self.running.swap_remove(i);
            self.finish(s);
        }
    }

    /// One logit row through a sequence's decoder, as one decode step: the token it picks is
    /// reported to the sink (a receiver gone cancels the sequence).
    fn decode_row(counters: &Counters, s: &mut Running<S>, row: &[f32], now: Instant) -> Step {
        let before = s.decoder.logprobs_out.len();
        let text_before = s.decoder.text.len();
        let mut events = Vec::new();
        let mut step = s.decoder.step(row, &mut |e| {
            events.push(e.clone());
            Flow::Continue
        });
        let emitted = match step {
            Step::Feed(_) | Step::Finished { unfed: Some(_) } => true,
            Step::Finished { unfed: None } => false,
        };
        if emitted {
            Counters::add(&counters.generated_tokens, 1);
            match s.last_token {
                None => counters.observe_ttft(now - s.arrived),
                Some(t) => counters.observe_itl(now - t),
            }
            s.last_token = Some(now);
            let logprob = s.decoder.logprobs_out.get(before).cloned();
            let text = s.decoder.text[text_before..].to_string();
            let sent = s.sink.send(Out::Token {
                text,
                events,
                logprob,
            });
            if sent.is_err() {
                Counters::add(&counters.cancelled, 1);
                s.decoder.cancel();
                if let Step::Feed(t) = step {
                    step = Step::Finished { unfed: Some(t) };
                }
            }
        }
        step
    }

    /// The MTP head's part of a step: every drafting sequence's new positions through it,
    /// and drafts for those decoding next (`ended`: sequences that just ended or failed).
    fn draft(&mut self, ended: &[usize]) {
        let model = self.model.model;
        let mut items = Vec::new();
        let mut owners = Vec::new();
        for (i, s) in self.running.iter_mut().enumerate() {
            let Some(drafter) = s.drafter.as_mut() else {
                continue;
            };
            if ended.contains(&i) || s.ending {
                drafter.drafts.clear();
                continue;
            }
            let fed = s.tokens.len();
            items.push(ProposeItem {
                drafter,
                fed: &s.tokens,
                unfed_prompt: &s.prompt[fed.min(s.prompt.len())..],
                pending: s.pending,
                draft: s.pending.is_some(),
            });
            owners.push(i);
        }
        if items.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = propose(model, &mut items, &self.times, self.model.draft.in_batches);
        if let [item] = &items[..] {
            let made = item.drafter.drafts.len();
            if made > 0 {
                self.times
                    .observe_draft(started.elapsed().as_secs_f64() / made as f64);
            }
        }
        if let Err(e) = result {
            // Drafting is an optimisation: a failure turns it off for these sequences.
            tracing::error!(error = %e, "MTP drafting failed; drafting off");
            drop(items);
            for i in owners {
                self.running[i].drafter = None;
            }
        }
    }

    /// Ends a sequence: flushes its decoder, reports what it produced and the summary, hands
    /// the state to the cache (and back to the request that brought it).
    fn finish(&mut self, mut s: Running<S>) {
        let mut events = Vec::new();
        let text_before = s.decoder.text.len();
        let (finish, parser) = s.decoder.finish(&mut |e| {
            events.push(e.clone());
            Flow::Continue
        });
        let text = s.decoder.text[text_before..].to_string();
        if !events.is_empty() || !text.is_empty() {
            let _ = s.sink.send(Out::Token {
                text,
                events,
                logprob: None,
            });
        }
        let now = Instant::now();
        let prefilled = s.prefilled.unwrap_or(now);
        let summary = Summary {
            finish,
            parser,
            prompt_tokens: s.prompt.len(),
            cached_tokens: s.cached_tokens,
            cache_miss: s.cache_miss.clone(),
            completion_tokens: s.decoder.ids.len(),
            reasoning_tokens: s.decoder.reasoning_tokens,
            prefill_time: prefilled.saturating_duration_since(s.arrived),
            decode_time: now - prefilled,
            drafts: s
                .drafter
                .as_ref()
                .map(|d| d.stats.clone())
                .unwrap_or_default(),
        };
        // The ids the model saw for this prompt + answer, when they spell exactly its text.
        // (A sequence that ended at its token budget never fed its last token: its state ends
        // one token short, and the next turn computes that token again.)
        if let Some(prompt_text) = s.prompt_text.take()
            && let Some(tokenizer) = self.model.tokenizer
            && matches!(summary.finish, FinishReason::Stop(_) | FinishReason::Length)
            && tokenizer
                .decode(&s.decoder.ids, false)
                .is_ok_and(|t| t == s.decoder.text)
        {
            // With images: as the template wrote them (one pad each), which is what the text
            // tokenizes to; a later turn's prompt expands them again.
            let mut ids = match &s.images {
                Some(sp) => sp.collapse(&s.prompt),
                None => s.prompt.clone(),
            };
            ids.extend(&s.decoder.ids);
            self.cache.remember(prompt_text + &s.decoder.text, ids);
        }
        self.cache
            .release(&key_of(s.images.as_ref(), &s.tokens), &s.state);
        let state_bytes = s.state.bytes();
        let sequence = s.hand_back.then(|| HandBack {
            tokens: std::mem::take(&mut s.tokens),
            state: s.state,
            prompt_end: s.prompt_end.take(),
        });
        s.sink.ended(Ended {
            ids: std::mem::take(&mut s.decoder.ids),
            text: std::mem::take(&mut s.decoder.text),
            parsed: std::mem::take(&mut s.decoder.parsed),
            state_bytes,
            sequence,
        });
        let _ = s.sink.send(Out::Done(summary));
    }

    fn remove_failed(&mut self, indices: &[usize], message: &str) {
        let mut indices = indices.to_vec();
        indices.sort_unstable_by(|a, b| b.cmp(a));
        for i in indices {
            let mut s = self.running.swap_remove(i);
            let _ = s.sink.send(Out::Failed(message.to_string()));
            self.cache
                .release(&key_of(s.images.as_ref(), &s.tokens), &s.state);
        }
    }
}

/// The prompt-cache key of a sequence's first `tokens.len()` positions.
fn key_of(images: Option<&Spliced>, tokens: &[u32]) -> Vec<KeyElem> {
    match images {
        Some(sp) => sp.key(tokens),
        None => qinfer_cache::prefix::token_key(tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(fed: usize, prompt: usize, pending: bool) -> SeqView {
        SeqView {
            fed,
            prompt,
            pending,
            cut: None,
        }
    }

    #[test]
    fn a_step_decodes_everyone_and_prefills_aligned_chunks_within_the_budget() {
        let config = SchedulerConfig {
            max_step_tokens: 20,
            prefill_chunk: 8,
            ..SchedulerConfig::default()
        };
        let seqs = [
            view(3, 25, false),  // prefilling: chunk 3..8
            view(30, 25, true),  // decoding
            view(8, 25, false),  // prefilling: chunk 8..16
            view(26, 25, true),  // decoding
            view(0, 100, false), // does not fit any more (2 + 5 + 8 used, 8 > 5 left)
        ];
        let plan = plan_step(&seqs, &config);
        assert_eq!(
            plan,
            [
                (0, Work::Prefill { end: 8 }),
                (1, Work::Decode),
                (2, Work::Prefill { end: 16 }),
                (3, Work::Decode),
            ]
        );
    }

    #[test]
    fn the_first_chunk_always_runs_and_chunks_end_at_the_prompt() {
        let config = SchedulerConfig {
            max_step_tokens: 4,
            prefill_chunk: 16,
            ..SchedulerConfig::default()
        };
        let plan = plan_step(&[view(16, 21, false), view(0, 9, false)], &config);
        assert_eq!(plan, [(0, Work::Prefill { end: 21 })]);
    }

    #[test]
    fn prompt_cache_snapshot_points_end_chunks_early() {
        let config = SchedulerConfig {
            max_step_tokens: 512,
            prefill_chunk: 512,
            ..SchedulerConfig::default()
        };
        let mut v = view(0, 700, false);
        v.cut = Some(128);
        let plan = plan_step(&[v, view(600, 700, false)], &config);
        assert_eq!(
            plan,
            [
                (0, Work::Prefill { end: 128 }),
                (1, Work::Prefill { end: 700 })
            ]
        );
    }

    #[test]
    fn a_lone_sequence_prefills_its_prompt_in_one_chunk() {
        let plan = plan_step(&[view(37, 5000, false)], &SchedulerConfig::lone());
        assert_eq!(plan, [(0, Work::Prefill { end: 5000 })]);
    }
}
