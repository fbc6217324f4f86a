//! The prompt cache end to end on the built-in demo model (real tokenizer and Qwen3.6
//! template, random weights, greedy): multi-turn conversations process only their new tokens
//! and generate exactly what an uncached run generates; conversations that share a system
//! prompt share its KV blocks; a tiny budget only costs misses; misses say why; the disk tier
//! survives a restart and refuses a damaged file.

use std::sync::{Arc, OnceLock};

use qinfer_cache::{BLOCK_TOKENS, Miss, unique_bytes};
use qinfer_engine::generate::{Flow, GenerateOptions, Generation, ModelBundle, Sequence, generate};
use qinfer_engine::parser::{ParserOptions, parse_complete};
use qinfer_engine::prompt_cache::{CacheOptions, PromptCache};
use qinfer_engine::sampler::SamplingParams;
use qinfer_engine::session;
use qinfer_engine::template::RenderRequest;
use qinfer_model::Rows;
use serde_json::{Value, json};

fn demo() -> &'static ModelBundle {
    static DEMO: OnceLock<ModelBundle> = OnceLock::new();
    DEMO.get_or_init(|| ModelBundle::demo().unwrap())
}

fn encode(text: &str) -> Vec<u32> {
    demo().tokenizer.encode(text).unwrap()
}

fn render(messages: &Value, kwargs: Value) -> String {
    demo()
        .template()
        .unwrap()
        .render(&RenderRequest {
            messages,
            tools: None,
            add_generation_prompt: true,
            kwargs: kwargs.as_object().unwrap(),
        })
        .unwrap()
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        json_object: false,
        json_schema: None,
        strict_tools: false,
        single_call: false,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        max_tokens,
        parser: ParserOptions {
            starts_in_reasoning: true,
            tools: Vec::new(),
        },
        ..GenerateOptions::default()
    }
}

fn cache(budget_bytes: usize, snapshot_every: usize) -> Arc<PromptCache> {
    Arc::new(PromptCache::new(
        &demo().model,
        CacheOptions {
            budget_bytes,
            snapshot_every: Some(snapshot_every),
            dir: None,
        },
    ))
}

/// One request with a fresh sequence, as a server runs it: with the cache, or cold.
fn request(cache: Option<&Arc<PromptCache>>, prompt: &[u32], max_tokens: usize) -> Generation {
    let b = demo();
    let mut seq = match cache {
        Some(c) => Sequence::with_cache(&b.model, Arc::clone(c)),
        None => Sequence::new(&b.model),
    };
    generate(b, &mut seq, prompt, &greedy(max_tokens), &mut |_| {
        Flow::Continue
    })
    .unwrap()
}

fn system_prompt() -> String {
    let mut s = String::from("You are a careful coding agent. Rules:\n");
    for i in 0..40 {
        s.push_str(&format!(
            "{i}. Keep tool output short and cite file paths exactly.\n"
        ));
    }
    s
}

fn first_prompt(user: &str) -> Vec<u32> {
    encode(&render(
        &json!([
            {"role": "system", "content": system_prompt()},
            {"role": "user", "content": user},
        ]),
        json!({"preserve_thinking": true}),
    ))
}

/// The next turn's tokens: everything so far, the end of the answer, a new user message.
fn next_turn(prompt: &[u32], answer: &[u32], turn: usize) -> Vec<u32> {
    let mut next = prompt.to_vec();
    next.extend(answer);
    next.extend(encode(&format!(
        "<|im_end|>\n<|im_start|>user\nTool result {turn}: file src/lib.rs has {} lines.<|im_end|>\n<|im_start|>assistant\n<think>\n",
        turn * 37
    )));
    next
}

