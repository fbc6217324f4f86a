//! The model's tokenizer: text to token ids and back, including while streaming.
//!
//! Qwen3.5/3.6 ship a Hugging Face `tokenizer.json`: a byte-level BPE (GPT-2's byte↔char
//! mapping) over 248,044 tokens, an NFC normaliser, a Qwen-specific pre-tokenizer regex, and 33
//! added tokens (`<|im_start|>`, `<think>`, `<tool_call>`, ...). Only 21 of those are flagged
//! special: `<think>`, `</think>`, the tool-call, tool-response and FIM markers are not, so
//! decoding with `skip_special` keeps them for the output parser. Rather than
//! re-implement that pipeline, [`Tokenizer`] wraps the `tokenizers` crate (pure-Rust
//! `fancy-regex` build) and pins its behaviour to Python's with a committed corpus of ids from
//! the Python package. Encoding is exactly Python's
//! `tokenizer.encode(text, add_special_tokens=False)`: special-token strings in the text become
//! their single ids, because a rendered chat prompt is made of them. Qwen has no BOS, so nothing
//! is ever prepended.
//!
//! Streaming is the part `tokenizers` does not do the way a server needs. A byte-level token is
//! a run of bytes, not of characters: one emoji or CJK character is often split over two or
//! three tokens, so decoding token by token would emit U+FFFD halves. [`StreamDecoder`] keeps
//! the at most three bytes of an unfinished UTF-8 sequence and emits text only once whole
//! characters are complete. It works on the tokens' bytes directly (no re-decoding of a
//! growing window), so each step costs O(token length), and the concatenation of everything it
//! emits is byte-identical to [`Tokenizer::decode`] of the same ids, U+FFFD replacements of
//! invalid byte runs included. That equality holds because both sides turn the same byte
//! stream into text with the same maximal-invalid-subpart rule (`String::from_utf8_lossy` in
//! `tokenizers`, `str::from_utf8`'s `error_len` here); the tests check it on random ids.
//!
//! The stream decoder relies on the decoder being byte-level, so loading rejects a
//! `tokenizer.json` with any other decoder rather than stream wrong text later.
//!
//! Threads: `tokenizers` can fan batch calls out to a global rayon pool. The engine owns its
//! threads and only encodes single strings, so loading switches that parallelism off.
//!
//! Ids outside the vocabulary (the embedding matrix is padded to 248,320 rows, beyond the
//! 248,077 real tokens) decode to nothing, as in Python; the sampler is what must never pick
//! them.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use tokenizers::DecoderWrapper;

