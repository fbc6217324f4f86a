//! Splitting model output into reasoning, answer content and tool calls.
//!
//! Qwen3.5/3.6 write everything as one stream of text. The chat template teaches this shape:
//!
//! ```text
//! <think>\n{reasoning}\n</think>\n\n{content}\n\n<tool_call>\n<function=NAME>\n<parameter=ARG>\n{value}\n</parameter>\n</function>\n</tool_call>
//! ```
//!
//! In thinking mode the prompt already ends in `<think>\n`, so the output starts *inside* the
//! reasoning ([`ParserOptions::starts_in_reasoning`]). Parallel calls are separated by `\n`.
//! String arguments are written raw; other types as JSON (booleans and null as Python's `True`,
//! `False`, `None` when the template re-renders history, so those spellings are accepted too).
//!
//! # One state machine
//!
//! [`OutputParser`] is the only parser: the CLI, the OpenAI and the Anthropic routes all feed it
//! decoded text with [`OutputParser::push`] and end it with [`OutputParser::finish`]. Its state is
//!
//! * a text mode, **reasoning** or **content**, in which text is emitted as it arrives and only
//!   these tags are recognised: `</think>` and `<tool_call>` in reasoning, plus `<think>` in
//!   content;
//! * or a **tool call in progress**, entered at `<tool_call>` from either mode, which walks the
//!   stages function header → parameters → parameter value → `</function>` → `</tool_call>`.
//!   A call remembers the mode it came from and returns to it.
//!
//! A `<tool_call>` inside an unterminated think block is therefore a tool call, not reasoning
//! (vLLM and llama.cpp lose these), and the think block stays open after it.
//!
//! # Streaming: what is held back
//!
//! Chunks may split between any two characters (inside `</thi` + `nk>`, inside a parameter
//! value); the detokenizer never hands over half a character. In a text mode the parser holds back only the
//! ambiguous tail of what it has seen: a suffix that is a proper prefix of a tag it recognises,
//! and the whitespace run just before it or at the end, since that whitespace is dropped if a
//! tag follows. Everything else is emitted at once.
//!
//! A tool call is emitted **atomically**: [`Event::ToolCallStart`], one [`Event::ToolCallArgs`]
//! per parameter and [`Event::ToolCallEnd`] arrive together, in the `push` that completes the
//! call. The parser commits to a call only once it has parsed completely, which is what lets a
//! truncated or malformed call come back as text instead of a half-announced call that cannot
//! be retracted. A consumer that forwards deltas (Anthropic `input_json_delta`, OpenAI
//! `function.arguments` pieces) and one that only collects see the same calls; a long call is
//! latency, never loss. [`OutputParser::in_tool_call`] tells a server that text is being held.
//!
//! # Guarantees
//!
//! * No input panics, and the result never depends on how the text was chunked: one `push` of
//!   the whole text, one character per `push`, or any other split give the same reasoning,
//!   content and calls (the text deltas may be cut differently).
//! * Nothing but tags and whitespace next to them is dropped. In event order, the text of
//!   `Reasoning` and `Content` events plus the `raw` of each `ToolCallEnd` is the input with
//!   exactly these removed:
//!
//! | dropped | where |
//! |---|---|
//! | `<think>` | in content (it opens reasoning) |
//! | `</think>` | anywhere outside a tool call (in content it is a stray closing tag) |
//! | `\n` run | after `<think>`, at the start of output when `starts_in_reasoning`, after `</think>` (the template's `lstrip('\n')`) |
//! | `\n` run | before `</think>` in reasoning (the template's `rstrip('\n')`) |
//! | whitespace run | before `<tool_call>` and after a completed call's `</tool_call>` (or `</function>` when the wrapper is missing) |
//!
//!   Parameter values lose exactly one leading and one trailing `\n` inside the parsed
//!   arguments, but `raw` keeps them.
//! * What cannot be parsed as a call is text of the mode the `<tool_call>` appeared in: the
//!   `<tool_call>` tag (with the whitespace before it) is emitted literally and everything after
//!   it is scanned again, so a well-formed call later in the garbage is still found. This covers
//!   `<tool_call>` without `<function=`, a header without `>`, stray text between parameters,
//!   and a call cut off by the end of generation (max tokens): [`Finished::truncated_tool_call`].
//! * Two lenient repairs, both at unambiguous points: a call closed by `</tool_call>` without
//!   `</function>`, or by `</function>` without `</tool_call>` (end of output or other text
//!   follows), is accepted; and at the end of output, a parameter never closed by
//!   `</parameter>` ends at the first `</function>` in its value (the "parameter closed by
//!   function" drift that makes stricter parsers fail long file-write calls).
//!
//! # Argument types
//!
//! A value is typed by the tool's JSON schema for that parameter ([`ToolSpec`]): `string` stays
//! the raw text even if it looks like JSON; `integer`, `number`, `boolean`, `object`, `array`
//! and `null` are parsed as JSON, falling back to the raw string when that fails. Unknown tools
//! and parameters without a declared type are JSON if they parse, else strings. Repeated
//! parameters keep their first position and their last value.

