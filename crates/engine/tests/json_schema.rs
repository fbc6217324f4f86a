//! JSON Schema constrained decoding (structured outputs) end to end on the built-in demo
//! model: random weights, the real 248K-token Qwen vocabulary. Whatever valid JSON comes out
//! is the constraint's doing (`json_mode.rs` shows the unconstrained model babbles). Answers
//! are checked by the testkit's validator, written from the specification, not by the engine
//! that enforces the schema.

use std::sync::OnceLock;

use qinfer_engine::generate::{
    FinishReason, Flow, GenerateOptions, ModelBundle, Sequence, generate,
};
use qinfer_engine::sampler::SamplingParams;
use qinfer_engine::template::RenderRequest;
use qinfer_testkit::Rng;
use qinfer_testkit::schema::{max_chars, random_schema, validate};
use serde_json::{Value, json};

fn demo() -> &'static ModelBundle {
    static DEMO: OnceLock<ModelBundle> = OnceLock::new();
    DEMO.get_or_init(|| ModelBundle::demo().unwrap())
}

fn prompt(thinking: bool) -> Vec<u32> {
    let kwargs = json!({"enable_thinking": thinking});
    let text = demo()
        .template()
        .unwrap()
        .render(&RenderRequest {
            messages: &json!([{"role": "user", "content": "Answer in JSON."}]),
            tools: None,
            add_generation_prompt: true,
            kwargs: kwargs.as_object().unwrap(),
        })
        .unwrap();
    demo().tokenizer.encode(&text).unwrap()
}

fn options(schema: &Value, seed: u64, max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        json_schema: Some(schema.clone()),
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        max_tokens,
        ..GenerateOptions::default()
    }
}

/// Random schemas, sampled at temperature 1 from a random model: every answer is complete
/// (it ends with the end-of-turn token, not the budget) and valid against its schema.
#[test]
fn sampled_answers_follow_random_schemas() {
    let b = demo();
    let im_end = b.tokenizer.token_id("<|im_end|>").unwrap();
    let p = prompt(false);
    let mut rng = Rng(0x5eed);
    for i in 0..24 {
        let schema = random_schema(&mut rng, 3);
        let opts = options(&schema, i, max_chars(&schema) + 8);
        let g = generate(b, &mut Sequence::new(&b.model), &p, &opts, &mut |_| {
            Flow::Continue
        })
        .unwrap();
        assert_eq!(
            g.finish,
            FinishReason::Stop(im_end),
            "{i}: {schema} → {:?}",
            g.text
        );
        let v: Value = serde_json::from_str(&g.text)
            .unwrap_or_else(|e| panic!("{i}: not JSON ({e}): {:?} for {schema}", g.text));
        validate(&schema, &v).unwrap_or_else(|e| panic!("{i}: {e} for {schema}"));
    }
}

/// With thinking on, the reasoning is free and the answer after `</think>` is constrained.
#[test]
fn reasoning_is_not_constrained() {
    let b = demo();
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
                        "required": ["ok"], "additionalProperties": false});
    let mut opts = options(&schema, 3, 64);
    opts.reasoning_budget = Some(6);
    opts.parser.starts_in_reasoning = true;
    let g = generate(
        b,
        &mut Sequence::new(&b.model),
        &prompt(true),
        &opts,
        &mut |_| Flow::Continue,
    )
    .unwrap();
    assert!(!g.parsed.reasoning.is_empty());
    let v: Value = serde_json::from_str(g.parsed.content.trim())
        .unwrap_or_else(|e| panic!("{e}: {:?}", g.parsed.content));
    validate(&schema, &v).unwrap();
}

/// A schema the engine cannot enforce is an error naming why, before anything runs.
#[test]
fn an_unenforceable_schema_is_an_error() {
    let b = demo();
    for bad in [
        json!({"type": "string", "pattern": "(?<=a)b"}),
        json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
        json!("not a schema"),
    ] {
        let err = generate(
            b,
            &mut Sequence::new(&b.model),
            &prompt(false),
            &options(&bad, 1, 8),
            &mut |_| Flow::Continue,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("cannot be enforced"),
            "{bad}: {err}"
        );
    }
}
