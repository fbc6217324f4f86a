//! The OpenAI Responses API: `POST /v1/responses`, `GET` / `DELETE /v1/responses/{id}`
//! (what Codex speaks; the `openai` SDK's `responses.create`).
//!
//! A request's `instructions` and `input` items become the Qwen template's messages:
//! `message` items by role (`developer` and `system` placed as the chat route places system
//! messages), `reasoning` items the `reasoning_content` of the assistant turn that follows,
//! `function_call` items that turn's `tool_calls`, `function_call_output` items `tool`
//! messages. With `previous_response_id` the stored conversation of that response comes first
//! (its `instructions` are not carried over, as OpenAI specifies). The parser's events become
//! output items: `reasoning` (its text as `reasoning_text` content, and as the summary when
//! `reasoning.summary` asks for one: there is no separate summarizer), `message` with one
//! `output_text` part, `function_call`.
//!
//! Reasoning is carried across turns without server state: `include:
//! ["reasoning.encrypted_content"]` returns each reasoning item's text in `encrypted_content`,
//! an opaque encoding this server reads back when the item returns in `input` (it is encoded,
//! not encrypted: the text is the model's own reasoning), so thinking is preserved with
//! `store: false`. Stored responses (`store`, default true) live in a bounded in-memory store
//! ([`Store`]), oldest evicted first.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Mutex;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use qinfer_engine::generate::{FinishReason, GenerateOptions};
use qinfer_engine::parser::{Event, ParserOptions, ToolSpec};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ApiError, Protocol};
use crate::images;
use crate::json::{Fields, JsonBody, element, type_name};
use crate::openai::{
    Calls, ImageParts, ToolChoice, call_arguments, content_text, engine_failure, read_tool_choice,
};
use crate::scheduler::{Out, Summary};
use crate::shared::{self, check_model, new_id, now_secs};
use crate::{AppState, Shared};
use qinfer_engine::images::PromptImage;

const P: Protocol = Protocol::OpenAi;

/// Most responses kept for `previous_response_id` and `GET /v1/responses/{id}`.
pub const STORE_RESPONSES: usize = 256;
/// Most bytes (JSON) of stored responses and their conversations.
pub const STORE_BYTES: usize = 64 << 20;

/// Reasoning budgets of `reasoning.effort` (`none` / `minimal`: thinking off; `high`: the
/// server's default budget, usually none).
pub const EFFORT_BUDGETS: [(&str, Option<usize>); 2] =
    [("low", Some(1024)), ("medium", Some(4096))];

/// The prefix of this server's `encrypted_content`.
const ENCODED: &str = "qinfer-reasoning-v1:";

/// Stored responses, oldest first.
#[derive(Debug, Default)]
pub struct Store {
    entries: VecDeque<Stored>,
    bytes: usize,
}

#[derive(Debug)]
struct Stored {
    id: String,
    response: Value,
    /// The conversation after this response, as template messages (no instructions).
    messages: Vec<Value>,
    bytes: usize,
}

