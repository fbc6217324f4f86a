//! Fuzzing session and prompt-cache files with a fixed budget, run by the test suite
//! (hardening): a file whose bytes were changed and whose checksum was then recomputed — so
//! every check past the checksum is reached — must load, or be refused with a reason, never
//! panic; a session that loads continues its conversation. Deterministic mutations.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use qinfer_cache::persist;
use qinfer_engine::generate::{Flow, GenerateOptions, ModelBundle, Sequence, generate};
use qinfer_engine::prompt_cache::{CacheOptions, PromptCache};
use qinfer_engine::session;
use qinfer_testkit::{Rng, mutate_bytes};
use serde_json::json;

/// The file's kind tag (after the 8-byte magic and the 4-byte version).
fn kind(path: &Path) -> [u8; 8] {
    std::fs::read(path).unwrap()[12..20].try_into().unwrap()
}

/// Rewrites `path` with a mutated body (and, sometimes, header) and a valid checksum.
fn remutate(rng: &mut Rng, path: &Path, header: &str, body: &[u8], kind: &[u8; 8]) {
    let mut body = body.to_vec();
    for _ in 0..1 + rng.below(3) {
        mutate_bytes(rng, &mut body, usize::MAX);
    }
    let header = if rng.below(6) == 0 {
        let mut h = header.as_bytes().to_vec();
        mutate_bytes(rng, &mut h, usize::MAX);
        String::from_utf8_lossy(&h).into_owned()
    } else {
        header.to_string()
    };
    persist::write_file(path, kind, &header, &body).unwrap();
}

#[test]
fn mutated_session_and_cache_files_load_or_fail_cleanly() {
    let b = ModelBundle::demo().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let prompt = b
        .tokenizer
        .encode("<|im_start|>user\nhi<|im_end|>\n")
        .unwrap();
    let opts = GenerateOptions {
        max_tokens: 3,
        ..GenerateOptions::default()
    };

    // A session file.
    let path = dir.path().join("chat.session");
    let mut seq = Sequence::new(&b.model);
    generate(&b, &mut seq, &prompt, &opts, &mut |_| Flow::Continue).unwrap();
    session::save(
        &path,
        &b.model,
        &[json!({"role": "user", "content": "hi"})],
        &json!({}),
        &seq,
    )
    .unwrap();
    let session_kind = kind(&path);
    let (header, body) = persist::read_file(&path, &session_kind).unwrap();
    let mut rng = Rng(0x7365_7373);
    for i in 0..300 {
        remutate(&mut rng, &path, &header, &body, &session_kind);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            if let Ok(mut s) = session::load(&path, &b.model) {
                let more = b
                    .tokenizer
                    .encode("<|im_start|>user\nmore<|im_end|>\n")
                    .unwrap();
                let mut next = s.sequence.tokens.clone();
                next.extend(more);
                let _ = generate(&b, &mut s.sequence, &next, &opts, &mut |_| Flow::Continue);
            }
        }));
        assert!(outcome.is_ok(), "session iteration {i} panicked");
    }

    // A prompt-cache file.
    let cache_dir = dir.path().join("cache");
    let cache_opts = || CacheOptions {
        budget_bytes: usize::MAX,
        snapshot_every: Some(64),
        dir: Some(cache_dir.clone()),
    };
    let cache = PromptCache::new(&b.model, cache_opts());
    let long: Vec<u32> = prompt.iter().cycle().take(150).copied().collect();
    let mut seq = Sequence::new(&b.model);
    seq.cache = Some(std::sync::Arc::new(cache));
    generate(&b, &mut seq, &long, &opts, &mut |_| Flow::Continue).unwrap();
    seq.cache.as_ref().unwrap().save().unwrap();
    let file = std::fs::read_dir(&cache_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let cache_kind = kind(&file);
    let (header, body) = persist::read_file(&file, &cache_kind).unwrap();
    let mut rng = Rng(0x6361_6368);
    for i in 0..300 {
        remutate(&mut rng, &file, &header, &body, &cache_kind);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let c = std::sync::Arc::new(PromptCache::new(&b.model, cache_opts()));
            let mut s = Sequence::new(&b.model);
            s.cache = Some(c);
            let _ = generate(&b, &mut s, &long, &opts, &mut |_| Flow::Continue);
        }));
        assert!(outcome.is_ok(), "prompt-cache iteration {i} panicked");
    }
}
