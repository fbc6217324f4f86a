//! Loading: both config forms and tensor prefixes, sharded checkpoints, recognised extras,
//! and a clear error (never a panic) for every kind of broken model directory.

mod common;

use std::path::Path;

use common::*;
use qinfer_formats::safetensors::{Checkpoint, write};
use qinfer_model::Qwen35;

#[test]
fn loads_every_fixture_and_lists_extras() {
    let dense = load("tiny-dense-f32");
    assert!(
        dense.has_mtp() && dense.extras.mtp.is_empty(),
        "the MTP head loads (its tensors consumed)"
    );
    assert!(
        !dense.extras.vision.is_empty(),
        "vision tensors should be recognised"
    );
    assert!(
        dense.extras.unknown.is_empty(),
        "unexpected tensors: {:?}",
        dense.extras.unknown
    );
    let moe = load("tiny-moe-f32");
    assert!(moe.config.is_moe() && moe.config.tie_embeddings);
    assert!(
        moe.extras.unknown.is_empty(),
        "unexpected tensors: {:?}",
        moe.extras.unknown
    );
    let sharded = load("tiny-dense-bf16");
    assert_eq!(sharded.dtype(), qinfer_tensor::DType::BF16);
    assert_eq!(load("tiny-dense-f16").dtype(), qinfer_tensor::DType::F16);
    for m in [&dense, &moe, &sharded] {
        assert_eq!(
            m.parameter_count(),
            m.config.parameter_count(),
            "loaded shapes agree with the config"
        );
    }
}

/// Copies a fixture's files into a temp dir so a test can break it.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// Rewrites `dir/model.safetensors` after `edit` changes the list of tensors.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<(String, String, Vec<usize>, Vec<u8>)>)) {
    let ck = Checkpoint::open_dir(dir).unwrap();
    let mut tensors: Vec<(String, String, Vec<usize>, Vec<u8>)> = ck
        .tensors
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.dtype.to_string(),
                t.shape.clone(),
                t.data.as_bytes().to_vec(),
            )
        })
        .collect();
    drop(ck);
    edit(&mut tensors);
    let refs: Vec<(&str, &str, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), d.as_str(), s.clone(), b.clone()))
        .collect();
    write(&dir.join("model.safetensors"), &refs).unwrap();
}

fn load_err(dir: &Path) -> String {
    format!(
        "{:#}",
        Qwen35::load_dir(dir).expect_err("broken model should not load")
    )
}

const QKV: &str = "model.language_model.layers.0.linear_attn.in_proj_qkv.weight";

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("tiny-dense-f32");
    rewrite(dir.path(), |t| t.retain(|(n, ..)| n != QKV));
    let err = load_err(dir.path());
    assert!(err.contains(&format!("tensor {QKV} is missing")), "{err}");
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let dir = copy_fixture("tiny-dense-f32");
    rewrite(dir.path(), |t| {
        let e = t.iter_mut().find(|(n, ..)| n == QKV).unwrap();
        let (rows, cols) = (e.2[0], e.2[1]);
        e.2 = vec![cols, rows];
    });
    let err = load_err(dir.path());
    assert!(err.contains(QKV) && err.contains("has shape"), "{err}");
}

#[test]
fn unsupported_dtype_is_named() {
    let dir = copy_fixture("tiny-dense-f32");
    rewrite(dir.path(), |t| {
        let e = t.iter_mut().find(|(n, ..)| n == QKV).unwrap();
        e.1 = "I32".into();
    });
    let err = load_err(dir.path());
    assert!(err.contains(QKV) && err.contains("type I32"), "{err}");
}

#[test]
fn garbage_config_json_is_reported() {
    let dir = copy_fixture("tiny-dense-f32");
    std::fs::write(dir.path().join("config.json"), "{ this is not json").unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("config.json") && err.contains("invalid JSON"),
        "{err}"
    );
}

#[test]
fn missing_config_json_is_reported() {
    let dir = copy_fixture("tiny-dense-f32");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn unknown_model_type_is_reported() {
    let dir = copy_fixture("tiny-dense-f32");
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("\"qwen3_5\"", "\"llama\"", 1);
    std::fs::write(&path, text).unwrap();
    let err = load_err(dir.path());
    assert!(err.contains("unknown model type \"llama\""), "{err}");
}

#[test]
fn truncated_safetensors_is_reported() {
    let dir = copy_fixture("tiny-dense-f32");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains("model.safetensors") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn missing_shard_is_reported() {
    let dir = copy_fixture("tiny-dense-bf16");
    let shard = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    std::fs::remove_file(&shard).unwrap();
    let err = load_err(dir.path());
    assert!(
        err.contains(&shard.file_name().unwrap().to_string_lossy().to_string()),
        "{err}"
    );
}

#[test]
fn not_a_directory_is_reported() {
    let err = load_err(Path::new("/nonexistent/model"));
    assert!(err.contains("not a directory"), "{err}");
}