impl Store {
    fn insert(&mut self, id: String, response: Value, messages: Vec<Value>) {
        let bytes = response.to_string().len()
            + messages.iter().map(|m| m.to_string().len()).sum::<usize>();
        if bytes > STORE_BYTES {
            return;
        }
        while self.entries.len() >= STORE_RESPONSES || self.bytes + bytes > STORE_BYTES {
            let Some(old) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
        self.entries.push_back(Stored {
            id,
            response,
            messages,
            bytes,
        });
    }

    fn get(&self, id: &str) -> Option<&Stored> {
        self.entries.iter().find(|e| e.id == id)
    }

    fn remove(&mut self, id: &str) -> bool {
        match self.entries.iter().position(|e| e.id == id) {
            Some(i) => {
                let old = self.entries.remove(i).expect("in range");
                self.bytes -= old.bytes;
                true
            }
            None => false,
        }
    }
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

/// `encrypted_content` for a reasoning text.
fn encode_reasoning(text: &str) -> String {
    format!(
        "{ENCODED}{}",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

/// The reasoning text of an `encrypted_content` this server wrote.
fn decode_reasoning(s: &str) -> Option<String> {
    let b = base64::engine::general_purpose::STANDARD
        .decode(s.strip_prefix(ENCODED)?)
        .ok()?;
    String::from_utf8(b).ok()
}

/// The texts of an item's `summary` or `content` parts, joined.
fn part_texts(v: Option<&Value>) -> String {
    v.and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n\n")
        })
        .unwrap_or_default()
}

/// `input` items → template messages (see the module doc).
fn input_messages(input: &Value) -> Result<Vec<Value>, ApiError> {
    let items = match input {
        Value::String(s) => return Ok(vec![json!({"role": "user", "content": s})]),
        Value::Array(items) => items,
        other => {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "`input` must be a string or an array of items, not {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut out: Vec<Value> = Vec::new();
    // A reasoning item's text, for the assistant turn that follows it.
    let mut reasoning: Option<String> = None;
    // Whether the last message is an assistant turn that later calls may join.
    let mut open_turn = false;
    for (i, item) in items.iter().enumerate() {
        let path = format!("input[{i}]");
        let f = Fields::new(element(item, &path)?, &path);
        let kind = match f.str("type")? {
            Some(t) => t,
            None if f.get("role").is_some() => "message",
            None => return Err(f.missing("type")),
        };
        match kind {
            "message" => {
                let role = match f.required_str("role")? {
                    "developer" | "system" => "system",
                    r @ ("user" | "assistant") => r,
                    other => {
                        let p = f.at("role");
                        return Err(ApiError::invalid(
                            &p,
                            format!(
                                "`{p}` is `{other}`; expected user, assistant, system or developer"
                            ),
                        ));
                    }
                };
                let parts = match role {
                    "user" => ImageParts::KeepUrls,
                    _ => ImageParts::Refuse,
                };
                let content = crate::openai::content(&f, "content", parts)?;
                let mut msg = json!({"role": role, "content": content});
                if role == "assistant"
                    && let Some(r) = reasoning.take()
                {
                    msg["reasoning_content"] = r.into();
                }
                open_turn = role == "assistant";
                out.push(msg);
            }
            "reasoning" => {
                let text = match f.str("encrypted_content")? {
                    Some(e) => decode_reasoning(e).ok_or_else(|| {
                        let p = f.at("encrypted_content");
                        ApiError::invalid(
                            &p,
                            format!("`{p}` was not written by this server (qinfer reads back only its own reasoning items)"),
                        )
                    })?,
                    None => match part_texts(f.get("content")) {
                        t if t.is_empty() => part_texts(f.get("summary")),
                        t => t,
                    },
                };
                reasoning = Some(match reasoning.take() {
                    Some(r) if !r.is_empty() => format!("{r}\n\n{text}"),
                    _ => text,
                });
                open_turn = false;
            }
            "function_call" => {
                let name = f.required_str("name")?;
                let call_id = f.required_str("call_id")?;
                let arguments = call_arguments(&f, "arguments")?;
                let call = json!({"type": "function", "id": call_id,
                                  "function": {"name": name, "arguments": arguments}});
                match out.last_mut() {
                    Some(last) if open_turn && reasoning.is_none() => {
                        match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                            Some(calls) => calls.push(call),
                            None => last["tool_calls"] = json!([call]),
                        }
                    }
                    _ => {
                        let mut msg =
                            json!({"role": "assistant", "content": "", "tool_calls": [call]});
                        if let Some(r) = reasoning.take() {
                            msg["reasoning_content"] = r.into();
                        }
                        out.push(msg);
                        open_turn = true;
                    }
                }
            }
            "function_call_output" => {
                let call_id = f.required_str("call_id")?;
                let output = match f.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(_)) => content_text(&f, "output")?,
                    None => String::new(),
                    Some(v) => {
                        let p = f.at("output");
                        return Err(ApiError::invalid(
                            &p,
                            format!(
                                "`{p}` must be a string or an array of parts, not {}",
                                type_name(v)
                            ),
                        ));
                    }
                };
                out.push(json!({"role": "tool", "content": output, "tool_call_id": call_id}));
                open_turn = false;
            }
            other => {
                let p = f.at("type");
                return Err(ApiError::invalid(
                    &p,
                    format!(
                        "`{p}` is `{other}`; this server takes message, reasoning, function_call \
                         and function_call_output items"
                    ),
                ));
            }
        }
    }
    // Reasoning with no answer after it (a response cut off while thinking): its turn.
    if let Some(r) = reasoning {
        out.push(json!({"role": "assistant", "content": "", "reasoning_content": r}));
    }
    Ok(out)
}

/// Function tools in the chat shape the template renders; other tool types (web search,
/// namespaces) are accepted and not offered to the model.
fn read_tools(f: &Fields<'_>) -> Result<(Vec<Value>, Vec<ToolSpec>), ApiError> {
    let Some(tools) = f.array("tools")? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let (mut for_template, mut specs) = (Vec::new(), Vec::new());
    for (i, t) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        let tf = Fields::new(element(t, &path)?, &path);
        let kind = tf.required_str("type")?;
        if kind != "function" {
            tracing::info!(tool = kind, "a tool type the model is not offered");
            continue;
        }
        let spec = ToolSpec::from_openai(t)
            .map_err(|e| ApiError::invalid(&path, format!("`{path}`: {e}")))?;
        let mut function = Map::new();
        function.insert("name".into(), spec.name.clone().into());
        if let Some(d) = tf.str("description")? {
            function.insert("description".into(), d.into());
        }
        function.insert("parameters".into(), spec.parameters.clone());
        for_template.push(json!({"type": "function", "function": function}));
        specs.push(spec);
    }
    Ok((for_template, specs))
}

