//! Session files: a conversation saved with the model state it built, so `qinfer run
//! --session FILE` resumes it without processing it again.
//!
//! The file is a [`qinfer_cache::persist`] container of kind `SESSION`: the JSON header holds
//! the model fingerprint and the messages; the body holds the token ids, the sequence state
//! (KV rows + DeltaNet state at the end of the last answer, `f32`) and the prompt-end marks
//! (position + DeltaNet state only: their KV rows are a prefix of the final state's). A
//! session written for another model, or damaged, is an error naming the file.

use std::path::Path;

use qinfer_cache::persist::{self, Reader, Writer};
use qinfer_cache::{DeltaNetState, LayerState, SequenceState};
use qinfer_model::Qwen35;
use serde_json::Value;

use crate::generate::Sequence;
use crate::prompt_cache::{model_fingerprint, read_for_model};

const KIND: &[u8; 8] = b"SESSION\0";

/// A conversation and the state that holds it.
#[derive(Debug)]
pub struct Session {
    /// Chat messages so far (`role`, `content`, `reasoning_content`, ...).
    pub messages: Vec<Value>,
    /// Whatever else the caller wants back (e.g. thinking on or off).
    pub settings: Value,
    /// The sequence: `tokens` and the state after them.
    pub sequence: Sequence,
}

/// Writes `messages` and `seq` (tokens and state) to `path`, atomically.
pub fn save(
    path: &Path,
    model: &Qwen35,
    messages: &[Value],
    settings: &Value,
    seq: &Sequence,
) -> std::io::Result<()> {
    let header = serde_json::json!({
        "model": model_fingerprint(model),
        "messages": messages,
        "settings": settings,
    })
    .to_string();
    let mut w = Writer::default();
    w.u64(seq.tokens.len() as u64);
    for &t in &seq.tokens {
        w.u32(t);
    }
    w.state(&seq.state);
    w.u64(seq.marks().len() as u64);
    for (pos, snap) in seq.marks() {
        w.u64(*pos as u64);
        for l in snap.state().layers() {
            if let LayerState::DeltaNet(d) = l {
                w.f32s(&d.conv.host());
                w.f32s(&d.recurrent.host());
            }
        }
    }
    persist::write_file(path, KIND, &header, &w.buf)
}

/// Reads a session written by [`save`] for this `model`.
pub fn load(path: &Path, model: &Qwen35) -> Result<Session, String> {
    let (header, body) = read_for_model(path, KIND, model)?;
    let corrupt = |e: String| format!("{}: corrupt ({e})", path.display());
    let header: Value = serde_json::from_str(&header).map_err(|e| corrupt(e.to_string()))?;
    let messages = header
        .get("messages")
        .and_then(|m| m.as_array())
        .cloned()
        .ok_or_else(|| corrupt("no messages".into()))?;
    let settings = header.get("settings").cloned().unwrap_or(Value::Null);
    let mut r = Reader::new(&body);
    let n = r.len(4).map_err(corrupt)?;
    let tokens = (0..n)
        .map(|_| r.u32())
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    let vocab = model.config.vocab;
    if let Some(id) = tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(corrupt(format!(
            "token id {id} is outside the vocabulary of {vocab}"
        )));
    }
    let state = r.state().map_err(corrupt)?;
    let mut fresh = model.new_state();
    fresh
        .restore(&state.snapshot())
        .map_err(|e| corrupt(e.to_string()))?;
    if state.pos() != tokens.len() {
        return Err(corrupt("state and tokens disagree".into()));
    }
    let mut sequence = Sequence::from_state(fresh, tokens);
    let marks = r.len(8).map_err(corrupt)?;
    for _ in 0..marks {
        let pos = r.u64().map_err(corrupt)? as usize;
        if pos > sequence.tokens.len() {
            return Err(corrupt("mark past the end".into()));
        }
        let mut layers = Vec::new();
        for l in sequence.state.layers() {
            layers.push(match l {
                LayerState::Attention(kv) => {
                    let mut kv = kv.clone();
                    kv.truncate(pos);
                    LayerState::Attention(kv)
                }
                LayerState::DeltaNet(d) => {
                    let saved = DeltaNetState::from_host(
                        r.f32s().map_err(corrupt)?,
                        r.f32s().map_err(corrupt)?,
                    );
                    if saved.conv.len() != d.conv.len()
                        || saved.recurrent.len() != d.recurrent.len()
                    {
                        return Err(corrupt("mark shape".into()));
                    }
                    LayerState::DeltaNet(saved)
                }
            });
        }
        sequence.push_mark(SequenceState::from_layers(layers, pos).snapshot());
    }
    Ok(Session {
        messages,
        settings,
        sequence,
    })
}
