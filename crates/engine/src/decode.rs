//! The per-token half of generation, as a step function: one logits row in, one token and its
//! parsed events out.
//!
//! The engine loop ([`crate::engine`]) drives one [`Decoder`] per sequence; it owns everything that decides *what* a sequence emits (sampler and penalties,
//! stop ids and stop strings, the stream detokenizer, the output parser, the reasoning budget,
//! log-probabilities), and nothing about *how* logits are computed: the loop runs the model,
//! one row of a batch per sequence. Without a tokenizer (a checkpoint that has none) it works
//! on ids alone: no text, no parser, no stop strings.
//!
//! Protocol:
//!
//! ```text
//! logits of the prompt's last position → step() → Step::Feed(t)  → run t through the model
//!                                                                  → step(logits of t) → ...
//!                                        Step::Finished { unfed } → finish()
//! ```
//!
//! `unfed` is a token that was emitted (it is in [`Decoder::ids`]) but has not yet been run
//! through the model; a caller that keeps the sequence's state for later turns feeds it so the
//! state matches the tokens. A stop token is never emitted and never fed.

use crate::json_constraint::JsonAutomaton;
use crate::parser::{Event, Finished, OutputParser, Parsed};
use crate::request::{EngineError, FinishReason, Flow, GenerateOptions};
use crate::sampler::{Sampler, StopCheck, StopMatcher};
use crate::schema::SchemaConstraint;
use crate::tokenizer::{StreamDecoder, TokenBytes, Tokenizer};

/// The log-probability of one generated token and, when asked for, of the most likely ones.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// `ln p(token)` under the model's distribution (softmax of the raw logits).
    pub logprob: f32,
    /// The `n` most likely tokens with their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// The JSON-object constraint of one sequence.
#[derive(Debug)]
struct JsonMode {
    automaton: JsonAutomaton,
    /// Every token's bytes, empty for added tokens (shared by all requests).
    vocab: TokenBytes,
    /// Reported as the stop token when the object closes.
    end: u32,
    /// Whether every byte a closing text can need is a token of its own, so that an object
    /// with `min_close_len() <= n` can always be closed in `n` tokens.
    steer: bool,
}

impl JsonMode {
    /// `row` with every token the constraint rejects set to -inf. When the object can be
    /// steered closed (every byte of a closing text is a token of its own), tokens after which
    /// it could not close within the `budget` tokens left are rejected too, unless that leaves
    /// nothing (the budget was too small from the start): then only syntax counts.
    fn mask(&self, row: &[f32], budget: usize) -> Vec<f32> {
        let mut out = vec![f32::NEG_INFINITY; row.len()];
        let mut any = false;
        let mut syntax_ok = Vec::new();
        for (id, bytes) in self.vocab.iter().enumerate().take(row.len()) {
            if bytes.is_empty() {
                continue;
            }
            let Some(next) = self.automaton.accepts_bytes(bytes) else {
                continue;
            };
            if self.steer && next.min_close_len() > budget {
                syntax_ok.push(id);
                continue;
            }
            out[id] = row[id];
            any = true;
        }
        if !any {
            for id in syntax_ok {
                out[id] = row[id];
            }
        }
        out
    }
}

/// The text half of a decoder: detokenizer, stop strings, output parser.
struct Text {
    detok: StreamDecoder,
    matcher: StopMatcher,
    parser: OutputParser,
}

/// What the caller does after [`Decoder::step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run this token through the model and call `step` again with its logits.
    Feed(u32),
    /// Generation is over. `unfed` was emitted but not yet run through the model.
    Finished { unfed: Option<u32> },
}

/// One sequence's decoding state.
#[derive(Debug)]
pub struct Decoder {
    stops: Vec<u32>,
    vocab_limit: usize,
    max_tokens: usize,
    reasoning_budget: Option<usize>,
    /// The tokens of `"\n</think>\n\n"`, forced when the reasoning budget is spent.
    budget_close: Vec<u32>,
    forced: Vec<u32>,
    /// Tokens forced once the output leaves reasoning (a required tool call's opening).
    answer_prefix: Option<Vec<u32>>,
    /// Whether `forced` holds the answer prefix (part of the answer, which a constraint
    /// reads) rather than the end of thinking.
    forced_answer: bool,
    logprobs: Option<usize>,
    json: Option<JsonMode>,
    /// The answer's constraint: a JSON Schema, or the grammar of strict tool calls.
    schema: Option<SchemaConstraint>,
    sampler: Sampler,
    detok: Option<StreamDecoder>,
    matcher: Option<StopMatcher>,
    parser: Option<OutputParser>,
    /// Generated ids (forced budget tokens included, the stop token excluded).
    pub ids: Vec<u32>,
    /// The decoded text of `ids`, up to a stop string.
    pub text: String,
    /// Everything the parser has emitted so far, collected.
    pub parsed: Parsed,
    /// Tokens generated while inside `<think>`.
    pub reasoning_tokens: usize,
    /// Per generated token, when log-probabilities were requested.
    pub logprobs_out: Vec<TokenLogprob>,
    finish: Option<FinishReason>,
    parser_summary: Finished,
}

