//! The built-in demo model (tools/train_demo.py, shipped as a Q8_0 GGUF) against transformers
//! computing on exactly its weights (tools/demo_reference.py → assets/demo/reference.json):
//! held-out perplexity and a greedy answer; and its MTP head drafting for real: accepted
//! drafts, outputs unchanged.
//!
//! Tolerance: qinfer's exact path (f32 activations against widened Q8_0 blocks) and
//! transformers' float32 differ by float rounding only (~1e-4 on logits), so the mean
//! negative log-likelihood of a window agrees to 1e-3 nats (perplexity to 0.1 %).

mod common;

use qinfer_testkit::json_ids as ids;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use qinfer_engine::engine::SchedulerConfig;
use qinfer_engine::generate::{GenerateOptions, ModelBundle};
use qinfer_engine::sampler::SamplingParams;
use qinfer_engine::speculative::DraftConfig;
use qinfer_model::{Qwen35, Rows, Span};

fn reference() -> &'static serde_json::Value {
    static R: OnceLock<serde_json::Value> = OnceLock::new();
    R.get_or_init(|| {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/demo/reference.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
}

fn exact_demo() -> Qwen35 {
    let cpu = qinfer_cpu::Cpu::from_env().with_precision(qinfer_cpu::MatmulPrecision::Exact);
    qinfer_engine::demo::demo_model()
        .with_backend(Arc::new(cpu))
        .unwrap()
}

/// Summed negative log-likelihood of each next token of `window`, in pieces of 64 positions.
fn window_nll(model: &Qwen35, window: &[u32]) -> f64 {
    let mut state = model.new_state();
    let mut nll = 0.0f64;
    for (i, piece) in window.chunks(64).enumerate() {
        let out = model
            .step(&mut [Span::tokens(piece, &mut state).logits(Rows::All)])
            .unwrap()
            .pop()
            .unwrap();
        let logits = out.logits.unwrap();
        for (j, row) in logits.rows_iter().enumerate() {
            let Some(&next) = window.get(i * 64 + j + 1) else {
                break;
            };
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            nll -= row[next as usize] as f64 - max - sum.ln();
        }
    }
    nll
}

/// Windows checked (of the reference's 8); `QINFER_DEMO_PPL_WINDOWS=8` checks all of them
/// and prints the perplexity.
fn windows() -> usize {
    std::env::var("QINFER_DEMO_PPL_WINDOWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

#[test]
#[allow(clippy::print_stderr, reason = "the perplexity is this test's figure")]
fn demo_perplexity_equals_transformers_on_the_same_weights() {
    let r = reference();
    let model = exact_demo();
    let all = ids(&r["heldout_ids"]);
    let len = r["heldout_window_len"].as_u64().unwrap() as usize;
    let sums: Vec<f64> = r["window_nll_sums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let n = windows().min(sums.len());
    let (mut ours, mut theirs) = (0.0, 0.0);
    for w in 0..n {
        let got = window_nll(&model, &all[w * len..(w + 1) * len]);
        let per = (got - sums[w]).abs() / (len - 1) as f64;
        assert!(per <= 1e-3, "window {w}: mean NLL differs by {per}");
        ours += got;
        theirs += sums[w];
    }
    let tokens = (n * (len - 1)) as f64;
    eprintln!(
        "demo perplexity over {n} windows of {len}: qinfer {:.4}, transformers {:.4}",
        (ours / tokens).exp(),
        (theirs / tokens).exp()
    );
}

#[test]
fn demo_greedy_answer_equals_transformers() {
    let r = reference();
    let model = exact_demo();
    let prompt = ids(&r["greedy_prompt"]);
    let want = ids(&r["greedy_ids"]);
    let mut state = model.new_state();
    let mut logits = model.forward(&prompt, &mut state, Rows::Last).unwrap();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let next = qinfer_engine::sampler::argmax(logits.row(0));
        got.push(next);
        logits = model.forward(&[next], &mut state, Rows::Last).unwrap();
    }
    assert_eq!(got, want, "{}", r["greedy_text"]);
}

/// Chat requests on the demo, greedy and seeded, four at a time: with drafts the ids are
/// those without, and most drafts are accepted (the path where verification keeps tokens).
#[test]
fn demo_drafts_are_accepted_and_change_nothing() {
    let bundle = ModelBundle::demo().unwrap();
    let questions = [
        "What is a list comprehension?",
        "Explain the with statement.",
        "What does the os module do?",
        "Tell me about decorators.",
    ];
    let requests: Vec<(Vec<u32>, GenerateOptions)> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let text = format!(
                "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
            );
            let opts = GenerateOptions {
                sampling: SamplingParams {
                    temperature: if i % 2 == 0 { 0.0 } else { 0.7 },
                    seed: Some(i as u64),
                    ..SamplingParams::default()
                },
                max_tokens: 40,
                ..GenerateOptions::default()
            };
            (bundle.tokenizer.encode(&text).unwrap(), opts)
        })
        .collect();
    let run = |draft: DraftConfig| {
        let mut em = bundle.engine_model();
        em.draft = draft;
        let config = SchedulerConfig {
            max_seqs: 4,
            ..SchedulerConfig::default()
        };
        common::run(em, config, &requests)
    };
    let (plain, _) = run(DraftConfig::none());
    for k in [1, 3] {
        let (spec, c) = run(DraftConfig::mtp(k, true));
        assert_eq!(spec, plain, "draft depth {k}");
        let drafted = c.drafted_tokens.load(std::sync::atomic::Ordering::Relaxed);
        let accepted = c.accepted_tokens.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            accepted * 10 >= drafted * 3 && accepted > 0,
            "depth {k}: {accepted} of {drafted} drafts accepted"
        );
    }
}
