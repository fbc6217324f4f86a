//! Weight matrices in their storage format.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::{ByteView, DType};

/// A backend's copy of a weight in its own memory, made once at load (`Backend::prepare`).
/// Opaque here: only the backend that made it knows its type.
#[derive(Clone)]
pub struct DeviceCopy(Arc<dyn Any + Send + Sync>);

impl fmt::Debug for DeviceCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceCopy")
    }
}

/// Why a byte range cannot be a weight of the requested shape.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("{dtype} weight of shape [{rows}, {cols}] needs {expected} bytes, got {got}")]
    Size {
        dtype: DType,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("{dtype} rows of {cols} elements are not a whole number of {block}-element blocks")]
    Blocks {
        dtype: DType,
        cols: usize,
        block: usize,
    },
}

/// A row-major matrix `[rows, cols]` (`[out, in]` for a linear layer: `y = x Wᵀ`), in any
/// [`DType`]: each row is `cols` floats or `cols / block_size` quantized blocks.
///
/// The bytes of float weights are always aligned for the element type: [`Weight::new`] copies a
/// misaligned view once at load time, so kernels can read typed slices. Widening rows to `f32`
/// is `qinfer-quant`'s job.
#[derive(Clone, Debug)]
pub struct Weight {
    dtype: DType,
    rows: usize,
    cols: usize,
    data: ByteView,
    /// The copy a backend made of it, if any ([`Weight::with_device`]).
    device: Option<DeviceCopy>,
}

impl Weight {
    pub fn new(
        dtype: DType,
        rows: usize,
        cols: usize,
        data: ByteView,
    ) -> Result<Self, WeightError> {
        let row_bytes = dtype.row_bytes(cols).ok_or(WeightError::Blocks {
            dtype,
            cols,
            block: dtype.block_size(),
        })?;
        let expected = rows * row_bytes;
        if data.len() != expected {
            return Err(WeightError::Size {
                dtype,
                rows,
                cols,
                expected,
                got: data.len(),
            });
        }
        let aligned = (data.as_bytes().as_ptr() as usize).is_multiple_of(dtype.align());
        let data = if aligned {
            data
        } else {
            ByteView::from_vec(data.as_bytes().to_vec())
        };
        Ok(Weight {
            dtype,
            rows,
            cols,
            data,
            device: None,
        })
    }

    /// An `f32` weight owning `values` (`[rows, cols]`).
    ///
    /// # Panics
    /// If `values.len() != rows * cols`.
    pub fn from_f32(values: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(
            values.len(),
            rows * cols,
            "weight values do not match their shape"
        );
        Weight {
            dtype: DType::F32,
            rows,
            cols,
            data: ByteView::from_f32(values),
            device: None,
        }
    }

    /// This weight with a backend's copy of it attached (a device backend's
    /// `Backend::prepare` uploads the rows and keeps the buffer here; the bytes stay too, for
    /// whoever reads them on the host).
    pub fn with_device(self, copy: Arc<dyn Any + Send + Sync>) -> Weight {
        Weight {
            device: Some(DeviceCopy(copy)),
            ..self
        }
    }

    /// The backend's copy, if one is attached and it is a `T`.
    pub fn device<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.device.as_ref().and_then(|d| d.0.downcast_ref())
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn bytes(&self) -> &[u8] {
        self.data.as_bytes()
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.dtype
            .row_bytes(self.cols)
            .expect("checked at construction")
    }

    /// The bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.bytes()[r * rb..(r + 1) * rb]
    }

    /// Columns `[start, start + n)` of every row as a weight of its own (a copy), for a
    /// projection of a concatenation split into one matmul per part. `None` when the cut is
    /// not on a block boundary of the storage type, or out of range.
    pub fn cols_range(&self, start: usize, n: usize) -> Option<Weight> {
        let end = start.checked_add(n).filter(|&e| e <= self.cols)?;
        let block = self.dtype.block_size();
        if !start.is_multiple_of(block) || !end.is_multiple_of(block) {
            return None;
        }
        let skip = self.dtype.row_bytes(start)?;
        let take = self.dtype.row_bytes(n)?;
        let mut bytes = Vec::with_capacity(take.checked_mul(self.rows)?);
        for r in 0..self.rows {
            bytes.extend_from_slice(&self.row(r)[skip..skip + take]);
        }
        Weight::new(self.dtype, self.rows, n, ByteView::from_vec(bytes)).ok()
    }

    /// The rows `rows` (in that order) as a weight of their own (a copy): a sub-vocabulary
    /// of an LM head. `None` if a row is out of range.
    pub fn gather_rows(&self, rows: &[u32]) -> Option<Weight> {
        let rb = self.row_bytes();
        let mut bytes = Vec::with_capacity(rb.checked_mul(rows.len())?);
        for &r in rows {
            if r as usize >= self.rows {
                return None;
            }
            bytes.extend_from_slice(self.row(r as usize));
        }
        Weight::new(self.dtype, rows.len(), self.cols, ByteView::from_vec(bytes)).ok()
    }

    /// Rows `[start, start + n)` as a weight of their own (no copy). Used to split fused
    /// projections and stacked experts, before a backend prepares them: the slice carries no
    /// backend copy.
    ///
    /// # Panics
    /// If the rows are out of range.
    pub fn rows_range(&self, start: usize, n: usize) -> Weight {
        assert!(
            start + n <= self.rows,
            "rows {start}+{n} outside a {}-row weight",
            self.rows
        );
        let rb = self.row_bytes();
        Weight {
            dtype: self.dtype,
            rows: n,
            cols: self.cols,
            data: self.data.slice(start * rb, n * rb),
            device: None,
        }
    }
}
