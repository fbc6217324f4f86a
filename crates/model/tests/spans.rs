//! The one forward loop, `Qwen35::step`, through what a span can ask of it: supplied embedding
//! rows, explicit positions, hidden states, and per-position states kept for a rewind. Run on
//! the tiny fixtures (dense and MoE, f32 and bf16).

mod common;

use common::*;
use qinfer_cache::{KvType, RewindError, SequenceState};
use qinfer_model::{
    DeltaNetPath, ForwardError, MAX_KEPT_POSITIONS, Position3, Qwen35, Rows, Span, text_position,
};
use qinfer_tensor::Mat;

const MODELS: [&str; 3] = ["tiny-dense-f32", "tiny-moe-f32", "tiny-dense-bf16"];

/// Every layer's state, exactly (KV rows gathered, DeltaNet conv and recurrent state).
fn same_state(a: &SequenceState, b: &SequenceState) -> bool {
    a.pos() == b.pos() && a.layers() == b.layers()
}

fn prompt(model: &Qwen35, n: usize) -> Vec<u32> {
    qinfer_model::pseudo_random_tokens(n, model.config.vocab as u32, 0x5eed)
}

/// A step of `k` positions that keeps its states equals `k` one-token steps bit for bit: the
/// logits of every position, and, after a rewind to any `j ≤ k`, the whole state and the
/// logits of the next token fed from there. With an f32 and a Q8_0 KV cache (whose truncation
/// the rewind composes with).
#[test]
fn a_kept_step_rewinds_to_the_state_of_one_token_steps() {
    let cases = MODELS
        .iter()
        .map(|&n| (n, KvType::F32))
        .chain([("tiny-dense-f32", KvType::Q8_0)]);
    for (name, kv) in cases {
        let mut model = load(name);
        model.set_kv_type(kv);
        let history = prompt(&model, 70); // a full KV block and a tail before the step
        let draft: Vec<u32> = prompt(&model, 75)[70..].to_vec();
        let k = draft.len();
        let mut base = model.new_state();
        model.prefill(&history, &mut base, Rows::Last).unwrap();

        // One token at a time: the state and logits after each.
        let mut one = base.clone();
        let mut states = Vec::new();
        let mut logits = Vec::new();
        for &t in &draft {
            logits.push(model.forward(&[t], &mut one, Rows::Last).unwrap().data);
            states.push(one.clone());
        }

        let mut kept = base.clone();
        let out = model
            .step(&mut [Span::tokens(&draft, &mut kept)
                .logits(Rows::All)
                .keep_states(true)])
            .unwrap();
        let all = out[0].logits.as_ref().unwrap();
        for j in 0..k {
            assert_eq!(all.row(j), &logits[j][..], "{name}: logits of position {j}");
        }
        assert!(
            same_state(&kept, &states[k - 1]),
            "{name}: state after the step"
        );

        // Rewind to every j, latest first (kept states stay usable), then continue.
        let next = 3u32;
        for j in (1..=k).rev() {
            let mut s = kept.clone();
            model.rewind(&mut s, base.pos() + j).unwrap();
            assert!(same_state(&s, &states[j - 1]), "{name}: state at j = {j}");
            let mut reference = states[j - 1].clone();
            let a = model.forward(&[next], &mut s, Rows::Last).unwrap();
            let b = model.forward(&[next], &mut reference, Rows::Last).unwrap();
            assert_eq!(
                a.data, b.data,
                "{name}: next token after a rewind to j = {j}"
            );
            assert!(
                same_state(&s, &reference),
                "{name}: state after j = {j} + 1"
            );
            model.rewind(&mut kept, base.pos() + j).unwrap();
            assert!(
                same_state(&kept, &states[j - 1]),
                "{name}: stepwise rewind to {j}"
            );
        }
    }
}

