//! JSON-constrained decoding end to end on the built-in demo model: `json_object` (syntax,
//! the hand-written automaton) and `json_schema` (structured outputs, llguidance). Its
//! weights are random, so unconstrained it babbles; whatever JSON comes out is the
//! constraint's doing. Schema answers are checked by the testkit's validator, written from
//! the specification, not by the engine that enforces the schema.

use std::sync::OnceLock;

use qinfer_engine::generate::{
    FinishReason, Flow, GenerateOptions, Generation, ModelBundle, Sequence, generate,
};
use qinfer_engine::parser::ParserOptions;
use qinfer_engine::sampler::SamplingParams;
use qinfer_engine::template::RenderRequest;
use qinfer_testkit::Rng;
use qinfer_testkit::schema::{max_chars, random_schema, validate};
use serde_json::{Map, Value, json};

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
            messages: &json!([{"role": "user", "content": "Give me a JSON object."}]),
            tools: None,
            add_generation_prompt: true,
            kwargs: kwargs.as_object().unwrap(),
        })
        .unwrap();
    assert_eq!(text.ends_with("<think>\n"), thinking);
    demo().tokenizer.encode(&text).unwrap()
}

fn options(json_object: bool, seed: Option<u64>, max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        json_object,
        json_schema: None,
        strict_tools: false,
        single_call: false,
        sampling: SamplingParams {
            temperature: if seed.is_some() { 1.0 } else { 0.0 },
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed,
            ..SamplingParams::default()
        },
        max_tokens,
        ..GenerateOptions::default()
    }
}

fn run(prompt: &[u32], opts: &GenerateOptions) -> Generation {
    let b = demo();
    generate(b, &mut Sequence::new(&b.model), prompt, opts, &mut |_| {
        Flow::Continue
    })
    .unwrap()
}

fn im_end() -> u32 {
    demo().tokenizer.token_id("<|im_end|>").unwrap()
}

fn assert_object(text: &str) {
    serde_json::from_str::<Map<String, Value>>(text.trim())
        .unwrap_or_else(|e| panic!("not a JSON object ({e}): {text:?}"));
}

#[test]
fn unconstrained_demo_output_is_not_json() {
    // The baseline that makes the tests below meaningful.
    let g = run(&prompt(false), &options(false, None, 24));
    assert!(
        serde_json::from_str::<Value>(g.text.trim()).is_err(),
        "{:?}",
        g.text
    );
}

#[test]
fn greedy_and_sampled_answers_are_json_objects_that_stop() {
    let p = prompt(false);
    let mut seeds: Vec<Option<u64>> = vec![None];
    seeds.extend((1..=4).map(Some));
    for seed in seeds {
        let g = run(&p, &options(true, seed, 48));
        assert_object(&g.text);
        assert_eq!(
            g.finish,
            FinishReason::Stop(im_end()),
            "{seed:?}: {:?}",
            g.text
        );
        assert_eq!(g.parsed.content, g.text);
        assert!(g.ids.len() <= 48);
    }
}

#[test]
fn a_tight_budget_is_steered_closed() {
    let p = prompt(false);
    for max_tokens in [2, 3, 5, 9] {
        for seed in [None, Some(11)] {
            let g = run(&p, &options(true, seed, max_tokens));
            assert_object(&g.text);
            assert_eq!(g.finish, FinishReason::Stop(im_end()), "{:?}", g.text);
        }
    }
    // One token cannot hold an object unless the vocabulary has `{}` as one token: either way
    // the output is a valid prefix, and `length` says it may be cut.
    let g = run(&p, &options(true, None, 1));
    assert!(g.text.trim_start().starts_with('{'), "{:?}", g.text);
}

#[test]
fn reasoning_is_free_and_only_the_answer_is_constrained() {
    let p = prompt(true);
    let mut opts = options(true, Some(5), 60);
    opts.reasoning_budget = Some(8);
    opts.parser = ParserOptions {
        starts_in_reasoning: true,
        tools: Vec::new(),
    };
    let g = run(&p, &opts);
    // The forced close of the 8-token think block, then an object.
    assert!(!g.parsed.reasoning.is_empty(), "{:?}", g.text);
    assert!(g.text.contains("</think>"), "{:?}", g.text);
    assert_object(&g.parsed.content);
    assert_eq!(g.finish, FinishReason::Stop(im_end()));
}

fn schema_options(schema: &Value, seed: u64, max_tokens: usize) -> GenerateOptions {
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
        let opts = schema_options(&schema, i, max_chars(&schema) + 8);
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
    let mut opts = schema_options(&schema, 3, 64);
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
            &schema_options(&bad, 1, 8),
            &mut |_| Flow::Continue,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("cannot be enforced"),
            "{bad}: {err}"
        );
    }
}
