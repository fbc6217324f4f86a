//! What the OpenAI and Anthropic routes share: sampling fields, the context check, submitting
//! to the scheduler, ids and timestamps.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;
use qinfer_engine::generate::GenerateOptions;
use qinfer_engine::images::PromptImage;
use qinfer_engine::sampler::SamplingParams;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{ApiError, Protocol};
use crate::json::Fields;
use crate::scheduler::{Admission, ChannelSink, GenRequest, Out, RETRY_AFTER, SubmitError};
use crate::{AppState, Shared};

/// Reads the sampling fields both protocols share onto the model's defaults. `names` maps our
/// parameters to the protocol's spelling where it differs.
pub fn sampling(f: &Fields<'_>, base: &SamplingParams) -> Result<SamplingParams, ApiError> {
    let mut p = base.clone();
    if let Some(v) = f.f32("temperature")? {
        p.temperature = v;
    }
    if let Some(v) = f.f32("top_p")? {
        p.top_p = v;
    }
    match f.get("top_k") {
        // A negative integer (vLLM's -1) means off, as 0 does.
        Some(serde_json::Value::Number(n)) if n.as_i64().is_some_and(|k| k < 0) => p.top_k = 0,
        _ => {
            if let Some(v) = f.usize("top_k")? {
                p.top_k = v;
            }
        }
    }
    if let Some(v) = f.f32("min_p")? {
        p.min_p = v;
    }
    if let Some(v) = f.f32("presence_penalty")? {
        p.presence_penalty = v;
    }
    if let Some(v) = f.f32("frequency_penalty")? {
        p.frequency_penalty = v;
    }
    if let Some(v) = f.f32("repetition_penalty")? {
        p.repetition_penalty = v;
    }
    if let Some(v) = f.seed("seed")? {
        p.seed = Some(v);
    }
    p.validate().map_err(|e| {
        let text = e.to_string();
        let param = [
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ]
        .into_iter()
        .find(|n| text.contains(n))
        .unwrap_or("temperature");
        ApiError::invalid(param, text)
    })?;
    Ok(p)
}

/// Whether any of a request's `tools` asks for strict arguments (`strict: true`, or
/// `function.strict: true` in chat): then the tool calls of the answer are constrained to the
/// tools' schemas (`GenerateOptions::strict_tools`).
pub fn any_strict(tools: Option<&Vec<serde_json::Value>>) -> bool {
    let strict = |v: Option<&serde_json::Value>| v == Some(&serde_json::Value::Bool(true));
    tools
        .into_iter()
        .flatten()
        .any(|t| strict(t.get("strict")) || strict(t.get("function").and_then(|f| f.get("strict"))))
}

/// [`any_strict`] for the request's `tools`, checked: when strict, the grammar of calls to
/// the offered tools (`specs`) is compiled now, and one the engine cannot enforce is a 400
/// naming `tools` and why.
pub fn strict_tools(
    state: &AppState,
    f: &Fields<'_>,
    specs: &[qinfer_engine::parser::ToolSpec],
    single_call: bool,
) -> Result<bool, ApiError> {
    if !any_strict(f.array("tools")?) || specs.is_empty() {
        return Ok(false);
    }
    state
        .bundle
        .tokenizer
        .schema_index()
        .and_then(|index| index.compile_tool_calls(specs, single_call))
        .map_err(|e| {
            ApiError::invalid("tools", format!("strict `tools` cannot be enforced: {e}"))
        })?;
    Ok(true)
}

/// What form the answer takes (chat `response_format`, Responses `text.format`).
#[derive(Clone, Debug, PartialEq)]
pub enum OutputFormat {
    Text,
    /// One JSON object (syntax only).
    JsonObject,
    /// A JSON value valid against this schema (structured outputs).
    JsonSchema(serde_json::Value),
}

impl OutputFormat {
    /// `text` or `json_object` (`field` names the format object for errors).
    pub fn simple(kind: &str, field: &str) -> Result<OutputFormat, ApiError> {
        match kind {
            "text" => Ok(OutputFormat::Text),
            "json_object" => Ok(OutputFormat::JsonObject),
            other => Err(ApiError::invalid(
                format!("{field}.type"),
                format!("`{field}.type` is `{other}`; expected text, json_object or json_schema"),
            )),
        }
    }