/// What cannot be rewound is a clear error that changes nothing.
#[test]
fn rewinds_outside_the_kept_step_are_errors() {
    let model = load("tiny-dense-f32");
    let mut s = model.new_state();
    model.forward(&[1, 2, 3], &mut s, Rows::Last).unwrap();
    let before = s.clone();
    // Nothing kept: only the current position is reachable.
    assert!(matches!(
        model.rewind(&mut s, 2),
        Err(ForwardError::Rewind(RewindError::NotKept { .. }))
    ));
    model.rewind(&mut s, 3).unwrap();
    model
        .step(&mut [Span::tokens(&[4, 5], &mut s).keep_states(true)])
        .unwrap();
    // The step's start was not kept (a whole step is undone with a snapshot), nor the future.
    for to in [2, 3, 6] {
        let err = model.rewind(&mut s, to).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot rewind to position {to}: the sequence is at 5 and can return only to \
                 positions 4..=5 of its last step that kept them (keep_states)"
            )
        );
    }
    model.rewind(&mut s, 4).unwrap();
    assert!(same_state(&s, &{
        let mut b = before.clone();
        model.forward(&[4], &mut b, Rows::Last).unwrap();
        b
    }));
    // Any later step forgets the kept states.
    model.forward(&[6], &mut s, Rows::Last).unwrap();
    assert!(model.rewind(&mut s, 4).is_err());
    // A state of another layer layout (same layer count, kinds swapped) is refused.
    let mut specs = model.state_specs();
    specs.reverse();
    let mut other = SequenceState::new(&specs);
    assert_eq!(
        model.rewind(&mut other, 1),
        Err(ForwardError::StateMismatch)
    );
    // Too long a kept step is refused before it touches the state.
    let long = vec![1u32; MAX_KEPT_POSITIONS + 1];
    let at = s.clone();
    let err = model
        .step(&mut [Span::tokens(&long, &mut s).keep_states(true)])
        .unwrap_err();
    assert_eq!(
        err,
        ForwardError::TooManyKept {
            got: MAX_KEPT_POSITIONS + 1,
            max: MAX_KEPT_POSITIONS
        }
    );
    assert!(same_state(&s, &at));
}

/// Embedding rows supplied by the caller give the logits and state of the ids they were
/// looked up from, bit for bit, in a fresh sequence and continuing one.
#[test]
fn supplied_embeddings_equal_their_ids() {
    for name in MODELS {
        let model = load(name);
        let ids = prompt(&model, 40);
        let mut rows = Mat::zeros(ids.len(), model.config.hidden);
        for (row, &id) in rows.rows_iter_mut().zip(&ids) {
            qinfer_cpu::ops::embedding(&model.embed, id as usize, row);
        }
        let (mut a, mut b) = (model.new_state(), model.new_state());
        let from_ids = model.forward(&ids, &mut a, Rows::All).unwrap();
        let out = model
            .step(&mut [Span::embeddings(&rows, &mut b).logits(Rows::All)])
            .unwrap();
        assert_eq!(
            out[0].logits.as_ref().unwrap().data,
            from_ids.data,
            "{name}"
        );
        assert!(same_state(&a, &b), "{name}: states");
        // Continuing: the last 10 rows after 30 ids, against the same cut fed as ids (the
        // chunked delta rule's chunks start where a step starts).
        let (mut c, mut d) = (model.new_state(), model.new_state());
        model.forward(&ids[..30], &mut c, Rows::Last).unwrap();
        model.forward(&ids[..30], &mut d, Rows::Last).unwrap();
        let want = model.forward(&ids[30..], &mut d, Rows::All).unwrap();
        let tail = rows.rows_range(30, 40);
        let out = model
            .step(&mut [Span::embeddings(&tail, &mut c).logits(Rows::All)])
            .unwrap();
        assert_eq!(
            out[0].logits.as_ref().unwrap().data,
            want.data,
            "{name}: continued"
        );
        assert!(same_state(&c, &d), "{name}: continued states");
    }
}

/// Explicit positions equal to the text defaults give identical logits; other positions give
/// other logits (the positions reach RoPE). Image tokens will carry (t, h, w) positions.
#[test]
fn explicit_positions_equal_to_the_defaults_change_nothing() {
    for name in MODELS {
        let model = load(name);
        let ids = prompt(&model, 12);
        let (mut a, mut b, mut c) = (model.new_state(), model.new_state(), model.new_state());
        model.forward(&ids[..5], &mut a, Rows::Last).unwrap();
        model.forward(&ids[..5], &mut b, Rows::Last).unwrap();
        model.forward(&ids[..5], &mut c, Rows::Last).unwrap();
        let default = model.forward(&ids[5..], &mut a, Rows::All).unwrap();
        let same: Vec<Position3> = (5..12).map(text_position).collect();
        let out = model
            .step(&mut [Span::tokens(&ids[5..], &mut b)
                .positions(&same)
                .logits(Rows::All)])
            .unwrap();
        assert_eq!(out[0].logits.as_ref().unwrap().data, default.data, "{name}");
        assert!(same_state(&a, &b), "{name}: states");
        let moved: Vec<Position3> = (5..12).map(|p| [p, p + 2, p + 4]).collect();
        let out = model
            .step(&mut [Span::tokens(&ids[5..], &mut c)
                .positions(&moved)
                .logits(Rows::All)])
            .unwrap();
        assert_ne!(out[0].logits.as_ref().unwrap().data, default.data, "{name}");
    }
}

