//! The device seam from outside: whole models on a second backend, added without touching
//! model or engine code. `qinfer_backend::reference::Reference` implements every op of the
//! seam in plain Rust from the trait's definitions alone (it shares no code with the CPU
//! kernels); on it the model must give what transformers and an independent float64 forward
//! give, and everything the engine relies on (rewinds, pieces, batching) must hold as it does
//! on the CPU backend.
//!
//! Tolerance: the golden tests' 1e-3 on logits of up to ±25. The reference backend sums in
//! `f64` and rounds each op's output to `f32`, so it sits close to the float64 forward.
//! Measured on the long prompt: dense 2.9e-5 from float64 and 1.0e-4 from transformers; MoE
//! 1.9e-4 and 4.6e-4 (the CPU backend: 5.9e-4 from float64 — the MoE fixture's
//! ill-conditioning, see `golden.rs`). CPU (exact) against reference over a prefill and two
//! decode steps: BF16 dense 6.4e-5, MoE 2.9e-4, Q8_0 GGUF 1.5e-4.

mod common;

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use qinfer_backend::reference::Reference;
use qinfer_backend::{
    Act, AttentionShape, Backend, DeltaForm, DeltaInputs, DeltaRuleShape, PrepareError,
};
use qinfer_cache::{KvCache, SequenceState};
use qinfer_model::{Qwen35, Rows, Span};
use qinfer_tensor::{DType, Mat, Weight};

const F32: [&str; 2] = ["tiny-dense-f32", "tiny-moe-f32"];
const LOGIT_TOL: f32 = 1e-3;

fn on_reference(model: Qwen35) -> Qwen35 {
    model.with_backend(Arc::new(Reference)).unwrap()
}

/// Logits of the long prompt (157 positions: several DeltaNet chunks, attention over them)
/// against the float64 forward and against transformers, and greedy ids against transformers.
#[test]
fn a_model_on_the_reference_backend_matches_the_references() {
    for name in F32 {
        let model = on_reference(load(name));
        assert_eq!(model.backend().describe(), "reference");
        let r = reference(name);
        let prompt = ids(&r["long_prompt"]);
        let got = model
            .forward(&prompt, &mut model.new_state(), Rows::All)
            .unwrap();
        for file in ["logits_long_f64.npy", "logits_long.npy"] {
            let (_, want) = npy(name, file);
            let (d, pos, tok) = max_diff(&got.data, &want, got.cols);
            assert!(
                d <= LOGIT_TOL,
                "{name} {file}: max |Δlogit| {d} at position {pos}, token {tok}"
            );
        }
        let want = ids(&r["greedy_ids"]);
        let got = greedy(&model, &ids(&r["greedy_prompt"]), want.len());
        assert_eq!(got, want, "{name}: greedy ids on the reference backend");
    }
}

/// The same model on the CPU backend (exact mode) and on the reference backend, through a
/// prefill and decode steps: within the bound at every position, for f32, BF16 and Q8_0
/// weights (the backends widen the same stored values).
#[test]
fn the_cpu_and_reference_backends_agree() {
    let models = [
        ("tiny-dense-bf16", load("tiny-dense-bf16")),
        ("tiny-moe-f32", load("tiny-moe-f32")),
        (
            "tiny-dense-q8_0.gguf",
            Qwen35::load_gguf(&fixture("gguf").join("tiny-dense-q8_0.gguf")).unwrap(),
        ),
    ];
    for (name, model) in models {
        let cpu = exact(model.clone());
        let re = on_reference(model);
        let prompt = qinfer_model::pseudo_random_tokens(70, cpu.config.vocab as u32, 7);
        let (mut a, mut b) = (cpu.new_state(), re.new_state());
        for (i, piece) in [&prompt[..66], &prompt[66..67], &prompt[67..]]
            .iter()
            .enumerate()
        {
            let x = cpu.forward(piece, &mut a, Rows::All).unwrap();
            let y = re.forward(piece, &mut b, Rows::All).unwrap();
            let (d, pos, _) = max_diff(&x.data, &y.data, x.cols);
            assert!(d <= LOGIT_TOL, "{name} piece {i}: |Δlogit| {d} at {pos}");
        }
    }
}

