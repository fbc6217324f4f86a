//! A many-span `step` against separate `forward` calls: the same logits, bit for bit, and the
//! same states afterwards, for a batch that mixes prefill chunks and decode tokens.

mod common;

use qinfer_model::{Qwen35, Rows, Span};

/// The one logits row of each span's output, if it asked for one.
fn logit_rows(outs: Vec<qinfer_model::SpanOutput>) -> Vec<Option<Vec<f32>>> {
    outs.into_iter()
        .map(|o| o.logits.map(|m| m.row(0).to_vec()))
        .collect()
}

/// Runs three sequences (a fresh prompt, a continued prompt chunk, one decode token) as one
/// batch and as separate forwards, then a second step, comparing logits exactly.
fn check(name: &str) {
    let model: Qwen35 = common::load(name);
    let v = model.config.vocab as u32;
    let prompts: Vec<Vec<u32>> = vec![
        (0..7).map(|i| (i * 13 + 5) % v).collect(),
        (0..3).map(|i| (i * 31 + 2) % v).collect(),
        (0..11).map(|i| (i * 7 + 1) % v).collect(),
    ];
    // History already in each state before the batched step.
    let history: Vec<Vec<u32>> = vec![vec![], vec![9 % v, 4 % v], (0..5).collect()];
    let mut separate: Vec<_> = history
        .iter()
        .map(|h| {
            let mut s = model.new_state();
            if !h.is_empty() {
                model.forward(h, &mut s, Rows::Last).unwrap();
            }
            s
        })
        .collect();
    let mut batched = separate.clone();
    let expected: Vec<Vec<f32>> = prompts
        .iter()
        .zip(&mut separate)
        .map(|(p, s)| model.forward(p, s, Rows::Last).unwrap().row(0).to_vec())
        .collect();
    let mut items: Vec<Span<'_>> = prompts
        .iter()
        .zip(&mut batched)
        .map(|(p, s)| Span::tokens(p, s))
        .collect();
    let got = logit_rows(model.step(&mut items).unwrap());
    for (n, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(
            g.as_deref(),
            Some(e.as_slice()),
            "{name}: item {n} logits differ"
        );
    }
    // A decode step for all three, one without logits.
    let next = [3u32, 8, 21];
    let expected: Vec<Vec<f32>> = next
        .iter()
        .zip(&mut separate)
        .map(|(t, s)| model.forward(&[*t], s, Rows::Last).unwrap().row(0).to_vec())
        .collect();
    let mut items: Vec<Span<'_>> = next
        .iter()
        .zip(&mut batched)
        .enumerate()
        .map(|(n, (t, s))| {
            Span::tokens(std::slice::from_ref(t), s).logits(if n != 1 {
                Rows::Last
            } else {
                Rows::None
            })
        })
        .collect();
    let got = logit_rows(model.step(&mut items).unwrap());
    assert_eq!(
        got[0].as_deref(),
        Some(expected[0].as_slice()),
        "{name}: decode item 0"
    );
    assert_eq!(got[1], None, "{name}: logits not asked for");
    assert_eq!(
        got[2].as_deref(),
        Some(expected[2].as_slice()),
        "{name}: decode item 2"
    );
    for (a, b) in separate.iter().zip(&batched) {
        assert_eq!(a.pos(), b.pos());
        assert_eq!(a.layers(), b.layers(), "{name}: states differ");
    }
}

#[test]
fn batched_step_equals_separate_forwards_dense() {
    check("tiny-dense-f32");
}

#[test]
fn batched_step_equals_separate_forwards_moe() {
    check("tiny-moe-f32");
}

#[test]
fn a_bad_item_leaves_every_state_unchanged() {
    let model: Qwen35 = common::load("tiny-dense-f32");
    let mut a = model.new_state();
    let mut b = model.new_state();
    let bad = [model.config.vocab as u32];
    let mut items = [Span::tokens(&[1, 2], &mut a), Span::tokens(&bad, &mut b)];
    assert!(model.step(&mut items).is_err());
    assert_eq!((a.pos(), b.pos()), (0, 0));
}
