//! The device seam: the op vocabulary model code speaks, and the activations a backend owns.
//!
//! `qinfer-model` runs a forward pass only through a [`Backend`]: it never reads or writes an
//! activation's numbers, never calls a kernel, and never asks which instruction set or matmul
//! precision is in use — those are settings of the backend it was given at load. A backend
//! implements every method of [`Backend`] (the checklist is in ARCHITECTURE.md, "Adding a
//! backend"); the CPU backend (`qinfer_cpu::Cpu`) is the kernels of `qinfer-cpu`.
//!
//! What a backend owns:
//! * **Activations** ([`Act`]): `[rows, cols]` `f32` matrices, rows = positions. A host backend
//!   keeps them as host rows ([`Act::from_host`]), a device backend as its own buffers
//!   ([`Act::from_device`]). Model code sees only their shape; numbers cross the seam only
//!   through [`Backend::upload`] (caller-supplied embedding rows, replayed delta-rule inputs)
//!   and [`Backend::download`] (logits and hidden rows for the caller, router logits for MoE
//!   routing, trace points).
//! * **Weights**: [`Weight`]s in their storage format, handed to the backend once at load
//!   ([`Backend::prepare`]): the backend may check, repack or copy them to its memory there.
//! * **Sequence state**: KV rows ([`KvCache`], its rows [`KvData`]) and DeltaNet conv and
//!   recurrent state ([`StateBuf`]), and what a kept step records to rewind with, are passed
//!   `&mut` to the ops that read and write them ([`Backend::attend`], [`Backend::conv_silu`],
//!   [`Backend::delta_rule`], [`Backend::write_state`]). A device backend keeps them in its
//!   own memory ([`qinfer_cache::DeviceBuffer`]), moving a host buffer there in place the
//!   first time it sees one; a host backend moves device buffers to the host the same way.
//!   `qinfer-cache` shares, snapshots and truncates them without computing, and reads them
//!   back only to write files.
//!
//! Architecture invariant: this crate knows nothing about Qwen, files or tokens — shapes and
//! the meaning of each op only. It holds no kernels.

pub mod reference;

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::Arc;

#[cfg(doc)]
use qinfer_cache::KvData;
use qinfer_cache::{KvCache, StateBuf};
use qinfer_tensor::{DType, Mat, Weight};

/// An activation matrix `[rows, cols]` of `f32`, owned by the backend that made it.
#[derive(Clone)]
pub struct Act(Repr);

#[derive(Clone)]
enum Repr {
    Host(Mat),
    Device {
        rows: usize,
        cols: usize,
        buf: Arc<dyn Any + Send + Sync>,
    },
}

impl Act {
    /// Host rows (a host backend's activations).
    pub fn from_host(m: Mat) -> Act {
        Act(Repr::Host(m))
    }

    /// A device backend's buffer holding `[rows, cols]` (its layout is the backend's business).
    pub fn from_device(rows: usize, cols: usize, buf: Arc<dyn Any + Send + Sync>) -> Act {
        Act(Repr::Device { rows, cols, buf })
    }

    pub fn rows(&self) -> usize {
        match &self.0 {
            Repr::Host(m) => m.rows,
            Repr::Device { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match &self.0 {
            Repr::Host(m) => m.cols,
            Repr::Device { cols, .. } => *cols,
        }
    }

    /// The host rows, for a host backend (`None` for a device buffer). Backends only.
    pub fn host(&self) -> Option<&Mat> {
        match &self.0 {
            Repr::Host(m) => Some(m),
            Repr::Device { .. } => None,
        }
    }

    /// The host rows, mutably. Backends only.
    pub fn host_mut(&mut self) -> Option<&mut Mat> {
        match &mut self.0 {
            Repr::Host(m) => Some(m),
            Repr::Device { .. } => None,
        }
    }

    /// The host rows, taken. Backends only.
    pub fn into_host(self) -> Result<Mat, Act> {
        match self.0 {
            Repr::Host(m) => Ok(m),
            r => Err(Act(r)),
        }
    }

    /// The device buffer, if it is a `T`. Backends only.
    pub fn device<T: Any + Send + Sync>(&self) -> Option<&T> {
        match &self.0 {
            Repr::Host(_) => None,
            Repr::Device { buf, .. } => buf.downcast_ref(),
        }
    }
}

impl fmt::Debug for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = match self.0 {
            Repr::Host(_) => "host",
            Repr::Device { .. } => "device",
        };
        write!(f, "Act[{}, {}] ({place})", self.rows(), self.cols())
    }
}

/// Head layout of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// `Hq`.
    pub n_heads: usize,
    /// `Hkv`; query head `i` reads kv head `i / (Hq / Hkv)`.
    pub n_kv_heads: usize,
    /// `D`.
    pub head_dim: usize,
    /// Multiplier of `q·k` (usually `D^-½`).
    pub scale: f32,
}