/// Acceptance: 10 turns, each a new request. From turn 2 on the prefill processes only the
/// new tokens (the answer's end resumes exactly), the generated ids equal those of a cold
/// run, and the counters add up.
#[test]
fn ten_turns_process_only_new_tokens_and_match_cold_runs() {
    let cache = cache(usize::MAX, 128);
    let mut prompt = first_prompt("List the files in src/.");
    let mut held = 0; // tokens the cache holds for this conversation (prompt + answer)
    let (mut new_total, mut cold_total) = (0, 0);
    for turn in 0..10 {
        let on = request(Some(&cache), &prompt, 10);
        let off = request(None, &prompt, 10);
        assert_eq!(
            on.ids, off.ids,
            "turn {turn}: cache on and off generate the same"
        );
        let processed = on.prompt_tokens - on.reused_tokens;
        if turn == 0 {
            assert_eq!(on.reused_tokens, 0);
        } else {
            assert_eq!(
                on.reused_tokens, held,
                "turn {turn}: resumed at the answer's end"
            );
            assert_eq!(on.cache_miss, None, "turn {turn}");
        }
        assert_eq!(
            processed,
            prompt.len() - held,
            "turn {turn}: only new tokens"
        );
        new_total += processed;
        cold_total += prompt.len();
        held = prompt.len() + on.ids.len();
        prompt = next_turn(&prompt, &on.ids, turn);
    }
    let s = cache.stats();
    assert_eq!(s.processed_tokens as usize, new_total);
    assert_eq!((s.lookups, s.hits, s.misses), (10, 9, 1), "one cold miss");
    assert!(
        new_total * 5 < cold_total,
        "{new_total} vs {cold_total} uncached"
    );
}

/// Acceptance: two conversations sharing a long system prompt share its KV blocks (the
/// second resumes from the last chunk-boundary snapshot before they part) and the memory of
/// those blocks is counted once. Resuming from a prefill snapshot is bit-exact, so the second
/// conversation's logits equal a cold prefill's.
#[test]
fn conversations_sharing_a_system_prompt_share_its_blocks() {
    let b = demo();
    let shared_cache = cache(usize::MAX, 64);
    let (pa, pb) = (
        first_prompt("Summarise README.md."),
        first_prompt("Find the bug in main.rs."),
    );
    let parted = pa.iter().zip(&pb).take_while(|(x, y)| x == y).count();
    assert!(
        parted > 300,
        "a long shared system prompt ({parted} tokens)"
    );

    let mut a = Sequence::with_cache(&b.model, Arc::clone(&shared_cache));
    generate(b, &mut a, &pa, &greedy(4), &mut |_| Flow::Continue).unwrap();
    let mut bseq = Sequence::with_cache(&b.model, Arc::clone(&shared_cache));
    let gb = generate(b, &mut bseq, &pb, &greedy(4), &mut |_| Flow::Continue).unwrap();
    let shared = parted / BLOCK_TOKENS * BLOCK_TOKENS;
    assert_eq!(gb.reused_tokens, shared);
    assert_eq!(gb.cache_miss, Some(Miss::Diverged { at: parted }));
    assert_eq!(gb.ids, request(None, &pb, 4).ids);

    let n_attention = b
        .model
        .state_specs()
        .iter()
        .filter(|s| matches!(s, qinfer_cache::LayerSpec::Attention { .. }))
        .count();
    let kv_width = b.model.config.attention.n_kv_heads * b.model.config.attention.head_dim;
    let block_bytes = 2 * BLOCK_TOKENS * kv_width * 4;
    let shared_bytes = shared / BLOCK_TOKENS * n_attention * block_bytes;
    assert_eq!(
        unique_bytes([&a.state, &bseq.state]),
        a.state.bytes() + bseq.state.bytes() - shared_bytes,
        "the shared blocks are one copy"
    );

    // Bit-exact: resumed prefill logits == cold prefill logits. (The probe holds what the
    // engine loop's prefill of `pa` stored at its snapshot points.)
    let cold = b
        .model
        .prefill(&pb, &mut b.model.new_state(), Rows::Last)
        .unwrap();
    let probe = cache(usize::MAX, 64);
    let mut tail = Sequence::with_cache(&b.model, Arc::clone(&probe));
    generate(b, &mut tail, &pa, &greedy(0), &mut |_| Flow::Continue).unwrap();
    let from_a = probe.admit(&pb);
    assert_eq!(from_a.cached, shared);
    let mut state = from_a.state;
    let warm = b
        .model
        .prefill(&pb[shared..], &mut state, Rows::Last)
        .unwrap();
    assert_eq!(
        warm.data, cold.data,
        "resumed from a chunk snapshot: bit-identical"
    );
}

