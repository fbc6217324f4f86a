//! Sparse mixture of experts with a gated shared expert (Qwen3.5/3.6 MoE models).
//!
//! ```text
//! p = softmax(x W_routerᵀ)            over all E experts, f32
//! top-k of p, renormalised to sum 1  (always, in this family)
//! y = Σ_j w_j · Expert_j(x)  +  sigmoid(x · w_sharedgate) · SharedExpert(x)
//! ```
//!
//! Experts are SwiGLU MLPs. Checkpoints store them stacked (`experts.gate_up_proj [E, 2I, H]`,
//! `experts.down_proj [E, H, I]`) or one tensor per expert; both load into the same views.

use qinfer_cpu::ops;
use qinfer_tensor::Mat;

use super::mlp::Mlp;
use crate::error::LoadError;
use crate::loader::{Loader, TensorId};
use crate::names::LayerTensor;

#[derive(Clone, Debug)]
pub struct Moe {
    /// `[E, H]`.
    pub router: qinfer_tensor::Weight,
    pub experts: Vec<Mlp>,
    pub top_k: usize,
    pub shared: Mlp,
    /// `[1, H]`.
    pub shared_gate: qinfer_tensor::Weight,
}

impl Moe {
    pub fn load(
        ld: &Loader<'_>,
        l: usize,
        hidden: usize,
        n_experts: usize,
        top_k: usize,
        inter: usize,
        shared_inter: usize,
    ) -> Result<Self, LoadError> {
        let id = |t| TensorId::Layer(l, t);
        let experts = if ld.has(id(LayerTensor::MoeGateUpExperts)) {
            // Fused `[E, 2I, H]`: per expert, gate rows then up rows.
            let gate_up = ld.stack(
                id(LayerTensor::MoeGateUpExperts),
                n_experts,
                2 * inter,
                hidden,
            )?;
            let down = ld.stack(id(LayerTensor::MoeDownExperts), n_experts, hidden, inter)?;
            (0..n_experts)
                .map(|e| Mlp {
                    gate: gate_up.rows_range(e * 2 * inter, inter),
                    up: gate_up.rows_range(e * 2 * inter + inter, inter),
                    down: down.rows_range(e * hidden, hidden),
                })
                .collect()
        } else if ld.has(id(LayerTensor::MoeGateExperts)) {
            // Separate `[E, I, H]` gate and up stacks (GGUF).
            let gate = ld.stack(id(LayerTensor::MoeGateExperts), n_experts, inter, hidden)?;
            let up = ld.stack(id(LayerTensor::MoeUpExperts), n_experts, inter, hidden)?;
            let down = ld.stack(id(LayerTensor::MoeDownExperts), n_experts, hidden, inter)?;
            (0..n_experts)
                .map(|e| Mlp {
                    gate: gate.rows_range(e * inter, inter),
                    up: up.rows_range(e * inter, inter),
                    down: down.rows_range(e * hidden, hidden),
                })
                .collect()
        } else {
            (0..n_experts)
                .map(|e| {
                    let roles = [
                        LayerTensor::MoeExpertGate(e),
                        LayerTensor::MoeExpertUp(e),
                        LayerTensor::MoeExpertDown(e),
                    ];
                    Mlp::load(ld, l, roles, hidden, inter)
                })
                .collect::<Result<_, _>>()?
        };
        let shared_roles = [
            LayerTensor::SharedExpertGate,
            LayerTensor::SharedExpertUp,
            LayerTensor::SharedExpertDown,
        ];
        Ok(Moe {
            router: ld.matrix(id(LayerTensor::MoeRouter), n_experts, hidden)?,
            experts,
            top_k,
            shared: Mlp::load(ld, l, shared_roles, hidden, shared_inter)?,
            shared_gate: ld.matrix(id(LayerTensor::SharedExpertScalarGate), 1, hidden)?,
        })
    }

    /// `[T, H] → [T, H]`.
    pub fn forward(&self, x: &Mat) -> Mat {
        let (t, h) = (x.rows, x.cols);
        let logits = ops::matmul(x, &self.router); // [T, E]
        // Tokens routed to each expert, with their weights.
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); self.experts.len()];
        for ti in 0..t {
            for (e, w) in route(logits.row(ti), self.top_k) {
                routed[e].push((ti, w));
            }
        }
        let mut out = Mat::zeros(t, h);
        for (expert, tokens) in self.experts.iter().zip(&routed) {
            if tokens.is_empty() {
                continue;
            }
            let mut xe = Mat::zeros(tokens.len(), h); // gathered rows
            for (i, (ti, _)) in tokens.iter().enumerate() {
                xe.row_mut(i).copy_from_slice(x.row(*ti));
            }
            let ye = expert.forward(&xe);
            for (i, (ti, w)) in tokens.iter().enumerate() {
                for (o, y) in out.row_mut(*ti).iter_mut().zip(ye.row(i)) {
                    *o += w * y;
                }
            }
        }
        let shared = self.shared.forward(x);
        let gate = ops::matmul(x, &self.shared_gate); // [T, 1]
        for ti in 0..t {
            let g = ops::sigmoid(gate.data[ti]);
            for (o, s) in out.row_mut(ti).iter_mut().zip(shared.row(ti)) {
                *o += g * s;
            }
        }
        out
    }
}

/// Softmax over all experts, the `k` most probable (ties to the lower index), weights
/// renormalised to sum 1.
pub fn route(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut p = logits.to_vec();
    ops::softmax(&mut p);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let top = &order[..k.min(order.len())];
    let sum: f32 = top.iter().map(|&e| p[e]).sum();
    top.iter().map(|&e| (e, p[e] / sum)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_the_top_k_with_renormalised_weights() {
        let r = route(&[0.0, 2.0, 1.0, -1.0], 2);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2]);
        let e = std::f32::consts::E;
        assert!((r[0].1 - e / (e + 1.0)).abs() < 1e-6);
        assert!((r[0].1 + r[1].1 - 1.0).abs() < 1e-6);
    }
}