use serde_json::{Map, Value};

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";
const FUNCTION_OPEN: &str = "<function=";
const FUNCTION_CLOSE: &str = "</function>";
const PARAM_OPEN: &str = "<parameter=";
const PARAM_CLOSE: &str = "</parameter>";

/// A function or parameter name longer than this (in bytes) is not a name but garbage, so a
/// `<function=` without `>` cannot hold text back forever.
const MAX_NAME_LEN: usize = 256;

/// How a generation starts and which tools it may call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParserOptions {
    /// The prompt already opened `<think>` (thinking mode), so output starts inside reasoning.
    pub starts_in_reasoning: bool,
    /// The tools offered in the request; their schemas type the arguments.
    pub tools: Vec<ToolSpec>,
}

/// A callable tool: its name and the JSON schema of its parameters object.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The function name the model writes in `<function=NAME>`.
    pub name: String,
    /// JSON schema of the arguments (`{"type": "object", "properties": {...}}`).
    pub parameters: Value,
}

/// Why a tool definition could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolSpecError {
    /// The definition (or its `function` member) is not a JSON object.
    #[error("tool definition is not a JSON object")]
    NotAnObject,
    /// The definition has a `type` other than `"function"`.
    #[error("tool type {0} is not \"function\"")]
    NotAFunction(String),
    /// No string `name`.
    #[error("tool definition has no string \"name\"")]
    MissingName,
    /// `parameters` is present but not a JSON object (a JSON Schema).
    #[error("tool \"parameters\" must be a JSON Schema object, not {0}")]
    ParametersNotAnObject(String),
}

impl ToolSpec {
    /// A tool from its name and parameter schema (also the Anthropic `input_schema`).
    pub fn new(name: impl Into<String>, parameters: Value) -> Self {
        Self {
            name: name.into(),
            parameters,
        }
    }

    /// A tool from an OpenAI definition, `{"type": "function", "function": {"name",
    /// "parameters"}}`, or from the bare inner object `{"name", "parameters"}`. A missing
    /// `parameters` means no parameters.
    pub fn from_openai(tool: &Value) -> Result<Self, ToolSpecError> {
        let object = tool.as_object().ok_or(ToolSpecError::NotAnObject)?;
        if let Some(kind) = object.get("type")
            && kind.as_str() != Some("function")
        {
            return Err(ToolSpecError::NotAFunction(kind.to_string()));
        }
        let function = match object.get("function") {
            Some(function) => function.as_object().ok_or(ToolSpecError::NotAnObject)?,
            None => object,
        };
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or(ToolSpecError::MissingName)?;
        let parameters = match function.get("parameters") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(other) => return Err(ToolSpecError::ParametersNotAnObject(other.to_string())),
        };
        Ok(Self::new(name, parameters))
    }

    /// The schema of one parameter, if declared.
    fn property(&self, parameter: &str) -> Option<&Value> {
        self.parameters.get("properties")?.get(parameter)
    }
}

/// One parsed tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The function name.
    pub name: String,
    /// The arguments, always a JSON object.
    pub arguments: Value,
}

