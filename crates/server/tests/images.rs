//! Images over HTTP with the demo model (whose small random vision tower takes images as a
//! real one does): OpenAI `image_url` parts (data URLs and fetched http URLs) and Anthropic
//! `image` blocks become prompt tokens, `/tokenize` counts them, the prompt cache resumes a
//! second turn about the same image past it and not past another, and bad images get a 400
//! naming the field and the problem.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use base64::Engine as _;
use common::http::post;
use common::{MODEL, TestServer};
use serde_json::{Value, json};

fn fixture(path: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(path)
}

fn png(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("tiny-vl-f32/{name}"))).unwrap()
}

fn data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn chat(content: Value, max_tokens: usize) -> Value {
    json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    })
}

fn with_image(url: &str) -> Value {
    json!([
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": "What is in this picture?"}
    ])
}

/// Tokens the 100×60 fixture image becomes at the Qwen processor's default minimum area:
/// resized to 352×224, 22×14 patches, 77 merged tokens, plus `<|vision_start|>` and
/// `<|vision_end|>` around them.
const IMAGE_A_TOKENS: u64 = 79;

#[test]
fn openai_and_anthropic_requests_take_images() {
    let server = TestServer::start(|_| {});
    let a = data_url(&png("image_a.png"));
    let plain = post(
        server.addr,
        "/v1/chat/completions",
        &chat(json!("What is in this picture?"), 2),
    );
    assert_eq!(plain.status, 200, "{}", plain.body);
    let with = post(
        server.addr,
        "/v1/chat/completions",
        &chat(with_image(&a), 2),
    );
    assert_eq!(with.status, 200, "{}", with.body);
    let tokens = |r: &common::http::Resp, field: &str| r.json()["usage"][field].as_u64().unwrap();
    assert_eq!(
        tokens(&with, "prompt_tokens"),
        tokens(&plain, "prompt_tokens") + IMAGE_A_TOKENS
    );
    // /tokenize counts the image as its tokens.
    let t = post(
        server.addr,
        "/tokenize",
        &json!({"messages": [{"role": "user", "content": with_image(&a)}]}),
    );
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.json()["count"], tokens(&with, "prompt_tokens"));
    assert_eq!(t.json()["image_tokens"], 77);

    // Anthropic: a base64 image block in a user message, and one in a tool result.
    let b64 = base64::engine::general_purpose::STANDARD.encode(png("image_b.png"));
    let anthropic = json!({
        "model": MODEL,
        "max_tokens": 2,
        "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}},
            {"type": "text", "text": "Describe it."}
        ]}],
    });
    let r = post(server.addr, "/v1/messages", &anthropic);
    assert_eq!(r.status, 200, "{}", r.body);
    let count = post(server.addr, "/v1/messages/count_tokens", &anthropic);
    assert_eq!(count.status, 200, "{}", count.body);
    assert_eq!(
        count.json()["input_tokens"],
        r.json()["usage"]["input_tokens"]
    );
    let tool_result = json!({
        "model": MODEL,
        "max_tokens": 2,
        "messages": [
            {"role": "user", "content": "Take a screenshot."},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "screenshot", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64}}
                ]}
            ]}
        ],
    });
    let r = post(server.addr, "/v1/messages", &tool_result);
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A second turn about the same image resumes from the cache past the image; the same turn
/// with another image (same size, so the same tokens) resumes only before it.
#[test]
fn the_prompt_cache_keys_images_by_content() {
    let server = TestServer::start(|_| {});
    let a = data_url(&png("image_a.png"));
    // `preserve_thinking`, so the history renders the answer as it was generated (without it
    // the template drops an earlier turn's reasoning and the prompts part before the first
    // answer — a matter of text, not of images).
    let mut body = chat(with_image(&a), 4);
    body["chat_template_kwargs"] = json!({"preserve_thinking": true});
    let first = post(server.addr, "/v1/chat/completions", &body);
    assert_eq!(first.status, 200, "{}", first.body);
    let message = &first.json()["choices"][0]["message"];
    let answer = json!({
        "role": "assistant",
        "content": message["content"],
        "reasoning_content": message["reasoning_content"],
    });
    let turn = |url: &str| {
        json!({
            "model": MODEL,
            "max_tokens": 2,
            "temperature": 0,
            "chat_template_kwargs": {"preserve_thinking": true},
            "messages": [
                {"role": "user", "content": with_image(url)},
                answer,
                {"role": "user", "content": "And the colours?"}
            ],
        })
    };
    let second = post(server.addr, "/v1/chat/completions", &turn(&a));
    assert_eq!(second.status, 200, "{}", second.body);
    let cached = |r: &common::http::Resp| -> u64 {
        r.header("x-qinfer-cached-tokens")
            .unwrap_or("0")
            .parse()
            .unwrap()
    };
    assert!(
        cached(&second) > IMAGE_A_TOKENS,
        "the second turn resumed at {}",
        cached(&second)
    );
    // The same image, mirrored: other pixels, same size and tokens.
    let mut other = image::load_from_memory(&png("image_a.png")).unwrap();
    other = other.fliph();
    let mut bytes = Vec::new();
    other
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    let third = post(
        server.addr,
        "/v1/chat/completions",
        &turn(&data_url(&bytes)),
    );
    assert_eq!(third.status, 200, "{}", third.body);
    assert!(
        cached(&third) < 10,
        "another image resumed at {}",
        cached(&third)
    );
}

