//! The ops of a ViT-style encoder (the vision tower): LayerNorm, biases, GELU, and
//! bidirectional attention over one segment of rows (an image's patches, no cache, no mask).
//!
//! # Attention method
//! Pool tasks of (one query head, a tile of [`TILE`] query rows). Each task computes its
//! scores `S = Q Kᵀ` `[TILE, T]` with the `f32` GEMM ([`sgemm::gemm`]) against the head's
//! keys transposed once per call, scales them, subtracts each row's maximum, exponentiates
//! with the vectorised `exp`, then `O = P V` with the same GEMM and divides by the row's sum.
//! The scores of a tile are held whole (`TILE · T` floats: 768 KB for a 1024×768 image's 3,072
//! patches), which an image's segment affords; every row goes through the same operations
//! whatever its tile, so the result does not depend on the thread count.

use qinfer_backend::{AttentionShape, Gelu};
use qinfer_tensor::Mat;

use crate::Cpu;
use crate::kernels::sgemm::{self, MatMut, MatRef, Tri, Update};
use crate::kernels::vmath::exp_slice;
use crate::pool::{SharedMut, parallel_chunks_mut, parallel_for};

/// Query rows per attention task.
const TILE: usize = 64;

/// Rows per pool task of the element-wise ops.
const ROWS_PER_TASK: usize = 16;

/// `x[t] += b` for every row.
///
/// # Panics
/// If `b.len()` is not the width.
pub fn add_bias(x: &mut Mat, b: &[f32]) {
    assert_eq!(x.cols, b.len(), "add_bias: width disagrees");
    for row in x.rows_iter_mut() {
        row.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
    }
}

/// LayerNorm of every row: `(x − mean) / sqrt(var + eps) · w + b` (biased variance), the
/// moments summed in `f64`.
///
/// # Panics
/// If `w` or `b` is not the width.
pub fn layer_norm(x: &mut Mat, w: &[f32], b: &[f32], eps: f32) {
    assert!(
        x.cols == w.len() && x.cols == b.len() && x.cols > 0,
        "layer_norm: width disagrees"
    );
    let cols = x.cols;
    parallel_chunks_mut(&mut x.data, ROWS_PER_TASK * cols, &|_, rows| {
        for row in rows.chunks_exact_mut(cols) {
            let n = cols as f64;
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = (1.0 / (var + eps as f64).sqrt()) as f32;
            let mean = mean as f32;
            for ((v, &wi), &bi) in row.iter_mut().zip(w).zip(b) {
                *v = (*v - mean) * inv * wi + bi;
            }
        }
    });
}