/// Everything that can go wrong loading or running the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read at all.
    #[error("cannot read tokenizer file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The data looked like gzip but did not decompress (corrupt or truncated).
    #[error("tokenizer {origin}: gzip data is corrupt or truncated: {source}")]
    Gzip {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// The JSON did not parse as a Hugging Face `tokenizer.json`.
    #[error("tokenizer {origin}: not a valid tokenizer.json: {source}")]
    Parse {
        origin: String,
        #[source]
        source: tokenizers::Error,
    },
    /// A well-formed `tokenizer.json` of a kind this engine does not handle.
    #[error("tokenizer {origin}: unsupported: {reason}")]
    Unsupported { origin: String, reason: String },
    /// `tokenizers` failed to encode a text.
    #[error("cannot encode text: {0}")]
    Encode(#[source] tokenizers::Error),
    /// `tokenizers` failed to decode ids.
    #[error("cannot decode ids: {0}")]
    Decode(#[source] tokenizers::Error),
}

/// A loaded `tokenizer.json`. Cloning is cheap (the vocabulary is shared), so every sequence's
/// [`StreamDecoder`] can hold its own handle.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// [`Tokenizer::ordinary_token_bytes`], built on first use and shared by all clones.
    ordinary_bytes: Arc<std::sync::OnceLock<TokenBytes>>,
    /// [`Tokenizer::schema_index`], built on first use and shared by all clones.
    schema_index: Arc<std::sync::OnceLock<Result<crate::schema::SchemaIndex, String>>>,
}

/// Every token's bytes, indexed by id (see [`Tokenizer::ordinary_token_bytes`]).
pub type TokenBytes = Arc<[Box<[u8]>]>;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

impl Tokenizer {
    /// Loads a `tokenizer.json`, plain or gzip-compressed (`tokenizer.json.gz`); gzip is
    /// recognised by its magic bytes, not by the file name.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Read {
            path: origin.clone(),
            source,
        })?;
        if bytes.starts_with(&GZIP_MAGIC) {
            Self::load(&gunzip(&bytes, &origin)?, &origin)
        } else {
            Self::load(&bytes, &origin)
        }
    }

    /// Loads a `tokenizer.json` from its bytes.
    pub fn from_json_bytes(json: &[u8]) -> Result<Self, TokenizerError> {
        Self::load(json, "(in-memory tokenizer.json)")
    }

    /// Loads a gzip-compressed `tokenizer.json` from its bytes.
    pub fn from_gz_bytes(gz: &[u8]) -> Result<Self, TokenizerError> {
        let origin = "(in-memory tokenizer.json.gz)";
        Self::load(&gunzip(gz, origin)?, origin)
    }

    fn load(json: &[u8], origin: &str) -> Result<Self, TokenizerError> {
        tokenizers::utils::parallelism::set_parallelism(false);
        let inner =
            tokenizers::Tokenizer::from_bytes(json).map_err(|source| TokenizerError::Parse {
                origin: origin.to_owned(),
                source,
            })?;
        match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => {}
            other => {
                return Err(TokenizerError::Unsupported {
                    origin: origin.to_owned(),
                    reason: format!(
                        "the decoder must be ByteLevel (byte-level BPE), found {other:?}"
                    ),
                });
            }
        }
        Ok(Self {
            inner: Arc::new(inner),
            ordinary_bytes: Arc::default(),
            schema_index: Arc::default(),
        })
    }

    /// Token ids for `text`, identical to Python's `encode(text, add_special_tokens=False)`:
    /// added tokens written in the text (`<|im_start|>`, `<think>`, ...) become their ids, and
    /// nothing is prepended or appended.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(TokenizerError::Encode)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text for `ids`; with `skip_special`, special tokens are left out. Ids outside the
    /// vocabulary contribute nothing, and byte runs that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(TokenizerError::Decode)
    }

    /// The id of a vocabulary entry, written as it is stored: `"<think>"`, or the byte-level
    /// form of a regular token (`"Ġworld"` for `" world"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary entry for `id` as it is stored (see [`Self::token_id`]).
    pub fn token_str(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The bytes `id` stands for in decoded text: `b" world"` for `"Ġworld"`, the text of a
    /// special token, or a fragment of a multi-byte character.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        self.inner
            .id_to_token(id)
            .map(|token| byte_level_bytes(&token))
    }

    /// Every id's decoded bytes (index = id, `0..vocab_size()`), with an empty entry for every
    /// added token (`<|im_end|>`, `<think>`, `<tool_call>`, ...), so that an entry is text a
    /// constraint can check as plain output. Built once per tokenizer (a full-vocabulary pass)
    /// and shared by every clone and every request.
    pub fn ordinary_token_bytes(&self) -> TokenBytes {
        self.ordinary_bytes
            .get_or_init(|| {
                let added = self.inner.get_added_tokens_decoder();
                (0..self.vocab_size() as u32)
                    .map(|id| {
                        if added.contains_key(&id) {
                            Box::default()
                        } else {
                            self.token_bytes(id).unwrap_or_default().into_boxed_slice()
                        }
                    })
                    .collect()
            })
            .clone()
    }

    /// The vocabulary indexed for JSON Schema constraints ([`crate::schema`]): built on first
    /// use (a full-vocabulary pass and a token trie) and shared by every clone and request.
    pub fn schema_index(&self) -> Result<crate::schema::SchemaIndex, String> {
        self.schema_index
            .get_or_init(|| crate::schema::SchemaIndex::build(self))
            .clone()
    }

    /// The most bytes any one token stands for (so a text of `n` bytes is at least
    /// `n / max_token_bytes()` tokens): over [`Tokenizer::ordinary_token_bytes`] (built once,
    /// shared) and the added tokens' text.
    pub fn max_token_bytes(&self) -> usize {
        let ordinary = self.ordinary_token_bytes().iter().map(|b| b.len()).max();
        let added = self
            .inner
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.len())
            .max();
        ordinary.max(added).unwrap_or(1).max(1)
    }

    /// Number of tokens, added tokens included (248,077 for Qwen3.5/3.6).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `id` is a special token, one that `decode(.., skip_special = true)` drops
    /// (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, ...; not `<think>` or `<tool_call>`).
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .id_to_token(id)
            .is_some_and(|token| self.inner.get_added_vocabulary().is_special_token(&token))
    }

    /// The bytes `decode` would produce for `id`, or none if it contributes nothing.
    fn decoded_bytes(&self, id: u32, skip_special: bool) -> Option<Vec<u8>> {
        let token = self.inner.id_to_token(id)?;
        if skip_special && self.inner.get_added_vocabulary().is_special_token(&token) {
            return None;
        }
        Some(byte_level_bytes(&token))
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish_non_exhaustive()
    }
}

