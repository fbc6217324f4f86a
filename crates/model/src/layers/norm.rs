//! RMSNorm with an effective multiplier (the loader already applied `1 + w` where the
//! checkpoint stores zero-centred weights).

use qinfer_backend::{Act, Backend};

use crate::error::LoadError;
use crate::loader::{Loader, TensorId};

#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// Effective multiplier, `[width]`.
    pub weight: Vec<f32>,
    pub eps: f32,
}

impl RmsNorm {
    pub fn load(ld: &Loader<'_>, id: TensorId, width: usize, eps: f32) -> Result<Self, LoadError> {
        Ok(RmsNorm {
            weight: ld.norm(id, width)?,
            eps,
        })
    }

    /// Normalises every `width`-wide group of `x` (rows, or heads within rows).
    pub fn forward(&self, b: &dyn Backend, x: &mut Act) {
        b.rms_norm(x, &self.weight, self.eps);
    }

    /// Normalised copy of `x`.
    pub fn apply(&self, b: &dyn Backend, x: &Act) -> Act {
        let mut y = x.clone();
        self.forward(b, &mut y);
        y
    }
}
