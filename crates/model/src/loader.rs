//! Fetches tensors by role and checks them: present, the expected shape, a dtype we compute
//! with. Norm weights come out as effective multipliers (the `(1 + w)` of zero-centred
//! checkpoints is applied here, once). Records which tensors were used, so the rest can be
//! listed (MTP, vision) or reported as unexpected.
//!
//! Tensors come from any [`TensorSource`]: a safetensors checkpoint, or a GGUF file.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use qinfer_formats::safetensors::{Checkpoint, StDType};
use qinfer_tensor::{ByteView, DType, Weight};

use crate::config::NormConvention;
use crate::error::LoadError;
use crate::names::{self, Global, LayerTensor, MtpTensor, Naming, Prefix, VisionTensor};

/// One tensor as a source presents it.
#[derive(Clone, Debug)]
pub struct TensorView {
    /// The storage type, or its name when qinfer cannot compute with it.
    pub dtype: Result<DType, String>,
    /// Row-major shape (outermost first, as PyTorch writes it).
    pub shape: Vec<usize>,
    pub data: ByteView,
}

/// Where tensors come from.
pub trait TensorSource {
    fn tensor(&self, name: &str) -> Option<TensorView>;
    /// Every tensor name, in a stable order.
    fn names(&self) -> Vec<String>;
}

impl TensorSource for Checkpoint {
    fn tensor(&self, name: &str) -> Option<TensorView> {
        self.tensors.get(name).map(|t| TensorView {
            dtype: match &t.dtype {
                StDType::Known(d) => Ok(*d),
                other => Err(other.to_string()),
            },
            shape: t.shape.clone(),
            data: t.data.clone(),
        })
    }

    fn names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}

/// A tensor's role: whole-model, a layer's, or the MTP head's (stored as block `block`, the
/// decoder's layer count, in GGUF files).
#[derive(Clone, Copy, Debug)]
pub enum TensorId {
    Global(Global),
    Layer(usize, LayerTensor),
    Mtp {
        block: usize,
        t: MtpTensor,
    },
    /// The vision tower's (GGUF: an `mmproj` file's names).
    Vision(VisionTensor),
}

impl TensorId {
    /// The tensor's name in a source named by `naming`.
    pub fn name_in(self, naming: Naming) -> String {
        match self {
            TensorId::Global(g) => names::global_in(naming, g),
            TensorId::Layer(l, t) => names::layer_in(naming, l, t),
            TensorId::Mtp { block, t } => names::mtp_in(naming, block, t),
            TensorId::Vision(t) => names::vision_in(naming, t),
        }
    }
}

/// Reads tensors of one source for the model being built.
pub struct Loader<'a> {
    source: &'a dyn TensorSource,
    naming: Naming,
    norm: NormConvention,
    used: RefCell<BTreeSet<String>>,
    /// While set ([`Loader::mtp_layer`]): layer tensors are the MTP block's (stored as block
    /// `n`), whatever layer index a layer's loader asks for.
    mtp_block: Cell<Option<usize>>,
}

impl std::fmt::Debug for Loader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("naming", &self.naming)
            .field("norm", &self.norm)
            .finish()
    }
}

impl<'a> Loader<'a> {
    pub fn new(source: &'a dyn TensorSource, naming: Naming, norm: NormConvention) -> Self {
        Loader {
            source,
            naming,
            norm,
            used: RefCell::default(),
            mtp_block: Cell::new(None),
        }
    }

    /// Runs `load` with every layer tensor read from the MTP block (stored as block
    /// `block`): the MTP head's decoder layer loads with the main layers' own code.
    pub fn mtp_layer<T>(&self, block: usize, load: impl FnOnce(&Self) -> T) -> T {
        self.mtp_block.set(Some(block));
        let out = load(self);
        self.mtp_block.set(None);
        out
    }

    /// Detects the Hugging Face tensor prefix from where the embedding is, among the tensor
    /// names for which `present` holds.
    pub fn detect_hf_prefix(present: &dyn Fn(&str) -> bool) -> Result<Prefix, LoadError> {
        Prefix::ALL
            .into_iter()
            .find(|p| present(&names::global(*p, Global::Embed)))
            .ok_or_else(|| LoadError::MissingTensor {
                name: format!(
                    "{} (or {})",
                    names::global(Prefix::LanguageModel, Global::Embed),
                    names::global(Prefix::Model, Global::Embed)
                ),
            })
    }

    pub fn naming(&self) -> Naming {
        self.naming
    }

    pub fn name(&self, id: TensorId) -> String {
        let id = match (id, self.mtp_block.get()) {
            (TensorId::Layer(_, t), Some(block)) => TensorId::Mtp {
                block,
                t: MtpTensor::Layer(t),
            },
            _ => id,
        };
        id.name_in(self.naming)
    }

    pub fn has(&self, id: TensorId) -> bool {
        self.source.tensor(&self.name(id)).is_some()
    }

