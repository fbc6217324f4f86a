//! Gated DeltaNet, the linear-attention mixer of three in every four Qwen3.5 layers.
//!
//! ```text
//! m = x W_qkvᵀ [T, C]    z = x W_zᵀ [T, Nv·Dv]    b = x W_bᵀ, a = x W_aᵀ [T, Nv]
//! m ← silu(causal depthwise conv(m))           (rolling [K-1, C] window in the state)
//! q, k, v = split(m)                           (q ‖ k ‖ v, head-major)
//! β = sigmoid(b);  g = A · softplus(a + dt_bias),  A = −exp(A_log) < 0
//! q, k ← l2norm per head;  q ← q / √Dk
//! o = gated delta rule(q, k, v, g, β)          (state [Nv, Dk, Dv], f32)
//! o ← RMSNorm_plain(o per head; norm) ⊙ silu(z)
//! out = o W_outᵀ
//! ```
//!
//! Prefill runs the chunked form of the delta rule (chunks of [`CHUNK`]); single-token decode
//! the recurrent form. They agree (tested in `qinfer-cpu` and end to end).

use qinfer_backend::{Act, Backend, DeltaForm, DeltaInputs, DeltaRuleShape, conv_taps};
use qinfer_cache::{DeltaNetState, KeptLayer};
use qinfer_tensor::Weight;

use super::norm::RmsNorm;
use crate::config::DeltaNetConfig;
use crate::error::LoadError;
use crate::loader::{Loader, TensorId};
use crate::names::LayerTensor;

/// The four input projections of a Gated DeltaNet layer for `T` positions.
#[derive(Clone, Debug)]
pub struct DeltaNetProjections {
    /// `[T, C]`: q ‖ k ‖ v before the conv.
    pub mixed: Act,
    /// `[T, Nv·Dv]`: the output gate.
    pub z: Act,
    /// `[T, Nv]`: β before the sigmoid.
    pub b: Act,
    /// `[T, Nv]`: the decay input.
    pub a: Act,
}

impl DeltaNetProjections {
    /// Rows `start..end` (one sequence's segment of a batch).
    pub fn rows(&self, be: &dyn Backend, start: usize, end: usize) -> DeltaNetProjections {
        let cut = |m: &Act| be.rows(m, start..end);
        DeltaNetProjections {
            mixed: cut(&self.mixed),
            z: cut(&self.z),
            b: cut(&self.b),
            a: cut(&self.a),
        }
    }
}

/// Chunk length of the chunked delta rule (as in the reference implementation).
pub const CHUNK: usize = 64;
// The prefix cache's KV blocks and DeltaNet snapshot points are chunk boundaries.
const _: () = assert!(CHUNK == qinfer_cache::BLOCK_TOKENS);
/// Epsilon of the q/k L2 normalisation (the reference uses a fixed 1e-6).
const L2_EPS: f32 = 1e-6;

/// Which form of the delta rule a step uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeltaNetPath {
    /// Chunked for more than one token, recurrent for one.
    #[default]
    Auto,
    /// Always token by token.
    Recurrent,
    /// Always chunked.
    Chunked,
}

#[derive(Clone, Debug)]
pub struct GatedDeltaNet {
    pub config: DeltaNetConfig,
    /// `[C, H]`.
    pub qkv: Weight,
    /// `[Nv·Dv, H]`.
    pub z: Weight,
    /// `[Nv, H]`.
    pub b: Weight,
    /// `[Nv, H]`.
    pub a: Weight,
    /// The conv taps, `[K, C]` (the checkpoint's `[C, K]` transposed at load,
    /// [`conv_taps`]).
    pub conv_taps: Vec<f32>,
    /// `[Nv]`.
    pub dt_bias: Vec<f32>,
    /// `A = −exp(A_log)`, `[Nv]`.
    pub a_neg: Vec<f32>,
    /// Plain RMSNorm over `Dv`, shared by all heads.
    pub norm: RmsNorm,
    /// `[H, Nv·Dv]`.
    pub out: Weight,
}

impl GatedDeltaNet {
    pub fn load(
        ld: &Loader<'_>,
        l: usize,
        c: DeltaNetConfig,
        hidden: usize,
        eps: f32,
    ) -> Result<Self, LoadError> {
        let id = |t| TensorId::Layer(l, t);
        let (conv_dim, nv) = (c.conv_dim(), c.n_v_heads);
        Ok(GatedDeltaNet {
            config: c,
            qkv: ld.matrix(id(LayerTensor::DeltaNetQkv), conv_dim, hidden)?,
            z: ld.matrix(id(LayerTensor::DeltaNetZ), c.value_dim(), hidden)?,
            b: ld.matrix(id(LayerTensor::DeltaNetB), nv, hidden)?,
            a: ld.matrix(id(LayerTensor::DeltaNetA), nv, hidden)?,
            conv_taps: conv_taps(
                &ld.f32s(
                    id(LayerTensor::DeltaNetConv),
                    &[&[conv_dim, 1, c.conv_kernel], &[conv_dim, c.conv_kernel]],
                )?,
                conv_dim,
                c.conv_kernel,
            ),
            dt_bias: ld.f32s(id(LayerTensor::DeltaNetDtBias), &[&[nv]])?,
            a_neg: ld.deltanet_a(l, nv)?,
            // The gated norm is plain (`w`, not `1 + w`) in every checkpoint format.
            norm: RmsNorm {
                weight: ld.f32s(id(LayerTensor::DeltaNetNorm), &[&[c.v_head_dim]])?,
                eps,
            },
            out: ld.matrix(id(LayerTensor::DeltaNetOut), hidden, c.value_dim())?,
        })
    }

