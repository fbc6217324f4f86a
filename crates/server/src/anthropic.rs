//! The Anthropic Messages protocol: `POST /v1/messages` and `POST /v1/messages/count_tokens`.
//!
//! Content blocks map onto the Qwen template's messages: `text` → content, `thinking` →
//! `reasoning_content`, `tool_use` → `tool_calls` (input as the arguments object),
//! `tool_result` → a `tool` message. The parser's events map onto blocks: `Reasoning` → a
//! `thinking` block, `Content` → a `text` block, a tool call → a `tool_use` block whose input
//! streams as `input_json_delta`.
//!
//! Streaming follows the published event order: `message_start`, then per block
//! `content_block_start`, `content_block_delta`…, `content_block_stop`, then `message_delta`
//! (stop reason, output tokens) and `message_stop`.
//!
//! Thinking follows Anthropic's semantics: off unless `thinking: {type: "enabled"}`, whose
//! `budget_tokens` becomes the reasoning budget (thinking ends gracefully when it is spent).

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use qinfer_engine::generate::{FinishReason, GenerateOptions};
use qinfer_engine::parser::{Event, ParserOptions, ToolSpec};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ApiError, Protocol};
use crate::images;
use crate::json::{Fields, JsonBody, element, type_name};
use crate::scheduler::{Out, Summary};
use crate::shared::{self, check_model, new_id};
use crate::{AppState, Shared};
use qinfer_engine::images::PromptImage;

const P: Protocol = Protocol::Anthropic;

/// The request rendered to a prompt, with what the parser needs.
struct Rendered {
    prompt: Vec<u32>,
    /// The prompt's images, placed at its image tokens.
    images: Vec<PromptImage>,
    /// The rendered prompt `prompt` encodes.
    text: String,
    starts_in_reasoning: bool,
    tools: Vec<ToolSpec>,
    reasoning_budget: Option<usize>,
    answer_prefix: Option<String>,
    /// `tool_choice.disable_parallel_tool_use`: only the first call is returned.
    first_call_only: bool,
}