impl ToolCall {
    /// The arguments as a compact JSON string (OpenAI `function.arguments`); equal to the
    /// concatenation of the call's [`Event::ToolCallArgs`] deltas.
    pub fn arguments_json(&self) -> String {
        self.arguments.to_string()
    }
}

/// What one [`OutputParser::push`] or [`OutputParser::finish`] produced, in output order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More reasoning text (a delta).
    Reasoning(String),
    /// More answer text (a delta).
    Content(String),
    /// A tool call begins. Indices count 0, 1, 2… over the whole generation.
    ToolCallStart {
        /// The call's index.
        index: usize,
        /// The function name.
        name: String,
    },
    /// A piece of the call's arguments JSON. The pieces of one call concatenate to exactly
    /// [`ToolCall::arguments_json`]: `{"a":1` `,"b":"x"}`, or `{}` for no arguments.
    ToolCallArgs {
        /// The call's index.
        index: usize,
        /// The next piece of the arguments JSON.
        delta: String,
    },
    /// The call is complete.
    ToolCallEnd {
        /// The call's index.
        index: usize,
        /// The parsed call.
        call: ToolCall,
        /// The call's text exactly as generated, from `<tool_call>` through `</tool_call>`,
        /// for logs and for re-rendering history byte for byte.
        raw: String,
    },
}

/// A summary of the whole generation, returned by [`OutputParser::finish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Finished {
    /// How many tool calls were emitted.
    pub tool_calls: usize,
    /// The output ended inside a think block that was never closed.
    pub unterminated_reasoning: bool,
    /// A `<tool_call>` was still open when output ended (max tokens, stop string) and could
    /// not be completed, so it was returned as text.
    pub truncated_tool_call: bool,
}

/// The collected result of a whole generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// All reasoning text.
    pub reasoning: String,
    /// All answer text.
    pub content: String,
    /// The tool calls, in index order.
    pub tool_calls: Vec<ToolCall>,
}

/// Collecting events: `parsed.extend(parser.push(chunk))`.
impl Extend<Event> for Parsed {
    fn extend<I: IntoIterator<Item = Event>>(&mut self, events: I) {
        for event in events {
            match event {
                Event::Reasoning(text) => self.reasoning.push_str(&text),
                Event::Content(text) => self.content.push_str(&text),
                Event::ToolCallEnd { call, .. } => self.tool_calls.push(call),
                Event::ToolCallStart { .. } | Event::ToolCallArgs { .. } => {}
            }
        }
    }
}

/// Parses a complete output in one go (non-streaming responses, tests).
pub fn parse_complete(text: &str, options: ParserOptions) -> Parsed {
    let mut parser = OutputParser::new(options);
    let mut parsed = Parsed::default();
    parsed.extend(parser.push(text));
    parsed.extend(parser.finish().0);
    parsed
}

/// The incremental parser; see the module documentation.
#[derive(Debug)]
pub struct OutputParser {
    tools: Vec<ToolSpec>,
    /// Text received but not yet consumed.
    buf: String,
    /// The text mode; while a call is in progress, the mode it will return to.
    mode: Mode,
    /// Characters to drop from the front of the text that follows a tag.
    skip: Skip,
    call: Option<PendingCall>,
    next_index: usize,
    truncated_tool_call: bool,
    /// Events produced by the current `push` or `finish`.
    events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Reasoning,
    Content,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    Nothing,
    Newlines,
    Whitespace,
}

impl Skip {
    fn drops(self, c: char) -> bool {
        match self {
            Skip::Nothing => false,
            Skip::Newlines => c == '\n',
            Skip::Whitespace => is_space(c),
        }
    }
}

/// The tags a text mode reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    ThinkOpen,
    ThinkClose,
    CallOpen,
}

impl Tag {
    fn text(self) -> &'static str {
        match self {
            Tag::ThinkOpen => THINK_OPEN,
            Tag::ThinkClose => THINK_CLOSE,
            Tag::CallOpen => CALL_OPEN,
        }
    }
}

