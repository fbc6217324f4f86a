//! The model's own Jinja chat template, rendered byte-identically to Python jinja2 as
//! Hugging Face transformers renders it.
//!
//! A chat template turns `messages` (+ `tools`) into the exact prompt string the model was
//! trained on. A single differing byte changes the tokens the model sees, so "close enough"
//! is not good enough: the reference is `tokenizer.apply_chat_template(..., tokenize=False)`
//! in transformers 5.23 and the golden test (`tests/template.rs`) compares against it byte
//! for byte. [`ChatTemplate::render`] mirrors, in order:
//!
//! 1. `apply_chat_template`'s input handling: an empty conversation is refused before the
//!    template runs; keys whose value is `null` are dropped from every message (OpenAI
//!    clients send `"content": null`); `reasoning_content` is filled from `thinking` or
//!    `reasoning` (and `thinking` from `reasoning_content`), as `_alias_reasoning_fields`
//!    does, so a client that echoes vLLM's `reasoning` field still gets its thinking
//!    rendered.
//! 2. The variables: the tokenizer's named special tokens (`bos_token`, `eos_token`,
//!    `pad_token`, ... and any other `*_token` string in `tokenizer_config.json`), then the
//!    caller's kwargs (which win), then `messages`, `tools` (`none` when absent),
//!    `documents` (always `none`) and `add_generation_prompt`.
//! 3. The environment of `_compile_jinja_template`: jinja2's `ImmutableSandboxedEnvironment`
//!    (minijinja has no host objects to escape into and no mutating methods, so the sandbox
//!    comes for free), `trim_blocks`, `lstrip_blocks`, the loop-controls extension
//!    (`{% break %}`, `{% continue %}`), no autoescaping, transformers' `tojson`, and the
//!    globals `raise_exception` and `strftime_now`.
//!
//! # Traps, and what this module does about them
//!
//! * **`tojson` must not HTML-escape.** minijinja's built-in `tojson` writes `<` as
//!   `\u003c` (safe inside HTML `<script>`); transformers replaces the filter with
//!   `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
//!   Tool descriptions routinely contain `<`, `>`, `&` and quotes, so the built-in would
//!   silently change the prompt. [`ChatTemplate`] installs its own `tojson` that reproduces
//!   Python's `json.dumps` output: `", "` and `": "` separators (`","` when `indent` is
//!   set), non-ASCII kept as is, Python's float repr (`1e-07`, `1e+20`, `1.0`), and the
//!   `ensure_ascii`, `indent`, `separators` and `sort_keys` arguments.
//! * **Key order is data.** JSON schemas are printed in the order the client wrote them
//!   (`{"type": ..., "properties": ...}` is not sorted). This needs `preserve_order` on both
//!   `serde_json` and `minijinja`; the crate enables both.
//! * **Whitespace control.** transformers sets `trim_blocks` (drop the newline after a
//!   block tag) and `lstrip_blocks` (drop the indentation before a block tag); without
//!   them every `{%- ... %}` line of the Qwen template leaks a newline or spaces.
//! * **Python semantics where minijinja differs.** `{{ x }}` and `x|string` print values
//!   with Python's `str()` (`True`, `None`, `1e-07`, `{'a': 1}`); `|trim` and the
//!   `strip`/`lstrip`/`rstrip`/`split` methods use Python's definition of whitespace (which
//!   includes `\x1c`..`\x1f`); the `iterable` and `sequence` tests follow jinja2 (`none is
//!   iterable` is false, `undefined is iterable` true, strings and dicts are sequences);
//!   other Python string and dict methods come from `minijinja_contrib::pycompat`.
//! * **Errors raised by the template** (`raise_exception('...')`) surface as
//!   [`TemplateError::Raised`] with the template's message, not as a generic render error,
//!   so a server can answer 400 with the model author's explanation.
//! * **Runaway templates are bounded**: recursion is capped at minijinja's limit (500
//!   levels, macros cost more than one) and the rendered output at [`MAX_OUTPUT_BYTES`].
//!   A loop that burns CPU without recursing or printing is *not* bounded: that needs
//!   minijinja's `fuel` feature, which the workspace does not enable.
//!
//! Known residual differences, none of which the Qwen templates reach: `~` concatenation
//! prints floats with minijinja's formatting; integers beyond 64 bits arrive as floats
//! from `serde_json`; `strftime_now` uses UTC (Python uses the local zone); a template
//! that stores `_`-prefixed attributes on a namespace is not refused; Python's `repr` of
//! exotic non-printable Unicode is approximated.
//!
//! # Prefix stability across turns (what the prefix cache relies on)
//!
//! With the Qwen3.6 template and `preserve_thinking: true`, a conversation re-rendered
//! after a turn starts with the previous prompt plus the model's generated text plus
//! `<|im_end|>`, **provided** the generated text has exactly this shape (the generation
//! prompt already ends in `<think>\n`, so the model does not emit the opening tag):
//!
//! ```text
//! {reasoning}\n</think>\n\n{content}
//! ```
//!
//! where neither `{reasoning}` nor `{content}` starts or ends with whitespace (the template
//! `|trim`s both), and the assistant message sent back is
//! `{"role": "assistant", "reasoning_content": reasoning, "content": content}` (or the raw
//! text as `content`: the template splits it at `</think>` itself). With
//! `enable_thinking: false` the generation prompt is `<think>\n\n</think>\n\n` and the
//! generated text is just `{content}`; it re-renders identically (empty reasoning). Tool
//! calls stay stable when the model writes them exactly as the template does: a blank
//! line after non-empty content, string arguments raw, other arguments as Python-style
//! JSON (`{"a": 1}`, not `{"a":1}`), one `\n` between calls. Note that the Qwen templates
//! print a top-level boolean or null argument with Python's `str()`: `True`, `False`,
//! `None`. A model that writes `true` there breaks the prefix at that byte (and is shown
//! `True` in later turns: transformers does the same).
//!
//! Without `preserve_thinking` (the Qwen3.5 template, or Qwen3.6 by default) an assistant
//! turn keeps its `<think>` block only while it comes after the last real user message.
//! Inside one agentic tool loop the prefix is therefore stable, but as soon as the next
//! user message arrives every earlier assistant turn is re-rendered as
//! `<|im_start|>assistant\n{content}`: the cached prefix ends right after the previous
//! turn's `<|im_start|>assistant\n`.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Rest, Serde, ValueKind, ValueOrKwargs, from_args};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, Value};
use serde_json::{Map, Value as Json};