    /// A `json_schema` format's `schema` (`f` is the object holding `name`, `schema`,
    /// `strict`), checked now: a schema the engine cannot enforce is a 400 naming why.
    pub fn from_schema(state: &AppState, f: &Fields<'_>) -> Result<OutputFormat, ApiError> {
        let schema = f.object("schema")?.ok_or_else(|| f.missing("schema"))?;
        let schema = serde_json::Value::Object(schema.clone());
        let invalid = |e: String| {
            let p = f.at("schema");
            ApiError::invalid(&p, format!("`{p}` cannot be enforced: {e}"))
        };
        state
            .bundle
            .tokenizer
            .schema_index()
            .and_then(|index| index.compile(&schema))
            .map_err(invalid)?;
        Ok(OutputFormat::JsonSchema(schema))
    }

    /// The schema to constrain the answer to, if any.
    pub fn schema(&self) -> Option<serde_json::Value> {
        match self {
            OutputFormat::JsonSchema(s) => Some(s.clone()),
            _ => None,
        }
    }
}

/// Texts longer than this are counted piece by piece before they are tokenized whole.
const COUNT_FIRST_BYTES: usize = 1 << 20;
/// The pieces of that count.
const COUNT_PIECE_BYTES: usize = 64 << 10;

/// Refuses a text that cannot fit the context before the cost of tokenizing it whole is spent:
/// by its length alone (more bytes than `ctx` tokens of the longest token hold), then, for a
/// text over [`COUNT_FIRST_BYTES`], by counting its tokens in pieces of
/// [`COUNT_PIECE_BYTES`] (cut at whitespace) and stopping as soon as they pass the context.
/// Tokenizing costs about 300 bytes of memory per byte of text (measured: 1.0 GB for 3.4 MB), so
/// a prompt is only ever tokenized whole when it holds at most `ctx` tokens.
pub fn check_prompt_fits(state: &AppState, text: &str) -> Result<(), String> {
    let ctx = state.config.ctx;
    if text.len() > state.prompt_byte_limit {
        return Err(format!(
            "the prompt is {} bytes: even at the tokenizer's longest token that is more than the \
             context of {ctx} tokens",
            text.len(),
        ));
    }
    if text.len() <= COUNT_FIRST_BYTES {
        return Ok(());
    }
    let (mut rest, mut counted, mut pieces) = (text, 0usize, 0usize);
    while !rest.is_empty() {
        let mut cut = rest.len().min(COUNT_PIECE_BYTES);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut < rest.len()
            && let Some(ws) = rest[..cut].rfind(char::is_whitespace)
            && ws > cut / 2
        {
            cut = ws;
        }
        let (piece, tail) = rest.split_at(cut);
        counted += state
            .bundle
            .tokenizer
            .encode(piece)
            .map_err(|e| e.to_string())?
            .len();
        pieces += 1;
        // A cut can split what the whole text would merge: allow two tokens per cut.
        if counted > ctx + 2 * pieces {
            return Err(format!(
                "the prompt is more than {ctx} tokens (its first {} bytes are already {counted}): \
                 it cannot fit the context",
                text.len() - tail.len()
            ));
        }
        rest = tail;
    }
    Ok(())
}

/// Runs `plan` — template rendering and tokenizing, work that grows with the request — on the
/// blocking pool, never on the HTTP runtime's threads (so `/health` and every other route keep
/// answering while a large prompt is tokenized), at most [`crate::PLANNING_SLOTS`] at once. A
/// client that goes away meanwhile never reaches the engine.
pub async fn off_runtime<T: Send + 'static>(
    state: &Shared,
    plan: impl FnOnce(Shared) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = state
        .planning
        .acquire()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down"))?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || plan(state))
        .await
        .unwrap_or_else(|e| {
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("request planning failed: {e}"),
            ))
        })
}

/// The stop strings of field `name`, within the engine's limits (a 400 naming the field).
pub fn stop_strings(f: &Fields<'_>, name: &str) -> Result<Vec<String>, ApiError> {
    let stops = f.strings(name)?;
    qinfer_engine::sampler::check_stop_strings(&stops)
        .map_err(|e| ApiError::invalid(name, format!("`{name}`: {e}")))?;
    Ok(stops)
}