impl Mode {
    fn tags(self) -> &'static [Tag] {
        match self {
            Mode::Reasoning => &[Tag::ThinkClose, Tag::CallOpen],
            Mode::Content => &[Tag::ThinkOpen, Tag::ThinkClose, Tag::CallOpen],
        }
    }
}

/// A tool call being read. Everything consumed since `<tool_call>` is kept in `raw`, so that
/// giving up returns it as text unchanged.
#[derive(Debug)]
struct PendingCall {
    /// The whitespace dropped before `<tool_call>`; restored if the call is given up.
    lead: String,
    /// `<tool_call>` and everything consumed after it.
    raw: String,
    stage: Stage,
    name: String,
    arguments: Map<String, Value>,
}

#[derive(Debug)]
enum Stage {
    /// After `<tool_call>`: whitespace, then `<function=NAME>`.
    Function,
    /// Between parameters: `<parameter=NAME>`, `</function>` or (lenient) `</tool_call>`.
    Parameters,
    /// Inside a value, up to `</parameter>`.
    Value { name: String, value: String },
    /// After `</function>`: whitespace, then `</tool_call>`.
    Close,
}

/// What reading a call did.
enum Step {
    /// Needs more text.
    Wait,
    /// Consumed something; keep going.
    Progress,
    /// Not a call after all.
    GiveUp,
    /// The call is complete.
    Complete,
}

/// Reading `<function=NAME>` or `<parameter=NAME>` at the front of the buffer.
enum Header {
    Wait,
    Invalid,
    Found { name: String, len: usize },
}

impl OutputParser {
    /// A parser at the start of a generation.
    pub fn new(options: ParserOptions) -> Self {
        let (mode, skip) = if options.starts_in_reasoning {
            (Mode::Reasoning, Skip::Newlines)
        } else {
            (Mode::Content, Skip::Nothing)
        };
        Self {
            tools: options.tools,
            buf: String::new(),
            mode,
            skip,
            call: None,
            next_index: 0,
            truncated_tool_call: false,
            events: Vec::new(),
        }
    }

    /// Consumes the next piece of decoded output and returns what it completed.
    #[must_use = "events carry the parsed output"]
    pub fn push(&mut self, text: &str) -> Vec<Event> {
        self.buf.push_str(text);
        self.drain(false);
        std::mem::take(&mut self.events)
    }

    /// Ends the generation: flushes held text, turns an unfinished call into text.
    #[must_use = "events carry the parsed output"]
    pub fn finish(mut self) -> (Vec<Event>, Finished) {
        self.drain(true);
        let finished = Finished {
            tool_calls: self.next_index,
            unterminated_reasoning: self.mode == Mode::Reasoning,
            truncated_tool_call: self.truncated_tool_call,
        };
        (self.events, finished)
    }

    /// Whether the output is currently inside a think block (also during a tool call that
    /// started in one). A thinking budget can use this to decide when to force `</think>`.
    pub fn in_reasoning(&self) -> bool {
        self.mode == Mode::Reasoning
    }

    /// Whether a tool call is being read, so text is held until it completes.
    pub fn in_tool_call(&self) -> bool {
        self.call.is_some()
    }

    fn drain(&mut self, at_end: bool) {
        loop {
            let progressed = if self.call.is_some() {
                self.step_call(at_end)
            } else {
                self.step_text(at_end)
            };
            if !progressed {
                break;
            }
        }
    }

