//! The tokenizer against its oracle: the committed Qwen3.5/3.6 `tokenizer.json.gz` must give
//! the ids the Python `tokenizers` package gave (tests/fixtures/tokenizer/corpus.json, see the
//! README there), decode back to the text, and stream without ever splitting a character.

use std::path::PathBuf;
use std::sync::LazyLock;

use qinfer_engine::tokenizer::{StreamDecoder, Tokenizer, TokenizerError};
use serde::Deserialize;

fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

const TOKENIZER_GZ: &str = "assets/qwen3.5-tokenizer/tokenizer.json.gz";

/// Loaded once per test binary: parsing 248k tokens is the slow part of these tests.
static QWEN: LazyLock<Tokenizer> = LazyLock::new(|| {
    Tokenizer::from_file(repo_path(TOKENIZER_GZ)).expect("committed tokenizer asset loads")
});

#[derive(Deserialize)]
struct Corpus {
    tokenizers_version: String,
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    name: String,
    text: String,
    ids: Vec<u32>,
    /// What Python's `decode(ids)` gave.
    decoded: String,
    /// The NFC normaliser changes the text, so decoding cannot give it back.
    nfc_changes: bool,
}

fn corpus() -> Corpus {
    let path = repo_path("tests/fixtures/tokenizer/corpus.json");
    let json = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&json).expect("corpus.json parses")
}

/// The one check every text goes through: ids as Python, decode as Python, the round trip,
/// and streaming one id at a time. Returns what went wrong, if anything.
fn check(tok: &Tokenizer, entry: &Entry) -> Vec<String> {
    let mut problems = Vec::new();
    let name = &entry.name;

    let ids = tok.encode(&entry.text).expect("encode");
    if ids != entry.ids {
        problems.push(format!(
            "{name}: ids differ from Python\n   rust:   {ids:?}\n   python: {:?}",
            entry.ids
        ));
    }

    let decoded = tok.decode(&entry.ids, false).expect("decode");
    if decoded != entry.decoded {
        problems.push(format!(
            "{name}: decode differs from Python: {decoded:?} vs {:?}",
            entry.decoded
        ));
    }
    if entry.nfc_changes {
        if decoded == entry.text {
            problems.push(format!("{name}: marked as NFC-changed but round-trips"));
        }
    } else if decoded != entry.text {
        problems.push(format!(
            "{name}: round trip changed the text: {decoded:?} vs {:?}",
            entry.text
        ));
    }

    for skip_special in [false, true] {
        let expected = tok.decode(&entry.ids, skip_special).expect("decode");
        let pieces = stream(tok, &entry.ids, skip_special);
        let streamed: String = pieces.concat();
        if streamed != expected {
            problems.push(format!(
                "{name} (skip_special={skip_special}): stream gave {streamed:?}, decode {expected:?}"
            ));
        }
        if !expected.contains(char::REPLACEMENT_CHARACTER)
            && pieces
                .iter()
                .any(|p| p.contains(char::REPLACEMENT_CHARACTER))
        {
            problems.push(format!("{name}: a streamed piece has U+FFFD: {pieces:?}"));
        }
    }
    problems
}

/// Every `push` result, then `finish`'s, as separate pieces.
fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> Vec<String> {
    let mut decoder = StreamDecoder::new(tok, skip_special);
    let mut pieces: Vec<String> = ids.iter().map(|&id| decoder.push(id)).collect();
    pieces.push(decoder.finish());
    pieces
}

