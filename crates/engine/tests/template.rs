//! Chat-template tests.
//!
//! * `golden_cases`: every case in `tests/fixtures/chat-templates/cases.json`, rendered by
//!   transformers 5.23 (`tools/make_template_fixtures.py`), must render byte-identically
//!   or fail the same way.
//! * Loading from a model directory, bad templates, runaway templates, malformed requests.
//! * Prefix stability across turns, the property the prefix cache relies on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qinfer_engine::template::{ChatTemplate, RenderRequest, TemplateError};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat-templates")
}

fn special_tokens() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(fixtures().join("special_tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A fixture template with the special tokens the goldens were rendered with.
fn template(name: &str) -> ChatTemplate {
    let source = std::fs::read_to_string(fixtures().join(format!("{name}.jinja"))).unwrap();
    ChatTemplate::new(&source)
        .unwrap()
        .with_special_tokens(special_tokens())
}

fn render(
    t: &ChatTemplate,
    messages: &Json,
    tools: Option<&Json>,
    add_generation_prompt: bool,
    kwargs: &Json,
) -> Result<String, TemplateError> {
    let kwargs: Map<String, Json> = kwargs.as_object().cloned().unwrap_or_default();
    t.render(&RenderRequest {
        messages,
        tools,
        add_generation_prompt,
        kwargs: &kwargs,
    })
}

#[derive(Deserialize)]
struct Case {
    name: String,
    template: String,
    messages: Json,
    tools: Option<Json>,
    add_generation_prompt: bool,
    kwargs: Json,
    expected: Option<String>,
    error_kind: Option<String>,
    error: Option<String>,
}

/// Where `actual` first differs from `expected`, with some context around it.
fn describe_mismatch(expected: &str, actual: &str) -> String {
    let offset = expected
        .bytes()
        .zip(actual.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(actual.len()));
    let context = |s: &str| {
        let start = offset.saturating_sub(60);
        let end = (offset + 60).min(s.len());
        String::from_utf8_lossy(&s.as_bytes()[start..end]).into_owned()
    };
    format!(
        "first difference at byte {offset} (expected {} bytes, got {})\n  expected: {:?}\n  actual:   {:?}",
        expected.len(),
        actual.len(),
        context(expected),
        context(actual),
    )
}

/// Compares one case with its golden; `None` when it matches.
fn check(templates: &BTreeMap<&str, ChatTemplate>, case: &Case) -> Option<String> {
    let t = &templates[case.template.as_str()];
    let result = render(
        t,
        &case.messages,
        case.tools.as_ref(),
        case.add_generation_prompt,
        &case.kwargs,
    );
    match (&case.expected, result) {
        (Some(expected), Ok(actual)) if *expected == actual => None,
        (Some(expected), Ok(actual)) => Some(describe_mismatch(expected, &actual)),
        (Some(_), Err(e)) => Some(format!("expected a render, got error: {e}")),
        (None, result) => {
            let kind = case.error_kind.as_deref().unwrap_or_default();
            let message = case.error.as_deref().unwrap_or_default();
            match (kind, result) {
                ("raised", Err(TemplateError::Raised(m))) if m == message => None,
                ("request", Err(TemplateError::InvalidRequest(m))) if m.contains(message) => None,
                ("render", Err(TemplateError::Render { .. })) => None,
                (_, result) => Some(format!(
                    "expected {kind} error {message:?}, got {:?}",
                    result.map(|_| "a successful render")
                )),
            }
        }
    }
}

#[test]
fn golden_cases() {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    let cases: Vec<Case> = serde_json::from_str(&text).unwrap();
    let templates: BTreeMap<&str, ChatTemplate> = ["qwen3.5", "qwen3.6", "probe"]
        .into_iter()
        .map(|name| (name, template(name)))
        .collect();
    assert!(cases.len() > 200, "only {} cases", cases.len());

    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(&templates, case).map(|why| format!("{}: {why}", case.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// Loading from a model directory.

const SMALL: &str = "{{ bos_token }}|{{ eos_token }}|{{ image_token }}|{{ messages[0].content }}";

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn render_small(t: &ChatTemplate) -> String {
    render(
        t,
        &json!([{"role": "user", "content": "hi"}]),
        None,
        false,
        &json!({}),
    )
    .unwrap()
}

#[test]
fn model_dir_prefers_chat_template_jinja() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "chat_template.jinja", &format!("jinja:{SMALL}"));
    let config = json!({
        "chat_template": "config template",
        "add_bos_token": false,
        "bos_token": {"__type": "AddedToken", "content": "<s>", "special": true},
        "eos_token": "<|im_end|>",
        "unk_token": null,
        "image_token": "<|image_pad|>",
    });
    write(dir.path(), "tokenizer_config.json", &config.to_string());
    let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
    assert_eq!(render_small(&t), "jinja:<s>|<|im_end|>|<|image_pad|>|hi");
    let names: Vec<&str> = t.special_tokens().keys().map(String::as_str).collect();
    assert_eq!(names, ["bos_token", "eos_token", "image_token"]);
}

#[test]
fn model_dir_tokenizer_config_string() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({"chat_template": SMALL, "eos_token": "E"});
    write(dir.path(), "tokenizer_config.json", &config.to_string());
    let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
    assert_eq!(render_small(&t), "|E||hi");
}

#[test]
fn model_dir_tokenizer_config_list_picks_default() {
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": SMALL},
        ],
        "extra_special_tokens": {"image_token": "<img>"},
    });
    write(dir.path(), "tokenizer_config.json", &config.to_string());
    let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
    assert_eq!(render_small(&t), "||<img>|hi");

    let config = json!({"chat_template": [{"name": "rag", "template": "x"}]});
    write(dir.path(), "tokenizer_config.json", &config.to_string());
    let err = ChatTemplate::from_model_dir(dir.path()).unwrap_err();
    assert!(
        matches!(&err, TemplateError::Config { message, .. } if message.contains("default")),
        "{err}"
    );
}