/// The output budget: `requested` if it fits after the prompt (of field `prompt_field`), else
/// a 400 with the numbers in the protocol's own words — the ones its clients recognise and
/// act on: Anthropic's "prompt is too long: P tokens > M maximum" and "input length and
/// `max_tokens` exceed context limit: P + N > C, …" (Claude Code retries with a smaller
/// budget on the latter), OpenAI's `context_length_exceeded` code.
pub fn max_tokens(
    state: &AppState,
    prompt: usize,
    prompt_field: &str,
    requested: Option<usize>,
    field: &str,
    protocol: Protocol,
) -> Result<usize, ApiError> {
    let ctx = state.config.ctx;
    if prompt >= ctx {
        let message = match protocol {
            Protocol::Anthropic => {
                format!("prompt is too long: {prompt} tokens > {} maximum", ctx - 1)
            }
            Protocol::OpenAi => format!(
                "This model's maximum context length is {ctx} tokens. However, your \
                 {prompt_field} resulted in {prompt} tokens: at most {} prompt tokens leave room \
                 for one generated token. Please reduce the length of the {prompt_field}.",
                ctx - 1
            ),
        };
        return Err(ApiError::context_exceeded(prompt_field, message).with_protocol(protocol));
    }
    // `n` comes from the client: any u64 (checked addition, never a wrap past the context).
    match requested {
        None => Ok(ctx - prompt),
        Some(n) if prompt.checked_add(n).is_some_and(|end| end <= ctx) => Ok(n),
        Some(n) => {
            let message = match protocol {
                Protocol::Anthropic => format!(
                    "input length and `{field}` exceed context limit: {prompt} + {n} > {ctx}, \
                     decrease input length or `{field}` and try again"
                ),
                Protocol::OpenAi => format!(
                    "This model's maximum context length is {ctx} tokens. However, you requested \
                     {} tokens ({prompt} in the {prompt_field}, {n} in the completion): \
                     `{field}` is {n} but at most {} new tokens fit. Please reduce the length \
                     of the {prompt_field} or `{field}`.",
                    prompt as u128 + n as u128,
                    ctx - prompt
                ),
            };
            Err(ApiError::context_exceeded(field, message).with_protocol(protocol))
        }
    }
}

/// Submits a generation; the first receiver yields its [`Out`] messages (dropping it cancels),
/// the second is told how the prompt cache served the prompt when the request is admitted.
/// `prompt_text` (the rendered prompt) lets the cache remember the exact ids of prompt +
/// answer.
pub fn submit_tracked(
    state: &AppState,
    prompt: Vec<u32>,
    images: Vec<PromptImage>,
    prompt_text: Option<String>,
    opts: GenerateOptions,
    logprobs: Option<usize>,
    answer_prefix: Option<Vec<u32>>,
    protocol: Protocol,
) -> Result<
    (
        UnboundedReceiver<Out>,
        tokio::sync::oneshot::Receiver<Admission>,
    ),
    ApiError,
> {
    let (mut opts, mut answer_prefix) = (opts, answer_prefix);
    if let Some(script) = &state.config.scripted_tool_calls
        && let Some(text) = &prompt_text
    {
        let answer = scripted_answer(script, &opts.parser.tools, text);
        let tok = &state.bundle.tokenizer;
        let mut ids = tok.encode(&answer).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).with_protocol(protocol)
        })?;
        ids.extend(tok.token_id("<|im_end|>"));
        // Thinking (if the prompt opens it) closes after one token; then the script.
        opts.reasoning_budget = Some(0);
        opts.max_tokens = opts.max_tokens.max(ids.len() + 8);
        answer_prefix = Some(ids);
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (admitted_tx, admitted_rx) = tokio::sync::oneshot::channel();
    let mut req = GenRequest::new(
        prompt,
        opts,
        ChannelSink {
            out: tx,
            admitted: Some(admitted_tx),
        },
    );
    req.logprobs = logprobs;
    req.answer_prefix = answer_prefix;
    req.prompt_text = prompt_text;
    req.images = images;
    match state.scheduler.submit(req) {
        Ok(()) => Ok((rx, admitted_rx)),
        Err(SubmitError::QueueFull) => {
            state
                .metrics
                .rejected_queue_full
                .fetch_add(1, Ordering::Relaxed);
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the server is at capacity ({} running, {} queued); retry later",
                    state.config.scheduler.max_seqs, state.config.scheduler.max_queue
                ),
            )
            .with_protocol(protocol);
            e.retry_after = Some(RETRY_AFTER.as_secs().max(1));
            Err(e)
        }
        Err(SubmitError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        )
        .with_protocol(protocol)),
    }
}

