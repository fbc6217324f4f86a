//! Shared helpers of the golden tests: fixture paths, reference files, comparisons.

#![allow(dead_code)]

use std::path::PathBuf;

use qinfer_model::{Qwen35, Rows};

/// `tests/fixtures/<name>` at the repository root.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub fn load(name: &str) -> Qwen35 {
    Qwen35::load_dir(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `model` on a CPU backend in exact matmul mode (f32 activations against widened weights:
/// what transformers computes on the same weights).
pub fn exact(model: Qwen35) -> Qwen35 {
    let cpu = qinfer_cpu::Cpu::from_env().with_precision(qinfer_cpu::MatmulPrecision::Exact);
    model.with_backend(std::sync::Arc::new(cpu)).unwrap()
}

/// [`load`] in exact mode ([`exact`]).
pub fn load_exact(name: &str) -> Qwen35 {
    exact(load(name))
}

/// `reference.json` of a fixture.
pub fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    qinfer_testkit::json_ids(v)
}

/// `(shape, data)` of a fixture's `.npy` file.
pub fn npy(name: &str, file: &str) -> (Vec<usize>, Vec<f32>) {
    qinfer_formats::npy::read_f32(&fixture(name).join(file)).unwrap()
}

/// Largest |a - b| and where it is (row, col) for `[rows, cols]` data.
pub fn max_diff(a: &[f32], b: &[f32], cols: usize) -> (f32, usize, usize) {
    assert_eq!(a.len(), b.len(), "compared arrays differ in length");
    let mut worst = (0.0f32, 0, 0);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = (x - y).abs();
        if d > worst.0 || d.is_nan() {
            worst = (d, i / cols, i % cols);
        }
    }
    worst
}

/// Index of the largest logit, lowest id on ties.
pub fn argmax(row: &[f32]) -> u32 {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
        .unwrap() as u32
}

/// Greedy decoding: prefill, then `n` tokens one at a time (argmax, lowest id on ties).
pub fn greedy(model: &Qwen35, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut state = model.new_state();
    let mut logits = model.forward(prompt, &mut state, Rows::Last).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let next = argmax(logits.row(0));
        out.push(next);
        if out.len() < n {
            logits = model.forward(&[next], &mut state, Rows::Last).unwrap();
        }
    }
    out
}