/// Which key head each value head reads when `Nv > Nk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VHeadOrder {
    /// Hugging Face checkpoints: consecutive value heads share a key head (`j / (Nv/Nk)`).
    Grouped,
    /// llama.cpp GGUF files: value heads are tiled over key heads (`j mod Nk`).
    Tiled,
}

/// Head layout of a Gated DeltaNet layer.
#[derive(Clone, Copy, Debug)]
pub struct DeltaRuleShape {
    /// `Nk`: query/key heads.
    pub nk: usize,
    /// `Nv`: value heads (a multiple of `Nk`).
    pub nv: usize,
    /// `Dk`.
    pub dk: usize,
    /// `Dv`.
    pub dv: usize,
    pub order: VHeadOrder,
}

impl DeltaRuleShape {
    /// The key head that value head `j` reads.
    pub fn k_head(&self, j: usize) -> usize {
        match self.order {
            VHeadOrder::Grouped => j / (self.nv / self.nk),
            VHeadOrder::Tiled => j % self.nk,
        }
    }

    /// Elements of the recurrent state: `[Nv, Dk, Dv]`.
    pub fn state_len(&self) -> usize {
        self.nv * self.dk * self.dv
    }
}

/// The inputs of one sequence's delta rule, per position: `q`, `k` `[T, Nk·Dk]`
/// (L2-normalised; `q` already scaled by `Dk^-½`), `v` `[T, Nv·Dv]`, `g` (log decay, ≤ 0) and
/// `beta` `[T, Nv]`.
#[derive(Clone, Copy, Debug)]
pub struct DeltaInputs<'a> {
    pub q: &'a Act,
    pub k: &'a Act,
    pub v: &'a Act,
    pub g: &'a Act,
    pub beta: &'a Act,
}

/// One SwiGLU feed-forward of [`Backend::mlps`]: `W_down (silu(W_gate x) ⊙ W_up x)` over the
/// rows of `x` it names (`None`: every row) — a dense layer's MLP, an MoE layer's shared
/// expert, or one routed expert and the rows routed to it.
#[derive(Clone, Copy, Debug)]
pub struct MlpJob<'a> {
    /// `[I, H]`.
    pub gate: &'a Weight,
    /// `[I, H]`.
    pub up: &'a Weight,
    /// `[H, I]`.
    pub down: &'a Weight,
    pub rows: Option<&'a [usize]>,
}

/// The two forms of GELU checkpoints name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    /// `x · Φ(x)` with the exact normal CDF, `½ x (1 + erf(x / √2))` (PyTorch `gelu`).
    Erf,
    /// `½ x (1 + tanh(√(2/π) (x + 0.044715 x³)))` (PyTorch `gelu_pytorch_tanh`).
    Tanh,
}

/// The form of the delta rule: both give the same state and outputs up to rounding; only
/// `Recurrent` gives, position by position, the bits of one-position steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaForm {
    /// Position by position.
    Recurrent,
    /// In chunks of `chunk` positions (the prefill form).
    Chunked { chunk: usize },
}

/// The conv weight `[C, K]` (as checkpoints store it) transposed to the `[K, C]` taps
/// [`Backend::conv_silu`] takes.
///
/// # Panics
/// If `w.len() != channels · kernel`.
pub fn conv_taps(w: &[f32], channels: usize, kernel: usize) -> Vec<f32> {
    assert_eq!(w.len(), channels * kernel, "conv weight must be [C, K]");
    let mut taps = vec![0.0f32; kernel * channels];
    for (ch, wc) in w.chunks_exact(kernel).enumerate() {
        for (i, &wi) in wc.iter().enumerate() {
            taps[i * channels + ch] = wi;
        }
    }
    taps
}

/// Why a backend cannot take a weight.
#[derive(Debug, thiserror::Error)]
#[error("{backend} backend: {reason}")]
pub struct PrepareError {
    pub backend: String,
    pub reason: String,
}

/// The op vocabulary. Every method documents its shapes and exact meaning; a backend gives
/// the CPU backend's results up to its own rounding (and must say how far, tested), and the
/// bit-for-bit properties the engine relies on where noted ("same bits").
///
/// Shape letters as in `qinfer-tensor`: `T` rows (positions), `H` hidden, `V` vocabulary.
/// Methods panic on shapes that disagree: model code checks its inputs before calling.
pub trait Backend: Send + Sync + fmt::Debug {
    /// A short description for logs and `qinfer bench` (e.g. `cpu avx512 int8`).
    fn describe(&self) -> String;

    /// Whether [`Backend::matmul`] reads weights stored as `dtype`.
    fn supports(&self, dtype: DType) -> bool;

