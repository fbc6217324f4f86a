//! Criterion benches of causal attention at the Qwen3.5-0.8B shape (8 query heads, 2 kv heads,
//! head dim 256), through the engine's pool: a 512-token prefill over the prompt's own keys, a
//! 512-token chunk after a 1536-token history (2K context), a 64-token chunk ending at 8K, and
//! one decode step over 4K and 8K caches, and a 512-token chunk after 16K (`f16`, the CLI's default). Keys and values sit in 64-token blocks as the paged
//! cache holds them, in `f32`; the 2K chunk and the 8K decode step also over `f16` and `q8_0`
//! rows (`--kv-type`). Throughput is in query rows ("elements").
//!
//! `cargo bench -p qinfer-cpu --bench attention [-- FILTER]`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use qinfer_cpu::ops::{AttentionShape, KvRows, KvSegment, causal_attention_blocks};
use qinfer_quant::q8_0::{self, BlockQ8_0};
use qinfer_tensor::Mat;

mod common;
use common::noise;

const SHAPE: AttentionShape = AttentionShape {
    n_heads: 8,
    n_kv_heads: 2,
    head_dim: 256,
    scale: 0.0625,
};

/// How the bench's KV rows are stored.
#[derive(Clone, Copy)]
enum Kv {
    F32,
    F16,
    Q8_0,
}

/// Rows in one of the stored forms.
enum Stored {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Q8_0(Vec<BlockQ8_0>),
}

impl Stored {
    fn new(x: Vec<f32>, kv: Kv) -> Self {
        match kv {
            Kv::F32 => Stored::F32(x),
            Kv::F16 => Stored::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
            Kv::Q8_0 => Stored::Q8_0(
                x.chunks_exact(q8_0::BLOCK)
                    .map(|c| {
                        BlockQ8_0::from_bytes(&q8_0::quantize_block_ref(c.try_into().unwrap()))
                    })
                    .collect(),
            ),
        }
    }

    /// The 64-row blocks of `[S, width]` rows.
    fn blocks(&self, width: usize) -> Vec<KvRows<'_>> {
        let n = 64 * width;
        match self {
            Stored::F32(x) => x.chunks(n).map(KvRows::F32).collect(),
            Stored::F16(x) => x.chunks(n).map(KvRows::F16).collect(),
            Stored::Q8_0(x) => x.chunks(n / q8_0::BLOCK).map(KvRows::Q8_0).collect(),
        }
    }
}

/// `t` query rows at the end of a `s`-token sequence whose K/V come in 64-row blocks.
fn case(c: &mut Criterion, name: &str, s: usize, t: usize) {
    case_kv(c, name, s, t, Kv::F32);
}

fn case_kv(c: &mut Criterion, name: &str, s: usize, t: usize, kv: Kv) {
    let cpu = qinfer_cpu::Cpu::from_env();
    let kv_width = SHAPE.n_kv_heads * SHAPE.head_dim;
    let q = Mat::from_vec(noise(t * SHAPE.n_heads * SHAPE.head_dim, 1), t, 8 * 256);
    let k = Stored::new(noise(s * kv_width, 2), kv);
    let v = Stored::new(noise(s * kv_width, 3), kv);
    let blocks: Vec<KvSegment<'_>> = k
        .blocks(kv_width)
        .into_iter()
        .zip(v.blocks(kv_width))
        .collect();
    let mut g = c.benchmark_group("attention");
    g.sample_size(if s > 8192 { 10 } else { 20 });
    g.throughput(Throughput::Elements(t as u64));
    g.bench_function(name, |b| {
        b.iter(|| black_box(causal_attention_blocks(cpu, &q, &blocks, SHAPE)))
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
    case_kv(c, "prefill_512_after_1536_f16", 2048, 512, Kv::F16);
    case_kv(c, "prefill_512_after_1536_q8_0", 2048, 512, Kv::Q8_0);
    case_kv(c, "decode_8k_f16", 8192, 1, Kv::F16);
    case_kv(c, "decode_8k_q8_0", 8192, 1, Kv::Q8_0);
    case_kv(c, "prefill_512_after_16k_f16", 16384 + 512, 512, Kv::F16);
}

criterion_group!(benches, attention);
criterion_main!(benches);
