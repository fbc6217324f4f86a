//! Fuzzing request bodies with a fixed budget, run by the test suite (hardening): valid bodies
//! of every route, each with one value replaced by an extreme or ill-typed one, a key dropped
//! or an unknown key added, must get an answer below 500 — a clear 4xx, or a normal reply when
//! the change is harmless — and the server must keep serving. Mutations are deterministic, so a
//! failure names the iteration that reproduces it.

mod common;

use common::http::{get, metric, post};
use common::{MODEL, TestServer};
use qinfer_testkit::Rng;
use serde_json::{Value, json};

fn seeds() -> Vec<(&'static str, Value)> {
    let tool = json!({"type": "function", "function": {"name": "get_weather",
        "description": "Weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}});
    vec![
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "seed": 1,
                "stop": ["\n\n"], "logprobs": true, "top_logprobs": 2,
                "messages": [{"role": "system", "content": "Be brief."},
                    {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}],
                "tools": [tool], "tool_choice": "auto",
                "chat_template_kwargs": {"enable_thinking": false}}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "max_tokens": 3, "stream": true,
                "stream_options": {"include_usage": true},
                "response_format": {"type": "json_object"},
                "messages": [{"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "", "reasoning_content": "hm",
                     "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]}),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Once upon", "max_tokens": 3, "temperature": 0,
                "stop": "x", "stream": false}),
        ),
        (
            "/v1/messages",
            json!({"model": MODEL, "max_tokens": 3, "system": "Be brief.",
                "thinking": {"type": "enabled", "budget_tokens": 2},
                "stop_sequences": ["END"], "tools": [{"name": "get_weather",
                    "description": "Weather", "input_schema": {"type": "object",
                    "properties": {"city": {"type": "string"}}}}],
                "tool_choice": {"type": "auto"},
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1",
                        "name": "get_weather", "input": {"city": "Rome"}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                        "content": "rain"}]}]}),
        ),
        (
            "/v1/messages/count_tokens",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": MODEL, "instructions": "Be brief.", "max_output_tokens": 3,
                "stream": true, "store": false, "include": ["reasoning.encrypted_content"],
                "reasoning": {"effort": "low", "summary": "auto"}, "parallel_tool_calls": false,
                "tools": [{"type": "function", "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
                    {"type": "web_search"}],
                "tool_choice": "auto", "text": {"format": {"type": "text"}},
                "input": [{"type": "message", "role": "developer",
                        "content": [{"type": "input_text", "text": "Sandbox."}]},
                    {"role": "user", "content": "Weather?"},
                    {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}]},
                    {"type": "function_call", "call_id": "c1", "name": "get_weather",
                        "arguments": "{\"city\":\"Oslo\"}"},
                    {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]}),
        ),
        ("/tokenize", json!({"prompt": "Hello world"})),
        (
            "/tokenize",
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/detokenize", json!({"tokens": [9707, 1879]})),
    ]
}

fn replacement(rng: &mut Rng) -> Value {
    match rng.below(16) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(u64::MAX),
        3 => json!(i64::MIN),
        4 => json!(1e308),
        5 => json!(-0.0),
        6 => json!(0.5),
        7 => json!(""),
        8 => json!("x".repeat(70_000)),
        9 => json!(null),
        10 => json!(true),
        11 => json!([]),
        12 => json!({}),
        13 => json!([null, {}, "\u{0}\u{ffff}"]),
        14 => {
            // Deep nesting.
            let mut v = json!(1);
            for _ in 0..200 {
                v = json!([v]);
            }
            v
        }
        _ => json!("\u{fffd}<|im_end|><think></tool_call>"),
    }
}

/// Every path to a value of the tree (containers included).
fn paths(v: &Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let mut p = path.clone();
                p.push(k.clone());
                paths(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let mut p = path.clone();
                p.push(i.to_string());
                paths(x, p, out);
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, k| match v {
        Value::Object(m) => m.get_mut(k).unwrap(),
        Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
        _ => unreachable!(),
    })
}

/// One random change: a value replaced, a key dropped, or an unknown key added.
fn mutate(rng: &mut Rng, body: &mut Value) {
    let mut all = Vec::new();
    paths(body, Vec::new(), &mut all);
    let path = all[rng.below(all.len())].clone();
    match rng.below(4) {
        0 if !path.is_empty() => {
            let (last, parent) = path.split_last().unwrap();
            match at(body, parent) {
                Value::Object(m) => {
                    m.remove(last);
                }
                Value::Array(a) => {
                    a.remove(last.parse::<usize>().unwrap());
                }
                _ => {}
            }
        }
        1 => {
            if let Value::Object(m) = at(body, &path) {
                m.insert("unknown_field".into(), replacement(rng));
            }
        }
        _ => *at(body, &path) = replacement(rng),
    }
}

#[test]
fn mutated_request_bodies_get_clear_answers() {
    // A small context bounds what a body without `max_tokens` generates.
    let server = TestServer::start(|c| c.ctx = 400);
    let addr = server.addr;
    let seeds = seeds();
    for (route, body) in &seeds {
        let r = post(addr, route, body);
        assert_eq!(r.status, 200, "seed for {route}: {}", r.body);
    }
    let mut rng = Rng(0x6874_7470);
    for i in 0..500 {
        let (route, seed) = &seeds[rng.below(seeds.len())];
        let mut body = seed.clone();
        for _ in 0..1 + rng.below(2) {
            mutate(&mut rng, &mut body);
        }
        let r = post(addr, route, &body);
        assert!(
            (200..500).contains(&r.status),
            "iteration {i}: {route} answered {} to {body}: {}",
            r.status,
            r.body
        );
    }
    assert_eq!(get(addr, "/health").status, 200);
    let m = get(addr, "/metrics").body;
    assert_eq!(metric(&m, "qinfer_http_requests_total{class=\"5xx\"}"), 0.0);
}
