//! The generation loop end to end on the built-in demo model (real tokenizer and Qwen3.6
//! template, random weights), and the property prefix caching rests on: with
//! `preserve_thinking`, turn N+1's prompt starts with exactly the tokens of turn N.

use std::sync::OnceLock;

use qinfer_engine::generate::{
    FinishReason, Flow, GenerateOptions, ModelBundle, Sequence, generate,
};
use qinfer_engine::parser::{Event, ParserOptions, parse_complete};
use qinfer_engine::sampler::SamplingParams;
use qinfer_engine::template::RenderRequest;
use serde_json::{Value, json};

fn demo() -> &'static ModelBundle {
    static DEMO: OnceLock<ModelBundle> = OnceLock::new();
    DEMO.get_or_init(|| ModelBundle::demo().unwrap())
}

fn render(messages: &Value, kwargs: Value) -> String {
    let kwargs = kwargs.as_object().unwrap().clone();
    demo()
        .template()
        .unwrap()
        .render(&RenderRequest {
            messages,
            tools: None,
            add_generation_prompt: true,
            kwargs: &kwargs,
        })
        .unwrap()
}

fn encode(text: &str) -> Vec<u32> {
    demo().tokenizer.encode(text).unwrap()
}

fn options(seed: u64, max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        json_object: false,
        json_schema: None,
        strict_tools: false,
        single_call: false,
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 50,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        max_tokens,
        parser: ParserOptions {
            starts_in_reasoning: true,
            tools: Vec::new(),
        },
        ..GenerateOptions::default()
    }
}

fn thinking_prompt() -> Vec<u32> {
    let p = render(
        &json!([{"role": "user", "content": "What is 2 + 2?"}]),
        json!({"preserve_thinking": true}),
    );
    assert!(p.ends_with("<think>\n"));
    encode(&p)
}

fn run(prompt: &[u32], opts: &GenerateOptions) -> qinfer_engine::generate::Generation {
    let b = demo();
    generate(b, &mut Sequence::new(&b.model), prompt, opts, &mut |_| {
        Flow::Continue
    })
    .unwrap()
}

#[test]
fn seeded_generation_is_reproducible() {
    let prompt = thinking_prompt();
    let a = run(&prompt, &options(7, 12));
    assert_eq!(a.ids, run(&prompt, &options(7, 12)).ids);
    assert_ne!(a.ids, run(&prompt, &options(8, 12)).ids);
    assert_eq!(a.finish, FinishReason::Length);
    assert_eq!(a.ids.len(), 12);
    assert_eq!(a.text, demo().tokenizer.decode(&a.ids, false).unwrap());
}

#[test]
fn reasoning_budget_forces_the_end_of_thinking() {
    let prompt = thinking_prompt();
    let mut opts = options(3, 24);
    opts.reasoning_budget = Some(5);
    let g = run(&prompt, &opts);
    let close = encode("\n</think>\n\n");
    let at = g
        .ids
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .expect("forced </think> tokens");
    assert_eq!(at, 5, "thinking ends right after the budget");
    assert!(g.reasoning_tokens <= 5 + close.len());
    assert!(!g.parsed.reasoning.is_empty());
    assert!(
        !g.parsed.content.is_empty(),
        "the answer goes on after the forced end"
    );
    assert!(!g.parsed.content.contains("</think>"));
    // A budget of 0 allows no thinking token at all (it allowed one).
    opts.reasoning_budget = Some(0);
    let g = run(&prompt, &opts);
    assert_eq!(g.ids[..close.len()], close, "thinking closes at once");
    assert!(
        g.parsed.reasoning.trim().is_empty(),
        "{:?}",
        g.parsed.reasoning
    );
}

#[test]
fn stop_strings_end_generation_before_the_stop() {
    let prompt = thinking_prompt();
    let free = run(&prompt, &options(11, 40));
    let chars: Vec<char> = free.text.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let mut opts = options(11, 40);
    opts.stop_strings = vec![stop.clone()];
    let g = run(&prompt, &opts);
    assert_eq!(g.finish, FinishReason::StopString(stop.clone()));
    assert!(!g.text.contains(&stop));
    assert!(
        free.text.starts_with(&g.text),
        "same seed, same text up to the stop"
    );
}

#[test]
fn a_callback_cancels_and_the_sequence_stays_consistent() {
    let b = demo();
    let prompt = thinking_prompt();
    let mut seq = Sequence::new(&b.model);
    let mut events = 0;
    let g = generate(b, &mut seq, &prompt, &options(5, 200), &mut |e| {
        if matches!(e, Event::Reasoning(_) | Event::Content(_)) {
            events += 1;
        }
        if events >= 3 {
            Flow::Cancel
        } else {
            Flow::Continue
        }
    })
    .unwrap();
    assert_eq!(g.finish, FinishReason::Cancelled);
    assert!(g.ids.len() < 200);
    assert_eq!(seq.tokens.len(), prompt.len() + g.ids.len());
    assert_eq!(
        seq.state.pos(),
        seq.tokens.len(),
        "state holds exactly the recorded tokens"
    );
}

