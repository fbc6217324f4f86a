//! Criterion benches of the matmul kernels: decode (one token, bandwidth-bound; throughput in
//! weight bytes) and prefill-style (64 tokens, compute-bound; throughput in multiply-adds as
//! "elements"), for every weight type with a fast path, through the engine's pool; and one
//! routed expert of the 35B-A3B (gate + up `[1024, 2048]`, down `[2048, 512]`, Q4_K) against
//! the few tokens a prefill step routes to it (512 tokens × top 8 / 256 experts = 16 on
//! average), throughput in multiply-adds.
//!
//! `cargo bench -p qinfer-cpu --bench kernels [-- FILTER]`
//!
//! The tier is the one `Cpu::from_env()` picks; `QINFER_ISA=avx2` (or `avx2-novnni`, `scalar`)
//! benches the AVX2 kernels on a machine that also has AVX-512.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qinfer_cpu::ops::matmul;
use qinfer_tensor::{ByteView, DType, Mat, Weight};

mod common;
use common::noise;

/// `[n, k]` weight of `dtype`: 16 distinct quantized rows, tiled (values do not matter for
/// speed; every row still lives at its own address).
fn weight(dtype: DType, n: usize, k: usize) -> Weight {
    let rb = dtype.row_bytes(k).unwrap();
    let distinct: Vec<Vec<u8>> = (0..16)
        .map(|i| {
            let mut row = vec![0u8; rb];
            qinfer_quant::quantize_row(dtype, &noise(k, i), &mut row).unwrap();
            row
        })
        .collect();
    let bytes: Vec<u8> = (0..n).flat_map(|r| distinct[r % 16].clone()).collect();
    Weight::new(dtype, n, k, ByteView::from_vec(bytes)).unwrap()
}

fn kernels(c: &mut Criterion) {
    let cpu = qinfer_cpu::Cpu::from_env();
    qinfer_cpu::init_threads(None);
    let (n, k) = (4096, 4096);
    for dtype in [
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q8_0,
        DType::Q4_0,
        DType::IQ4_XS,
        DType::BF16,
        DType::F16,
        DType::F32,
    ] {
        let w = weight(dtype, n, k);
        let mut g = c.benchmark_group(format!("matmul/{dtype}"));
        g.sample_size(20);
        let x1 = Mat::from_vec(noise(k, 99), 1, k);
        g.throughput(Throughput::Bytes(w.bytes().len() as u64));
        g.bench_function("decode_t1", |b| b.iter(|| black_box(matmul(cpu, &x1, &w))));
        let x64 = Mat::from_vec(noise(64 * k, 98), 64, k);
        g.throughput(Throughput::Elements((64 * n * k) as u64));
        g.bench_function("prefill_t64", |b| {
            b.iter(|| black_box(matmul(cpu, &x64, &w)))
        });
        g.finish();
    }
}

/// One routed expert's matmuls (gate and up together, then down) for `t` tokens.
fn expert(c: &mut Criterion) {
    let cpu = qinfer_cpu::Cpu::from_env();
    qinfer_cpu::init_threads(None);
    let (h, i) = (2048, 512);
    let gate_up = weight(DType::Q4_K, 2 * i, h);
    let down = weight(DType::Q4_K, h, i);
    let mut g = c.benchmark_group("expert/Q4_K");
    g.sample_size(20);
    for t in [1, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128] {
        let x = Mat::from_vec(noise(t * h, 97), t, h);
        let y = Mat::from_vec(noise(t * i, 96), t, i);
        g.throughput(Throughput::Elements((t * 3 * h * i) as u64));
        g.bench_function(format!("t{t}"), |b| {
            b.iter(|| black_box((matmul(cpu, &x, &gate_up), matmul(cpu, &y, &down))))
        });
    }
    g.finish();
}

/// A speculative verification step's matmuls: `t = 1..=5` tokens against the built-in demo's
/// LM head (Q8_0 `[248320, 256]`, most of its decode bytes) and a real-shape Q8_0 and Q4_K
/// `[4096, 4096]`; throughput in weight bytes, so `t` tokens at the `t = 1` figure cost one
/// decode step.
fn verify(c: &mut Criterion) {
    let cpu = qinfer_cpu::Cpu::from_env();
    qinfer_cpu::init_threads(None);
    for (dtype, n, k) in [
        (DType::Q8_0, 248_320, 256),
        (DType::Q8_0, 4096, 4096),
        (DType::Q4_K, 4096, 4096),
        (DType::Q4_K, 65536, 2048),
        (DType::Q6_K, 32768, 2048),
    ] {
        let w = weight(dtype, n, k);
        let mut g = c.benchmark_group(format!("verify/{dtype}/{n}x{k}"));
        g.sample_size(20);
        g.throughput(Throughput::Bytes(w.bytes().len() as u64));
        for t in 1..=5 {
            let x = Mat::from_vec(noise(t * k, 95), t, k);
            g.bench_function(format!("t{t}"), |b| {
                b.iter(|| black_box(matmul(cpu, &x, &w)))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, kernels, expert, verify);
criterion_main!(benches);
