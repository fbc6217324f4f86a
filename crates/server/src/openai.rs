//! The OpenAI protocol: `POST /v1/chat/completions` and `POST /v1/completions`.
//!
//! A chat request becomes the Qwen chat template's input (messages with `reasoning_content`
//! and tool calls whose arguments are objects, tools, `chat_template_kwargs`), a prompt of
//! token ids, and [`GenerateOptions`]. The engine's parser events map one to one onto the
//! response: `Reasoning` → `reasoning_content`, `Content` → `content`, tool-call events →
//! `tool_calls` deltas. Output that is not a well-formed tool call arrives as content, so a
//! drifting model never produces an error.
//!
//! On input, `reasoning` is accepted as an alias of `reasoning_content` (clients of other
//! servers send it), so preserved thinking never renders as an empty think block.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use qinfer_engine::decode::TokenLogprob;
use qinfer_engine::generate::{FinishReason, GenerateOptions};
use qinfer_engine::images::PromptImage;
use qinfer_engine::parser::{Event, ParserOptions, ToolSpec};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ApiError, Protocol};
use crate::images;
use crate::json::{Fields, JsonBody, element, type_name};
use crate::scheduler::{Out, Summary};
use crate::shared::{self, check_model, new_id, now_secs};
use crate::{AppState, Shared};

/// A rendered chat prompt.
#[derive(Debug)]
pub struct RenderedChat {
    pub text: String,
    /// The prompt ends inside an opened think block.
    pub starts_in_reasoning: bool,
    pub tools: Vec<ToolSpec>,
    /// The messages' images, in the order the template placed them.
    pub images: Vec<images::Pending>,
}

/// How the request constrains tool use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

impl ToolChoice {
    /// The forced start of the answer: a required call opens it with the call tag, a named one
    /// with its header too.
    pub(crate) fn answer_prefix(&self, state: &AppState) -> Result<Option<Vec<u32>>, ApiError> {
        match self {
            ToolChoice::Required => Some("<tool_call>\n<function=".to_string()),
            ToolChoice::Named(n) => Some(format!("<tool_call>\n<function={n}>\n")),
            ToolChoice::Auto | ToolChoice::None => None,
        }
        .map(|s| state.bundle.tokenizer.encode(&s))
        .transpose()
        .map_err(|e| ApiError::invalid("tool_choice", e.to_string()))
    }
}

/// Converts OpenAI messages to the template's input, collecting their images in order; errors
/// name the field.
fn template_messages(
    messages: &[Value],
    images: &mut Vec<images::Pending>,
) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let obj = element(m, &path)?;
        let f = Fields::new(obj, &path);
        let role = f.required_str("role")?;
        let role = match role {
            "system" | "developer" => "system",
            "user" | "assistant" | "tool" => role,
            other => {
                return Err(ApiError::invalid(
                    f.at("role"),
                    format!(
                        "`{}` is `{other}`; expected system, developer, user, assistant or tool",
                        f.at("role")
                    ),
                ));
            }
        };
        let mut msg = Map::new();
        msg.insert("role".into(), role.into());
        let parts = match role {
            "system" => ImageParts::Refuse,
            _ => ImageParts::Collect(images),
        };
        msg.insert("content".into(), content(&f, "content", parts)?);
        if role == "assistant" {
            let reasoning = match f.str("reasoning_content")? {
                Some(r) => Some(r),
                None => f.str("reasoning")?,
            };
            if let Some(r) = reasoning {
                msg.insert("reasoning_content".into(), r.into());
            }
            if let Some(calls) = f.array("tool_calls")? {
                let mut converted = Vec::new();
                for (j, c) in calls.iter().enumerate() {
                    let cpath = format!("{path}.tool_calls[{j}]");
                    let cf = Fields::new(element(c, &cpath)?, &cpath);
                    let func_path = cf.at("function");
                    let func = cf
                        .object("function")?
                        .ok_or_else(|| cf.missing("function"))?;
                    let ff = Fields::new(func, &func_path);
                    let name = ff.required_str("name")?;
                    let arguments = call_arguments(&ff, "arguments")?;
                    let mut call = json!({
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    });
                    if let Some(id) = cf.str("id")? {
                        call["id"] = id.into();
                    }
                    converted.push(call);
                }
                if !converted.is_empty() {
                    msg.insert("tool_calls".into(), Value::Array(converted));
                }
            }
        }
        if role == "tool"
            && let Some(id) = f.str("tool_call_id")?
        {
            msg.insert("tool_call_id".into(), id.into());
        }
        if let Some(name) = f.str("name")? {
            msg.insert("name".into(), name.into());
        }
        out.push(Value::Object(msg));
    }
    Ok(out)
}