/// Serves `body` once per connection on a random localhost port; returns the URL.
fn serve_once(body: Vec<u8>, connections: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(connections) {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    format!("http://{addr}/image.png")
}

#[test]
fn image_urls_are_fetched_unless_turned_off() {
    let url = serve_once(png("image_a.png"), 1);
    let server = TestServer::start(|_| {});
    let r = post(
        server.addr,
        "/v1/chat/completions",
        &chat(with_image(&url), 2),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    drop(server);
    let off = TestServer::start(|c| c.image_urls = false);
    let r = post(off.addr, "/v1/chat/completions", &chat(with_image(&url), 2));
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("--no-image-urls"), "{}", r.body);
}

/// Not an image, a truncated PNG, a PNG header claiming 50,000×50,000 pixels, a bad data URL,
/// an unreachable URL, an image in a system message and too many images for the context:
/// each a 400 that names the field and the problem.
#[test]
fn bad_images_get_a_400_naming_the_problem() {
    let server = TestServer::start(|c| c.ctx = 400);
    let a = png("image_a.png");
    // The fixture's signature and IHDR chunk with 50,000×50,000 written in (and its CRC
    // recomputed), then the rest of the file: a valid header announcing 7.5 GB of pixels.
    let mut huge = a.clone();
    huge[16..20].copy_from_slice(&50_000u32.to_be_bytes());
    huge[20..24].copy_from_slice(&50_000u32.to_be_bytes());
    let crc = crc32(&huge[12..29]);
    huge[29..33].copy_from_slice(&crc.to_be_bytes());
    let cases: Vec<(Value, &str)> = vec![
        (
            with_image(&data_url(b"plain text, no image")),
            "not a recognised image",
        ),
        (with_image(&data_url(&a[..a.len() / 2])), "truncated"),
        (with_image(&data_url(&huge)), "too large"),
        (with_image("data:image/png,abc"), "base64"),
        (with_image("ftp://example.invalid/x.png"), "http(s) URL"),
        (
            with_image("http://127.0.0.1:9/x.png"),
            "could not be fetched",
        ),
        (
            json!([
                {"type": "image_url", "image_url": {"url": data_url(&a)}},
                {"type": "image_url", "image_url": {"url": data_url(&a)}},
                {"type": "image_url", "image_url": {"url": data_url(&a)}},
                {"type": "image_url", "image_url": {"url": data_url(&a)}},
                {"type": "image_url", "image_url": {"url": data_url(&a)}},
                {"type": "text", "text": "Compare them."}
            ]),
            "context",
        ),
    ];
    // Six images need more tokens than the context holds: refused as they are read.
    let six: Vec<Value> = (0..6)
        .map(|_| json!({"type": "image_url", "image_url": {"url": data_url(&a)}}))
        .collect();
    let mut cases = cases;
    cases.push((Value::Array(six), "images alone take"));
    for (content, want) in cases {
        let r = post(server.addr, "/v1/chat/completions", &chat(content, 2));
        assert_eq!(r.status, 400, "{want}: {}", r.body);
        assert!(r.body.contains(want), "{want}: {}", r.body);
    }
    let system = json!({
        "model": MODEL,
        "max_tokens": 2,
        "messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": data_url(&a)}}]},
            {"role": "user", "content": "Hi"}
        ],
    });
    let r = post(server.addr, "/v1/chat/completions", &system);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("messages[0].content[0].type"), "{}", r.body);
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// The Responses API (what Codex speaks): an `input_image` part, and a stored conversation
/// that carries its image into the next turn (`previous_response_id`).
#[test]
fn responses_take_images_and_keep_them_in_stored_conversations() {
    let server = TestServer::start(|_| {});
    let a = data_url(&png("image_a.png"));
    let first = post(
        server.addr,
        "/v1/responses",
        &json!({
            "model": MODEL,
            "max_output_tokens": 2,
            "temperature": 0,
            "input": [{"role": "user", "content": [
                {"type": "input_text", "text": "What is in this picture?"},
                {"type": "input_image", "image_url": a}
            ]}],
        }),
    );
    assert_eq!(first.status, 200, "{}", first.body);
    let first = first.json();
    let plain = post(
        server.addr,
        "/v1/responses",
        &json!({"model": MODEL, "max_output_tokens": 2, "input": "What is in this picture?"}),
    )
    .json();
    let input = |v: &Value| v["usage"]["input_tokens"].as_u64().unwrap();
    assert_eq!(input(&first), input(&plain) + IMAGE_A_TOKENS);
    let second = post(
        server.addr,
        "/v1/responses",
        &json!({
            "model": MODEL,
            "max_output_tokens": 2,
            "previous_response_id": first["id"],
            "input": "And the colours?",
        }),
    );
    assert_eq!(second.status, 200, "{}", second.body);
    assert!(input(&second.json()) > input(&first), "{}", second.body);
}
