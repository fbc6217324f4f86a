//! Weight matrices in their storage format.

use crate::{ByteView, DType};

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
}

/// A row-major matrix `[rows, cols]` (`[out, in]` for a linear layer: `y = x Wᵀ`).
///
/// The bytes are always aligned for the element type: [`Weight::new`] copies a misaligned view
/// once at load time, so kernels can read typed slices.
#[derive(Clone, Debug)]
pub struct Weight {
    dtype: DType,
    rows: usize,
    cols: usize,
    data: ByteView,
}

impl Weight {
    pub fn new(
        dtype: DType,
        rows: usize,
        cols: usize,
        data: ByteView,
    ) -> Result<Self, WeightError> {
        let expected = rows * cols * dtype.size();
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
        }
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

    /// Rows `[start, start + n)` as a weight of their own (no copy). Used to split fused
    /// projections and stacked experts.
    ///
    /// # Panics
    /// If the rows are out of range.
    pub fn rows_range(&self, start: usize, n: usize) -> Weight {
        assert!(
            start + n <= self.rows,
            "rows {start}+{n} outside a {}-row weight",
            self.rows
        );
        let row_bytes = self.cols * self.dtype.size();
        Weight {
            dtype: self.dtype,
            rows: n,
            cols: self.cols,
            data: self.data.slice(start * row_bytes, n * row_bytes),
        }
    }

    /// Element `(r, c)` as `f32` (slow; for tests and load-time conversions).
    pub fn get(&self, r: usize, c: usize) -> f32 {
        self.dtype.read_f32(self.bytes(), r * self.cols + c)
    }

    /// Row `r` widened to `f32` into `out` (`out.len() == cols`).
    pub fn row_to_f32(&self, r: usize, out: &mut [f32]) {
        let row_bytes = self.cols * self.dtype.size();
        let bytes = &self.bytes()[r * row_bytes..(r + 1) * row_bytes];
        match self.dtype {
            DType::F32 => out.copy_from_slice(bytemuck::cast_slice(bytes)),
            DType::F16 => {
                let src: &[half::f16] = bytemuck::cast_slice(bytes);
                for (o, s) in out.iter_mut().zip(src) {
                    *o = s.to_f32();
                }
            }
            DType::BF16 => {
                let src: &[half::bf16] = bytemuck::cast_slice(bytes);
                for (o, s) in out.iter_mut().zip(src) {
                    *o = s.to_f32();
                }
            }
        }
    }

    /// The whole matrix widened to `f32`, row-major.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.rows * self.cols];
        for (r, row) in out.chunks_exact_mut(self.cols.max(1)).enumerate() {
            self.row_to_f32(r, row);
        }
        out
    }
}