/// Name of the one template in a [`ChatTemplate`]'s environment; it appears in error
/// messages as `(in chat_template:LINE)`.
const TEMPLATE_NAME: &str = "chat_template";

/// Rendered prompts larger than this are refused. A full 262,144-token context is about
/// 1 MiB of text, so this only ever stops a runaway template.
/// Instruction budget of one render (minijinja fuel).
pub const TEMPLATE_FUEL: u64 = 50_000_000;

pub const MAX_OUTPUT_BYTES: usize = 64 << 20;

/// The variables `render` sets itself; a kwarg with one of these names is refused, as
/// Python refuses a keyword argument given twice.
const RESERVED_VARIABLES: [&str; 4] = ["messages", "tools", "documents", "add_generation_prompt"];

/// The message fields transformers treats as a message's reasoning, in priority order.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// What can go wrong loading or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template source does not parse.
    #[error("chat template syntax error on line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// The template called `raise_exception(message)`: the request is invalid for this
    /// model (for example a system message that is not first).
    #[error("chat template raised an error: {0}")]
    Raised(String),
    /// Rendering failed for another reason (a filter applied to the wrong type, ...).
    /// `message` includes the template line.
    #[error("chat template failed to render: {message}")]
    Render { message: String },
    /// The request is malformed before the template runs (not a list of message objects,
    /// an empty conversation, a kwarg that collides with a template argument, ...).
    #[error("invalid chat template request: {0}")]
    InvalidRequest(String),
    /// The rendered prompt exceeded [`MAX_OUTPUT_BYTES`].
    #[error("chat template output exceeds {MAX_OUTPUT_BYTES} bytes")]
    OutputTooLarge,
    /// A model-directory file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A model-directory file is present but does not hold a usable template.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
}