/// Acceptance: under a budget smaller than one conversation, eviction only costs misses:
/// every turn still generates exactly what a cold run generates.
#[test]
fn a_tiny_budget_evicts_and_never_changes_outputs() {
    let probe = cache(usize::MAX, 64);
    let prompt = first_prompt("Run the tests.");
    request(Some(&probe), &prompt, 4);
    let one_conversation = probe.stats().bytes;
    let small = cache(one_conversation / 3, 64);
    let roomy = cache(usize::MAX, 64);
    let mut prompt = prompt;
    for turn in 0..4 {
        let on = request(Some(&small), &prompt, 6);
        let plenty = request(Some(&roomy), &prompt, 6);
        assert_eq!(on.ids, request(None, &prompt, 6).ids, "turn {turn}");
        assert_eq!(on.ids, plenty.ids, "turn {turn}");
        assert!(small.stats().bytes <= one_conversation / 3);
        prompt = next_turn(&prompt, &on.ids, turn);
    }
    let (s, r) = (small.stats(), roomy.stats());
    assert!(s.evicted_nodes > 0, "{s:?}");
    assert!(
        s.processed_tokens > r.processed_tokens,
        "evictions cost recomputation: {s:?} vs {r:?}"
    );
}

/// Without `preserve_thinking` the re-rendered history drops the last turn's reasoning: the
/// miss names the first differing token, and the turn resumes from the chunk-boundary
/// snapshot before the old prompt's end (at most one chunk recomputed before it).
#[test]
fn a_template_that_drops_reasoning_reports_where_and_costs_one_chunk() {
    let c = cache(usize::MAX, 1 << 20);
    let mut history = vec![
        json!({"role": "system", "content": system_prompt()}),
        json!({"role": "user", "content": "Which file is largest?"}),
    ];
    let p1 = render(&Value::Array(history.clone()), json!({}));
    let t1 = encode(&p1);
    let g1 = request(Some(&c), &t1, 8);
    let parsed = parse_complete(
        &g1.text,
        ParserOptions {
            starts_in_reasoning: true,
            tools: Vec::new(),
        },
    );
    history.push(json!({"role": "assistant", "content": parsed.content, "reasoning_content": parsed.reasoning}));
    history.push(json!({"role": "user", "content": "And the smallest?"}));
    let t2 = encode(&render(&Value::Array(history), json!({})));
    let differ = t1.iter().zip(&t2).take_while(|(x, y)| x == y).count();
    assert!(
        differ < t1.len(),
        "the history departs inside the old prompt"
    );
    let g2 = request(Some(&c), &t2, 4);
    assert_eq!(g2.cache_miss, Some(Miss::Diverged { at: differ }));
    assert_eq!(
        g2.reused_tokens,
        (t1.len() - 1) / BLOCK_TOKENS * BLOCK_TOKENS
    );
    assert!(differ - g2.reused_tokens < BLOCK_TOKENS);
    assert_eq!(g2.ids, request(None, &t2, 4).ids);
}

/// The disk tier: a new cache over the same directory resumes what the old one saved; a
/// damaged file is reported and ignored (an empty cache, never a wrong state).
#[test]
fn the_disk_tier_survives_a_restart_and_refuses_damage() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || CacheOptions {
        budget_bytes: usize::MAX,
        snapshot_every: Some(64),
        dir: Some(dir.path().to_path_buf()),
    };
    let first = Arc::new(PromptCache::new(&demo().model, opts()));
    let prompt = first_prompt("Explain the build.");
    let g = request(Some(&first), &prompt, 5);
    first.save().unwrap();
    let next = next_turn(&prompt, &g.ids, 1);

    let restarted = Arc::new(PromptCache::new(&demo().model, opts()));
    assert_eq!(restarted.load_note, None);
    let again = request(Some(&restarted), &next, 5);
    assert_eq!(again.reused_tokens, prompt.len() + g.ids.len());
    assert_eq!(again.ids, request(None, &next, 5).ids);

    let file = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();
    let damaged = Arc::new(PromptCache::new(&demo().model, opts()));
    let note = damaged.load_note.clone().expect("damage is reported");
    assert!(note.contains("checksum mismatch"), "{note}");
    let cold = request(Some(&damaged), &next, 5);
    assert_eq!(cold.reused_tokens, 0);
    assert_eq!(cold.ids, again.ids);
}

