//! Fuzzing with a fixed budget, run by the test suite (hardening): mutated GGUF files, mutated
//! safetensors headers and mutated `config.json` values must load, or fail with an error —
//! never panic, never abort, never allocate without bound. A model that loads runs one forward
//! step. Mutations are deterministic (a fixed seed per target), so a failure names the
//! iteration that reproduces it.
//!
//! The corpus is the tiny fixtures; the defects found by hand (a `block_count` of 2³¹ − 1,
//! dimensions of 2⁵⁹, NaN epsilons) have their own regression tests in `gguf.rs` and
//! `config.rs`, and the mutations below include those extreme values.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::*;
use qinfer_formats::gguf::GgufFile;
use qinfer_formats::hf_config::RawConfig;
use qinfer_formats::safetensors::Checkpoint;
use qinfer_model::{ModelConfig, Qwen35, Rows};
use qinfer_tensor::ByteView;
use qinfer_testkit::{Rng, mutate_bytes};

/// Runs `f`; a panic fails the test naming `what`.
fn no_panic(what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        panic!("{what} panicked (rerun this iteration to reproduce)");
    }
}

/// A model that loaded runs a step without panicking (it may refuse with an error).
fn exercise(model: &Qwen35) {
    let vocab = model.config.vocab as u32;
    let mut state = model.new_state();
    let _ = model.forward(&[1 % vocab, 2 % vocab], &mut state, Rows::Last);
}

/// Mutated GGUF files (header, metadata and tensor table mostly; sometimes anywhere).
#[test]
fn mutated_gguf_files_load_or_fail_cleanly() {
    for file in [
        "tiny-dense-f32.gguf",
        "tiny-moe-f32.gguf",
        "tiny-dense-q8_0.gguf",
    ] {
        let original = std::fs::read(fixture("gguf").join(file)).unwrap();
        let mut rng = Rng(0x6775_6666 ^ original.len() as u64);
        for i in 0..1000 {
            let mut bytes = original.clone();
            for _ in 0..1 + rng.below(3) {
                let region = if rng.below(8) == 0 {
                    bytes.len()
                } else {
                    16 * 1024
                };
                mutate_bytes(&mut rng, &mut bytes, region);
            }
            no_panic(&format!("{file} iteration {i}"), || {
                let Ok(gguf) = GgufFile::from_view(file, ByteView::from_vec(bytes)) else {
                    return;
                };
                if let Ok(model) = Qwen35::from_gguf(&gguf) {
                    exercise(&model);
                }
            });
        }
    }
}

/// Mutated safetensors headers (the length prefix and the JSON header), with the fixture's
/// `config.json`.
#[test]
fn mutated_safetensors_headers_load_or_fail_cleanly() {
    let src = fixture("tiny-dense-f32");
    let original = std::fs::read(src.join("model.safetensors")).unwrap();
    let header_end = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let mut rng = Rng(0x7361_6665);
    for i in 0..500 {
        let mut bytes = original.clone();
        for _ in 0..1 + rng.below(3) {
            mutate_bytes(&mut rng, &mut bytes, header_end);
        }
        std::fs::write(dir.path().join("model.safetensors"), &bytes).unwrap();
        no_panic(&format!("safetensors iteration {i}"), || {
            if let Ok(model) = Qwen35::load_dir(dir.path()) {
                exercise(&model);
            }
        });
    }
}

/// `config.json` with one value replaced by an extreme number, a negative, a float, a string,
/// null, or an empty container, against the fixture's weights.
#[test]
fn mutated_configs_load_or_fail_cleanly() {
    let src = fixture("tiny-moe-f32");
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let original: serde_json::Value = serde_json::from_str(&text).unwrap();
    let checkpoint = Checkpoint::open_dir(&src).unwrap();
    let replacements = [
        serde_json::json!(0),
        serde_json::json!(-1),
        serde_json::json!(1u64 << 63),
        serde_json::json!(u64::MAX),
        serde_json::json!((1u64 << 59) + 4),
        serde_json::json!((1u64 << 31) - 1),
        serde_json::json!(1e308),
        serde_json::json!(-1e-300),
        serde_json::json!(0.5),
        serde_json::json!("x"),
        serde_json::json!(null),
        serde_json::json!([]),
        serde_json::json!({}),
        serde_json::json!([1, 2, 3]),
    ];
    // Every path to a leaf of the JSON tree.
    fn leaves(v: &serde_json::Value, path: Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    let mut p = path.clone();
                    p.push(k.clone());
                    leaves(x, p, out);
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let mut p = path.clone();
                    p.push(i.to_string());
                    leaves(x, p, out);
                }
            }
            _ => out.push(path),
        }
    }
    let mut paths = Vec::new();
    leaves(&original, Vec::new(), &mut paths);
    assert!(
        paths.len() > 20,
        "the config has its fields: {}",
        paths.len()
    );
    let mut rng = Rng(0x636f_6e66);
    for i in 0..1500 {
        let mut v = original.clone();
        let path = &paths[rng.below(paths.len())];
        let mut at = &mut v;
        for key in path {
            at = match at {
                serde_json::Value::Object(m) => m.get_mut(key).unwrap(),
                serde_json::Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
                _ => unreachable!(),
            };
        }
        *at = replacements[rng.below(replacements.len())].clone();
        let text = v.to_string();
        no_panic(&format!("config iteration {i} ({path:?})"), || {
            let Ok(raw) = RawConfig::from_json(&text) else {
                return;
            };
            let Ok(config) = ModelConfig::from_hf(&raw) else {
                return;
            };
            if let Ok(model) = Qwen35::from_checkpoint(config, &checkpoint) {
                exercise(&model);
            }
        });
    }
}
