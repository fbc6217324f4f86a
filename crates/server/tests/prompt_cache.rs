//! The prompt cache through the server (demo model, greedy, real HTTP): multi-turn
//! conversations process only their new tokens and answer exactly as with the cache off;
//! concurrent conversations sharing a system prompt store its blocks once; a tiny budget
//! only costs misses; misses are named in a header; the cache survives a restart.

mod common;

use std::net::SocketAddr;

use common::http::{get, metric, post};
use common::{MODEL, TestServer, bundle, gpu_bundle};
use qinfer_engine::prompt_cache::CacheOptions;
use serde_json::{Value, json};

fn cache_opts(budget_bytes: usize, snapshot_every: usize) -> Option<CacheOptions> {
    Some(CacheOptions {
        budget_bytes,
        snapshot_every: Some(snapshot_every),
        dir: None,
    })
}

fn system_prompt() -> String {
    let mut s = String::from("You are a careful coding agent.\n");
    for i in 0..30 {
        s.push_str(&format!(
            "Rule {i}: quote file paths exactly and keep answers short.\n"
        ));
    }
    s
}

/// One chat turn, greedy; returns the response JSON and its headers' cache fields.
fn chat(
    addr: SocketAddr,
    messages: &[Value],
    kwargs: Value,
    max_tokens: usize,
) -> (Value, Option<String>) {
    let body = json!({
        "model": MODEL,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "presence_penalty": 0.0,
        "repetition_penalty": 1.0,
        "chat_template_kwargs": kwargs,
    });
    let resp = post(addr, "/v1/chat/completions", &body);
    assert_eq!(resp.status, 200, "{}", resp.body);
    let miss = resp.header("x-qinfer-cache-miss").map(str::to_string);
    let v = resp.json();
    let header = resp
        .header("x-qinfer-cached-tokens")
        .map(|s| s.parse::<u64>().unwrap());
    assert_eq!(
        header.unwrap_or(0),
        v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        "header and usage agree"
    );
    (v, miss)
}

fn processed(addr: SocketAddr) -> f64 {
    metric(
        &get(addr, "/metrics").body,
        "qinfer_processed_prompt_tokens_total",
    )
}

fn assistant(v: &Value) -> Value {
    let m = &v["choices"][0]["message"];
    json!({"role": "assistant", "content": m["content"], "reasoning_content": m["reasoning_content"]})
}