/// Hardening: a cache file with a valid checksum and fingerprint but token ids outside the
/// vocabulary loaded silently, and then every request failed (500) until it was deleted. It is
/// now refused at load with the reason, and requests run cold.
#[test]
fn a_cache_file_with_ids_outside_the_vocabulary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = || CacheOptions {
        budget_bytes: usize::MAX,
        snapshot_every: Some(64),
        dir: Some(dir.path().to_path_buf()),
    };
    let vocab = demo().model.config.vocab as u32;
    let crafted = PromptCache::new(&demo().model, opts());
    let prompt = first_prompt("Explain the build.");
    let text = demo().tokenizer.decode(&prompt, false).unwrap();
    crafted.remember(text.clone(), vec![vocab + 7]);
    crafted.save().unwrap();

    let loaded = Arc::new(PromptCache::new(&demo().model, opts()));
    let note = loaded.load_note.clone().expect("refused");
    assert!(
        note.contains(&format!("token id {}", vocab + 7)) && note.contains("vocabulary"),
        "{note}"
    );
    let ids = loaded.encode(&demo().tokenizer, &text).unwrap();
    assert!(ids.iter().all(|&id| id < vocab));
    let g = request(Some(&loaded), &prompt, 3);
    assert_eq!(g.ids, request(None, &prompt, 3).ids);

    // The same for a session file.
    let b = demo();
    let mut seq = Sequence::new(&b.model);
    generate(b, &mut seq, &prompt[..5], &greedy(1), &mut |_| {
        Flow::Continue
    })
    .unwrap();
    let mut tokens = seq.tokens.clone();
    tokens[0] = vocab + 7;
    let crafted = Sequence::from_state(seq.state.clone(), tokens);
    let path = dir.path().join("crafted.session");
    session::save(&path, &b.model, &[], &json!({}), &crafted).unwrap();
    let err = session::load(&path, &b.model).unwrap_err();
    assert!(err.contains("outside the vocabulary"), "{err}");
}

/// A saved session resumes without processing the conversation again and continues exactly
/// as the unsaved sequence would; a session for another model is refused.
#[test]
fn a_session_file_resumes_without_reprocessing() {
    let b = demo();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.session");
    let prompt = first_prompt("Hello.");
    let mut seq = Sequence::new(&b.model);
    let g = generate(b, &mut seq, &prompt, &greedy(6), &mut |_| Flow::Continue).unwrap();
    let messages = vec![json!({"role": "user", "content": "Hello."})];
    session::save(&path, &b.model, &messages, &json!({"thinking": true}), &seq).unwrap();

    let next = next_turn(&prompt, &g.ids, 1);
    let mut loaded = session::load(&path, &b.model).unwrap();
    assert_eq!(loaded.messages, messages);
    assert_eq!(loaded.settings, json!({"thinking": true}));
    let resumed = generate(b, &mut loaded.sequence, &next, &greedy(6), &mut |_| {
        Flow::Continue
    })
    .unwrap();
    assert_eq!(resumed.reused_tokens, prompt.len() + g.ids.len());
    let straight = generate(b, &mut seq, &next, &greedy(6), &mut |_| Flow::Continue).unwrap();
    assert_eq!(resumed.ids, straight.ids);
    // The prompt-end mark came back too: a history re-rendered differently after the first
    // prompt still resumes there.
    let mut loaded = session::load(&path, &b.model).unwrap();
    let mut other = prompt.clone();
    other.extend(encode("Something else entirely."));
    let g3 = generate(b, &mut loaded.sequence, &other, &greedy(3), &mut |_| {
        Flow::Continue
    })
    .unwrap();
    assert_eq!(g3.reused_tokens, prompt.len());
    assert_eq!(g3.ids, request(None, &other, 3).ids);

    let mut other = qinfer_engine::demo::demo_model();
    other.embed = qinfer_tensor::Weight::from_f32(vec![0.5; 64 * 64], 64, 64);
    let err = session::load(&path, &other).unwrap_err();
    assert!(err.contains("another model"), "{err}");
    // The rope configuration is part of the key: the same weights under YaRN are another
    // model to the session (and to the prompt cache's files, keyed the same way).
    let mut scaled = qinfer_engine::demo::demo_model();
    assert!(session::load(&path, &scaled).is_ok(), "the same model");
    scaled
        .set_rope_scaling(Some(qinfer_model::config::YarnParams {
            factor: Some(4.0),
            ..Default::default()
        }))
        .unwrap();
    let err = session::load(&path, &scaled).unwrap_err();
    assert!(err.contains("another model"), "{err}");
}