impl Decoder {
    /// A decoder for a sequence whose prompt is `prompt`. `eos` are the model's stop ids (they
    /// apply unless `opts.ignore_eos`). `logprobs` asks for per-token log-probabilities with
    /// that many alternatives. Without a `tokenizer` the decoder emits ids only, and refuses
    /// options that need text.
    pub fn new(
        tokenizer: Option<&Tokenizer>,
        eos: &[u32],
        prompt: &[u32],
        opts: &GenerateOptions,
        logprobs: Option<usize>,
    ) -> Result<Self, EngineError> {
        opts.sampling.validate()?;
        crate::sampler::check_stop_strings(&opts.stop_strings)?;
        let mut stops = opts.stop_ids.clone();
        if !opts.ignore_eos {
            stops.extend(eos);
        }
        let Some(tokenizer) = tokenizer else {
            let needs = [
                (opts.reasoning_budget.is_some(), "a reasoning budget"),
                (opts.json_object, "JSON mode"),
                (opts.json_schema.is_some(), "a JSON schema"),
                (!opts.stop_strings.is_empty(), "a stop string"),
            ];
            if let Some((_, what)) = needs.into_iter().find(|(asked, _)| *asked) {
                return Err(EngineError::NeedsTokenizer(what));
            }
            return Ok(Decoder::with_text(
                stops,
                usize::MAX,
                opts,
                prompt,
                logprobs,
                None,
            ));
        };
        let budget_close = if opts.reasoning_budget.is_some() {
            tokenizer.encode("\n</think>\n\n")?
        } else {
            Vec::new()
        };
        let json = opts.json_object.then(|| {
            let vocab = tokenizer.ordinary_token_bytes();
            let mut single = [false; 256];
            for bytes in vocab.iter() {
                if let [b] = **bytes {
                    single[b as usize] = true;
                }
            }
            let steer = b"{}[]\":0truefalsn\x80\x90\xa0"
                .iter()
                .all(|&b| single[b as usize]);
            let end = tokenizer
                .token_id("<|im_end|>")
                .filter(|t| stops.contains(t))
                .or_else(|| stops.first().copied())
                .unwrap_or(0);
            JsonMode {
                automaton: JsonAutomaton::new(),
                vocab,
                end,
                steer,
            }
        });
        let schema = match &opts.json_schema {
            Some(s) => Some(
                tokenizer
                    .schema_index()
                    .and_then(|index| index.compile(s))
                    .map_err(EngineError::Schema)?,
            ),
            None if opts.strict_tools && !opts.parser.tools.is_empty() => Some(
                tokenizer
                    .schema_index()
                    .and_then(|index| {
                        index.compile_tool_calls(&opts.parser.tools, opts.single_call)
                    })
                    .map_err(EngineError::Schema)?,
            ),
            None => None,
        };
        let text = Text {
            detok: StreamDecoder::new(tokenizer, false),
            matcher: StopMatcher::new(&opts.stop_strings),
            parser: OutputParser::new(opts.parser.clone()),
        };
        let mut d = Decoder::with_text(
            stops,
            tokenizer.vocab_size(),
            opts,
            prompt,
            logprobs,
            Some(text),
        );
        d.budget_close = budget_close;
        d.json = json;
        d.schema = schema;
        Ok(d)
    }

