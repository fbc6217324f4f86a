//! Speculative decoding with the MTP head is lossless: for every draft depth, greedy output
//! ids equal plain decoding's, and sampled output with a seed is the same token for token
//! (the decoder samples each verified row with its own random stream, as plain decoding
//! does), alone and in a batch of 16 concurrent requests; on safetensors (F32, BF16) and on a
//! Q8_0 GGUF written by `qinfer quantize`'s exporter (MTP head included).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use qinfer_engine::counters::Counters;
use qinfer_engine::engine::{EngineModel, SchedulerConfig};
use qinfer_engine::generate::GenerateOptions;
use qinfer_engine::sampler::SamplingParams;
use qinfer_engine::speculative::DraftConfig;
use qinfer_model::Qwen35;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn options(seed: Option<u64>, max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: SamplingParams {
            temperature: if seed.is_some() { 0.9 } else { 0.0 },
            seed,
            ..SamplingParams::default()
        },
        max_tokens,
        ignore_eos: true,
        ..GenerateOptions::default()
    }
}

/// Runs `requests` together (`max_seqs` at a time) and returns each one's output ids and the
/// engine's counters.
/// Runs `requests` together (`max_seqs` at a time, prompts in chunks of 16) with `draft`.
fn run(
    model: &Qwen35,
    draft: DraftConfig,
    max_seqs: usize,
    requests: &[(Vec<u32>, GenerateOptions)],
) -> (Vec<Vec<u32>>, Arc<Counters>) {
    let mut em = EngineModel::ids_only(model);
    em.draft = draft;
    let config = SchedulerConfig {
        max_seqs,
        prefill_chunk: 16,
        ..SchedulerConfig::default()
    };
    common::run(em, config, requests)
}

fn requests(n: usize, vocab: u32) -> Vec<(Vec<u32>, GenerateOptions)> {
    (0..n)
        .map(|i| {
            let prompt = qinfer_model::pseudo_random_tokens(3 + 7 * i, vocab, 11 + i as u32);
            let seed = (i % 2 == 1).then_some(i as u64);
            (prompt, options(seed, 24 + i % 5))
        })
        .collect()
}

fn lossless(model: &Qwen35) {
    assert!(model.has_mtp());
    let vocab = model.config.vocab as u32;
    let reqs = requests(4, vocab);
    let (plain, c) = run(model, DraftConfig::none(), 1, &reqs);
    assert_eq!(c.drafted_tokens.load(Relaxed), 0);
    for k in 1..=4 {
        let (spec, c) = run(model, DraftConfig::mtp(k, true), 1, &reqs);
        assert_eq!(spec, plain, "draft depth {k}");
        assert!(c.drafted_tokens.load(Relaxed) > 0, "depth {k} drafted");
    }
}

#[test]
fn mtp_drafting_is_lossless_f32() {
    lossless(&Qwen35::load_dir(&fixture("tiny-dense-f32")).unwrap());
}

#[test]
fn mtp_drafting_is_lossless_bf16() {
    lossless(&Qwen35::load_dir(&fixture("tiny-dense-bf16")).unwrap());
}

#[test]
fn mtp_drafting_is_lossless_on_a_q8_0_gguf_with_its_mtp_head() {
    use qinfer_formats::safetensors::Checkpoint;
    use qinfer_model::export::{FileType, export_gguf};
    use qinfer_model::loader::{Loader, TensorSource};
    use qinfer_model::names::Naming;
    let dir = fixture("tiny-dense-f32");
    let model = Qwen35::load_dir(&dir).unwrap();
    let ckpt = Checkpoint::open_dir(&dir).unwrap();
    let prefix = Loader::detect_hf_prefix(&|n| ckpt.tensor(n).is_some()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny-q8_0.gguf");
    let out = export_gguf(
        &path,
        &ckpt,
        Naming::Hf(prefix),
        &model.config,
        Vec::new(),
        FileType::Q8_0,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert!(out.mtp, "the export carries the MTP head");
    let gguf = Qwen35::load_gguf(&path).unwrap();
    lossless(&gguf);
}

/// Sixteen requests (greedy and seeded) decoding together with drafts give what each gives
/// alone without drafts.
#[test]
fn a_batch_of_16_with_drafts_equals_plain_sequential_decoding() {
    let model = Qwen35::load_dir(&fixture("tiny-dense-f32")).unwrap();
    let reqs = requests(16, model.config.vocab as u32);
    let (plain, _) = run(&model, DraftConfig::none(), 1, &reqs);
    let (batched, c) = run(&model, DraftConfig::mtp(3, true), 16, &reqs);
    assert_eq!(batched, plain);
    assert!(c.drafted_tokens.load(Relaxed) > 0);
}

/// Through the device seam: on the reference backend (plain Rust, f64 sums) drafting changes
/// nothing either, and the drafts the MTP head makes there are those the CPU backend makes.
#[test]
fn mtp_drafting_on_the_reference_backend() {
    let cpu = Qwen35::load_dir(&fixture("tiny-dense-f32")).unwrap();
    let reference = cpu
        .clone()
        .with_backend(Arc::new(qinfer_backend::reference::Reference))
        .unwrap();
    lossless(&reference);
    let reqs = requests(3, cpu.config.vocab as u32);
    let draft = DraftConfig::mtp(2, true);
    let (a, ca) = run(&reference, draft, 3, &reqs);
    let (b, cb) = run(&cpu, draft, 3, &reqs);
    assert_eq!(a, b);
    assert_eq!(
        ca.drafted_tokens.load(Relaxed),
        cb.drafted_tokens.load(Relaxed)
    );
}

/// Sampling with drafts over many seeds on the 320-token fixture (temperature 1): the tokens
/// of every seed are plain sampling's, so the distribution of sampled tokens is plain
/// sampling's exactly (each draw after a draft is the draw plain decoding makes at that
/// position, from the request's own random stream; an accepted draft is a draw that came out
/// equal to it). Random weights seldom sample their greedy draft (2 of 2,044 drafts here are
/// accepted; the trained demo's test, `demo.rs`, is where most are), so the test asserts only
/// that some were, and that position 3 spreads over the vocabulary (sampling, not greedy).
#[test]
fn sampled_tokens_over_many_seeds_are_plain_samplings() {
    let model = Qwen35::load_dir(&fixture("tiny-dense-f32")).unwrap();
    let vocab = model.config.vocab as u32;
    let prompt = qinfer_model::pseudo_random_tokens(9, vocab, 5);
    let reqs: Vec<(Vec<u32>, GenerateOptions)> = (0..128u64)
        .map(|seed| {
            let mut opts = options(Some(seed), 10);
            opts.sampling.temperature = 1.0;
            (prompt.clone(), opts)
        })
        .collect();
    let (plain, _) = run(&model, DraftConfig::none(), 16, &reqs);
    let (spec, c) = run(&model, DraftConfig::mtp(2, true), 16, &reqs);
    for (seed, (s, p)) in spec.iter().zip(&plain).enumerate() {
        assert_eq!(s, p, "seed {seed}");
    }
    let accepted = c.accepted_tokens.load(Relaxed);
    assert!(accepted > 0, "no draft accepted at temperature 1");
    let distinct: std::collections::BTreeSet<u32> = spec.iter().map(|ids| ids[3]).collect();
    assert!(
        distinct.len() > 8,
        "position 3 took {} values",
        distinct.len()
    );
}
