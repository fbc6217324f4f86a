//! [`Cpu`] as a [`Backend`]: the op vocabulary of the device seam on this crate's kernels.
//! Activations are host rows ([`Act::from_host`]); weights stay where the loader put them (a
//! memory map, usually) and are read in place.

use std::ops::Range;

use qinfer_backend::{
    Act, AttentionShape, Backend, DeltaForm, DeltaInputs, DeltaRuleShape, Gelu, MlpJob,
};
use qinfer_cache::{KvCache, KvSegment, StateBuf};
use qinfer_tensor::{DType, Mat, Weight};

use crate::kernels::{Isa, MatmulPrecision};
use crate::ops;
use crate::settings::Cpu;

const FOREIGN: &str = "the CPU backend was handed another backend's activation";

fn host(a: &Act) -> &Mat {
    a.host().expect(FOREIGN)
}

fn host_mut(a: &mut Act) -> &mut Mat {
    a.host_mut().expect(FOREIGN)
}

fn act(m: Mat) -> Act {
    Act::from_host(m)
}

/// Rows `rows` of `a`, in that order (`Backend::gather`, and the experts' inputs in `mlps`).
fn gather_rows(a: &Mat, rows: &[usize]) -> Mat {
    let mut out = Mat::zeros(rows.len(), a.cols);
    for (dst, &r) in out.rows_iter_mut().zip(rows) {
        dst.copy_from_slice(a.row(r));
    }
    out
}

impl Backend for Cpu {
    fn describe(&self) -> String {
        let isa = match self.isa() {
            Isa::Avx512 => "avx512",
            Isa::Avx2 { vnni: true } => "avx2+vnni",
            Isa::Avx2 { vnni: false } => "avx2",
            Isa::Scalar => "scalar",
        };
        let precision = match self.precision() {
            MatmulPrecision::Int8 => "int8",
            MatmulPrecision::Exact => "exact",
        };
        format!("cpu {isa} {precision}")
    }

    fn supports(&self, dtype: DType) -> bool {
        ops::weight_dtype_supported(dtype)
    }

    fn upload(&self, m: Mat) -> Act {
        act(m)
    }

    fn download(&self, a: Act) -> Mat {
        a.into_host().unwrap_or_else(|_| panic!("{FOREIGN}"))
    }

    fn write_state(&self, a: &Act, s: &mut StateBuf) {
        s.host_mut().clone_from(&host(a).data);
    }