/// Everything a request resolves to before it is submitted.
struct Plan {
    prompt: Vec<u32>,
    /// The prompt's images, placed at its image tokens.
    images: Vec<PromptImage>,
    text: String,
    opts: GenerateOptions,
    answer_prefix: Option<Vec<u32>>,
    calls: Calls,
    stream: bool,
    store: bool,
    encrypted: bool,
    summary: bool,
    /// The request fields the response object repeats (`instructions`, `tools`, …).
    echo: Map<String, Value>,
    /// The conversation so far as template messages, without instructions.
    history: Vec<Value>,
}

fn plan(state: &AppState, body: &Map<String, Value>) -> Result<Plan, ApiError> {
    let f = Fields::new(body, "");
    check_model(state, &f, P)?;
    let stream = f.bool("stream")?.unwrap_or(false);
    let store = f.bool("store")?.unwrap_or(true);
    let encrypted = f
        .strings("include")?
        .iter()
        .any(|s| s == "reasoning.encrypted_content");
    let instructions = f.str("instructions")?;
    let mut history = match f.str("previous_response_id")? {
        Some(id) => match lock(&state.responses).get(id).map(|e| e.messages.clone()) {
            Some(m) => m,
            None => {
                return Err(ApiError::invalid(
                    "previous_response_id",
                    format!(
                        "previous response `{id}` is not stored here (it was not stored, was deleted, or was evicted)"
                    ),
                ));
            }
        },
        None => Vec::new(),
    };
    let input = f.get("input").ok_or_else(|| f.missing("input"))?;
    history.extend(input_messages(input)?);
    if !history.iter().any(|m| m["role"] == "user") {
        return Err(ApiError::invalid(
            "input",
            "`input` must hold a user message (the template needs a query to answer)",
        ));
    }
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Some(i) = instructions.filter(|i| !i.is_empty()) {
        messages.push(json!({"role": "system", "content": i}));
    }
    messages.extend(history.iter().cloned());
    let messages = shared::place_system_messages(messages);
    let (tools, specs) = read_tools(&f)?;
    let choice = read_tool_choice(&f, &specs)?;
    let calls = Calls {
        as_text: choice == ToolChoice::None,
        first_only: !f.bool("parallel_tool_calls")?.unwrap_or(true),
    };
    // `reasoning.effort`: thinking on or off, and its budget.
    let mut kwargs = Map::new();
    let mut budget = state.config.default_reasoning_budget;
    let mut summary = false;
    if let Some(r) = f.object("reasoning")? {
        let rf = Fields::new(r, "reasoning");
        match rf.str("effort")? {
            None | Some("high" | "xhigh") => {}
            Some("none" | "minimal") => {
                kwargs.insert("enable_thinking".into(), false.into());
            }
            Some(e) => match EFFORT_BUDGETS.iter().find(|(name, _)| *name == e) {
                Some((_, b)) => budget = *b,
                None => {
                    return Err(ApiError::invalid(
                        "reasoning.effort",
                        format!(
                            "`reasoning.effort` is `{e}`; expected none, minimal, low, medium or high"
                        ),
                    ));
                }
            },
        }
        summary = matches!(
            rf.str("summary")?.or(rf.str("generate_summary")?),
            Some("auto" | "concise" | "detailed")
        );
    }
    let format = match f.object("text")? {
        Some(t) => match Fields::new(t, "text").object("format")? {
            Some(fmt) => {
                let ff = Fields::new(fmt, "text.format");
                match ff.required_str("type")? {
                    "json_schema" => shared::OutputFormat::from_schema(state, &ff)?,
                    kind => shared::OutputFormat::simple(kind, "text.format")?,
                }
            }
            None => shared::OutputFormat::Text,
        },
        None => shared::OutputFormat::Text,
    };
    // Images (this turn's and a stored conversation's) ride in the messages as URLs; the
    // template renders each as its pad tokens, in the same order.
    let pending = images::pending_in(&messages)?;
    let rendered = crate::openai::render(state, messages, tools, specs, &choice, kwargs)?;
    let prompt =
        shared::encode_prompt(state, &rendered.text).map_err(|e| e.into_api("input", P))?;
    let read = images::read_all(state, pending).map_err(|e| e.with_protocol(P))?;
    let (prompt, images) = images::place(state, prompt, read).map_err(|e| e.with_protocol(P))?;
    let max_tokens = shared::max_tokens(
        state,
        prompt.len(),
        "input",
        f.usize("max_output_tokens")?,
        "max_output_tokens",
        P,
    )?;
    let opts = GenerateOptions {
        json_object: format == shared::OutputFormat::JsonObject,
        json_schema: format.schema(),
        strict_tools: shared::strict_tools(state, &f, &rendered.tools, calls.first_only)?,
        single_call: calls.first_only,
        sampling: shared::sampling(&f, &state.bundle.defaults)?,
        max_tokens,
        stop_strings: Vec::new(),
        stop_ids: Vec::new(),
        ignore_eos: false,
        reasoning_budget: budget,
        parser: ParserOptions {
            starts_in_reasoning: rendered.starts_in_reasoning,
            tools: rendered.tools,
        },
    };
    let mut echo = Map::new();
    for key in [
        "instructions",
        "tools",
        "tool_choice",
        "temperature",
        "top_p",
        "max_output_tokens",
        "previous_response_id",
        "reasoning",
        "text",
        "metadata",
        "user",
        "prompt_cache_key",
    ] {
        echo.insert(key.into(), body.get(key).cloned().unwrap_or(Value::Null));
    }
    for (key, default) in [
        ("tools", json!([])),
        ("tool_choice", json!("auto")),
        ("metadata", json!({})),
        ("text", json!({"format": {"type": "text"}})),
    ] {
        if echo[key].is_null() {
            echo.insert(key.into(), default);
        }
    }
    echo.insert("parallel_tool_calls".into(), (!calls.first_only).into());
    echo.insert("store".into(), store.into());
    echo.insert("truncation".into(), "disabled".into());
    Ok(Plan {
        answer_prefix: choice.answer_prefix(state)?,
        prompt,
        images,
        text: rendered.text,
        opts,
        calls,
        stream,
        store,
        encrypted,
        summary,
        echo,
        history,
    })
}

