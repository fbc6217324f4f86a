//! The vision tower and prompts with images against transformers (`tests/fixtures/tiny-vl-f32`,
//! made by `tools/make_tiny_vl_model.py`): the tower's merged output per image, the mRoPE
//! positions of prompts with one and two images, their logits at every position, and greedy
//! decoding after them (decode positions offset by the prompt's `rope_delta`).
//!
//! Tolerances: the tower's output within 1e-4 (values of order 1; transformers' own sdpa and
//! eager paths differ by 1e-6 there, a float64 NumPy tower by 3e-6), logits within the golden
//! tests' 1e-3 (values up to ±25), positions and ids exact.

mod common;

use std::sync::Arc;

use common::*;
use qinfer_backend::reference::Reference;
use qinfer_model::{ImagePlacement, Position3, Qwen35, Rows, Span, SpanInput, mrope_positions};
use qinfer_tensor::Mat;

const VL: &str = "tiny-vl-f32";
const TOWER_TOL: f32 = 1e-4;
const LOGIT_TOL: f32 = 1e-3;

fn mat(file: &str) -> Mat {
    let (shape, data) = npy(VL, file);
    Mat::from_vec(data, shape[0], shape[1])
}

fn grid(r: &serde_json::Value, key: &str) -> [usize; 3] {
    let g = ids(&r[key]);
    [g[0] as usize, g[1] as usize, g[2] as usize]
}

/// The patches and grid of image `name` (`a` or `b`), as transformers' processor made them.
fn image(r: &serde_json::Value, name: &str) -> (Mat, [usize; 3]) {
    (
        mat(&format!("pixel_values_{name}.npy")),
        grid(r, &format!("grid_thw_{name}")),
    )
}

fn check_tower(model: &Qwen35, what: &str) {
    let r = reference(VL);
    for name in ["a", "b"] {
        let (pixels, g) = image(&r, name);
        let got = model.encode_image(&pixels, g).unwrap();
        let want = mat(&format!("vision_{name}.npy"));
        assert_eq!(
            (got.rows, got.cols),
            (want.rows, want.cols),
            "{what} {name}"
        );
        let (d, row, col) = max_diff(&got.data, &want.data, want.cols);
        assert!(d < TOWER_TOL, "{what} image {name}: {d} at ({row}, {col})");
    }
}

#[test]
fn the_tower_matches_transformers_on_both_backends() {
    let model = load_exact(VL);
    assert!(model.vision.is_some(), "the tower loads");
    check_tower(&model, "cpu");
    check_tower(
        &model.clone().with_backend(Arc::new(Reference)).unwrap(),
        "reference",
    );
    if let Some(g) = on_gpu(model) {
        check_tower(&g, "gpu");
    }
}

/// `model` on the GPU backend (lavapipe in CI); `None`, saying so, where no adapter exists.
fn on_gpu(model: Qwen35) -> Option<Qwen35> {
    match qinfer_gpu::Gpu::open(qinfer_gpu::Pick::Best) {
        Ok(g) => Some(model.with_backend(Arc::new(g)).unwrap()),
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("SKIPPED: the GPU part: {e}");
            }
            None
        }
    }
}

/// A prompt of the fixture with its images placed at their pad tokens.
struct Prompt {
    ids: Vec<u32>,
    /// `(start, embeddings)` per image.
    images: Vec<(usize, Mat)>,
    positions: Vec<Position3>,
    delta: i64,
}

fn prompt(model: &Qwen35, key: &str) -> Prompt {
    let r = reference(VL);
    let ids_ = ids(&r[key]);
    let pad = model.vision.as_ref().unwrap().config.image_token;
    let merge = model.vision.as_ref().unwrap().config.merge;
    let mut images = Vec::new();
    let mut placements = Vec::new();
    let mut i = 0;
    for name in r[format!("{key}_images")].as_array().unwrap() {
        let (pixels, g) = image(&r, name.as_str().unwrap());
        while ids_[i] != pad {
            i += 1;
        }
        placements.push(ImagePlacement { start: i, grid: g });
        let emb = model.encode_image(&pixels, g).unwrap();
        i += emb.rows;
        images.push((placements.last().unwrap().start, emb));
    }
    let (positions, delta) = mrope_positions(ids_.len(), &placements, merge).unwrap();
    Prompt {
        ids: ids_,
        images,
        positions,
        delta,
    }
}