    /// One step in a text mode. Returns whether a tag was consumed (so there may be more).
    fn step_text(&mut self, at_end: bool) -> bool {
        if self.skip != Skip::Nothing {
            let skip = self.skip;
            let kept = self.buf.trim_start_matches(|c| skip.drops(c)).len();
            self.buf.drain(..self.buf.len() - kept);
            if self.buf.is_empty() {
                return false;
            }
            self.skip = Skip::Nothing;
        }
        let tags = self.mode.tags();
        if let Some((pos, tag)) = find_first_tag(&self.buf, tags) {
            let after = self.buf.split_off(pos + tag.text().len());
            self.buf.truncate(pos);
            let text = std::mem::replace(&mut self.buf, after);
            match tag {
                Tag::CallOpen => {
                    let body = text.trim_end_matches(is_space).len();
                    self.emit_text(&text[..body]);
                    self.call = Some(PendingCall {
                        lead: text[body..].to_string(),
                        raw: CALL_OPEN.to_string(),
                        stage: Stage::Function,
                        name: String::new(),
                        arguments: Map::new(),
                    });
                }
                Tag::ThinkClose => {
                    if self.mode == Mode::Reasoning {
                        self.emit_text(text.trim_end_matches('\n'));
                    } else {
                        self.emit_text(&text);
                    }
                    self.mode = Mode::Content;
                    self.skip = Skip::Newlines;
                }
                Tag::ThinkOpen => {
                    self.emit_text(&text);
                    self.mode = Mode::Reasoning;
                    self.skip = Skip::Newlines;
                }
            }
            return true;
        }
        let keep_from = if at_end {
            self.buf.len()
        } else {
            let tag_start = partial_tag_start(&self.buf, tags.iter().map(|t| t.text()));
            self.buf[..tag_start].trim_end_matches(is_space).len()
        };
        let held = self.buf.split_off(keep_from);
        let text = std::mem::replace(&mut self.buf, held);
        self.emit_text(&text);
        false
    }

    /// One step of reading a tool call. Returns whether to keep going.
    fn step_call(&mut self, at_end: bool) -> bool {
        let Some(call) = self.call.as_mut() else {
            return false;
        };
        match call.step(&mut self.buf, at_end, &self.tools) {
            Step::Wait => false,
            Step::Progress => true,
            Step::GiveUp => {
                self.give_up_call(at_end);
                true
            }
            Step::Complete => {
                self.complete_call();
                true
            }
        }
    }

    /// Returns `<tool_call>` (and the whitespace before it) as text and rescans the rest.
    fn give_up_call(&mut self, at_end: bool) {
        let Some(call) = self.call.take() else {
            return;
        };
        self.truncated_tool_call |= at_end;
        let mut text = call.lead;
        text.push_str(&call.raw[..CALL_OPEN.len()]);
        self.emit_text(&text);
        self.buf.insert_str(0, &call.raw[CALL_OPEN.len()..]);
    }

    fn complete_call(&mut self) {
        let Some(call) = self.call.take() else {
            return;
        };
        let index = self.next_index;
        self.next_index += 1;
        self.events.push(Event::ToolCallStart {
            index,
            name: call.name.clone(),
        });
        for delta in argument_pieces(&call.arguments) {
            self.events.push(Event::ToolCallArgs { index, delta });
        }
        self.events.push(Event::ToolCallEnd {
            index,
            call: ToolCall {
                name: call.name,
                arguments: Value::Object(call.arguments),
            },
            raw: call.raw,
        });
        self.skip = Skip::Whitespace;
    }

    /// Emits text in the current mode, merging with the previous event of the same kind.
    fn emit_text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match (self.mode, self.events.last_mut()) {
            (Mode::Reasoning, Some(Event::Reasoning(last)))
            | (Mode::Content, Some(Event::Content(last))) => last.push_str(text),
            (Mode::Reasoning, _) => self.events.push(Event::Reasoning(text.to_string())),
            (Mode::Content, _) => self.events.push(Event::Content(text.to_string())),
        }
    }
}