/// Rewinding a kept step composes with any backend: on the reference backend too, a step of
/// `k` positions that keeps its states, rewound to `j`, is bit for bit `j` one-token steps.
#[test]
fn rewinds_hold_on_the_reference_backend() {
    let model = on_reference(load("tiny-moe-f32"));
    let history = qinfer_model::pseudo_random_tokens(20, model.config.vocab as u32, 1);
    let draft = [5u32, 9, 2, 7];
    let mut base = model.new_state();
    model.prefill(&history, &mut base, Rows::Last).unwrap();
    let mut one = base.clone();
    let mut states: Vec<SequenceState> = Vec::new();
    for &t in &draft {
        model.forward(&[t], &mut one, Rows::Last).unwrap();
        states.push(one.clone());
    }
    let mut kept = base.clone();
    model
        .step(&mut [Span::tokens(&draft, &mut kept).keep_states(true)])
        .unwrap();
    for j in (1..=draft.len()).rev() {
        model.rewind(&mut kept, base.pos() + j).unwrap();
        assert_eq!(
            format!("{:?}", kept.layers()),
            format!("{:?}", states[j - 1].layers()),
            "state at j = {j}"
        );
    }
}

/// A simulated device: activations live in its own buffers (`Act::from_device`), every weight
/// is copied into its memory when prepared (widened to `f32`) and read only from there, and
/// the arithmetic is the reference backend's. It counts what crosses the seam.
#[derive(Debug, Default)]
struct Staged {
    uploads: AtomicUsize,
    downloads: AtomicUsize,
}

/// Staged "device memory".
struct Buf(Mat);

fn dev(m: Mat) -> Act {
    Act::from_device(m.rows, m.cols, Arc::new(Buf(m)))
}

/// A device activation as the reference backend's host rows.
fn local(a: &Act) -> Act {
    Act::from_host(a.device::<Buf>().expect("a staged activation").0.clone())
}

fn back(a: Act) -> Act {
    dev(Reference.download(a))
}

fn on_device(w: &Weight) -> &Weight {
    w.device::<Weight>()
        .expect("a weight the staged backend prepared")
}

impl Staged {
    fn in_place(&self, x: &mut Act, f: impl FnOnce(&mut Act)) {
        let mut h = local(x);
        f(&mut h);
        *x = back(h);
    }

    fn transfers(&self) -> (usize, usize) {
        (
            self.uploads.load(Ordering::Relaxed),
            self.downloads.load(Ordering::Relaxed),
        )
    }
}

impl Backend for Staged {
    fn describe(&self) -> String {
        "staged".into()
    }

    fn supports(&self, dtype: DType) -> bool {
        Reference.supports(dtype)
    }

    fn prepare(&self, w: Weight) -> Result<Weight, PrepareError> {
        let mut values = vec![0.0f32; w.rows() * w.cols()];
        for (r, out) in values.chunks_exact_mut(w.cols()).enumerate() {
            qinfer_quant::dequantize_row(w.dtype(), w.row(r), out).unwrap();
        }
        let copy = Weight::from_f32(values, w.rows(), w.cols());
        Ok(w.with_device(Arc::new(copy)))
    }

    fn upload(&self, m: Mat) -> Act {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        dev(m)
    }

    fn zeros(&self, rows: usize, cols: usize) -> Act {
        dev(Mat::zeros(rows, cols))
    }

    fn download(&self, a: Act) -> Mat {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        a.device::<Buf>().expect("a staged activation").0.clone()
    }