/// One rendering request, the arguments of transformers' `apply_chat_template`.
#[derive(Debug, Clone, Copy)]
pub struct RenderRequest<'a> {
    /// The conversation: a JSON array of message objects (`role`, `content`,
    /// `reasoning_content`, `tool_calls`, ...), passed to the template as given. Tool-call
    /// `arguments` must be JSON objects: the Qwen templates iterate them with `|items`,
    /// which fails on the JSON-encoded strings of the OpenAI wire format.
    pub messages: &'a Json,
    /// Tool JSON schemas (an array of objects), or `None`.
    pub tools: Option<&'a Json>,
    /// Append the assistant header that makes the model answer.
    pub add_generation_prompt: bool,
    /// Extra template variables, e.g. `enable_thinking`, `preserve_thinking`.
    pub kwargs: &'a Map<String, Json>,
}

/// A parsed chat template plus the special-token variables it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    special_tokens: BTreeMap<String, String>,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_bytes", &self.source.len())
            .field("special_tokens", &self.special_tokens)
            .finish()
    }
}

impl ChatTemplate {
    /// Parses a template. Syntax errors come back as [`TemplateError::Syntax`] with the line.
    pub fn new(source: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| TemplateError::Render {
                message: e.to_string(),
            })?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_formatter(python_formatter);
        env.set_unknown_method_callback(python_methods);
        env.set_recursion_limit(500);
        // Bounds CPU for templates that loop without recursing or printing. The Qwen templates
        // spend ~10^3–10^5 instructions on ordinary conversations; this leaves a wide margin.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_filter("tojson", tojson);
        env.add_filter("string", string_filter);
        env.add_filter("trim", trim_filter);
        env.add_test("iterable", is_iterable);
        env.add_test("sequence", is_sequence);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| syntax_error(&e))?;
        Ok(ChatTemplate {
            env,
            source: source.to_owned(),
            special_tokens: BTreeMap::new(),
        })
    }

    /// Loads the template a Hugging Face model directory ships, as transformers does:
    /// `chat_template.jinja` if present, else the `chat_template` entry of
    /// `tokenizer_config.json` (a string, or a list of `{name, template}` from which
    /// `"default"` is taken), else `chat_template.json` (the processor's copy).
    /// The special tokens come from `tokenizer_config.json`. `Ok(None)` means the
    /// directory has no template.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Option<Self>, TemplateError> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_if_exists(&config_path)?;

        let jinja_path = dir.join("chat_template.jinja");
        let source = if let Some(source) = read_if_exists(&jinja_path)? {
            Some(source)
        } else if let Some(source) = config
            .as_ref()
            .map(|c| template_from_config(c, &config_path))
            .transpose()?
            .flatten()
        {
            Some(source)
        } else {
            let processor_path = dir.join("chat_template.json");
            read_json_if_exists(&processor_path)?
                .map(|c| template_from_config(&c, &processor_path))
                .transpose()?
                .flatten()
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let special_tokens = config
            .as_ref()
            .map(special_tokens_from_config)
            .unwrap_or_default();
        Ok(Some(
            Self::new(&source)?.with_special_tokens(special_tokens),
        ))
    }

    /// Sets the special-token variables (`eos_token` → `<|im_end|>`, ...). Kwargs passed to
    /// [`render`](Self::render) override them.
    pub fn with_special_tokens(mut self, tokens: BTreeMap<String, String>) -> Self {
        self.special_tokens = tokens;
        self
    }

    /// The special-token variables every render sees.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation to the prompt string.
    pub fn render(&self, req: &RenderRequest<'_>) -> Result<String, TemplateError> {
        let messages = prepare_messages(req.messages)?;
        let tools = prepare_tools(req.tools)?;
        if let Some(name) = RESERVED_VARIABLES
            .iter()
            .find(|n| req.kwargs.contains_key(**n))
        {
            return Err(TemplateError::InvalidRequest(format!(
                "kwarg `{name}` collides with a variable the renderer sets"
            )));
        }

        let mut vars = Map::new();
        for (name, token) in &self.special_tokens {
            vars.insert(name.clone(), Json::String(token.clone()));
        }
        for (name, value) in req.kwargs {
            vars.insert(name.clone(), value.clone());
        }
        vars.insert("messages".into(), Json::Array(messages));
        vars.insert("tools".into(), tools);
        vars.insert("documents".into(), Json::Null);
        vars.insert(
            "add_generation_prompt".into(),
            Json::Bool(req.add_generation_prompt),
        );

        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| render_error(&e))?;
        let mut out = CappedWriter::default();
        match template.render_captured_to(Value::from(Serde(&vars)), &mut out) {
            Ok(_) => String::from_utf8(out.buf).map_err(|e| TemplateError::Render {
                message: e.to_string(),
            }),
            Err(_) if out.overflowed => Err(TemplateError::OutputTooLarge),
            Err(e) => Err(render_error(&e)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Model-directory files.

fn read_if_exists(path: &Path) -> Result<Option<String>, TemplateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TemplateError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<Json>, TemplateError> {
    let Some(text) = read_if_exists(path)? else {
        return Ok(None);
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| TemplateError::Config {
            path: path.to_owned(),
            message: format!("not valid JSON: {e}"),
        })
}

/// The `chat_template` entry of a config file: a string, or transformers' list form
/// `[{"name": ..., "template": ...}]` from which `"default"` is the one rendered when no
/// name is asked for.
fn template_from_config(config: &Json, path: &Path) -> Result<Option<String>, TemplateError> {
    let bad = |message: &str| TemplateError::Config {
        path: path.to_owned(),
        message: message.to_owned(),
    };
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(source)) => Ok(Some(source.clone())),
        Some(Json::Array(entries)) => {
            let mut names = Vec::new();
            for entry in entries {
                let name = entry.get("name").and_then(Json::as_str);
                let template = entry.get("template").and_then(Json::as_str);
                let (Some(name), Some(template)) = (name, template) else {
                    return Err(bad(
                        "chat_template entries must be {\"name\", \"template\"} strings",
                    ));
                };
                if name == "default" {
                    return Ok(Some(template.to_owned()));
                }
                names.push(name);
            }
            Err(bad(&format!(
                "chat_template lists templates {names:?} but none named \"default\""
            )))
        }
        Some(_) => Err(bad(
            "chat_template must be a string or a list of {name, template}",
        )),
    }
}