    /// `x [T, H]` (normed) → `[T, H]`, advancing `state` (one sequence, nothing kept).
    pub fn forward(
        &self,
        be: &dyn Backend,
        x: &Act,
        state: &mut DeltaNetState,
        path: DeltaNetPath,
    ) -> Act {
        let p = self.project(be, x);
        let o = self.mix(be, &p, state, None, path);
        self.output(be, &o)
    }

    /// The output projection over all rows of a step: `[T, Nv·Dv] → [T, H]`.
    pub fn output(&self, be: &dyn Backend, o: &Act) -> Act {
        be.matmul(o, &self.out)
    }

    /// The input projections, position by position (rows may belong to different sequences:
    /// a batch stacks them so each weight is read once).
    pub fn project(&self, be: &dyn Backend, x: &Act) -> DeltaNetProjections {
        // [T, C], [T, Nv·Dv], [T, Nv], [T, Nv], in one parallel region.
        let [mixed, z, b, a]: [Act; 4] = be
            .matmul_many(x, &[&self.qkv, &self.z, &self.b, &self.a])
            .try_into()
            .expect("four weights, four outputs");
        DeltaNetProjections { mixed, z, b, a }
    }

    /// Conv, delta rule and gated norm for one sequence's projected rows: `[T, Nv·Dv]`, before
    /// the output projection. With `kept` (the layer's record of a kept step,
    /// [`qinfer_cache::SequenceState::deltanet_mut`]) the conv window after every position and
    /// the delta rule's inputs are written there too, and the delta rule runs token by token
    /// whatever `path` says, so that [`GatedDeltaNet::replay`] over the first `j` positions
    /// gives bit for bit the state after them.
    pub fn mix(
        &self,
        be: &dyn Backend,
        p: &DeltaNetProjections,
        state: &mut DeltaNetState,
        mut kept: Option<&mut KeptLayer>,
        path: DeltaNetPath,
    ) -> Act {
        let c = self.config;
        let (t, key_dim) = (p.mixed.rows(), c.key_dim());
        let (taps, kernel) = (&self.conv_taps, c.conv_kernel);
        let windows = kept.as_mut().map(|k| &mut k.conv);
        let mixed = be.conv_silu(&p.mixed, &mut state.conv, taps, kernel, windows);
        let mut q = be.cols(&mixed, 0, key_dim); // [T, Nk·Dk]
        let mut k = be.cols(&mixed, key_dim, key_dim); // [T, Nk·Dk]
        let v = be.cols(&mixed, 2 * key_dim, c.value_dim()); // [T, Nv·Dv]
        let (beta, g) = be.deltanet_gates(&p.b, &p.a, &self.a_neg, &self.dt_bias);
        be.l2_norm(&mut q, c.k_head_dim, L2_EPS);
        be.l2_norm(&mut k, c.k_head_dim, L2_EPS);
        be.scale(&mut q, 1.0 / (c.k_head_dim as f32).sqrt());

        let inputs = DeltaInputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
        };
        let chunked = match path {
            DeltaNetPath::Auto => t > 1,
            DeltaNetPath::Recurrent => false,
            DeltaNetPath::Chunked => true,
        };
        let form = match kept {
            Some(kept) => {
                for (dst, src) in [
                    (&mut kept.q, &q),
                    (&mut kept.k, &k),
                    (&mut kept.v, &v),
                    (&mut kept.g, &g),
                    (&mut kept.beta, &beta),
                ] {
                    be.write_state(src, dst);
                }
                DeltaForm::Recurrent
            }
            None if chunked => DeltaForm::Chunked { chunk: CHUNK },
            None => DeltaForm::Recurrent,
        };
        let mut o = be.delta_rule(self.shape(), inputs, &mut state.recurrent, form);
        be.gated_rms_norm(&mut o, &p.z, &self.norm.weight, self.norm.eps);
        o
    }

    /// Sets `state` to the state after the first `j ≥ 1` positions of a kept step: the conv
    /// window kept after position `j`, and the start state advanced by the recurrence over
    /// the kept inputs of those positions — the same per-token steps the step ran, so the
    /// same bits.
    pub fn replay(&self, be: &dyn Backend, kept: &KeptLayer, j: usize, state: &mut DeltaNetState) {
        let c = self.config;
        let window = be.read_state(&kept.conv, j - 1..j, state.conv.len());
        be.write_state(&window, &mut state.conv);
        let (kd, vd, nv) = (c.key_dim(), c.value_dim(), c.n_v_heads);
        let rows = |data, w| be.read_state(data, 0..j, w);
        let (q, k, v) = (rows(&kept.q, kd), rows(&kept.k, kd), rows(&kept.v, vd));
        let (g, beta) = (rows(&kept.g, nv), rows(&kept.beta, nv));
        let inputs = DeltaInputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
        };
        state.recurrent.clone_from(&kept.start);
        be.delta_rule(
            self.shape(),
            inputs,
            &mut state.recurrent,
            DeltaForm::Recurrent,
        );
    }

    /// The head layout of the delta rule.
    fn shape(&self) -> DeltaRuleShape {
        let c = self.config;
        DeltaRuleShape {
            nk: c.n_k_heads,
            nv: c.n_v_heads,
            dk: c.k_head_dim,
            dv: c.v_head_dim,
            order: c.v_head_order,
        }
    }
}
