//! SwiGLU feed-forward: `W_down (silu(W_gate x) ⊙ W_up x)`.

use qinfer_backend::{Act, Backend};
use qinfer_tensor::Weight;

use crate::error::LoadError;
use crate::loader::{Loader, TensorId};
use crate::names::LayerTensor;

#[derive(Clone, Debug)]
pub struct Mlp {
    /// `[I, H]`.
    pub gate: Weight,
    /// `[I, H]`.
    pub up: Weight,
    /// `[H, I]`.
    pub down: Weight,
}

impl Mlp {
    /// Loads a dense MLP of layer `l` from the given roles (the MLP of a layer, or a MoE's
    /// shared expert).
    pub fn load(
        ld: &Loader<'_>,
        l: usize,
        roles: [LayerTensor; 3],
        hidden: usize,
        intermediate: usize,
    ) -> Result<Self, LoadError> {
        let [g, u, d] = roles;
        Ok(Mlp {
            gate: ld.matrix(TensorId::Layer(l, g), intermediate, hidden)?,
            up: ld.matrix(TensorId::Layer(l, u), intermediate, hidden)?,
            down: ld.matrix(TensorId::Layer(l, d), hidden, intermediate)?,
        })
    }

    /// `[T, H] → [T, H]`.
    pub fn forward(&self, b: &dyn Backend, x: &Act) -> Act {
        // [T, I] each
        let [mut gate, up]: [Act; 2] = b
            .matmul_many(x, &[&self.gate, &self.up])
            .try_into()
            .expect("two weights, two outputs");
        b.swiglu(&mut gate, &up);
        b.matmul(&gate, &self.down)
    }
}