/// The scripted answer of a request, for tests that run real agents against a random-weight
/// model (which would never call a tool): a request whose last user turn is a tool result is
/// answered `Done.`; one that offers a tool named in `script` calls the first such tool with
/// the arguments given there; any other is answered `Done.`.
pub fn scripted_answer(
    script: &serde_json::Map<String, serde_json::Value>,
    tools: &[qinfer_engine::parser::ToolSpec],
    prompt_text: &str,
) -> String {
    let last_user = prompt_text
        .rfind("<|im_start|>user\n")
        .map(|i| &prompt_text[i + "<|im_start|>user\n".len()..]);
    if last_user.is_some_and(|t| t.starts_with("<tool_response>")) {
        return "Done.".into();
    }
    let Some((name, args)) = tools
        .iter()
        .find_map(|t| script.get(&t.name).map(|a| (&t.name, a)))
    else {
        return "Done.".into();
    };
    let mut call = format!("<tool_call>\n<function={name}>\n");
    for (k, v) in args.as_object().into_iter().flatten() {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => python_json(other),
        };
        call.push_str(&format!("<parameter={k}>\n{v}\n</parameter>\n"));
    }
    call.push_str("</function>\n</tool_call>");
    call
}

/// JSON as the chat template's `tojson` writes it (Python's separators `, ` and `: `), so a
/// scripted call renders back into history exactly as it was generated.
fn python_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(a) => {
            let items: Vec<String> = a.iter().map(python_json).collect();
            format!("[{}]", items.join(", "))
        }
        serde_json::Value::Object(o) => {
            let items: Vec<String> = o
                .iter()
                .map(|(k, x)| {
                    format!(
                        "{}: {}",
                        serde_json::Value::from(k.as_str()),
                        python_json(x)
                    )
                })
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// A unique id with a protocol prefix (`chatcmpl-`, `msg_`, ...).
pub fn new_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "{prefix}{:016x}{n:04x}",
        t ^ (n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    )
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The model check every generation route makes: `model` is required; any name is served
/// unless the server is strict about names (`--strict-model-name`). Responses report the
/// served name.
pub fn check_model(state: &AppState, f: &Fields<'_>, protocol: Protocol) -> Result<(), ApiError> {
    let model = f
        .required_str("model")
        .map_err(|e| e.with_protocol(protocol))?;
    if !state.config.serves(model) {
        let names: Vec<&str> = state.config.names().collect();
        let mut e = ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "model `{model}` does not exist; this server serves `{}`",
                names.join("`, `")
            ),
        )
        .with_protocol(protocol);
        e.param = Some("model".into());
        return Err(e);
    }
    if model != state.config.model_name && !state.config.names().any(|n| n == model) {
        tracing::debug!(requested = model, served = %state.config.model_name, "serving a request for another model name");
    }
    Ok(())
}

/// Puts a request's system messages where the Qwen template takes them. The template renders
/// one system message, first, and refuses one anywhere else. So the leading run of system
/// messages (the protocol's own system field, then any `system` / `developer` messages before
/// the first other turn) becomes that one message, their texts joined by a blank line, and a
/// system message after another turn is rendered in place as a user turn with the same text.
/// Rendering in place, not moving the text to the top, keeps every earlier turn's rendering
/// unchanged when a later turn adds one, so the prompt cache keeps serving the conversation.
pub fn place_system_messages(messages: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = Vec::with_capacity(messages.len());
    let mut leading = true;
    for mut m in messages {
        if m["role"] != "system" {
            leading = false;
            out.push(m);
            continue;
        }
        let text = m["content"].as_str().unwrap_or_default().to_string();
        if !leading {
            m["role"] = "user".into();
            out.push(m);
        } else if let Some(first) = out.first_mut() {
            let joined = format!(
                "{}\n\n{text}",
                first["content"].as_str().unwrap_or_default()
            );
            first["content"] = joined.into();
        } else {
            out.push(m);
        }
    }
    out
}

