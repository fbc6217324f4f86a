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
    Act, AttentionShape, Backend, DeltaForm, DeltaInputs, DeltaRuleShape, Gelu, PrepareError,
};
use qinfer_cache::{DeviceBuffer, KvBlock, KvCache, KvData, LayerState, SequenceState, StateBuf};
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
        assert_eq!(kept.layers(), states[j - 1].layers(), "state at j = {j}");
    }
}

/// A simulated device: activations live in its own buffers (`Act::from_device`), every weight
/// is copied into its memory when prepared (widened to `f32`) and read only from there, the
/// sequence state (KV rows, DeltaNet state, what a kept step records) is moved into its memory
/// ([`StateMem`]) the first time an op sees it and computed on there, and the arithmetic is
/// the reference backend's. It counts what crosses the seam.
#[derive(Debug, Default)]
struct Staged {
    uploads: AtomicUsize,
    downloads: AtomicUsize,
    /// Host state buffers moved into device memory.
    state_uploads: AtomicUsize,
    /// Device state read back to the host (files, host backends), shared with its buffers.
    state_reads: Arc<AtomicUsize>,
}

/// Staged "device memory" for sequence state: its stored bytes in host layout.
#[derive(Clone, Debug)]
struct StateMem {
    bytes: Vec<u8>,
    reads: Arc<AtomicUsize>,
}

