//! What coding agents send, as they send it (issue 16): any model name their defaults carry,
//! Claude Code's `system` messages inside `messages`, its retry on Anthropic's context-limit
//! wording, the cache usage it reads from `message_start`, and the base-URL probe.

mod common;

use common::http::{self, get, post};
use common::{MODEL, TestServer};
use serde_json::{Value, json};

/// A system prompt of several KV blocks, as agents send (the prompt cache resumes at block
/// boundaries and at the ends of earlier prompts and answers).
fn system_prompt() -> String {
    let mut s = String::from("You are a careful coding agent.\n");
    for i in 0..30 {
        s.push_str(&format!(
            "Rule {i}: quote file paths exactly and keep answers short.\n"
        ));
    }
    s
}

fn anthropic_body(messages: Value, max_tokens: usize) -> Value {
    json!({
        "model": MODEL,
        "max_tokens": max_tokens,
        "temperature": 0,
        "system": system_prompt(),
        "messages": messages,
    })
}

/// A server serves one model: by default it answers to whatever name a client's defaults send
/// (Claude Code's `claude-…`, Codex's `gpt-…`) and reports its own; `--strict-model-name`
/// restores the 404s, and `--served-model-name` takes several names, all listed.
#[test]
fn any_model_name_is_served_unless_strict() {
    let server = TestServer::start(|_| {});
    let addr = server.addr;
    let chat = json!({"model": "gpt-5-codex", "max_tokens": 2,
                      "messages": [{"role": "user", "content": "hi"}]});
    let r = post(addr, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], MODEL);
    let mut msg = anthropic_body(json!([{"role": "user", "content": "hi"}]), 2);
    msg["model"] = "claude-sonnet-4-5-20250929".into();
    let r = post(addr, "/v1/messages", &msg);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], MODEL);
    let r = get(addr, "/v1/models/claude-opus-4-1");
    assert_eq!((r.status, r.json()["id"].clone()), (200, json!(MODEL)));

    let strict = TestServer::start(|c| {
        c.strict_model_name = true;
        c.aliases = vec!["qwen3.6:27b".into()];
    });
    let r = post(strict.addr, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "model");
    assert!(r.body.contains("qwen3.6:27b"), "{}", r.body);
    let r = post(strict.addr, "/v1/messages", &msg);
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["type"], "error");
    let mut aliased = chat.clone();
    aliased["model"] = "qwen3.6:27b".into();
    let r = post(strict.addr, "/v1/chat/completions", &aliased);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["model"], MODEL, "the first name is reported");
    let ids: Vec<Value> = get(strict.addr, "/v1/models").json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!(MODEL), json!("qwen3.6:27b")]);
    assert_eq!(get(strict.addr, "/v1/models/qwen3.6:27b").status, 200);
    assert_eq!(get(strict.addr, "/v1/models/claude-x").status, 404);
}

/// Claude Code puts part of its instructions in a `system` message inside `messages`. The
/// template takes one system message, first: leading ones join the system prompt, later ones
/// render in place as user turns, so a conversation's earlier turns render the same when a
/// later turn adds one, and the prompt cache serves them: turn 2 resumes at the last snapshot
/// of turn 1's prompt (its last block boundary; the template renders the earlier answer
/// without the empty think block the generation prompt had, so that is where they part).
/// Moved to the top, the new system text would change the first tokens and nothing would hit.
#[test]
fn system_messages_inside_messages_render_in_place_and_keep_the_cache() {
    let server = TestServer::start(|_| {});
    let addr = server.addr;
    let turn1 = json!([
        {"role": "user", "content": "List the files."},
        {"role": "system", "content": [{"type": "text", "text": "Skills available: grep, edit."}]},
        {"role": "user", "content": "Start with src/."},
    ]);
    let r = post(addr, "/v1/messages", &anthropic_body(turn1.clone(), 8));
    assert_eq!(r.status, 200, "{}", r.body);
    let first = r.json();
    let prompt1 = first["usage"]["input_tokens"].as_u64().unwrap()
        + first["usage"]["cache_read_input_tokens"].as_u64().unwrap();
    let mut turn2 = turn1.as_array().unwrap().clone();
    turn2.push(json!({"role": "assistant", "content": first["content"].clone()}));
    turn2.push(json!({"role": "user", "content": "Now the tests."}));
    turn2.push(json!({"role": "system", "content": "Reminder: be brief."}));
    let r = post(addr, "/v1/messages", &anthropic_body(json!(turn2), 4));
    assert_eq!(r.status, 200, "{}", r.body);
    let cached = r.json()["usage"]["cache_read_input_tokens"]
        .as_u64()
        .unwrap();
    let block = (prompt1 - 2) / 64 * 64;
    assert!(
        block > 0 && cached >= block,
        "turn 2 cached {cached} of turn 1's {prompt1}"
    );

    // How they render (OpenAI's route places them the same way, `developer` included).
    let rendered = |messages: Value| {
        let r = post(addr, "/tokenize", &json!({"messages": messages}));
        assert_eq!(r.status, 200, "{}", r.body);
        let ids: Vec<u32> = serde_json::from_value(r.json()["tokens"].clone()).unwrap();
        common::bundle().tokenizer.decode(&ids, false).unwrap()
    };
    let text = rendered(json!([
        {"role": "system", "content": "A."},
        {"role": "developer", "content": "B."},
        {"role": "user", "content": "Q1"},
        {"role": "system", "content": "C."},
        {"role": "user", "content": "Q2"},
    ]));
    assert!(
        text.starts_with("<|im_start|>system\nA.\n\nB.<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>user\nC.<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"),
        "{text}"
    );
}

