//! Structured outputs: an answer constrained to a JSON Schema, or its tool calls to the
//! offered tools' schemas ([`SchemaIndex::compile_tool_calls`]), by llguidance (the grammar
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
        self.constraint(TopLevelGrammar::from_json_schema(schema))
    }

    /// A matcher for `grammar`, or why it cannot be built.
    fn constraint(&self, grammar: TopLevelGrammar) -> Result<SchemaConstraint, String> {
        let parser = self
            .factory
            .create_parser(grammar)
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

impl SchemaIndex {
    /// A matcher for answers whose tool calls follow `tools` exactly: any text, then calls in
    /// the Qwen template's XML format (`<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE
    /// \n</parameter>\n…</function>\n</tool_call>`), each naming an offered function, with
    /// its parameters in the schema's property order (required ones present, no others) and
    /// each value valid against its schema: a string (its `enum`, or text within its
    /// `minLength`/`maxLength`) as raw text, anything else as JSON written as the template's
    /// `tojson` writes it. With `single_call`, at most one call.
    pub fn compile_tool_calls(
        &self,
        tools: &[crate::parser::ToolSpec],
        single_call: bool,
    ) -> Result<SchemaConstraint, String> {
        self.constraint(TopLevelGrammar::from_lark(tool_call_grammar(
            tools,
            single_call,
        )?))
    }
}

/// A Lark string literal of `s`.
fn lark_str(s: &str) -> String {
    Value::from(s).to_string()
}

/// The Lark grammar of answers calling `tools` (see [`SchemaIndex::compile_tool_calls`]).
fn tool_call_grammar(
    tools: &[crate::parser::ToolSpec],
    single_call: bool,
) -> Result<String, String> {
    let calls = if single_call { "call?" } else { "call*" };
    let mut g = format!("start: TEXT {calls}\nTEXT: /(?s:.*)/\nSEP: /\\n*/\n");
    let fns: Vec<String> = (0..tools.len()).map(|i| format!("f{i}")).collect();
    g.push_str(&format!(
        "call: <tool_call> \"\\n\" ({}) \"\\n\" </tool_call> SEP\n",
        fns.join(" | ")
    ));
    for (i, tool) in tools.iter().enumerate() {
        let props = tool
            .parameters
            .get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let required: Vec<&str> = tool
            .parameters
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut params = Vec::new();
        for (j, (key, schema)) in props.iter().enumerate() {
            let rule = format!("p{i}_{j}");
            params.push(if required.contains(&key.as_str()) {
                rule.clone()
            } else {
                format!("{rule}?")
            });
            let head = lark_str(&format!("<parameter={key}>\n"));
            let string_enum = schema
                .get("enum")
                .and_then(Value::as_array)
                .is_some_and(|o| !o.is_empty() && o.iter().all(Value::is_string));
            let kind = match schema.get("type").and_then(Value::as_str) {
                _ if string_enum => Some("string"),
                k => k,
            };
            let value = match kind {
                Some("string") => match schema.get("enum").and_then(Value::as_array) {
                    Some(options) => {
                        let alts: Vec<String> = options
                            .iter()
                            .filter_map(Value::as_str)
                            .map(|o| lark_str(&format!("{o}\n</parameter>\n")))
                            .collect();
                        if alts.is_empty() {
                            return Err(format!("`{}.{key}`: an enum with no strings", tool.name));
                        }
                        format!("({})", alts.join(" | "))
                    }
                    None => {
                        let min = schema.get("minLength").and_then(Value::as_u64).unwrap_or(0);
                        let max = schema
                            .get("maxLength")
                            .and_then(Value::as_u64)
                            .map_or(String::new(), |m| m.to_string());
                        g.push_str(&format!(
                            "v{i}_{j}[suffix=\"\\n</parameter>\\n\"]: /(?s:.{{{min},{max}}})/\n"
                        ));
                        format!("v{i}_{j}")
                    }
                },
                _ => {
                    let mut sub = schema.clone();
                    if let Some(o) = sub.as_object_mut() {
                        o.insert(
                            "x-guidance".into(),
                            json!({"whitespace_flexible": false, "item_separator": ", ",
                                   "key_separator": ": "}),
                        );
                    }
                    format!("%json {sub} {}", lark_str("\n</parameter>\n"))
                }
            };
            g.push_str(&format!("{rule}: {head} {value}\n"));
        }
        g.push_str(&format!(
            "f{i}: {} {} {}\n",
            lark_str(&format!("<function={}>\n", tool.name)),
            params.join(" "),
            lark_str("</function>")
        ));
    }
    Ok(g)
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