/// A tool call's `arguments` as the template takes them (an object): a JSON object, or one
/// encoded as a string (as the wire carries it); absent or blank is `{}`.
pub(crate) fn call_arguments(f: &Fields<'_>, name: &str) -> Result<Value, ApiError> {
    match f.get(name) {
        None => Ok(Value::Object(Map::new())),
        Some(Value::Object(o)) => Ok(Value::Object(o.clone())),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(Value::Object(Map::new())),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => Ok(Value::Object(o)),
            _ => {
                let p = f.at(name);
                Err(ApiError::invalid(
                    &p,
                    format!("`{p}` must be a JSON object encoded as a string"),
                ))
            }
        },
        Some(v) => {
            let p = f.at(name);
            Err(ApiError::invalid(
                &p,
                format!("`{p}` must be a JSON string, not {}", type_name(v)),
            ))
        }
    }
}

/// What [`content`] does with image parts.
pub(crate) enum ImageParts<'a> {
    /// Refused: the message takes text only.
    Refuse,
    /// Added to the list, the template item standing for each.
    Collect(&'a mut Vec<images::Pending>),
    /// Kept in the template item as its URL (`{"type": "image", "image_url": URL}`), checked
    /// now and read later ([`images::pending_in`]): a stored Responses conversation carries
    /// its images so.
    KeepUrls,
}

/// A message `content` for the template: a string, null, or an array of parts (`text`,
/// `input_text`, `output_text`; `image_url` / `input_image` as `images` says). A plain string
/// when it has no image, else the list of its text and image items.
pub(crate) fn content(
    f: &Fields<'_>,
    name: &str,
    mut images: ImageParts<'_>,
) -> Result<Value, ApiError> {
    let parts = match f.get(name) {
        None => return Ok(Value::from("")),
        Some(Value::String(s)) => return Ok(Value::from(s.as_str())),
        Some(Value::Array(parts)) => parts,
        Some(v) => {
            let p = f.at(name);
            return Err(ApiError::invalid(
                &p,
                format!(
                    "`{p}` must be a string or an array of content parts, not {}",
                    type_name(v)
                ),
            ));
        }
    };
    let mut items = Vec::with_capacity(parts.len());
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let ppath = format!("{}[{j}]", f.at(name));
        let pf = Fields::new(element(part, &ppath)?, &ppath);
        match (pf.required_str("type")?, &mut images) {
            ("text" | "input_text" | "output_text", _) => {
                let t = pf.required_str("text")?;
                text.push_str(t);
                items.push(images::text_item(t));
            }
            ("image_url" | "input_image", ImageParts::Collect(list)) => {
                list.push(images::openai_part(&pf)?);
                items.push(images::template_item());
            }
            ("image_url" | "input_image", ImageParts::KeepUrls) => {
                images::openai_part(&pf)?;
                items.push(images::url_item(&pf));
            }
            (other, mode) => {
                let p = pf.at("type");
                let takes = match mode {
                    ImageParts::Refuse => "only `text` parts are accepted here",
                    _ => "a message takes `text` and `image_url` parts",
                };
                return Err(ApiError::invalid(
                    &p,
                    format!("`{p}` is `{other}`: {takes}"),
                ));
            }
        }
    }
    Ok(images::content_value(items, text))
}

/// A message `content` with text parts only, as one string.
pub(crate) fn content_text(f: &Fields<'_>, name: &str) -> Result<String, ApiError> {
    let v = content(f, name, ImageParts::Refuse)?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

/// Reads `tools`: the template gets them as given, the parser gets their schemas.
fn read_tools(f: &Fields<'_>) -> Result<(Vec<Value>, Vec<ToolSpec>), ApiError> {
    let Some(tools) = f.array("tools")? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut specs = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let spec = ToolSpec::from_openai(t)
            .map_err(|e| ApiError::invalid(format!("tools[{i}]"), format!("`tools[{i}]`: {e}")))?;
        specs.push(spec);
    }
    Ok((tools.clone(), specs))
}

