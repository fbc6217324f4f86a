//! [`Reference`]: every op of [`Backend`] in plain, obvious Rust — the executable statement of
//! what each op means, and the proof that a backend can be added from this crate's definitions
//! alone (model and engine tests run whole models on it and compare with the CPU backend).
//!
//! Slow by design: matmuls widen one weight row at a time and accumulate in `f64`, attention
//! materialises every score, the delta rule always runs position by position. Activations are
//! host rows.

use std::ops::Range;

use qinfer_cache::{KvCache, StateBuf};
use qinfer_tensor::{DType, Mat, Weight};

use crate::{Act, AttentionShape, Backend, DeltaForm, DeltaInputs, DeltaRuleShape, Gelu};

/// The reference backend (no settings: `f32` activations everywhere, `f64` sums).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

fn host(a: &Act) -> &Mat {
    a.host()
        .expect("the reference backend was handed another backend's activation")
}

fn host_mut(a: &mut Act) -> &mut Mat {
    a.host_mut()
        .expect("the reference backend was handed another backend's activation")
}

fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-(x as f64)).exp())) as f32
}

fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

fn softplus(x: f32) -> f32 {
    // PyTorch's threshold: the identity above 20.
    if x > 20.0 {
        x
    } else {
        (x as f64).exp().ln_1p() as f32
    }
}

fn widen_row(w: &Weight, r: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.cols()];
    qinfer_quant::dequantize_row(w.dtype(), w.row(r), &mut out)
        .expect("weights are checked by prepare");
    out
}

/// `x / sqrt(mean(x²) + eps) · w · gate` per `w.len()`-wide group.
fn rms_groups(x: &mut [f32], w: &[f32], eps: f32, gate: Option<&[f32]>) {
    let d = w.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "norm: values are not whole groups"
    );
    for (gi, group) in x.chunks_exact_mut(d).enumerate() {
        let ms = group.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for (i, v) in group.iter_mut().enumerate() {
            let g = gate.map_or(1.0, |z| silu(z[gi * d + i]) as f64);
            *v = (*v as f64 * inv * w[i] as f64 * g) as f32;
        }
    }
}

/// One query row's attention over keys and values `0..visible` (rows `[Hkv·D]` each), every
/// query head against its kv head: scores in `f64`, softmax from the maximum, the weighted sum
/// of values divided by the sum of weights.
fn attention_row<'a>(
    q: &[f32],
    out: &mut [f32],
    shape: AttentionShape,
    visible: usize,
    key: impl Fn(usize) -> &'a [f32],
    value: impl Fn(usize) -> &'a [f32],
) {
    let (d, hq, hkv) = (shape.head_dim, shape.n_heads, shape.n_kv_heads);
    for h in 0..hq {
        let kh = h / (hq / hkv);
        let qh = &q[h * d..(h + 1) * d];
        let scores: Vec<f64> = (0..visible)
            .map(|j| {
                let kj = &key(j)[kh * d..(kh + 1) * d];
                qh.iter()
                    .zip(kj)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum::<f64>()
                    * shape.scale as f64
            })
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = p.iter().sum();
        for c in 0..d {
            let o: f64 = (0..visible)
                .map(|j| p[j] * value(j)[kh * d + c] as f64)
                .sum();
            out[h * d + c] = (o / sum) as f32;
        }
    }
}

impl Backend for Reference {
    fn describe(&self) -> String {
        "reference".into()
    }

    fn supports(&self, dtype: DType) -> bool {
        qinfer_quant::supported(dtype)
    }

    fn upload(&self, m: Mat) -> Act {
        Act::from_host(m)
    }

    fn download(&self, a: Act) -> Mat {
        a.into_host().unwrap_or_else(|_| {
            panic!("the reference backend was handed another backend's activation")
        })
    }

    fn write_state(&self, a: &Act, s: &mut StateBuf) {
        s.host_mut().clone_from(&host(a).data);
    }