impl PendingCall {
    /// Reads from the front of `buf`, moving what it consumes into `raw`.
    fn step(&mut self, buf: &mut String, at_end: bool, tools: &[ToolSpec]) -> Step {
        match &mut self.stage {
            Stage::Function => {
                self.consume_space(buf);
                match read_header(buf, FUNCTION_OPEN, at_end) {
                    Header::Wait => Step::Wait,
                    Header::Invalid => Step::GiveUp,
                    Header::Found { name, len } => {
                        self.consume(buf, len);
                        self.name = name;
                        self.stage = Stage::Parameters;
                        Step::Progress
                    }
                }
            }
            Stage::Parameters => {
                self.consume_space(buf);
                if buf.starts_with(PARAM_OPEN) {
                    match read_header(buf, PARAM_OPEN, at_end) {
                        Header::Wait => Step::Wait,
                        Header::Invalid => Step::GiveUp,
                        Header::Found { name, len } => {
                            self.consume(buf, len);
                            self.stage = Stage::Value {
                                name,
                                value: String::new(),
                            };
                            Step::Progress
                        }
                    }
                } else if buf.starts_with(FUNCTION_CLOSE) {
                    self.consume(buf, FUNCTION_CLOSE.len());
                    self.stage = Stage::Close;
                    Step::Progress
                } else if buf.starts_with(CALL_CLOSE) {
                    // Lenient: `</function>` missing.
                    self.consume(buf, CALL_CLOSE.len());
                    Step::Complete
                } else if !at_end
                    && [PARAM_OPEN, FUNCTION_CLOSE, CALL_CLOSE]
                        .iter()
                        .any(|tag| tag.starts_with(buf.as_str()))
                {
                    Step::Wait
                } else {
                    Step::GiveUp
                }
            }
            Stage::Value { name, value } => {
                if let Some(pos) = buf.find(PARAM_CLOSE) {
                    value.push_str(&buf[..pos]);
                    let (name, value) = (std::mem::take(name), std::mem::take(value));
                    self.consume(buf, pos + PARAM_CLOSE.len());
                    self.add_argument(name, &value, tools);
                    self.stage = Stage::Parameters;
                    Step::Progress
                } else if at_end {
                    // Lenient: a value never closed by `</parameter>` ends at `</function>`.
                    // `raw` ends with the whole value, so the rest after `</function>` is
                    // handed back to `buf` by cutting both.
                    value.push_str(buf);
                    let Some(pos) = value.find(FUNCTION_CLOSE) else {
                        return Step::GiveUp;
                    };
                    let rest = value.split_off(pos);
                    let (name, value) = (std::mem::take(name), std::mem::take(value));
                    self.consume(buf, buf.len());
                    self.raw.truncate(self.raw.len() - rest.len());
                    *buf = rest;
                    self.add_argument(name, &value, tools);
                    self.stage = Stage::Parameters;
                    Step::Progress
                } else {
                    let keep_from = partial_tag_start(buf, [PARAM_CLOSE]);
                    value.push_str(&buf[..keep_from]);
                    self.consume(buf, keep_from);
                    Step::Wait
                }
            }
            Stage::Close => {
                let space = buf.len() - buf.trim_start_matches(is_space).len();
                let after = &buf[space..];
                if after.starts_with(CALL_CLOSE) {
                    self.consume(buf, space + CALL_CLOSE.len());
                    Step::Complete
                } else if !CALL_CLOSE.starts_with(after) {
                    // Lenient: `</tool_call>` missing, other text follows; the whitespace
                    // before it stays in `buf` and is dropped as after any call.
                    Step::Complete
                } else if at_end {
                    // Lenient: output ended before (or inside) `</tool_call>`.
                    self.consume(buf, buf.len());
                    Step::Complete
                } else {
                    Step::Wait
                }
            }
        }
    }

    /// Moves `len` bytes from the front of `buf` into `raw`.
    fn consume(&mut self, buf: &mut String, len: usize) {
        self.raw.push_str(&buf[..len]);
        buf.drain(..len);
    }

    fn consume_space(&mut self, buf: &mut String) {
        let space = buf.len() - buf.trim_start_matches(is_space).len();
        self.consume(buf, space);
    }

    fn add_argument(&mut self, name: String, value: &str, tools: &[ToolSpec]) {
        let value = value.strip_prefix('\n').unwrap_or(value);
        let value = value.strip_suffix('\n').unwrap_or(value);
        let schema = tools
            .iter()
            .find(|tool| tool.name == self.name)
            .and_then(|tool| tool.property(&name));
        self.arguments.insert(name, typed_value(value, schema));
    }
}

