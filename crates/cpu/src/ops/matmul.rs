//! `y = x Wᵀ` against a weight in its storage format.

use qinfer_tensor::{DType, Mat, Weight};
use rayon::prelude::*;

/// Weight rows handled by one parallel task: large enough to amortise scheduling, small enough
/// to balance two threads on the smallest projections.
const ROWS_PER_TASK: usize = 64;

/// `x [T, in] · Wᵀ` with `W [out, in]` in any [`DType`] → `[T, out]`.
///
/// Threads split the weight by rows, so each streams a disjoint part of the matrix once and
/// reuses each widened row for all `T` tokens.
///
/// # Panics
/// If `x.cols != w.cols()`.
pub fn matmul(x: &Mat, w: &Weight) -> Mat {
    assert_eq!(
        x.cols,
        w.cols(),
        "matmul: input width does not match the weight"
    );
    let (t, n, k) = (x.rows, w.rows(), w.cols());
    // [out, T]: one contiguous block per task.
    let mut out_t = vec![0.0f32; n * t];
    out_t
        .par_chunks_mut(ROWS_PER_TASK * t.max(1))
        .enumerate()
        .for_each(|(task, block)| {
            let mut widened = vec![0.0f32; if w.dtype() == DType::F32 { 0 } else { k }];
            for (i, out_row) in block.chunks_exact_mut(t.max(1)).enumerate() {
                let r = task * ROWS_PER_TASK + i;
                let row: &[f32] = if w.dtype() == DType::F32 {
                    f32_row(w, r)
                } else {
                    qinfer_quant::dequantize_row(w.dtype(), w.row(r), &mut widened)
                        .expect("weights are validated at load");
                    &widened
                };
                for (ti, o) in out_row.iter_mut().enumerate() {
                    *o = dot(row, x.row(ti));
                }
            }
        });
    let mut out = Mat::zeros(t, n);
    for r in 0..n {
        for ti in 0..t {
            out.data[ti * n + r] = out_t[r * t + ti];
        }
    }
    out
}

/// Scalar reference for [`matmul`]: rows widened by the reference dequantizer, `f64`
/// accumulation.
pub fn matmul_ref(x: &Mat, w: &Weight) -> Mat {
    assert_eq!(
        x.cols,
        w.cols(),
        "matmul_ref: input width does not match the weight"
    );
    let mut out = Mat::zeros(x.rows, w.rows());
    let mut row = vec![0.0f32; w.cols()];
    for r in 0..w.rows() {
        qinfer_quant::dequantize_row(w.dtype(), w.row(r), &mut row)
            .expect("weights are validated at load");
        for ti in 0..x.rows {
            let acc: f64 = x
                .row(ti)
                .iter()
                .zip(&row)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            out.data[ti * w.rows() + r] = acc as f32;
        }
    }
    out
}

/// Quantizes `rows` rows of `cols` values (`src`, row-major) to `dtype`, rows in parallel.
///
/// # Errors
/// If `dtype` has no quantizer or `cols` is not a whole number of its blocks.
pub fn quantize_rows(
    dtype: qinfer_tensor::DType,
    src: &[f32],
    cols: usize,
) -> Result<Vec<u8>, qinfer_quant::QuantError> {
    let row_bytes = dtype
        .row_bytes(cols)
        .ok_or(qinfer_quant::QuantError::Shape {
            dtype,
            elements: cols,
            bytes: 0,
        })?;
    let mut out = vec![0u8; src.len() / cols.max(1) * row_bytes];
    out.par_chunks_mut(row_bytes.max(1))
        .zip(src.par_chunks(cols.max(1)))
        .try_for_each(|(dst, row)| qinfer_quant::quantize_row(dtype, row, dst))?;
    Ok(out)
}

/// Whether the matmul and embedding ops can read weights stored as `dtype`.
pub fn weight_dtype_supported(dtype: qinfer_tensor::DType) -> bool {
    qinfer_quant::supported(dtype)
}

/// Embedding lookup: row `id` of `table` (`[V, H]`, any dtype) widened into `out` (`[H]`).
///
/// # Panics
/// If `id` is out of range or `out.len() != table.cols()`.
pub fn embedding(table: &Weight, id: usize, out: &mut [f32]) {
    qinfer_quant::dequantize_row(table.dtype(), table.row(id), out)
        .expect("weights are validated at load");
}

fn f32_row(w: &Weight, r: usize) -> &[f32] {
    let k = w.cols();
    // Weight keeps its bytes aligned for its dtype, so this cast cannot fail.
    &bytemuck::cast_slice::<u8, f32>(w.bytes())[r * k..(r + 1) * k]
}

/// Dot product with eight independent accumulators (vectorises; fixed summation order).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut s = 0.0;
    for i in chunks * 8..a.len() {
        s += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + s
}

#[cfg(test)]
mod tests {
    use super::*;
    use qinfer_tensor::ByteView;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn as_dtype(values: &[f32], dtype: DType) -> Vec<u8> {
        match dtype {
            DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            DType::F16 => values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            DType::BF16 => values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            q => panic!("no test encoder for {q}"),
        }
    }

    /// Tolerance: f32 accumulation of ≤300 products of magnitude ≤1 against an f64 reference;
    /// the error bound is ~k·ε·Σ|ab| ≈ 300·6e-8·300 ≈ 5e-3 worst case, typically ~1e-5.
    #[test]
    fn matmul_matches_reference_for_every_dtype_and_shape() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (t, n, k) in [(1, 1, 1), (1, 130, 67), (5, 64, 64), (13, 200, 300)] {
                let x = Mat::from_vec(pseudo_random(t * k, 1), t, k);
                let w = Weight::new(
                    dtype,
                    n,
                    k,
                    ByteView::from_vec(as_dtype(&pseudo_random(n * k, 2), dtype)),
                )
                .unwrap();
                let got = matmul(&x, &w);
                let want = matmul_ref(&x, &w);
                let err = got
                    .data
                    .iter()
                    .zip(&want.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                assert!(err < 1e-4, "{dtype} t={t} n={n} k={k}: max error {err}");
            }
        }
    }
}
