//! The OpenAI Responses API (`/v1/responses`, what Codex speaks) over real HTTP with the
//! demo model: it answers as the chat route does for the same conversation, a Codex-shaped
//! conversation (instructions, developer message, hosted tool types, encrypted reasoning sent
//! back, `store: false`) hits the prompt cache exactly as the same conversation through chat
//! does, stored responses continue with `previous_response_id`, and every bad field is a 4xx
//! naming it. The event sequence and item mapping of parsed output (reasoning, calls) are
//! checked on synthetic engine output in `src/responses.rs`; the SDK test parses real streams.

mod common;

use common::http::{self, get, metric, post};
use common::{MODEL, TestServer};
use serde_json::{Value, json};

fn greedy(body: &mut Value) {
    body["temperature"] = 0.0.into();
    body["presence_penalty"] = 0.0.into();
    body["frequency_penalty"] = 0.0.into();
    body["repetition_penalty"] = 1.0.into();
}

fn instructions() -> String {
    let mut s = String::from("You are Codex, a coding agent.\n");
    for i in 0..30 {
        s.push_str(&format!("Rule {i}: run the tests before you answer.\n"));
    }
    s
}

/// Greedy output of the Responses route equals the chat route's for the same conversation
/// (one rendering, one engine), streaming or not, with usage in the Responses shape.
#[test]
fn a_response_answers_as_chat_does() {
    let server = TestServer::start(|_| {});
    let addr = server.addr;
    let mut chat = json!({"model": MODEL, "max_tokens": 12,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Write a haiku."}]});
    greedy(&mut chat);
    let c = post(addr, "/v1/chat/completions", &chat).json();
    let msg = &c["choices"][0]["message"];

    let mut body = json!({"model": MODEL, "max_output_tokens": 12, "instructions": "Be brief.",
                          "input": "Write a haiku.", "store": false});
    greedy(&mut body);
    let r = post(addr, "/v1/responses", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(v["usage"]["output_tokens"], 12);
    assert_eq!(
        v["usage"]["input_tokens"], c["usage"]["prompt_tokens"],
        "the same prompt"
    );
    let items = v["output"].as_array().unwrap();
    let text_of = |kind: &str| -> String {
        items
            .iter()
            .filter(|i| i["type"] == kind)
            .map(|i| match kind {
                "reasoning" => i["content"][0]["text"].as_str().unwrap().to_string(),
                _ => i["content"][0]["text"].as_str().unwrap().to_string(),
            })
            .collect()
    };
    assert_eq!(
        text_of("reasoning"),
        msg["reasoning_content"].as_str().unwrap_or("")
    );
    assert_eq!(text_of("message"), msg["content"].as_str().unwrap_or(""));

    // Streaming: the deltas add up to the same text, events are numbered from 0, the last
    // event carries the whole response.
    body["stream"] = true.into();
    let r = post(addr, "/v1/responses", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.sse();
    let (mut reasoning, mut content) = (String::new(), String::new());
    for (i, (name, data)) in events.iter().enumerate() {
        let e: Value = serde_json::from_str(data).unwrap();
        assert_eq!(e["type"], name.as_deref().unwrap());
        assert_eq!(e["sequence_number"], i, "{data}");
        match name.as_deref().unwrap() {
            "response.reasoning_text.delta" => reasoning.push_str(e["delta"].as_str().unwrap()),
            "response.output_text.delta" => content.push_str(e["delta"].as_str().unwrap()),
            _ => {}
        }
    }
    assert_eq!(events[0].0.as_deref(), Some("response.created"));
    assert_eq!(
        events.last().unwrap().0.as_deref(),
        Some("response.incomplete")
    );
    assert_eq!(reasoning, text_of("reasoning"));
    assert_eq!(content, text_of("message"));
}

/// Output items of a response as the next request's input, the way Codex sends them back
/// with `store: false` (reasoning with its `encrypted_content`).
fn output_as_input(v: &Value) -> Vec<Value> {
    v["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let mut item = item.clone();
            if item["type"] == "message" {
                item["content"][0]["type"] = "output_text".into();
            }
            item
        })
        .collect()
}

/// A Codex-shaped conversation: `instructions`, a `developer` message, function tools beside
/// hosted ones (not offered), reasoning sent back encrypted, `store: false`. From turn 2 on it
/// hits the prompt cache exactly as the same conversation through the chat route does (the
/// same prompt, the same cached tokens), and more than the last block of turn 1's prompt.
#[test]
fn a_codex_turn_hits_the_cache_as_a_chat_turn_does() {
    let tools = json!([
        {"type": "function", "name": "shell", "description": "Run a command",
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}},
         "strict": false},
        {"type": "web_search"},
        {"type": "namespace", "name": "mcp"},
    ]);
    let chat_tools = json!([{"type": "function", "function": {"name": "shell", "description": "Run a command",
        "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}}}}]);
    let developer = "Sandbox: workspace-write.";
    let turns = ["List the files.", "Now run the tests."];

    // Through /v1/responses.
    let server = TestServer::start(|_| {});
    let mut input: Vec<Value> = vec![
        json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": developer}]}),
    ];
    let mut via_responses = Vec::new();
    for turn in turns {
        input.push(json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": turn}]}));
        let mut body = json!({
            "model": "gpt-5-codex", "instructions": instructions(), "input": input,
            "tools": tools, "tool_choice": "auto", "parallel_tool_calls": false,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "include": ["reasoning.encrypted_content"], "store": false, "stream": true,
            "prompt_cache_key": "conversation-1", "max_output_tokens": 10,
        });
        greedy(&mut body);
        let r = post(server.addr, "/v1/responses", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let (_, last) = r.sse().pop().unwrap();
        let done: Value = serde_json::from_str(&last).unwrap();
        let response = &done["response"];
        assert_eq!(response["model"], MODEL);
        let reasoning = response["output"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["type"] == "reasoning")
            .cloned()
            .expect("a reasoning item");
        assert!(reasoning["encrypted_content"].is_string(), "{reasoning}");
        assert!(!reasoning["summary"].as_array().unwrap().is_empty());
        via_responses.push((
            response["usage"]["input_tokens"].as_u64().unwrap(),
            response["usage"]["input_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        ));
        input.extend(output_as_input(response));
    }

    // The same conversation through /v1/chat/completions, on a fresh server.
    let server = TestServer::start(|_| {});
    let mut messages = vec![
        json!({"role": "system", "content": instructions()}),
        json!({"role": "system", "content": developer}),
    ];
    let mut via_chat = Vec::new();
    for turn in turns {
        messages.push(json!({"role": "user", "content": turn}));
        let mut body = json!({"model": MODEL, "messages": messages, "tools": chat_tools,
                              "max_tokens": 10, "max_reasoning_tokens": 4096});
        greedy(&mut body);
        let r = post(server.addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        via_chat.push((
            v["usage"]["prompt_tokens"].as_u64().unwrap(),
            v["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        ));
        let m = &v["choices"][0]["message"];
        messages.push(json!({"role": "assistant", "content": m["content"],
                             "reasoning_content": m["reasoning_content"]}));
    }
    assert_eq!(via_responses, via_chat, "(prompt, cached) per turn");
    let (prompt1, cached2) = (via_responses[0].0, via_responses[1].1);
    assert!(
        cached2 >= (prompt1 - 2) / 64 * 64 && cached2 > 0,
        "{via_responses:?}"
    );
}

/// Stored responses: `GET` returns one, `previous_response_id` continues its conversation
/// (the history is in the prompt and served from the cache), `DELETE` removes it.
#[test]
fn stored_responses_continue_and_can_be_deleted() {
    let server = TestServer::start(|_| {});
    let addr = server.addr;
    let mut body = json!({"model": MODEL, "instructions": instructions(),
                          "input": "What is in src/?", "max_output_tokens": 6});
    greedy(&mut body);
    let first = post(addr, "/v1/responses", &body).json();
    let id = first["id"].as_str().unwrap().to_string();
    let stored = get(addr, &format!("/v1/responses/{id}"));
    assert_eq!(stored.status, 200);
    assert_eq!(stored.json()["output"], first["output"]);

    let next = json!({"model": MODEL, "previous_response_id": id, "instructions": instructions(),
                      "input": "And in tests/?", "max_output_tokens": 4, "temperature": 0});
    let r = post(addr, "/v1/responses", &next);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let (p1, p2) = (
        first["usage"]["input_tokens"].as_u64().unwrap(),
        v["usage"]["input_tokens"].as_u64().unwrap(),
    );
    assert!(p2 > p1 + 6, "the history is in the prompt: {p1} → {p2}");
    assert!(
        v["usage"]["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(v["previous_response_id"], id);

    let del = http::request(addr, "DELETE", &format!("/v1/responses/{id}"), &[], b"");
    assert_eq!(del.status, 200);
    assert_eq!(del.json()["deleted"], true);
    let again = http::request(addr, "DELETE", &format!("/v1/responses/{id}"), &[], b"");
    assert_eq!(again.status, 404);
    let r = post(addr, "/v1/responses", &next);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["param"], "previous_response_id");
    // `store: false` keeps nothing.
    body["store"] = false.into();
    let unstored = post(addr, "/v1/responses", &body).json();
    let r = get(
        addr,
        &format!("/v1/responses/{}", unstored["id"].as_str().unwrap()),
    );
    assert_eq!(r.status, 404);
}

/// Every bad field of the route is a 4xx in OpenAI's error shape naming it; no 5xx.
#[test]
fn bad_responses_requests_are_named_4xx() {
    let server = TestServer::start(|c| c.ctx = 2048);
    let addr = server.addr;
    let base = json!({"model": MODEL, "input": "hi", "max_output_tokens": 4});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        if v.is_null() {
            b.as_object_mut().unwrap().remove(k);
        } else {
            b[k] = v;
        }
        post(addr, "/v1/responses", &b)
    };
    let cases = [
        ("input", Value::Null, "input"),
        ("input", json!(7), "input"),
        (
            "input",
            json!([{"type": "item_reference", "id": "x"}]),
            "input[0].type",
        ),
        (
            "input",
            json!([{"type": "message", "role": "wizard", "content": "x"}]),
            "input[0].role",
        ),
        (
            "input",
            json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
            "input[0].content[0].image_url",
        ),
        (
            "input",
            json!([{"type": "function_call", "name": "f", "arguments": "{}"}]),
            "input[0].call_id",
        ),
        (
            "input",
            json!([{"role": "user", "content": "q"}, {"type": "function_call", "name": "f", "call_id": "c", "arguments": "[1]"}]),
            "input[1].arguments",
        ),
        (
            "input",
            json!([{"type": "reasoning", "summary": [], "encrypted_content": "gAAAAB"}]),
            "input[0].encrypted_content",
        ),
        (
            "input",
            json!([{"role": "assistant", "content": "only me"}]),
            "input",
        ),
        ("instructions", json!(5), "instructions"),
        ("max_output_tokens", json!(100000), "max_output_tokens"),
        ("max_output_tokens", json!(-1), "max_output_tokens"),
        (
            "reasoning",
            json!({"effort": "extreme"}),
            "reasoning.effort",
        ),
        (
            "text",
            json!({"format": {"type": "json_schema", "name": "x",
                "schema": {"type": "string", "pattern": "(?<=a)"}}}),
            "text.format.schema",
        ),
        (
            "text",
            json!({"format": {"type": "xml"}}),
            "text.format.type",
        ),
        ("tools", json!([{"type": "function"}]), "tools[0]"),
        (
            "tool_choice",
            json!({"type": "function", "name": "nope"}),
            "tool_choice",
        ),
        ("tool_choice", json!("required"), "tool_choice"),
        (
            "previous_response_id",
            json!("resp_nope"),
            "previous_response_id",
        ),
        ("temperature", json!("hot"), "temperature"),
        ("include", json!(3), "include"),
    ];
    for (field, value, param) in cases {
        let r = with(field, value.clone());
        assert_eq!(r.status, 400, "{field} = {value}: {}", r.body);
        let v = r.json();
        assert_eq!(v["error"]["param"], param, "{field} = {value}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let r = with("max_output_tokens", json!(100000));
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(get(addr, "/v1/responses/resp_nope").status, 404);
    let m = get(addr, "/metrics").body;
    assert_eq!(metric(&m, "qinfer_http_requests_total{class=\"5xx\"}"), 0.0);
}

/// Codex's tool loop within one request of the user: turn 1 answers with a call (scripted:
/// the random model would never write one), turn 2 sends the whole history back — the
/// reasoning item with its `encrypted_content`, the call, its output — with `store: false`.
/// The history re-renders to the tokens the model saw, so turn 2 is served from the prompt
/// cache through turn 1's prompt and answer: only the call's output is computed.
#[test]
fn a_codex_tool_loop_is_served_from_the_cache_through_the_last_answer() {
    let server = TestServer::start(|c| {
        c.scripted_tool_calls = json!({"shell": {"command": ["ls", "-la"]}})
            .as_object()
            .cloned();
    });
    let tools = json!([{"type": "function", "name": "shell", "description": "Run a command",
        "parameters": {"type": "object", "properties": {"command": {"type": "array",
            "items": {"type": "string"}}}, "required": ["command"]}}]);
    let mut input = vec![
        json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: workspace-write."}]}),
        json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]}),
    ];
    let body = |input: &[Value]| {
        json!({"model": MODEL, "instructions": instructions(), "input": input, "tools": tools,
               "include": ["reasoning.encrypted_content"], "store": false,
               "reasoning": {"effort": "medium", "summary": "auto"}, "max_output_tokens": 200})
    };
    let first = post(server.addr, "/v1/responses", &body(&input)).json();
    let call = first["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"] == "function_call")
        .cloned()
        .unwrap_or_else(|| panic!("no call: {first}"));
    assert_eq!(call["name"], "shell");
    input.extend(output_as_input(&first));
    input.push(
        json!({"type": "function_call_output", "call_id": call["call_id"],
                      "output": "Cargo.toml\nsrc\n"}),
    );
    let r2 = post(server.addr, "/v1/responses", &body(&input));
    let miss = r2.header("x-qinfer-cache-miss").map(str::to_string);
    let second = r2.json();
    assert_eq!(second["status"], "completed", "{second}");
    let u1 = &first["usage"];
    let history = u1["input_tokens"].as_u64().unwrap() + u1["output_tokens"].as_u64().unwrap();
    let cached = second["usage"]["input_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert_eq!(
        cached, history,
        "turn 2 cached {cached} of the {history} tokens of turn 1 (miss: {miss:?})"
    );
}
