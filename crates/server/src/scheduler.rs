//! Continuous batching on a dedicated engine thread.
//!
//! The scheduler speaks *tokens per sequence per step*. Each step it builds one plan:
//!
//! * every decoding sequence gets 1 token (the one it sampled last step);
//! * sequences still in their prompt get a chunk of it, up to the next multiple of
//!   `prefill_chunk` (counted in absolute positions), while the step's token budget lasts;
//!
//! then runs the plan as one [`Qwen35::step`] (the matmuls over all rows at once)
//! and hands each logits row to that sequence's [`Decoder`]. Prefill and decode are properties
//! of the plan, not separate code paths; new requests join at any step, finished ones leave.
//!
//! Scheduler invariant: a sequence's chunk boundaries depend only on its own positions, never on
//! what else is in the batch, and the batched forward computes each row like a lone forward.
//! So a request's tokens are the same whether it runs alone or among 15 others.
//!
//! Scheduler invariant: `Running.tokens` lists exactly the tokens in `Running.state`
//! (`state.pos() == tokens.len()`); the last sampled token waits in `pending` until fed.
//!
//! Scheduler invariant: the model runs only on the engine thread; HTTP tasks talk to it through
//! a command channel and receive [`Out`] messages on a per-request channel. A closed request
//! channel (the client went away) frees the sequence at the start of the next step.
//!
//! Admission and completion go through [`PrefixCache::admit`] and [`PrefixCache::release`]:
//! the one place where the prompt cache ([`PromptCache`]) supplies a sequence's starting state
//! and takes the final state back. With the cache on, prompt chunks also end at the cache's
//! snapshot points (chunk-aligned positions), where the state is stored.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use qinfer_cache::SequenceState;
use qinfer_engine::decode::{Decoder, Step, TokenLogprob};
use qinfer_engine::generate::{FinishReason, Flow, GenerateOptions, ModelBundle};
use qinfer_engine::parser::{Event, Finished};
use qinfer_engine::prompt_cache::PromptCache;
use qinfer_model::{DeltaNetPath, Qwen35, Rows, Span};
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

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

/// One generation request for the engine.
#[derive(Debug)]
pub struct GenRequest {
    pub prompt: Vec<u32>,
    pub opts: GenerateOptions,
    /// Per-token log-probabilities with this many alternatives.
    pub logprobs: Option<usize>,
    /// Where the engine reports; dropping the receiver cancels the request.
    pub out: UnboundedSender<Out>,
    /// When the HTTP request arrived (for time to first token).
    pub arrived: Instant,
    /// Tokens forced where the answer starts (a required or named tool call).
    pub answer_prefix: Option<Vec<u32>>,
    /// Told how the prompt cache served the prompt, as soon as the request is admitted.
    pub admitted: Option<tokio::sync::oneshot::Sender<Admission>>,
    /// The rendered prompt text, so the prompt cache can remember the exact ids of prompt +
    /// answer ([`PromptCache::remember`]).
    pub prompt_text: Option<String>,
}

/// How the prompt cache served a prompt (sent when the request is admitted).
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
}

/// Why a request was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full; retry later.
    QueueFull,
    /// The server is shutting down.
    ShuttingDown,
}

enum Command {
    Submit(Box<GenRequest>),
    /// Refuse new work; finish what runs.
    Drain,
    /// Cancel everything and stop the thread.
    Stop,
}

/// The handle HTTP tasks hold.
#[derive(Debug, Clone)]
pub struct Scheduler {
    tx: mpsc::Sender<Command>,
    /// Requests submitted and not yet admitted.
    waiting: Arc<AtomicUsize>,
    config: SchedulerConfig,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Submit(_) => "Submit",
            Command::Drain => "Drain",
            Command::Stop => "Stop",
        })
    }
}

impl Scheduler {
    /// Starts the engine thread.
    pub fn start(
        bundle: Arc<ModelBundle>,
        config: SchedulerConfig,
        metrics: Arc<Metrics>,
        prompt_cache: Option<Arc<PromptCache>>,
    ) -> (Scheduler, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let engine = Engine {
            bundle,
            config: config.clone(),
            metrics,
            waiting: waiting.clone(),
            queue: VecDeque::new(),
            running: Vec::new(),
            cache: PrefixCache {
                cache: prompt_cache,
            },
            draining: false,
        };
        let handle = std::thread::Builder::new()
            .name("qinfer-engine".into())
            .spawn(move || engine.run(rx))
            .expect("spawning the engine thread");
        (
            Scheduler {
                tx,
                waiting,
                config,
            },
            handle,
        )
    }

