//! Structured outputs through the server (issue 16): 200 requests with random JSON Schemas
//! (seeded; chat `response_format: json_schema` and Responses `text.format`, streaming and
//! not), sampled at temperature 1 from the random-weight demo model with the real 248K
//! vocabulary. Every answer must be complete and valid against its schema, as checked by the
//! testkit's validator (written from the specification, independent of llguidance).

mod common;

use common::http::{post, post_json_sse};
use common::{MODEL, TestServer};
use qinfer_testkit::Rng;
use qinfer_testkit::schema::{max_chars, random_schema, validate};
use serde_json::{Value, json};

/// The answer text and whether it ended on its own (not cut by the budget).
fn answer(addr: std::net::SocketAddr, route: usize, schema: &Value, seed: u64) -> (String, bool) {
    let budget = max_chars(schema) + 8;
    let stream = route % 2 == 1;
    if route < 2 {
        let body = json!({"model": MODEL, "max_tokens": budget, "temperature": 1.0, "top_p": 1.0,
            "top_k": -1, "seed": seed, "stream": stream,
            "chat_template_kwargs": {"enable_thinking": false},
            "messages": [{"role": "user", "content": "Answer in JSON."}],
            "response_format": {"type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema, "strict": true}}});
        if stream {
            let (text, done) = post_json_sse(addr, "/v1/chat/completions", &body, |e| {
                let c = &e["choices"][0];
                (
                    c["delta"]["content"].as_str().unwrap_or("").to_string(),
                    c["finish_reason"].as_str().map(str::to_string),
                )
            });
            (text, done.as_deref() == Some("stop"))
        } else {
            let r = post(addr, "/v1/chat/completions", &body);
            assert_eq!(r.status, 200, "{}", r.body);
            let c = &r.json()["choices"][0];
            (
                c["message"]["content"].as_str().unwrap_or("").to_string(),
                c["finish_reason"] == "stop",
            )
        }
    } else {
        let body = json!({"model": MODEL, "max_output_tokens": budget, "temperature": 1.0,
            "top_p": 1.0, "seed": seed, "stream": stream, "store": false,
            "reasoning": {"effort": "none"}, "input": "Answer in JSON.",
            "text": {"format": {"type": "json_schema", "name": "answer", "schema": schema,
                "strict": true}}});
        if stream {
            let (text, status) = post_json_sse(addr, "/v1/responses", &body, |e| {
                let delta = match e["type"].as_str() {
                    Some("response.output_text.delta") => e["delta"].as_str().unwrap_or(""),
                    _ => "",
                };
                (
                    delta.to_string(),
                    e["response"]["status"].as_str().map(str::to_string),
                )
            });
            (text, status.as_deref() == Some("completed"))
        } else {
            let r = post(addr, "/v1/responses", &body);
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            let text = v["output"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["type"] == "message")
                .map(|i| i["content"][0]["text"].as_str().unwrap_or("").to_string())
                .collect();
            (text, v["status"] == "completed")
        }
    }
}

#[test]
fn two_hundred_random_schemas_are_followed() {
    let server = TestServer::start(|_| {});
    let mut rng = Rng(0x005c_4e3a);
    for i in 0..200u64 {
        let schema = random_schema(&mut rng, 3);
        let route = (i % 4) as usize;
        let (text, complete) = answer(server.addr, route, &schema, i);
        assert!(
            complete,
            "{i} (route {route}): cut off: {text:?} for {schema}"
        );
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{i} (route {route}): not JSON ({e}): {text:?} for {schema}")
        });
        validate(&schema, &v).unwrap_or_else(|e| panic!("{i} (route {route}): {e} for {schema}"));
    }
}

/// Strict tools (`strict: true` on an Anthropic tool, `function.strict: true` in chat): a
/// required call's arguments follow the tool's schema on every one of 16 random schemas —
/// raw-text strings within their bounds, enums, JSON for the rest — and with parallel calls
/// off the answer ends after the call.
#[test]
fn strict_tool_calls_follow_their_schemas() {
    let server = TestServer::start(|_| {});
    let mut rng = Rng(0x7001);
    for i in 0..16u64 {
        let schema = random_schema(&mut rng, 2);
        let props = schema["properties"].as_object().unwrap().len();
        let budget = max_chars(&schema) + 24 * props + 48;
        let input = if i % 2 == 0 {
            let body = json!({"model": MODEL, "max_tokens": budget, "temperature": 1.0, "seed": i,
                "tools": [{"name": "act", "description": "Act", "input_schema": schema, "strict": true}],
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "messages": [{"role": "user", "content": "Act."}]});
            let r = post(server.addr, "/v1/messages", &body);
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            assert_eq!(v["stop_reason"], "tool_use", "{i}: {v}");
            let uses: Vec<&Value> = v["content"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .collect();
            assert_eq!(uses.len(), 1, "{i}: {v}");
            uses[0]["input"].clone()
        } else {
            let body = json!({"model": MODEL, "max_tokens": budget, "temperature": 1.0, "seed": i,
                "chat_template_kwargs": {"enable_thinking": false},
                "tools": [{"type": "function", "function": {"name": "act", "parameters": schema,
                    "strict": true}}],
                "tool_choice": "required", "parallel_tool_calls": false,
                "messages": [{"role": "user", "content": "Act."}]});
            let r = post(server.addr, "/v1/chat/completions", &body);
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            let c = &v["choices"][0];
            assert_eq!(c["finish_reason"], "tool_calls", "{i}: {v}");
            let args = c["message"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap();
            serde_json::from_str(args).unwrap()
        };
        validate(&schema, &input).unwrap_or_else(|e| panic!("{i}: {e} for {schema}"));
    }
    // A strict tool whose schema cannot be enforced is a 400 naming `tools`.
    let r = post(
        server.addr,
        "/v1/chat/completions",
        &json!({"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "strict": true,
                "parameters": {"type": "object", "properties": {
                    "a": {"type": "array", "items": {"type": "string", "pattern": "(?<=x)"}}}}}}]}),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "tools");
}
