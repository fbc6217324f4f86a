//! YaRN against Hugging Face transformers (`tools/make_yarn_reference.py`, fixtures in
//! `tests/fixtures/yarn`): the frequencies of Qwen3.6-27B's rotary setup at factor 4, and a
//! tiny model's logits and greedy ids over a prompt that crosses its 64-token original context
//! — reached through config.json, through the load-time override, and through a GGUF file.
//!
//! Tolerances: logits as in golden.rs (1e-3: both engines compute in f32); frequencies 1e-6
//! relative (the same f32 operations in the same order, `powf` from different math libraries).

mod common;

use common::*;
use qinfer_model::config::{RopeConfig, Yarn, YarnParams};
use qinfer_model::layers::rope::Rope;
use qinfer_model::{ForwardError, Qwen35, Rows};

const LOGIT_TOL: f32 = 1e-3;

/// The tiny dense model with the YaRN config (the weights of `tiny-dense-f32`).
fn yarn_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("yarn/config.json"), dir.path().join("config.json")).unwrap();
    std::fs::copy(
        fixture("tiny-dense-f32/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    dir
}

fn long_logits(model: &Qwen35) -> Vec<f32> {
    let prompt = ids(&reference("yarn")["long_prompt"]);
    let mut state = model.new_state();
    model.forward(&prompt, &mut state, Rows::All).unwrap().data
}

fn check(model: &Qwen35, what: &str) {
    let (shape, want) = npy("yarn", "logits_long.npy");
    let got = long_logits(model);
    let (d, pos, tok) = max_diff(&got, &want, shape[1]);
    assert!(
        d <= LOGIT_TOL,
        "{what}: max |Δlogit| {d} at position {pos}, token {tok}"
    );
    let r = reference("yarn");
    let want = ids(&r["greedy_ids"]);
    assert_eq!(
        greedy(model, &ids(&r["greedy_prompt"]), want.len()),
        want,
        "{what}: greedy ids"
    );
}

#[test]
fn qwen36_frequencies_match_transformers() {
    let r = &reference("yarn")["qwen36_yarn"];
    let yarn = Yarn::resolve(
        YarnParams {
            factor: Some(4.0),
            original_ctx: Some(262_144),
            ..YarnParams::default()
        },
        262_144,
    )
    .unwrap();
    assert_eq!(yarn.extended_ctx(), 1_048_576);
    let rope = Rope::new(&RopeConfig {
        theta: 1e7,
        rotary_dim: 64,
        mrope_section: [11, 11, 10],
        mrope_interleaved: true,
        yarn: Some(yarn),
    });
    let (_, want) = npy("yarn", "inv_freq_qwen36.npy");
    assert_eq!(rope.inv_freq().len(), want.len());
    for (i, (g, w)) in rope.inv_freq().iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-6 * w.abs(), "inv_freq[{i}]: {g} vs {w}");
    }
    let af = r["attention_factor"].as_f64().unwrap();
    assert!(
        (yarn.attention_factor - af).abs() < 1e-12,
        "{}",
        yarn.attention_factor
    );
    assert_eq!(rope.scale(), Some(af as f32));
}

#[test]
fn yarn_from_config_json_matches_transformers() {
    let dir = yarn_dir();
    let model = exact(Qwen35::load_dir(dir.path()).unwrap());
    let y = model.config.rope.yarn.expect("yarn from config.json");
    assert_eq!((y.factor, y.original_ctx), (4.0, 64));
    assert_eq!(model.config.native_ctx(), 64);
    check(&model, "config.json");
}

/// `--rope-scaling yarn --rope-factor 4 --rope-original-ctx 64` on the plain model is the
/// same model as the YaRN config; `--rope-scaling none` takes it back, bit for bit.
#[test]
fn load_time_override_equals_the_config() {
    let plain = load_exact("tiny-dense-f32");
    let before = long_logits(&plain);
    let mut model = load_exact("tiny-dense-f32");
    model
        .set_rope_scaling(Some(YarnParams {
            factor: Some(4.0),
            original_ctx: Some(64),
            ..YarnParams::default()
        }))
        .unwrap();
    assert_eq!(model.config.max_positions, 256);
    check(&model, "override");
    let configured = exact(Qwen35::load_dir(yarn_dir().path()).unwrap());
    assert!(long_logits(&model) == long_logits(&configured));
    model.set_rope_scaling(None).unwrap();
    assert_eq!(model.config.max_positions, 64);
    assert!(model.config.rope.yarn.is_none());
    let mut plain_again = load_exact("tiny-dense-f32");
    plain_again.set_rope_scaling(None).unwrap();
    assert!(long_logits(&plain_again) == before, "no YaRN: unchanged");
}

/// A GGUF written from the YaRN model carries llama.cpp's `rope.scaling.*` keys and loads as
/// the same model.
#[test]
fn yarn_survives_a_gguf_round_trip() {
    let dir = yarn_dir();
    let src = qinfer_formats::safetensors::Checkpoint::open_dir(dir.path()).unwrap();
    let config = Qwen35::load_dir(dir.path()).unwrap().config;
    let out = dir.path().join("yarn.gguf");
    qinfer_model::export::export_gguf(
        &out,
        &src,
        qinfer_model::names::Naming::Hf(
            qinfer_model::loader::Loader::detect_hf_prefix(&|n| src.tensors.contains_key(n))
                .unwrap(),
        ),
        &config,
        Vec::new(),
        qinfer_model::export::FileType::F32,
        &mut |_, _, _| {},
    )
    .unwrap();
    let g = qinfer_formats::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("qwen35.rope.scaling.type").unwrap(), "yarn");
    assert_eq!(
        g.get_u64("qwen35.rope.scaling.original_context_length")
            .unwrap(),
        64
    );
    let model = exact(Qwen35::load_gguf(&out).unwrap());
    assert_eq!(model.config.rope.yarn, config.rope.yarn);
    check(&model, "GGUF");
}

/// Past the native window without YaRN the error says how to turn it on; with YaRN, the
/// extended window is the limit.
#[test]
fn overflow_says_how_to_extend_the_window() {
    let mut model = load("tiny-dense-f32");
    model.set_rope_scaling(None).unwrap();
    let native = model.config.max_positions;
    let mut state = model.new_state();
    let e = model
        .forward(&vec![1u32; native + 1], &mut state, Rows::Last)
        .unwrap_err();
    assert!(matches!(e, ForwardError::ContextOverflow { .. }));
    assert!(e.to_string().contains("--rope-scaling yarn"), "{e}");
    model
        .set_rope_scaling(Some(YarnParams {
            factor: Some(2.0),
            ..YarnParams::default()
        }))
        .unwrap();
    assert_eq!(model.config.max_positions, 2 * native);
    let mut state = model.new_state();
    let e = model
        .forward(&vec![1u32; 2 * native + 1], &mut state, Rows::Last)
        .unwrap_err();
    assert!(!e.to_string().contains("--rope-scaling"), "{e}");
}