/// Turn 2's prompt = turn 1's prompt + its answer + more: only the new tokens are processed,
/// and the logits equal a fresh run over the whole prompt.
#[test]
fn a_prompt_extending_the_last_turn_reuses_the_state() {
    let b = demo();
    let prompt = thinking_prompt();
    let mut seq = Sequence::new(&b.model);
    let g1 = generate(b, &mut seq, &prompt, &options(2, 8), &mut |_| {
        Flow::Continue
    })
    .unwrap();
    let mut next = prompt.clone();
    next.extend(&g1.ids);
    next.extend(encode(
        "<|im_end|>\n<|im_start|>user\nAnd 3 + 3?<|im_end|>\n<|im_start|>assistant\n<think>\n",
    ));
    let g2 = generate(b, &mut seq, &next, &options(9, 6), &mut |_| Flow::Continue).unwrap();
    assert_eq!(g2.reused_tokens, prompt.len() + g1.ids.len());
    let fresh = run(&next, &options(9, 6));
    assert_eq!(g2.ids, fresh.ids, "reusing the state changes nothing");
    // A prompt that shares only the first turn's prompt resumes from the prompt snapshot.
    let mut other = prompt.clone();
    other.extend(encode("Something else entirely."));
    let g3 = generate(b, &mut seq, &other, &options(9, 4), &mut |_| Flow::Continue).unwrap();
    assert_eq!(g3.reused_tokens, prompt.len());
    assert_eq!(g3.ids, run(&other, &options(9, 4)).ids);
}

#[test]
fn context_overflow_is_an_error_with_the_numbers() {
    let b = demo();
    let err = generate(
        b,
        &mut Sequence::new(&b.model),
        &[1, 2, 3],
        &options(1, 40_000),
        &mut |_| Flow::Continue,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("3 tokens") && err.contains("40000") && err.contains("32768"),
        "{err}"
    );
}

/// The model's output in thinking mode is `{reasoning}\n</think>\n\n{content}` (the prompt
/// already opened `<think>\n`). Parsed into `reasoning_content` + `content` and re-rendered with
/// `preserve_thinking`, the next prompt's tokens start with prompt + output + `<|im_end|>`.
#[test]
fn preserved_thinking_makes_each_prompt_extend_the_last() {
    let cases = [
        (
            true,
            "The user asks for 2 + 2. That is 4.\n</think>\n\nThe answer is **4**.",
        ),
        (true, "多步推理：先算 2+2。\n</think>\n\n答案是 4 🎉"),
        (false, "The answer is 4."),
    ];
    for (thinking, output) in cases {
        let kwargs = json!({"preserve_thinking": true, "enable_thinking": thinking});
        let mut history = vec![json!({"role": "user", "content": "What is 2 + 2?"})];
        let p1 = render(&Value::Array(history.clone()), kwargs.clone());
        let (prompt1, generated) = (encode(&p1), encode(output));
        let parsed = parse_complete(
            output,
            ParserOptions {
                starts_in_reasoning: p1.ends_with("<think>\n"),
                tools: Vec::new(),
            },
        );
        history.push(json!({"role": "assistant", "content": parsed.content, "reasoning_content": parsed.reasoning}));
        history.push(json!({"role": "user", "content": "And 3 + 3?"}));
        let p2 = render(&Value::Array(history), kwargs);
        assert!(
            p2.starts_with(&format!("{p1}{output}<|im_end|>")),
            "text prefix (thinking {thinking})"
        );
        let mut expected = prompt1.clone();
        expected.extend(&generated);
        expected.extend(encode("<|im_end|>"));
        let prompt2 = encode(&p2);
        assert_eq!(
            &prompt2[..expected.len()],
            expected.as_slice(),
            "token prefix (thinking {thinking})"
        );
    }
}

/// Without `preserve_thinking`, the template drops past reasoning once a new user message
/// arrives, so the history no longer extends the generated tokens (documented in README).
#[test]
fn without_preserve_thinking_the_history_diverges_at_the_reasoning() {
    let output = "Reasoning here.\n</think>\n\nAnswer.";
    let mut history = vec![json!({"role": "user", "content": "Q1"})];
    let p1 = render(&Value::Array(history.clone()), json!({}));
    let parsed = parse_complete(
        output,
        ParserOptions {
            starts_in_reasoning: true,
            tools: Vec::new(),
        },
    );
    history.push(json!({"role": "assistant", "content": parsed.content, "reasoning_content": parsed.reasoning}));
    history.push(json!({"role": "user", "content": "Q2"}));
    let p2 = render(&Value::Array(history), json!({}));
    assert!(!p2.starts_with(&format!("{p1}{output}")));
    assert!(
        p2.starts_with(p1.strip_suffix("<think>\n").unwrap()),
        "the shared prefix ends before <think>"
    );
}
