//! Structured outputs: an answer constrained to a JSON Schema, by llguidance (the grammar
//! engine llama.cpp, vLLM and SGLang use). Before each token of the answer is sampled, every
//! token that could not continue a JSON value valid against the schema is masked; when the
//! value is complete the answer ends as the end-of-turn token would end it. Reasoning before
//! the answer is not constrained.
//!
//! The vocabulary is indexed once per tokenizer ([`SchemaIndex`]): every ordinary token by
//! its bytes, every added token (`<|im_end|>`, `<think>`, …) behind llguidance's special-token
//! marker, so no schema can produce one as text; the end-of-turn token is llguidance's end of
//! sequence. Schemas compile to compact JSON (no whitespace between tokens, as OpenAI's
//! structured outputs write it), so an answer's length is bounded by what the schema allows.
//! Keywords llguidance cannot enforce are an error naming them, never silently ignored.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use crate::tokenizer::Tokenizer;

/// Largest schema accepted, bytes of its JSON text.
pub const MAX_SCHEMA_BYTES: usize = 256 << 10;

/// A tokenizer's vocabulary indexed for llguidance (built once, shared by every request).
#[derive(Clone)]
pub struct SchemaIndex {
    factory: Arc<ParserFactory>,
    /// The end-of-turn token the answer ends with.
    end: u32,
}

impl std::fmt::Debug for SchemaIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SchemaIndex(end {})", self.end)
    }
}

impl SchemaIndex {
    /// Indexes `tokenizer`'s vocabulary ([`Tokenizer::schema_index`] builds it once).
    pub(crate) fn build(tokenizer: &Tokenizer) -> Result<SchemaIndex, String> {
        let end = tokenizer
            .token_id("<|im_end|>")
            .or_else(|| tokenizer.token_id("<|endoftext|>"))
            .ok_or("the tokenizer has no end-of-turn token")?;
        let ordinary = tokenizer.ordinary_token_bytes();
        let words: Vec<Vec<u8>> = (0..ordinary.len() as u32)
            .map(|id| match &ordinary[id as usize] {
                b if !b.is_empty() => b.to_vec(),
                _ => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend(tokenizer.token_str(id).unwrap_or_default().into_bytes());
                    w
                }
            })
            .collect();
        let info = TokRxInfo::new(words.len() as u32, end);
        let trie = TokTrie::from(&info, &words);
        let env: llguidance::toktrie::TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(SchemaIndex {
            factory: Arc::new(factory),
            end,
        })
    }

    /// A matcher for `schema`, or why it cannot be enforced.
    pub fn compile(&self, schema: &Value) -> Result<SchemaConstraint, String> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err("the schema must be a JSON object".into());
        }
        let len = schema.to_string().len();
        if len > MAX_SCHEMA_BYTES {
            return Err(format!(
                "the schema is {len} bytes; at most {MAX_SCHEMA_BYTES} are accepted"
            ));
        }
        let mut schema = schema.clone();
        if let Some(obj) = schema.as_object_mut() {
            // Compact JSON; the request's own `x-guidance` options (if any) win.
            let mut options = json!({"whitespace_flexible": false});
            if let Some(Value::Object(own)) = obj.get("x-guidance") {
                for (k, v) in own {
                    options[k] = v.clone();
                }
            }
            obj.insert("x-guidance".into(), options);
        }
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(SchemaConstraint {
            matcher,
            end: self.end,
        })
    }
}

/// One answer's schema constraint.
pub struct SchemaConstraint {
    matcher: Matcher,
    end: u32,
}

impl std::fmt::Debug for SchemaConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SchemaConstraint(stopped {})", self.matcher.is_stopped())
    }
}

impl SchemaConstraint {
    /// The tokens allowed next (the end-of-turn token once the value is complete), or `None`
    /// if the constraint failed (an internal error: the answer goes on unconstrained).
    pub fn allowed(&mut self) -> Option<SimpleVob> {
        self.matcher.compute_mask().ok()
    }

    /// `row` with every token the schema rejects set to -inf.
    pub fn mask(&mut self, row: &[f32]) -> Option<Vec<f32>> {
        let allowed = self.allowed()?;
        let mut out = vec![f32::NEG_INFINITY; row.len()];
        for id in allowed.iter() {
            if let Some(&x) = row.get(id as usize) {
                out[id as usize] = x;
            }
        }
        Some(out)
    }

    /// Advances past `token`; false if the schema does not allow it (a forced token).
    pub fn consume(&mut self, token: u32) -> bool {
        self.matcher.consume_token(token).is_ok()
    }

    /// Whether the grammar has ended (nothing, not even the end of the turn, can follow). A
    /// complete value that allows only the end-of-turn token next ends through the mask: the
    /// end token is then the only one sampling can pick.
    pub fn is_done(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The token that ends the answer.
    pub fn end(&self) -> u32 {
        self.end
    }
}
