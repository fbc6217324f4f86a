//! The server end to end over real HTTP on a random localhost port, with the demo model.
//!
//! What each test proves is said in its doc comment; the demo model has random weights, so
//! tests that need a particular output (tool calls) drive it through histories and forced
//! prefixes, or check the wire mapping of parsed output directly (see the unit tests in
//! `src/openai.rs` and `src/anthropic.rs`).

mod common;

use std::time::{Duration, Instant};

use common::http::{self, get, metric, post};
use common::{MODEL, TestServer, bundle};
use qinfer_engine::generate::{Flow, GenerateOptions, Sequence, generate};
use qinfer_engine::parser::ParserOptions;
use qinfer_engine::sampler::SamplingParams;
use qinfer_engine::template::RenderRequest;
use serde_json::{Value, json};

/// Greedy sampling as `qinfer generate --temperature 0` sets it.
fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

/// The request fields that make the server sample exactly like [`greedy`].
fn greedy_fields(body: &mut Value) {
    let g = greedy();
    body["temperature"] = 0.0.into();
    body["presence_penalty"] = g.presence_penalty.into();
    body["frequency_penalty"] = g.frequency_penalty.into();
    body["repetition_penalty"] = g.repetition_penalty.into();
}

/// What `qinfer generate --chat --prompt USER --temperature 0 --max-tokens N` produces:
/// (reasoning, content).
fn reference(user: &str, max_tokens: usize) -> (String, String) {
    let b = bundle();
    let mut kwargs = serde_json::Map::new();
    kwargs.insert("enable_thinking".into(), true.into());
    let text = b
        .template()
        .unwrap()
        .render(&RenderRequest {
            messages: &json!([{"role": "user", "content": user}]),
            tools: None,
            add_generation_prompt: true,
            kwargs: &kwargs,
        })
        .unwrap();
    let prompt = b.tokenizer.encode(&text).unwrap();
    let opts = GenerateOptions {
        json_object: false,
        json_schema: None,
        strict_tools: false,
        single_call: false,
        sampling: greedy(),
        max_tokens,
        stop_strings: Vec::new(),
        stop_ids: Vec::new(),
        ignore_eos: false,
        reasoning_budget: None,
        parser: ParserOptions {
            starts_in_reasoning: text.ends_with("<think>\n"),
            tools: Vec::new(),
        },
    };
    let mut seq = Sequence::new(&b.model);
    let g = generate(&b, &mut seq, &prompt, &opts, &mut |_| Flow::Continue).unwrap();
    (g.parsed.reasoning, g.parsed.content)
}

fn chat_body(user: &str, max_tokens: usize, stream: bool) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    greedy_fields(&mut body);
    body
}

/// Concatenated (reasoning, content) of an OpenAI stream.
fn collect_stream(resp: &http::Resp) -> (String, String) {
    let (mut reasoning, mut content) = (String::new(), String::new());
    for (_, data) in resp.sse() {
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&data).unwrap();
        if let Some(d) = v["choices"].get(0).map(|c| &c["delta"]) {
            reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
            content.push_str(d["content"].as_str().unwrap_or(""));
        }
    }
    (reasoning, content)
}