/// `POST /v1/responses`.
pub async fn create(State(state): State<Shared>, JsonBody(body): JsonBody) -> Response {
    let plan = match shared::off_runtime(&state, move |s| plan(&s, &body)).await {
        Ok(p) => p,
        Err(e) => return e.with_protocol(P).into_response(),
    };
    let mut plan = plan;
    let (rx, admitted) = match shared::submit_tracked(
        &state,
        std::mem::take(&mut plan.prompt),
        std::mem::take(&mut plan.images),
        Some(std::mem::take(&mut plan.text)),
        std::mem::take(&mut plan.opts),
        None,
        plan.answer_prefix.take(),
        P,
    ) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let admission = admitted.await.ok();
    let head = Head {
        id: new_id("resp_"),
        created: now_secs(),
        plan,
    };
    let mut resp = if head.plan.stream {
        stream(state, rx, head).into_response()
    } else {
        collect(state, rx, head).await
    };
    shared::cache_headers(&mut resp, admission.as_ref());
    resp
}

/// What every response object of a request shares.
struct Head {
    id: String,
    created: u64,
    plan: Plan,
}

impl Head {
    /// The response object with `status` and `output` (and `usage` once known).
    fn object(
        &self,
        state: &AppState,
        status: &str,
        output: Vec<Value>,
        summary: Option<&Summary>,
    ) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": state.config.model_name,
            "output": output,
            "error": null,
            "incomplete_details": null,
            "usage": summary.map(usage),
        });
        for (k, x) in &self.plan.echo {
            v[k] = x.clone();
        }
        if status == "incomplete" {
            v["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
        v
    }

    /// The finished response's status.
    fn status(summary: &Summary, calls: bool) -> &'static str {
        match summary.finish {
            FinishReason::Length | FinishReason::Cancelled if !calls => "incomplete",
            _ => "completed",
        }
    }

    /// Stores the finished response and the conversation it ends.
    fn store(&self, state: &AppState, response: &Value, turn: Value) {
        if !self.plan.store {
            return;
        }
        let mut messages = self.plan.history.clone();
        messages.push(turn);
        lock(&state.responses).insert(self.id.clone(), response.clone(), messages);
    }

    fn reasoning_item(&self, id: &str, text: &str, status: &str) -> Value {
        let mut item = json!({
            "type": "reasoning",
            "id": id,
            "summary": if self.plan.summary { json!([{"type": "summary_text", "text": text}]) } else { json!([]) },
            "content": [{"type": "reasoning_text", "text": text}],
            "status": status,
        });
        if self.plan.encrypted {
            item["encrypted_content"] = encode_reasoning(text).into();
        }
        item
    }
}