/// A re-rendered history keeps the exact ids the model generated, even where re-tokenizing
/// its text would split it differently, so the next turn hits the cache in full.
#[test]
fn a_remembered_answer_keeps_its_generated_ids() {
    let b = demo();
    let c = cache(usize::MAX, 64);
    let text1 = render(
        &json!([{"role": "user", "content": "Say something."}]),
        json!({"preserve_thinking": true, "enable_thinking": false}),
    );
    let p1 = c.encode(&b.tokenizer, &text1).unwrap();
    assert_eq!(p1, encode(&text1), "nothing remembered yet");
    let g = request(Some(&c), &p1, 12);
    assert_eq!(b.tokenizer.decode(&g.ids, false).unwrap(), g.text);
    c.remember(
        format!("{text1}{}", g.text),
        [p1.clone(), g.ids.clone()].concat(),
    );

    let text2 = format!(
        "{text1}{}<|im_end|>\n<|im_start|>user\nMore.<|im_end|>\n",
        g.text
    );
    let p2 = c.encode(&b.tokenizer, &text2).unwrap();
    assert_eq!(
        &p2[..p1.len() + g.ids.len()],
        [p1.clone(), g.ids.clone()].concat()
    );
    assert_eq!(b.tokenizer.decode(&p2, false).unwrap(), text2);
    let next = request(Some(&c), &p2, 2);
    assert_eq!(next.reused_tokens, p1.len() + g.ids.len());
    // Text that goes on inside a word is tokenized from scratch.
    let text3 = format!("{text1}{}xyz", g.text);
    assert_eq!(c.encode(&b.tokenizer, &text3).unwrap(), encode(&text3));
}

/// Snapshot points: every `snapshot_every` tokens and the last chunk boundary before the end,
/// never one token short of the end (that would leave a one-token piece).
#[test]
fn snapshot_points_are_chunk_boundaries_short_of_the_end() {
    let c = cache(usize::MAX, 256);
    assert_eq!(c.snapshot_points(0, 700), vec![256, 512, 640]);
    assert_eq!(c.snapshot_points(300, 700), vec![512, 640]);
    assert_eq!(c.snapshot_points(0, 641), vec![256, 512, 576]);
    assert_eq!(c.snapshot_points(0, 642), vec![256, 512, 640]);
    assert_eq!(c.snapshot_points(640, 700), Vec::<usize>::new());
    assert_eq!(c.snapshot_points(0, 10), Vec::<usize>::new());
}

/// A prompt that fails in a later prefill piece (a token outside the vocabulary after two
/// chunks) is an error that leaves the sequence consistent and usable.
#[test]
fn a_failing_prefill_piece_leaves_the_sequence_consistent() {
    let b = demo();
    let c = cache(usize::MAX, 64);
    let mut seq = Sequence::with_cache(&b.model, Arc::clone(&c));
    let mut bad = first_prompt("Hello.");
    bad.truncate(150);
    bad.push(b.model.config.vocab as u32);
    bad.extend(encode("more"));
    assert!(generate(b, &mut seq, &bad, &greedy(2), &mut |_| Flow::Continue).is_err());
    assert_eq!(seq.state.pos(), seq.tokens.len());
    let good = first_prompt("Hello.");
    let g = generate(b, &mut seq, &good, &greedy(3), &mut |_| Flow::Continue).unwrap();
    assert_eq!(g.ids, request(None, &good, 3).ids);
}
