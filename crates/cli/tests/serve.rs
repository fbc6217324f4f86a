//! `qinfer serve` as a process: greedy chat over HTTP equals `qinfer generate` for the same
//! prompt, and SIGTERM shuts the server down cleanly — within the grace whatever the clients
//! hold, and at once on a second SIGTERM.

mod common;

use common::{http, serve};

use std::io::{BufReader, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[test]
fn served_greedy_chat_equals_qinfer_generate() {
    let prompt = "Name three prime numbers.";
    let out = Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args([
            "generate",
            "demo",
            "--chat",
            "--prompt",
            prompt,
            "--temperature",
            "0",
        ])
        .args(["--max-tokens", "20", "--json", "--threads", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Value = serde_json::from_slice(&out.stdout).unwrap();

    let (mut child, mut log, addr) = serve(&[]);
    let body = json!({
        "model": "qinfer-demo",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 20,
        "temperature": 0,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "repetition_penalty": 1,
    });
    let r = http::post(addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let msg = &v["choices"][0]["message"];
    assert_eq!(
        msg["reasoning_content"].as_str().unwrap_or(""),
        expected["reasoning"]
    );
    assert_eq!(msg["content"].as_str().unwrap_or(""), expected["text"]);
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap() as usize,
        expected["ids"].as_array().unwrap().len()
    );

    // SIGTERM: a graceful stop, exit code 0.
    let pid = child.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut log, &mut rest);
    assert!(status.success(), "serve exited with {status}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

/// A stream that runs until the server cuts it, reading its first chunk.
fn endless_stream(addr: std::net::SocketAddr) -> BufReader<std::net::TcpStream> {
    let body = json!({"model": "qinfer-demo", "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 30000, "ignore_eos": true, "stream": true, "temperature": 0});
    http::open_stream(addr, "/v1/chat/completions", &body)
}

fn sigterm(child: &std::process::Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
}

/// Hardening: SIGTERM to a real `qinfer serve` with a stream in flight, a half-sent request
/// and a client that stopped reading: exit 0 within the grace plus one second, the stream ended
/// as cut off, the prompt cache written. A second SIGTERM cuts a long grace short.
#[test]
fn sigterm_completes_within_the_grace_whatever_clients_hold() {
    for (grace, twice) in [("1", false), ("30", true)] {
        let cache = tempfile::tempdir().unwrap();
        let (mut child, mut log, addr) = serve(&[
            "--shutdown-grace",
            grace,
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ]);
        let mut reading = endless_stream(addr);
        let _not_reading = endless_stream(addr);
        let mut half = std::net::TcpStream::connect(addr).unwrap();
        half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
            .unwrap();

        let started = Instant::now();
        sigterm(&child);
        if twice {
            std::thread::sleep(Duration::from_millis(300));
            sigterm(&child);
        }
        let mut body = Vec::new();
        while let Some(c) = http::read_chunk(&mut reading) {
            body.extend(c);
        }
        let status = child.wait().unwrap();
        let took = started.elapsed();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut log, &mut rest);
        assert!(
            status.success(),
            "grace {grace}: exited with {status}: {rest}"
        );
        // The grace plus one second; on a second SIGTERM, well before a 30 s grace.
        assert!(
            took < Duration::from_secs(2),
            "grace {grace}, twice {twice}: took {took:?}: {rest}"
        );
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("\"finish_reason\":\"length\""),
            "grace {grace}: {}",
            &text[text.len().saturating_sub(300)..]
        );
        assert!(
            std::fs::read_dir(cache.path()).unwrap().next().is_some(),
            "grace {grace}: the prompt cache was written: {rest}"
        );
        drop(half);
    }
}