/// The hidden rows a span asks for are transformers' `last_hidden_state` (after the final
/// norm; tolerance as in the golden tests, 1e-4 of the largest value), and asking for them
/// changes no logit.
#[test]
fn hidden_rows_are_the_reference_last_hidden_state() {
    for name in ["tiny-dense-f32", "tiny-moe-f32"] {
        let model = load(name);
        let prompt = ids(&reference(name)["short_prompt"]);
        let (shape, want) = npy(name, "hidden_short.npy");
        let (t, h) = (prompt.len(), model.config.hidden);
        let last = &want[(shape[0] - 1) * t * h..];
        let (mut a, mut b) = (model.new_state(), model.new_state());
        let out = model
            .step(&mut [Span::tokens(&prompt, &mut a)
                .logits(Rows::Last)
                .hidden(Rows::All)])
            .unwrap();
        let hidden = out[0].hidden.as_ref().unwrap();
        assert_eq!((hidden.rows, hidden.cols), (t, h));
        let scale = last.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let (d, pos, ch) = max_diff(&hidden.data, last, h);
        assert!(d <= 1e-4 * scale, "{name}: |Δ| {d} at {pos}, {ch}");
        let plain = model.forward(&prompt, &mut b, Rows::Last).unwrap();
        assert_eq!(out[0].logits.as_ref().unwrap().data, plain.data, "{name}");
        // Only the last row, without logits.
        let mut c = model.new_state();
        let out = model
            .step(&mut [Span::tokens(&prompt, &mut c)
                .logits(Rows::None)
                .hidden(Rows::Last)])
            .unwrap();
        assert!(out[0].logits.is_none());
        assert_eq!(out[0].hidden.as_ref().unwrap().data, hidden.row(t - 1));
    }
}

/// One step mixing a long prefill (two pieces), a kept draft, supplied embeddings and a decode
/// token gives each span what it gets alone.
#[test]
fn a_mixed_step_equals_each_span_alone() {
    for name in MODELS {
        let model = load(name);
        let long = prompt(&model, qinfer_model::MAX_PIECE_TOKENS + 20);
        let short = prompt(&model, 9);
        let mut rows = Mat::zeros(4, model.config.hidden);
        for (row, &id) in rows.rows_iter_mut().zip(&short[..4]) {
            qinfer_cpu::ops::embedding(&model.embed, id as usize, row);
        }
        let mut fresh: Vec<SequenceState> = (0..4).map(|_| model.new_state()).collect();
        for s in &mut fresh[1..] {
            model.forward(&short, s, Rows::Last).unwrap();
        }
        let spans = |s: &mut [SequenceState]| -> Vec<Vec<f32>> {
            let [a, b, c, d] = s else { unreachable!() };
            let mut v = vec![
                Span::tokens(&long, a)
                    .logits(Rows::All)
                    .delta_rule(DeltaNetPath::Chunked),
                Span::tokens(&short[2..6], b)
                    .logits(Rows::All)
                    .keep_states(true),
                Span::embeddings(&rows, c).hidden(Rows::Last),
                Span::tokens(&short[..1], d),
            ];
            let outs = model.step(&mut v).unwrap();
            outs.into_iter()
                .flat_map(|o| [o.logits, o.hidden])
                .flatten()
                .map(|m| m.data)
                .collect()
        };
        let mut together = fresh.clone();
        let got = spans(&mut together);
        let mut alone = Vec::new();
        for i in 0..4 {
            // Span i alone in its step.
            let mut one = fresh[i].clone();
            let span = match i {
                0 => Span::tokens(&long, &mut one)
                    .logits(Rows::All)
                    .delta_rule(DeltaNetPath::Chunked),
                1 => Span::tokens(&short[2..6], &mut one)
                    .logits(Rows::All)
                    .keep_states(true),
                2 => Span::embeddings(&rows, &mut one).hidden(Rows::Last),
                _ => Span::tokens(&short[..1], &mut one),
            };
            let o = model.step(&mut [span]).unwrap().remove(0);
            alone.extend([o.logits, o.hidden].into_iter().flatten().map(|m| m.data));
            assert!(same_state(&one, &together[i]), "{name}: span {i} state");
        }
        assert_eq!(got.len(), 5);
        assert_eq!(got, alone, "{name}");
    }
}

/// Malformed spans are errors that leave every state of the step unchanged.
#[test]
fn bad_spans_are_errors() {
    let model = load("tiny-dense-f32");
    let (mut a, mut b) = (model.new_state(), model.new_state());
    let narrow = Mat::zeros(2, model.config.hidden - 1);
    let err = model
        .step(&mut [
            Span::tokens(&[1, 2], &mut a),
            Span::embeddings(&narrow, &mut b),
        ])
        .unwrap_err();
    assert_eq!(
        err,
        ForwardError::EmbeddingWidth {
            got: model.config.hidden - 1,
            hidden: model.config.hidden
        }
    );
    let one = [text_position(0)];
    let err = model
        .step(&mut [Span::tokens(&[1, 2], &mut a).positions(&one)])
        .unwrap_err();
    assert_eq!(err, ForwardError::PositionCount { got: 1, rows: 2 });
    assert_eq!(err.to_string(), "1 positions given for 2 input rows");
    assert_eq!((a.pos(), b.pos()), (0, 0));
}