/// `tool_choice` (chat and Responses): `auto`, `none`, `required`, or an object naming a
/// function (`{type: function, function: {name}}` in chat, `{type: function, name}` in
/// Responses); other object types (`allowed_tools`, hosted tools) leave the choice to the
/// model.
pub(crate) fn read_tool_choice(f: &Fields<'_>, specs: &[ToolSpec]) -> Result<ToolChoice, ApiError> {
    let choice = match f.get("tool_choice") {
        None => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!(
                        "`tool_choice` is `{other}`; expected auto, none, required or an object"
                    ),
                ));
            }
        },
        Some(Value::Object(o)) if o.get("type").is_none_or(|t| t == "function") => {
            let name = o
                .get("function")
                .and_then(|fun| fun.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice.function.name",
                        "`tool_choice.function.name` is required for a named tool choice",
                    )
                })?;
            ToolChoice::Named(name.to_string())
        }
        Some(Value::Object(_)) => ToolChoice::Auto,
        Some(v) => {
            return Err(ApiError::invalid(
                "tool_choice",
                format!(
                    "`tool_choice` must be a string or an object, not {}",
                    type_name(v)
                ),
            ));
        }
    };
    match &choice {
        ToolChoice::Required if specs.is_empty() => Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` is `required` but the request has no `tools`",
        )),
        ToolChoice::Named(n) if !specs.iter().any(|s| &s.name == n) => Err(ApiError::invalid(
            "tool_choice",
            format!("`tool_choice` names `{n}`, which is not among `tools`"),
        )),
        _ => Ok(choice),
    }
}

/// Renders the chat template for an OpenAI chat body (also `POST /tokenize`).
pub fn render_chat(state: &AppState, body: &Map<String, Value>) -> Result<RenderedChat, ApiError> {
    let f = Fields::new(body, "");
    let messages = f.array("messages")?.ok_or_else(|| f.missing("messages"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut images = Vec::new();
    let messages = shared::place_system_messages(template_messages(messages, &mut images)?);
    let (tools, specs) = read_tools(&f)?;
    let choice = read_tool_choice(&f, &specs)?;
    let kwargs = chat_kwargs(&f)?;
    let mut rendered = render(state, messages, tools, specs, &choice, kwargs)?;
    rendered.images = images;
    Ok(rendered)
}

/// `chat_template_kwargs` (and the top-level `enable_thinking` some clients send).
fn chat_kwargs(f: &Fields<'_>) -> Result<Map<String, Value>, ApiError> {
    let mut kwargs = f
        .object("chat_template_kwargs")?
        .cloned()
        .unwrap_or_default();
    for key in ["enable_thinking", "preserve_thinking"] {
        if let Some(v) = kwargs.get(key)
            && !v.is_boolean()
        {
            let p = format!("chat_template_kwargs.{key}");
            return Err(ApiError::invalid(&p, format!("`{p}` must be a boolean")));
        }
    }
    if let Some(b) = f.bool("enable_thinking")? {
        kwargs.entry("enable_thinking").or_insert(b.into());
    }
    Ok(kwargs)
}

pub(crate) fn render(
    state: &AppState,
    messages: Vec<Value>,
    tools: Vec<Value>,
    specs: Vec<ToolSpec>,
    choice: &ToolChoice,
    kwargs: Map<String, Value>,
) -> Result<RenderedChat, ApiError> {
    let template = state
        .bundle
        .template()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("{e}; use /v1/completions")))?;
    let tools_value = Value::Array(tools);
    let offer = !matches!(choice, ToolChoice::None) && !specs.is_empty();
    let text = template
        .render(&qinfer_engine::template::RenderRequest {
            messages: &Value::Array(messages),
            tools: offer.then_some(&tools_value),
            add_generation_prompt: true,
            kwargs: &kwargs,
        })
        .map_err(|e| ApiError::invalid("messages", format!("the chat template failed: {e}")))?;
    Ok(RenderedChat {
        starts_in_reasoning: text.ends_with("<think>\n"),
        text,
        tools: if offer { specs } else { Vec::new() },
        images: Vec::new(),
    })
}

/// How parsed tool calls reach the response.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Calls {
    /// `tool_choice: "none"`: a call the model writes anyway stays text.
    pub as_text: bool,
    /// `parallel_tool_calls: false`: only the first call is returned.
    pub first_only: bool,
}

impl Calls {
    /// Whether `e` reaches the client.
    pub(crate) fn keeps(&self, e: &Event) -> bool {
        match e {
            Event::ToolCallStart { index, .. }
            | Event::ToolCallArgs { index, .. }
            | Event::ToolCallEnd { index, .. } => !(self.first_only && *index > 0 && !self.as_text),
            _ => true,
        }
    }
}

/// Everything a chat request resolves to before it is submitted.
struct ChatPlan {
    prompt: Vec<u32>,
    images: Vec<PromptImage>,
    /// The rendered prompt the ids encode.
    prompt_text: String,
    opts: GenerateOptions,
    logprobs: Option<usize>,
    answer_prefix: Option<Vec<u32>>,
    stream: bool,
    include_usage: bool,
    calls: Calls,
}

fn plan_chat(state: &AppState, body: &Map<String, Value>) -> Result<ChatPlan, ApiError> {
    let f = Fields::new(body, "");
    check_model(state, &f, Protocol::OpenAi)?;
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.object("stream_options")? {
        Some(o) => Fields::new(o, "stream_options")
            .bool("include_usage")?
            .unwrap_or(false),
        None => false,
    };
    if let Some(n) = f.usize("n")?
        && n != 1
    {
        return Err(ApiError::invalid("n", "only `n: 1` is supported"));
    }
    let format = response_format(state, &f)?;
    let rendered = render_chat(state, body)?;
    let choice = read_tool_choice(&f, &read_tools(&f)?.1)?;
    let prompt = shared::encode_prompt(state, &rendered.text)
        .map_err(|e| e.into_api("messages", Protocol::OpenAi))?;
    let read = images::read_all(state, rendered.images)?;
    let (prompt, images) = images::place(state, prompt, read)?;
    let requested = match f.usize("max_completion_tokens")? {
        Some(n) => Some((n, "max_completion_tokens")),
        None => f.usize("max_tokens")?.map(|n| (n, "max_tokens")),
    };
    let max_tokens = shared::max_tokens(
        state,
        prompt.len(),
        "messages",
        requested.map(|r| r.0),
        requested.map_or("max_tokens", |r| r.1),
        Protocol::OpenAi,
    )?;
    let sampling = shared::sampling(&f, &state.bundle.defaults)?;
    if !f.bool("logprobs")?.unwrap_or(false) && f.usize("top_logprobs")?.is_some() {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        ));
    }
    let logprobs = if f.bool("logprobs")?.unwrap_or(false) {
        let n = f.usize("top_logprobs")?.unwrap_or(0);
        if n > 20 {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` must be at most 20",
            ));
        }
        Some(n)
    } else {
        None
    };
    let calls = Calls {
        as_text: choice == ToolChoice::None,
        first_only: !f.bool("parallel_tool_calls")?.unwrap_or(true),
    };
    let reasoning_budget = match f.usize("max_reasoning_tokens")? {
        Some(n) => Some(n),
        None => f.usize("thinking_budget")?,
    }
    .or(state.config.default_reasoning_budget);
    let answer_prefix = choice.answer_prefix(state)?;
    let opts = GenerateOptions {
        json_object: format == shared::OutputFormat::JsonObject,
        json_schema: format.schema(),
        strict_tools: shared::strict_tools(state, &f, &rendered.tools, calls.first_only)?,
        single_call: calls.first_only,
        sampling,
        max_tokens,
        stop_strings: shared::stop_strings(&f, "stop")?,
        stop_ids: Vec::new(),
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        reasoning_budget,
        parser: ParserOptions {
            starts_in_reasoning: rendered.starts_in_reasoning,
            tools: rendered.tools,
        },
    };
    Ok(ChatPlan {
        prompt,
        images,
        prompt_text: rendered.text,
        opts,
        logprobs,
        answer_prefix,
        stream,
        include_usage,
        calls,
    })
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(State(state): State<Shared>, JsonBody(body): JsonBody) -> Response {
    let plan = match shared::off_runtime(&state, move |s| plan_chat(&s, &body)).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (rx, admitted) = match shared::submit_tracked(
        &state,
        plan.prompt,
        plan.images,
        Some(plan.prompt_text),
        plan.opts,
        plan.logprobs,
        plan.answer_prefix,
        Protocol::OpenAi,
    ) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let id = new_id("chatcmpl-");
    // Headers go out before the first token: wait for admission so they can say how the
    // prompt cache served the prompt (a closed channel means the request failed first).
    let admission = admitted.await.ok();
    let mut resp = if plan.stream {
        stream_chat(state, rx, id, plan.include_usage, plan.calls).into_response()
    } else {
        collect_chat(state, rx, id, plan.calls).await
    };
    shared::cache_headers(&mut resp, admission.as_ref());
    resp
}

