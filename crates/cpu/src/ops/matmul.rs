//! `y = x Wᵀ` against a weight in its storage format.
//!
//! The weight's rows are split into contiguous chunks claimed by the engine's pool, so each
//! thread streams a disjoint part of the matrix exactly once per call. Within a chunk, tokens
//! go through the kernels in groups of up to [`crate::kernels::MAX_TOKENS`], so a weight row
//! is unpacked once per group and read from L1 for the next groups. How activations meet the
//! weights (8-bit or exact) is [`crate::kernels::MatmulPrecision`].
use crate::Cpu;

use qinfer_tensor::{Mat, Weight};
use rayon::prelude::*;

use crate::kernels::Plan;
use crate::pool::{SharedMut, parallel_for};

/// Fewest weight rows per chunk: enough to amortise claiming a chunk.
const MIN_ROWS_PER_CHUNK: usize = 16;
/// Chunks per thread: enough to rebalance when another process slows one thread down.
const CHUNKS_PER_THREAD: usize = 4;
/// Chunks per thread for one token: fewer, so that each chunk's four weight streams
/// (`Plan::compute`'s four-row kernels) run longer before they restart and the prefetchers
/// train again. 0.8B Q4_K_M decode on a quiet 2-vCPU machine, same-run medians: 4 chunks per
/// thread 82.0 tok/s, 2 chunks 87.4, 1 chunk 90.7; two keep some rebalancing.
const DECODE_CHUNKS_PER_THREAD: usize = 2;

/// `x [T, in] · Wᵀ` with `W [out, in]` in any [`qinfer_tensor::DType`] → `[T, out]`.
///
/// # Panics
/// If `x.cols != w.cols()`.
pub fn matmul(cpu: Cpu, x: &Mat, w: &Weight) -> Mat {
    matmul_many(cpu, x, &[w])
        .pop()
        .expect("one weight, one output")
}

/// [`matmul`] of one input against several weights (`x Wᵢᵀ` for each), in one parallel region:
/// projections that share their input (q/k/v, gate/up) cost one synchronisation instead of
/// one each.
///
/// # Panics
/// If `x.cols` differs from a weight's `cols()`.
pub fn matmul_many(cpu: Cpu, x: &Mat, ws: &[&Weight]) -> Vec<Mat> {
    let jobs: Vec<(&Mat, &Weight)> = ws.iter().map(|&w| (x, w)).collect();
    matmul_jobs(cpu, &jobs)
}

/// `xᵢ Wᵢᵀ` for every job `(xᵢ, Wᵢ)`, in one parallel region: the matmuls of an MoE layer's
/// experts, each on its own rows, cost one synchronisation instead of one per expert. Each
/// `(token, row)` result is the kernel's for that pair whatever else the call holds (the
/// kernels are batch-invariant), so the bits equal separate [`matmul`] calls.
///
/// # Panics
/// If a job's `x.cols` differs from its weight's `cols()`.
pub fn matmul_jobs(cpu: Cpu, jobs: &[(&Mat, &Weight)]) -> Vec<Mat> {
    for (x, w) in jobs {
        assert_eq!(
            x.cols,
            w.cols(),
            "matmul: input width does not match the weight"
        );
    }
    let mut outs: Vec<Mat> = jobs
        .iter()
        .map(|(x, w)| Mat::zeros(x.rows, w.rows()))
        .collect();
    let (isa, precision) = (cpu.isa(), cpu.precision());
    // A plan for every job with work (no rows or no outputs: nothing to prepare).
    let plans: Vec<Option<Plan<'_>>> = jobs
        .iter()
        .map(|&(x, w)| (x.rows > 0 && w.rows() > 0).then(|| Plan::new(x, w, isa, precision)))
        .collect();
    let live: Vec<usize> = (0..jobs.len()).filter(|&i| plans[i].is_some()).collect();
    if live.is_empty() {
        return outs;
    }
    // Chunks of each weight's rows, all jobs in one list. Weights that share their input
    // (projections) are shared out as one matrix of all their rows; jobs on different inputs
    // (experts) are each chunked as a lone matmul would be, so that many small jobs still
    // spread evenly over the threads.
    let decode = live.iter().all(|&i| jobs[i].0.rows == 1);
    let per_thread = if decode {
        DECODE_CHUNKS_PER_THREAD
    } else {
        CHUNKS_PER_THREAD
    };
    let rows_per_chunk = |total: usize| {
        let target = (total / MIN_ROWS_PER_CHUNK).clamp(1, crate::threads() * per_thread);
        total.div_ceil(target).max(1)
    };
    let one_input = live
        .iter()
        .all(|&i| std::ptr::eq(jobs[i].0, jobs[live[0]].0));
    let all_rows = rows_per_chunk(live.iter().map(|&i| jobs[i].1.rows()).sum());
    let mut chunks = Vec::new();
    for &i in &live {
        let n = jobs[i].1.rows();
        let rows_per_chunk = if one_input {
            all_rows
        } else {
            rows_per_chunk(n)
        };
        let mut r = 0;
        while r < n {
            let end = (r + rows_per_chunk).min(n);
            chunks.push((i, r..end));
            r = end;
        }
    }
    let dsts: Vec<SharedMut<f32>> = outs
        .iter_mut()
        .map(|m| SharedMut::new(&mut m.data))
        .collect();
    parallel_for(chunks.len(), &|c| {
        let (i, rows) = chunks[c].clone();
        let Some(plan) = &plans[i] else { return };
        let (dst, n, t) = (dsts[i], jobs[i].1.rows(), jobs[i].0.rows);
        plan.compute(rows, t, |tok, r, v| {
            // SAFETY: elements (tok, r .. r + v.len()) of output i belong to this chunk only,
            // and the outputs outlive the region.
            unsafe { dst.slice(tok * n + r, v.len()).copy_from_slice(v) };
        });
    });
    outs
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

/// Dot product with eight independent accumulators (vectorises; fixed summation order).
/// Always inlined, so that inside functions compiled for AVX-512 it is too.
#[inline(always)]
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
    use crate::noise::noise;
    use qinfer_tensor::{ByteView, DType};

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
    /// the error bound is ~k·ε·Σ|ab| ≈ 300·6e-8·300 ≈ 5e-3 worst case, typically ~1e-5. In
    /// exact mode, which `matmul_ref` specifies: by default BF16 weights meet activations
    /// rounded to BF16 (tested against their own reference in `kernels::tests`).
    #[test]
    fn matmul_matches_reference_for_every_dtype_and_shape() {
        let exact = Cpu::default().with_precision(crate::kernels::MatmulPrecision::Exact);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (t, n, k) in [(1, 1, 1), (1, 130, 67), (5, 64, 64), (13, 200, 300)] {
                let x = Mat::from_vec(noise(t * k, 1), t, k);
                let w = Weight::new(
                    dtype,
                    n,
                    k,
                    ByteView::from_vec(as_dtype(&noise(n * k, 2), dtype)),
                )
                .unwrap();
                let got = matmul(exact, &x, &w);
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