/// The named special tokens transformers 5 passes to the template: every `*_token` key of
/// `tokenizer_config.json` whose value is a string or an `AddedToken` object (`{"content":
/// ...}`), plus the name → token entries of an `extra_special_tokens` object.
pub fn special_tokens_from_config(config: &Json) -> BTreeMap<String, String> {
    let token_text = |value: &Json| match value {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    };
    let mut tokens = BTreeMap::new();
    let Some(config) = config.as_object() else {
        return tokens;
    };
    for (key, value) in config {
        if key.ends_with("_token")
            && let Some(text) = token_text(value)
        {
            tokens.insert(key.clone(), text);
        }
    }
    if let Some(Json::Object(extra)) = config.get("extra_special_tokens") {
        for (key, value) in extra {
            if let Some(text) = token_text(value) {
                tokens.insert(key.clone(), text);
            }
        }
    }
    tokens
}

// ---------------------------------------------------------------------------------------
// Request preparation (mirrors apply_chat_template / render_jinja_template).

fn prepare_messages(messages: &Json) -> Result<Vec<Json>, TemplateError> {
    let Json::Array(messages) = messages else {
        return Err(TemplateError::InvalidRequest(
            "messages must be a JSON array".into(),
        ));
    };
    if messages.is_empty() {
        return Err(TemplateError::InvalidRequest(
            "Cannot apply chat template to an empty conversation. Provide at least one message."
                .into(),
        ));
    }
    messages
        .iter()
        .map(|message| {
            let Json::Object(message) = message else {
                return Err(TemplateError::InvalidRequest(format!(
                    "chat messages must be JSON objects, got {message}"
                )));
            };
            Ok(Json::Object(alias_reasoning(drop_nulls(message))))
        })
        .collect()
}