#[test]
fn corpus_matches_python_tokenizers() {
    let corpus = corpus();
    assert_eq!(
        corpus.tokenizers_version, "0.23.2",
        "regenerate with the pinned version"
    );
    assert!(corpus.entries.len() >= 50, "corpus unexpectedly small");
    let problems: Vec<String> = corpus
        .entries
        .iter()
        .flat_map(|entry| check(&QWEN, entry))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn known_ids_from_the_spec() {
    let tok = &*QWEN;
    assert_eq!(tok.vocab_size(), 248_077);
    let encodings: &[(&str, &[u32])] = &[
        ("<|im_start|>assistant\n", &[248045, 74455, 198]),
        ("<|im_start|>user\n", &[248045, 846, 198]),
        ("\n", &[198]),
        ("\n\n", &[271]),
    ];
    for &(text, ids) in encodings {
        assert_eq!(tok.encode(text).unwrap(), ids, "encode({text:?})");
    }
    // Added tokens: one id each when they appear in text. Only some are "special" (dropped by
    // skip_special): the reasoning, tool-call and FIM markers are deliberately not, so that
    // decoding with skip_special still shows the output parser where they are.
    let added: &[(&str, u32, bool)] = &[
        ("<|endoftext|>", 248044, true),
        ("<|im_start|>", 248045, true),
        ("<|im_end|>", 248046, true),
        ("<|video_pad|>", 248057, true),
        ("<tool_call>", 248058, false),
        ("</tool_call>", 248059, false),
        ("<|fim_prefix|>", 248060, false),
        ("<tool_response>", 248066, false),
        ("</tool_response>", 248067, false),
        ("<think>", 248068, false),
        ("</think>", 248069, false),
        ("<|audio_start|>", 248070, true),
        ("<|audio_pad|>", 248076, true),
    ];
    for &(token, id, special) in added {
        assert_eq!(tok.encode(token).unwrap(), [id], "encode({token:?})");
        assert_eq!(tok.token_id(token), Some(id), "token_id({token:?})");
        assert_eq!(tok.token_str(id).as_deref(), Some(token), "token_str({id})");
        assert_eq!(tok.is_special(id), special, "is_special({token:?})");
    }
}

#[test]
fn vocabulary_lookups() {
    let tok = &*QWEN;
    // Of the 33 added tokens (248044..=248076), 248058..=248069 are not special; no regular
    // token is special.
    let special: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&id| tok.is_special(id))
        .collect();
    let expected: Vec<u32> = (248_044..=248_076)
        .filter(|id| !(248_058..=248_069).contains(id))
        .collect();
    assert_eq!(special, expected);
    // Stored forms are byte-level; token_bytes undoes that.
    assert_eq!(tok.token_str(198).as_deref(), Some("Ċ"));
    assert_eq!(tok.token_id("ĊĊ"), Some(271));
    assert_eq!(tok.token_bytes(198).as_deref(), Some(&b"\n"[..]));
    let world = tok.encode(" world").unwrap();
    assert_eq!(world.len(), 1);
    assert_eq!(tok.token_str(world[0]).as_deref(), Some("Ġworld"));
    assert_eq!(tok.token_id("Ġworld"), Some(world[0]));
    assert_eq!(tok.token_bytes(248068).as_deref(), Some(&b"<think>"[..]));
    // Beyond the vocabulary (the embedding is padded to 248,320 rows) there is nothing.
    for id in [248_077, 248_319, u32::MAX] {
        assert_eq!(tok.token_str(id), None);
        assert_eq!(tok.token_bytes(id), None);
        assert!(!tok.is_special(id));
    }
    assert_eq!(tok.token_id("no such token"), None);
}

#[test]
fn decode_skips_special_tokens_on_request() {
    let tok = &*QWEN;
    let ids = tok
        .encode("<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHi!<|im_end|>")
        .unwrap();
    assert_eq!(
        tok.decode(&ids, true).unwrap(),
        "assistant\n<think>\nhmm\n</think>\n\nHi!"
    );
    // Unknown ids contribute nothing, as in Python.
    assert_eq!(tok.decode(&[9419, 248_100, 0], false).unwrap(), "Hello!");
}

#[test]
fn stream_holds_back_a_split_emoji() {
    let tok = &*QWEN;
    // The crab (4 UTF-8 bytes) is three byte-level tokens: F0 9F | A6 | 80.
    let ids = tok.encode("🦀").unwrap();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let mut decoder = StreamDecoder::new(tok, false);
    assert_eq!(decoder.push(ids[0]), "");
    assert_eq!(decoder.push(ids[1]), "");
    assert_eq!(decoder.push(ids[2]), "🦀");
    assert_eq!(decoder.finish(), "");

    // Cut short, the unfinished character becomes one U+FFFD, as decode gives.
    let mut decoder = StreamDecoder::new(tok, false);
    let mut text = decoder.push(ids[0]) + &decoder.push(ids[1]);
    assert_eq!(text, "");
    text += &decoder.finish();
    assert_eq!(text, "\u{FFFD}");
    assert_eq!(text, tok.decode(&ids[..2], false).unwrap());

    // A special token in the middle of a character: the broken prefix is flushed as U+FFFD
    // before the special token's text, exactly where decode puts it.
    let broken = [ids[0], 248_046, ids[1], ids[2]];
    for skip_special in [false, true] {
        let streamed = stream(tok, &broken, skip_special).concat();
        assert_eq!(streamed, tok.decode(&broken, skip_special).unwrap());
    }
    assert_eq!(stream(tok, &broken, true).concat(), "🦀");
}