/// Why a prompt is refused before generation.
#[derive(Debug)]
pub enum PromptError {
    /// It cannot fit the context ([`check_prompt_fits`]).
    TooLong(String),
    /// The tokenizer refused it.
    Invalid(String),
}

impl PromptError {
    /// The error about `field`, in `protocol`'s words (an overflow: OpenAI's
    /// `context_length_exceeded`, Anthropic's "prompt is too long: …").
    pub fn into_api(self, field: &str, protocol: Protocol) -> ApiError {
        match self {
            PromptError::TooLong(m) => match protocol {
                Protocol::Anthropic => {
                    ApiError::context_exceeded(field, format!("prompt is too long: {m}"))
                }
                Protocol::OpenAi => ApiError::context_exceeded(field, m),
            },
            PromptError::Invalid(m) => ApiError::invalid(field, m),
        }
        .with_protocol(protocol)
    }
}

/// Tokenizes a rendered prompt: through the prompt cache when it is on (the ids of remembered
/// answers are kept, see [`qinfer_engine::prompt_cache::PromptCache::encode`]).
pub fn encode_prompt(state: &AppState, text: &str) -> Result<Vec<u32>, PromptError> {
    check_prompt_fits(state, text).map_err(PromptError::TooLong)?;
    let tok = &state.bundle.tokenizer;
    match &state.prompt_cache {
        Some(c) => c.encode(tok, text),
        None => tok.encode(text),
    }
    .map_err(|e| PromptError::Invalid(e.to_string()))
}

/// The response header naming why cached prompt tokens were computed again.
pub const CACHE_MISS_HEADER: &str = "x-qinfer-cache-miss";
/// The response header giving the prompt tokens served from the prompt cache.
pub const CACHED_TOKENS_HEADER: &str = "x-qinfer-cached-tokens";

/// Adds the prompt-cache headers of `admission` to `resp`.
pub fn cache_headers(resp: &mut axum::response::Response, admission: Option<&Admission>) {
    let Some(a) = admission else { return };
    let headers = resp.headers_mut();
    if let Ok(v) = axum::http::HeaderValue::from_str(&a.cached_tokens.to_string()) {
        headers.insert(CACHED_TOKENS_HEADER, v);
    }
    if let Some(miss) = &a.miss
        && let Ok(v) = axum::http::HeaderValue::from_str(miss)
    {
        headers.insert(CACHE_MISS_HEADER, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qinfer_engine::parser::ToolSpec;
    use serde_json::json;

    #[test]
    fn system_messages_lead_or_become_user_turns_in_place() {
        let placed = place_system_messages(vec![
            json!({"role": "system", "content": "A"}),
            json!({"role": "system", "content": "B"}),
            json!({"role": "user", "content": "Q"}),
            json!({"role": "system", "content": "C"}),
        ]);
        assert_eq!(
            placed,
            [
                json!({"role": "system", "content": "A\n\nB"}),
                json!({"role": "user", "content": "Q"}),
                json!({"role": "user", "content": "C"}),
            ]
        );
        let later = place_system_messages(vec![
            json!({"role": "user", "content": "Q"}),
            json!({"role": "system", "content": "C"}),
        ]);
        assert_eq!(later[1], json!({"role": "user", "content": "C"}));
    }

    #[test]
    fn scripted_answers_call_an_offered_tool_then_say_done() {
        let script = json!({"shell": {"cmd": "ls", "n": 2}})
            .as_object()
            .unwrap()
            .clone();
        let tools = [
            ToolSpec::new("other", json!({"type": "object"})),
            ToolSpec::new("shell", json!({"type": "object"})),
        ];
        let prompt = "<|im_start|>user\nList files<|im_end|>\n<|im_start|>assistant\n";
        assert_eq!(
            scripted_answer(&script, &tools, prompt),
            "<tool_call>\n<function=shell>\n<parameter=cmd>\nls\n</parameter>\n\
             <parameter=n>\n2\n</parameter>\n</function>\n</tool_call>"
        );
        let after = format!(
            "{prompt}…<|im_end|>\n<|im_start|>user\n<tool_response>\nok\n</tool_response><|im_end|>\n"
        );
        assert_eq!(scripted_answer(&script, &tools, &after), "Done.");
        assert_eq!(scripted_answer(&script, &tools[..1], prompt), "Done.");
    }
}