    fn download_into(&self, a: &Act, out: &mut Vec<f32>) {
        out.extend_from_slice(&self.download(a.clone()).data);
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Act {
        back(Reference.embed(on_device(table), ids))
    }

    fn rows(&self, a: &Act, range: Range<usize>) -> Act {
        back(Reference.rows(&local(a), range))
    }

    fn cols(&self, a: &Act, start: usize, len: usize) -> Act {
        back(Reference.cols(&local(a), start, len))
    }

    fn gather(&self, a: &Act, rows: &[usize]) -> Act {
        back(Reference.gather(&local(a), rows))
    }

    fn stack(&self, parts: &[Act]) -> Act {
        let parts: Vec<Act> = parts.iter().map(local).collect();
        back(Reference.stack(&parts))
    }

    fn split_heads(&self, a: &Act, heads: usize, widths: &[usize]) -> Vec<Act> {
        Reference
            .split_heads(&local(a), heads, widths)
            .into_iter()
            .map(back)
            .collect()
    }

    fn matmul_many(&self, x: &Act, ws: &[&Weight]) -> Vec<Act> {
        let ws: Vec<&Weight> = ws.iter().map(|w| on_device(w)).collect();
        Reference
            .matmul_many(&local(x), &ws)
            .into_iter()
            .map(back)
            .collect()
    }

    fn add(&self, x: &mut Act, y: &Act) {
        self.in_place(x, |h| Reference.add(h, &local(y)));
    }

    fn scatter_add(&self, out: &mut Act, src: &Act, rows: &[usize], weights: &[f32]) {
        self.in_place(out, |h| {
            Reference.scatter_add(h, &local(src), rows, weights)
        });
    }

    fn scale(&self, x: &mut Act, s: f32) {
        self.in_place(x, |h| Reference.scale(h, s));
    }

    fn sigmoid_mul(&self, x: &mut Act, gate: &Act) {
        self.in_place(x, |h| Reference.sigmoid_mul(h, &local(gate)));
    }

    fn swiglu(&self, gate: &mut Act, up: &Act) {
        self.in_place(gate, |h| Reference.swiglu(h, &local(up)));
    }

    fn rms_norm(&self, x: &mut Act, w: &[f32], eps: f32) {
        self.in_place(x, |h| Reference.rms_norm(h, w, eps));
    }

    fn l2_norm(&self, x: &mut Act, width: usize, eps: f32) {
        self.in_place(x, |h| Reference.l2_norm(h, width, eps));
    }

    fn gated_rms_norm(&self, x: &mut Act, z: &Act, w: &[f32], eps: f32) {
        self.in_place(x, |h| Reference.gated_rms_norm(h, &local(z), w, eps));
    }

    fn rope(&self, x: &mut Act, head_dim: usize, cos: &[f32], sin: &[f32]) {
        self.in_place(x, |h| Reference.rope(h, head_dim, cos, sin));
    }

    fn attend(&self, q: &Act, k: &Act, v: &Act, kv: &mut KvCache, shape: AttentionShape) -> Act {
        back(Reference.attend(&local(q), &local(k), &local(v), kv, shape))
    }

    fn route(&self, logits: &Act, k: usize) -> Vec<Vec<(usize, f32)>> {
        Reference.route(&local(logits), k)
    }

    fn add_gated(&self, out: &mut Act, x: &Act, gate: &Act) {
        self.in_place(out, |h| Reference.add_gated(h, &local(x), &local(gate)));
    }

    fn conv_silu(
        &self,
        x: &Act,
        window: &mut [f32],
        taps: &[f32],
        kernel: usize,
        keep: Option<&mut [f32]>,
    ) -> Act {
        back(Reference.conv_silu(&local(x), window, taps, kernel, keep))
    }

    fn deltanet_gates(&self, b: &Act, a: &Act, a_neg: &[f32], dt_bias: &[f32]) -> (Act, Act) {
        let (beta, g) = Reference.deltanet_gates(&local(b), &local(a), a_neg, dt_bias);
        (back(beta), back(g))
    }

    fn delta_rule(
        &self,
        shape: DeltaRuleShape,
        x: DeltaInputs<'_>,
        state: &mut [f32],
        form: DeltaForm,
    ) -> Act {
        let (q, k, v, g, beta) = (
            local(x.q),
            local(x.k),
            local(x.v),
            local(x.g),
            local(x.beta),
        );
        let inputs = DeltaInputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
        };
        back(Reference.delta_rule(shape, inputs, state, form))
    }
}

/// Model code never reaches past the seam: on a backend whose activations and weights live in
/// its own memory, a model computes exactly what the same arithmetic gives on host rows, and
/// the only numbers that cross are those the seam names — a decode step downloads its logits
/// and nothing else; supplied embedding rows are one upload.
#[test]
fn activations_and_weights_stay_on_a_device_backend() {
    for name in F32 {
        let staged = Arc::new(Staged::default());
        let on_device = load(name).with_backend(staged.clone()).unwrap();
        let on_host = on_reference(load(name));
        let prompt = qinfer_model::pseudo_random_tokens(70, on_host.config.vocab as u32, 3);
        let (mut a, mut b) = (on_device.new_state(), on_host.new_state());
        let x = on_device.forward(&prompt, &mut a, Rows::All).unwrap();
        let y = on_host.forward(&prompt, &mut b, Rows::All).unwrap();
        assert_eq!(x.data, y.data, "{name}: prefill logits");

        let before = staged.transfers();
        let x = on_device.forward(&[11], &mut a, Rows::Last).unwrap();
        let after = staged.transfers();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1),
            (0, 1),
            "{name}: a decode step moves its logits only"
        );
        let y = on_host.forward(&[11], &mut b, Rows::Last).unwrap();
        assert_eq!(x.data, y.data, "{name}: decode logits");

        let rows = Reference.download(Reference.embed(&on_host.embed, &[4, 5]));
        on_device
            .step(&mut [Span::embeddings(&rows, &mut a)])
            .unwrap();
        assert_eq!(staged.transfers().0 - after.0, 1, "{name}: rows supplied");
    }
}