    fn read_state(&self, s: &StateBuf, rows: Range<usize>, cols: usize) -> Act {
        let data = s.host()[rows.start * cols..rows.end * cols].to_vec();
        act(Mat::from_vec(data, rows.len(), cols))
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Act {
        let mut x = Mat::zeros(ids.len(), table.cols());
        for (row, &id) in x.rows_iter_mut().zip(ids) {
            ops::embedding(table, id as usize, row);
        }
        act(x)
    }

    fn rows(&self, a: &Act, range: Range<usize>) -> Act {
        act(host(a).rows_range(range.start, range.end))
    }

    fn cols(&self, a: &Act, start: usize, len: usize) -> Act {
        act(host(a).cols_range(start, len))
    }

    fn gather(&self, a: &Act, rows: &[usize]) -> Act {
        act(gather_rows(host(a), rows))
    }

    fn stack(&self, parts: &[Act]) -> Act {
        let cols = parts.first().map_or(0, Act::cols);
        let rows = parts.iter().map(Act::rows).sum();
        let mut data = Vec::with_capacity(rows * cols);
        for p in parts {
            let m = host(p);
            assert_eq!(m.cols, cols, "stack: parts differ in width");
            data.extend_from_slice(&m.data);
        }
        act(Mat::from_vec(data, rows, cols))
    }

    fn split_heads(&self, a: &Act, heads: usize, widths: &[usize]) -> Vec<Act> {
        let a = host(a);
        let group: usize = widths.iter().sum();
        assert_eq!(
            a.cols,
            heads * group,
            "split_heads: width is not heads × Σ widths"
        );
        let mut outs: Vec<Mat> = widths
            .iter()
            .map(|w| Mat::zeros(a.rows, heads * w))
            .collect();
        for t in 0..a.rows {
            let src = a.row(t);
            for h in 0..heads {
                let mut at = h * group;
                for (out, &w) in outs.iter_mut().zip(widths) {
                    out.row_mut(t)[h * w..(h + 1) * w].copy_from_slice(&src[at..at + w]);
                    at += w;
                }
            }
        }
        outs.into_iter().map(act).collect()
    }

    fn matmul_many(&self, x: &Act, ws: &[&Weight]) -> Vec<Act> {
        ops::matmul_many(*self, host(x), ws)
            .into_iter()
            .map(act)
            .collect()
    }

    /// The jobs' gate and up matmuls in one parallel region, then their down matmuls in
    /// another (an MoE layer's experts: two synchronisations, not two per expert); each
    /// `(token, row)` result is the kernels' for that pair alone, so the bits are the default
    /// method's.
    fn mlps(&self, x: &Act, jobs: &[MlpJob<'_>]) -> Vec<Act> {
        let x = host(x);
        let gathered: Vec<Option<Mat>> = jobs
            .iter()
            .map(|j| j.rows.map(|rows| gather_rows(x, rows)))
            .collect();
        let inputs: Vec<&Mat> = gathered.iter().map(|g| g.as_ref().unwrap_or(x)).collect();
        let gate_up: Vec<(&Mat, &Weight)> = jobs
            .iter()
            .zip(&inputs)
            .flat_map(|(j, &xi)| [(xi, j.gate), (xi, j.up)])
            .collect();
        let mut gu = ops::matmul_jobs(*self, &gate_up).into_iter();
        let mut hidden = Vec::with_capacity(jobs.len());
        while let (Some(mut gate), Some(up)) = (gu.next(), gu.next()) {
            ops::swiglu(*self, &mut gate.data, &up.data);
            hidden.push(gate);
        }
        let down: Vec<(&Mat, &Weight)> =
            hidden.iter().zip(jobs).map(|(h, j)| (h, j.down)).collect();
        ops::matmul_jobs(*self, &down)
            .into_iter()
            .map(act)
            .collect()
    }

    fn add(&self, x: &mut Act, y: &Act) {
        ops::add_assign(&mut host_mut(x).data, &host(y).data);
    }

    fn scatter_add(&self, out: &mut Act, src: &Act, rows: &[usize], weights: &[f32]) {
        let (out, src) = (host_mut(out), host(src));
        assert!(
            rows.len() == src.rows && weights.len() == src.rows && out.cols == src.cols,
            "scatter_add: shapes disagree"
        );
        for (i, (&r, &w)) in rows.iter().zip(weights).enumerate() {
            for (o, y) in out.row_mut(r).iter_mut().zip(src.row(i)) {
                *o += w * y;
            }
        }
    }

    fn scale(&self, x: &mut Act, s: f32) {
        host_mut(x).data.iter_mut().for_each(|v| *v *= s);
    }

    fn sigmoid_mul(&self, x: &mut Act, gate: &Act) {
        let (x, gate) = (host_mut(x), host(gate));
        assert_eq!(
            x.data.len(),
            gate.data.len(),
            "sigmoid_mul: shapes disagree"
        );
        for (xi, gi) in x.data.iter_mut().zip(&gate.data) {
            *xi *= ops::sigmoid(*gi);
        }
    }

    fn swiglu(&self, gate: &mut Act, up: &Act) {
        ops::swiglu(*self, &mut host_mut(gate).data, &host(up).data);
    }

    fn add_bias(&self, x: &mut Act, b: &[f32]) {
        ops::add_bias(host_mut(x), b);
    }

    fn gelu(&self, x: &mut Act, form: Gelu) {
        ops::gelu(*self, &mut host_mut(x).data, form);
    }

    fn reshape(&self, a: Act, rows: usize, cols: usize) -> Act {
        let m = self.download(a);
        assert_eq!(
            m.data.len(),
            rows * cols,
            "reshape: element count disagrees"
        );
        act(Mat::from_vec(m.data, rows, cols))
    }

    fn layer_norm(&self, x: &mut Act, w: &[f32], b: &[f32], eps: f32) {
        ops::layer_norm(host_mut(x), w, b, eps);
    }

    fn attend_all(&self, q: &Act, k: &Act, v: &Act, shape: AttentionShape) -> Act {
        act(ops::full_attention(*self, host(q), host(k), host(v), shape))
    }

    fn rms_norm(&self, x: &mut Act, w: &[f32], eps: f32) {
        ops::rms_norm(&mut host_mut(x).data, w, eps);
    }

    fn l2_norm(&self, x: &mut Act, width: usize, eps: f32) {
        ops::l2_norm(&mut host_mut(x).data, width, eps);
    }

    fn gated_rms_norm(&self, x: &mut Act, z: &Act, w: &[f32], eps: f32) {
        ops::gated_rms_norm(*self, &mut host_mut(x).data, &host(z).data, w, eps);
    }

    fn rope(&self, x: &mut Act, head_dim: usize, cos: &[f32], sin: &[f32]) {
        let x = host_mut(x);
        if x.rows == 0 {
            return;
        }
        let half = cos.len() / x.rows;
        assert!(
            cos.len() == half * x.rows && sin.len() == cos.len(),
            "rope: one angle row per row"
        );
        for (t, row) in x.rows_iter_mut().enumerate() {
            let (c, s) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            ops::rope_neox(row, head_dim, c, s);
        }
    }

    fn attend(&self, q: &Act, k: &Act, v: &Act, kv: &mut KvCache, shape: AttentionShape) -> Act {
        kv.make_host();
        kv.append(&host(k).data, &host(v).data);
        // The cache's blocks are read in place, never gathered into one buffer.
        let segments: Vec<KvSegment<'_>> = kv.segments().collect();
        act(ops::causal_attention_blocks(
            *self,
            host(q),
            &segments,
            shape,
        ))
    }

    fn route(&self, logits: &Act, k: usize) -> Vec<Vec<(usize, f32)>> {
        host(logits).rows_iter().map(|row| route(row, k)).collect()
    }

    fn add_gated(&self, out: &mut Act, x: &Act, gate: &Act) {
        let (out, x, gate) = (host_mut(out), host(x), host(gate));
        assert!(
            gate.cols == 1 && gate.rows == x.rows && out.rows == x.rows && out.cols == x.cols,
            "add_gated: shapes disagree"
        );
        for t in 0..x.rows {
            let g = ops::sigmoid(gate.data[t]);
            for (o, s) in out.row_mut(t).iter_mut().zip(x.row(t)) {
                *o += g * s;
            }
        }
    }

    fn conv_silu(
        &self,
        x: &Act,
        window: &mut StateBuf,
        taps: &[f32],
        kernel: usize,
        keep: Option<&mut StateBuf>,
    ) -> Act {
        let window = window.host_mut();
        act(match keep {
            Some(kept) => {
                let kept = kept.host_mut();
                kept.resize(host(x).rows * window.len(), 0.0);
                ops::causal_conv1d_silu_keep(*self, host(x), window, taps, kernel, kept)
            }
            None => ops::causal_conv1d_silu(*self, host(x), window, taps, kernel),
        })
    }

    fn deltanet_gates(&self, b: &Act, a: &Act, a_neg: &[f32], dt_bias: &[f32]) -> (Act, Act) {
        let (b, a) = (host(b), host(a));
        let nv = a_neg.len();
        assert!(
            b.cols == nv && a.cols == nv && dt_bias.len() == nv && a.rows == b.rows,
            "deltanet_gates: shapes disagree"
        );
        let beta = b.data.iter().map(|&x| ops::sigmoid(x)).collect();
        let g = a
            .data
            .iter()
            .enumerate()
            .map(|(i, &ai)| a_neg[i % nv] * ops::softplus(ai + dt_bias[i % nv]))
            .collect();
        (
            act(Mat::from_vec(beta, b.rows, nv)),
            act(Mat::from_vec(g, a.rows, nv)),
        )
    }

    fn delta_rule(
        &self,
        shape: DeltaRuleShape,
        x: DeltaInputs<'_>,
        state: &mut StateBuf,
        form: DeltaForm,
    ) -> Act {
        let state = state.host_mut();
        let inputs = ops::DeltaRuleInputs {
            q: host(x.q),
            k: host(x.k),
            v: host(x.v),
            g: &host(x.g).data,
            beta: &host(x.beta).data,
        };
        act(match form {
            DeltaForm::Recurrent => ops::gated_delta_rule_recurrent(*self, shape, inputs, state),
            DeltaForm::Chunked { chunk } => {
                ops::gated_delta_rule_chunked(*self, shape, inputs, state, chunk)
            }
        })
    }
}

/// Softmax over all experts, the `k` most probable (ties to the lower index), weights
/// renormalised to sum 1.
fn route(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut p = logits.to_vec();
    ops::softmax(&mut p);
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
    let top = &order[..k.min(order.len())];
    let sum: f32 = top.iter().map(|&e| p[e]).sum();
    top.iter().map(|&e| (e, p[e] / sum)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_to_the_top_k_with_renormalised_weights() {
        let r = route(&[0.0, 2.0, 1.0, -1.0], 2);
        assert_eq!(r.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2]);
        let e = std::f32::consts::E;
        assert!((r[0].1 - e / (e + 1.0)).abs() < 1e-6);
        assert!((r[0].1 + r[1].1 - 1.0).abs() < 1e-6);
    }

    #[test]
    fn split_heads_takes_each_heads_columns_in_turn() {
        let cpu = Cpu::default();
        // 2 heads of [q q | g]: widths 2 and 1.
        let a = cpu.upload(Mat::from_vec(vec![1., 2., 3., 4., 5., 6.], 1, 6));
        let parts = cpu.split_heads(&a, 2, &[2, 1]);
        assert_eq!(cpu.download(parts[0].clone()).data, [1., 2., 4., 5.]);
        assert_eq!(cpu.download(parts[1].clone()).data, [3., 6.]);
    }

    #[test]
    fn scatter_add_and_gather_move_the_named_rows() {
        let cpu = Cpu::default();
        let src = cpu.upload(Mat::from_vec(vec![1., 1., 2., 2.], 2, 2));
        let mut out = cpu.upload(Mat::zeros(3, 2));
        cpu.scatter_add(&mut out, &src, &[2, 0], &[0.5, 2.0]);
        assert_eq!(cpu.download(out.clone()).data, [4., 4., 0., 0., 0.5, 0.5]);
        let g = cpu.gather(&out, &[2, 2, 0]);
        assert_eq!(cpu.download(g.clone()).data, [0.5, 0.5, 0.5, 0.5, 4., 4.]);
        let s = cpu.stack(&[g, src]);
        assert_eq!((s.rows(), s.cols()), (5, 2));
    }
}