    fn entry(
        &self,
        id: TensorId,
        shapes: &[&[usize]],
    ) -> Result<(String, TensorView, DType), LoadError> {
        let name = self.name(id);
        let view = self
            .source
            .tensor(&name)
            .ok_or_else(|| LoadError::MissingTensor { name: name.clone() })?;
        if !shapes.contains(&view.shape.as_slice()) {
            return Err(LoadError::Shape {
                name,
                expected: shapes[0].to_vec(),
                got: view.shape,
            });
        }
        let dtype = match &view.dtype {
            Ok(d) if qinfer_quant::supported(*d) => *d,
            Ok(d) => {
                return Err(LoadError::DType {
                    name,
                    dtype: d.to_string(),
                });
            }
            Err(other) => {
                return Err(LoadError::DType {
                    name,
                    dtype: other.clone(),
                });
            }
        };
        self.used.borrow_mut().insert(name.clone());
        Ok((name, view, dtype))
    }

    /// A `[rows, cols]` matrix in its storage type, zero-copy (a `[cols]` vector also serves
    /// as a one-row matrix).
    pub fn matrix(&self, id: TensorId, rows: usize, cols: usize) -> Result<Weight, LoadError> {
        let shapes: &[&[usize]] = if rows == 1 {
            &[&[rows, cols], &[cols]]
        } else {
            &[&[rows, cols]]
        };
        let (name, view, dtype) = self.entry(id, shapes)?;
        Weight::new(dtype, rows, cols, view.data).map_err(|e| LoadError::Shape {
            name: format!("{name} ({e})"),
            expected: vec![rows, cols],
            got: view.shape,
        })
    }

    /// A tensor stored with shape `shape` (e.g. a convolution kernel) seen as the
    /// `[rows, cols]` matrix of its row-major bytes, zero-copy.
    pub fn matrix_shaped(
        &self,
        id: TensorId,
        rows: usize,
        cols: usize,
        shape: &[usize],
    ) -> Result<Weight, LoadError> {
        let (name, view, dtype) = self.entry(id, &[shape])?;
        Weight::new(dtype, rows, cols, view.data).map_err(|e| LoadError::Shape {
            name: format!("{name} ({e})"),
            expected: shape.to_vec(),
            got: view.shape,
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
        let (name, view, dtype) = self.entry(id, &[&[n, rows, cols]])?;
        Weight::new(dtype, n * rows, cols, view.data).map_err(|e| LoadError::Shape {
            name: format!("{name} ({e})"),
            expected: vec![n, rows, cols],
            got: view.shape,
        })
    }

    /// A small float tensor widened to `f32`; `shapes` lists the accepted shapes (first =
    /// canonical).
    pub fn f32s(&self, id: TensorId, shapes: &[&[usize]]) -> Result<Vec<f32>, LoadError> {
        let (name, view, dtype) = self.entry(id, shapes)?;
        if dtype.is_quantized() {
            return Err(LoadError::DType {
                name: format!("{name} (must be a float type)"),
                dtype: dtype.to_string(),
            });
        }
        let bytes = view.data.as_bytes();
        let n: usize = view.shape.iter().product();
        Ok((0..n).map(|i| dtype.read_f32(bytes, i)).collect())
    }

    /// Any tensor widened to `f32` (quantized ones dequantized), with its row-major shape.
    /// For export; `shapes` lists the accepted shapes.
    pub fn f32_any(
        &self,
        id: TensorId,
        shapes: &[&[usize]],
    ) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let (name, view, dtype) = self.entry(id, shapes)?;
        let cols = *view.shape.last().unwrap_or(&1);
        let n: usize = view.shape.iter().product();
        let mut out = vec![0.0f32; n];
        let row_bytes = dtype.row_bytes(cols).ok_or_else(|| LoadError::Shape {
            name: name.clone(),
            expected: shapes[0].to_vec(),
            got: view.shape.clone(),
        })?;
        for (dst, src) in out
            .chunks_mut(cols.max(1))
            .zip(view.data.as_bytes().chunks(row_bytes.max(1)))
        {
            qinfer_quant::dequantize_row(dtype, src, dst).map_err(|e| LoadError::DType {
                name: format!("{name} ({e})"),
                dtype: dtype.to_string(),
            })?;
        }
        Ok((out, view.shape))
    }

    /// A norm weight `[len]` as the effective multiplier, whatever the file's convention.
    pub fn norm(&self, id: TensorId, len: usize) -> Result<Vec<f32>, LoadError> {
        let w = self.f32s(id, &[&[len]])?;
        Ok(match self.norm {
            NormConvention::ZeroCentred => w.into_iter().map(|v| 1.0 + v).collect(),
            NormConvention::Plain => w,
        })
    }

    /// Gated DeltaNet's decay rate `A = −exp(A_log)`, `[nv]`: computed from `A_log` in Hugging
    /// Face checkpoints, stored as is (`ssm_a`) in GGUF files.
    pub fn deltanet_a(&self, l: usize, nv: usize) -> Result<Vec<f32>, LoadError> {
        let v = self.f32s(TensorId::Layer(l, LayerTensor::DeltaNetALog), &[&[nv]])?;
        Ok(match self.naming {
            Naming::Hf(_) => v.iter().map(|x| -x.exp()).collect(),
            Naming::Gguf => v,
        })
    }

    /// Tensor names of the source that no role consumed.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.source
            .names()
            .into_iter()
            .filter(|n| !used.contains(n))
            .collect()
    }
}