/// OpenAI `finish_reason`.
fn finish_reason(summary: &Summary, had_tool_calls: bool) -> &'static str {
    if had_tool_calls {
        return "tool_calls";
    }
    match summary.finish {
        // Cut off by the server (the shutdown grace ran out) reads as truncated output.
        FinishReason::Length | FinishReason::Cancelled => "length",
        _ => "stop",
    }
}

pub(crate) fn usage(s: &Summary) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens,
        "total_tokens": s.prompt_tokens + s.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": s.cached_tokens},
        "completion_tokens_details": {
            "reasoning_tokens": s.reasoning_tokens,
            "accepted_prediction_tokens": s.drafts.accepted,
            "rejected_prediction_tokens": s.drafts.drafted - s.drafts.accepted,
        },
    })
}

fn logprob_json(state: &AppState, lp: &TokenLogprob) -> Value {
    let tok = |id: u32| {
        let bytes = state.bundle.tokenizer.token_bytes(id).unwrap_or_default();
        (String::from_utf8_lossy(&bytes).into_owned(), bytes)
    };
    let (text, bytes) = tok(lp.token);
    let top: Vec<Value> = lp
        .top
        .iter()
        .map(|&(id, l)| {
            let (t, b) = tok(id);
            json!({"token": t, "logprob": l, "bytes": b})
        })
        .collect();
    json!({"token": text, "logprob": lp.logprob, "bytes": bytes, "top_logprobs": top})
}

