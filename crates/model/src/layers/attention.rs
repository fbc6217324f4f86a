//! Gated full attention.
//!
//! ```text
//! qg = x W_qᵀ → [T, Hq, 2D]: per head, q = first D, gate = last D   (interleaved per head)
//! k = x W_kᵀ, v = x W_vᵀ → [T, Hkv, D]
//! q, k ← RMSNorm per head (q_norm, k_norm), then partial mRoPE
//! o = softmax(q kᵀ / √D + causal) v   (GQA over the KV cache, which stores post-RoPE k and v)
//! out = (o ⊙ sigmoid(gate)) W_oᵀ
//! ```

use qinfer_backend::{Act, AttentionShape, Backend};
use qinfer_cache::KvCache;
use qinfer_tensor::Weight;

use super::norm::RmsNorm;
#[cfg(doc)]
use super::rope::Rope;
use super::rope::RopeAngles;
use crate::config::AttentionConfig;
use crate::error::LoadError;
use crate::loader::{Loader, TensorId};
use crate::names::LayerTensor;

#[derive(Clone, Debug)]
pub struct Attention {
    pub config: AttentionConfig,
    /// `[Hq·D·(1 + gate), H]`.
    pub q: Weight,
    /// `[Hkv·D, H]`.
    pub k: Weight,
    /// `[Hkv·D, H]`.
    pub v: Weight,
    /// `[H, Hq·D]`.
    pub o: Weight,
    /// Over `D`.
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
}

impl Attention {
    pub fn load(
        ld: &Loader<'_>,
        l: usize,
        c: AttentionConfig,
        hidden: usize,
        eps: f32,
    ) -> Result<Self, LoadError> {
        let q_rows = c.n_heads * c.head_dim * if c.output_gate { 2 } else { 1 };
        let kv = c.n_kv_heads * c.head_dim;
        let id = |t| TensorId::Layer(l, t);
        Ok(Attention {
            config: c,
            q: ld.matrix(id(LayerTensor::AttnQ), q_rows, hidden)?,
            k: ld.matrix(id(LayerTensor::AttnK), kv, hidden)?,
            v: ld.matrix(id(LayerTensor::AttnV), kv, hidden)?,
            o: ld.matrix(id(LayerTensor::AttnO), hidden, c.n_heads * c.head_dim)?,
            q_norm: RmsNorm::load(ld, id(LayerTensor::AttnQNorm), c.head_dim, eps)?,
            k_norm: RmsNorm::load(ld, id(LayerTensor::AttnKNorm), c.head_dim, eps)?,
        })
    }

    /// The projections of a step's rows, which may belong to several sequences (a batch
    /// stacks them so each weight is read once): q (split from its gate), k, v, the per-head
    /// norms and RoPE at each row's own position (`angles`, [`Rope::angles_of`] the step's
    /// positions).
    pub fn project(&self, b: &dyn Backend, x: &Act, angles: &RopeAngles) -> AttentionRows {
        let AttentionConfig {
            n_heads,
            head_dim: d,
            output_gate,
            ..
        } = self.config;
        assert_eq!(angles.rows, x.rows(), "attention: one position per row");
        let [qg, mut k, v]: [Act; 3] = b
            .matmul_many(x, &[&self.q, &self.k, &self.v])
            .try_into()
            .expect("three weights, three outputs");
        // [T, Hq·(2D)] -> q [T, Hq·D], gate [T, Hq·D]
        let (mut q, gate) = if output_gate {
            let [q, gate]: [Act; 2] = b
                .split_heads(&qg, n_heads, &[d, d])
                .try_into()
                .expect("two widths, two outputs");
            (q, Some(gate))
        } else {
            (qg, None)
        };
        self.q_norm.forward(b, &mut q);
        self.k_norm.forward(b, &mut k);
        b.rope(&mut q, d, &angles.cos, &angles.sin);
        b.rope(&mut k, d, &angles.cos, &angles.sin);
        AttentionRows { q, gate, k, v }
    }

    /// One sequence's rows: appends its `k`, `v` `[T, Hkv·D]` to `kv`, then attends its
    /// queries `q` `[T, Hq·D]` over the whole cache. Returns `[T, Hq·D]`.
    pub fn attend(&self, b: &dyn Backend, q: &Act, k: &Act, v: &Act, kv: &mut KvCache) -> Act {
        let AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim: d,
            ..
        } = self.config;
        let shape = AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        b.attend(q, k, v, kv, shape) // [T, Hq·D]
    }

    /// The output gate (from [`Attention::project`]) and projection over all rows of a step,
    /// `o` `[T, Hq·D]` being the rows [`Attention::attend`] returned: `[T, H]`.
    pub fn output(&self, b: &dyn Backend, gate: Option<Act>, mut o: Act) -> Act {
        if let Some(gate) = gate {
            b.sigmoid_mul(&mut o, &gate);
        }
        b.matmul(&o, &self.o)
    }
}

/// A step's projected attention rows ([`Attention::project`]).
#[derive(Clone, Debug)]
pub struct AttentionRows {
    /// `[T, Hq·D]`, normed and rotated.
    pub q: Act,
    /// `[T, Hq·D]`, before the sigmoid (`None` without an output gate).
    pub gate: Option<Act>,
    /// `[T, Hkv·D]`, normed and rotated.
    pub k: Act,
    /// `[T, Hkv·D]`.
    pub v: Act,
}
