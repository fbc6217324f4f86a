//! `qinfer serve` as a process: greedy chat over HTTP equals `qinfer generate` for the same
//! prompt, and SIGTERM shuts the server down cleanly.

#[path = "../../server/tests/common/http.rs"]
mod http;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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

    let mut child = Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args(["serve", "demo", "--port", "0", "--threads", "2"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "serve exited before listening"
        );
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
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