/// Waits for the whole generation and answers with one `chat.completion`.
async fn collect_chat(
    state: Shared,
    mut rx: UnboundedReceiver<Out>,
    id: String,
    calls_mode: Calls,
) -> Response {
    let mut reasoning = String::new();
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut logprobs = Vec::new();
    let summary = loop {
        match rx.recv().await {
            Some(Out::Token {
                events, logprob, ..
            }) => {
                if let Some(lp) = logprob {
                    logprobs.push(logprob_json(&state, &lp));
                }
                for e in events.into_iter().filter(|e| calls_mode.keeps(e)) {
                    match e {
                        Event::Reasoning(t) => reasoning.push_str(&t),
                        Event::Content(t) => content.push_str(&t),
                        Event::ToolCallEnd { call, raw, .. } => {
                            if calls_mode.as_text {
                                content.push_str(&raw);
                            } else {
                                calls.push(json!({
                                    "id": new_id("call_"),
                                    "type": "function",
                                    "function": {"name": call.name, "arguments": call.arguments_json()},
                                }));
                            }
                        }
                        Event::ToolCallStart { .. } | Event::ToolCallArgs { .. } => {}
                    }
                }
            }
            Some(Out::Done(s)) => break s,
            Some(Out::Failed(m)) => return engine_failure(m),
            None => return engine_failure("the engine dropped the request".into()),
        }
    };
    let mut message = json!({
        "role": "assistant",
        "content": if content.is_empty() && !calls.is_empty() { Value::Null } else { content.into() },
    });
    if !reasoning.is_empty() {
        message["reasoning_content"] = reasoning.into();
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls.clone());
    }
    let choice = json!({
        "index": 0,
        "message": message,
        "logprobs": if logprobs.is_empty() { Value::Null } else { json!({"content": logprobs}) },
        "finish_reason": finish_reason(&summary, !calls.is_empty()),
    });
    axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now_secs(),
        "model": state.config.model_name,
        "choices": [choice],
        "usage": usage(&summary),
    }))
    .into_response()
}

pub(crate) fn engine_failure(message: String) -> Response {
    let status = if message.contains("shutting down") {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    ApiError::new(status, message).into_response()
}

/// Streams `chat.completion.chunk`s. A task maps engine messages to SSE events; when the
/// client goes away the SSE stream is dropped, the task's send fails, the task ends and drops
/// the engine receiver, which cancels the sequence.
fn stream_chat(
    state: Shared,
    mut rx: UnboundedReceiver<Out>,
    id: String,
    include_usage: bool,
    calls_mode: Calls,
) -> impl IntoResponse {
    let (tx, events) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let created = now_secs();
        let model = state.config.model_name.clone();
        let chunk = |delta: Value, finish: Value, logprobs: Value| {
            let mut choice = json!({"index": 0, "delta": delta, "finish_reason": finish});
            if !logprobs.is_null() {
                choice["logprobs"] = logprobs;
            }
            let mut c = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [choice],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            SseEvent::default().data(c.to_string())
        };
        let first = chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Value::Null,
        );
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        let mut had_calls = false;
        let summary = loop {
            let Some(msg) = rx.recv().await else {
                return;
            };
            match msg {
                Out::Token {
                    events, logprob, ..
                } => {
                    let mut lp = logprob
                        .map(|l| json!({"content": [logprob_json(&state, &l)]}))
                        .unwrap_or(Value::Null);
                    for e in events.into_iter().filter(|e| calls_mode.keeps(e)) {
                        let delta = match e {
                            Event::Reasoning(t) => json!({"reasoning_content": t}),
                            Event::Content(t) => json!({"content": t}),
                            Event::ToolCallStart { index, name } if !calls_mode.as_text => {
                                had_calls = true;
                                json!({"tool_calls": [{
                                    "index": index,
                                    "id": new_id("call_"),
                                    "type": "function",
                                    "function": {"name": name, "arguments": ""},
                                }]})
                            }
                            Event::ToolCallArgs { index, delta } if !calls_mode.as_text => {
                                json!({"tool_calls": [{"index": index, "function": {"arguments": delta}}]})
                            }
                            Event::ToolCallEnd { raw, .. } if calls_mode.as_text => {
                                json!({"content": raw})
                            }
                            _ => continue,
                        };
                        let c = chunk(delta, Value::Null, std::mem::take(&mut lp));
                        if tx.send(Ok(c)).await.is_err() {
                            return;
                        }
                    }
                }
                Out::Done(s) => break s,
                Out::Failed(m) => {
                    let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m);
                    let _ = tx
                        .send(Ok(SseEvent::default().data(e.body().to_string())))
                        .await;
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
            }
        };
        let last = chunk(
            json!({}),
            finish_reason(&summary, had_calls).into(),
            Value::Null,
        );
        if tx.send(Ok(last)).await.is_err() {
            return;
        }
        if include_usage {
            let u = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage(&summary),
            });
            if tx
                .send(Ok(SseEvent::default().data(u.to_string())))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(events)).keep_alive(KeepAlive::default())
}

