//! Fetches tensors by role and checks them: present, the expected shape, a dtype we compute
//! with. Norm weights come out as effective multipliers (the `(1 + w)` of zero-centred
//! checkpoints is applied here, once). Records which tensors were used, so the rest can be
//! listed (MTP, vision) or reported as unexpected.

use std::cell::RefCell;
use std::collections::BTreeSet;

use qinfer_formats::safetensors::{Checkpoint, StDType, TensorEntry};
use qinfer_tensor::{DType, Weight};

use crate::config::NormConvention;
use crate::error::LoadError;
use crate::names::{self, Global, LayerTensor, Prefix};

/// A tensor's role: whole-model, or a layer's.
#[derive(Clone, Copy, Debug)]
pub enum TensorId {
    Global(Global),
    Layer(usize, LayerTensor),
}

/// Reads tensors of one checkpoint for the model being built.
#[derive(Debug)]
pub struct Loader<'a> {
    checkpoint: &'a Checkpoint,
    prefix: Prefix,
    norm: NormConvention,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> Loader<'a> {
    pub fn new(checkpoint: &'a Checkpoint, prefix: Prefix, norm: NormConvention) -> Self {
        Loader {
            checkpoint,
            prefix,
            norm,
            used: RefCell::default(),
        }
    }

    /// Detects the tensor prefix from where the embedding is.
    pub fn detect_prefix(checkpoint: &Checkpoint) -> Result<Prefix, LoadError> {
        Prefix::ALL
            .into_iter()
            .find(|p| {
                checkpoint
                    .tensors
                    .contains_key(&names::global(*p, Global::Embed))
            })
            .ok_or_else(|| LoadError::MissingTensor {
                name: format!(
                    "{} (or {})",
                    names::global(Prefix::LanguageModel, Global::Embed),
                    names::global(Prefix::Model, Global::Embed)
                ),
            })
    }

    pub fn name(&self, id: TensorId) -> String {
        match id {
            TensorId::Global(g) => names::global(self.prefix, g),
            TensorId::Layer(l, t) => names::layer(self.prefix, l, t),
        }
    }

    pub fn has(&self, id: TensorId) -> bool {
        self.checkpoint.tensors.contains_key(&self.name(id))
    }

    fn entry(
        &self,
        id: TensorId,
        shapes: &[&[usize]],
    ) -> Result<(String, &'a TensorEntry, DType), LoadError> {
        let name = self.name(id);
        let entry = self
            .checkpoint
            .tensors
            .get(&name)
            .ok_or_else(|| LoadError::MissingTensor { name: name.clone() })?;
        if !shapes.contains(&entry.shape.as_slice()) {
            return Err(LoadError::Shape {
                name,
                expected: shapes[0].to_vec(),
                got: entry.shape.clone(),
            });
        }
        let dtype = match &entry.dtype {
            StDType::Known(d) => *d,
            other => {
                return Err(LoadError::DType {
                    name,
                    dtype: other.to_string(),
                });
            }
        };
        self.used.borrow_mut().insert(name.clone());
        Ok((name, entry, dtype))
    }

    /// A `[rows, cols]` matrix, zero-copy.
    pub fn matrix(&self, id: TensorId, rows: usize, cols: usize) -> Result<Weight, LoadError> {
        let (name, entry, dtype) = self.entry(id, &[&[rows, cols]])?;
        Weight::new(dtype, rows, cols, entry.data.clone()).map_err(|e| LoadError::Shape {
            name: format!("{name} ({e})"),
            expected: vec![rows, cols],
            got: entry.shape.clone(),
        })
    }

    /// A stacked `[n, rows, cols]` tensor as one `[n·rows, cols]` matrix, zero-copy.
    pub fn stack(
        &self,
        id: TensorId,
        n: usize,
        rows: usize,
        cols: usize,
    ) -> Result<Weight, LoadError> {
        let (name, entry, dtype) = self.entry(id, &[&[n, rows, cols]])?;
        Weight::new(dtype, n * rows, cols, entry.data.clone()).map_err(|e| LoadError::Shape {
            name: format!("{name} ({e})"),
            expected: vec![n, rows, cols],
            got: entry.shape.clone(),
        })
    }

    /// A small tensor widened to `f32`; `shapes` lists the accepted shapes (first = canonical).
    pub fn f32s(&self, id: TensorId, shapes: &[&[usize]]) -> Result<Vec<f32>, LoadError> {
        let (_, entry, dtype) = self.entry(id, shapes)?;
        let bytes = entry.data.as_bytes();
        Ok((0..entry.numel())
            .map(|i| dtype.read_f32(bytes, i))
            .collect())
    }

    /// A norm weight `[len]` as the effective multiplier, whatever the file's convention.
    pub fn norm(&self, id: TensorId, len: usize) -> Result<Vec<f32>, LoadError> {
        let w = self.f32s(id, &[&[len]])?;
        Ok(match self.norm {
            NormConvention::ZeroCentred => w.into_iter().map(|v| 1.0 + v).collect(),
            NormConvention::Plain => w,
        })
    }

    /// Tensor names of the checkpoint that no role consumed.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.checkpoint
            .tensors
            .keys()
            .filter(|n| !used.contains(*n))
            .cloned()
            .collect()
    }
}