#[test]
fn model_dir_processor_chat_template_json() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "tokenizer_config.json", r#"{"eos_token": "E"}"#);
    write(
        dir.path(),
        "chat_template.json",
        &json!({"chat_template": SMALL}).to_string(),
    );
    let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
    assert_eq!(render_small(&t), "|E||hi");
}

#[test]
fn model_dir_without_template() {
    let dir = tempfile::tempdir().unwrap();
    assert!(ChatTemplate::from_model_dir(dir.path()).unwrap().is_none());
    write(dir.path(), "tokenizer_config.json", r#"{"eos_token": "E"}"#);
    assert!(ChatTemplate::from_model_dir(dir.path()).unwrap().is_none());
    write(dir.path(), "tokenizer_config.json", "{not json");
    assert!(matches!(
        ChatTemplate::from_model_dir(dir.path()),
        Err(TemplateError::Config { .. })
    ));
}

#[test]
fn model_dir_real_template_renders_like_the_fixture() {
    let source = std::fs::read_to_string(fixtures().join("qwen3.5.jinja")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = json!({
        "bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": null, "chat_template": source,
    });
    write(dir.path(), "tokenizer_config.json", &config.to_string());
    let t = ChatTemplate::from_model_dir(dir.path()).unwrap().unwrap();
    assert_eq!(t.special_tokens(), &special_tokens());
    let messages = json!([{"role": "user", "content": "hi"}]);
    assert_eq!(
        render(&t, &messages, None, true, &json!({})).unwrap(),
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n"
    );
}

// ---------------------------------------------------------------------------------------
// Bad and runaway templates, malformed requests.

#[test]
fn syntax_errors_are_clear() {
    let err = ChatTemplate::new("line one\n{% if messages %}\nno endif").unwrap_err();
    match &err {
        TemplateError::Syntax { line, message } => {
            assert_eq!(*line, 3, "{err}");
            assert!(message.contains("end of input"), "{message}");
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let err = ChatTemplate::new("ok\n\n{{ messages | }}").unwrap_err();
    assert!(
        matches!(err, TemplateError::Syntax { line: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn render_errors_do_not_panic() {
    let t = ChatTemplate::new("{{ messages[0].content.nope.deeper }}").unwrap();
    let err = render(
        &t,
        &json!([{"role": "user", "content": "x"}]),
        None,
        false,
        &json!({}),
    )
    .unwrap_err();
    assert!(matches!(err, TemplateError::Render { .. }), "{err}");
    assert!(err.to_string().contains("chat_template:1"), "{err}");
}

#[test]
fn runaway_recursion_is_bounded() {
    let t = ChatTemplate::new("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").unwrap();
    let err = render(&t, &json!([{}]), None, false, &json!({})).unwrap_err();
    assert!(matches!(err, TemplateError::Render { .. }), "{err}");
}

#[test]
fn runaway_loops_are_bounded_by_fuel() {
    let t = ChatTemplate::new(
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let messages = serde_json::json!([{"role": "user", "content": "hi"}]);
    let kwargs = serde_json::Map::new();
    let started = std::time::Instant::now();
    let err = t
        .render(&RenderRequest {
            messages: &messages,
            tools: None,
            add_generation_prompt: true,
            kwargs: &kwargs,
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("fuel"), "{err}");
    assert!(started.elapsed().as_secs() < 60);
}

#[test]
fn runaway_output_is_bounded() {
    let t = ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ 'x' * 10000 }}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let err = render(&t, &json!([{}]), None, false, &json!({})).unwrap_err();
    assert!(matches!(err, TemplateError::OutputTooLarge), "{err}");
}

#[test]
fn malformed_requests_are_refused() {
    let t = template("qwen3.6");
    let user = json!([{"role": "user", "content": "hi"}]);
    let invalid =
        |r: Result<String, TemplateError>| matches!(r, Err(TemplateError::InvalidRequest(_)));
    assert!(invalid(render(
        &t,
        &json!({"role": "user"}),
        None,
        true,
        &json!({})
    )));
    assert!(invalid(render(&t, &json!(["hi"]), None, true, &json!({}))));
    assert!(invalid(render(&t, &json!([]), None, true, &json!({}))));
    assert!(invalid(render(
        &t,
        &user,
        Some(&json!({"name": "f"})),
        true,
        &json!({})
    )));
    assert!(invalid(render(
        &t,
        &user,
        Some(&json!(["f"])),
        true,
        &json!({})
    )));
    for reserved in ["messages", "tools", "documents", "add_generation_prompt"] {
        let kwargs = json!({ reserved: 1 });
        assert!(
            invalid(render(&t, &user, None, true, &kwargs)),
            "{reserved}"
        );
    }
    // `tools: null` is the same as no tools.
    let with_null = render(&t, &user, Some(&Json::Null), true, &json!({})).unwrap();
    assert_eq!(
        with_null,
        render(&t, &user, None, true, &json!({})).unwrap()
    );
}

#[test]
fn strftime_now_renders_the_current_date() {
    let t = ChatTemplate::new("{{ strftime_now('%Y-%m-%d') }}").unwrap();
    let date = render(&t, &json!([{}]), None, false, &json!({})).unwrap();
    assert_eq!(date.len(), 10, "{date}");
    assert!(date.as_str() >= "2025-01-01", "{date}");
}

#[test]
fn chat_template_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChatTemplate>();
}

// ---------------------------------------------------------------------------------------
// Prefix stability across turns.
//
// The engine keeps the model state of the previous prompt + generated tokens. The next
// request can reuse it only if its rendered prompt starts with exactly that text.

fn user(text: &str) -> Json {
    json!({"role": "user", "content": text})
}

fn assistant(reasoning: &str, content: &str) -> Json {
    json!({"role": "assistant", "reasoning_content": reasoning, "content": content})
}

fn prompt(t: &ChatTemplate, messages: &Json, tools: Option<&Json>, kwargs: &Json) -> String {
    render(t, messages, tools, true, kwargs).unwrap()
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// Renders `history + [reply]` after `history` was rendered with a generation prompt and
/// the model generated `generated`; asserts the new prompt extends the old one.
fn assert_extends(
    t: &ChatTemplate,
    history: &[Json],
    generated: &str,
    reply: Json,
    next: &[Json],
    kwargs: &Json,
) {
    let before = prompt(t, &Json::Array(history.to_vec()), None, kwargs);
    let mut messages = history.to_vec();
    messages.push(reply);
    messages.extend_from_slice(next);
    let after = prompt(t, &Json::Array(messages), None, kwargs);
    let expected_prefix = format!("{before}{generated}<|im_end|>");
    assert!(
        after.starts_with(&expected_prefix),
        "{}",
        describe_mismatch(&expected_prefix, &after)
    );
}

#[test]
fn preserve_thinking_keeps_prefix_across_turns() {
    let t = template("qwen3.6");
    let kwargs = json!({"preserve_thinking": true});
    // The generation prompt ends in "<think>\n"; the model writes the rest.
    let generated = "Two and two.\n</think>\n\n2+2 = 4.";
    let turn1 = [user("What is 2+2?")];
    let reply = assistant("Two and two.", "2+2 = 4.");
    assert_extends(
        &t,
        &turn1,
        generated,
        reply.clone(),
        &[user("Times 3?")],
        &kwargs,
    );

    // The raw generated text as `content` works too: the template splits at </think>.
    let raw = json!({"role": "assistant", "content": generated});
    assert_extends(&t, &turn1, generated, raw, &[user("Times 3?")], &kwargs);

    // And it chains: turn 2's prompt + reply is a prefix of turn 3's.
    let turn2 = [user("What is 2+2?"), reply, user("Times 3?")];
    let generated2 = "Four times three.\n</think>\n\n12.";
    let reply2 = assistant("Four times three.", "12.");
    assert_extends(&t, &turn2, generated2, reply2, &[user("Thanks")], &kwargs);
}

#[test]
fn preserve_thinking_keeps_prefix_without_thinking() {
    // enable_thinking=false: the prompt ends in "<think>\n\n</think>\n\n" and the model
    // writes only the answer; the empty reasoning re-renders as the same empty block.
    let t = template("qwen3.6");
    let kwargs = json!({"preserve_thinking": true, "enable_thinking": false});
    let turn1 = [user("Hi")];
    assert_extends(
        &t,
        &turn1,
        "Hello!",
        assistant("", "Hello!"),
        &[user("Bye")],
        &kwargs,
    );
    let plain = json!({"role": "assistant", "content": "Hello!"});
    assert_extends(&t, &turn1, "Hello!", plain, &[user("Bye")], &kwargs);
}

#[test]
fn preserve_thinking_keeps_prefix_with_tool_calls() {
    let t = template("qwen3.6");
    let kwargs = json!({"preserve_thinking": true});
    let tools =
        json!([{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]);
    let history = json!([user("Weather in Oslo?")]);
    let before = prompt(&t, &history, Some(&tools), &kwargs);
    let generated = "Look it up.\n</think>\n\nChecking.\n\n<tool_call>\n<function=get_weather>\n\
                     <parameter=city>\nOslo\n</parameter>\n<parameter=days>\n2\n</parameter>\n\
                     <parameter=opts>\n{\"metric\": true}\n</parameter>\n</function>\n</tool_call>";
    let messages = json!([
        user("Weather in Oslo?"),
        {"role": "assistant", "reasoning_content": "Look it up.", "content": "Checking.",
         "tool_calls": [{"type": "function", "function": {"name": "get_weather",
            "arguments": {"city": "Oslo", "days": 2, "opts": {"metric": true}}}}]},
        {"role": "tool", "content": "rain"},
    ]);
    let after = prompt(&t, &messages, Some(&tools), &kwargs);
    let expected_prefix = format!("{before}{generated}<|im_end|>");
    assert!(
        after.starts_with(&expected_prefix),
        "{}",
        describe_mismatch(&expected_prefix, &after)
    );
}

#[test]
fn prefix_breaks_without_preserve_thinking() {
    // Qwen3.5, or Qwen3.6 without preserve_thinking: once a new user message arrives, the
    // previous assistant turn loses its <think> block, so the reusable prefix ends right
    // after the previous "<|im_start|>assistant\n".
    let turn1 = [user("What is 2+2?")];
    let generated = "Two and two.\n</think>\n\n2+2 = 4.";
    for (name, kwargs) in [
        ("qwen3.5", json!({})),
        ("qwen3.6", json!({})),
        ("qwen3.6", json!({"preserve_thinking": false})),
    ] {
        let t = template(name);
        let before = prompt(&t, &Json::Array(turn1.to_vec()), None, &kwargs);
        let messages = json!([
            turn1[0],
            assistant("Two and two.", "2+2 = 4."),
            user("Times 3?")
        ]);
        let after = prompt(&t, &messages, None, &kwargs);
        assert!(before.ends_with("<|im_start|>assistant\n<think>\n"));
        let reusable = common_prefix_len(&format!("{before}{generated}"), &after);
        assert_eq!(
            reusable,
            before.len() - "<think>\n".len(),
            "{name} {kwargs}"
        );
    }
}

#[test]
fn prefix_holds_inside_a_tool_loop_without_preserve_thinking() {
    // Without preserve_thinking, assistant turns after the last real user message keep
    // their reasoning, so an agent loop (assistant → tool → assistant ...) stays stable.
    let t = template("qwen3.5");
    let history = json!([user("Weather in Oslo?")]);
    let before = prompt(&t, &history, None, &json!({}));
    let generated = "Look it up.\n</think>\n\n<tool_call>\n<function=get_weather>\n\
                     <parameter=city>\nOslo\n</parameter>\n</function>\n</tool_call>";
    let messages = json!([
        user("Weather in Oslo?"),
        {"role": "assistant", "reasoning_content": "Look it up.", "content": "",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "rain"},
    ]);
    let after = prompt(&t, &messages, None, &json!({}));
    assert!(after.starts_with(&format!("{before}{generated}<|im_end|>")));
}

#[test]
fn prefix_breaks_on_whitespace_the_template_trims() {
    // The template trims reasoning and content, so generated text with extra whitespace
    // around them does not re-render as generated.
    let t = template("qwen3.6");
    let kwargs = json!({"preserve_thinking": true});
    let turn1 = [user("Hi")];
    let before = prompt(&t, &Json::Array(turn1.to_vec()), None, &kwargs);
    for generated in [
        "\nReasoning.\n</think>\n\nHello!",
        "Reasoning.\n\n</think>\n\nHello!",
        "Reasoning.\n</think>\n\n\nHello!",
        "Reasoning.\n</think>\n\nHello!\n",
        "Reasoning.</think>\n\nHello!",
        "Reasoning.\n</think>\nHello!",
    ] {
        let raw = json!({"role": "assistant", "content": generated});
        let messages = json!([turn1[0], raw, user("Bye")]);
        let after = prompt(&t, &messages, None, &kwargs);
        assert!(
            !after.starts_with(&format!("{before}{generated}<|im_end|>")),
            "{generated:?}"
        );
        // It always re-renders in the canonical shape.
        assert!(after.contains("<think>\nReasoning.\n</think>\n\nHello!<|im_end|>"));
    }
}