    /// Queues a request, or refuses it when the queue is full.
    pub fn submit(&self, req: GenRequest) -> Result<(), SubmitError> {
        let n = self.waiting.fetch_add(1, Ordering::SeqCst);
        if n >= self.config.max_queue {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull);
        }
        self.tx
            .send(Command::Submit(Box::new(req)))
            .map_err(|_| SubmitError::ShuttingDown)
    }

    /// Stops accepting work; running requests finish.
    pub fn drain(&self) {
        let _ = self.tx.send(Command::Drain);
    }

    /// Cancels everything and ends the engine thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }
}

/// The prefix-cache hook: the prompt cache when the server has one, else always fresh.
#[derive(Debug, Default)]
pub struct PrefixCache {
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

impl PrefixCache {
    /// The initial state for `prompt` and how many of its tokens it already covers.
    pub fn admit(&mut self, model: &Qwen35, prompt: &[u32]) -> Admitted {
        match &self.cache {
            Some(c) => {
                let found = c.admit(prompt);
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

    /// A prompt chunk ended at `tokens.len()`: stores the state there if it is a snapshot
    /// point or the prompt's end; counts the tokens computed.
    fn prefilled(
        &mut self,
        tokens: &[u32],
        state: &SequenceState,
        computed: usize,
        prompt_len: usize,
    ) {
        let Some(c) = &self.cache else { return };
        c.record_processed(computed);
        let end = tokens.len();
        let start = end - computed;
        if end == prompt_len || c.snapshot_points(start, prompt_len).contains(&end) {
            c.complete(tokens, state);
        }
    }

    /// Takes back a finished (or cancelled) sequence: its tokens and the state holding them.
    pub fn release(&mut self, tokens: &[u32], state: SequenceState) {
        debug_assert_eq!(tokens.len(), state.pos());
        if let Some(c) = &self.cache {
            c.complete(tokens, &state);
        }
    }

    /// Remembers the exact ids of a prompt + answer text (see [`PromptCache::remember`]).
    fn remember(&self, text: String, ids: Vec<u32>) {
        if let Some(c) = &self.cache {
            c.remember(text, ids);
        }
    }
}

struct Running {
    prompt: Vec<u32>,
    /// Tokens in `state`.
    tokens: Vec<u32>,
    state: SequenceState,
    cached_tokens: usize,
    cache_miss: Option<String>,
    prompt_text: Option<String>,
    decoder: Decoder,
    /// The last sampled token, to be fed next step.
    pending: Option<u32>,
    out: UnboundedSender<Out>,
    arrived: Instant,
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
        let end = s.prompt.min((s.fed / chunk + 1) * chunk);
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

struct Engine {
    bundle: Arc<ModelBundle>,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    waiting: Arc<AtomicUsize>,
    queue: VecDeque<Box<GenRequest>>,
    running: Vec<Running>,
    cache: PrefixCache,
    draining: bool,
}

impl Engine {
    fn run(mut self, rx: mpsc::Receiver<Command>) {
        loop {
            // Block only when there is nothing to do.
            if self.running.is_empty() && self.queue.is_empty() {
                match rx.recv() {
                    Ok(cmd) => {
                        if !self.command(cmd) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if !self.command(cmd) {
                            return;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        if self.running.is_empty() && self.queue.is_empty() {
                            return;
                        }
                        break;
                    }
                }
            }
            self.drop_disconnected();
            self.admit();
            self.publish_gauges();
            if !self.running.is_empty() {
                self.step();
                self.publish_gauges();
            }
        }
    }

    /// Handles a command; false to stop the thread.
    fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(req) => {
                if self.draining {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    let _ = req
                        .out
                        .send(Out::Failed("the server is shutting down".into()));
                } else {
                    self.queue.push_back(req);
                }
                true
            }
            Command::Drain => {
                self.draining = true;
                for req in self.queue.drain(..) {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    let _ = req
                        .out
                        .send(Out::Failed("the server is shutting down".into()));
                }
                true
            }
            Command::Stop => {
                for req in self.queue.drain(..) {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    let _ = req
                        .out
                        .send(Out::Failed("the server is shutting down".into()));
                }
                let running = std::mem::take(&mut self.running);
                for mut s in running {
                    s.decoder.cancel();
                    self.finish(s);
                }
                self.publish_gauges();
                false
            }
        }
    }

    fn drop_disconnected(&mut self) {
        let before = self.queue.len();
        self.queue.retain(|r| !r.out.is_closed());
        let gone = before - self.queue.len();
        if gone > 0 {
            self.waiting.fetch_sub(gone, Ordering::SeqCst);
            self.metrics
                .cancelled
                .fetch_add(gone as u64, Ordering::Relaxed);
        }
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].out.is_closed() {
                let s = self.running.swap_remove(i);
                tracing::info!(
                    generated = s.decoder.ids.len(),
                    "client disconnected; sequence freed"
                );
                self.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                self.cache.release(&s.tokens, s.state);
            } else {
                i += 1;
            }
        }
    }

    fn admit(&mut self) {
        while self.running.len() < self.config.max_seqs {
            let Some(req) = self.queue.pop_front() else {
                break;
            };
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            let mut req = *req;
            let model = &self.bundle.model;
            let decoder = match Decoder::new(
                &self.bundle.tokenizer,
                &self.bundle.stop_ids,
                &req.prompt,
                &req.opts,
                req.logprobs,
            ) {
                Ok(mut d) => {
                    if let Some(prefix) = req.answer_prefix.clone() {
                        d.force_answer_prefix(prefix);
                    }
                    d
                }
                Err(e) => {
                    let _ = req.out.send(Out::Failed(e.to_string()));
                    continue;
                }
            };
            let Admitted {
                state,
                cached_tokens,
                miss,
            } = self.cache.admit(model, &req.prompt);
            let cached_tokens = cached_tokens.min(req.prompt.len().saturating_sub(1));
            if let Some(tx) = req.admitted.take() {
                let _ = tx.send(Admission {
                    cached_tokens,
                    miss: miss.clone(),
                });
            }
            self.metrics.generations.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .prompt_tokens
                .fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
            self.metrics
                .cached_prompt_tokens
                .fetch_add(cached_tokens as u64, Ordering::Relaxed);
            let tokens = req.prompt[..cached_tokens].to_vec();
            self.running.push(Running {
                prompt: req.prompt,
                tokens,
                state,
                cached_tokens,
                cache_miss: miss,
                prompt_text: req.prompt_text.take(),
                decoder,
                pending: None,
                out: req.out,
                arrived: req.arrived,
                last_token: None,
            });
        }
    }

    fn publish_gauges(&self) {
        let m = &self.metrics;
        m.queue_depth.store(
            self.waiting.load(Ordering::SeqCst) as u64,
            Ordering::Relaxed,
        );
        m.running
            .store(self.running.len() as u64, Ordering::Relaxed);
        let bytes: usize = self.running.iter().map(|s| s.state.bytes()).sum();
        m.state_bytes.store(bytes as u64, Ordering::Relaxed);
    }

    /// The plan: `(index in running, work)` per scheduled sequence.
    fn plan(&self) -> Vec<(usize, Work)> {
        let views: Vec<SeqView> = self
            .running
            .iter()
            .map(|s| SeqView {
                fed: s.tokens.len(),
                prompt: s.prompt.len(),
                pending: s.pending.is_some(),
                cut: self.cache.next_cut(s.tokens.len(), s.prompt.len()),
            })
            .collect();
        plan_step(&views, &self.config)
    }

    fn step(&mut self) {
        let plan = self.plan();
        if plan.is_empty() {
            // Sequences that finished without a pending token were already removed; nothing
            // to run means every sequence is waiting on something impossible.
            return;
        }
        let model = &self.bundle.model;
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
                        Span::tokens(&s.prompt[s.tokens.len()..end], &mut s.state)
                            .logits(if last { Rows::Last } else { Rows::None })
                            .delta_rule(DeltaNetPath::Chunked)
                    }
                    Work::Decode => Span::tokens(
                        std::slice::from_ref(s.pending.as_ref().expect("planned decode")),
                        &mut s.state,
                    ),
                };
                step_tokens += span.input.len();
                spans.push(span);
            }
            model.step(&mut spans)
        };
        self.metrics.steps.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .step_tokens
            .fetch_add(step_tokens as u64, Ordering::Relaxed);
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
        let now = Instant::now();
        for (&(i, work), row) in plan.iter().zip(rows) {
            let s = &mut self.running[i];
            match work {
                Work::Prefill { end } => {
                    let start = s.tokens.len();
                    s.tokens.extend_from_slice(&s.prompt[start..end]);
                    self.metrics
                        .processed_prompt_tokens
                        .fetch_add((end - start) as u64, Ordering::Relaxed);
                    self.cache
                        .prefilled(&s.tokens, &s.state, end - start, s.prompt.len());
                }
                Work::Decode => {
                    let t = s.pending.take().expect("planned decode");
                    s.tokens.push(t);
                }
            }
            let Some(row) = row.logits else { continue };
            let row = row.data;
            let before = s.decoder.logprobs_out.len();
            let text_before = s.decoder.text.len();
            let mut events = Vec::new();
            let step = s.decoder.step(&row, &mut |e| {
                events.push(e.clone());
                Flow::Continue
            });
            let emitted = match step {
                Step::Feed(_) | Step::Finished { unfed: Some(_) } => true,
                Step::Finished { unfed: None } => false,
            };
            if emitted {
                self.metrics
                    .generated_tokens
                    .fetch_add(1, Ordering::Relaxed);
                match s.last_token {
                    None => self.metrics.observe_ttft(now - s.arrived),
                    Some(t) => self.metrics.observe_itl(now - t),
                }
                s.last_token = Some(now);
                let logprob = s.decoder.logprobs_out.get(before).cloned();
                let text = s.decoder.text[text_before..].to_string();
                let _ = s.out.send(Out::Token {
                    text,
                    events,
                    logprob,
                });
            }
            match step {
                Step::Feed(t) => s.pending = Some(t),
                Step::Finished { .. } => done.push(i),
            }
        }
        // Remove finished sequences, highest index first so indices stay valid.
        done.sort_unstable_by(|a, b| b.cmp(a));
        for i in done {
            let s = self.running.swap_remove(i);
            self.finish(s);
        }
    }

    /// Ends a sequence: flushes its decoder, reports the summary, hands the state back.
    fn finish(&mut self, mut s: Running) {
        let mut events = Vec::new();
        let text_before = s.decoder.text.len();
        let (finish, parser) = s.decoder.finish(&mut |e| {
            events.push(e.clone());
            Flow::Continue
        });
        let text = s.decoder.text[text_before..].to_string();
        if !events.is_empty() || !text.is_empty() {
            let _ = s.out.send(Out::Token {
                text,
                events,
                logprob: None,
            });
        }
        let summary = Summary {
            finish,
            parser,
            prompt_tokens: s.prompt.len(),
            cached_tokens: s.cached_tokens,
            cache_miss: s.cache_miss.clone(),
            completion_tokens: s.decoder.ids.len(),
            reasoning_tokens: s.decoder.reasoning_tokens,
        };
        // The ids the model saw for this prompt + answer, when they spell exactly its text.
        // (A sequence that ended at its token budget never fed its last token: its state ends
        // one token short, and the next turn computes that token again.)
        if let Some(prompt_text) = s.prompt_text.take()
            && matches!(summary.finish, FinishReason::Stop(_) | FinishReason::Length)
            && self
                .bundle
                .tokenizer
                .decode(&s.decoder.ids, false)
                .is_ok_and(|t| t == s.decoder.text)
        {
            let mut ids = s.prompt.clone();
            ids.extend(&s.decoder.ids);
            self.cache.remember(prompt_text + &s.decoder.text, ids);
        }
        let _ = s.out.send(Out::Done(summary));
        self.cache.release(&s.tokens, s.state);
    }

    fn remove_failed(&mut self, indices: &[usize], message: &str) {
        let mut indices = indices.to_vec();
        indices.sort_unstable_by(|a, b| b.cmp(a));
        for i in indices {
            let s = self.running.swap_remove(i);
            let _ = s.out.send(Out::Failed(message.to_string()));
            self.cache.release(&s.tokens, s.state);
        }
    }
}

/// How long a client should wait before retrying a refused request.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

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
}