/// `{k: v for k, v in msg.items() if v is not None}`: OpenAI clients send
/// `"content": null` next to `tool_calls`, which many templates would print as `None`.
fn drop_nulls(message: &Map<String, Json>) -> Map<String, Json> {
    message
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `{"thinking": r, **message, "reasoning_content": r}` where `r` is the first non-null
/// reasoning field, so the key order matches Python's dict exactly.
fn alias_reasoning(message: Map<String, Json>) -> Map<String, Json> {
    let Some(reasoning) = REASONING_FIELDS
        .iter()
        .find_map(|f| message.get(*f).filter(|v| !v.is_null()))
        .cloned()
    else {
        return message;
    };
    let mut aliased = Map::new();
    aliased.insert("thinking".into(), reasoning.clone());
    aliased.extend(message);
    aliased.insert("reasoning_content".into(), reasoning);
    aliased
}

fn prepare_tools(tools: Option<&Json>) -> Result<Json, TemplateError> {
    match tools {
        None | Some(Json::Null) => Ok(Json::Null),
        Some(Json::Array(list)) if list.iter().all(Json::is_object) => {
            Ok(Json::Array(list.clone()))
        }
        Some(_) => Err(TemplateError::InvalidRequest(
            "tools must be a JSON array of tool schema objects".into(),
        )),
    }
}

// ---------------------------------------------------------------------------------------
// Errors.

/// Marker attached (as the error source) to the error `raise_exception` returns, so that
/// [`render_error`] can tell a template's deliberate error from an engine failure.
#[derive(Debug)]
struct RaisedByTemplate(String);

impl fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

fn syntax_error(e: &Error) -> TemplateError {
    TemplateError::Syntax {
        line: e.line().unwrap_or(0),
        message: e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_owned),
    }
}

fn render_error(e: &Error) -> TemplateError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if let Some(raised) = err.downcast_ref::<RaisedByTemplate>() {
            return TemplateError::Raised(raised.0.clone());
        }
        cause = err.source();
    }
    if e.kind() == ErrorKind::SyntaxError {
        return syntax_error(e);
    }
    TemplateError::Render {
        message: e.to_string(),
    }
}

/// An `io::Write` into memory that refuses to grow past [`MAX_OUTPUT_BYTES`].
#[derive(Default)]
struct CappedWriter {
    buf: Vec<u8>,
    overflowed: bool,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("chat template output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Globals: raise_exception, strftime_now.

/// `raise_exception(message)`: transformers raises `jinja2.TemplateError(message)`.
fn raise_exception(message: Value) -> Result<Value, Error> {
    let message = py_str(&message);
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedByTemplate(message)))
}

/// `strftime_now(format)`: `datetime.now().strftime(format)`, in UTC.
fn strftime_now(format: &str) -> Result<Value, Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    Ok(Value::from(strftime(format, now.as_secs() as i64)))
}