    fn with_text(
        stops: Vec<u32>,
        vocab_limit: usize,
        opts: &GenerateOptions,
        prompt: &[u32],
        logprobs: Option<usize>,
        text: Option<Text>,
    ) -> Self {
        let (detok, matcher, parser) = match text {
            Some(t) => (Some(t.detok), Some(t.matcher), Some(t.parser)),
            None => (None, None, None),
        };
        Decoder {
            json: None,
            schema: None,
            stops,
            vocab_limit,
            max_tokens: opts.max_tokens,
            reasoning_budget: opts.reasoning_budget,
            budget_close: Vec::new(),
            forced: Vec::new(),
            answer_prefix: None,
            forced_answer: false,
            logprobs,
            sampler: Sampler::new(opts.sampling.clone(), prompt),
            detok,
            matcher,
            parser,
            ids: Vec::new(),
            text: String::new(),
            parsed: Parsed::default(),
            reasoning_tokens: 0,
            logprobs_out: Vec::new(),
            finish: None,
            parser_summary: Finished::default(),
        }
    }

    /// Forces `tokens` as the start of the answer, right where the output leaves reasoning (or
    /// at once when it does not start in reasoning): how a server makes a tool call required,
    /// `<tool_call>\n<function=`, or names the function too.
    pub fn force_answer_prefix(&mut self, tokens: Vec<u32>) {
        self.answer_prefix = Some(tokens);
    }

    /// Why generation ended (`None` while it runs).
    pub fn finish_reason(&self) -> Option<&FinishReason> {
        self.finish.as_ref()
    }

    /// Whether the output is inside a think block right now.
    pub fn in_reasoning(&self) -> bool {
        self.parser.as_ref().is_some_and(OutputParser::in_reasoning)
    }

    /// Whether `max_tokens` is zero, so no token can be generated at all.
    pub fn is_exhausted(&self) -> bool {
        self.ids.len() >= self.max_tokens
    }