/// `POST /v1/completions`: raw text in, raw text out (no template, no parsing).
pub async fn completions(State(state): State<Shared>, JsonBody(body): JsonBody) -> Response {
    let plan = match shared::off_runtime(&state, move |s| plan_completion(&s, &body)).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (prompt, text, opts, stream, include_usage) = plan;
    let (rx, admitted) = match shared::submit_tracked(
        &state,
        prompt,
        Vec::new(),
        Some(text),
        opts,
        None,
        None,
        Protocol::OpenAi,
    ) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let admission = admitted.await.ok();
    let mut resp = completion_response(state, rx, stream, include_usage).await;
    shared::cache_headers(&mut resp, admission.as_ref());
    resp
}

async fn completion_response(
    state: Shared,
    mut rx: UnboundedReceiver<Out>,
    stream: bool,
    include_usage: bool,
) -> Response {
    let id = new_id("cmpl-");
    let created = now_secs();
    let model = state.config.model_name.clone();
    let finish = |s: &Summary| match s.finish {
        FinishReason::Length | FinishReason::Cancelled => "length",
        _ => "stop",
    };
    if !stream {
        let mut text = String::new();
        let summary = loop {
            match rx.recv().await {
                Some(Out::Token { text: t, .. }) => text.push_str(&t),
                Some(Out::Done(s)) => break s,
                Some(Out::Failed(m)) => return engine_failure(m),
                None => return engine_failure("the engine dropped the request".into()),
            }
        };
        return axum::Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish(&summary)}],
            "usage": usage(&summary),
        }))
        .into_response();
    }
    let (tx, events) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let chunk = |text: &str, finish: Value| {
            json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            })
        };
        loop {
            let Some(msg) = rx.recv().await else { return };
            let event = match msg {
                Out::Token { text, .. } if text.is_empty() => continue,
                Out::Token { text, .. } => chunk(&text, Value::Null),
                Out::Done(s) => {
                    let mut last = chunk("", finish(&s).into());
                    let _ = tx
                        .send(Ok(SseEvent::default().data(last.to_string())))
                        .await;
                    if include_usage {
                        last["choices"] = json!([]);
                        last["usage"] = usage(&s);
                        let _ = tx
                            .send(Ok(SseEvent::default().data(last.to_string())))
                            .await;
                    }
                    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
                    return;
                }
                Out::Failed(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m).body(),
            };
            if tx
                .send(Ok(SseEvent::default().data(event.to_string())))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(events))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Prompt ids, prompt text, options, stream, include_usage.
type CompletionPlan = (Vec<u32>, String, GenerateOptions, bool, bool);