/// Greedy chat through the server (streaming and not) equals the generation loop that
/// `qinfer generate` runs, for the same rendered prompt.
#[test]
fn greedy_chat_equals_generate() {
    let server = TestServer::start(|_| {});
    let user = "Write a haiku about batching.";
    let expected = reference(user, 24);
    let r = post(
        server.addr,
        "/v1/chat/completions",
        &chat_body(user, 24, false),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let msg = &v["choices"][0]["message"];
    let got = (
        msg["reasoning_content"].as_str().unwrap_or("").to_string(),
        msg["content"].as_str().unwrap_or("").to_string(),
    );
    assert_eq!(got, expected);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let u = &v["usage"];
    assert_eq!(
        u["total_tokens"].as_u64(),
        Some(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
    );
    assert!(
        u["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let r = post(
        server.addr,
        "/v1/chat/completions",
        &chat_body(user, 24, true),
    );
    assert_eq!(r.status, 200);
    assert_eq!(collect_stream(&r), expected);
}

/// 16 concurrent streams all complete, each equal to the same request run alone, and the
/// engine really batched them (more tokens per step than one). Small prefill chunks and step
/// budget make the prompts (~25 tokens) prefill in chunks interleaved with other sequences'
/// decoding, which must not change any output.
#[test]
fn sixteen_concurrent_streams_equal_their_sequential_runs() {
    let server = TestServer::start(|c| {
        c.scheduler.max_seqs = 16;
        c.scheduler.prefill_chunk = 8;
        c.scheduler.max_step_tokens = 40;
    });
    let prompts: Vec<String> = (0..16)
        .map(|i| {
            format!(
                "Request number {i}: say something about the number {}.",
                i * 7
            )
        })
        .collect();
    let sequential: Vec<(String, String)> = prompts
        .iter()
        .map(|p| {
            collect_stream(&post(
                server.addr,
                "/v1/chat/completions",
                &chat_body(p, 16, true),
            ))
        })
        .collect();
    let m0 = get(server.addr, "/metrics").body;
    let addr = server.addr;
    let handles: Vec<_> = prompts
        .iter()
        .cloned()
        .map(|p| {
            std::thread::spawn(move || {
                let r = post(addr, "/v1/chat/completions", &chat_body(&p, 16, true));
                assert_eq!(r.status, 200, "{}", r.body);
                assert_eq!(r.sse().last().map(|e| e.1.as_str()), Some("[DONE]"));
                collect_stream(&r)
            })
        })
        .collect();
    let concurrent: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (i, (a, b)) in sequential.iter().zip(&concurrent).enumerate() {
        assert_eq!(a, b, "request {i} differs when batched");
    }
    let m1 = get(server.addr, "/metrics").body;
    let steps = metric(&m1, "qinfer_engine_steps_total") - metric(&m0, "qinfer_engine_steps_total");
    let tokens = metric(&m1, "qinfer_engine_step_tokens_total")
        - metric(&m0, "qinfer_engine_step_tokens_total");
    assert!(
        tokens / steps > 2.0,
        "16 concurrent requests ran {tokens} tokens in {steps} steps: not batched"
    );
}

/// The OpenAI stream: a first chunk with the role, chunks of `chat.completion.chunk`, one
/// chunk with `finish_reason`, the usage chunk (empty choices) when asked, then `[DONE]`.
#[test]
fn openai_stream_follows_the_published_order() {
    let server = TestServer::start(|_| {});
    let mut body = chat_body("Hi", 8, true);
    body["stream_options"] = json!({"include_usage": true});
    let r = post(server.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = r.sse();
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id);
    }
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let finishing: Vec<_> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null() && c["choices"].get(0).is_some())
        .collect();
    assert_eq!(finishing.len(), 1);
    assert_eq!(finishing[0]["choices"][0]["finish_reason"], "length");
    // The finishing chunk comes right before the usage chunk.
    assert_eq!(&chunks[chunks.len() - 2], finishing[0]);
}

/// The Anthropic stream: message_start, then blocks each opened, filled and closed with
/// consecutive indices, then message_delta and message_stop. Non-streaming returns the same
/// blocks.
#[test]
fn anthropic_stream_follows_the_published_order() {
    let server = TestServer::start(|_| {});
    let body = json!({
        "model": MODEL,
        "max_tokens": 12,
        "temperature": 0,
        "thinking": {"type": "enabled", "budget_tokens": 6},
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
        "stream": true,
    });
    let r = post(server.addr, "/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.sse();
    let names: Vec<&str> = events.iter().map(|e| e.0.as_deref().unwrap()).collect();
    assert_eq!(names[0], "message_start");
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let mut open: Option<u64> = None;
    let mut next = 0;
    let mut kinds = Vec::new();
    for (name, data) in &events[1..events.len() - 2] {
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["type"], name.as_deref().unwrap());
        match name.as_deref().unwrap() {
            "content_block_start" => {
                assert_eq!(open, None, "a block opened inside another");
                assert_eq!(v["index"], next);
                kinds.push(v["content_block"]["type"].as_str().unwrap().to_string());
                open = Some(next);
            }
            "content_block_delta" => {
                assert_eq!(v["index"].as_u64(), open);
                let t = v["delta"]["type"].as_str().unwrap();
                assert!(
                    [
                        "text_delta",
                        "thinking_delta",
                        "signature_delta",
                        "input_json_delta"
                    ]
                    .contains(&t)
                );
            }
            "content_block_stop" => {
                assert_eq!(v["index"].as_u64(), open);
                open = None;
                next += 1;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    assert_eq!(open, None);
    // The reasoning budget (6) ends thinking, so a thinking block comes first.
    assert_eq!(kinds.first().map(String::as_str), Some("thinking"));
    let delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 12);

    let mut body = body;
    body["stream"] = false.into();
    let r = post(server.addr, "/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "thinking");
    assert_eq!(v["stop_reason"], "max_tokens");

    let r = post(
        server.addr,
        "/v1/messages/count_tokens",
        &json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": "Hello"}],
        }),
    );
    assert_eq!(r.status, 200);
    assert!(r.json()["input_tokens"].as_u64().unwrap() > 3);
}

/// The rendered prompt of a request, through `POST /tokenize`.
fn rendered(server: &TestServer, body: Value) -> String {
    let r = post(server.addr, "/tokenize", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let ids: Vec<u32> = serde_json::from_value(r.json()["tokens"].clone()).unwrap();
    bundle().tokenizer.decode(&ids, false).unwrap()
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }})
}