    fn read_state(&self, s: &StateBuf, rows: Range<usize>, cols: usize) -> Act {
        let data = s.host()[rows.start * cols..rows.end * cols].to_vec();
        Act::from_host(Mat::from_vec(data, rows.len(), cols))
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Act {
        let data = ids
            .iter()
            .flat_map(|&id| widen_row(table, id as usize))
            .collect();
        Act::from_host(Mat::from_vec(data, ids.len(), table.cols()))
    }

    fn rows(&self, a: &Act, range: Range<usize>) -> Act {
        let idx: Vec<usize> = range.collect();
        self.gather(a, &idx)
    }

    fn cols(&self, a: &Act, start: usize, len: usize) -> Act {
        let a = host(a);
        let data = a
            .rows_iter()
            .flat_map(|r| r[start..start + len].to_vec())
            .collect();
        Act::from_host(Mat::from_vec(data, a.rows, len))
    }

    fn gather(&self, a: &Act, rows: &[usize]) -> Act {
        let a = host(a);
        let data = rows.iter().flat_map(|&r| a.row(r).to_vec()).collect();
        Act::from_host(Mat::from_vec(data, rows.len(), a.cols))
    }

    fn stack(&self, parts: &[Act]) -> Act {
        let cols = parts.first().map_or(0, Act::cols);
        let mut data = Vec::new();
        for p in parts {
            assert_eq!(p.cols(), cols, "stack: parts differ in width");
            data.extend_from_slice(&host(p).data);
        }
        let rows = parts.iter().map(Act::rows).sum();
        Act::from_host(Mat::from_vec(data, rows, cols))
    }

    fn split_heads(&self, a: &Act, heads: usize, widths: &[usize]) -> Vec<Act> {
        let a = host(a);
        let group: usize = widths.iter().sum();
        assert_eq!(
            a.cols,
            heads * group,
            "split_heads: width is not heads × Σ widths"
        );
        let mut offset = 0;
        let mut outs = Vec::new();
        for &w in widths {
            let mut data = Vec::with_capacity(a.rows * heads * w);
            for row in a.rows_iter() {
                for h in 0..heads {
                    let at = h * group + offset;
                    data.extend_from_slice(&row[at..at + w]);
                }
            }
            outs.push(Act::from_host(Mat::from_vec(data, a.rows, heads * w)));
            offset += w;
        }
        outs
    }

    fn matmul_many(&self, x: &Act, ws: &[&Weight]) -> Vec<Act> {
        let x = host(x);
        ws.iter()
            .map(|w| {
                assert_eq!(
                    x.cols,
                    w.cols(),
                    "matmul: input width does not match the weight"
                );
                let mut out = Mat::zeros(x.rows, w.rows());
                for r in 0..w.rows() {
                    let wr = widen_row(w, r);
                    for t in 0..x.rows {
                        let dot: f64 = x
                            .row(t)
                            .iter()
                            .zip(&wr)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum();
                        out.row_mut(t)[r] = dot as f32;
                    }
                }
                Act::from_host(out)
            })
            .collect()
    }

    fn add(&self, x: &mut Act, y: &Act) {
        let (x, y) = (host_mut(x), host(y));
        assert_eq!(x.data.len(), y.data.len(), "add: shapes disagree");
        x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
    }

    fn scatter_add(&self, out: &mut Act, src: &Act, rows: &[usize], weights: &[f32]) {
        let (out, src) = (host_mut(out), host(src));
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
        let (x, g) = (host_mut(x), host(gate));
        x.data
            .iter_mut()
            .zip(&g.data)
            .for_each(|(v, &g)| *v *= sigmoid(g));
    }

    fn swiglu(&self, gate: &mut Act, up: &Act) {
        let (g, u) = (host_mut(gate), host(up));
        g.data
            .iter_mut()
            .zip(&u.data)
            .for_each(|(g, &u)| *g = silu(*g) * u);
    }

    fn add_bias(&self, x: &mut Act, b: &[f32]) {
        let x = host_mut(x);
        assert_eq!(x.cols, b.len(), "add_bias: width disagrees");
        for row in x.rows_iter_mut() {
            row.iter_mut().zip(b).for_each(|(v, &b)| *v += b);
        }
    }

    fn gelu(&self, x: &mut Act, form: Gelu) {
        for v in host_mut(x).data.iter_mut() {
            let a = *v as f64;
            let y = match form {
                Gelu::Erf => 0.5 * a * (1.0 + libm::erf(a / std::f64::consts::SQRT_2)),
                Gelu::Tanh => {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    0.5 * a * (1.0 + (c * (a + 0.044715 * a * a * a)).tanh())
                }
            };
            *v = y as f32;
        }
    }

    fn reshape(&self, a: Act, rows: usize, cols: usize) -> Act {
        let a = self.download(a);
        assert_eq!(
            a.data.len(),
            rows * cols,
            "reshape: element count disagrees"
        );
        Act::from_host(Mat::from_vec(a.data, rows, cols))
    }

    fn rms_norm(&self, x: &mut Act, w: &[f32], eps: f32) {
        rms_groups(&mut host_mut(x).data, w, eps, None);
    }

    fn layer_norm(&self, x: &mut Act, w: &[f32], b: &[f32], eps: f32) {
        let x = host_mut(x);
        assert!(
            x.cols == w.len() && x.cols == b.len(),
            "layer_norm: width disagrees"
        );
        let n = x.cols as f64;
        for row in x.rows_iter_mut() {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for (i, v) in row.iter_mut().enumerate() {
                *v = ((*v as f64 - mean) * inv * w[i] as f64 + b[i] as f64) as f32;
            }
        }
    }

    fn l2_norm(&self, x: &mut Act, width: usize, eps: f32) {
        for group in host_mut(x).data.chunks_exact_mut(width) {
            let ss: f64 = group.iter().map(|&v| v as f64 * v as f64).sum();
            let inv = 1.0 / (ss + eps as f64).sqrt();
            group.iter_mut().for_each(|v| *v = (*v as f64 * inv) as f32);
        }
    }

    fn gated_rms_norm(&self, x: &mut Act, z: &Act, w: &[f32], eps: f32) {
        let z = host(z).data.clone();
        rms_groups(&mut host_mut(x).data, w, eps, Some(&z));
    }

    fn rope(&self, x: &mut Act, head_dim: usize, cos: &[f32], sin: &[f32]) {
        let x = host_mut(x);
        let Some(half) = cos.len().checked_div(x.rows) else {
            return;
        };
        for t in 0..x.rows {
            for head in x.row_mut(t).chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (c, s) = (cos[t * half + i] as f64, sin[t * half + i] as f64);
                    let (a, b) = (head[i] as f64, head[i + half] as f64);
                    head[i] = (a * c - b * s) as f32;
                    head[i + half] = (b * c + a * s) as f32;
                }
            }
        }
    }

    fn attend(&self, q: &Act, k: &Act, v: &Act, kv: &mut KvCache, shape: AttentionShape) -> Act {
        kv.make_host();
        kv.append(&host(k).data, &host(v).data);
        let (d, hq, hkv) = (shape.head_dim, shape.n_heads, shape.n_kv_heads);
        let width = hkv * d;
        // Every stored row, decoded from the cache's type.
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (ks, vs) in kv.segments() {
            let n = ks.rows(width).expect("whole rows");
            for r in 0..n {
                let (mut kr, mut vr) = (vec![0.0; width], vec![0.0; width]);
                ks.decode(r, width, 0, &mut kr);
                vs.decode(r, width, 0, &mut vr);
                keys.push(kr);
                values.push(vr);
            }
        }
        let q = host(q);
        let (s, t) = (keys.len(), q.rows);
        let mut out = Mat::zeros(t, hq * d);
        for ti in 0..t {
            // Causal: query `ti` sees the keys up to its own position.
            let visible = s - t + ti + 1;
            attention_row(
                q.row(ti),
                out.row_mut(ti),
                shape,
                visible,
                |j| &keys[j],
                |j| &values[j],
            );
        }
        Act::from_host(out)
    }

    fn attend_all(&self, q: &Act, k: &Act, v: &Act, shape: AttentionShape) -> Act {
        let (q, k, v) = (host(q), host(k), host(v));
        let (d, hq, hkv) = (shape.head_dim, shape.n_heads, shape.n_kv_heads);
        assert!(
            q.cols == hq * d && k.cols == hkv * d && v.cols == hkv * d && k.rows == v.rows,
            "attend_all: shapes disagree"
        );
        let mut out = Mat::zeros(q.rows, hq * d);
        for ti in 0..q.rows {
            attention_row(
                q.row(ti),
                out.row_mut(ti),
                shape,
                k.rows,
                |j| k.row(j),
                |j| v.row(j),
            );
        }
        Act::from_host(out)
    }

    fn route(&self, logits: &Act, k: usize) -> Vec<Vec<(usize, f32)>> {
        host(logits)
            .rows_iter()
            .map(|row| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let e: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| e[b].total_cmp(&e[a]).then(a.cmp(&b)));
                let top = &order[..k.min(order.len())];
                let kept: f64 = top.iter().map(|&i| e[i] / sum).sum();
                top.iter()
                    .map(|&i| (i, (e[i] / sum / kept) as f32))
                    .collect()
            })
            .collect()
    }

    fn add_gated(&self, out: &mut Act, x: &Act, gate: &Act) {
        let (out, x, gate) = (host_mut(out), host(x), host(gate));
        for t in 0..x.rows {
            let g = sigmoid(gate.row(t)[0]);
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
        let mut keep = keep.map(|k| {
            let k = k.host_mut();
            k.resize(host(x).rows * window.len(), 0.0);
            k
        });
        let x = host(x);
        let (t, c, hist) = (x.rows, x.cols, kernel - 1);
        assert!(
            window.len() == hist * c && taps.len() == kernel * c,
            "conv: shapes disagree"
        );
        // window ‖ x, [K-1 + T, C]
        let mut all = window.to_vec();
        all.extend_from_slice(&x.data);
        let mut out = Mat::zeros(t, c);
        for ti in 0..t {
            for ch in 0..c {
                let acc: f64 = (0..kernel)
                    .map(|i| taps[i * c + ch] as f64 * all[(ti + i) * c + ch] as f64)
                    .sum();
                out.row_mut(ti)[ch] = silu(acc as f32);
            }
            if let Some(kept) = keep.as_deref_mut() {
                let w = hist * c;
                kept[ti * w..(ti + 1) * w].copy_from_slice(&all[(ti + 1) * c..(ti + 1 + hist) * c]);
            }
        }
        window.copy_from_slice(&all[t * c..]);
        Act::from_host(out)
    }

    fn deltanet_gates(&self, b: &Act, a: &Act, a_neg: &[f32], dt_bias: &[f32]) -> (Act, Act) {
        let (b, a) = (host(b), host(a));
        let nv = a_neg.len();
        let beta = b.data.iter().map(|&x| sigmoid(x)).collect();
        let g = a
            .data
            .iter()
            .enumerate()
            .map(|(i, &x)| a_neg[i % nv] * softplus(x + dt_bias[i % nv]))
            .collect();
        (
            Act::from_host(Mat::from_vec(beta, b.rows, nv)),
            Act::from_host(Mat::from_vec(g, a.rows, nv)),
        )
    }

    /// Always position by position (both forms have the same meaning).
    fn delta_rule(
        &self,
        shape: DeltaRuleShape,
        x: DeltaInputs<'_>,
        state: &mut StateBuf,
        _form: DeltaForm,
    ) -> Act {
        let state = state.host_mut();
        let (q, k, v, g, beta) = (host(x.q), host(x.k), host(x.v), host(x.g), host(x.beta));
        let (nv, dk, dv) = (shape.nv, shape.dk, shape.dv);
        assert_eq!(
            state.len(),
            shape.state_len(),
            "delta rule: state is not [Nv, Dk, Dv]"
        );
        let mut out = Mat::zeros(q.rows, nv * dv);
        for t in 0..q.rows {
            for h in 0..nv {
                let kh = shape.k_head(h);
                let s = &mut state[h * dk * dv..(h + 1) * dk * dv];
                let (qt, kt) = (
                    &q.row(t)[kh * dk..(kh + 1) * dk],
                    &k.row(t)[kh * dk..(kh + 1) * dk],
                );
                let vt = &v.row(t)[h * dv..(h + 1) * dv];
                let decay = (g.row(t)[h] as f64).exp();
                let b = beta.row(t)[h] as f64;
                // S ← e^g S;  δ = β (v − Sᵀk);  S += k ⊗ δ;  o = Sᵀq
                s.iter_mut().for_each(|x| *x = (*x as f64 * decay) as f32);
                for j in 0..dv {
                    let sk: f64 = (0..dk).map(|i| s[i * dv + j] as f64 * kt[i] as f64).sum();
                    let delta = b * (vt[j] as f64 - sk);
                    for i in 0..dk {
                        s[i * dv + j] = (s[i * dv + j] as f64 + kt[i] as f64 * delta) as f32;
                    }
                }
                for j in 0..dv {
                    let o: f64 = (0..dk).map(|i| s[i * dv + j] as f64 * qt[i] as f64).sum();
                    out.row_mut(t)[h * dv + j] = o as f32;
                }
            }
        }
        Act::from_host(out)
    }
}
