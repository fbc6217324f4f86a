//! The text side of a GGUF file: its tokenizer (`tokenizer.ggml.*`) rebuilt as a Hugging Face
//! `tokenizer.json`, and its chat template (`tokenizer.chat_template`), for GGUF files that come
//! without the original tokenizer files.
//!
//! llama.cpp's converter stores a byte-level BPE vocabulary as three parallel arrays: `tokens`
//! (the byte-level strings, indexed by id), `token_type` (1 normal, 3 control, 4 user-defined,
//! 5 unused…) and `merges` (`"left right"` strings, by rank), plus `pre`, the name of the
//! pre-tokenizer. Normal tokens form the BPE vocabulary; control and user-defined tokens become
//! added tokens (control ones special), exactly as in the original `tokenizer.json`.

use qinfer_formats::gguf::{GgufFile, Value, keys};
use serde_json::{Value as Json, json};

use crate::tokenizer::{Tokenizer, TokenizerError};

/// The Qwen3.5 / Qwen3.6 pre-tokenizer split (`tokenizer.ggml.pre = "qwen35"`).
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

const TYPE_NORMAL: i64 = 1;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;

/// Why a GGUF file's tokenizer cannot be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum GgufTextError {
    #[error("{path}: {why}")]
    Metadata { path: String, why: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

fn strings<'a>(file: &'a GgufFile, key: &str, path: &str) -> Result<Vec<&'a str>, GgufTextError> {
    let bad = |why: String| GgufTextError::Metadata {
        path: path.to_string(),
        why,
    };
    let items = file.get_array(key).map_err(|e| bad(e.to_string()))?;
    items
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| bad(format!("`{key}` holds a {}, not strings", v.type_name())))
        })
        .collect()
}

/// Rebuilds the tokenizer stored in a GGUF file's metadata.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer, GgufTextError> {
    let path = file
        .files
        .first()
        .map_or_else(String::new, |p| p.display().to_string());
    let bad = |why: String| GgufTextError::Metadata {
        path: path.clone(),
        why,
    };
    let model = file
        .get_str(keys::TOKENIZER_MODEL)
        .map_err(|e| bad(e.to_string()))?;
    if model != "gpt2" {
        return Err(bad(format!(
            "{} {model:?} is not supported (qinfer reads byte-level BPE, \"gpt2\")",
            keys::TOKENIZER_MODEL
        )));
    }
    let pre = file
        .get_str_opt(keys::TOKENIZER_PRE)
        .map_err(|e| bad(e.to_string()))?
        .unwrap_or("default");
    let split = match pre {
        "qwen35" => QWEN35_SPLIT,
        other => {
            return Err(bad(format!(
                "pre-tokenizer {other:?} is not supported (qinfer reads Qwen3.5/3.6: \"qwen35\")"
            )));
        }
    };
    let tokens = strings(file, keys::TOKENIZER_TOKENS, &path)?;
    let types: Vec<i64> = match file
        .get_array_opt(keys::TOKENIZER_TOKEN_TYPE)
        .map_err(|e| bad(e.to_string()))?
    {
        Some(a) => a
            .iter()
            .map(|v| {
                v.as_i64().ok_or_else(|| {
                    bad(format!(
                        "{} holds a {}",
                        keys::TOKENIZER_TOKEN_TYPE,
                        v.type_name()
                    ))
                })
            })
            .collect::<Result<_, _>>()?,
        None => vec![TYPE_NORMAL; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(bad(format!(
            "{} token types for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let merges = strings(file, keys::TOKENIZER_MERGES, &path)?;

    // Every token goes into the BPE vocabulary under its GGUF id: `tokenizers` gives an added
    // token that is missing from the vocabulary a new id after it, which would renumber files
    // whose special tokens do not sit at the end. Merges never build the added tokens, so the
    // BPE never emits them; the added-token pass matches them in text first.
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, (token, kind)) in tokens.iter().zip(&types).enumerate() {
        if vocab.insert((*token).to_string(), Json::from(id)).is_some() {
            return Err(bad(format!(
                "token {token:?} appears twice in {}",
                keys::TOKENIZER_TOKENS
            )));
        }
        if matches!(*kind, TYPE_CONTROL | TYPE_USER_DEFINED) {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": *kind == TYPE_CONTROL,
            }));
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .map(|m| {
            let (a, b) = m
                .split_once(' ')
                .ok_or_else(|| bad(format!("merge {m:?} is not \"left right\"")))?;
            Ok(json!([a, b]))
        })
        .collect::<Result<_, GgufTextError>>()?;
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false});
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]},
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let bytes = serde_json::to_vec(&doc).map_err(|e| bad(e.to_string()))?;
    Ok(Tokenizer::from_json_bytes(&bytes)?)
}

/// The chat template stored in a GGUF file, if any.
pub fn chat_template_source(file: &GgufFile) -> Option<&str> {
    file.get(keys::CHAT_TEMPLATE).and_then(Value::as_str)
}

/// End-of-sequence and padding ids named in the metadata.
pub fn special_ids(file: &GgufFile) -> Vec<u32> {
    [keys::TOKENIZER_EOS_ID, keys::TOKENIZER_EOT_ID]
        .iter()
        .filter_map(|k| file.get(k).and_then(Value::as_u64))
        .filter_map(|v| u32::try_from(v).ok())
        .collect()
}
