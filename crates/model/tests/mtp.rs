//! The MTP head against the PyTorch reference of the block (tools/qwen35_mtp.py, run by
//! tools/make_mtp_reference.py on the tiny dense fixtures).
//!
//! Tolerance 1e-3 on logits (|logit| up to ~20): the fixtures' F32 path computes in f32 like
//! the reference; BF16 weights are widened exactly, so the same bound holds.

mod common;

use common::*;
use qinfer_model::{MtpSpan, Qwen35, Rows, Span};
use qinfer_tensor::Mat;

const TOL: f32 = 1e-3;

/// Logits of the reference's n + 1 MTP slots, computed the way the engine drafts: the
/// prompt's slots and the first draft slot in one MTP step, the second draft slot in another.
fn mtp_logits(model: &Qwen35, prompt: &[u32]) -> (Vec<f32>, [u32; 2]) {
    let mut state = model.new_state();
    let out = model
        .step(&mut [Span::tokens(prompt, &mut state)
            .logits(Rows::Last)
            .hidden(Rows::All)])
        .unwrap()
        .pop()
        .unwrap();
    let g1 = argmax(out.logits.as_ref().unwrap().row(0));
    let hidden = out.hidden.unwrap();
    let mut tokens = prompt[1..].to_vec();
    tokens.push(g1);
    let mut mtp_state = model.new_mtp_state();
    let first = model
        .mtp_step(&mut [MtpSpan {
            hidden: &hidden,
            tokens: &tokens,
            start: 0,
            state: &mut mtp_state,
            logits: Rows::All,
            draft_vocab: false,
        }])
        .unwrap()
        .pop()
        .unwrap();
    let logits = first.logits.unwrap();
    let d2 = argmax(logits.row(logits.rows - 1));
    let second = model
        .mtp_step(&mut [MtpSpan {
            hidden: &first.hidden,
            tokens: &[d2],
            start: prompt.len(),
            state: &mut mtp_state,
            logits: Rows::Last,
            draft_vocab: false,
        }])
        .unwrap()
        .pop()
        .unwrap();
    let mut all = logits.data;
    all.extend_from_slice(&second.logits.unwrap().data);
    (all, [g1, d2])
}

fn check(name: &str) {
    check_model(name, load_exact(name));
}

fn check_model(name: &str, model: Qwen35) {
    assert!(model.has_mtp(), "{name} has an MTP head");
    assert!(model.extras.mtp.is_empty(), "MTP tensors are consumed");
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(name).join("mtp_reference.json")).unwrap(),
    )
    .unwrap();
    let prompt = ids(&r["prompt"]);
    let (shape, want) = npy(name, "mtp_logits.npy");
    let (got, [g1, d2]) = mtp_logits(&model, &prompt);
    assert_eq!(g1 as u64, r["greedy_next"].as_u64().unwrap());
    assert_eq!(d2, ids(&r["slot_tokens"])[prompt.len()]);
    let (d, row, col) = max_diff(&got, &want, shape[1]);
    assert!(
        d <= TOL,
        "{name}: MTP logits differ by {d} at slot {row}, token {col}"
    );
}

#[test]
fn mtp_logits_match_the_pytorch_reference_f32() {
    check("tiny-dense-f32");
}

#[test]
fn mtp_logits_match_the_pytorch_reference_bf16() {
    check("tiny-dense-bf16");
}

/// llama.cpp's converter writes the head as `blk.8.nextn.*` (+1 on its norms, `eh_proj`).
#[test]
fn mtp_logits_match_the_pytorch_reference_through_llama_cpp_gguf() {
    let path = fixture("gguf/tiny-dense-f32.gguf");
    check_model("tiny-dense-f32", exact(Qwen35::load_gguf(&path).unwrap()));
}

#[test]
fn a_draft_vocabulary_gives_the_same_logits_on_its_rows() {
    let mut model = load_exact("tiny-dense-f32");
    let prompt = ids(&reference("tiny-dense-f32")["short_prompt"]);
    let mut state = model.new_state();
    let hidden = model
        .step(&mut [Span::tokens(&prompt, &mut state).hidden(Rows::Last)])
        .unwrap()
        .pop()
        .unwrap()
        .hidden
        .unwrap();
    let run = |model: &Qwen35, draft: bool| {
        let mut s = model.new_mtp_state();
        model
            .mtp_step(&mut [MtpSpan {
                hidden: &hidden,
                tokens: &[7],
                start: prompt.len() - 1,
                state: &mut s,
                logits: Rows::Last,
                draft_vocab: draft,
            }])
            .unwrap()
            .pop()
            .unwrap()
            .logits
            .unwrap()
    };
    let full: Mat = run(&model, false);
    let sub = [300u32, 5, 17, 0];
    model.set_draft_vocab(&sub).unwrap();
    let part = run(&model, true);
    assert_eq!(part.cols, sub.len());
    for (i, &t) in sub.iter().enumerate() {
        assert_eq!(part.data[i], full.data[t as usize]);
        assert_eq!(model.draft_token(i), t);
    }
    assert!(
        model.set_draft_vocab(&[320]).is_err(),
        "ids past the vocabulary"
    );
    assert!(model.set_draft_vocab(&[]).is_err());
}

#[test]
fn a_model_without_mtp_tensors_has_no_head() {
    let model = load("tiny-moe-f32");
    assert!(!model.has_mtp());
    let mut s = model.new_mtp_state();
    let h = Mat::zeros(1, model.config.hidden);
    let err = model
        .mtp_step(&mut [MtpSpan {
            hidden: &h,
            tokens: &[1],
            start: 0,
            state: &mut s,
            logits: Rows::Last,
            draft_vocab: false,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("no MTP head"), "{err}");
}