    /// Takes a weight at load time, once: returns the weight the forward pass will hand back to
    /// this backend's ops (checked, repacked, or tagged with its copy in device memory). By
    /// default: the weight as it is, if [`Backend::supports`] its format.
    fn prepare(&self, w: Weight) -> Result<Weight, PrepareError> {
        if self.supports(w.dtype()) {
            Ok(w)
        } else {
            Err(PrepareError {
                backend: self.describe(),
                reason: format!("no matmul reads {} weights", w.dtype()),
            })
        }
    }

    // --- Moving rows across the seam ---

    /// Caller-supplied rows onto the backend.
    fn upload(&self, m: Mat) -> Act;
    /// `[rows, cols]` of zeros.
    fn zeros(&self, rows: usize, cols: usize) -> Act {
        self.upload(Mat::zeros(rows, cols))
    }
    /// An activation's numbers, on the host (taken: a host backend hands its rows over
    /// without a copy).
    fn download(&self, a: Act) -> Mat;

    // --- Sequence state as activations ---

    /// Sets `s` to `a`'s numbers, row-major (`a.rows() · a.cols()` values; the buffer takes
    /// that length): a kept step's delta-rule inputs and conv windows, a rewound conv window.
    fn write_state(&self, a: &Act, s: &mut StateBuf);
    /// Rows `rows` of `s` read as `[rows.len(), cols]` (replaying kept inputs).
    fn read_state(&self, s: &StateBuf, rows: Range<usize>, cols: usize) -> Act;

    // --- Rows and columns ---

    /// Rows `ids[i]` of the embedding table `[V, H]`, widened to `f32`: `[T, H]`.
    fn embed(&self, table: &Weight, ids: &[u32]) -> Act;
    /// Rows `range` of `a`.
    fn rows(&self, a: &Act, range: Range<usize>) -> Act;
    /// Columns `start..start + len` of every row of `a`.
    fn cols(&self, a: &Act, start: usize, len: usize) -> Act;
    /// Rows `rows[i]` of `a`, in that order.
    fn gather(&self, a: &Act, rows: &[usize]) -> Act;
    /// The rows of every part, stacked in order (all parts the same width).
    fn stack(&self, parts: &[Act]) -> Act;
    /// Splits every row's `heads` groups of `Σ widths` columns into one activation per
    /// width: output `i` holds, per head, that head's `widths[i]` columns (q and its gate,
    /// interleaved per head in the attention projection).
    fn split_heads(&self, a: &Act, heads: usize, widths: &[usize]) -> Vec<Act>;

    // --- Arithmetic ---