#[test]
fn positions_are_those_of_get_rope_index() {
    let model = load_exact(VL);
    let r = reference(VL);
    for (key, n) in [("one", "prompt_one"), ("two", "prompt_two")] {
        let p = prompt(&model, n);
        let want = r[format!("positions_{key}")].as_array().unwrap();
        for (s, stream) in want.iter().enumerate() {
            let got: Vec<u32> = p.positions.iter().map(|x| x[s]).collect();
            assert_eq!(got, ids(stream), "{key}: stream {s}");
        }
        assert_eq!(
            p.delta,
            r[format!("rope_delta_{key}")].as_i64().unwrap(),
            "{key}"
        );
    }
}

/// The prompt indices of every image token and their rows, for [`SpanInput::Spliced`].
fn spliced(model: &Qwen35, p: &Prompt) -> (Vec<usize>, Mat) {
    let at: Vec<usize> = p.images.iter().flat_map(|(s, m)| *s..s + m.rows).collect();
    let rows = Mat::from_vec(
        p.images.iter().flat_map(|(_, m)| m.data.clone()).collect(),
        at.len(),
        model.config.hidden,
    );
    (at, rows)
}

/// Every position's logits of `prompt`, the images spliced in, in one step or (`pieces`)
/// a step per piece of 5 rows.
fn logits(model: &Qwen35, p: &Prompt, pieces: bool) -> Mat {
    let (at, rows) = spliced(model, p);
    let mut state = model.new_state();
    let step = if pieces { 5 } else { p.ids.len() };
    let mut out = Vec::new();
    for lo in (0..p.ids.len()).step_by(step) {
        let hi = (lo + step).min(p.ids.len());
        let a: Vec<usize> = at
            .iter()
            .filter(|&&r| (lo..hi).contains(&r))
            .map(|r| r - lo)
            .collect();
        let first = at.partition_point(|&r| r < lo);
        let sub = rows.rows_range(first, first + a.len());
        let mut spans = [Span {
            input: SpanInput::Spliced {
                tokens: &p.ids[lo..hi],
                at: &a,
                rows: &sub,
            },
            ..Span::tokens(&[], &mut state)
        }
        .positions(&p.positions[lo..hi])
        .logits(Rows::All)];
        let o = model.step(&mut spans).unwrap();
        out.extend(o[0].logits.as_ref().unwrap().data.clone());
    }
    Mat::from_vec(out, p.ids.len(), model.config.vocab)
}

#[test]
fn logits_of_prompts_with_images_match_transformers() {
    let cpu = load_exact(VL);
    let gpu = on_gpu(load(VL));
    for model in std::iter::once(&cpu).chain(gpu.as_ref()) {
        prompts_match(model);
    }
}

fn prompts_match(model: &Qwen35) {
    for (key, file) in [
        ("prompt_one", "logits_one.npy"),
        ("prompt_two", "logits_two.npy"),
    ] {
        let p = prompt(model, key);
        let want = mat(file);
        for pieces in [false, true] {
            let got = logits(model, &p, pieces);
            let (d, row, col) = max_diff(&got.data, &want.data, want.cols);
            assert!(
                d < LOGIT_TOL,
                "{key} (pieces {pieces}): {d} at ({row}, {col})"
            );
        }
    }
}