/// Reads `<function=NAME>` (or `<parameter=NAME>`) at the front of `buf`. A name is 1 to
/// [`MAX_NAME_LEN`] bytes without `<`, `>` or a newline, trimmed of surrounding whitespace.
fn read_header(buf: &str, open: &str, at_end: bool) -> Header {
    let Some(rest) = buf.strip_prefix(open) else {
        return if !at_end && open.starts_with(buf) {
            Header::Wait
        } else {
            Header::Invalid
        };
    };
    match rest.find(['>', '<', '\n']) {
        Some(end) if rest[end..].starts_with('>') && end <= MAX_NAME_LEN => {
            let name = rest[..end].trim_matches(is_space);
            if name.is_empty() {
                Header::Invalid
            } else {
                Header::Found {
                    name: name.to_string(),
                    len: open.len() + end + 1,
                }
            }
        }
        Some(_) => Header::Invalid,
        None if at_end || rest.len() > MAX_NAME_LEN => Header::Invalid,
        None => Header::Wait,
    }
}

/// Types a parameter value by its schema; see the module documentation.
fn typed_value(value: &str, schema: Option<&Value>) -> Value {
    let types = schema.map(declared_types).unwrap_or_default();
    let raw = || Value::String(value.to_string());
    if types.is_empty() {
        return serde_json::from_str(value).unwrap_or_else(|_| raw());
    }
    if types.contains(&"string") {
        return if value == "null" && types.contains(&"null") {
            Value::Null
        } else {
            raw()
        };
    }
    if let Ok(parsed) = serde_json::from_str(value) {
        return parsed;
    }
    // Python spellings, as the chat template renders booleans and None in history.
    match value.trim() {
        "True" if types.contains(&"boolean") => Value::Bool(true),
        "False" if types.contains(&"boolean") => Value::Bool(false),
        "None" if types.contains(&"null") => Value::Null,
        _ => raw(),
    }
}

/// The JSON types a schema allows: `type` (a name or a list), else the union over
/// `anyOf`/`oneOf`, else `string` for an all-string `enum` or `const`. Empty if unknown.
fn declared_types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(name)) => return vec![name.as_str()],
        Some(Value::Array(names)) => return names.iter().filter_map(Value::as_str).collect(),
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = schema.get(key) {
            return options.iter().flat_map(declared_types).collect();
        }
    }
    let all_strings = match (schema.get("enum"), schema.get("const")) {
        (Some(Value::Array(values)), _) => {
            !values.is_empty() && values.iter().all(Value::is_string)
        }
        (_, Some(value)) => value.is_string(),
        _ => false,
    };
    if all_strings {
        vec!["string"]
    } else {
        Vec::new()
    }
}

/// The arguments JSON cut into one piece per parameter: `{"a":1`, `,"b":"x"}`.
fn argument_pieces(arguments: &Map<String, Value>) -> Vec<String> {
    let mut pieces: Vec<String> = arguments
        .iter()
        .enumerate()
        .map(|(i, (name, value))| {
            let open = if i == 0 { "{" } else { "," };
            format!("{open}{}:{value}", Value::String(name.clone()))
        })
        .collect();
    match pieces.last_mut() {
        Some(last) => last.push('}'),
        None => pieces.push("{}".to_string()),
    }
    pieces
}

/// The earliest complete tag in `text`.
fn find_first_tag(text: &str, tags: &[Tag]) -> Option<(usize, Tag)> {
    tags.iter()
        .filter_map(|&tag| text.find(tag.text()).map(|pos| (pos, tag)))
        .min_by_key(|&(pos, _)| pos)
}

/// Where the longest suffix of `text` that is a proper prefix of one of `tags` starts
/// (`text.len()` if none). Tags are ASCII and start with `<`, so this is a char boundary.
fn partial_tag_start<'a>(text: &str, tags: impl IntoIterator<Item = &'a str> + Clone) -> usize {
    let longest = tags.clone().into_iter().map(str::len).max().unwrap_or(0);
    let bytes = text.as_bytes();
    let from = text.len().saturating_sub(longest.saturating_sub(1));
    (from..text.len())
        .find(|&i| {
            bytes[i] == b'<'
                && tags.clone().into_iter().any(|tag| {
                    tag.len() > bytes.len() - i && tag.as_bytes().starts_with(&bytes[i..])
                })
        })
        .unwrap_or(text.len())
}

/// The whitespace the format puts around tags.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}