/// C `strftime` for a UTC time, covering the directives chat templates use (`%d %b %Y`,
/// `%Y-%m-%d`, glibc's `%-d`, ...). Unknown directives are copied through, as glibc does.
fn strftime(format: &str, unix_secs: i64) -> String {
    const DAYS: [&str; 7] = [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(is_leap && month > 2);
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        let unpadded = spec == Some('-');
        if unpadded {
            spec = chars.next();
        }
        let num = |out: &mut String, v: i64, width: usize| {
            if unpadded {
                let _ = write!(out, "{v}");
            } else {
                let _ = write!(out, "{v:0width$}");
            }
        };
        match spec {
            Some('Y') => num(&mut out, year, 4),
            Some('y') => num(&mut out, year.rem_euclid(100), 2),
            Some('m') => num(&mut out, month, 2),
            Some('d') => num(&mut out, day, 2),
            Some('e') => {
                let _ = write!(out, "{day:2}");
            }
            Some('H') => num(&mut out, hour, 2),
            Some('I') => num(&mut out, hour12, 2),
            Some('M') => num(&mut out, minute, 2),
            Some('S') => num(&mut out, second, 2),
            Some('j') => num(&mut out, yday, 3),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('b' | 'h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('u') => num(&mut out, if weekday == 0 { 7 } else { weekday as i64 }, 1),
            Some('w') => num(&mut out, weekday as i64, 1),
            Some('F') => {
                let _ = write!(out, "{year:04}-{month:02}-{day:02}");
            }
            Some('T') => {
                let _ = write!(out, "{hour:02}:{minute:02}:{second:02}");
            }
            Some('D') => {
                let _ = write!(out, "{month:02}/{day:02}/{:02}", year.rem_euclid(100));
            }
            Some('Z') => out.push_str("UTC"),
            Some('z') => out.push_str("+0000"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------------------
// Python semantics: str(), whitespace, string methods.

/// `{{ value }}` prints `str(value)`, undefined prints nothing.
fn python_formatter(out: &mut Output, _state: &mut State, value: &Value) -> Result<(), Error> {
    if value.is_undefined() {
        return Ok(());
    }
    let text = match value.as_str() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(py_str(value)),
    };
    out.write_str(&text).map_err(Error::from)
}

/// jinja2's `|string`: `str(value)`; strings (and safe strings) pass unchanged.
fn string_filter(value: &Value) -> Value {
    if value.kind() == ValueKind::String {
        value.clone()
    } else {
        Value::from(py_str(value))
    }
}

/// jinja2's `|trim(chars=None)`: `str(value).strip(chars)`.
fn trim_filter(value: &Value, chars: Option<String>) -> String {
    let text = match value.as_str() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(py_str(value)),
    };
    match chars {
        Some(chars) => text.trim_matches(|c| chars.contains(c)).to_owned(),
        None => text.trim_matches(py_isspace).to_owned(),
    }
}

/// jinja2's `iterable` test (`iter(value)` works): strings, containers and undefined
/// (jinja2's `Undefined` iterates as empty) are iterable; `None`, booleans and numbers
/// are not. minijinja also iterates `none`, which would send `None` content down the
/// "list of parts" branch of a template.
fn is_iterable(value: &Value) -> bool {
    match value.kind() {
        ValueKind::Undefined => true,
        ValueKind::None | ValueKind::Bool | ValueKind::Number => false,
        _ => value.try_iter().is_ok(),
    }
}

/// jinja2's `sequence` test (`len(value)` and `value[...]` work): strings, lists and
/// dicts, and undefined; minijinja only counts lists.
fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Undefined
            | ValueKind::String
            | ValueKind::Bytes
            | ValueKind::Seq
            | ValueKind::Map
    )
}

/// Python's `str.isspace()` for one character: Unicode `White_Space` plus the ASCII
/// file/group/record/unit separators `\x1c`..`\x1f`.
fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Method calls the engine does not know (`s.startswith(...)`, `d.items()`, ...). The
/// whitespace-sensitive string methods are done here with Python's whitespace; everything
/// else goes to `minijinja_contrib::pycompat`.
fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let no_chars = matches!(args, [] | [_]) && args.iter().all(Value::is_none);
    if let (Some(s), true) = (value.as_str(), no_chars) {
        match method {
            "strip" => return Ok(Value::from(s.trim_matches(py_isspace))),
            "lstrip" => return Ok(Value::from(s.trim_start_matches(py_isspace))),
            "rstrip" => return Ok(Value::from(s.trim_end_matches(py_isspace))),
            "split" => {
                return Ok(s
                    .split(py_isspace)
                    .filter(|part| !part.is_empty())
                    .map(Value::from)
                    .collect());
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Python's `str(value)` for the values a template can hold.
fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => {
            let mut out = String::new();
            py_repr(value, &mut out);
            out
        }
    }
}

/// Python's `repr(value)`: what `str()` prints for containers and their items.
fn py_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => push_number(value, out),
        ValueKind::String => py_repr_str(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map if value.as_object().is_some() => {
            out.push('{');
            let pairs = value.as_object().and_then(|o| o.try_iter_pairs());
            for (i, (k, v)) in pairs.into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&k, out);
                out.push_str(": ");
                py_repr(&v, out);
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`; backslash
/// escapes for the quote, `\\`, `\t`, `\n`, `\r` and non-printable characters. Python's
/// printable test is approximated by the control, format and separator characters.
fn py_repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || ('\x7f'..='\u{a0}').contains(&c) || c == '\u{ad}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if ('\u{2000}'..='\u{200f}').contains(&c)
                || ('\u{2028}'..='\u{202f}').contains(&c)
                || ('\u{205f}'..='\u{206f}').contains(&c)
                || c == '\u{3000}'
                || c == '\u{feff}' =>
            {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Integers as digits, floats as Python's `repr(float)`.
fn push_number(value: &Value, out: &mut String) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
    } else {
        match f64::try_from(value.clone()) {
            Ok(f) => push_py_float(f, out, false),
            Err(_) => {
                let _ = write!(out, "{value}");
            }
        }
    }
}

/// Python's `repr(float)` (shortest round-trip digits; scientific notation when the
/// exponent is below -4 or at least 16) or, with `json`, `json.dumps` of it (which
/// differs only for the non-finite values).
fn push_py_float(f: f64, out: &mut String, json: bool) {
    if f.is_nan() {
        out.push_str(if json { "NaN" } else { "nan" });
        return;
    }
    if f.is_infinite() {
        let text = match (json, f > 0.0) {
            (true, true) => "Infinity",
            (true, false) => "-Infinity",
            (false, true) => "inf",
            (false, false) => "-inf",
        };
        out.push_str(text);
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "1.2345e-7", "-0e0".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if f.is_sign_negative() {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
}

// ---------------------------------------------------------------------------------------
// tojson: Python's json.dumps.

/// How `json.dumps` lays out its output.
struct JsonStyle {
    ensure_ascii: bool,
    indent: Option<String>,
    item_separator: String,
    key_separator: String,
    sort_keys: bool,
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, which is `json.dumps` with those arguments.
fn tojson(value: &Value, args: Rest<ValueOrKwargs>) -> Result<Value, Error> {
    let args = args.into_values();
    let (positional, kwargs): (&[Value], Kwargs) = from_args(&args)?;
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if positional.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut params: [Option<Value>; 4] = Default::default();
    for (slot, value) in params.iter_mut().zip(positional) {
        *slot = Some(value.clone());
    }
    for (slot, name) in params.iter_mut().zip(NAMES) {
        if let Some(v) = kwargs.get::<Option<Value>>(name)? {
            *slot = Some(v);
        }
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = params;
    let present = |v: &Option<Value>| {
        v.as_ref()
            .filter(|v| !v.is_none() && !v.is_undefined())
            .cloned()
    };

    let indent = match present(&indent) {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) if v.kind() == ValueKind::Bool => Some(" ".repeat(usize::from(v.is_true()))),
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.max(0) as usize)),
            None => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson indent must be an integer or a string",
                ));
            }
        },
    };
    let (item_separator, key_separator) = match present(&separators) {
        None if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        None => (", ".to_owned(), ": ".to_owned()),
        Some(v) => {
            let parts: Vec<Value> = v.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] if item.as_str().is_some() && key.as_str().is_some() => (
                    item.as_str().unwrap_or_default().to_owned(),
                    key.as_str().unwrap_or_default().to_owned(),
                ),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson separators must be a pair of strings",
                    ));
                }
            }
        }
    };
    let style = JsonStyle {
        ensure_ascii: present(&ensure_ascii).is_some_and(|v| v.is_true()),
        indent,
        item_separator,
        key_separator,
        sort_keys: present(&sort_keys).is_some_and(|v| v.is_true()),
    };
    let mut out = String::new();
    write_json(value, &style, 0, &mut out)?;
    Ok(Value::from(out))
}

fn write_json(
    value: &Value,
    style: &JsonStyle,
    level: usize,
    out: &mut String,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if value.is_integer() {
                let _ = write!(out, "{value}");
            } else {
                let f = f64::try_from(value.clone())?;
                push_py_float(f, out, true);
            }
        }
        ValueKind::String => write_json_str(value.as_str().unwrap_or_default(), style, out),
        // minijinja yields lazy iterables where Python has lists (`xs[::-1]`, `reverse`).
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_json_container(out, style, level, '[', ']', &items, |item, out| {
                write_json(item, style, level + 1, out)
            })?;
        }
        ValueKind::Map if value.as_object().is_some() => {
            let mut pairs: Vec<(String, Value)> =
                match value.as_object().and_then(|o| o.try_iter_pairs()) {
                    Some(pairs) => pairs
                        .map(|(k, v)| Ok((json_key(&k)?, v)))
                        .collect::<Result<_, Error>>()?,
                    None => Vec::new(),
                };
            if style.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_json_container(out, style, level, '{', '}', &pairs, |(k, v), out| {
                write_json_str(k, style, out);
                out.push_str(&style.key_separator);
                write_json(v, style, level + 1, out)
            })?;
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {kind} is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

/// Python's `_iterencode_list`/`_iterencode_dict` layout: `[]` when empty; otherwise with
/// an indent every item goes on its own line, `indent * level` deep.
fn write_json_container<T>(
    out: &mut String,
    style: &JsonStyle,
    level: usize,
    open: char,
    close: char,
    items: &[T],
    mut write_item: impl FnMut(&T, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(indent) = &style.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(indent);
            }
        }
    };
    newline(out, level + 1);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&style.item_separator);
            newline(out, level + 1);
        }
        write_item(item, out)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

/// A dict key as `json.dumps` writes it: strings as is, numbers, booleans and `None` as
/// their JSON spelling.
fn json_key(key: &Value) -> Result<String, Error> {
    Ok(match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::None => "null".to_owned(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
        ValueKind::Number => {
            let mut s = String::new();
            if key.is_integer() {
                let _ = write!(s, "{key}");
            } else {
                push_py_float(f64::try_from(key.clone())?, &mut s, true);
            }
            s
        }
        kind => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("keys must be str, int, float, bool or None, not {kind}"),
            ));
        }
    })
}

/// A JSON string as Python writes it: `"` and `\` escaped, `\b \f \n \r \t` by name, other
/// control characters as `\u00XX`; with `ensure_ascii` everything beyond ASCII as `\uXXXX`
/// (UTF-16 surrogate pairs above the BMP).
fn write_json_str(s: &str, style: &JsonStyle, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if style.ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py_float(f: f64) -> String {
        let mut s = String::new();
        push_py_float(f, &mut s, false);
        s
    }

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (0.5, "0.5"),
            (0.1, "0.1"),
            (123.456, "123.456"),
            (1e-4, "0.0001"),
            (1e-5, "1e-05"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.2345e20, "1.2345e+20"),
            (1e100, "1e+100"),
            (-2.5, "-2.5"),
            (f64::INFINITY, "inf"),
        ];
        for (f, expected) in cases {
            assert_eq!(py_float(f), expected, "{f:e}");
        }
    }

    #[test]
    fn strftime_matches_c() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            strftime("%A %B %-d, %I %p %j %%", t),
            "Thursday February 29, 01 PM 060 %"
        );
        assert_eq!(strftime("%F %T %Z %Q", 0), "1970-01-01 00:00:00 UTC %Q");
        assert_eq!(strftime("%a %e", -86_400), "Wed 31");
    }

    #[test]
    fn python_whitespace_includes_separators() {
        assert_eq!(trim_filter(&Value::from("\x1c a \u{3000}"), None), "a");
        assert_eq!(trim_filter(&Value::from(true), None), "True");
    }
}