fn gunzip(gz: &[u8], origin: &str) -> Result<Vec<u8>, TokenizerError> {
    // Compressed JSON shrinks about 3x; start near the final size to avoid regrowing.
    let mut json = Vec::with_capacity(gz.len().saturating_mul(4));
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut json)
        .map_err(|source| TokenizerError::Gzip {
            origin: origin.to_owned(),
            source,
        })?;
    Ok(json)
}

/// Inverse of GPT-2's byte→char table: `BYTE_OF_CHAR[c]` is the byte that char `c` stands
/// for, or `NO_BYTE`. Printable Latin-1 bytes stand for themselves; the other 68 bytes were
/// given the chars U+0100.. in byte order, so every char involved is below U+0144.
const BYTE_OF_CHAR: [u16; 0x144] = byte_of_char_table();
const NO_BYTE: u16 = u16::MAX;

const fn byte_of_char_table() -> [u16; 0x144] {
    let mut table = [NO_BYTE; 0x144];
    let mut next_unprintable = 0x100;
    let mut byte = 0;
    while byte < 256 {
        let printable = (byte >= 0x21 && byte <= 0x7e)
            || (byte >= 0xa1 && byte <= 0xac)
            || (byte >= 0xae && byte <= 0xff);
        if printable {
            table[byte] = byte as u16;
        } else {
            table[next_unprintable] = byte as u16;
            next_unprintable += 1;
        }
        byte += 1;
    }
    table
}

/// The bytes of one token as the `ByteLevel` decoder sees them: each char mapped back to its
/// byte, or, if any char is outside the table (an added token such as `"<think>"` is stored as
/// plain text, but ASCII punctuation maps to itself anyway), the token's own UTF-8.
fn byte_level_bytes(token: &str) -> Vec<u8> {
    let mapped: Option<Vec<u8>> = token
        .chars()
        .map(|c| match BYTE_OF_CHAR.get(c as usize) {
            Some(&b) if b != NO_BYTE => Some(b as u8),
            _ => None,
        })
        .collect();
    mapped.unwrap_or_else(|| token.as_bytes().to_vec())
}

/// Incremental detokenizer for one generated sequence: feed ids one at a time, get back only
/// whole characters.
///
/// The concatenation of every [`push`](Self::push) result and the final
/// [`finish`](Self::finish) equals [`Tokenizer::decode`] of all the ids, byte for byte.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special: bool,
    /// Bytes of a UTF-8 sequence that is still missing its continuation bytes (at most 3).
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// A decoder that drops special tokens from its output when `skip_special` is set.
    pub fn new(tokenizer: &Tokenizer, skip_special: bool) -> Self {
        Self {
            tokenizer: tokenizer.clone(),
            skip_special,
            pending: Vec::with_capacity(8),
        }
    }

    /// Adds one token and returns the text it completes: possibly empty (the token ended
    /// inside a multi-byte character), never a partial character. A byte run that can no
    /// longer become valid UTF-8 is emitted as U+FFFD, exactly where `decode` puts one.
    pub fn push(&mut self, id: u32) -> String {
        let Some(bytes) = self.tokenizer.decoded_bytes(id, self.skip_special) else {
            return String::new();
        };
        self.pending.extend_from_slice(&bytes);
        let mut text = String::with_capacity(self.pending.len());
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(valid) => {
                    text.push_str(valid);
                    start = self.pending.len();
                }
                Err(error) => {
                    let valid_end = start + error.valid_up_to();
                    // Valid by construction, so this borrows and replaces nothing.
                    text.push_str(&String::from_utf8_lossy(&self.pending[start..valid_end]));
                    match error.error_len() {
                        // Bytes that no continuation can repair: one U+FFFD, as
                        // `from_utf8_lossy` does for a maximal invalid subpart.
                        Some(invalid_len) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            start = valid_end + invalid_len;
                        }
                        // The start of a character whose remaining bytes are still to come.
                        None => {
                            start = valid_end;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        text
    }

    /// Ends the sequence: an unfinished character left over becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