/// Random id sequences, including byte fragments, special tokens and ids beyond the
/// vocabulary: streaming must agree with decode on every one.
#[test]
fn stream_equals_decode_on_random_ids() {
    let tok = &*QWEN;
    // The ids of the 256 single-byte tokens, to make broken UTF-8 likely.
    let byte_ids: Vec<u32> = (0..tok.vocab_size() as u32)
        .filter(|&id| tok.token_bytes(id).is_some_and(|b| b.len() == 1))
        .collect();
    assert_eq!(byte_ids.len(), 256);
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move |bound: u32| {
        // xorshift64*: deterministic and good enough to scatter ids.
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        ((rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % u64::from(bound)) as u32
    };
    for case in 0..400 {
        let len = 1 + next(40) as usize;
        let ids: Vec<u32> = (0..len)
            .map(|_| match next(10) {
                0..=5 => byte_ids[next(256) as usize],
                6 | 7 => next(248_044),
                8 => 248_044 + next(33),
                _ => 248_044 + next(300),
            })
            .collect();
        for skip_special in [false, true] {
            let pieces = stream(tok, &ids, skip_special);
            let expected = tok.decode(&ids, skip_special).unwrap();
            assert_eq!(pieces.concat(), expected, "case {case}: {ids:?}");
        }
    }
}

#[test]
fn every_loader_gives_the_same_tokenizer() {
    let gz = std::fs::read(repo_path(TOKENIZER_GZ)).unwrap();
    let mut json = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("tokenizer.json");
    std::fs::write(&plain, &json).unwrap();

    let text = "<|im_start|>user\nBonjour 世界 🦀 x=1234<|im_end|>";
    let expected = QWEN.encode(text).unwrap();
    for tok in [
        Tokenizer::from_file(&plain).unwrap(),
        Tokenizer::from_json_bytes(&json).unwrap(),
        Tokenizer::from_gz_bytes(&gz).unwrap(),
    ] {
        assert_eq!(tok.vocab_size(), 248_077);
        assert_eq!(tok.encode(text).unwrap(), expected);
    }
}

/// A bad file is an error that names it, never a panic.
#[test]
fn bad_files_are_clear_errors() {
    let gz = std::fs::read(repo_path(TOKENIZER_GZ)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    // Valid JSON, but a plain BPE whose decoder is not byte-level.
    let not_byte_level = br#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"BPE","vocab":{"a":0,"b":1},"merges":[]}}"#;

    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "missing",
            dir.path().join("absent.json"),
            "cannot read tokenizer file",
        ),
        (
            "garbage",
            write("garbage.json", b"{ this is not json"),
            "not a valid tokenizer.json",
        ),
        (
            "empty",
            write("empty.json", b""),
            "not a valid tokenizer.json",
        ),
        (
            "wrong_json",
            write("wrong.json", br#"{"model": 3}"#),
            "not a valid tokenizer.json",
        ),
        (
            "truncated_gz",
            write("cut.json.gz", &gz[..gz.len() / 2]),
            "gzip data is corrupt",
        ),
        (
            "gz_header_only",
            write("hdr.json.gz", &gz[..10]),
            "gzip data is corrupt",
        ),
        (
            "not_byte_level",
            write("bpe.json", not_byte_level),
            "decoder must be ByteLevel",
        ),
    ];
    for (name, path, expected) in cases {
        let error = Tokenizer::from_file(&path).expect_err(name).to_string();
        assert!(error.contains(expected), "{name}: {error}");
        assert!(
            error.contains(&path.display().to_string()),
            "{name}: {error}"
        );
    }

    let error = Tokenizer::from_gz_bytes(&gz[..gz.len() - 100]).unwrap_err();
    assert!(matches!(error, TokenizerError::Gzip { .. }), "{error}");
    let error = Tokenizer::from_gz_bytes(b"plain text").unwrap_err();
    assert!(matches!(error, TokenizerError::Gzip { .. }), "{error}");
    let error = Tokenizer::from_json_bytes(&[0xff, 0xfe, 0x00]).unwrap_err();
    assert!(matches!(error, TokenizerError::Parse { .. }), "{error}");
}
