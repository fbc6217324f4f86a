//! Shutdown under hostile clients, in a process of its own: it measures how long shutdown
//! takes, so it shares no CPU with other tests' servers.

mod common;

use std::io::{BufReader, Write};

use common::http;
use common::{MODEL, TestServer};
use serde_json::json;

fn chat_body(user: &str, max_tokens: usize) -> serde_json::Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": user}],
        "max_tokens": max_tokens,
        "stream": true,
        "temperature": 0,
        "ignore_eos": true,
    })
}

/// Hardening: SIGTERM never completed while a client held a half-sent request, and requests cut
/// off at the end of the grace reported a normal finish. Now shutdown completes within the
/// grace plus one second whatever the clients do (a half-sent request, a client that stopped
/// reading), a stream cut off at the end of the grace ends with `finish_reason: "length"`, and
/// the prompt cache is written.
#[test]
fn shutdown_completes_within_the_grace_and_reports_cut_off_requests() {
    let dir = tempfile::tempdir().unwrap();
    let grace = std::time::Duration::from_secs(1);
    let server = TestServer::start(|c| {
        c.shutdown_grace = grace;
        if let Some(p) = c.prompt_cache.as_mut() {
            p.dir = Some(dir.path().to_path_buf());
        }
    });
    let addr = server.addr;
    let long = chat_body("go on", 30000);
    let open_stream = || {
        let s = http::send(
            addr,
            "POST",
            "/v1/chat/completions",
            &[],
            long.to_string().as_bytes(),
        );
        let mut r = BufReader::new(s);
        assert_eq!(http::read_head(&mut r).0, 200);
        assert!(http::read_chunk(&mut r).is_some());
        r
    };
    let mut reading = open_stream();
    let _not_reading = open_stream();
    let mut half = std::net::TcpStream::connect(addr).unwrap();
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-le")
        .unwrap();

    let started = std::time::Instant::now();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = done_tx.send(());
    });
    let mut body = Vec::new();
    while let Some(c) = http::read_chunk(&mut reading) {
        body.extend(c);
    }
    done_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("shutdown completes");
    let took = started.elapsed();
    assert!(
        took < grace + std::time::Duration::from_secs(1),
        "took {took:?}"
    );
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("\"finish_reason\":\"length\""),
        "cut off at the grace's end: {}",
        &text[text.len().saturating_sub(400)..]
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_some(),
        "the prompt cache was written"
    );
    drop(half);
}