fn usage(v: &Value, field: &str) -> u64 {
    match field {
        "cached" => v["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap(),
        f => v["usage"][f].as_u64().unwrap(),
    }
}

/// One raw completion (greedy); returns the response JSON and the miss header.
fn complete(addr: SocketAddr, prompt: &str, max_tokens: usize) -> (Value, Option<String>) {
    let body = json!({
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "presence_penalty": 0.0,
        "repetition_penalty": 1.0,
    });
    let resp = post(addr, "/v1/completions", &body);
    assert_eq!(resp.status, 200, "{}", resp.body);
    (
        resp.json(),
        resp.header("x-qinfer-cache-miss").map(str::to_string),
    )
}

/// Acceptance: a 10-turn conversation through the server. The client keeps the ChatML
/// history itself (`/v1/completions`), so each prompt is exactly the last one + the answer +
/// the next message, as a chat template with `preserve_thinking` renders it for a trained
/// model. From turn 2 on each prompt is served from the cache up to the end of the previous
/// answer (`cached_tokens` = previous prompt + completion), the processed-token counter grows
/// by the new tokens only, and every answer equals the one a server without the cache gives.
#[test]
fn ten_turns_process_only_new_tokens_and_match_the_uncached_server() {
    ten_turns(bundle());
}

/// The same with the model on the GPU backend: snapshots of device state go to host RAM and
/// back through the cache unchanged.
#[test]
fn ten_turns_on_the_gpu_backend_process_only_new_tokens() {
    let Some(b) = gpu_bundle() else { return };
    ten_turns(b);
}

fn ten_turns(bundle: std::sync::Arc<qinfer_engine::generate::ModelBundle>) {
    let on = TestServer::start_with(bundle.clone(), |c| c.prompt_cache = cache_opts(1 << 30, 64));
    let off = TestServer::start_with(bundle, |c| c.prompt_cache = None);
    let mut prompt = format!("<|im_start|>system\n{}<|im_end|>\n", system_prompt());
    let mut held = 0;
    let mut computed_total = 0.0;
    for turn in 0..10 {
        prompt.push_str(&format!(
            "<|im_start|>user\nStep {turn}: run the tests again.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        ));
        let before = processed(on.addr);
        let (a, miss) = complete(on.addr, &prompt, 8);
        let (b, _) = complete(off.addr, &prompt, 8);
        let text = a["choices"][0]["text"].as_str().unwrap().to_string();
        assert_eq!(
            text,
            b["choices"][0]["text"].as_str().unwrap(),
            "turn {turn}"
        );
        assert_eq!(usage(&b, "cached"), 0);
        let (tokens, cached) = (usage(&a, "prompt_tokens"), usage(&a, "cached"));
        let computed = processed(on.addr) - before;
        assert_eq!(computed as u64, tokens - cached, "turn {turn}: the counter");
        if turn > 0 {
            assert_eq!(
                cached, held,
                "turn {turn}: resumed at the previous answer's end"
            );
            assert_eq!(miss, None, "turn {turn}");
            computed_total += computed;
        }
        // An answer cut at max_tokens never fed its last token: the next turn computes it.
        let cut = a["choices"][0]["finish_reason"] == "length";
        held = tokens + usage(&a, "completion_tokens") - u64::from(cut);
        prompt.push_str(&text);
        prompt.push_str("<|im_end|>\n");
    }
    let m = get(on.addr, "/metrics").body;
    assert_eq!(metric(&m, "qinfer_prompt_cache_hits_total"), 9.0);
    assert_eq!(
        metric(&m, "qinfer_prompt_cache_misses_total"),
        1.0,
        "the cold first turn"
    );
    assert!(
        computed_total < 9.0 * 40.0,
        "turns 2-10 computed {computed_total} tokens"
    );
}

/// Through `/v1/chat/completions` the template trims each past answer (leading and trailing
/// whitespace). Where an answer started with whitespace, the history departs right where
/// that answer began: the header names the position, the turn resumes from the last prompt's
/// end. Where it did not, the whole answer is reused. Either way the answers equal those of
/// a server without the cache.
#[test]
fn a_trimmed_answer_is_named_and_costs_only_the_answer() {
    let on = TestServer::start(|c| c.prompt_cache = cache_opts(1 << 30, 64));
    let off = TestServer::start(|c| c.prompt_cache = None);
    let kwargs = json!({"preserve_thinking": true, "enable_thinking": false});
    let mut messages = vec![
        json!({"role": "system", "content": system_prompt()}),
        json!({"role": "user", "content": "Run the tests."}),
    ];
    let (mut last_prompt, mut last_held, mut trimmed) = (0, 0, false);
    for turn in 0..3 {
        let (a, miss) = chat(on.addr, &messages, kwargs.clone(), 8);
        let (b, _) = chat(off.addr, &messages, kwargs.clone(), 8);
        assert_eq!(
            a["choices"][0]["message"], b["choices"][0]["message"],
            "turn {turn}"
        );
        if turn > 0 && trimmed {
            assert_eq!(usage(&a, "cached"), last_prompt, "turn {turn}");
            assert_eq!(
                miss.as_deref(),
                Some(format!("first differing token at position {last_prompt}").as_str())
            );
        } else if turn > 0 {
            assert_eq!(usage(&a, "cached"), last_held, "turn {turn}");
        }
        let content = a["choices"][0]["message"]["content"].as_str().unwrap_or("");
        trimmed = content.starts_with(char::is_whitespace);
        let cut = a["choices"][0]["finish_reason"] == "length";
        last_prompt = usage(&a, "prompt_tokens");
        last_held = last_prompt + usage(&a, "completion_tokens") - u64::from(cut);
        messages.push(assistant(&a));
        messages.push(json!({"role": "user", "content": format!("Again {turn}.")}));
    }
}

/// Acceptance: two conversations sharing a long system prompt, run concurrently, store its
/// KV blocks once; a third resumes from them.
#[test]
fn concurrent_conversations_share_the_system_prompt_blocks() {
    let kwargs = json!({"preserve_thinking": true});
    let conv = |user: &str| {
        vec![
            json!({"role": "system", "content": system_prompt()}),
            json!({"role": "user", "content": user}),
        ]
    };
    let alone = |user: &str| {
        let s = TestServer::start(|c| c.prompt_cache = cache_opts(1 << 30, 64));
        chat(s.addr, &conv(user), kwargs.clone(), 4);
        metric(&get(s.addr, "/metrics").body, "qinfer_prompt_cache_bytes")
    };
    let (a, b) = (
        alone("Summarise README.md."),
        alone("Find the bug in main.rs."),
    );

    let s = TestServer::start(|c| c.prompt_cache = cache_opts(1 << 30, 64));
    let addr = s.addr;
    let k = kwargs.clone();
    let t1 = std::thread::spawn({
        let (m, k) = (conv("Summarise README.md."), k.clone());
        move || chat(addr, &m, k, 4)
    });
    let t2 = std::thread::spawn({
        let (m, k) = (conv("Find the bug in main.rs."), k);
        move || chat(addr, &m, k, 4)
    });
    let (r1, r2) = (t1.join().unwrap().0, t2.join().unwrap().0);
    let together = metric(&get(addr, "/metrics").body, "qinfer_prompt_cache_bytes");
    // The shared prefix: the system prompt's whole 64-token blocks.
    let bundle = common::bundle();
    let text = |m: &[Value]| {
        bundle
            .template()
            .unwrap()
            .render(&qinfer_engine::template::RenderRequest {
                messages: &Value::Array(m.to_vec()),
                tools: None,
                add_generation_prompt: true,
                kwargs: kwargs.as_object().unwrap(),
            })
            .unwrap()
    };
    let (pa, pb) = (
        bundle
            .tokenizer
            .encode(&text(&conv("Summarise README.md.")))
            .unwrap(),
        bundle
            .tokenizer
            .encode(&text(&conv("Find the bug in main.rs.")))
            .unwrap(),
    );
    let parted = pa.iter().zip(&pb).take_while(|(x, y)| x == y).count();
    let c = &bundle.model.config;
    let block_bytes = 2 * 64 * c.attention.n_kv_heads * c.attention.head_dim * 4;
    let n_attention = c
        .layers
        .iter()
        .filter(|k| matches!(k, qinfer_model::LayerKind::Attention))
        .count();
    let shared = (parted / 64 * block_bytes * n_attention) as f64;
    assert!(shared > 0.0);
    assert!(
        together <= a + b - shared,
        "counted once: {together} vs {a} + {b} - {shared}"
    );
    // Whichever was admitted second may already resume from the other's first snapshots.
    for r in [&r1, &r2] {
        assert!(usage(r, "cached") <= parted as u64);
    }
    // A third conversation with the same system prompt resumes at its last shared boundary.
    let (r3, miss) = chat(addr, &conv("List the crates."), kwargs, 4);
    assert_eq!(usage(&r3, "cached"), (parted / 64 * 64) as u64);
    assert!(miss.is_some_and(|m| m.starts_with("first differing token at position")));
}

/// Acceptance: under a budget of a fraction of one conversation, eviction only costs misses.
#[test]
fn a_tiny_budget_keeps_answers_right() {
    let probe = TestServer::start(|c| c.prompt_cache = cache_opts(1 << 30, 64));
    let kwargs = json!({"preserve_thinking": true, "enable_thinking": false});
    let first = vec![
        json!({"role": "system", "content": system_prompt()}),
        json!({"role": "user", "content": "Hello."}),
    ];
    chat(probe.addr, &first, kwargs.clone(), 6);
    let one = metric(
        &get(probe.addr, "/metrics").body,
        "qinfer_prompt_cache_bytes",
    ) as usize;

    let small = TestServer::start(|c| c.prompt_cache = cache_opts(one / 3, 64));
    let off = TestServer::start(|c| c.prompt_cache = None);
    let mut messages = first;
    for turn in 0..4 {
        let (a, _) = chat(small.addr, &messages, kwargs.clone(), 6);
        let (b, _) = chat(off.addr, &messages, kwargs.clone(), 6);
        assert_eq!(
            a["choices"][0]["message"], b["choices"][0]["message"],
            "turn {turn}"
        );
        messages.push(assistant(&a));
        messages.push(json!({"role": "user", "content": format!("Next {turn}.")}));
    }
    let m = get(small.addr, "/metrics").body;
    assert!(metric(&m, "qinfer_prompt_cache_evictions_total") > 0.0);
    assert!(metric(&m, "qinfer_prompt_cache_bytes") as usize <= one / 3);
}

/// Without `preserve_thinking` the next user message drops the last reasoning: the response
/// header names the first differing token.
#[test]
fn a_dropped_reasoning_is_named_in_the_miss_header() {
    let s = TestServer::start(|c| c.prompt_cache = cache_opts(1 << 30, 1 << 20));
    let mut messages = vec![
        json!({"role": "system", "content": system_prompt()}),
        json!({"role": "user", "content": "Which file is largest?"}),
    ];
    let (a, miss) = chat(s.addr, &messages, json!({}), 6);
    assert_eq!(miss.as_deref(), Some("no cached prefix"));
    let prompt1 = usage(&a, "prompt_tokens");
    messages.push(assistant(&a));
    messages.push(json!({"role": "user", "content": "And the smallest?"}));
    let (b, miss) = chat(s.addr, &messages, json!({}), 4);
    let miss = miss.expect("a miss");
    let at: u64 = miss
        .strip_prefix("first differing token at position ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{miss}"));
    assert!(
        at < prompt1 && at + 4 > prompt1,
        "departs at the old `<think>`: {at} of {prompt1}"
    );
    assert_eq!(usage(&b, "cached"), (prompt1 - 2) / 64 * 64);
}

/// `--cache-dir`: a restarted server resumes the conversation from disk.
#[test]
fn the_cache_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || {
        Some(CacheOptions {
            budget_bytes: 1 << 30,
            snapshot_every: None,
            dir: Some(dir.path().to_path_buf()),
        })
    };
    let mut prompt =
        "<|im_start|>user\nRemember me.<|im_end|>\n<|im_start|>assistant\n".to_string();
    let s = TestServer::start(|c| c.prompt_cache = opts());
    let (a, _) = complete(s.addr, &prompt, 6);
    s.shutdown();
    prompt.push_str(a["choices"][0]["text"].as_str().unwrap());
    prompt.push_str("<|im_end|>\n<|im_start|>user\nStill there?<|im_end|>\n");
    let s = TestServer::start(|c| c.prompt_cache = opts());
    let (b, miss) = complete(s.addr, &prompt, 4);
    let cut = a["choices"][0]["finish_reason"] == "length";
    assert_eq!(
        usage(&b, "cached"),
        usage(&a, "prompt_tokens") + usage(&a, "completion_tokens") - u64::from(cut)
    );
    assert_eq!(miss, None);
}