/// A `system` field or a `tool_result` content for the template: a string, or blocks — text
/// (joined by newlines) and, where `images` takes them, `image` blocks (agents send
/// screenshots so) — as one string, or with images as the list of its text and image items.
fn block_content(
    v: &Value,
    path: &str,
    mut images: Option<&mut Vec<images::Pending>>,
) -> Result<Value, ApiError> {
    let blocks = match v {
        Value::String(s) => return Ok(Value::from(s.as_str())),
        Value::Null => return Ok(Value::from("")),
        Value::Array(blocks) => blocks,
        other => {
            return Err(ApiError::invalid(
                path,
                format!(
                    "`{path}` must be a string or an array of blocks, not {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut items = Vec::with_capacity(blocks.len());
    let mut text = String::new();
    for (i, b) in blocks.iter().enumerate() {
        let bp = format!("{path}[{i}]");
        let bf = Fields::new(element(b, &bp)?, &bp);
        match (bf.required_str("type")?, images.as_deref_mut()) {
            ("text", _) => {
                let t = bf.required_str("text")?;
                let joined = if text.is_empty() {
                    t.to_string()
                } else {
                    format!("\n{t}")
                };
                text.push_str(&joined);
                items.push(images::text_item(&joined));
            }
            ("image", Some(list)) => {
                list.push(images::anthropic_block(&bf)?);
                items.push(images::template_item());
            }
            (other, list) => {
                let p = bf.at("type");
                let supported = match list {
                    Some(_) => "only `text` and `image` blocks are supported here",
                    None => "only `text` blocks are supported here",
                };
                return Err(ApiError::invalid(
                    &p,
                    format!("`{p}` is `{other}`; {supported}"),
                ));
            }
        }
    }
    Ok(images::content_value(items, text))
}

/// Text of a `system` field: a string or text blocks.
fn blocks_text(v: &Value, path: &str) -> Result<String, ApiError> {
    let v = block_content(v, path, None)?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

/// Anthropic messages → the template's messages, collecting their images in order.
fn template_messages(
    system: Option<&Value>,
    messages: &[Value],
    images: &mut Vec<images::Pending>,
) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    if let Some(s) = system {
        let text = blocks_text(s, "system")?;
        if !text.is_empty() {
            out.push(json!({"role": "system", "content": text}));
        }
    }
    for (i, m) in messages.iter().enumerate() {
        let path = format!("messages[{i}]");
        let f = Fields::new(element(m, &path)?, &path);
        let role = f.required_str("role")?;
        if !["user", "assistant", "system"].contains(&role) {
            let p = f.at("role");
            return Err(ApiError::invalid(
                &p,
                format!("`{p}` is `{role}`; expected user, assistant or system"),
            ));
        }
        let content = f.get("content").ok_or_else(|| f.missing("content"))?;
        if role == "system" {
            // Claude Code sends some of its instructions this way (the SDK's types allow
            // it); placed by `place_system_messages`.
            let text = blocks_text(content, &f.at("content"))?;
            out.push(json!({"role": "system", "content": text}));
            continue;
        }
        let blocks = match content {
            Value::String(s) => {
                out.push(json!({"role": role, "content": s}));
                continue;
            }
            Value::Array(b) if b.is_empty() => {
                let p = f.at("content");
                return Err(ApiError::invalid(
                    &p,
                    format!("`{p}` must hold at least one block"),
                ));
            }
            Value::Array(b) => b,
            other => {
                let p = f.at("content");
                return Err(ApiError::invalid(
                    &p,
                    format!(
                        "`{p}` must be a string or an array of blocks, not {}",
                        type_name(other)
                    ),
                ));
            }
        };
        let mut text = String::new();
        // The user's text and image items in order (a plain string when there is no image).
        let mut items = Vec::new();
        let mut thinking = String::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for (j, b) in blocks.iter().enumerate() {
            let bp = format!("{path}.content[{j}]");
            let bf = Fields::new(element(b, &bp)?, &bp);
            match (role, bf.required_str("type")?) {
                (_, "text") => {
                    let t = bf.required_str("text")?;
                    text.push_str(t);
                    items.push(images::text_item(t));
                }
                ("user", "image") => {
                    images.push(images::anthropic_block(&bf)?);
                    items.push(images::template_item());
                }
                ("assistant", "thinking") => thinking.push_str(bf.required_str("thinking")?),
                ("assistant", "redacted_thinking") => {}
                ("assistant", "tool_use") => {
                    let name = bf.required_str("name")?;
                    let input = match bf.get("input") {
                        None => Value::Object(Map::new()),
                        Some(Value::Object(o)) => Value::Object(o.clone()),
                        Some(v) => {
                            let p = bf.at("input");
                            return Err(ApiError::invalid(
                                &p,
                                format!("`{p}` must be an object, not {}", type_name(v)),
                            ));
                        }
                    };
                    let mut call =
                        json!({"type": "function", "function": {"name": name, "arguments": input}});
                    if let Some(id) = bf.str("id")? {
                        call["id"] = id.into();
                    }
                    calls.push(call);
                }
                ("user", "tool_result") => {
                    let content = match bf.get("content") {
                        Some(c) => block_content(c, &bf.at("content"), Some(images))?,
                        None => Value::from(""),
                    };
                    let mut msg = json!({"role": "tool", "content": content});
                    if let Some(id) = bf.str("tool_use_id")? {
                        msg["tool_call_id"] = id.into();
                    }
                    results.push(msg);
                }
                (_, other) => {
                    let p = bf.at("type");
                    return Err(ApiError::invalid(
                        &p,
                        format!(
                            "`{p}` is `{other}`, which a {role} message cannot carry here \
                             (text, image, thinking, tool_use, tool_result)"
                        ),
                    ));
                }
            }
        }
        if role == "assistant" {
            let mut msg = json!({"role": "assistant", "content": text});
            if !thinking.is_empty() {
                msg["reasoning_content"] = thinking.into();
            }
            if !calls.is_empty() {
                msg["tool_calls"] = Value::Array(calls);
            }
            out.push(msg);
        } else {
            out.extend(results);
            let content = images::content_value(items, text);
            if content != "" {
                out.push(json!({"role": "user", "content": content}));
            }
        }
    }
    Ok(shared::place_system_messages(out))
}

/// Anthropic tools (`name`, `description`, `input_schema`) → OpenAI-shaped ones for the
/// template, and the parser's specs.
fn read_tools(f: &Fields<'_>) -> Result<(Vec<Value>, Vec<ToolSpec>), ApiError> {
    let Some(tools) = f.array("tools")? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let mut for_template = Vec::new();
    let mut specs = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        let tf = Fields::new(element(t, &path)?, &path);
        let name = tf.required_str("name")?;
        let schema = match tf.get("input_schema") {
            Some(Value::Object(o)) => Value::Object(o.clone()),
            None => json!({"type": "object", "properties": {}}),
            Some(v) => {
                let p = tf.at("input_schema");
                return Err(ApiError::invalid(
                    &p,
                    format!("`{p}` must be an object, not {}", type_name(v)),
                ));
            }
        };
        let mut function = json!({"name": name, "parameters": schema});
        if let Some(d) = tf.str("description")? {
            function["description"] = d.into();
        }
        for_template.push(json!({"type": "function", "function": function}));
        specs.push(ToolSpec::new(name, schema));
    }
    Ok((for_template, specs))
}

fn render(state: &AppState, body: &Map<String, Value>) -> Result<Rendered, ApiError> {
    let f = Fields::new(body, "");
    let messages = f.array("messages")?.ok_or_else(|| f.missing("messages"))?;
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut pending = Vec::new();
    let messages = template_messages(f.get("system"), messages, &mut pending)?;
    let (tools, specs) = read_tools(&f)?;
    let mut offer = !specs.is_empty();
    let mut answer_prefix = None;
    let mut first_call_only = false;
    if let Some(choice) = f.object("tool_choice")? {
        let cf = Fields::new(choice, "tool_choice");
        first_call_only = cf.bool("disable_parallel_tool_use")?.unwrap_or(false);
        match cf.required_str("type")? {
            "auto" => {}
            "none" => offer = false,
            "any" if offer => answer_prefix = Some("<tool_call>\n<function=".to_string()),
            "tool" if offer => {
                let name = cf.required_str("name")?;
                if !specs.iter().any(|s| s.name == name) {
                    return Err(ApiError::invalid(
                        "tool_choice.name",
                        format!("`tool_choice.name` is `{name}`, which is not among `tools`"),
                    ));
                }
                answer_prefix = Some(format!("<tool_call>\n<function={name}>\n"));
            }
            "any" | "tool" => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` requires a tool call but the request has no `tools`",
                ));
            }
            other => {
                return Err(ApiError::invalid(
                    "tool_choice.type",
                    format!("`tool_choice.type` is `{other}`; expected auto, any, tool or none"),
                ));
            }
        }
    }
    let mut kwargs = f
        .object("chat_template_kwargs")?
        .cloned()
        .unwrap_or_default();
    let mut reasoning_budget = None;
    let mut thinking = false;
    if let Some(t) = f.object("thinking")? {
        let tf = Fields::new(t, "thinking");
        match tf.required_str("type")? {
            "enabled" => {
                thinking = true;
                reasoning_budget = tf.usize("budget_tokens")?;
            }
            "adaptive" => thinking = true,
            "disabled" => {}
            other => {
                return Err(ApiError::invalid(
                    "thinking.type",
                    format!("`thinking.type` is `{other}`; expected enabled or disabled"),
                ));
            }
        }
    }
    kwargs.entry("enable_thinking").or_insert(thinking.into());
    let template = state
        .bundle
        .template()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).with_protocol(P))?;
    let tools_value = Value::Array(tools);
    let text = template
        .render(&qinfer_engine::template::RenderRequest {
            messages: &Value::Array(messages),
            tools: offer.then_some(&tools_value),
            add_generation_prompt: true,
            kwargs: &kwargs,
        })
        .map_err(|e| ApiError::invalid("messages", format!("the chat template failed: {e}")))?;
    let prompt = shared::encode_prompt(state, &text).map_err(|e| e.into_api("messages", P))?;
    let read = images::read_all(state, pending).map_err(|e| e.with_protocol(P))?;
    let (prompt, images) = images::place(state, prompt, read).map_err(|e| e.with_protocol(P))?;
    Ok(Rendered {
        images,
        prompt,
        starts_in_reasoning: text.ends_with("<think>\n"),
        text,
        tools: if offer { specs } else { Vec::new() },
        reasoning_budget,
        answer_prefix,
        first_call_only,
    })
}

/// `POST /v1/messages/count_tokens`.
pub async fn count_tokens(State(state): State<Shared>, JsonBody(body): JsonBody) -> Response {
    let run = move |state: Shared| -> Result<Value, ApiError> {
        check_model(&state, &Fields::new(&body, ""), P)?;
        let r = render(&state, &body)?;
        Ok(json!({"input_tokens": r.prompt.len()}))
    };
    match shared::off_runtime(&state, run).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.with_protocol(P).into_response(),
    }
}

struct Plan {
    prompt: Vec<u32>,
    images: Vec<PromptImage>,
    /// The rendered prompt the ids encode.
    text: String,
    opts: GenerateOptions,
    answer_prefix: Option<Vec<u32>>,
    stream: bool,
    first_call_only: bool,
}

fn plan(state: &AppState, body: &Map<String, Value>) -> Result<Plan, ApiError> {
    let f = Fields::new(body, "");
    check_model(state, &f, P)?;
    let max = f
        .usize("max_tokens")?
        .ok_or_else(|| f.missing("max_tokens"))?;
    let r = render(state, body)?;
    let max_tokens = shared::max_tokens(
        state,
        r.prompt.len(),
        "messages",
        Some(max),
        "max_tokens",
        P,
    )?;
    let answer_prefix = r
        .answer_prefix
        .map(|s| state.bundle.tokenizer.encode(&s))
        .transpose()
        .map_err(|e| ApiError::invalid("tool_choice", e.to_string()))?;
    let opts = GenerateOptions {
        json_object: false,
        json_schema: None,
        strict_tools: shared::strict_tools(state, &f, &r.tools, r.first_call_only)?,
        single_call: r.first_call_only,
        sampling: shared::sampling(&f, &state.bundle.defaults)?,
        max_tokens,
        stop_strings: shared::stop_strings(&f, "stop_sequences")?,
        stop_ids: Vec::new(),
        ignore_eos: false,
        reasoning_budget: r.reasoning_budget.or(state.config.default_reasoning_budget),
        parser: ParserOptions {
            starts_in_reasoning: r.starts_in_reasoning,
            tools: r.tools,
        },
    };
    let first_call_only = r.first_call_only;
    Ok(Plan {
        first_call_only,
        prompt: r.prompt,
        images: r.images,
        text: r.text,
        opts,
        answer_prefix,
        stream: f.bool("stream")?.unwrap_or(false),
    })
}

/// `POST /v1/messages`.
pub async fn messages(State(state): State<Shared>, JsonBody(body): JsonBody) -> Response {
    let plan = match shared::off_runtime(&state, move |s| plan(&s, &body)).await {
        Ok(p) => p,
        Err(e) => return e.with_protocol(P).into_response(),
    };
    let prompt_len = plan.prompt.len();
    let (rx, admitted) = match shared::submit_tracked(
        &state,
        plan.prompt,
        plan.images,
        Some(plan.text),
        plan.opts,
        None,
        plan.answer_prefix,
        P,
    ) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let id = new_id("msg_");
    let admission = admitted.await.ok();
    let cached = admission.as_ref().map_or(0, |a| a.cached_tokens);
    let mut resp = if plan.stream {
        stream(state, rx, id, prompt_len, cached, plan.first_call_only).into_response()
    } else {
        collect(state, rx, id, plan.first_call_only).await
    };
    shared::cache_headers(&mut resp, admission.as_ref());
    resp
}

fn stop_reason(s: &Summary, tool_use: bool) -> (&'static str, Value) {
    match &s.finish {
        _ if tool_use => ("tool_use", Value::Null),
        // Cut off by the server (the shutdown grace ran out) reads as truncated output.
        FinishReason::Length | FinishReason::Cancelled => ("max_tokens", Value::Null),
        FinishReason::StopString(stop) => ("stop_sequence", stop.clone().into()),
        _ => ("end_turn", Value::Null),
    }
}

fn usage(s: &Summary) -> Value {
    json!({
        "input_tokens": s.prompt_tokens - s.cached_tokens,
        "output_tokens": s.completion_tokens,
        "cache_read_input_tokens": s.cached_tokens,
        "cache_creation_input_tokens": 0,
    })
}

fn failure(message: String) -> Response {
    let status = if message.contains("shutting down") {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    ApiError::new(status, message)
        .with_protocol(P)
        .into_response()
}

/// Whether `e` reaches the client: with `first_only`, events of calls after the first are
/// dropped.
fn keeps(e: &Event, first_only: bool) -> bool {
    match e {
        Event::ToolCallStart { index, .. }
        | Event::ToolCallArgs { index, .. }
        | Event::ToolCallEnd { index, .. } => !(first_only && *index > 0),
        _ => true,
    }
}

async fn collect(
    state: Shared,
    mut rx: UnboundedReceiver<Out>,
    id: String,
    first_only: bool,
) -> Response {
    let mut content: Vec<Value> = Vec::new();
    let mut tool_use = false;
    let summary = loop {
        match rx.recv().await {
            Some(Out::Token { events, .. }) => {
                for e in events.into_iter().filter(|e| keeps(e, first_only)) {
                    match e {
                        Event::Reasoning(t) => match content.last_mut() {
                            Some(b) if b["type"] == "thinking" => {
                                let s = format!("{}{t}", b["thinking"].as_str().unwrap_or(""));
                                b["thinking"] = s.into();
                            }
                            _ => content
                                .push(json!({"type": "thinking", "thinking": t, "signature": ""})),
                        },
                        Event::Content(t) => match content.last_mut() {
                            Some(b) if b["type"] == "text" => {
                                let s = format!("{}{t}", b["text"].as_str().unwrap_or(""));
                                b["text"] = s.into();
                            }
                            _ => content.push(json!({"type": "text", "text": t})),
                        },
                        Event::ToolCallEnd { call, .. } => {
                            tool_use = true;
                            content.push(json!({
                                "type": "tool_use",
                                "id": new_id("toolu_"),
                                "name": call.name,
                                "input": call.arguments,
                            }));
                        }
                        Event::ToolCallStart { .. } | Event::ToolCallArgs { .. } => {}
                    }
                }
            }
            Some(Out::Done(s)) => break s,
            Some(Out::Failed(m)) => return failure(m),
            None => return failure("the engine dropped the request".into()),
        }
    };
    let (reason, sequence) = stop_reason(&summary, tool_use);
    axum::Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": state.config.model_name,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(&summary),
    }))
    .into_response()
}

/// Which block is open in a stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    ToolUse,
}

fn stream(
    state: Shared,
    mut rx: UnboundedReceiver<Out>,
    id: String,
    prompt_len: usize,
    cached: usize,
    first_only: bool,
) -> impl IntoResponse {
    let (tx, events) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let ev = |name: &str, data: Value| SseEvent::default().event(name).data(data.to_string());
        let start = json!({
            "type": "message_start",
            "message": {
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": state.config.model_name,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                // What `message_delta` reports at the end: the prompt cache's hit is known
                // at admission, before the first event.
                "usage": {"input_tokens": prompt_len.saturating_sub(cached), "output_tokens": 0,
                          "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0},
            }
        });
        let mut out: Vec<SseEvent> = vec![ev("message_start", start)];
        let mut open: Option<Block> = None;
        let mut index: usize = 0;
        let mut tool_use = false;
        // Closes the open block (if any) into `out`.
        let close = |out: &mut Vec<SseEvent>, open: &mut Option<Block>, index: &mut usize| {
            if let Some(b) = open.take() {
                if b == Block::Thinking {
                    out.push(ev(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": *index,
                               "delta": {"type": "signature_delta", "signature": ""}}),
                    ));
                }
                out.push(ev(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": *index}),
                ));
                *index += 1;
            }
        };
        let summary = loop {
            for e in out.drain(..) {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            let Some(msg) = rx.recv().await else { return };
            match msg {
                Out::Token { events, .. } => {
                    for e in events.into_iter().filter(|e| keeps(e, first_only)) {
                        let (want, start_block, delta) = match e {
                            Event::Reasoning(t) => (
                                Block::Thinking,
                                json!({"type": "thinking", "thinking": "", "signature": ""}),
                                json!({"type": "thinking_delta", "thinking": t}),
                            ),
                            Event::Content(t) => (
                                Block::Text,
                                json!({"type": "text", "text": ""}),
                                json!({"type": "text_delta", "text": t}),
                            ),
                            Event::ToolCallStart { name, .. } => {
                                tool_use = true;
                                close(&mut out, &mut open, &mut index);
                                out.push(ev(
                                    "content_block_start",
                                    json!({"type": "content_block_start", "index": index,
                                           "content_block": {"type": "tool_use", "id": new_id("toolu_"),
                                                             "name": name, "input": {}}}),
                                ));
                                open = Some(Block::ToolUse);
                                continue;
                            }
                            Event::ToolCallArgs { delta, .. } => (
                                Block::ToolUse,
                                Value::Null,
                                json!({"type": "input_json_delta", "partial_json": delta}),
                            ),
                            Event::ToolCallEnd { .. } => {
                                close(&mut out, &mut open, &mut index);
                                continue;
                            }
                        };
                        if open != Some(want) {
                            close(&mut out, &mut open, &mut index);
                            out.push(ev(
                                "content_block_start",
                                json!({"type": "content_block_start", "index": index,
                                       "content_block": start_block}),
                            ));
                            open = Some(want);
                        }
                        out.push(ev(
                            "content_block_delta",
                            json!({"type": "content_block_delta", "index": index, "delta": delta}),
                        ));
                    }
                }
                Out::Done(s) => break s,
                Out::Failed(m) => {
                    let e = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, m).with_protocol(P);
                    out.push(ev("error", e.body()));
                    for e in out.drain(..) {
                        let _ = tx.send(Ok(e)).await;
                    }
                    return;
                }
            }
        };
        close(&mut out, &mut open, &mut index);
        let (reason, sequence) = stop_reason(&summary, tool_use);
        out.push(ev(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": reason, "stop_sequence": sequence},
                   "usage": usage(&summary)}),
        ));
        out.push(ev("message_stop", json!({"type": "message_stop"})));
        for e in out.drain(..) {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(events)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    //! The Anthropic wire mapping of parsed output, fed by synthetic engine messages (see the
    //! OpenAI tests for why).

    use super::*;
    use crate::openai::tests::{CALL, MALFORMED, body, engine_output, runtime, test_state};

    #[test]
    fn a_parsed_tool_call_becomes_a_tool_use_block() {
        let (_server, state) = test_state();
        runtime().block_on(async {
            let rx = engine_output(CALL, FinishReason::Stop(0));
            let v: Value = serde_json::from_str(
                &body(collect(state.clone(), rx, "m".into(), false).await).await,
            )
            .unwrap();
            assert_eq!(v["stop_reason"], "tool_use");
            assert_eq!(v["content"][0]["type"], "thinking");
            assert_eq!(v["content"][0]["thinking"], "I need the weather.");
            assert_eq!(v["content"][1]["type"], "tool_use");
            assert_eq!(v["content"][1]["name"], "get_weather");
            assert_eq!(
                v["content"][1]["input"],
                json!({"city": "Paris", "days": 3})
            );

            let rx = engine_output(CALL, FinishReason::Stop(0));
            let text =
                body(stream(state.clone(), rx, "m".into(), 10, 0, false).into_response()).await;
            let mut names = Vec::new();
            let mut json_parts = String::new();
            for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
                let name = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .unwrap();
                let data: Value = serde_json::from_str(
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix("data: "))
                        .unwrap(),
                )
                .unwrap();
                names.push(name.to_string());
                if data["delta"]["type"] == "input_json_delta" {
                    json_parts.push_str(data["delta"]["partial_json"].as_str().unwrap());
                }
                if name == "message_delta" {
                    assert_eq!(data["delta"]["stop_reason"], "tool_use");
                }
            }
            assert_eq!(
                serde_json::from_str::<Value>(&json_parts).unwrap(),
                json!({"city": "Paris", "days": 3})
            );
            let starts = names.iter().filter(|n| *n == "content_block_start").count();
            let stops = names.iter().filter(|n| *n == "content_block_stop").count();
            assert_eq!((starts, stops), (2, 2), "{names:?}");
            assert_eq!(names.first().unwrap(), "message_start");
            assert_eq!(names.last().unwrap(), "message_stop");
        });
    }

    #[test]
    fn disable_parallel_tool_use_keeps_the_first_call() {
        let (_server, state) = test_state();
        let two = format!(
            "{CALL}\n<tool_call>\n<function=get_weather>\n<parameter=city>\nRome\n</parameter>\n</function>\n</tool_call>"
        );
        runtime().block_on(async {
            for (first_only, want) in [(false, 2), (true, 1)] {
                let rx = engine_output(&two, FinishReason::Stop(0));
                let resp = collect(state.clone(), rx, "m".into(), first_only).await;
                let v: Value = serde_json::from_str(&body(resp).await).unwrap();
                let uses = v["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|b| b["type"] == "tool_use")
                    .count();
                assert_eq!(uses, want, "first_only {first_only}");
            }
        });
    }

    #[test]
    fn a_malformed_tool_call_comes_back_as_text() {
        let (_server, state) = test_state();
        runtime().block_on(async {
            let rx = engine_output(MALFORMED, FinishReason::Length);
            let resp = collect(state.clone(), rx, "m".into(), false).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let v: Value = serde_json::from_str(&body(resp).await).unwrap();
            assert_eq!(v["stop_reason"], "max_tokens");
            let text = v["content"][1]["text"].as_str().unwrap();
            assert!(text.contains("<function=get_weather>"), "{v}");
        });
    }
}
