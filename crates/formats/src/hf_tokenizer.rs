//! A Hugging Face `tokenizer.json` (byte-level BPE) as GGUF tokenizer metadata, the way
//! llama.cpp's converter writes it: `tokenizer.ggml.tokens` by id, `token_type` (1 normal,
//! 3 control = special added token, 4 user-defined = other added token, 5 unused padding up to
//! the embedding size, named `[PAD{id}]`), `merges` as `"left right"`.

use serde_json::Value as Json;

use crate::gguf::{Value, keys};

/// Token types of the GGUF tokenizer arrays.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// `tokenizer.ggml.{model, pre, tokens, token_type, merges}` for `tokenizer` (parsed JSON),
/// with the token list padded to `vocab_size` rows. `pre` names the pre-tokenizer.
pub fn gguf_metadata(
    tokenizer: &Json,
    vocab_size: usize,
    pre: &str,
) -> Result<Vec<(String, Value)>, String> {
    let model = &tokenizer["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(format!("tokenizer model {} is not BPE", model["type"]));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or("tokenizer.json has no model.vocab")?;
    let added = tokenizer["added_tokens"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |id: u64, text: &str, kind: i32| -> Result<(), String> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            format!("token {text:?} has id {id}, outside the vocabulary of {vocab_size}")
        })?;
        *slot = Some((text.to_string(), kind));
        Ok(())
    };
    for (text, id) in vocab {
        put(
            id.as_u64().ok_or("a vocab id is not an integer")?,
            text,
            NORMAL,
        )?;
    }
    for a in added {
        let id = a["id"].as_u64().ok_or("an added token has no id")?;
        let text = a["content"]
            .as_str()
            .ok_or("an added token has no content")?;
        put(
            id,
            text,
            if a["special"].as_bool() == Some(true) {
                CONTROL
            } else {
                USER_DEFINED
            },
        )?;
    }
    let (mut texts, mut kinds) = (
        Vec::with_capacity(vocab_size),
        Vec::with_capacity(vocab_size),
    );
    for (id, slot) in tokens.into_iter().enumerate() {
        let (t, k) = slot.unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
        texts.push(Value::String(t));
        kinds.push(Value::I32(k));
    }
    let merges = model["merges"]
        .as_array()
        .ok_or("tokenizer.json has no model.merges")?
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(pair) => match (
                pair.first().and_then(Json::as_str),
                pair.get(1).and_then(Json::as_str),
            ) {
                (Some(a), Some(b)) => Ok(Value::String(format!("{a} {b}"))),
                _ => Err(format!("merge {m} is not a pair of strings")),
            },
            other => Err(format!("merge {other} is not a string or a pair")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![
        (keys::TOKENIZER_MODEL.into(), Value::String("gpt2".into())),
        (keys::TOKENIZER_PRE.into(), Value::String(pre.into())),
        (keys::TOKENIZER_TOKENS.into(), Value::Array(texts)),
        (keys::TOKENIZER_TOKEN_TYPE.into(), Value::Array(kinds)),
        (keys::TOKENIZER_MERGES.into(), Value::Array(merges)),
    ])
}

/// The id of `token` in `tokenizer` (vocabulary or added tokens).
pub fn token_id(tokenizer: &Json, token: &str) -> Option<u64> {
    tokenizer["added_tokens"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["content"].as_str() == Some(token)))
        .and_then(|t| t["id"].as_u64())
        .or_else(|| tokenizer["model"]["vocab"][token].as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_types_and_merges_like_the_converter() {
        let t: Json = serde_json::from_str(
            r#"{"model":{"type":"BPE","vocab":{"a":0,"b":1,"ab":2},"merges":[["a","b"]]},
                "added_tokens":[{"id":3,"content":"<|im_end|>","special":true},{"id":4,"content":"<think>","special":false}]}"#,
        )
        .unwrap();
        let md = gguf_metadata(&t, 6, "qwen35").unwrap();
        let get = |k: &str| md.iter().find(|(n, _)| n == k).unwrap().1.clone();
        let tokens: Vec<String> = get(keys::TOKENIZER_TOKENS)
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(tokens, ["a", "b", "ab", "<|im_end|>", "<think>", "[PAD5]"]);
        let kinds: Vec<i64> = get(keys::TOKENIZER_TOKEN_TYPE)
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(kinds, [1, 1, 1, 3, 4, 5]);
        assert_eq!(
            get(keys::TOKENIZER_MERGES).as_array().unwrap()[0].as_str(),
            Some("a b")
        );
        assert_eq!(token_id(&t, "<|im_end|>"), Some(3));
        assert!(
            gguf_metadata(&t, 4, "qwen35")
                .unwrap_err()
                .contains("outside the vocabulary")
        );
    }
}