fn plan_completion(
    state: &AppState,
    body: &Map<String, Value>,
) -> Result<CompletionPlan, ApiError> {
    let f = Fields::new(body, "");
    check_model(state, &f, Protocol::OpenAi)?;
    let text = match f.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            a[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` must be one string (batches of prompts are not supported)",
            ));
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "prompt",
                format!("`prompt` must be a string, not {}", type_name(v)),
            ));
        }
        None => return Err(f.missing("prompt")),
    };
    if let Some(n) = f.usize("n")?
        && n != 1
    {
        return Err(ApiError::invalid("n", "only `n: 1` is supported"));
    }
    if f.get("logprobs").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(
            "logprobs",
            "`logprobs` is not supported on /v1/completions (use /v1/chat/completions)",
        ));
    }
    for unsupported in ["suffix", "best_of"] {
        if f.get(unsupported).is_some() {
            return Err(ApiError::invalid(
                unsupported,
                format!("`{unsupported}` is not supported"),
            ));
        }
    }
    if f.bool("echo")?.unwrap_or(false) {
        return Err(ApiError::invalid("echo", "`echo` is not supported"));
    }
    let prompt =
        shared::encode_prompt(state, &text).map_err(|e| e.into_api("prompt", Protocol::OpenAi))?;
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` encodes to no tokens"));
    }
    // OpenAI's default for this route is 16 tokens.
    let requested = f.usize("max_tokens")?.unwrap_or(16);
    let max_tokens = shared::max_tokens(
        state,
        prompt.len(),
        "prompt",
        Some(requested),
        "max_tokens",
        Protocol::OpenAi,
    )?;
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.object("stream_options")? {
        Some(o) => Fields::new(o, "stream_options")
            .bool("include_usage")?
            .unwrap_or(false),
        None => false,
    };
    let format = response_format(state, &f)?;
    let opts = GenerateOptions {
        json_object: format == shared::OutputFormat::JsonObject,
        json_schema: format.schema(),
        strict_tools: false,
        single_call: false,
        sampling: shared::sampling(&f, &state.bundle.defaults)?,
        max_tokens,
        stop_strings: shared::stop_strings(&f, "stop")?,
        stop_ids: Vec::new(),
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        reasoning_budget: None,
        parser: ParserOptions::default(),
    };
    Ok((prompt, text, opts, stream, include_usage))
}