    /// `x Wᵀ` for `x [T, in]`, `W [out, in]` in any supported format: `[T, out]`, at the
    /// backend's matmul precision.
    fn matmul(&self, x: &Act, w: &Weight) -> Act {
        self.matmul_many(x, &[w])
            .pop()
            .expect("one weight, one output")
    }
    /// [`Backend::matmul`] of one input against several weights (projections that share it).
    fn matmul_many(&self, x: &Act, ws: &[&Weight]) -> Vec<Act>;
    /// `x += y`.
    fn add(&self, x: &mut Act, y: &Act);
    /// `out[rows[i]] += weights[i] · src[i]`, for `i` in order (MoE experts and the gated
    /// shared expert adding their rows).
    fn scatter_add(&self, out: &mut Act, src: &Act, rows: &[usize], weights: &[f32]);
    /// Each job's feed-forward ([`MlpJob`]) → `[its rows, H]`, in job order. The results are
    /// those of [`Backend::gather`], [`Backend::matmul_many`] (gate, up), [`Backend::swiglu`]
    /// and [`Backend::matmul`] (down) per job, which is this default; a backend may run the
    /// jobs together (an MoE layer's experts in one pass) if the bits stay the same.
    fn mlps(&self, x: &Act, jobs: &[MlpJob<'_>]) -> Vec<Act> {
        jobs.iter()
            .map(|j| {
                let gathered = j.rows.map(|r| self.gather(x, r));
                let xi = gathered.as_ref().unwrap_or(x);
                let [mut gate, up]: [Act; 2] = self
                    .matmul_many(xi, &[j.gate, j.up])
                    .try_into()
                    .expect("two weights, two outputs");
                self.swiglu(&mut gate, &up);
                self.matmul(&gate, j.down)
            })
            .collect()
    }
    /// `x *= s`.
    fn scale(&self, x: &mut Act, s: f32);
    /// `x ← x ⊙ sigmoid(gate)` (the attention output gate).
    fn sigmoid_mul(&self, x: &mut Act, gate: &Act);
    /// SwiGLU: `gate ← silu(gate) ⊙ up`.
    fn swiglu(&self, gate: &mut Act, up: &Act);
    /// `x[t] += b` for every row `t` (`b.len()` = the width): a linear layer's bias.
    fn add_bias(&self, x: &mut Act, b: &[f32]);
    /// GELU of every element, in the given form.
    fn gelu(&self, x: &mut Act, form: Gelu);
    /// The same numbers, row-major, seen as `[rows, cols]` (`rows · cols` must equal the
    /// element count): a merge of neighbouring rows into one wider row, or the reverse.
    fn reshape(&self, a: Act, rows: usize, cols: usize) -> Act;

    // --- Norms and rotary embedding ---

    /// RMSNorm of every `w.len()`-wide group of every row (rows, or heads within rows):
    /// `x / sqrt(mean(x²) + eps) · w`.
    fn rms_norm(&self, x: &mut Act, w: &[f32], eps: f32);
    /// LayerNorm of every row (`w.len()` = `b.len()` = the width): `(x − mean(x)) /
    /// sqrt(var(x) + eps) · w + b`, the variance the biased one (divided by the width).
    fn layer_norm(&self, x: &mut Act, w: &[f32], b: &[f32], eps: f32);
    /// `x / sqrt(Σx² + eps)` over every `width`-wide group.
    fn l2_norm(&self, x: &mut Act, width: usize, eps: f32);
    /// Per `w.len()`-wide group: `x / sqrt(mean(x²) + eps) · w · silu(z)`.
    fn gated_rms_norm(&self, x: &mut Act, z: &Act, w: &[f32], eps: f32);
    /// NeoX rotary embedding of every `head_dim`-wide head of every row: pairs
    /// `(i, i + R/2)` for `i < R/2`, `R = 2·cos.len()/T`, rotated by row `t`'s angles
    /// `cos[t·R/2 + i]`, `sin[t·R/2 + i]`; dims past `R` untouched.
    fn rope(&self, x: &mut Act, head_dim: usize, cos: &[f32], sin: &[f32]);

    // --- Attention ---

    /// One sequence's attention: appends `k`, `v` `[T, Hkv·D]` to `kv` (stored in its
    /// [`qinfer_cache::KvType`], through [`KvCache::append_with`] for a device backend), then `softmax(q kᵀ · scale + causal) v` for `q` `[T, Hq·D]`
    /// at the cache's last `T` positions over all of its rows: `[T, Hq·D]`. Same bits
    /// whatever the split of a sequence into steps.
    fn attend(&self, q: &Act, k: &Act, v: &Act, kv: &mut KvCache, shape: AttentionShape) -> Act;

    /// Bidirectional attention of one segment (an image's patches): `softmax(q kᵀ · scale) v`
    /// for every row of `q` `[T, Hq·D]` over every row of `k`, `v` `[T, Hkv·D]`, no mask and no
    /// cache: `[T, Hq·D]`.
    fn attend_all(&self, q: &Act, k: &Act, v: &Act, shape: AttentionShape) -> Act;

    // --- Mixture of experts ---

    /// Routing of every row of router logits `[T, E]`: softmax over all experts, the `k` most
    /// probable (ties to the lower index), their weights renormalised to sum 1 — per row, the
    /// `(expert, weight)` pairs in order of probability, on the host (the experts to run).
    fn route(&self, logits: &Act, k: usize) -> Vec<Vec<(usize, f32)>>;
    /// `out[t] += sigmoid(gate[t]) · x[t]` for `gate` `[T, 1]` (the gated shared expert).
    fn add_gated(&self, out: &mut Act, x: &Act, gate: &Act);

    // --- Gated DeltaNet ---

    /// Causal depthwise conv over `window ‖ x` (`window` `[K-1, C]` the previous inputs,
    /// `taps` `[K, C]`) then SiLU: `[T, C]`; `window` becomes the last `K-1` inputs. With
    /// `keep`, it is set to the window after every row, `[T, (K-1)·C]`.
    fn conv_silu(
        &self,
        x: &Act,
        window: &mut StateBuf,
        taps: &[f32],
        kernel: usize,
        keep: Option<&mut StateBuf>,
    ) -> Act;
    /// The delta rule's gates from its projections `b`, `a` `[T, Nv]`:
    /// `(β = sigmoid(b), g = a_neg[h] · softplus(a + dt_bias[h]))`, `h` the column's head.
    fn deltanet_gates(&self, b: &Act, a: &Act, a_neg: &[f32], dt_bias: &[f32]) -> (Act, Act);
    /// The gated delta rule over one sequence's positions, reading and updating `state`
    /// (`[Nv, Dk, Dv]`): `o` `[T, Nv·Dv]`.
    fn delta_rule(
        &self,
        shape: DeltaRuleShape,
        inputs: DeltaInputs<'_>,
        state: &mut StateBuf,
        form: DeltaForm,
    ) -> Act;
}