/// A tool-call round trip in the OpenAI API: the assistant's call (arguments as a JSON string,
/// as the wire carries them) and the tool's result render into the prompt as the template
/// specifies, and the server answers the turn.
#[test]
fn openai_tool_call_round_trip() {
    let server = TestServer::start(|_| {});
    let messages = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "reasoning_content": "I should call the tool.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
    ]);
    let text = rendered(
        &server,
        json!({"messages": messages, "tools": [weather_tool()]}),
    );
    assert!(
        text.contains("<function=get_weather>\n<parameter=city>\nParis\n</parameter>"),
        "{text}"
    );
    assert!(
        text.contains("<tool_response>\n18 C, sunny\n</tool_response>"),
        "{text}"
    );
    assert!(
        text.contains("\"name\": \"get_weather\""),
        "tools are offered: {text}"
    );
    let mut body =
        json!({"model": MODEL, "messages": messages, "tools": [weather_tool()], "max_tokens": 8});
    greedy_fields(&mut body);
    let r = post(server.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");

    // A named tool choice forces the call's opening where the answer starts (here at once:
    // thinking is off); whatever the random model writes after it comes back as a well-formed
    // call or as text, never an error.
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    body["chat_template_kwargs"] = json!({"enable_thinking": false});
    body["max_tokens"] = 16.into();
    let r = post(server.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let msg = &r.json()["choices"][0]["message"];
    let text = msg["content"].as_str().unwrap_or("");
    assert!(
        text.contains("<function=get_weather>") || msg["tool_calls"].is_array(),
        "the forced call is in the output: {msg}"
    );
}

/// A tool-use round trip in the Anthropic API: tool_use and tool_result blocks render as the
/// template's call and response.
#[test]
fn anthropic_tool_use_round_trip() {
    let server = TestServer::start(|_| {});
    let body = json!({
        "model": MODEL,
        "max_tokens": 8,
        "temperature": 0,
        "tools": [{"name": "get_weather", "description": "Weather of a city",
                   "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Call the tool.", "signature": ""},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, sunny"}]},
        ],
    });
    let r = post(server.addr, "/v1/messages/count_tokens", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(server.addr, "/v1/messages", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["role"], "assistant");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 20);
}

/// `reasoning_content` (and its alias `reasoning`) of an earlier assistant turn reaches the
/// prompt when `preserve_thinking` is on, and is dropped from earlier turns when it is off.
#[test]
fn reasoning_content_round_trips_with_preserve_thinking() {
    let server = TestServer::start(|_| {});
    for field in ["reasoning_content", "reasoning"] {
        let messages = json!([
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer", field: "SECRET-REASONING"},
            {"role": "user", "content": "Second question"},
        ]);
        let on = rendered(
            &server,
            json!({"messages": messages,
            "chat_template_kwargs": {"preserve_thinking": true}}),
        );
        assert!(
            on.contains("<think>\nSECRET-REASONING\n</think>\n\nFirst answer"),
            "{field}: {on}"
        );
        let off = rendered(&server, json!({"messages": messages}));
        assert!(!off.contains("SECRET-REASONING"), "{field}: {off}");
    }
    // And the output side: a thinking-mode answer carries `reasoning_content`.
    let r = post(
        server.addr,
        "/v1/chat/completions",
        &chat_body("Think about it", 6, false),
    );
    assert!(r.json()["choices"][0]["message"]["reasoning_content"].is_string());
    // enable_thinking: false closes the think block in the prompt: no reasoning comes back.
    let mut body = chat_body("Answer directly", 6, false);
    body["chat_template_kwargs"] = json!({"enable_thinking": false});
    let r = post(server.addr, "/v1/chat/completions", &body);
    assert!(r.json()["choices"][0]["message"]["reasoning_content"].is_null());
}

/// Every invalid request is a 4xx in the protocol's error shape, naming the field.
#[test]
fn invalid_requests_get_shaped_4xx() {
    let server = TestServer::start(|c| {
        c.ctx = 4096;
        c.body_limit = 64 * 1024;
        c.strict_model_name = true;
    });
    let addr = server.addr;
    let raw = |path: &str, body: &str| http::request(addr, "POST", path, &[], body.as_bytes());
    let openai = |r: &http::Resp, status: u16, param: Option<&str>| {
        assert_eq!(r.status, status, "{}", r.body);
        let v = r.json();
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        if let Some(p) = param {
            assert_eq!(v["error"]["param"], p, "{v}");
        }
    };
    openai(&raw("/v1/chat/completions", "{not json"), 400, None);
    openai(&raw("/v1/chat/completions", "[1, 2]"), 400, None);
    let base = chat_body("hi", 4, false);
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        post(addr, "/v1/chat/completions", &b)
    };
    openai(&with("temperature", "hot".into()), 400, Some("temperature"));
    openai(
        &with("temperature", (-1.0).into()),
        400,
        Some("temperature"),
    );
    openai(&with("top_p", 1.5.into()), 400, Some("top_p"));
    // vLLM's `top_k: -1` (off) is accepted (it was refused as not a non-negative integer).
    assert_eq!(with("top_k", (-1).into()).status, 200);
    openai(&with("max_tokens", (-3).into()), 400, Some("max_tokens"));
    openai(
        &with("messages", json!([{"role": "wizard", "content": "x"}])),
        400,
        Some("messages[0].role"),
    );
    openai(
        &with(
            "messages",
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
        ),
        400,
        Some("messages[0].content[0].image_url"),
    );
    openai(&with("model", "gpt-9".into()), 404, Some("model"));
    openai(
        &with("response_format", json!({"type": "json_schema"})),
        400,
        Some("response_format.json_schema"),
    );
    openai(
        &with("response_format", json!({"type": "yaml"})),
        400,
        Some("response_format.type"),
    );
    openai(
        &with("tool_choice", "required".into()),
        400,
        Some("tool_choice"),
    );
    let r = with("max_tokens", 5000.into());
    openai(&r, 400, Some("max_tokens"));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("5000") && msg.contains("4096"), "{msg}");
    let r = with("max_completion_tokens", 99999.into());
    openai(&r, 400, Some("max_completion_tokens"));
    let big = format!(
        "{{\"model\": \"{MODEL}\", \"pad\": \"{}\"}}",
        "x".repeat(100 * 1024)
    );
    openai(&raw("/v1/chat/completions", &big), 413, None);
    openai(
        &raw("/v1/completions", &json!({"model": MODEL}).to_string()),
        400,
        Some("prompt"),
    );
    openai(&http::get(addr, "/v1/nothing"), 404, None);

    // Anthropic routes answer in Anthropic's shape.
    let anthropic = |r: &http::Resp, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        let v = r.json();
        assert_eq!(v["type"], "error", "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{v}"
        );
    };
    anthropic(&raw("/v1/messages", "{"), 400, "JSON");
    anthropic(
        &post(
            addr,
            "/v1/messages",
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}]}),
        ),
        400,
        "max_tokens",
    );
    anthropic(
        &post(
            addr,
            "/v1/messages",
            &json!({"model": MODEL, "max_tokens": "ten",
            "messages": [{"role": "user", "content": "x"}]}),
        ),
        400,
        "max_tokens",
    );
    anthropic(
        &post(
            addr,
            "/v1/messages",
            &json!({"model": MODEL, "max_tokens": 4,
            "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}),
        ),
        400,
        "messages[0].content[0].source.type",
    );
    anthropic(
        &post(
            addr,
            "/v1/messages",
            &json!({"model": "claude-x", "max_tokens": 4,
            "messages": [{"role": "user", "content": "x"}]}),
        ),
        404,
        "claude-x",
    );
    let m = get(addr, "/metrics").body;
    assert_eq!(metric(&m, "qinfer_http_requests_total{class=\"5xx\"}"), 0.0);
}

/// Hardening: `max_tokens: 18446744073709551615` wrapped `prompt + n <= ctx` and generated past
/// the context. Every output budget field of every route is now refused naming the field.
#[test]
fn max_tokens_near_u64_max_is_refused_not_wrapped() {
    let server = TestServer::start(|c| c.ctx = 64);
    let addr = server.addr;
    let huge = json!(u64::MAX);
    for field in ["max_tokens", "max_completion_tokens"] {
        let mut b = chat_body("hi", 4, false);
        b[field] = huge.clone();
        let r = post(addr, "/v1/chat/completions", &b);
        assert_eq!(r.status, 400, "{field}: {}", r.body);
        assert_eq!(r.json()["error"]["param"], field, "{}", r.body);
    }
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "hi", "max_tokens": huge}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "max_tokens", "{}", r.body);
    let r = post(
        addr,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": huge, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("max_tokens"), "{}", r.body);
}

