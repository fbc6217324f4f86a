//! `qinfer serve` as a process: greedy chat over HTTP equals `qinfer generate` for the same
//! prompt, and SIGTERM shuts the server down cleanly — within the grace whatever the clients
//! hold, and at once on a second SIGTERM.

mod common;

use common::{http, serve, serve_startup};

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

/// `qinfer fit`: the KV bytes per token are the attention layers' K and V rows from
/// config.json's shape, the total is the sum of the parts, and the largest context that fits a
/// memory limit is exactly the one whose plan it is. `serve` without `--ctx` plans the same way
/// (for its `--max-seqs` and `--cache-ram`) and serves the largest context that fits, saying so.
#[test]
fn fit_plans_memory_and_serve_chooses_a_context_that_fits() {
    let qinfer = |args: &[&str], env: &[(&str, &str)]| -> Value {
        let o = Command::new(env!("CARGO_BIN_EXE_qinfer"))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tiny-dense-f32");
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let t = &cfg["text_config"];
    let n = |k: &str| t[k].as_u64().unwrap();
    let attention_layers = n("num_hidden_layers") / n("full_attention_interval");
    let kv_width = n("num_key_value_heads") * n("head_dim");
    let m = dir.to_str().unwrap();
    for (kv, bytes) in [("f32", 4), ("f16", 2)] {
        let p = qinfer(&["fit", m, "--json", "--kv-type", kv, "--ctx", "1000"], &[]);
        assert_eq!(
            p["kv_bytes_per_token"].as_u64().unwrap(),
            attention_layers * 2 * kv_width * bytes
        );
        assert_eq!(
            p["kv_bytes_per_seq"].as_u64().unwrap(),
            1000 * p["kv_bytes_per_token"].as_u64().unwrap()
        );
        let parts: u64 = [
            "weights_bytes",
            "kv_bytes_per_seq",
            "state_bytes_per_seq",
            "cache_bytes",
            "activation_bytes",
            "runtime_bytes",
        ]
        .iter()
        .map(|k| p[k].as_u64().unwrap())
        .sum();
        assert_eq!(p["total_bytes"].as_u64().unwrap(), parts);
    }
    let p = qinfer(&["fit", m, "--json", "--ctx", "1000"], &[]);
    assert_eq!(p["device"], "cpu");
    let cpu = qinfer(
        &["fit", m, "--json", "--ctx", "1000", "--device", "cpu"],
        &[],
    );
    assert_eq!(
        (&cpu["device"], &cpu["total_bytes"]),
        (&p["device"], &p["total_bytes"])
    );
    let gpu = Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args(["fit", m, "--device", "gpu"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&gpu.stderr);
    assert!(
        !gpu.status.success() && err.contains("--device") && err.contains("cpu"),
        "{err}"
    );
    let limit = p["total_bytes"].to_string();
    let q = qinfer(&["fit", m, "--json"], &[("QINFER_MEMORY_LIMIT", &limit)]);
    assert_eq!(q["max_ctx"], 1000, "{q}");
    assert_eq!(q["fits"], false, "the model's whole context does not fit");

    let p = qinfer(
        &[
            "fit",
            "demo",
            "--json",
            "--ctx",
            "300",
            "--max-seqs",
            "2",
            "--cache-ram",
            "0",
        ],
        &[],
    );
    let limit = p["total_bytes"].to_string();
    let ((mut child, _log, addr), startup) = serve_startup(
        &["--max-seqs", "2", "--cache-ram", "0"],
        &[("QINFER_MEMORY_LIMIT", &limit)],
    );
    let models = http::get(addr, "/v1/models").json();
    assert_eq!(models["data"][0]["max_model_len"], 300, "{models}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(startup.contains("does not fit the memory"), "{startup}");
}

/// `qinfer fit --weights TYPE` plans a model from its config.json alone: for Qwen3.6-27B
/// (config from ../shared/spec/qwen35-architecture.md §1.2) the KV cache is 128 KiB per token
/// in f32 (16 attention layers × K and V × 4 heads × 256), the Q4_K_M weights about the
/// 16.5 GB `qinfer quantize --help` lists, and YaRN ×4 makes the context 1,048,576.
#[test]
fn fit_plans_a_model_from_its_config_alone() {
    let cfg = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/configs/qwen3.6-27b.json");
    let fit = |extra: &[&str]| -> Value {
        let o = Command::new(env!("CARGO_BIN_EXE_qinfer"))
            .args([
                "fit",
                cfg.to_str().unwrap(),
                "--weights",
                "Q4_K_M",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let p = fit(&["--kv-type", "f32"]);
    assert_eq!(p["kv_bytes_per_token"], 128 * 1024);
    assert_eq!(p["ctx"], 262_144);
    let w = p["weights_bytes"].as_f64().unwrap();
    assert!((w / 16.5e9 - 1.0).abs() < 0.01, "{w}");
    let p = fit(&[
        "--kv-type",
        "q8_0",
        "--rope-scaling",
        "yarn",
        "--rope-factor",
        "4",
    ]);
    assert_eq!(p["ctx"], 1_048_576);
    assert_eq!(
        p["kv_bytes_per_token"],
        16 * 2 * 32 * 34,
        "Q8_0: 34 bytes per 32 values"
    );
}

/// A lone chat, then sixteen concurrent chats (greedy and seeded), through a server that
/// drafts with the demo's MTP head answer exactly what a server with `--draft none` answers;
/// the drafting server's `/metrics` and `usage` count the drafts (the lone chat's at least:
/// by default a sequence drafts while it decodes alone).
#[test]
fn served_concurrent_chats_with_mtp_drafts_equal_plain_decoding() {
    let topics = ["list", "dictionary", "module", "class"];
    let bodies: Vec<Value> = (0..16)
        .map(|i| {
            json!({
                "model": "qinfer-demo",
                "messages": [{"role": "user", "content": format!("What is a {} in Python? ({i})", topics[i % 4])}],
                "max_tokens": 24,
                "temperature": if i % 2 == 0 { 0.0 } else { 0.7 },
                "seed": i,
                "chat_template_kwargs": {"enable_thinking": false},
            })
        })
        .collect();
    let run = |args: &[&str]| {
        let (mut child, _log, addr) = serve(args);
        let lone = http::post(addr, "/v1/chat/completions", &bodies[0]);
        assert_eq!(lone.status, 200, "{}", lone.body);
        let handles: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|b| std::thread::spawn(move || http::post(addr, "/v1/chat/completions", &b)))
            .collect();
        let mut replies: Vec<Value> = vec![lone.json()];
        replies.extend(handles.into_iter().map(|h| {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()
        }));
        let metrics = http::get(addr, "/metrics").body;
        let _ = child.kill();
        let _ = child.wait();
        (replies, metrics)
    };
    let (plain, _) = run(&["--draft", "none"]);
    let (drafted, metrics) = run(&["--draft", "mtp", "--draft-max", "3"]);
    let content = |v: &Value| v["choices"][0]["message"]["content"].clone();
    for (i, (a, b)) in plain.iter().zip(&drafted).enumerate() {
        assert_eq!(content(a), content(b), "request {i}");
    }
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (made, accepted) = (
        counter("qinfer_draft_tokens_total"),
        counter("qinfer_draft_accepted_tokens_total"),
    );
    assert!(made > 0 && accepted > 0, "{accepted} of {made}");
    let lone = &drafted[0]["usage"]["completion_tokens_details"];
    assert!(
        lone["accepted_prediction_tokens"].as_u64().unwrap() > 0,
        "{lone}"
    );
    let usage: u64 = drafted
        .iter()
        .map(|v| {
            v["usage"]["completion_tokens_details"]["accepted_prediction_tokens"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(usage, accepted);
}
