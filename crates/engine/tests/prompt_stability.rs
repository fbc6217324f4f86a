//! Cache-stable prompts: does the rendered prompt of turn N+1 start with exactly the tokens of
//! turn N (its prompt + what the model generated + `<|im_end|>`)? One table of cases over the
//! Qwen3.5 and Qwen3.6 templates (fixtures copied from `shared/`), `preserve_thinking` on and
//! off, plain answers and tool calls, checked with the real tokenizer. Where the answer is
//! "no", the case says where the history departs (docs/PROMPT_CACHE.md explains each).

use std::path::{Path, PathBuf};

use qinfer_engine::generate::ModelBundle;
use qinfer_engine::template::{ChatTemplate, RenderRequest};
use qinfer_engine::tokenizer::Tokenizer;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/chat-templates")
}

fn template(name: &str) -> ChatTemplate {
    let source = std::fs::read_to_string(fixtures().join(format!("{name}.jinja"))).unwrap();
    let specials = std::fs::read_to_string(fixtures().join("special_tokens.json")).unwrap();
    ChatTemplate::new(&source)
        .unwrap()
        .with_special_tokens(serde_json::from_str(&specials).unwrap())
}

fn render(t: &ChatTemplate, messages: &[Value], kwargs: &Value) -> String {
    t.render(&RenderRequest {
        messages: &Value::Array(messages.to_vec()),
        tools: None,
        add_generation_prompt: true,
        kwargs: kwargs.as_object().unwrap(),
    })
    .unwrap()
}

/// Where the next prompt departs from turn N's tokens.
#[derive(Debug, PartialEq)]
enum Outcome {
    /// It starts with all of them: a 100% cache hit.
    Extends,
    /// It departs inside the old prompt (the last `<think>` block was dropped).
    DepartsInPrompt,
    /// It departs inside the generated answer (the template re-rendered it differently).
    DepartsInAnswer,
}

struct Case {
    name: &'static str,
    template: &'static str,
    kwargs: Value,
    /// What the model generated after the prompt.
    output: &'static str,
    /// The assistant message a client sends back for it.
    assistant: Value,
    /// The message that starts turn N+1.
    next: Value,
    expect: Outcome,
}

fn tool_call_message() -> Value {
    json!({"role": "assistant", "content": "", "reasoning_content": "List it.",
           "tool_calls": [{"type": "function", "function": {"name": "ls", "arguments": {"path": "src"}}}]})
}

const TOOL_OUTPUT: &str = "List it.\n</think>\n\n<tool_call>\n<function=ls>\n<parameter=path>\nsrc\n</parameter>\n</function>\n</tool_call>";

fn cases() -> Vec<Case> {
    let answer =
        || json!({"role": "assistant", "content": "It is 4.", "reasoning_content": "2 + 2 = 4."});
    let user = json!({"role": "user", "content": "And 3 + 3?"});
    let tool = json!({"role": "tool", "content": "lib.rs main.rs"});
    let on = json!({"preserve_thinking": true});
    vec![
        Case {
            name: "3.6 preserve_thinking, thinking answer, next user message",
            template: "qwen3.6",
            kwargs: on.clone(),
            output: "2 + 2 = 4.\n</think>\n\nIt is 4.",
            assistant: answer(),
            next: user.clone(),
            expect: Outcome::Extends,
        },
        Case {
            name: "3.6 preserve_thinking, thinking off",
            template: "qwen3.6",
            kwargs: json!({"preserve_thinking": true, "enable_thinking": false}),
            output: "It is 4.",
            assistant: json!({"role": "assistant", "content": "It is 4."}),
            next: user.clone(),
            expect: Outcome::Extends,
        },
        Case {
            name: "3.6 preserve_thinking, tool call, tool result",
            template: "qwen3.6",
            kwargs: on.clone(),
            output: TOOL_OUTPUT,
            assistant: tool_call_message(),
            next: tool.clone(),
            expect: Outcome::Extends,
        },
        Case {
            name: "3.6 without preserve_thinking, tool call, tool result (reasoning kept after the last user query)",
            template: "qwen3.6",
            kwargs: json!({}),
            output: TOOL_OUTPUT,
            assistant: tool_call_message(),
            next: tool.clone(),
            expect: Outcome::Extends,
        },
        Case {
            name: "3.6 without preserve_thinking, next user message drops the reasoning",
            template: "qwen3.6",
            kwargs: json!({}),
            output: "2 + 2 = 4.\n</think>\n\nIt is 4.",
            assistant: answer(),
            next: user.clone(),
            expect: Outcome::DepartsInPrompt,
        },
        Case {
            name: "3.5, next user message drops the reasoning",
            template: "qwen3.5",
            kwargs: on.clone(),
            output: "2 + 2 = 4.\n</think>\n\nIt is 4.",
            assistant: answer(),
            next: user.clone(),
            expect: Outcome::DepartsInPrompt,
        },
        Case {
            name: "3.5, tool call, tool result",
            template: "qwen3.5",
            kwargs: json!({}),
            output: TOOL_OUTPUT,
            assistant: tool_call_message(),
            next: tool,
            expect: Outcome::Extends,
        },
        Case {
            name: "3.6 preserve_thinking, answer ending in a newline (the template trims it)",
            template: "qwen3.6",
            kwargs: on.clone(),
            output: "2 + 2 = 4.\n</think>\n\nIt is 4.\n",
            assistant: json!({"role": "assistant", "content": "It is 4.\n", "reasoning_content": "2 + 2 = 4."}),
            next: user.clone(),
            expect: Outcome::DepartsInAnswer,
        },
        Case {
            // `<think>\n\n</think>`: the empty block's "\n\n" is one token where the prompt
            // ended in "\n", so it departs at the prompt's last token.
            name: "3.6 preserve_thinking, client drops reasoning_content",
            template: "qwen3.6",
            kwargs: on,
            output: "2 + 2 = 4.\n</think>\n\nIt is 4.",
            assistant: json!({"role": "assistant", "content": "It is 4."}),
            next: user,
            expect: Outcome::DepartsInPrompt,
        },
    ]
}

fn check(tok: &Tokenizer, case: &Case) -> Outcome {
    let t = template(case.template);
    let mut messages = vec![
        json!({"role": "system", "content": "You are terse."}),
        json!({"role": "user", "content": "What is 2 + 2? List src too."}),
    ];
    let p1 = render(&t, &messages, &case.kwargs);
    messages.push(case.assistant.clone());
    messages.push(case.next.clone());
    let p2 = render(&t, &messages, &case.kwargs);
    let (prompt1, generated) = (tok.encode(&p1).unwrap(), tok.encode(case.output).unwrap());
    let mut turn = prompt1.clone();
    turn.extend(&generated);
    turn.extend(tok.encode("<|im_end|>").unwrap());
    let prompt2 = tok.encode(&p2).unwrap();
    let same = turn
        .iter()
        .zip(&prompt2)
        .take_while(|(a, b)| a == b)
        .count();
    if same == turn.len() {
        Outcome::Extends
    } else if same < prompt1.len() {
        Outcome::DepartsInPrompt
    } else {
        Outcome::DepartsInAnswer
    }
}

#[test]
fn which_histories_extend_the_last_turn() {
    let tok = ModelBundle::demo_tokenizer().unwrap();
    let failures: Vec<String> = cases()
        .iter()
        .filter_map(|c| {
            let got = check(&tok, c);
            (got != c.expect).then(|| format!("{}: expected {:?}, got {got:?}", c.name, c.expect))
        })
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
}