/// Hardening: 1,000 × 20 KB stop strings were matched on the engine thread for every token
/// (a 0.32 s request took 12.4 s and slowed its neighbours 30×). Stop strings are now bounded
/// in count and length, refused naming the field on every route.
#[test]
fn stop_strings_are_bounded() {
    let server = TestServer::start(|c| c.ctx = 4096);
    let addr = server.addr;
    let many: Vec<String> = (0..17).map(|i| format!("s{i}")).collect();
    let long = vec!["x".repeat(257)];
    for stops in [json!(many), json!(long)] {
        let mut b = chat_body("hi", 4, false);
        b["stop"] = stops.clone();
        let r = post(addr, "/v1/chat/completions", &b);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"]["param"], "stop", "{}", r.body);
        let r = post(
            addr,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "hi", "max_tokens": 2, "stop": stops}),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        let r = post(
            addr,
            "/v1/messages",
            &json!({"model": MODEL, "max_tokens": 4, "stop_sequences": stops,
                "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("stop_sequences"), "{}", r.body);
    }
    // At the limits, accepted.
    let mut b = chat_body("hi", 2, false);
    b["stop"] = json!(
        (0..16)
            .map(|i| format!("{i}{}", "y".repeat(250)))
            .collect::<Vec<_>>()
    );
    assert_eq!(post(addr, "/v1/chat/completions", &b).status, 200);
}

/// With a key set, every route but /health needs it, as Bearer or x-api-key.
#[test]
fn api_key_is_required_when_set() {
    let server = TestServer::start(|c| c.api_key = Some("s3cret".into()));
    let addr = server.addr;
    assert_eq!(get(addr, "/health").status, 200);
    for (headers, want) in [
        (vec![], 401),
        (vec![("Authorization", "Bearer wrong")], 401),
        (vec![("x-api-key", "s3cre")], 401),
        (vec![("Authorization", "Bearer s3cret")], 200),
        (vec![("x-api-key", "s3cret")], 200),
    ] {
        let r = http::request(addr, "GET", "/v1/models", &headers, b"");
        assert_eq!(r.status, want, "{headers:?}: {}", r.body);
        if want == 401 {
            assert_eq!(r.json()["error"]["type"], "authentication_error");
        }
    }
    let r = http::request(addr, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 401);
    let r = http::request(addr, "POST", "/v1/messages", &[], b"{}");
    assert_eq!(r.json()["type"], "error");
}

fn wait_for(addr: std::net::SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let m = get(addr, "/metrics").body;
        if ok(&m) {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client that disconnects mid-stream frees its sequence (visible in /metrics); with the
/// one slot busy and the one queue place taken, the next request gets 429 with Retry-After.
#[test]
fn disconnect_frees_the_sequence_and_a_full_queue_gives_429() {
    let server = TestServer::start(|c| {
        c.scheduler.max_seqs = 1;
        c.scheduler.max_queue = 1;
    });
    let addr = server.addr;
    let long = chat_body("Tell me a long story", 4000, true);
    let r = http::open_stream(addr, "/v1/chat/completions", &long);
    wait_for(addr, "one running sequence", |m| {
        metric(m, "qinfer_running_sequences") == 1.0
    });

    // Second request waits in the queue; the third finds it full.
    let queued = http::send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        long.to_string().as_bytes(),
    );
    wait_for(addr, "one queued request", |m| {
        metric(m, "qinfer_queue_depth") == 1.0
    });
    let r3 = post(addr, "/v1/chat/completions", &chat_body("x", 4, false));
    assert_eq!(r3.status, 429, "{}", r3.body);
    assert!(r3.header("retry-after").is_some());
    assert_eq!(r3.json()["error"]["type"], "rate_limit_error");

    // Disconnect both; the engine frees the running sequence and drops the queued request.
    drop(r);
    drop(queued);
    let m = wait_for(addr, "the sequences to be freed", |m| {
        metric(m, "qinfer_running_sequences") == 0.0 && metric(m, "qinfer_queue_depth") == 0.0
    });
    assert!(metric(&m, "qinfer_cancelled_requests_total") >= 2.0, "{m}");
    assert_eq!(metric(&m, "qinfer_sequence_state_bytes"), 0.0);
    assert_eq!(metric(&m, "qinfer_rejected_queue_full_total"), 1.0);
    // The server still serves.
    assert_eq!(
        post(addr, "/v1/chat/completions", &chat_body("x", 2, false)).status,
        200
    );

    // A non-streaming request is cancelled too when its client goes away. Wait for it to be
    // admitted (the running gauge alone may still show the request before it for a moment).
    let m = get(addr, "/metrics").body;
    let before = metric(&m, "qinfer_cancelled_requests_total");
    let admitted = metric(&m, "qinfer_generation_requests_total");
    let s = http::send(
        addr,
        "POST",
        "/v1/chat/completions",
        &[],
        chat_body("x", 4000, false).to_string().as_bytes(),
    );
    wait_for(addr, "the non-streaming request to run", |m| {
        metric(m, "qinfer_generation_requests_total") == admitted + 1.0
            && metric(m, "qinfer_running_sequences") == 1.0
    });
    drop(s);
    wait_for(addr, "the non-streaming request to be cancelled", |m| {
        metric(m, "qinfer_running_sequences") == 0.0
            && metric(m, "qinfer_cancelled_requests_total") == before + 1.0
    });
}

/// Operations routes: health, models, metrics, tokenize/detokenize, raw completions.
#[test]
fn operations_routes() {
    let server = TestServer::start(|_| {});
    let addr = server.addr;
    assert_eq!(get(addr, "/health").json()["status"], "ok");
    let models = get(addr, "/v1/models").json();
    assert_eq!(models["data"][0]["id"], MODEL);
    let t = post(addr, "/tokenize", &json!({"prompt": "Hello world"})).json();
    let ids = t["tokens"].clone();
    assert_eq!(t["count"], ids.as_array().unwrap().len());
    let d = post(addr, "/detokenize", &json!({"tokens": ids})).json();
    assert_eq!(d["prompt"], "Hello world");
    assert_eq!(
        post(addr, "/detokenize", &json!({"tokens": [-1]})).status,
        400
    );
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 5,
        "temperature": 0, "stream": true}),
    );
    let streamed: String = r
        .sse()
        .iter()
        .filter(|e| e.1 != "[DONE]")
        .map(|e| {
            serde_json::from_str::<Value>(&e.1).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(streamed, v["choices"][0]["text"].as_str().unwrap());
    let m = get(addr, "/metrics").body;
    for name in [
        "qinfer_time_to_first_token_seconds_bucket",
        "qinfer_inter_token_latency_seconds_bucket",
        "qinfer_prompt_tokens_total",
        "qinfer_generation_tokens_total",
        "qinfer_cached_prompt_tokens_total",
        "qinfer_queue_depth",
        "qinfer_running_sequences",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    // Logprobs: one entry per generated token with the requested alternatives.
    let mut body = chat_body("hi", 4, false);
    body["logprobs"] = true.into();
    body["top_logprobs"] = 3.into();
    let v = post(addr, "/v1/chat/completions", &body).json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    // Greedy: the chosen token is the most likely one.
    assert_eq!(
        content[0]["logprob"],
        content[0]["top_logprobs"][0]["logprob"]
    );
}

/// A server-wide reasoning budget ends thinking for requests that set none; a request's own
/// `max_reasoning_tokens` wins.
#[test]
fn a_default_reasoning_budget_ends_endless_thinking() {
    let server = TestServer::start(|c| c.default_reasoning_budget = Some(5));
    let reasoning = |body: &Value| {
        let v = post(server.addr, "/v1/chat/completions", body).json();
        v["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
    };
    let body = chat_body("Think forever", 40, false);
    // The budget plus the forced "\n</think>" tokens counted while still inside the block.
    assert!((5..=8).contains(&reasoning(&body)), "{}", reasoning(&body));
    let mut own = body.clone();
    own["max_reasoning_tokens"] = 15.into();
    assert!((15..=18).contains(&reasoning(&own)));
}

/// Graceful shutdown lets an in-flight request finish.
#[test]
fn shutdown_finishes_in_flight_requests() {
    let server = TestServer::start(|_| {});
    let addr = server.addr;
    let mut r = http::open_stream(addr, "/v1/chat/completions", &chat_body("go", 40, true));
    let stopper = std::thread::spawn(move || server.shutdown());
    let mut body = Vec::new();
    while let Some(c) = http::read_chunk(&mut r) {
        body.extend(c);
    }
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("[DONE]"), "the stream ended cleanly: {text}");
    stopper.join().unwrap();
}

/// Hardening (part of defect 2): a prompt longer than the context could hold even at the
/// tokenizer's longest token (128 bytes for Qwen's) is refused by its length, before any
/// tokenizing or rendering cost is spent — on `/tokenize` and on the generation routes.
#[test]
fn a_prompt_that_cannot_fit_is_refused_before_tokenizing() {
    let server = TestServer::start(|c| c.ctx = 1024);
    let addr = server.addr;
    let huge = "x".repeat(1024 * 128 + 1);
    let t = Instant::now();
    let r = post(addr, "/tokenize", &json!({ "prompt": huge }));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "prompt");
    let r = post(
        addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": huge, "max_tokens": 1}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("bytes"), "{}", r.body);
    let r = post(addr, "/v1/chat/completions", &chat_body(&huge, 1, false));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Just under the limit, the text is tokenized (and found too long by its count).
    let r = post(
        addr,
        "/tokenize",
        &json!({"prompt": "x".repeat(1024 * 128)}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Tokenizing costs about 300 bytes of memory per byte of text (1.0 GB for 3.4 MB, measured),
/// so a long text is counted in 64 KiB pieces first and refused as soon as it passes the
/// context: it is only tokenized whole when it fits (3.4 MB of words against a 32K context:
/// refused after its first pieces, peak RSS unchanged, measured).
#[test]
fn a_long_prompt_is_counted_in_pieces_before_it_is_tokenized() {
    let server = TestServer::start(|c| c.ctx = 32768);
    let addr = server.addr;
    let words: String = (0..700_000).map(|i| format!("w{} ", i % 977)).collect();
    assert!(
        words.len() > 3_000_000 && words.len() < 32768 * 128,
        "under the byte limit"
    );
    for (route, body) in [
        ("/tokenize", json!({ "prompt": words })),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": words, "max_tokens": 1}),
        ),
    ] {
        let r = post(addr, route, &body);
        assert_eq!(
            r.status,
            400,
            "{route}: {}",
            &r.body[..r.body.len().min(300)]
        );
        assert!(
            r.body.contains("cannot fit the context"),
            "{route}: {}",
            r.body
        );
        assert_eq!(r.json()["error"]["param"], "prompt");
    }
}

/// Hardening (the minor findings): ignored or mis-named fields are now 400s naming the field,
/// and `/detokenize` takes every id the model can emit.
#[test]
fn minor_request_mistakes_are_named() {
    let server = TestServer::start(|c| c.ctx = 64);
    let addr = server.addr;
    let param = |r: &http::Resp| {
        r.json()["error"]["param"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let completion = |extra: Value| {
        let mut b = json!({"model": MODEL, "prompt": "hi", "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        post(addr, "/v1/completions", &b)
    };
    let r = completion(json!({"n": 2}));
    assert_eq!((r.status, param(&r)), (400, "n".into()), "{}", r.body);
    let r = completion(json!({"logprobs": 3}));
    assert_eq!(
        (r.status, param(&r)),
        (400, "logprobs".into()),
        "{}",
        r.body
    );
    let r = completion(json!({"prompt": "word ".repeat(200)}));
    assert_eq!((r.status, param(&r)), (400, "prompt".into()), "{}", r.body);

    let mut chat = chat_body("hi", 2, false);
    chat["top_logprobs"] = 3.into();
    let r = post(addr, "/v1/chat/completions", &chat);
    assert_eq!(
        (r.status, param(&r)),
        (400, "top_logprobs".into()),
        "{}",
        r.body
    );
    let mut chat = chat_body("hi", 2, false);
    chat["tools"] =
        json!([{"type": "function", "function": {"name": "f", "parameters": "notobj"}}]);
    let r = post(addr, "/v1/chat/completions", &chat);
    assert_eq!(
        (r.status, param(&r)),
        (400, "tools[0]".into()),
        "{}",
        r.body
    );

    let r = get(addr, "/v1/chat/completions");
    assert_eq!(r.status, 405);
    assert!(r.json()["error"]["message"].is_string(), "{}", r.body);
    let r = get(addr, "/v1/messages");
    assert_eq!(
        (r.status, r.json()["type"].clone()),
        (405, json!("error")),
        "{}",
        r.body
    );

    let r = post(
        addr,
        "/v1/messages",
        &json!({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": []}]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("messages[0].content"), "{}", r.body);

    let vocab = bundle().model.config.vocab;
    let r = post(addr, "/detokenize", &json!({"tokens": [vocab - 1]}));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(addr, "/detokenize", &json!({"tokens": [vocab]}));
    assert_eq!(r.status, 400, "{}", r.body);
}

/// `response_format`: `json_object` answers are JSON objects (the demo model babbles without
/// the constraint), with thinking on or off, streamed or not, and on `/v1/completions`;
/// `text` changes nothing; a `json_schema` the engine cannot enforce is refused with a 400
/// naming the field.
#[test]
fn response_format_json_object_text_and_schema() {
    let server = TestServer::start(|_| {});
    let object = |text: &str| {
        serde_json::from_str::<serde_json::Map<String, Value>>(text.trim())
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {text:?}"))
    };
    let user = "Describe a cat as JSON.";
    let plain = post(
        server.addr,
        "/v1/chat/completions",
        &chat_body(user, 40, false),
    );
    assert_eq!(plain.status, 200, "{}", plain.body);
    let plain = plain.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        serde_json::from_str::<Value>(plain.trim()).is_err(),
        "{plain:?}"
    );

    for thinking in [false, true] {
        for stream in [false, true] {
            let mut body = chat_body(user, 40, stream);
            body["response_format"] = json!({"type": "json_object"});
            body["chat_template_kwargs"] = json!({"enable_thinking": thinking});
            body["max_reasoning_tokens"] = 6.into();
            let r = post(server.addr, "/v1/chat/completions", &body);
            assert_eq!(r.status, 200, "{}", r.body);
            let content = if stream {
                collect_stream(&r).1
            } else {
                let v = r.json();
                assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            };
            object(&content);
        }
    }

    let mut body = chat_body(user, 40, false);
    body["response_format"] = json!({"type": "text"});
    let r = post(server.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], plain.as_str());

    // A schema the engine cannot enforce is refused, naming why (structured outputs proper
    // are tested in `structured.rs`).
    let mut body = chat_body(user, 40, false);
    body["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "cat",
        "schema": {"type": "string", "pattern": "(?<=a)b"}}});
    let r = post(server.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(
        v["error"]["param"], "response_format.json_schema.schema",
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("look-"),
        "{v}"
    );

    let r = post(
        server.addr,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "A cat:", "max_tokens": 30, "temperature": 0.0,
                "response_format": {"type": "json_object"}}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    object(v["choices"][0]["text"].as_str().unwrap());
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
}