    /// Consumes the logits row for the next position (`[V]`, padding rows allowed) and emits
    /// the next token's events through `on_event`.
    pub fn step(&mut self, logits: &[f32], on_event: &mut dyn FnMut(&Event) -> Flow) -> Step {
        if self.finish.is_some() {
            return Step::Finished { unfed: None };
        }
        if self.ids.len() >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
            return Step::Finished { unfed: None };
        }
        if let Some(budget) = self.reasoning_budget
            && self.forced.is_empty()
            && self.in_reasoning()
            && self.reasoning_tokens >= budget
        {
            // The budget is spent (a budget of 0 before any thinking token): close thinking.
            self.forced = self.budget_close.clone();
            self.forced_answer = false;
        }
        if self.forced.is_empty()
            && !self.in_reasoning()
            && let Some(prefix) = self.answer_prefix.take()
        {
            self.forced = prefix;
            self.forced_answer = true;
        }
        // Never sample the embedding's padding rows past the tokenizer's vocabulary.
        let row = &logits[..logits.len().min(self.vocab_limit)];
        // The JSON constraint applies to the answer, not to reasoning.
        let constrained = self.json.is_some() && !self.in_reasoning();
        let schema_on = self.schema.is_some() && !self.in_reasoning();
        let sampled = self.forced.is_empty();
        let answer_token = sampled || self.forced_answer;
        let token = if sampled {
            match self.json.as_ref().filter(|_| constrained) {
                Some(json) => {
                    let budget = self.max_tokens - self.ids.len() - 1;
                    self.sampler.sample(&json.mask(row, budget))
                }
                None => match self.schema.as_mut().filter(|_| schema_on) {
                    Some(schema) => match schema.mask(row) {
                        Some(masked) => self.sampler.sample(&masked),
                        None => {
                            tracing::warn!(
                                "the schema constraint failed; the answer goes on unconstrained"
                            );
                            self.schema = None;
                            self.sampler.sample(row)
                        }
                    },
                    None => self.sampler.sample(row),
                },
            }
        } else {
            let t = self.forced.remove(0);
            self.sampler.record(t);
            t
        };
        if self.stops.contains(&token) {
            self.finish = Some(FinishReason::Stop(token));
            return Step::Finished { unfed: None };
        }
        let mut json_done = None;
        // Forced tokens closing thinking (the rest of a budget's `\n</think>\n\n`) are not
        // the answer's; a forced answer prefix (a required call's opening) is.
        if schema_on
            && answer_token
            && let Some(schema) = self.schema.as_mut()
        {
            if !schema.consume(token) {
                tracing::warn!(
                    "the schema refused a token it allowed; the answer goes on unconstrained"
                );
                self.schema = None;
            } else if schema.is_done() {
                json_done = Some(schema.end());
            }
        }
        if constrained && let Some(json) = self.json.as_mut() {
            // A forced token that is not JSON leaves the state as it was.
            if let Some(next) = json.automaton.accepts_bytes(&json.vocab[token as usize]) {
                json.automaton = next;
            }
            if json.automaton.is_complete() {
                json_done = Some(json.end);
            }
        }
        if let Some(n) = self.logprobs {
            self.logprobs_out.push(token_logprob(row, token, n));
        }
        if self.in_reasoning() {
            self.reasoning_tokens += 1;
        }
        self.ids.push(token);
        // Both live until `finish`; an ids-only decoder has neither.
        let (text, stopped) = match (self.detok.as_mut(), self.matcher.as_mut()) {
            (Some(detok), Some(matcher)) => match matcher.push(&detok.push(token)) {
                StopCheck::Continue(text) => (text, None),
                StopCheck::Stopped { text, stop } => (text, Some(stop)),
            },
            _ => (String::new(), None),
        };
        self.text.push_str(&text);
        let cancelled = self.emit_text(&text, on_event);
        if let Some(stop) = stopped {
            self.finish = Some(FinishReason::StopString(stop));
            return Step::Finished { unfed: Some(token) };
        }
        if cancelled {
            self.finish = Some(FinishReason::Cancelled);
            return Step::Finished { unfed: Some(token) };
        }
        if let Some(end) = json_done {
            // The object is closed: end the turn as the end-of-turn token would.
            self.finish = Some(FinishReason::Stop(end));
            return Step::Finished { unfed: Some(token) };
        }
        if self.ids.len() == self.max_tokens {
            self.finish = Some(FinishReason::Length);
            return Step::Finished { unfed: Some(token) };
        }
        Step::Feed(token)
    }

    /// Ends generation from outside (a disconnected client): the reason becomes `Cancelled`
    /// unless it already ended.
    pub fn cancel(&mut self) {
        if self.finish.is_none() {
            self.finish = Some(FinishReason::Cancelled);
        }
    }

    /// Flushes what the detokenizer, stop matcher and parser still hold, emitting the last
    /// events. Returns the finish reason and the parser's summary.
    pub fn finish(&mut self, on_event: &mut dyn FnMut(&Event) -> Flow) -> (FinishReason, Finished) {
        let mut finish = self.finish.clone().unwrap_or(FinishReason::Length);
        if let Some(matcher) = self.matcher.take() {
            let tail = self
                .detok
                .take()
                .map(StreamDecoder::finish)
                .unwrap_or_default();
            let held = match finish {
                FinishReason::StopString(_) => String::new(),
                _ => {
                    let mut matcher = matcher;
                    match matcher.push(&tail) {
                        StopCheck::Continue(mut t) => {
                            t.push_str(&matcher.finish());
                            t
                        }
                        StopCheck::Stopped { text, stop } => {
                            finish = FinishReason::StopString(stop);
                            text
                        }
                    }
                }
            };
            self.text.push_str(&held);
            self.emit_text(&held, on_event);
        }
        if let Some(parser) = self.parser.take() {
            let (events, summary) = parser.finish();
            for e in events {
                on_event(&e);
                self.parsed.extend(std::iter::once(e));
            }
            self.parser_summary = summary;
        }
        self.finish = Some(finish.clone());
        (finish, self.parser_summary)
    }

    /// Feeds decoded text to the parser; true when the callback asked to cancel.
    fn emit_text(&mut self, text: &str, on_event: &mut dyn FnMut(&Event) -> Flow) -> bool {
        let Some(parser) = self.parser.as_mut() else {
            return false;
        };
        let mut cancelled = false;
        for e in parser.push(text) {
            if on_event(&e) == Flow::Cancel {
                cancelled = true;
            }
            self.parsed.extend(std::iter::once(e));
        }
        cancelled
    }
}

/// `ln softmax(row)[token]` and the `n` most likely entries.
fn token_logprob(row: &[f32], token: u32, n: usize) -> TokenLogprob {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| f64::from(v - max).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let lp = |v: f32| (f64::from(v) - log_z) as f32;
    let mut top = Vec::new();
    if n > 0 {
        let mut order: Vec<u32> = (0..row.len() as u32).collect();
        let n = n.min(order.len());
        order.select_nth_unstable_by(n - 1, |&a, &b| {
            row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b))
        });
        order.truncate(n);
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
        top = order
            .into_iter()
            .map(|t| (t, lp(row[t as usize])))
            .collect();
    }
    TokenLogprob {
        token,
        logprob: row
            .get(token as usize)
            .map_or(f32::NEG_INFINITY, |&v| lp(v)),
        top,
    }
}
