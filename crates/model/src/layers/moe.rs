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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use qinfer_backend::{Act, Backend, MlpJob};

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
    /// Experts touched, counted per forward (one per step): what a batch costs in weights.
    pub touched: Arc<ExpertsTouched>,
}

/// Distinct experts a layer ran, summed over its forwards (`qinfer bench --batch`).
#[derive(Debug, Default)]
pub struct ExpertsTouched {
    /// Forwards counted.
    pub forwards: AtomicU64,
    /// Distinct experts over those forwards.
    pub experts: AtomicU64,
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
            touched: Arc::default(),
        })
    }

    /// `[T, H] → [T, H]`. Routing runs on the backend ([`Backend::route`]); each expert
    /// then takes the rows routed to it, and adds them back weighted.
    pub fn forward(&self, b: &dyn Backend, x: &Act) -> Act {
        let logits = b.matmul(x, &self.router); // [T, E]
        // Rows routed to each expert, with their weights.
        let mut routed: Vec<(Vec<usize>, Vec<f32>)> = vec![Default::default(); self.experts.len()];
        for (t, picks) in b.route(&logits, self.top_k).into_iter().enumerate() {
            for (e, w) in picks {
                routed[e].0.push(t);
                routed[e].1.push(w);
            }
        }
        let touched: Vec<usize> = (0..routed.len())
            .filter(|&e| !routed[e].0.is_empty())
            .collect();
        self.touched.forwards.fetch_add(1, Ordering::Relaxed);
        self.touched
            .experts
            .fetch_add(touched.len() as u64, Ordering::Relaxed);
        // The touched experts, each on its rows, and the shared expert on all, in one call
        // (a backend may run them together); added back in expert order, then the shared.
        let mut jobs: Vec<MlpJob<'_>> = touched
            .iter()
            .map(|&e| self.experts[e].job(Some(&routed[e].0)))
            .collect();
        jobs.push(self.shared.job(None));
        let mut ys = b.mlps(x, &jobs);
        let shared = ys.pop().expect("the shared expert's output");
        let mut out = b.zeros(x.rows(), x.cols());
        for (&e, ye) in touched.iter().zip(&ys) {
            let (rows, weights) = &routed[e];
            b.scatter_add(&mut out, ye, rows, weights);
        }
        let gate = b.matmul(x, &self.shared_gate); // [T, 1]
        b.add_gated(&mut out, &shared, &gate);
        out
    }
}