/// Context overflow in each protocol's words: Anthropic's exact sentences, which Claude Code
/// matches to retry with a smaller `max_tokens` ("input length and `max_tokens` exceed
/// context limit: P + M > C") or to compact ("prompt is too long"); OpenAI's
/// `context_length_exceeded` code on its routes.
#[test]
fn context_overflow_speaks_each_protocols_words() {
    let server = TestServer::start(|c| c.ctx = 1024);
    let addr = server.addr;
    let r = post(
        addr,
        "/v1/messages",
        &anthropic_body(json!([{"role": "user", "content": "hi"}]), 32000),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let m = r.json()["error"]["message"].as_str().unwrap().to_string();
    let (p, rest) = m
        .strip_prefix("input length and `max_tokens` exceed context limit: ")
        .and_then(|s| s.split_once(" + "))
        .unwrap_or_else(|| panic!("{m}"));
    let p: usize = p.parse().unwrap();
    assert_eq!(
        rest,
        "32000 > 1024, decrease input length or `max_tokens` and try again"
    );
    assert!(p > 3 && p < 1024, "{m}");
    // The retry Claude Code makes with what the numbers leave.
    let r = post(
        addr,
        "/v1/messages",
        &anthropic_body(json!([{"role": "user", "content": "hi"}]), 1024 - p),
    );
    assert_eq!(r.status, 200, "{}", r.body);

    let long = "word ".repeat(1500);
    let r = post(
        addr,
        "/v1/messages",
        &anthropic_body(json!([{"role": "user", "content": long}]), 8),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let m = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        m.starts_with("prompt is too long: ") && m.ends_with(" tokens > 1023 maximum"),
        "{m}"
    );
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");

    for body in [
        json!({"model": MODEL, "max_tokens": 32000, "messages": [{"role": "user", "content": "hi"}]}),
        json!({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": long}]}),
    ] {
        let r = post(addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(
            r.json()["error"]["code"],
            "context_length_exceeded",
            "{}",
            r.body
        );
    }
    // A mistake that is not about the context has no such code.
    let r = post(
        addr,
        "/v1/chat/completions",
        &json!({"model": MODEL, "temperature": -1, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], Value::Null);
}

/// `message_start` reports the prompt cache's hit as `message_delta` does (Claude Code reads
/// the former).
#[test]
fn message_start_usage_agrees_with_message_delta() {
    let server = TestServer::start(|_| {});
    let mut body = anthropic_body(
        json!([{"role": "user", "content": "Explain the build in detail, step by step."}]),
        4,
    );
    body["stream"] = true.into();
    for turn in 0..2 {
        let r = post(server.addr, "/v1/messages", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let events = r.sse();
        let start: Value = serde_json::from_str(&events[0].1).unwrap();
        let delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
        let (s, d) = (&start["message"]["usage"], &delta["usage"]);
        for key in ["input_tokens", "cache_read_input_tokens"] {
            assert_eq!(s[key], d[key], "turn {turn}: {key}");
        }
        if turn == 1 {
            assert!(s["cache_read_input_tokens"].as_u64().unwrap() > 0, "{s}");
        }
    }
}

/// Clients probe the base URL (`HEAD /`) before their first request; it answers 200, with
/// or without the API key.
#[test]
fn the_base_url_answers() {
    let server = TestServer::start(|c| c.api_key = Some("k".into()));
    let r = http::request(server.addr, "HEAD", "/", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(get(server.addr, "/").status, 200);
    assert_eq!(get(server.addr, "/v1/models").status, 401);
}
