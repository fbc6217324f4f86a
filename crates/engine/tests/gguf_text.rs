//! Tokenizer and chat template from GGUF metadata (`tokenizer.ggml.*`).
//!
//! The real Qwen3.5/3.6 tokenizer is written into a GGUF file the way llama.cpp's converter
//! stores it (tokens by id, token types, `"left right"` merges, `pre = qwen35`), rebuilt, and
//! must encode the reference corpus exactly as the Python `tokenizers` package did.

use std::path::PathBuf;

use qinfer_engine::generate::ModelBundle;
use qinfer_engine::gguf_text::{chat_template_source, tokenizer_from_gguf};
use qinfer_formats::gguf::{GgufFile, GgufWriter, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qwen_tokenizer_as_gguf(dir: &std::path::Path) -> PathBuf {
    let gz = std::fs::read(root().join("assets/qwen3.5-tokenizer/tokenizer.json.gz")).unwrap();
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut json)
        .unwrap();
    let t: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let vocab = t["model"]["vocab"].as_object().unwrap();
    let added = t["added_tokens"].as_array().unwrap();
    let n = vocab.len() + added.len();
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    for (tok, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = tok.clone();
    }
    for a in added {
        let id = a["id"].as_u64().unwrap() as usize;
        tokens[id] = a["content"].as_str().unwrap().to_string();
        types[id] = if a["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
    }
    let merges: Vec<Value> = t["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            Value::String(format!(
                "{} {}",
                m[0].as_str().unwrap(),
                m[1].as_str().unwrap()
            ))
        })
        .collect();
    let path = dir.join("qwen-tokenizer.gguf");
    let mut w = GgufWriter::create(&path, 32).unwrap();
    w.add_metadata("general.architecture", Value::String("qwen35".into()))
        .unwrap();
    w.add_metadata("tokenizer.ggml.model", Value::String("gpt2".into()))
        .unwrap();
    w.add_metadata("tokenizer.ggml.pre", Value::String("qwen35".into()))
        .unwrap();
    w.add_metadata(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    )
    .unwrap();
    w.add_metadata(
        "tokenizer.ggml.token_type",
        Value::Array(types.into_iter().map(Value::I32).collect()),
    )
    .unwrap();
    w.add_metadata("tokenizer.ggml.merges", Value::Array(merges))
        .unwrap();
    w.add_metadata("tokenizer.ggml.eos_token_id", Value::U32(248046))
        .unwrap();
    w.write_header().unwrap();
    w.finish().unwrap();
    path
}

#[test]
fn the_qwen_tokenizer_survives_a_trip_through_gguf_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let file = GgufFile::open(qwen_tokenizer_as_gguf(dir.path())).unwrap();
    let tok = tokenizer_from_gguf(&file).unwrap();
    assert_eq!(tok.vocab_size(), 248_077);
    let corpus: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/tokenizer/corpus.json")).unwrap(),
    )
    .unwrap();
    for entry in corpus["entries"].as_array().unwrap() {
        let text = entry["text"].as_str().unwrap();
        let ids = tok.encode(text).unwrap();
        let want: Vec<u32> = entry["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            entry["decoded"].as_str().unwrap(),
            "{text:?}"
        );
    }
    assert_eq!(
        tok.encode("<|im_start|>assistant\n").unwrap(),
        [248045, 74455, 198]
    );
    assert!(
        tok.is_special(248046) && !tok.is_special(248068),
        "control vs user-defined tokens"
    );
}

/// llama.cpp's converter output: special tokens at the start of the vocabulary keep their ids.
#[test]
fn a_converted_gguf_brings_its_tokenizer_and_template() {
    let path = root().join("tests/fixtures/gguf/tiny-dense-f32.gguf");
    let file = GgufFile::open(&path).unwrap();
    let tok = tokenizer_from_gguf(&file).unwrap();
    assert_eq!(tok.vocab_size(), 320);
    assert_eq!(tok.encode("<|im_start|>").unwrap(), [0]);
    assert_eq!(tok.encode("<think>").unwrap(), [3]);
    let text = "Hello, world";
    assert_eq!(tok.decode(&tok.encode(text).unwrap(), false).unwrap(), text);
    assert!(
        chat_template_source(&file)
            .unwrap()
            .contains("<|im_start|>")
    );
    let bundle = ModelBundle::load_gguf(&path).unwrap();
    assert!(
        bundle.stop_ids.contains(&2),
        "eos from tokenizer.ggml.eos_token_id"
    );
    assert!(bundle.template.is_some());
}

#[test]
fn unsupported_tokenizers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    let mut w = GgufWriter::create(&path, 32).unwrap();
    w.add_metadata("tokenizer.ggml.model", Value::String("llama".into()))
        .unwrap();
    w.write_header().unwrap();
    w.finish().unwrap();
    let err = tokenizer_from_gguf(&GgufFile::open(&path).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"llama\"") && err.contains("not supported"),
        "{err}"
    );
}
