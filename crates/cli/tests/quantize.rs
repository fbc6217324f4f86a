//! `qinfer quantize`: the files it writes use llama.cpp's layout (Q8_0 tensors byte-identical to
//! llama.cpp's own converter), load back into qinfer with the reference logits, and follow the
//! documented type policy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qinfer_formats::gguf::GgufFile;
use qinfer_model::{Qwen35, Rows};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qinfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args(args)
        .output()
        .expect("qinfer runs")
}

fn quantize(input: &Path, output: &Path, ty: &str) {
    let o = qinfer(&[
        "quantize",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--type",
        ty,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn reference(name: &str) -> serde_json::Value {
    serde_json::from_str(
        &std::fs::read_to_string(
            root()
                .join("tests/fixtures")
                .join(name)
                .join("reference.json"),
        )
        .unwrap(),
    )
    .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Safetensors → F32 GGUF → qinfer: transformers' logits (1e-3) and greedy ids, dense and MoE.
#[test]
fn f32_export_runs_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-dense-f32", "tiny-moe-f32"] {
        let out = dir.path().join(format!("{name}.gguf"));
        quantize(&root().join("tests/fixtures").join(name), &out, "f32");
        let model = Qwen35::load_gguf(&out).unwrap();
        let r = reference(name);
        for (key, file) in [
            ("short_prompt", "logits_short.npy"),
            ("long_prompt", "logits_long.npy"),
        ] {
            let (_, want) =
                qinfer_formats::npy::read_f32(&root().join("tests/fixtures").join(name).join(file))
                    .unwrap();
            let got = model
                .forward(&ids(&r[key]), &mut model.new_state(), Rows::All)
                .unwrap();
            let d = max_diff(&got.data, &want);
            assert!(d <= 1e-3, "{name} {key}: {d}");
        }
    }
}

/// Our Q8_0 file and llama.cpp's converter's Q8_0 file of the same model: every tensor — the MTP
/// head (`blk.8.nextn.*` and the block's layer) included — has the same name, type, dims and
/// bytes, and the architecture keys (block count and `nextn_predict_layers` included) agree.
#[test]
fn q8_0_export_is_byte_identical_to_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let ours_path = dir.path().join("q8.gguf");
    quantize(
        &root().join("tests/fixtures/tiny-dense-f32"),
        &ours_path,
        "q8_0",
    );
    let ours = GgufFile::open(&ours_path).unwrap();
    let theirs = GgufFile::open(root().join("tests/fixtures/gguf/tiny-dense-q8_0.gguf")).unwrap();
    let mut compared = 0;
    for t in &theirs.tensors {
        let o = ours
            .tensor(&t.name)
            .unwrap_or_else(|| panic!("missing {}", t.name));
        assert_eq!((o.ggml_type, &o.dims), (t.ggml_type, &t.dims), "{}", t.name);
        assert!(
            o.data.as_bytes() == t.data.as_bytes(),
            "{}: bytes differ",
            t.name
        );
        compared += 1;
    }
    assert_eq!(compared, ours.tensors.len(), "no extra tensors");
    assert_eq!(
        theirs
            .tensors
            .iter()
            .filter(|t| t.name.starts_with("blk.8."))
            .count(),
        15,
        "the MTP block was compared"
    );
    for (k, v) in &theirs.metadata {
        let model_key = k.starts_with("qwen35.") && !k.contains("recurrent");
        if model_key {
            let o = ours.get(k).unwrap_or_else(|| panic!("missing key {k}"));
            assert_eq!(
                o.as_f64().map(|x| x as f32),
                v.as_f64().map(|x| x as f32),
                "{k}"
            );
        }
    }
}

/// Q4_K_M from a GGUF: the type policy (tiny rows of 64 values fall back from K-quants), the
/// tokenizer carried over, and the file runs.
#[test]
fn q4_k_m_follows_the_policy_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q4km.gguf");
    quantize(
        &root().join("tests/fixtures/gguf/tiny-dense-f32.gguf"),
        &out,
        "Q4_K_M",
    );
    let f = GgufFile::open(&out).unwrap();
    let ty = |n: &str| f.tensor(n).unwrap_or_else(|| panic!("{n}")).type_name();
    assert_eq!(ty("blk.0.attn_norm.weight"), "F32");
    assert_eq!(ty("blk.0.ssm_conv1d.weight"), "F32");
    assert_eq!(ty("blk.0.ssm_alpha.weight"), "Q8_0");
    assert_eq!(
        ty("blk.0.attn_qkv.weight"),
        "Q5_1",
        "Q5_K falls back to Q5_1 for 64-wide rows"
    );
    assert_eq!(
        ty("blk.1.ffn_gate.weight"),
        "Q5_0",
        "Q4_K falls back to Q5_0"
    );
    assert_eq!(
        ty("blk.0.ffn_down.weight"),
        "Q8_0",
        "layer 0 gets Q6_K, which falls back to Q8_0"
    );
    assert_eq!(ty("output.weight"), "Q8_0");
    // The MTP head came along from llama.cpp's file and stays at Q8_0.
    assert_eq!(ty("blk.8.nextn.eh_proj.weight"), "Q8_0");
    assert_eq!(ty("blk.8.attn_q.weight"), "Q8_0");
    assert_eq!(ty("blk.8.nextn.enorm.weight"), "F32");
    assert_eq!(
        f.get("qwen35.block_count").and_then(|v| v.as_u64()),
        Some(9)
    );
    assert_eq!(
        f.get("qwen35.nextn_predict_layers")
            .and_then(|v| v.as_u64()),
        Some(1)
    );
    assert!(f.get("tokenizer.ggml.tokens").is_some() && f.get("tokenizer.chat_template").is_some());
    let o = qinfer(&[
        "generate",
        out.to_str().unwrap(),
        "--prompt",
        "hello",
        "--chat",
        "--max-tokens",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn bad_requests_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let input = root().join("tests/fixtures/tiny-dense-f32");
    let o = qinfer(&[
        "quantize",
        input.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "q3_xx",
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("unknown type"));
    let gguf = root().join("tests/fixtures/gguf/tiny-dense-f32.gguf");
    let o = qinfer(&[
        "quantize",
        gguf.to_str().unwrap(),
        gguf.to_str().unwrap(),
        "--type",
        "q8_0",
    ]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("overwrite the input")
    );
    assert!(!out.exists() && !dir.path().join("x.gguf.partial").exists());
}

/// The low-bit mixtures: tiny 64-wide rows fall back from Q2_K / Q3_K to IQ4_NL, the MTP head
/// stays Q8_0, and the files load and generate.
#[test]
fn q3_k_m_and_q2_k_follow_the_policy_and_run() {
    let dir = tempfile::tempdir().unwrap();
    for (ty, qkv) in [("Q3_K_M", "Q5_0"), ("Q2_K", "IQ4_NL")] {
        let out = dir.path().join(format!("{ty}.gguf"));
        quantize(&root().join("tests/fixtures/tiny-dense-f32"), &out, ty);
        let f = GgufFile::open(&out).unwrap();
        let t = |n: &str| f.tensor(n).unwrap_or_else(|| panic!("{n}")).type_name();
        assert_eq!(t("blk.1.ffn_gate.weight"), "IQ4_NL", "{ty}");
        assert_eq!(t("blk.0.attn_qkv.weight"), qkv, "{ty}");
        assert_eq!(t("blk.8.nextn.eh_proj.weight"), "Q8_0", "{ty}");
        let model = Qwen35::load_gguf(&out).unwrap();
        let logits = model
            .forward(&[1, 2, 3], &mut model.new_state(), Rows::Last)
            .unwrap();
        assert!(logits.data.iter().all(|x| x.is_finite()), "{ty}");
    }
}