/// GELU of every element. The tanh form computes `tanh(y)` as `1 − 2 / (e^{2y} + 1)` with the
/// vectorised `exp` (within a few ulp of `f32::tanh`); the erf form uses `libm::erff`.
pub fn gelu(cpu: Cpu, x: &mut [f32], form: Gelu) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    parallel_chunks_mut(x, 16 * 1024, &|_, part| match form {
        Gelu::Erf => {
            for v in part.iter_mut() {
                *v = 0.5 * *v * (1.0 + libm::erff(*v * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
        Gelu::Tanh => {
            let mut e: Vec<f32> = part
                .iter()
                .map(|&v| 2.0 * SQRT_2_OVER_PI * (v + 0.044_715 * v * v * v))
                .collect();
            exp_slice(cpu.isa(), &mut e);
            for (v, &ei) in part.iter_mut().zip(&e) {
                let tanh = 1.0 - 2.0 / (ei + 1.0);
                *v = 0.5 * *v * (1.0 + tanh);
            }
        }
    });
}

/// `softmax(q kᵀ · scale) v` for every row of `q` `[T, Hq·D]` over every row of `k`, `v`
/// `[S, Hkv·D]` (query head `h` reads kv head `h / (Hq/Hkv)`): `[T, Hq·D]`.
///
/// # Panics
/// If the shapes disagree.
pub fn full_attention(cpu: Cpu, q: &Mat, k: &Mat, v: &Mat, shape: AttentionShape) -> Mat {
    let (d, hq, hkv) = (shape.head_dim, shape.n_heads, shape.n_kv_heads);
    assert!(
        hkv > 0
            && hq.is_multiple_of(hkv)
            && q.cols == hq * d
            && k.cols == hkv * d
            && v.cols == hkv * d
            && k.rows == v.rows,
        "full_attention: shapes disagree"
    );
    let (t, s) = (q.rows, k.rows);
    let mut out = Mat::zeros(t, hq * d);
    if t == 0 || s == 0 || d == 0 {
        return out;
    }
    // Kᵀ per kv head: [Hkv][D, S].
    let mut kt = vec![0.0f32; hkv * d * s];
    for j in 0..s {
        let row = k.row(j);
        for h in 0..hkv {
            for c in 0..d {
                kt[(h * d + c) * s + j] = row[h * d + c];
            }
        }
    }
    let tiles = t.div_ceil(TILE);
    let isa = cpu.isa();
    let out_w = hq * d;
    let shared = SharedMut::new(&mut out.data);
    parallel_for(hq * tiles, &|task| {
        let (h, tile) = (task / tiles, task % tiles);
        let kh = h / (hq / hkv);
        let r0 = tile * TILE;
        let rows = TILE.min(t - r0);
        let mut scores = vec![0.0f32; rows * s];
        sgemm::gemm(
            isa,
            MatRef {
                data: &q.data[r0 * out_w + h * d..],
                rows,
                cols: d,
                stride: out_w,
            },
            MatRef {
                data: &kt[kh * d * s..(kh + 1) * d * s],
                rows: d,
                cols: s,
                stride: s,
            },
            MatMut {
                data: &mut scores,
                rows,
                cols: s,
                stride: s,
            },
            Tri::Full,
            Update::Set,
        );
        let mut sums = vec![0.0f32; rows];
        for (row, sum) in scores.chunks_exact_mut(s).zip(&mut sums) {
            row.iter_mut().for_each(|x| *x *= shape.scale);
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            row.iter_mut().for_each(|x| *x -= max);
            exp_slice(isa, row);
            *sum = row.iter().sum();
        }
        let mut o = vec![0.0f32; rows * d];
        sgemm::gemm(
            isa,
            MatRef {
                data: &scores,
                rows,
                cols: s,
                stride: s,
            },
            MatRef {
                data: &v.data[kh * d..],
                rows: s,
                cols: d,
                stride: hkv * d,
            },
            MatMut {
                data: &mut o,
                rows,
                cols: d,
                stride: d,
            },
            Tri::Full,
            Update::Set,
        );
        for (i, (orow, &sum)) in o.chunks_exact(d).zip(&sums).enumerate() {
            // SAFETY: task (h, tile) writes only head h's columns of its own rows.
            let dst = unsafe { shared.slice((r0 + i) * out_w + h * d, d) };
            for (dv, &ov) in dst.iter_mut().zip(orow) {
                *dv = ov / sum;
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Isa;
    use qinfer_backend::reference::Reference;
    use qinfer_backend::{Act, Backend};

    /// The scalar tier and every faster tier this CPU runs.
    fn cpus() -> Vec<Cpu> {
        let mut isas = vec![Isa::Scalar];
        if crate::kernels::has_avx512() {
            isas.push(Isa::Avx512);
        }
        isas.into_iter()
            .map(|isa| Cpu::default().with_isa(isa))
            .collect()
    }

    fn random(rows: usize, cols: usize, seed: u64) -> Mat {
        let mut s = seed;
        let data = (0..rows * cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        Mat::from_vec(data, rows, cols)
    }

    fn max_diff(a: &Mat, b: &Mat) -> f32 {
        assert_eq!((a.rows, a.cols), (b.rows, b.cols));
        a.data
            .iter()
            .zip(&b.data)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// Every tier against the `f64` reference at sizes that are not multiples of a tile
    /// (1, 63, 64, 65, 130 rows), head widths 16 and 72 (the Qwen3.5 tower's), and grouped
    /// heads. Tolerance 2e-5 for values of order 1: `f32` dot products over ≤ 130 keys.
    #[test]
    fn full_attention_matches_the_reference() {
        crate::pool::start(2);
        for (t, hq, hkv, d) in [
            (1, 2, 2, 16),
            (63, 2, 1, 16),
            (64, 2, 2, 72),
            (65, 4, 2, 16),
            (130, 2, 2, 72),
        ] {
            let shape = AttentionShape {
                n_heads: hq,
                n_kv_heads: hkv,
                head_dim: d,
                scale: (d as f32).powf(-0.5),
            };
            let (q, k, v) = (
                random(t, hq * d, 1 + t as u64),
                random(t, hkv * d, 2 + t as u64),
                random(t, hkv * d, 3 + t as u64),
            );
            let want = Reference.download(Reference.attend_all(
                &Act::from_host(q.clone()),
                &Act::from_host(k.clone()),
                &Act::from_host(v.clone()),
                shape,
            ));
            for cpu in cpus() {
                let got = full_attention(cpu, &q, &k, &v, shape);
                let diff = max_diff(&got, &want);
                assert!(diff < 2e-5, "{cpu:?} t={t} d={d}: {diff}");
            }
        }
    }

    /// LayerNorm and both GELU forms against the reference backend's `f64` versions: 1e-5
    /// absolute for values of order 1 (the tanh form's `exp` is within 2 ulp).
    #[test]
    fn norm_and_gelu_match_the_reference() {
        crate::pool::start(2);
        let x = random(37, 72, 9);
        let w: Vec<f32> = (0..72).map(|i| 0.5 + i as f32 / 72.0).collect();
        let b: Vec<f32> = (0..72).map(|i| (i as f32 - 36.0) / 100.0).collect();
        let mut want = Act::from_host(x.clone());
        Reference.layer_norm(&mut want, &w, &b, 1e-6);
        let mut got = x.clone();
        layer_norm(&mut got, &w, &b, 1e-6);
        assert!(max_diff(&got, &Reference.download(want)) < 1e-5);
        for form in [Gelu::Erf, Gelu::Tanh] {
            let mut want = Act::from_host(x.clone());
            Reference.gelu(&mut want, form);
            let want = Reference.download(want);
            for cpu in cpus() {
                let mut got = x.clone();
                gelu(cpu, &mut got.data, form);
                let diff = max_diff(&got, &want);
                assert!(diff < 1e-5, "{cpu:?} {form:?}: {diff}");
            }
        }
    }
}
