//! Gated full attention.
//!
//! ```text
//! qg = x W_qᵀ → [T, Hq, 2D]: per head, q = first D, gate = last D   (interleaved per head)
//! k = x W_kᵀ, v = x W_vᵀ → [T, Hkv, D]
//! q, k ← RMSNorm per head (q_norm, k_norm), then partial mRoPE
//! o = softmax(q kᵀ / √D + causal) v   (GQA over the KV cache, which stores post-RoPE k and v)
//! out = (o ⊙ sigmoid(gate)) W_oᵀ
//! ```

use qinfer_cache::KvCache;
use qinfer_cpu::ops::{self, AttentionShape};
use qinfer_tensor::{Mat, Weight};

use super::norm::RmsNorm;
use super::rope::{Position3, Rope};
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

    /// `x [T, H]` (normed) at `positions` → `[T, H]`; appends this step's k/v to `kv` (one
    /// sequence: [`Attention::project`], [`Attention::attend`], [`Attention::output`]).
    pub fn forward(&self, x: &Mat, positions: &[Position3], rope: &Rope, kv: &mut KvCache) -> Mat {
        let p = self.project(x, positions, rope);
        let o = self.attend(&p.q, &p.k, &p.v, kv);
        self.output(p.gate, o)
    }

    /// The projections of a step's rows, which may belong to several sequences (a batch
    /// stacks them so each weight is read once): q (split from its gate), k, v, the per-head
    /// norms and RoPE at each row's own `positions`.
    pub fn project(&self, x: &Mat, positions: &[Position3], rope: &Rope) -> AttentionRows {
        let AttentionConfig {
            n_heads,
            head_dim: d,
            output_gate,
            ..
        } = self.config;
        let t = x.rows;
        assert_eq!(positions.len(), t, "attention: one position per row");
        let [qg, mut k, v]: [Mat; 3] = ops::matmul_many(x, &[&self.q, &self.k, &self.v])
            .try_into()
            .expect("three weights, three outputs");
        // [T, Hq·(2D)] -> q [T, Hq·D], gate [T, Hq·D]
        let (mut q, gate) = if output_gate {
            let mut q = Mat::zeros(t, n_heads * d);
            let mut gate = Mat::zeros(t, n_heads * d);
            for ti in 0..t {
                for h in 0..n_heads {
                    let src = &qg.row(ti)[h * 2 * d..(h + 1) * 2 * d];
                    q.row_mut(ti)[h * d..(h + 1) * d].copy_from_slice(&src[..d]);
                    gate.row_mut(ti)[h * d..(h + 1) * d].copy_from_slice(&src[d..]);
                }
            }
            (q, Some(gate))
        } else {
            (qg, None)
        };
        self.q_norm.forward(&mut q);
        self.k_norm.forward(&mut k);
        for ti in 0..t {
            let (cos, sin) = rope.angles(positions[ti]);
            ops::rope_neox(q.row_mut(ti), d, &cos, &sin);
            ops::rope_neox(k.row_mut(ti), d, &cos, &sin);
        }
        AttentionRows { q, gate, k, v }
    }

    /// One sequence's rows: appends its `k`, `v` `[T, Hkv·D]` to `kv`, then attends its
    /// queries `q` `[T, Hq·D]` over the whole cache. Returns `[T, Hq·D]`.
    pub fn attend(&self, q: &Mat, k: &Mat, v: &Mat, kv: &mut KvCache) -> Mat {
        let AttentionConfig {
            n_heads,
            n_kv_heads,
            head_dim: d,
            ..
        } = self.config;
        kv.append(&k.data, &v.data);
        let shape = AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim: d,
            scale: 1.0 / (d as f32).sqrt(),
        };
        // The cache's blocks are read in place, never gathered into one buffer.
        let segments: Vec<ops::KvSegment<'_>> = kv.segments().collect();
        ops::causal_attention_blocks(q, &segments, shape) // [T, Hq·D]
    }

    /// The output gate (from [`Attention::project`]) and projection over all rows of a step,
    /// `o` `[T, Hq·D]` being the rows [`Attention::attend`] returned: `[T, H]`.
    pub fn output(&self, gate: Option<Mat>, mut o: Mat) -> Mat {
        if let Some(gate) = gate {
            for (oi, gi) in o.data.iter_mut().zip(&gate.data) {
                *oi *= ops::sigmoid(*gi);
            }
        }
        ops::matmul(&o, &self.o)
    }
}

/// A step's projected attention rows ([`Attention::project`]).
#[derive(Clone, Debug)]
pub struct AttentionRows {
    /// `[T, Hq·D]`, normed and rotated.
    pub q: Mat,
    /// `[T, Hq·D]`, before the sigmoid (`None` without an output gate).
    pub gate: Option<Mat>,
    /// `[T, Hkv·D]`, normed and rotated.
    pub k: Mat,
    /// `[T, Hkv·D]`.
    pub v: Mat,
}