#[test]
fn greedy_decoding_after_two_images_matches_transformers() {
    let model = load_exact(VL);
    let r = reference(VL);
    let p = prompt(&model, "prompt_two");
    let want_logits = mat("greedy_logits_two.npy");
    let all = logits(&model, &p, false);
    // Decode from a state that took the prompt with its images.
    let (at, rows) = spliced(&model, &p);
    let mut state = model.new_state();
    let mut spans = [Span {
        input: SpanInput::Spliced {
            tokens: &p.ids,
            at: &at,
            rows: &rows,
        },
        ..Span::tokens(&[], &mut state)
    }
    .positions(&p.positions)];
    let first = model.step(&mut spans).unwrap()[0].logits.clone().unwrap();
    assert_eq!(
        first.row(0),
        all.row(p.ids.len() - 1),
        "the last row, bit for bit"
    );
    let mut logits = first;
    let mut got = Vec::new();
    for step in 0..8 {
        let (d, _, col) = max_diff(logits.row(0), want_logits.row(step), want_logits.cols);
        assert!(d < LOGIT_TOL, "step {step}: {d} at {col}");
        let next = argmax(logits.row(0));
        got.push(next);
        let pos = u32::try_from(state.pos() as i64 + p.delta).unwrap();
        let position = [[pos, pos, pos]];
        let token = [next];
        let mut spans = [Span::tokens(&token, &mut state).positions(&position)];
        logits = model.step(&mut spans).unwrap()[0].logits.clone().unwrap();
    }
    assert_eq!(got, ids(&r["greedy_two"]));
}

/// A text-only prompt ignores the tower entirely, and bad splices are refused before any state
/// changes.
#[test]
fn bad_splices_are_refused() {
    let model = load_exact(VL);
    let mut state = model.new_state();
    let rows = Mat::zeros(2, model.config.hidden);
    for at in [&[3usize, 1][..], &[0, 9], &[0]] {
        let mut spans = [Span {
            input: SpanInput::Spliced {
                tokens: &[5, 6, 7],
                at,
                rows: &rows,
            },
            ..Span::tokens(&[], &mut state)
        }];
        assert!(model.step(&mut spans).is_err(), "{at:?}");
    }
    assert_eq!(state.pos(), 0);
    let narrow = Mat::zeros(1, 3);
    assert!(model.encode_image(&narrow, [1, 2, 2]).is_err());
    assert!(model.encode_image(&narrow, [1, 3, 2]).is_err());
}

/// The same tower read from llama.cpp's `mmproj` GGUF of the fixture
/// (`tools/make_mmproj_fixture.sh`: llama.cpp's own converter, F32): the patch kernel comes as
/// one kernel per frame, every other tensor as in the checkpoint. Encoder outputs and the
/// logits of the two-image prompt meet the same tolerances against transformers.
#[test]
fn the_tower_from_an_mmproj_gguf_matches_transformers() {
    let mut model = load_exact(VL);
    let image_token = model.vision.as_ref().unwrap().config.image_token;
    model.vision = None;
    let file =
        qinfer_formats::gguf::GgufFile::open(fixture(VL).join("mmproj-tiny-vl-f32.gguf")).unwrap();
    model.load_mmproj(&file, image_token).unwrap();
    check_tower(&model, "mmproj");
    for (key, file) in [
        ("prompt_one", "logits_one.npy"),
        ("prompt_two", "logits_two.npy"),
    ] {
        let p = prompt(&model, key);
        let want = mat(file);
        let got = logits(&model, &p, false);
        let (d, row, col) = max_diff(&got.data, &want.data, want.cols);
        assert!(d < LOGIT_TOL, "mmproj {key}: {d} at ({row}, {col})");
    }
    // A text model's own GGUF is not an mmproj file; an out-of-vocabulary pad id is refused.
    let text =
        qinfer_formats::gguf::GgufFile::open(fixture("gguf").join("tiny-dense-f32.gguf")).unwrap();
    let err = model.load_mmproj(&text, image_token).unwrap_err();
    assert!(err.to_string().contains("mmproj"), "{err}");
    let err = model.load_mmproj(&file, 100_000).unwrap_err();
    assert!(err.to_string().contains("vocabulary"), "{err}");
}
