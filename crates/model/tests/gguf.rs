//! llama.cpp's own GGUF conversions of the tiny models (`tools/make_gguf_fixtures.sh`) run
//! through the same model code as the safetensors and match transformers: the converter's
//! transformations (`+1` folded into norms, `ssm_a = −exp(A_log)`, value heads tiled, experts
//! split into stacks) are undone by the GGUF column of the name table, not by a second model.

mod common;

use std::path::PathBuf;

use common::*;
use qinfer_formats::gguf::GgufFile;
use qinfer_model::{Qwen35, Rows};

fn gguf(file: &str) -> PathBuf {
    fixture("gguf").join(file)
}

fn load_gguf(file: &str) -> Qwen35 {
    Qwen35::load_gguf(&gguf(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// F32 GGUF files: the same bound as the safetensors (1e-3 against transformers), at every
/// position of the 13- and 157-token prompts, and identical greedy ids.
#[test]
fn f32_gguf_matches_transformers() {
    for (file, reference_dir) in [
        ("tiny-dense-f32.gguf", "tiny-dense-f32"),
        ("tiny-moe-f32.gguf", "tiny-moe-f32"),
        ("split/tiny-dense-f32-00001-of-00002.gguf", "tiny-dense-f32"),
    ] {
        let model = load_gguf(file);
        let r = reference(reference_dir);
        for (key, npy_file) in [
            ("short_prompt", "logits_short.npy"),
            ("long_prompt", "logits_long.npy"),
        ] {
            let prompt = ids(&r[key]);
            let (_, want) = npy(reference_dir, npy_file);
            let got = model
                .forward(&prompt, &mut model.new_state(), Rows::All)
                .unwrap();
            let (d, pos, tok) = max_diff(&got.data, &want, got.cols);
            assert!(
                d <= 1e-3,
                "{file} {key}: max |Δlogit| {d} at position {pos}, token {tok}"
            );
        }
        let want = ids(&r["greedy_ids"]);
        assert_eq!(
            greedy(&model, &ids(&r["greedy_prompt"]), want.len()),
            want,
            "{file}: greedy ids"
        );
    }
}

/// The GGUF model is the safetensors model: same logits up to rounding, the MTP head loaded
/// from llama.cpp's `blk.{n}.nextn.*` layout (its logits: `mtp.rs`).
#[test]
fn gguf_and_safetensors_agree() {
    let (a, b) = (load_gguf("tiny-dense-f32.gguf"), load("tiny-dense-f32"));
    assert_eq!(a.config.layers, b.config.layers);
    assert_eq!(a.parameter_count(), b.parameter_count());
    assert!(
        a.has_mtp() && b.has_mtp() && a.extras.mtp.is_empty() && a.extras.unknown.is_empty(),
        "{:?}",
        a.extras.unknown
    );
    let prompt = ids(&reference("tiny-dense-f32")["long_prompt"]);
    let x = a.forward(&prompt, &mut a.new_state(), Rows::All).unwrap();
    let y = b.forward(&prompt, &mut b.new_state(), Rows::All).unwrap();
    let (d, _, _) = max_diff(&x.data, &y.data, x.cols);
    assert!(d <= 1e-4, "GGUF vs safetensors differ by {d}");
}

/// Q8_0 weights quantized by llama.cpp's converter (norms, conv and router stay F32). The
/// reference is transformers computing on exactly these quantized weights (dequantized by the
/// `gguf` package, mapped back to the Hugging Face layout: `tools/make_gguf_quant_reference.py`),
/// so the bound is f32 rounding again, 1e-3; the quantization error itself (1.6 on logits of
/// ±25 against the unquantized model) is the same in both. This needs qinfer's exact matmul
/// path (f32 activations against widened blocks); the default 8-bit activation path is
/// compared with llama.cpp's own quantized kernels in `llama_cpp.rs`.
#[test]
fn q8_0_gguf_matches_transformers_on_the_same_weights() {
    let model = common::exact(load_gguf("tiny-dense-q8_0.gguf"));
    let r: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(gguf("tiny-dense-q8_0.reference.json")).unwrap(),
    )
    .unwrap();
    let prompt = ids(&r["short_prompt"]);
    let (_, want) =
        qinfer_formats::npy::read_f32(&gguf("tiny-dense-q8_0.logits_short.npy")).unwrap();
    let got = model
        .forward(&prompt, &mut model.new_state(), Rows::All)
        .unwrap();
    let (d, pos, _) = max_diff(&got.data, &want, got.cols);
    assert!(d <= 1e-3, "Q8_0: max |Δlogit| {d} at position {pos}");
    let want = ids(&r["greedy_ids"]);
    assert_eq!(want.len(), 32);
    assert_eq!(
        greedy(&model, &ids(&r["greedy_prompt"]), want.len()),
        want,
        "Q8_0 greedy ids"
    );
}

#[test]
fn broken_gguf_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(gguf("tiny-dense-f32.gguf")).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (bytes[..bytes.len() / 3].to_vec(), "truncated"),
        ([b"GGUG".as_slice(), &bytes[4..]].concat(), "magic"),
    ];
    for (data, want) in cases {
        let path = dir.path().join("broken.gguf");
        std::fs::write(&path, data).unwrap();
        let err = Qwen35::load_gguf(&path).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    let missing = Qwen35::load_gguf(&dir.path().join("split-00001-of-00002.gguf"))
        .unwrap_err()
        .to_string();
    assert!(!missing.is_empty());
}

/// The tiny dense GGUF, opened, with metadata `key` set to `value` (in memory).
fn with_metadata(key: &str, value: qinfer_formats::gguf::Value) -> GgufFile {
    let mut file = GgufFile::open(gguf("tiny-dense-f32.gguf")).unwrap();
    let entry = file
        .metadata
        .iter_mut()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{key} is in the fixture"));
    entry.1 = value;
    file
}

fn load_error(file: &GgufFile) -> String {
    Qwen35::from_gguf(file).unwrap_err().to_string()
}

/// Hardening: a `block_count` beyond the blocks whose tensors the file holds (2³¹ − 1 made
/// `logits` try to allocate 1.7 TB) is refused naming the key, before anything is allocated
/// for the layers.
#[test]
fn gguf_block_count_is_checked_against_the_tensors() {
    use qinfer_formats::gguf::Value;
    // The fixture: 8 decoder layers and one MTP block, `blk.0` … `blk.8`.
    for v in [
        Value::U32(i32::MAX as u32),
        Value::U64(1 << 40),
        Value::U32(11),
    ] {
        let err = load_error(&with_metadata("qwen35.block_count", v));
        assert!(
            err.contains("qwen35.block_count") && err.contains("the file has tensors for 9"),
            "{err}"
        );
    }
}

/// Hardening: the GGUF path gets the value checks `config.json` gets (an epsilon of −1, 0 or
/// NaN and a RoPE base of NaN, 0, −1 or ∞ loaded and made every logit NaN).
#[test]
fn gguf_hyper_parameters_get_the_config_checks() {
    use qinfer_formats::gguf::Value;
    for eps in [-1.0, 0.0, f32::NAN, f32::INFINITY, 1.0] {
        let err = load_error(&with_metadata(
            "qwen35.attention.layer_norm_rms_epsilon",
            Value::F32(eps),
        ));
        assert!(err.contains("rms_norm_eps"), "eps {eps}: {err}");
    }
    for theta in [f32::NAN, 0.0, -1.0, f32::INFINITY] {
        let err = load_error(&with_metadata("qwen35.rope.freq_base", Value::F32(theta)));
        assert!(err.contains("rope_theta"), "theta {theta}: {err}");
    }
}

/// Hardening: dimensions that would overflow what is computed from them (4 + 2⁵⁹ heads passed
/// the shape checks and panicked in attention) are refused naming the field.
#[test]
fn gguf_dimensions_cannot_wrap_around() {
    use qinfer_formats::gguf::Value;
    for (key, field) in [
        ("qwen35.attention.head_count", "num_attention_heads"),
        ("qwen35.ssm.state_size", "linear_key_head_dim"),
        ("qwen35.embedding_length", "hidden_size"),
        ("qwen35.context_length", "max_position_embeddings"),
    ] {
        let err = load_error(&with_metadata(key, Value::U64(4 + (1 << 59))));
        assert!(
            err.contains(field) && err.contains("more than qinfer accepts"),
            "{key}: {err}"
        );
    }
    // mRoPE sections whose sum passes `usize`.
    let sections = Value::Array(vec![Value::U64(u64::MAX), Value::U64(2), Value::U64(0)]);
    let err = load_error(&with_metadata("qwen35.rope.dimension_sections", sections));
    assert!(err.contains("mrope sections"), "{err}");
}