/// `response_format` (chat, completions): `text` (or absent) is plain output, `json_object`
/// one JSON object, `json_schema` a value valid against `json_schema.schema`; anything else is
/// refused rather than ignored.
fn response_format(state: &AppState, f: &Fields) -> Result<shared::OutputFormat, ApiError> {
    let Some(rf) = f.object("response_format")? else {
        return Ok(shared::OutputFormat::Text);
    };
    let rf = Fields::new(rf, "response_format");
    match rf.required_str("type")? {
        "json_schema" => {
            let js = rf
                .object("json_schema")?
                .ok_or_else(|| rf.missing("json_schema"))?;
            let jf = Fields::new(js, "response_format.json_schema");
            shared::OutputFormat::from_schema(state, &jf)
        }
        kind => shared::OutputFormat::simple(kind, "response_format"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The wire mapping of parsed output, fed by synthetic engine messages: the demo model has
    //! random weights and never writes a tool call, so these tests put text the real parser
    //! turns into events on the channel the engine would use.

    use std::sync::Arc;

    use qinfer_engine::generate::ModelBundle;
    use qinfer_engine::parser::{OutputParser, ParserOptions, ToolSpec};

    use super::*;
    use crate::{Server, ServerConfig};

    pub(crate) fn test_state() -> (Server, Shared) {
        let bundle = Arc::new(ModelBundle::demo().unwrap());
        let config = ServerConfig::for_bundle(&bundle, "m");
        let server = Server::new(bundle, config);
        let state = server.state.clone();
        (server, state)
    }

    /// Engine messages for `text` as the model's output (thinking mode, one tool).
    pub(crate) fn engine_output(text: &str, finish: FinishReason) -> UnboundedReceiver<Out> {
        let tool = ToolSpec::new(
            "get_weather",
            json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}),
        );
        let mut parser = OutputParser::new(ParserOptions {
            starts_in_reasoning: true,
            tools: vec![tool],
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        // Three-character pieces, like a detokenizer's.
        let chars: Vec<char> = text.chars().collect();
        for piece in chars.chunks(3) {
            let piece: String = piece.iter().collect();
            let events = parser.push(&piece);
            tx.send(Out::Token {
                text: piece,
                events,
                logprob: None,
            })
            .unwrap();
        }
        let (events, parser) = parser.finish();
        tx.send(Out::Token {
            text: String::new(),
            events,
            logprob: None,
        })
        .unwrap();
        tx.send(Out::Done(Summary {
            finish,
            parser,
            prompt_tokens: 10,
            cached_tokens: 0,
            cache_miss: None,
            completion_tokens: chars.len().div_ceil(3),
            reasoning_tokens: 2,
            prefill_time: std::time::Duration::ZERO,
            decode_time: std::time::Duration::ZERO,
            drafts: Default::default(),
        }))
        .unwrap();
        rx
    }

    pub(crate) const CALL: &str = "I need the weather.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>";
    /// A call cut off by the token budget: it cannot be completed, so it is text.
    pub(crate) const MALFORMED: &str =
        "Hmm.\n</think>\n\n<tool_call>\n<function=get_weather>\n<parameter=city>\nPar";

    pub(crate) async fn body(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    pub(crate) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_parsed_tool_call_becomes_tool_calls() {
        let (_server, state) = test_state();
        runtime().block_on(async {
            let rx = engine_output(CALL, FinishReason::Stop(0));
            let v: Value = serde_json::from_str(
                &body(collect_chat(state.clone(), rx, "x".into(), Calls::default()).await).await,
            )
            .unwrap();
            let choice = &v["choices"][0];
            assert_eq!(choice["finish_reason"], "tool_calls");
            let msg = &choice["message"];
            assert_eq!(msg["reasoning_content"], "I need the weather.");
            assert_eq!(msg["content"], Value::Null);
            let call = &msg["tool_calls"][0];
            assert_eq!(call["type"], "function");
            assert_eq!(call["function"]["name"], "get_weather");
            let args: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(args, json!({"city": "Paris", "days": 3}));

            // Streaming: the call arrives as a start delta (id, name) and argument deltas that
            // concatenate to the same JSON.
            let rx = engine_output(CALL, FinishReason::Stop(0));
            let text = body(
                stream_chat(state.clone(), rx, "x".into(), false, Calls::default()).into_response(),
            )
            .await;
            let mut args = String::new();
            let mut names = Vec::new();
            let mut finish = Vec::new();
            for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if line == "[DONE]" {
                    continue;
                }
                let c: Value = serde_json::from_str(line).unwrap();
                let choice = &c["choices"][0];
                if let Some(calls) = choice["delta"]["tool_calls"].as_array() {
                    if let Some(n) = calls[0]["function"]["name"].as_str() {
                        names.push(n.to_string());
                        assert!(calls[0]["id"].is_string());
                    }
                    args.push_str(calls[0]["function"]["arguments"].as_str().unwrap_or(""));
                }
                if let Some(f) = choice["finish_reason"].as_str() {
                    finish.push(f.to_string());
                }
            }
            assert_eq!(names, ["get_weather"]);
            assert_eq!(
                serde_json::from_str::<Value>(&args).unwrap(),
                json!({"city": "Paris", "days": 3})
            );
            assert_eq!(finish, ["tool_calls"]);
            assert!(text.trim_end().ends_with("data: [DONE]"));
        });
    }

    #[test]
    fn a_malformed_tool_call_comes_back_as_text() {
        let (_server, state) = test_state();
        runtime().block_on(async {
            let rx = engine_output(MALFORMED, FinishReason::Length);
            let resp = collect_chat(state.clone(), rx, "x".into(), Calls::default()).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let v: Value = serde_json::from_str(&body(resp).await).unwrap();
            let msg = &v["choices"][0]["message"];
            assert!(msg["tool_calls"].is_null());
            assert!(
                msg["content"]
                    .as_str()
                    .unwrap()
                    .contains("<function=get_weather>"),
                "{msg}"
            );
            assert_eq!(v["choices"][0]["finish_reason"], "length");
        });
    }

    #[test]
    fn parallel_calls_are_returned_unless_turned_off() {
        let (_server, state) = test_state();
        let two = format!(
            "{CALL}\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>"
        );
        runtime().block_on(async {
            for (first_only, want) in [(false, 2), (true, 1)] {
                let rx = engine_output(&two, FinishReason::Stop(0));
                let mode = Calls {
                    as_text: false,
                    first_only,
                };
                let v: Value = serde_json::from_str(
                    &body(collect_chat(state.clone(), rx, "x".into(), mode).await).await,
                )
                .unwrap();
                let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
                assert_eq!(calls.len(), want, "first_only {first_only}");
            }
        });
    }

    #[test]
    fn tool_choice_none_returns_calls_as_text() {
        let (_server, state) = test_state();
        runtime().block_on(async {
            let rx = engine_output(CALL, FinishReason::Stop(0));
            let v: Value = serde_json::from_str(
                &body(
                    collect_chat(
                        state.clone(),
                        rx,
                        "x".into(),
                        Calls {
                            as_text: true,
                            first_only: false,
                        },
                    )
                    .await,
                )
                .await,
            )
            .unwrap();
            let msg = &v["choices"][0]["message"];
            assert!(msg["tool_calls"].is_null());
            assert!(msg["content"].as_str().unwrap().starts_with("<tool_call>"));
        });
    }
}
