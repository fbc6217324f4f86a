//! Criterion benches of causal attention at the Qwen3.5-0.8B shape (8 query heads, 2 kv heads,
//! head dim 256), through the engine's pool: a 512-token prefill over the prompt's own keys, a
//! 512-token chunk after a 1536-token history (2K context), a 64-token chunk ending at 8K, and
//! one decode step over 4K and 8K caches. Keys and values sit in 64-token blocks as the paged
//! cache holds them. Throughput is in query rows ("elements").
//!
//! `cargo bench -p qinfer-cpu --bench attention [-- FILTER]`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qinfer_cpu::ops::{AttentionShape, KvRows, KvSegment, causal_attention_blocks};
use qinfer_tensor::Mat;

mod common;
use common::noise;

const SHAPE: AttentionShape = AttentionShape {
    n_heads: 8,
    n_kv_heads: 2,
    head_dim: 256,
    scale: 0.0625,
};

/// `t` query rows at the end of a `s`-token sequence whose K/V come in 64-row blocks.
fn case(c: &mut Criterion, name: &str, s: usize, t: usize) {
    let kv_width = SHAPE.n_kv_heads * SHAPE.head_dim;
    let q = Mat::from_vec(noise(t * SHAPE.n_heads * SHAPE.head_dim, 1), t, 8 * 256);
    let k = noise(s * kv_width, 2);
    let v = noise(s * kv_width, 3);
    let blocks: Vec<KvSegment<'_>> = k
        .chunks(64 * kv_width)
        .zip(v.chunks(64 * kv_width))
        .map(|(k, v)| (KvRows::F32(k), KvRows::F32(v)))
        .collect();
    let mut g = c.benchmark_group("attention");
    g.sample_size(20);
    g.throughput(Throughput::Elements(t as u64));
    g.bench_function(name, |b| {
        b.iter(|| black_box(causal_attention_blocks(&q, &blocks, SHAPE)))
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    qinfer_cpu::init_threads(None);
    case(c, "prefill_512", 512, 512);
    case(c, "prefill_512_after_1536", 2048, 512);
    case(c, "prefill_64_after_8128", 8192, 64);
    case(c, "decode_4k", 4096, 1);
    case(c, "decode_8k", 8192, 1);
}

criterion_group!(benches, attention);
criterion_main!(benches);