impl DeviceBuffer for StateMem {
    fn read(&self, bytes: usize) -> Vec<u8> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes[..bytes].to_vec()
    }

    fn duplicate(&self) -> Box<dyn DeviceBuffer> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
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

    fn state_transfers(&self) -> (usize, usize) {
        (
            self.state_uploads.load(Ordering::Relaxed),
            self.state_reads.load(Ordering::Relaxed),
        )
    }

    fn mem(&self, bytes: Vec<u8>) -> Box<dyn DeviceBuffer> {
        Box::new(StateMem {
            bytes,
            reads: self.state_reads.clone(),
        })
    }

    /// Moves a host state buffer into device memory (counted).
    fn resident(&self, s: &mut StateBuf) {
        if let StateBuf::Host(v) = s {
            if !v.is_empty() {
                self.state_uploads.fetch_add(1, Ordering::Relaxed);
            }
            let len = v.len();
            *s = StateBuf::Device {
                len,
                buf: self.mem(f32_bytes(v)),
            };
        }
    }

    /// Runs `f` on a host copy of device state, in "device memory" (not a transfer).
    fn on_state<R>(&self, s: &mut StateBuf, f: impl FnOnce(&mut StateBuf) -> R) -> R {
        self.resident(s);
        let mem = s.device_mut::<StateMem>().expect("staged state");
        let mut local = StateBuf::Host(f32s(&mem.bytes));
        let r = f(&mut local);
        let v = local.host_mut();
        mem.bytes = f32_bytes(v);
        *s = StateBuf::Device {
            len: v.len(),
            buf: Box::new(mem.clone()),
        };
        r
    }

    /// KV rows in device memory (host rows moved there, counted).
    fn resident_rows(&self, d: &mut KvData) {
        if d.is_host() {
            if !d.is_empty() {
                self.state_uploads.fetch_add(1, Ordering::Relaxed);
            }
            *d = KvData::Device {
                ty: d.kv_type(),
                units: d.units(),
                buf: self.mem(d.to_bytes()),
            };
        }
    }

    /// Device KV rows as host rows, in "device memory" (not a transfer).
    fn local_rows(d: &KvData) -> KvData {
        let KvData::Device { ty, units, buf } = d else {
            panic!("staged KV rows")
        };
        let mem = buf
            .as_any()
            .downcast_ref::<StateMem>()
            .expect("staged KV rows");
        let bytes = &mem.bytes[..units * KvData::unit_bytes(*ty)];
        KvData::from_bytes(*ty, bytes).unwrap()
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

    fn write_state(&self, a: &Act, s: &mut StateBuf) {
        let data = &a.device::<Buf>().expect("a staged activation").0.data;
        *s = StateBuf::Device {
            len: data.len(),
            buf: self.mem(f32_bytes(data)),
        };
    }

    fn read_state(&self, s: &StateBuf, rows: Range<usize>, cols: usize) -> Act {
        let values = match s {
            StateBuf::Device { .. } => f32s(&s.device::<StateMem>().expect("staged state").bytes),
            StateBuf::Host(v) => {
                self.state_uploads.fetch_add(1, Ordering::Relaxed);
                v.clone()
            }
        };
        let data = values[rows.start * cols..rows.end * cols].to_vec();
        dev(Mat::from_vec(data, rows.len(), cols))
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

    fn add_bias(&self, x: &mut Act, b: &[f32]) {
        self.in_place(x, |h| Reference.add_bias(h, b));
    }

    fn gelu(&self, x: &mut Act, form: Gelu) {
        self.in_place(x, |h| Reference.gelu(h, form));
    }

    fn reshape(&self, a: Act, rows: usize, cols: usize) -> Act {
        back(Reference.reshape(local(&a), rows, cols))
    }

    fn layer_norm(&self, x: &mut Act, w: &[f32], b: &[f32], eps: f32) {
        self.in_place(x, |h| Reference.layer_norm(h, w, b, eps));
    }

    fn attend_all(&self, q: &Act, k: &Act, v: &Act, shape: AttentionShape) -> Act {
        back(Reference.attend_all(&local(q), &local(k), &local(v), shape))
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
        // Blocks another backend or a file left on the host move in (new `Arc`s: other
        // sequences keep theirs).
        for b in kv.blocks_mut() {
            if !(b.keys().is_host() && b.values().is_host()) {
                continue;
            }
            let (mut bk, mut bv) = (b.keys().clone(), b.values().clone());
            self.resident_rows(&mut bk);
            self.resident_rows(&mut bv);
            *b = Arc::new(KvBlock::new(bk, bv));
        }
        // The reference arithmetic over a local copy of the stored rows...
        let (mut k_all, mut v_all) = (KvData::empty(kv.kv_type()), KvData::empty(kv.kv_type()));
        let width = kv.kv_width();
        let gather = |d: &KvData, into: &mut KvData| {
            let rows = if d.is_host() {
                d.clone()
            } else {
                Staged::local_rows(d)
            };
            into.push_rows(&rows.to_f32(), width);
        };
        for b in kv.blocks() {
            gather(b.keys(), &mut k_all);
            gather(b.values(), &mut v_all);
        }
        let (tk, tv) = kv.tail();
        gather(tk, &mut k_all);
        gather(tv, &mut v_all);
        let mut local_kv = KvCache::from_rows(width, k_all, v_all).unwrap();
        let (k, v) = (local(k), local(v));
        let out = Reference.attend(&local(q), &k, &v, &mut local_kv, shape);
        // ...and the new rows appended in device memory.
        let (k, v) = (&k.host().unwrap().data, &v.host().unwrap().data);
        kv.append_with(k.len() / width, |tk, tv, rows| {
            for (d, src) in [(tk, k), (tv, v)] {
                self.resident_rows(d);
                let mut new = KvData::empty(d.kv_type());
                new.push_rows(&src[rows.start * width..rows.end * width], width);
                let KvData::Device { units, buf, .. } = d else {
                    unreachable!("resident above")
                };
                *units += new.units();
                let mem = buf.as_any_mut().downcast_mut::<StateMem>().unwrap();
                mem.bytes.extend_from_slice(&new.to_bytes());
            }
        });
        back(out)
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
        window: &mut StateBuf,
        taps: &[f32],
        kernel: usize,
        keep: Option<&mut StateBuf>,
    ) -> Act {
        let x = local(x);
        back(self.on_state(window, |w| match keep {
            Some(kept) => {
                self.on_state(kept, |k| Reference.conv_silu(&x, w, taps, kernel, Some(k)))
            }
            None => Reference.conv_silu(&x, w, taps, kernel, None),
        }))
    }

    fn deltanet_gates(&self, b: &Act, a: &Act, a_neg: &[f32], dt_bias: &[f32]) -> (Act, Act) {
        let (beta, g) = Reference.deltanet_gates(&local(b), &local(a), a_neg, dt_bias);
        (back(beta), back(g))
    }

    fn delta_rule(
        &self,
        shape: DeltaRuleShape,
        x: DeltaInputs<'_>,
        state: &mut StateBuf,
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
        back(self.on_state(state, |s| Reference.delta_rule(shape, inputs, s, form)))
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

/// Bytes of `s`'s layers held in host memory and in device memory.
fn placement(s: &SequenceState) -> (usize, usize) {
    let (mut host, mut device) = (0, 0);
    let mut count =
        |on_host: bool, bytes: usize| *(if on_host { &mut host } else { &mut device }) += bytes;
    for l in s.layers() {
        match l {
            LayerState::Attention(kv) => {
                let (tk, tv) = kv.tail();
                for d in kv
                    .blocks()
                    .iter()
                    .flat_map(|b| [b.keys(), b.values()])
                    .chain([tk, tv])
                {
                    count(d.is_host(), d.bytes());
                }
            }
            LayerState::DeltaNet(d) => {
                for b in [&d.conv, &d.recurrent] {
                    count(b.is_host(), b.len() * 4);
                }
            }
        }
    }
    (host, device)
}

/// Sequence state is the backend's too: on the staged device, KV rows, DeltaNet state and what
/// a kept step records live in its memory once an op has seen them, and decode steps, kept
/// steps, rewinds, snapshots and restores move none of it across the seam while computing
/// what the host computes bit for bit. Only files and host backends read it back — and a
/// state read back (or made on the host) continues on either backend with the same logits.
#[test]
fn sequence_state_stays_on_a_device_backend() {
    for name in F32 {
        let staged = Arc::new(Staged::default());
        let on_device = load(name).with_backend(staged.clone()).unwrap();
        let on_host = on_reference(load(name));
        let prompt = qinfer_model::pseudo_random_tokens(70, on_host.config.vocab as u32, 5);
        let (mut a, mut b) = (on_device.new_state(), on_host.new_state());
        on_device.prefill(&prompt, &mut a, Rows::Last).unwrap();
        on_host.prefill(&prompt, &mut b, Rows::Last).unwrap();
        assert_eq!(placement(&b).1, 0);
        assert_eq!(
            placement(&a).0,
            0,
            "{name}: prefilled state in device memory"
        );

        let before = staged.state_transfers();
        let both = |tokens: &[u32], a: &mut SequenceState, b: &mut SequenceState, what: &str| {
            let x = on_device.forward(tokens, a, Rows::Last).unwrap();
            let y = on_host.forward(tokens, b, Rows::Last).unwrap();
            assert_eq!(x.data, y.data, "{name}: {what}");
        };
        let (snap_a, snap_b) = (a.snapshot(), b.snapshot());
        both(&[11], &mut a, &mut b, "decode");
        let draft = [5u32, 9, 2, 7];
        for (model, s) in [(&on_device, &mut a), (&on_host, &mut b)] {
            model
                .step(&mut [Span::tokens(&draft, s).keep_states(true)])
                .unwrap();
            let to = s.pos() - 2;
            model.rewind(s, to).unwrap();
        }
        both(&[3], &mut a, &mut b, "after a rewind");
        a.restore(&snap_a).unwrap();
        b.restore(&snap_b).unwrap();
        both(&[8], &mut a, &mut b, "after a restore");
        assert_eq!(
            staged.state_transfers(),
            before,
            "{name}: no state crossed the seam"
        );
        assert_eq!(placement(&a).0, 0, "{name}");

        // Read back: the host's state bit for bit; a file of it continues anywhere.
        assert_eq!(a.layers(), b.layers(), "{name}: state");
        assert!(staged.state_transfers().1 > before.1);
        let mut w = qinfer_cache::persist::Writer::default();
        w.state(&a);
        let file = qinfer_cache::persist::Reader::new(&w.buf).state().unwrap();
        let (mut from_file_host, mut from_file_dev) = (file.clone(), file.clone());
        both(
            &[4, 6],
            &mut from_file_dev,
            &mut b.clone(),
            "device, from a file",
        );
        let uploads = staged.state_transfers().0;
        assert!(uploads > before.0, "{name}: the file's state moved in");
        let y = on_host.forward(&[4, 6], &mut from_file_host, Rows::Last);
        let z = on_host.forward(&[4, 6], &mut b, Rows::Last);
        assert_eq!(
            y.unwrap().data,
            z.unwrap().data,
            "{name}: host, from a file"
        );
        // A device state handed to a host backend moves to the host.
        let x = on_host.forward(&[1], &mut a, Rows::Last).unwrap();
        let y = on_host
            .forward(&[1], &mut file.clone(), Rows::Last)
            .unwrap();
        assert_eq!(x.data, y.data, "{name}: device state on the host backend");
        assert_eq!(placement(&a).1, 0, "{name}: moved to the host");
    }
}
