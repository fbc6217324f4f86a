//! Criterion bench of the chunked gated delta rule (the Gated DeltaNet prefill op) for 512
//! tokens at the Qwen3.5 shapes: 0.8B (`Nk = Nv = 16`) and 4B (`Nk = 16`, `Nv = 32`), with
//! `Dk = Dv = 128` and 64-token chunks, through the engine's pool. Throughput is in tokens.
//!
//! `rewind/27b`: what undoing a speculative step costs at Qwen3.6-27B's DeltaNet shape
//! (`Nk = 16`, `Nv = 48`, a 3 MiB state per layer), 8 layers, a 4-token step: the recurrent
//! step itself (a rewind to position `j` replays `j` of its tokens) and the copy of the state
//! that `Span::keep_states` takes before it. (Keeping a whole state per position instead cost
//! 3.6× the step, docs/PERFORMANCE.md.)
//!
//! `cargo bench -p qinfer-cpu --bench delta_rule [-- FILTER]`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qinfer_cpu::ops::{
    DeltaRuleInputs, DeltaRuleShape, VHeadOrder, gated_delta_rule_chunked,
    gated_delta_rule_recurrent, l2_norm,
};
use qinfer_tensor::Mat;

mod common;
use common::noise;

/// The delta rule's inputs for `t` tokens as the model makes them: unit q/k (q scaled by
/// Dk^-½), g < 0, β in (0, 1); `Dk = Dv = 128`.
struct Inputs {
    shape: DeltaRuleShape,
    q: Mat,
    k: Mat,
    v: Mat,
    g: Vec<f32>,
    beta: Vec<f32>,
}

impl Inputs {
    fn new(t: usize, nk: usize, nv: usize) -> Self {
        let shape = DeltaRuleShape {
            nk,
            nv,
            dk: 128,
            dv: 128,
            order: VHeadOrder::Tiled,
        };
        let mut q = Mat::from_vec(noise(t * nk * 128, 1), t, nk * 128);
        let mut k = Mat::from_vec(noise(t * nk * 128, 2), t, nk * 128);
        l2_norm(&mut q.data, 128, 1e-6);
        l2_norm(&mut k.data, 128, 1e-6);
        q.data.iter_mut().for_each(|x| *x /= 128f32.sqrt());
        let v = Mat::from_vec(noise(t * nv * 128, 3), t, nv * 128);
        let g = noise(t * nv, 4).iter().map(|x| -0.3 * (x + 1.05)).collect();
        let beta = noise(t * nv, 5).iter().map(|x| 0.5 + 0.45 * x).collect();
        Inputs {
            shape,
            q,
            k,
            v,
            g,
            beta,
        }
    }

    fn x(&self) -> DeltaRuleInputs<'_> {
        DeltaRuleInputs {
            q: &self.q,
            k: &self.k,
            v: &self.v,
            g: &self.g,
            beta: &self.beta,
        }
    }
}

fn delta_rule(c: &mut Criterion) {
    let cpu = qinfer_cpu::Cpu::from_env();
    qinfer_cpu::init_threads(None);
    let t = 512;
    for (name, nk, nv) in [("0.8b", 16, 16), ("4b", 16, 32)] {
        let inputs = Inputs::new(t, nk, nv);
        let (shape, x) = (inputs.shape, inputs.x());
        let init = noise(shape.state_len(), 6);
        let mut g = c.benchmark_group(format!("delta_rule/{name}"));
        g.sample_size(20);
        g.throughput(Throughput::Elements(t as u64));
        g.bench_function("chunked_t512", |b| {
            b.iter_batched_ref(
                || init.clone(),
                |s| black_box(gated_delta_rule_chunked(cpu, shape, x, s, 64)),
                criterion::BatchSize::LargeInput,
            )
        });
        g.finish();
    }
}

fn rewind(c: &mut Criterion) {
    let cpu = qinfer_cpu::Cpu::from_env();
    qinfer_cpu::init_threads(None);
    let t = 4;
    let inputs = Inputs::new(t, 16, 48);
    let (shape, x) = (inputs.shape, inputs.x());
    // Eight layers' states, so the working set (24 MiB) is not one L2-resident state.
    let layers = 8;
    let mut states: Vec<Vec<f32>> = (0..layers).map(|_| noise(shape.state_len(), 6)).collect();
    let mut backup: Vec<Vec<f32>> = states.clone();
    let mut g = c.benchmark_group("rewind/27b");
    g.sample_size(20);
    g.throughput(Throughput::Elements((t * layers) as u64));
    g.bench_function("recurrent_t4", |b| {
        b.iter(|| {
            for s in &mut states {
                black_box(gated_delta_rule_recurrent(cpu, shape, x, s));
            }
        })
    });
    g.bench_function("copy_state", |b| {
        b.iter(|| {
            for (s, bk) in states.iter().zip(&mut backup) {
                bk.copy_from_slice(s);
            }
            black_box(&backup);
        })
    });
    g.finish();
}

criterion_group!(benches, delta_rule, rewind);
criterion_main!(benches);