fn usage(s: &Summary) -> Value {
    json!({
        "input_tokens": s.prompt_tokens,
        "input_tokens_details": {"cached_tokens": s.cached_tokens},
        "output_tokens": s.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": s.reasoning_tokens},
        "total_tokens": s.prompt_tokens + s.completion_tokens,
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    })
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// The assistant turn a response adds to the conversation (template form).
fn assistant_turn(reasoning: &str, content: &str, calls: &[(String, String, String)]) -> Value {
    let mut msg = json!({"role": "assistant", "content": content});
    if !reasoning.is_empty() {
        msg["reasoning_content"] = reasoning.into();
    }
    if !calls.is_empty() {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(call_id, name, args)| {
                let arguments: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
                json!({"type": "function", "id": call_id, "function": {"name": name, "arguments": arguments}})
            })
            .collect();
        msg["tool_calls"] = calls.into();
    }
    msg
}

async fn collect(state: Shared, mut rx: UnboundedReceiver<Out>, head: Head) -> Response {
    let (mut reasoning, mut content) = (String::new(), String::new());
    // (call_id, name, arguments)
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let summary = loop {
        match rx.recv().await {
            Some(Out::Token { events, .. }) => {
                for e in events.into_iter().filter(|e| head.plan.calls.keeps(e)) {
                    match e {
                        Event::Reasoning(t) => reasoning.push_str(&t),
                        Event::Content(t) => content.push_str(&t),
                        Event::ToolCallEnd { raw, .. } if head.plan.calls.as_text => {
                            content.push_str(&raw)
                        }
                        Event::ToolCallEnd { call, .. } => {
                            calls.push((new_id("call_"), call.name.clone(), call.arguments_json()));
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
    let status = Head::status(&summary, !calls.is_empty());
    let item_status = if status == "incomplete" {
        "incomplete"
    } else {
        "completed"
    };
    let mut output = Vec::new();
    if !reasoning.is_empty() {
        output.push(head.reasoning_item(&new_id("rs_"), &reasoning, item_status));
    }
    if !content.is_empty() || calls.is_empty() {
        output.push(message_item(&new_id("msg_"), &content, item_status));
    }
    for (call_id, name, args) in &calls {
        output.push(call_item(&new_id("fc_"), call_id, name, args, "completed"));
    }
    let response = head.object(&state, status, output, Some(&summary));
    head.store(
        &state,
        &response,
        assistant_turn(&reasoning, &content, &calls),
    );
    axum::Json(response).into_response()
}

/// The output item a stream has open.
enum Open {
    Reasoning {
        index: usize,
        id: String,
        text: String,
    },
    Message {
        index: usize,
        id: String,
        text: String,
    },
    Call {
        index: usize,
        id: String,
        call_id: String,
        name: String,
        args: String,
    },
}

/// Builds a stream's events, numbering them.
struct Events<'a> {
    head: &'a Head,
    seq: u64,
    out: Vec<SseEvent>,
    /// Finished output items, in order.
    items: Vec<Value>,
    open: Option<Open>,
    reasoning: String,
    content: String,
    calls: Vec<(String, String, String)>,
}

impl Events<'_> {
    fn emit(&mut self, kind: &str, mut data: Value) {
        data["type"] = kind.into();
        data["sequence_number"] = self.seq.into();
        self.seq += 1;
        self.out
            .push(SseEvent::default().event(kind).data(data.to_string()));
    }

    fn close(&mut self) {
        let Some(open) = self.open.take() else { return };
        match open {
            Open::Reasoning { index, id, text } => {
                if self.head.plan.summary {
                    self.emit("response.reasoning_summary_text.done", json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}));
                    self.emit("response.reasoning_summary_part.done", json!({"item_id": id, "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": text}}));
                }
                self.emit(
                    "response.reasoning_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
                );
                let item = self.head.reasoning_item(&id, &text, "completed");
                self.emit(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.reasoning.push_str(&text);
                self.items.push(item);
            }
            Open::Message { index, id, text } => {
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.emit("response.output_text.done", json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}));
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                );
                let item = message_item(&id, &text, "completed");
                self.emit(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.content.push_str(&text);
                self.items.push(item);
            }
            Open::Call {
                index,
                id,
                call_id,
                name,
                args,
            } => {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": index, "name": name, "arguments": args}),
                );
                let item = call_item(&id, &call_id, &name, &args, "completed");
                self.emit(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.calls.push((call_id, name, args));
                self.items.push(item);
            }
        }
    }

    fn reasoning_delta(&mut self, t: String) {
        if !matches!(self.open, Some(Open::Reasoning { .. })) {
            self.close();
            let (index, id) = (self.items.len(), new_id("rs_"));
            let mut item = self.head.reasoning_item(&id, "", "in_progress");
            item["content"] = json!([]);
            item["summary"] = json!([]);
            if let Some(o) = item.as_object_mut() {
                o.remove("encrypted_content");
            }
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            if self.head.plan.summary {
                self.emit("response.reasoning_summary_part.added", json!({"item_id": id, "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}));
            }
            self.open = Some(Open::Reasoning {
                index,
                id,
                text: String::new(),
            });
        }
        let Some(Open::Reasoning { index, id, text }) = &mut self.open else {
            unreachable!("opened above")
        };
        text.push_str(&t);
        let (index, id) = (*index, id.clone());
        if self.head.plan.summary {
            self.emit(
                "response.reasoning_summary_text.delta",
                json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": t}),
            );
        }
        self.emit(
            "response.reasoning_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t}),
        );
    }

    fn text_delta(&mut self, t: String) {
        if !matches!(self.open, Some(Open::Message { .. })) {
            self.close();
            let (index, id) = (self.items.len(), new_id("msg_"));
            let mut item = message_item(&id, "", "in_progress");
            item["content"] = json!([]);
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            self.emit("response.content_part.added", json!({"item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}));
            self.open = Some(Open::Message {
                index,
                id,
                text: String::new(),
            });
        }
        if t.is_empty() {
            return;
        }
        let Some(Open::Message { index, id, text }) = &mut self.open else {
            unreachable!("opened above")
        };
        text.push_str(&t);
        let (index, id) = (*index, id.clone());
        self.emit("response.output_text.delta", json!({"item_id": id, "output_index": index, "content_index": 0, "delta": t, "logprobs": []}));
    }

    fn event(&mut self, e: Event) {
        let as_text = self.head.plan.calls.as_text;
        match e {
            Event::Reasoning(t) => self.reasoning_delta(t),
            Event::Content(t) => self.text_delta(t),
            Event::ToolCallEnd { raw, .. } if as_text => self.text_delta(raw),
            Event::ToolCallStart { .. } | Event::ToolCallArgs { .. } if as_text => {}
            Event::ToolCallStart { name, .. } => {
                self.close();
                let (index, id, call_id) = (self.items.len(), new_id("fc_"), new_id("call_"));
                let item = call_item(&id, &call_id, &name, "", "in_progress");
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                );
                self.open = Some(Open::Call {
                    index,
                    id,
                    call_id,
                    name,
                    args: String::new(),
                });
            }
            Event::ToolCallArgs { delta, .. } => {
                if let Some(Open::Call {
                    index, id, args, ..
                }) = &mut self.open
                {
                    args.push_str(&delta);
                    let (index, id) = (*index, id.clone());
                    self.emit(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": index, "delta": delta}),
                    );
                }
            }
            Event::ToolCallEnd { call, .. } => {
                if let Some(Open::Call { args, .. }) = &mut self.open {
                    // The deltas concatenate to the call's arguments (the parser's promise).
                    *args = call.arguments_json();
                }
                self.close();
            }
        }
    }
}

fn stream(state: Shared, mut rx: UnboundedReceiver<Out>, head: Head) -> impl IntoResponse {
    let (tx, events) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let mut ev = Events {
            head: &head,
            seq: 0,
            out: Vec::new(),
            items: Vec::new(),
            open: None,
            reasoning: String::new(),
            content: String::new(),
            calls: Vec::new(),
        };
        let start = head.object(&state, "in_progress", Vec::new(), None);
        ev.emit("response.created", json!({"response": start.clone()}));
        ev.emit("response.in_progress", json!({"response": start}));
        let summary = loop {
            for e in ev.out.drain(..) {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            let Some(msg) = rx.recv().await else { return };
            match msg {
                Out::Token { events, .. } => {
                    for e in events.into_iter().filter(|e| head.plan.calls.keeps(e)) {
                        ev.event(e);
                    }
                }
                Out::Done(s) => break s,
                Out::Failed(m) => {
                    ev.emit(
                        "error",
                        json!({"code": "server_error", "message": m, "param": null}),
                    );
                    for e in ev.out.drain(..) {
                        let _ = tx.send(Ok(e)).await;
                    }
                    return;
                }
            }
        };
        ev.close();
        if ev.calls.is_empty() && !ev.items.iter().any(|i| i["type"] == "message") {
            // As without streaming: an answer always has its message, empty or not.
            ev.text_delta(String::new());
            ev.close();
        }
        let status = Head::status(&summary, !ev.calls.is_empty());
        let response = head.object(&state, status, ev.items.clone(), Some(&summary));
        head.store(
            &state,
            &response,
            assistant_turn(&ev.reasoning, &ev.content, &ev.calls),
        );
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        ev.emit(kind, json!({"response": response}));
        for e in ev.out.drain(..) {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
    });
    Sse::new(ReceiverStream::new(events)).keep_alive(KeepAlive::default())
}

fn not_stored(id: &str) -> Response {
    let mut e = ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "response `{id}` is not stored here (it was not stored, was deleted, or was evicted)"
        ),
    );
    e.param = Some("response_id".into());
    e.into_response()
}

/// `GET /v1/responses/{id}`.
pub async fn get(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let found = lock(&state.responses).get(&id).map(|e| e.response.clone());
    match found {
        Some(v) => axum::Json(v).into_response(),
        None => not_stored(&id),
    }
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let removed = lock(&state.responses).remove(&id);
    if removed {
        axum::Json(json!({"id": id, "object": "response", "deleted": true})).into_response()
    } else {
        not_stored(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::tests::{CALL, MALFORMED, body, engine_output, runtime, test_state};

    /// A request's head, planned against the demo model.
    fn head(state: &AppState, extra: Value) -> Head {
        let mut req = json!({
            "model": "m",
            "input": "Weather in Paris?",
            "tools": [{"type": "function", "name": "get_weather",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}],
            "reasoning": {"effort": "high", "summary": "auto"},
            "include": ["reasoning.encrypted_content"],
        });
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        Head {
            id: new_id("resp_"),
            created: 0,
            plan: plan(state, req.as_object().unwrap()).unwrap(),
        }
    }

    /// A parsed call: a reasoning item (summary, content and `encrypted_content` carrying the
    /// thinking) and a function call item; stored with the conversation it ends.
    #[test]
    fn a_parsed_call_becomes_reasoning_and_function_call_items() {
        let (_server, state) = test_state();
        runtime().block_on(async {
            let h = head(&state, json!({}));
            let id = h.id.clone();
            let rx = engine_output(CALL, FinishReason::Stop(0));
            let v: Value =
                serde_json::from_str(&body(collect(state.clone(), rx, h).await).await).unwrap();
            assert_eq!(v["status"], "completed", "{v}");
            let out = v["output"].as_array().unwrap();
            assert_eq!(out.len(), 2, "{v}");
            assert_eq!(out[0]["type"], "reasoning");
            assert_eq!(out[0]["summary"][0]["text"], "I need the weather.");
            assert_eq!(out[0]["content"][0]["text"], "I need the weather.");
            let enc = out[0]["encrypted_content"].as_str().unwrap();
            assert_eq!(
                decode_reasoning(enc).as_deref(),
                Some("I need the weather.")
            );
            assert_eq!(out[1]["type"], "function_call");
            assert_eq!(out[1]["name"], "get_weather");
            let args: Value = serde_json::from_str(out[1]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(args, json!({"city": "Paris", "days": 3}));
            let stored = lock(&state.responses)
                .get(&id)
                .map(|e| e.messages.clone())
                .unwrap();
            let turn = stored.last().unwrap();
            assert_eq!(turn["reasoning_content"], "I need the weather.");
            assert_eq!(
                turn["tool_calls"][0]["function"]["arguments"],
                json!({"city": "Paris", "days": 3})
            );
        });
    }

    /// The stream of the same output: the published event order, numbered from 0, every item
    /// added before its deltas and done before `response.completed`, whose output is the
    /// items as done.
    #[test]
    fn the_stream_follows_the_published_order() {
        let (_server, state) = test_state();
        runtime().block_on(async {
            let rx = engine_output(CALL, FinishReason::Stop(0));
            let text =
                body(stream(state.clone(), rx, head(&state, json!({}))).into_response()).await;
            let events: Vec<Value> = text
                .split("\n\n")
                .filter_map(|b| b.lines().find_map(|l| l.strip_prefix("data: ")))
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            let names: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e["sequence_number"], i);
            }
            // Without deltas: the items' frames in order.
            let frames: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| !n.ends_with(".delta"))
                .collect();
            assert_eq!(
                frames,
                [
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added",
                    "response.reasoning_summary_part.added",
                    "response.reasoning_summary_text.done",
                    "response.reasoning_summary_part.done",
                    "response.reasoning_text.done",
                    "response.output_item.done",
                    "response.output_item.added",
                    "response.function_call_arguments.done",
                    "response.output_item.done",
                    "response.completed",
                ]
            );
            // Each delta inside its item's frame.
            let at = |name: &str, nth: usize| {
                names
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n == name)
                    .nth(nth)
                    .unwrap()
                    .0
            };
            for (i, n) in names.iter().enumerate() {
                let (from, to) = match *n {
                    "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => (
                        at("response.output_item.added", 0),
                        at("response.reasoning_summary_text.done", 0),
                    ),
                    "response.function_call_arguments.delta" => (
                        at("response.output_item.added", 1),
                        at("response.function_call_arguments.done", 0),
                    ),
                    _ => continue,
                };
                assert!(from < i && i < to, "{n} at {i}: {names:?}");
            }
            let args: String = events
                .iter()
                .filter(|e| e["type"] == "response.function_call_arguments.delta")
                .map(|e| e["delta"].as_str().unwrap())
                .collect();
            let done = events
                .iter()
                .find(|e| e["type"] == "response.function_call_arguments.done")
                .unwrap();
            assert_eq!(done["arguments"], args);
            let items: Vec<&Value> = events
                .iter()
                .filter(|e| e["type"] == "response.output_item.done")
                .map(|e| &e["item"])
                .collect();
            let last = events.last().unwrap();
            assert_eq!(last["response"]["status"], "completed");
            assert_eq!(
                last["response"]["output"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .collect::<Vec<_>>(),
                items
            );
            assert_eq!(
                last["response"]["usage"]["output_tokens"],
                CALL.chars().count().div_ceil(3)
            );
        });
    }

    /// A call cut off by the budget is text, and the response is incomplete; with
    /// `tool_choice: none` a well-formed call stays text.
    #[test]
    fn cut_off_and_refused_calls_are_text() {
        let (_server, state) = test_state();
        runtime().block_on(async {
            let rx = engine_output(MALFORMED, FinishReason::Length);
            let v: Value = serde_json::from_str(
                &body(collect(state.clone(), rx, head(&state, json!({}))).await).await,
            )
            .unwrap();
            assert_eq!(
                (
                    v["status"].as_str(),
                    v["incomplete_details"]["reason"].as_str()
                ),
                (Some("incomplete"), Some("max_output_tokens"))
            );
            let msg = v["output"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["type"] == "message")
                .unwrap();
            assert!(
                msg["content"][0]["text"]
                    .as_str()
                    .unwrap()
                    .contains("<function=get_weather>"),
                "{v}"
            );

            let rx = engine_output(CALL, FinishReason::Stop(0));
            let h = head(&state, json!({"tool_choice": "none"}));
            let v: Value =
                serde_json::from_str(&body(collect(state.clone(), rx, h).await).await).unwrap();
            assert!(
                v["output"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|i| i["type"] != "function_call"),
                "{v}"
            );
        });
    }

    #[test]
    fn reasoning_round_trips_through_encrypted_content() {
        let text = "Ünïcode reasoning\nover lines";
        assert_eq!(
            decode_reasoning(&encode_reasoning(text)).as_deref(),
            Some(text)
        );
        assert_eq!(decode_reasoning("gAAAAAB-opaque-from-elsewhere"), None);
        assert_eq!(decode_reasoning(&format!("{ENCODED}!!not base64")), None);
    }

    #[test]
    fn input_items_become_template_messages() {
        let items = json!([
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "D"}]},
            {"role": "user", "content": "Q"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": encode_reasoning("think")},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\":1}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": ""},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "function_call_output", "call_id": "c2", "output": "two"},
            {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "more"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "done"}]},
        ]);
        let m = input_messages(&items).unwrap();
        assert_eq!(m.len(), 6, "{m:?}");
        assert_eq!(m[0], json!({"role": "system", "content": "D"}));
        assert_eq!(m[1], json!({"role": "user", "content": "Q"}));
        assert_eq!(m[2]["reasoning_content"], "think");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            json!({"a": 1})
        );
        assert_eq!(m[2]["tool_calls"][1]["function"]["name"], "g");
        assert_eq!(
            m[3],
            json!({"role": "tool", "content": "one", "tool_call_id": "c1"})
        );
        assert_eq!(
            m[5],
            json!({"role": "assistant", "content": "done", "reasoning_content": "more"})
        );
        for (bad, at) in [
            (
                json!([{"type": "item_reference", "id": "x"}]),
                "input[0].type",
            ),
            (json!([{"role": "wizard", "content": "x"}]), "input[0].role"),
            (
                json!([{"type": "reasoning", "encrypted_content": "gAAA"}]),
                "input[0].encrypted_content",
            ),
            (
                json!([{"type": "function_call", "name": "f"}]),
                "input[0].call_id",
            ),
            (json!(7), "input"),
        ] {
            let e = input_messages(&bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(at), "{bad}");
        }
    }

    #[test]
    fn the_store_is_bounded_and_evicts_the_oldest() {
        let mut s = Store::default();
        for i in 0..STORE_RESPONSES + 3 {
            s.insert(
                format!("r{i}"),
                json!({"i": i}),
                vec![json!({"role": "user", "content": "x"})],
            );
        }
        assert_eq!(s.entries.len(), STORE_RESPONSES);
        assert!(s.get("r0").is_none() && s.get("r2").is_none() && s.get("r3").is_some());
        assert!(s.remove("r3") && !s.remove("r3"));
        let big = "x".repeat(STORE_BYTES / 3);
        for i in 0..4 {
            s.insert(format!("b{i}"), json!({"big": big}), Vec::new());
        }
        assert!(s.bytes <= STORE_BYTES);
        assert!(s.get("b0").is_none() && s.get("b3").is_some());
    }
}
