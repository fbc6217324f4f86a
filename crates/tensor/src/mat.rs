//! Owned `f32` activation matrices.

/// A row-major `f32` matrix `[rows, cols]`; rows are tokens in model code.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Mat {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        }
    }

    /// Wraps `data` as `[rows, cols]`.
    ///
    /// # Panics
    /// If `data.len() != rows * cols`.
    pub fn from_vec(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        assert_eq!(
            data.len(),
            rows * cols,
            "matrix data does not match its shape"
        );
        Mat { data, rows, cols }
    }

    /// Whether `data` holds exactly `rows · cols` values (the fields are public, so a matrix
    /// built by hand may not).
    pub fn is_whole(&self) -> bool {
        self.rows.checked_mul(self.cols) == Some(self.data.len())
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn rows_iter(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.cols.max(1))
    }

    pub fn rows_iter_mut(&mut self) -> std::slice::ChunksExactMut<'_, f32> {
        self.data.chunks_exact_mut(self.cols.max(1))
    }

    /// Columns `[start, start + len)` of every row, as a new matrix.
    pub fn cols_range(&self, start: usize, len: usize) -> Mat {
        let mut out = Mat::zeros(self.rows, len);
        for (dst, src) in out.rows_iter_mut().zip(self.rows_iter()) {
            dst.copy_from_slice(&src[start..start + len]);
        }
        out
    }

    /// Rows `[start, end)`, as a new matrix.
    ///
    /// # Panics
    /// If the range is not inside the matrix.
    pub fn rows_range(&self, start: usize, end: usize) -> Mat {
        Mat::from_vec(
            self.data[start * self.cols..end * self.cols].to_vec(),
            end - start,
            self.cols,
        )
    }
}
