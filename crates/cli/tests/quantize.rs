//! `qinfer quantize`: the files it writes use llama.cpp's layout (Q8_0 tensors byte-identical to
//! llama.cpp's own converter), load back into qinfer with the reference logits, and follow the
//! documented type policy.

use qinfer_testkit::json_ids as ids;
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

// ---- The vision tower's `mmproj` file ------------------------------------------------------

const VL: &str = "tiny-vl-f32";

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// `qinfer quantize` with `extra` arguments; its stdout.
fn quantize_with(input: &Path, output: &Path, ty: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "quantize",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--type",
        ty,
    ];
    args.extend(extra);
    let o = qinfer(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// The files in `dir`, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Metadata keys that describe a file rather than the tower (llama.cpp derives them from the
/// directory name and the parameter count), and the header's own counts.
fn descriptive(key: &str) -> bool {
    matches!(key, "general.name" | "general.size_label")
}

/// The merged embeddings of fixture image `a` by the model written at `gguf` with the tower of
/// `mmproj`, against transformers' (`vision_a.npy`): the largest difference.
fn tower_error(gguf: &Path, mmproj: &Path) -> f32 {
    let mut model = Qwen35::load_gguf(gguf).unwrap();
    assert!(model.vision.is_none(), "the text GGUF holds no tower");
    let r = reference(VL);
    let image_token = r["token_ids"]["image_token_id"].as_u64().unwrap() as u32;
    model
        .load_mmproj(&GgufFile::open(mmproj).unwrap(), image_token)
        .unwrap();
    let g = ids(&r["grid_thw_a"]);
    let (shape, pixels) =
        qinfer_formats::npy::read_f32(&fixture(VL).join("pixel_values_a.npy")).unwrap();
    let pixels = qinfer_tensor::Mat::from_vec(pixels, shape[0], shape[1]);
    let got = model
        .encode_image(&pixels, [g[0] as usize, g[1] as usize, g[2] as usize])
        .unwrap();
    let (shape, want) = qinfer_formats::npy::read_f32(&fixture(VL).join("vision_a.npy")).unwrap();
    assert_eq!([got.rows, got.cols], [shape[0], shape[1]]);
    max_diff(&got.data, &want)
}

/// F32: the `mmproj` file beside the output has exactly the tensors of llama.cpp's own
/// converter's file of the fixture (`convert_hf_to_gguf.py --mmproj --outtype f32`): names,
/// order, types, dims and bytes, and its metadata (descriptive keys aside); the model and that
/// tower reproduce transformers' encoder output within the vision tests' 1e-4.
#[test]
fn f32_mmproj_is_llama_cpps_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vl.gguf");
    let stdout = quantize_with(&fixture(VL), &out, "f32", &[]);
    let mmproj = dir.path().join("mmproj-vl.gguf");
    assert_eq!(files_in(dir.path()), ["mmproj-vl.gguf", "vl.gguf"]);
    assert!(
        stdout.contains(&format!("wrote {}", mmproj.display())),
        "{stdout}"
    );
    let ours = GgufFile::open(&mmproj).unwrap();
    let theirs = GgufFile::open(fixture(VL).join("mmproj-tiny-vl-f32.gguf")).unwrap();
    let names = |f: &GgufFile| f.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ours), names(&theirs), "tensor names and order");
    for (o, t) in ours.tensors.iter().zip(&theirs.tensors) {
        assert_eq!((o.ggml_type, &o.dims), (t.ggml_type, &t.dims), "{}", t.name);
        assert!(
            o.data.as_bytes() == t.data.as_bytes(),
            "{}: bytes differ",
            t.name
        );
    }
    let keys = |f: &GgufFile| {
        f.metadata
            .iter()
            .filter(|(k, _)| !descriptive(k))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(&ours),
        keys(&theirs),
        "metadata (keys, types, values, order)"
    );
    let d = tower_error(&out, &mmproj);
    assert!(d < 1e-4, "tower output: {d}");
}

/// A quantized type: the tower stays F16 (weight matrices and patch kernels) and F32 (norms,
/// biases, position table), as llama.cpp's `--outtype f16` writes it; the F16 tensors are the
/// fixture's F32 values rounded to nearest, the rest its bytes (checked once against llama.cpp's
/// `convert_hf_to_gguf.py --mmproj --outtype f16` of the fixture: identical tensors; that file is
/// not kept); and the tower's output stays within `F16_TOWER_TOL` of transformers'.
///
/// `F16_TOWER_TOL` = 2e-3, against transformers' F32 tower (outputs up to 2.44 in magnitude):
/// rounding the weight matrices and patch kernels to F16 (11 significant bits, each weight moved
/// by at most 2^-12 of itself) is itself worth 1.10e-3 on image `a` — transformers run on the
/// same F16-rounded weights gives 1.1005e-3, qinfer on this file 1.1010e-3 — so 2e-3 leaves
/// under 2× headroom over the rounding, while BF16-rounded weights (8 significant bits) give
/// 8.2e-3 in transformers: the test fails if the tower loses F16 precision.
#[test]
fn quantized_exports_keep_the_tower_in_f16() {
    const F16_TOWER_TOL: f32 = 2e-3;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q8.gguf");
    quantize_with(&fixture(VL), &out, "q8_0", &[]);
    let mmproj = dir.path().join("mmproj-q8.gguf");
    let ours = GgufFile::open(&mmproj).unwrap();
    let theirs = GgufFile::open(fixture(VL).join("mmproj-tiny-vl-f32.gguf")).unwrap();
    assert_eq!(ours.tensors.len(), theirs.tensors.len());
    let mut f16 = 0;
    for (o, t) in ours.tensors.iter().zip(&theirs.tensors) {
        assert_eq!((&o.name, &o.dims), (&t.name, &t.dims));
        let matrix = o.dims.len() > 1 && o.name != "v.position_embd.weight";
        let want = if matrix {
            f16 += 1;
            let values: Vec<f32> = t
                .data
                .as_bytes()
                .as_chunks::<4>()
                .0
                .iter()
                .map(|b| f32::from_le_bytes(*b))
                .collect();
            qinfer_cpu::ops::quantize_rows(qinfer_tensor::DType::F16, &values, t.dims[0]).unwrap()
        } else {
            t.data.as_bytes().to_vec()
        };
        assert_eq!(
            o.type_name(),
            if matrix { "F16" } else { "F32" },
            "{}",
            o.name
        );
        assert!(o.data.as_bytes() == want, "{}: bytes differ", o.name);
    }
    assert_eq!(
        f16, 12,
        "4 matrices per block, 2 merger matrices, 2 patch kernels"
    );
    assert_eq!(
        ours.get("general.file_type").and_then(|v| v.as_u64()),
        Some(1),
        "MOSTLY_F16"
    );
    let d = tower_error(&out, &mmproj);
    assert!(d < F16_TOWER_TOL, "tower output: {d}");
}

/// A text-only checkpoint writes no `mmproj` file, and `--no-mmproj` skips the tower's.
#[test]
fn no_mmproj_without_a_tower_or_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("text.gguf");
    let stdout = quantize_with(&fixture("tiny-dense-f32"), &out, "q8_0", &[]);
    assert_eq!(files_in(dir.path()), ["text.gguf"]);
    assert!(!stdout.contains("mmproj"), "{stdout}");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vl.gguf");
    let stdout = quantize_with(&fixture(VL), &out, "q8_0", &["--no-mmproj"]);
    assert_eq!(files_in(dir.path()), ["vl.gguf"]);
    assert!(!stdout.contains("mmproj"), "{stdout}");
}
