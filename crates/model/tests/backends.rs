//! The device seam from outside: whole models on a second backend, added without touching
//! model or engine code. `qinfer_backend::reference::Reference` implements every op of the
//! seam in plain Rust from the trait's definitions alone (it shares no code with the CPU
//! kernels); on it the model must give what transformers and an independent float64 forward
//! give, and everything the engine relies on (rewinds, pieces, batching) must hold as it does
//! on the CPU backend.
//!
//! Tolerance: the golden tests' 1e-3 on logits of up to ±25. The reference backend sums in
//! `f64` and rounds each op's output to `f32`, so it sits close to the float64 forward.
//! Measured on the long prompt: dense 2.9e-5 from float64 and 1.0e-4 from transformers; MoE
//! 1.9e-4 and 4.6e-4 (the CPU backend: 5.9e-4 from float64 — the MoE fixture's
//! ill-conditioning, see `golden.rs`). CPU (exact) against reference over a prefill and two
//! decode steps: BF16 dense 6.4e-5, MoE 2.9e-4, Q8_0 GGUF 1.5e-4.

mod common;

use std::sync::Arc;

use common::*;
use qinfer_backend::reference::Reference;
use qinfer_cache::SequenceState;
use qinfer_model::{Qwen35, Rows, Span};

const F32: [&str; 2] = ["tiny-dense-f32", "tiny-moe-f32"];
const LOGIT_TOL: f32 = 1e-3;

fn on_reference(model: Qwen35) -> Qwen35 {
    model.with_backend(Arc::new(Reference)).unwrap()
}

/// Logits of the long prompt (157 positions: several DeltaNet chunks, attention over them)
/// against the float64 forward and against transformers, and greedy ids against transformers.
#[test]
fn a_model_on_the_reference_backend_matches_the_references() {
    for name in F32 {
        let model = on_reference(load(name));
        assert_eq!(model.backend().describe(), "reference");
        let r = reference(name);
        let prompt = ids(&r["long_prompt"]);
        let got = model
            .forward(&prompt, &mut model.new_state(), Rows::All)
            .unwrap();
        for file in ["logits_long_f64.npy", "logits_long.npy"] {
            let (_, want) = npy(name, file);
            let (d, pos, tok) = max_diff(&got.data, &want, got.cols);
            assert!(
                d <= LOGIT_TOL,
                "{name} {file}: max |Δlogit| {d} at position {pos}, token {tok}"
            );
        }
        let want = ids(&r["greedy_ids"]);
        let got = greedy(&model, &ids(&r["greedy_prompt"]), want.len());
        assert_eq!(got, want, "{name}: greedy ids on the reference backend");
    }
}

/// The same model on the CPU backend (exact mode) and on the reference backend, through a
/// prefill and decode steps: within the bound at every position, for f32, BF16 and Q8_0
/// weights (the backends widen the same stored values).
#[test]
fn the_cpu_and_reference_backends_agree() {
    let models = [
        ("tiny-dense-bf16", load("tiny-dense-bf16")),
        ("tiny-moe-f32", load("tiny-moe-f32")),
        (
            "tiny-dense-q8_0.gguf",
            Qwen35::load_gguf(&fixture("gguf").join("tiny-dense-q8_0.gguf")).unwrap(),
        ),
    ];
    for (name, model) in models {
        let cpu = exact(model.clone());
        let re = on_reference(model);
        let prompt = qinfer_model::pseudo_random_tokens(70, cpu.config.vocab as u32, 7);
        let (mut a, mut b) = (cpu.new_state(), re.new_state());
        for (i, piece) in [&prompt[..66], &prompt[66..67], &prompt[67..]]
            .iter()
            .enumerate()
        {
            let x = cpu.forward(piece, &mut a, Rows::All).unwrap();
            let y = re.forward(piece, &mut b, Rows::All).unwrap();
            let (d, pos, _) = max_diff(&x.data, &y.data, x.cols);
            assert!(d <= LOGIT_TOL, "{name} piece {i}: |Δlogit| {d} at {pos}");
        }
    }
}

/// Rewinding a kept step composes with any backend: on the reference backend too, a step of
/// `k` positions that keeps its states, rewound to `j`, is bit for bit `j` one-token steps.
#[test]
fn rewinds_hold_on_the_reference_backend() {
    let model = on_reference(load("tiny-moe-f32"));
    let history = qinfer_model::pseudo_random_tokens(20, model.config.vocab as u32, 1);
    let draft = [5u32, 9, 2, 7];
    let mut base = model.new_state();
    model.prefill(&history, &mut base, Rows::Last).unwrap();
    let mut one = base.clone();
    let mut states: Vec<SequenceState> = Vec::new();
    for &t in &draft {
        model.forward(&[t], &mut one, Rows::Last).unwrap();
        states.push(one.clone());
    }
    let mut kept = base.clone();
    model
        .step(&mut [Span::tokens(&draft, &mut kept).keep_states(true)])
        .unwrap();
    for j in (1..=draft.len()).rev() {
        model.rewind(&mut kept, base.pos() + j).unwrap();
        assert_eq!(
            format!("{:?}", kept.layers()),
            format!("{:?}", states[j - 1].layers()),
            "state at j = {j}"
        );
    }
}
