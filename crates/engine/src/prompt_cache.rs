//! The prefix cache as generation uses it: where to take snapshots, how to prefill so that a
//! resumed prompt computes exactly what a fresh one would, and the disk tier.
//!
//! A request goes: [`PromptCache::admit`] (the state of the longest cached prefix and how
//! many prompt tokens it covers) → prefill of the rest by the engine loop
//! ([`crate::engine`]), cut at the chunk boundaries where a snapshot pays
//! ([`PromptCache::snapshot_points`]) → generation → [`PromptCache::complete`] (snapshot at the end of the
//! answer). The next turn of an append-only conversation then resumes exactly where the last
//! answer ended and computes only its new tokens.
//!
//! Where snapshots pay (a Gated DeltaNet snapshot of Qwen3.6-27B is ~150 MiB, of 0.8B ~19
//! MiB):
//!
//! * the end of every prompt and of every answer: the next turn extends one of them;
//! * the last chunk boundary before each prompt's end: when the template re-renders the last
//!   turn differently (reasoning dropped without `preserve_thinking`), the prompt departs from
//!   the cached tokens a few tokens before the old prompt's end, and resuming there costs at
//!   most one chunk;
//! * every `snapshot_every` tokens of prefill (by default, the span whose KV memory equals one
//!   snapshot), so prompts that share a long prefix (a system prompt, a document) resume near
//!   where they part.
//!
//! Exactness: prefill pieces start and end at multiples of the chunk length (or at the
//! prompt's ends) and always use the chunked delta rule, so a prompt resumed from a
//! chunk-boundary snapshot of a prefill gives bit-identical numbers to a cold prefill. A
//! prompt resumed from the end of a generated answer continues from state the model built
//! token by token (the recurrent form), where a cold prefill of the same tokens uses the
//! chunked form: the two agree to rounding (≤ 1e-4 relative, tested in `qinfer-model`), not
//! bit for bit.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use qinfer_cache::KeyElem;
use qinfer_cache::persist::{self, PersistError};
use qinfer_cache::prefix::token_key;
use qinfer_cache::{BLOCK_TOKENS, CacheConfig, CacheStats, LayerSpec, Lookup, PrefixCache};
use qinfer_model::Qwen35;
use sha2::{Digest, Sha256};

/// How a [`PromptCache`] is set up.
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    /// Most bytes of KV blocks and snapshots held.
    pub budget_bytes: usize,
    /// Snapshot every this many prefill tokens (rounded up to a multiple of the chunk length);
    /// `None`: the span whose KV memory equals one DeltaNet snapshot.
    pub snapshot_every: Option<usize>,
    /// Disk tier: the cache is loaded from and saved to a file in this directory.
    pub dir: Option<PathBuf>,
}

/// A prefix cache shared by every sequence of one model.
#[derive(Debug)]
pub struct PromptCache {
    inner: Mutex<PrefixCache>,
    /// Recent `(text, ids)` of prompts + answers, newest last ([`PromptCache::encode`]).
    texts: Mutex<Vec<(String, Vec<u32>)>>,
    snapshot_every: usize,
    dir: Option<PathBuf>,
    fingerprint: String,
    /// Why the disk tier could not be loaded, if it could not.
    pub load_note: Option<String>,
}

const FILE_KIND: &[u8; 8] = b"PCACHE\0\0";
/// Prompt + answer texts remembered for [`PromptCache::encode`] (about one per recent
/// conversation: a turn supersedes the earlier turns it extends). Not counted in the byte
/// budget: at most this many texts and their ids.
const REMEMBERED_TEXTS: usize = 64;
const FILE_NAME: &str = "prefix-cache.qinfer";

