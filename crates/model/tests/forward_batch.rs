//! `forward_batch` against separate `forward` calls: the same logits, bit for bit, and the
//! same states afterwards, for a batch that mixes prefill chunks and decode tokens.

mod common;

use qinfer_model::{BatchItem, LogitsFor, Qwen35};

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
                model.forward(h, &mut s, LogitsFor::Last).unwrap();
            }
            s
        })
        .collect();
    let mut batched = separate.clone();
    let expected: Vec<Vec<f32>> = prompts
        .iter()
        .zip(&mut separate)
        .map(|(p, s)| {
            model
                .forward(p, s, LogitsFor::Last)
                .unwrap()
                .row(0)
                .to_vec()
        })
        .collect();
    let mut items: Vec<BatchItem<'_>> = prompts
        .iter()
        .zip(&mut batched)
        .map(|(p, s)| BatchItem {
            tokens: p,
            state: s,
            logits: true,
        })
        .collect();
    let got = model.forward_batch(&mut items).unwrap();
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
        .map(|(t, s)| {
            model
                .forward(&[*t], s, LogitsFor::Last)
                .unwrap()
                .row(0)
                .to_vec()
        })
        .collect();
    let mut items: Vec<BatchItem<'_>> = next
        .iter()
        .zip(&mut batched)
        .enumerate()
        .map(|(n, (t, s))| BatchItem {
            tokens: std::slice::from_ref(t),
            state: s,
            logits: n != 1,
        })
        .collect();
    let got = model.forward_batch(&mut items).unwrap();
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
        assert_eq!(
            format!("{:?}", a.layers()),
            format!("{:?}", b.layers()),
            "{name}: states differ"
        );
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
    let mut items = [
        BatchItem {
            tokens: &[1, 2],
            state: &mut a,
            logits: true,
        },
        BatchItem {
            tokens: &bad,
            state: &mut b,
            logits: true,
        },
    ];
    assert!(model.forward_batch(&mut items).is_err());
    assert_eq!((a.pos(), b.pos()), (0, 0));
}
