//! SwiGLU feed-forward: `W_down (silu(W_gate x) ⊙ W_up x)`.

use qinfer_backend::{Act, Backend, MlpJob};
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
        b.mlps(x, &[self.job(None)])
            .pop()
            .expect("one job, one output")
    }

    /// This MLP over the given rows of its input (`None`: all), for [`Backend::mlps`].
    pub fn job<'a>(&'a self, rows: Option<&'a [usize]>) -> MlpJob<'a> {
        MlpJob {
            gate: &self.gate,
            up: &self.up,
            down: &self.down,
            rows,
        }
    }
}