impl PromptCache {
    /// A cache for `model`; with a `dir`, starts from the file saved there if it is for the
    /// same model (otherwise empty, with the reason in `load_note`).
    pub fn new(model: &Qwen35, opts: CacheOptions) -> Self {
        let specs = model.state_specs();
        let every = opts
            .snapshot_every
            .unwrap_or_else(|| default_snapshot_every(&specs))
            .max(1)
            .div_ceil(BLOCK_TOKENS)
            * BLOCK_TOKENS;
        let config = CacheConfig {
            budget_bytes: opts.budget_bytes,
        };
        let fingerprint = model_fingerprint(model);
        let mut load_note = None;
        let mut cache = PrefixCache::new(specs.clone(), config);
        let mut texts = Vec::new();
        if let Some(dir) = &opts.dir {
            let path = dir.join(FILE_NAME);
            if path.is_file() {
                match load(&path, &fingerprint, model.config.vocab, specs, config) {
                    Ok((c, t)) => (cache, texts) = (c, t),
                    Err(e) => load_note = Some(format!("prompt cache not loaded: {e}")),
                }
            }
        }
        PromptCache {
            inner: Mutex::new(cache),
            texts: Mutex::new(texts),
            snapshot_every: every,
            dir: opts.dir,
            fingerprint,
            load_note,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PrefixCache> {
        // A panic while holding the lock cannot leave the tree half-updated in a way that
        // yields wrong states (every insert checks shapes), so keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Request admission: the state of the longest cached prefix of `prompt` and how many
    /// prompt tokens it covers (at most `prompt.len() - 1`), with the miss reason if cached
    /// tokens will be recomputed.
    pub fn admit(&self, prompt: &[u32]) -> Lookup {
        self.admit_key(&token_key(prompt))
    }

    /// [`PromptCache::admit`] for a prompt's key (images in it: [`KeyElem::Image`]).
    pub fn admit_key(&self, key: &[KeyElem]) -> Lookup {
        self.lock().lookup(key)
    }

    /// Stores `state` (which holds exactly `tokens`): its KV blocks and a snapshot at its end.
    /// Called at the end of a prompt and of every answer.
    pub fn complete(&self, tokens: &[u32], state: &qinfer_cache::SequenceState) {
        self.complete_key(&token_key(tokens), state);
    }

    /// [`PromptCache::complete`] for a key.
    pub fn complete_key(&self, key: &[KeyElem], state: &qinfer_cache::SequenceState) {
        self.lock().insert(key, state, true);
    }

    /// Remembers that `text` (a prompt and the answer generated after it) is the tokens `ids`
    /// the model actually saw, for [`PromptCache::encode`]. Call it only when `ids` decode to
    /// exactly `text`'s answer part (no stop string cut it).
    pub fn remember(&self, text: String, ids: Vec<u32>) {
        let mut texts = self.texts.lock().unwrap_or_else(|e| e.into_inner());
        // An earlier turn of the same conversation is a prefix of this one: superseded.
        texts.retain(|(t, _)| !text.starts_with(t.as_str()));
        if texts.len() == REMEMBERED_TEXTS {
            texts.remove(0);
        }
        texts.push((text, ids));
    }

    /// Tokenizes a rendered prompt so that a history the model generated keeps the exact
    /// tokens it was generated as. Re-tokenizing a generated answer need not give back the
    /// generated ids (a model may emit a non-canonical split of its text), and then the
    /// prompt would depart from the cache there. So when `text` starts with a remembered
    /// prompt + answer and goes on with a special token (`<|im_end|>`: special tokens split
    /// the text into independently tokenized pieces), the remembered ids are used for that
    /// part and only the rest is tokenized.
    pub fn encode(
        &self,
        tokenizer: &crate::tokenizer::Tokenizer,
        text: &str,
    ) -> Result<Vec<u32>, crate::tokenizer::TokenizerError> {
        let known = {
            let texts = self.texts.lock().unwrap_or_else(|e| e.into_inner());
            texts
                .iter()
                .filter(|(t, _)| text.starts_with(t.as_str()))
                .max_by_key(|(t, _)| t.len())
                .cloned()
        };
        if let Some((t, ids)) = known {
            let rest = tokenizer.encode(&text[t.len()..])?;
            if rest.first().is_some_and(|&id| tokenizer.is_special(id)) {
                let mut all = ids;
                all.extend(rest);
                return Ok(all);
            }
        }
        tokenizer.encode(text)
    }

    /// Chunk boundaries strictly between `start` and `end` where prefill takes a snapshot.
    ///
    /// Never `end - 1`: a cut there would leave a one-token piece, which a step that picks
    /// the delta-rule form by piece length runs in the recurrent form, where an uncut prompt
    /// runs that token in the chunked form (not bit-identical).
    pub fn snapshot_points(&self, start: usize, end: usize) -> Vec<usize> {
        let last = (end.saturating_sub(2) / BLOCK_TOKENS) * BLOCK_TOKENS;
        (start / BLOCK_TOKENS + 1..)
            .map(|i| i * BLOCK_TOKENS)
            .take_while(|&b| b + 1 < end)
            .filter(|&b| b % self.snapshot_every == 0 || b == last)
            .collect()
    }

    /// Counts prompt tokens computed after an admission.
    pub fn record_processed(&self, n: usize) {
        self.lock().record_processed(n);
    }

    pub fn stats(&self) -> CacheStats {
        self.lock().stats()
    }

    pub fn snapshot_every(&self) -> usize {
        self.snapshot_every
    }

    /// Writes the cache to its directory (no-op without one).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let body = self.lock().to_bytes();
        let texts = self.texts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let header = serde_json::json!({"model": self.fingerprint, "texts": texts}).to_string();
        persist::write_file(&dir.join(FILE_NAME), FILE_KIND, &header, &body)
    }
}

/// Remembered `(text, ids)` pairs, as [`PromptCache::save`] writes them.
type Texts = Vec<(String, Vec<u32>)>;

fn load(
    path: &Path,
    fingerprint: &str,
    vocab: usize,
    specs: Vec<LayerSpec>,
    config: CacheConfig,
) -> Result<(PrefixCache, Texts), String> {
    let (header, body) = persist::read_file(path, FILE_KIND).map_err(|e| e.to_string())?;
    check_fingerprint(&header, fingerprint).map_err(|e| format!("{}: {e}", path.display()))?;
    let corrupt = |e: String| format!("{}: corrupt ({e})", path.display());
    let texts: Texts = serde_json::from_str::<serde_json::Value>(&header)
        .ok()
        .and_then(|h| h.get("texts").cloned())
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?
        .unwrap_or_default();
    // Remembered ids become prompt tokens (`encode`): a file whose checksum and fingerprint
    // hold but whose ids do not fit the model is refused, not served from.
    if let Some(id) = texts
        .iter()
        .flat_map(|(_, ids)| ids)
        .find(|&&id| id as usize >= vocab)
    {
        return Err(corrupt(format!(
            "token id {id} is outside the vocabulary of {vocab}"
        )));
    }
    let cache = PrefixCache::from_bytes(specs, config, &body).map_err(corrupt)?;
    Ok((cache, texts))
}

/// Checks that a file's JSON header names the model `fingerprint`.
pub fn check_fingerprint(header: &str, fingerprint: &str) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(header).map_err(|e| format!("bad header: {e}"))?;
    match v.get("model").and_then(|m| m.as_str()) {
        Some(m) if m == fingerprint => Ok(()),
        _ => Err("written for another model".into()),
    }
}

/// A string that changes when the model's config or weights change: SHA-256 over the config
/// and samples of the embedding, LM head and every layer's first weight row.
pub fn model_fingerprint(model: &Qwen35) -> String {
    let mut h = Sha256::new();
    h.update(format!("{:?}", model.config).as_bytes());
    let mut sample = |w: &qinfer_tensor::Weight| {
        let b = w.bytes();
        h.update(&b[..b.len().min(4096)]);
        h.update(&b[b.len().saturating_sub(4096)..]);
    };
    sample(&model.embed);
    sample(&model.lm_head);
    for layer in &model.layers {
        match &layer.mixer {
            qinfer_model::qwen35::Mixer::DeltaNet(d) => sample(&d.qkv),
            qinfer_model::qwen35::Mixer::Attention(a) => sample(&a.q),
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Tokens of prefill after which the KV memory equals one DeltaNet snapshot: the default
/// spacing of prefill snapshots, so snapshots never cost more memory than the KV they sit in.
pub fn default_snapshot_every(specs: &[LayerSpec]) -> usize {
    let (mut kv_per_token, mut snapshot) = (0usize, 0usize);
    for s in specs {
        match *s {
            LayerSpec::Attention { kv_width, kv_type } => {
                kv_per_token += 2 * kv_type.row_bytes(kv_width)
            }
            LayerSpec::DeltaNet {
                conv_channels,
                conv_kernel,
                recurrent_len,
            } => snapshot += (conv_kernel.saturating_sub(1) * conv_channels + recurrent_len) * 4,
        }
    }
    (snapshot / kv_per_token.max(1))
        .max(1)
        .div_ceil(BLOCK_TOKENS)
        * BLOCK_TOKENS
}

/// Loads a session-style file: checks its model fingerprint, returns its header and body.
pub fn read_for_model(
    path: &Path,
    kind: &[u8; 8],
    model: &Qwen35,
) -> Result<(String, Vec<u8>), String> {
    let (header, body) = persist::read_file(path, kind).map_err(|e: PersistError| e.to_string())?;
    check_fingerprint(&header, &model_fingerprint(model))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((header, body))
}
