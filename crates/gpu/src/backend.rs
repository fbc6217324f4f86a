//! [`Gpu`] as a [`Backend`]. Ops that change an activation write a new buffer and put it in
//! place (an [`Act`] may share its buffer with a clone); buffers come from the pool, so this
//! costs no allocation in a steady state.

use std::ops::{Deref, Range};
use std::sync::Arc;

use qinfer_backend::reference::Reference;
use qinfer_backend::{
    Act, AttentionShape, Backend, DeltaForm, DeltaInputs, DeltaRuleShape, Gelu, PrepareError,
};
use qinfer_cache::{KvCache, StateBuf};
use qinfer_tensor::{DType, Mat, Weight};

use crate::context::{GBuf, Kernel, Params, grid, kernel};
use crate::matmul::GpuWeight;
use crate::{Gpu, attention, deltanet, matmul, state};

/// What an [`Act`] of this backend holds: a shared activation buffer.
pub(crate) struct Dev(pub Arc<GBuf>);

pub(crate) fn act(g: GBuf, rows: usize, cols: usize) -> Act {
    debug_assert!(g.len >= rows * cols);
    Act::from_device(rows, cols, Arc::new(Dev(Arc::new(g))))
}

/// An activation's buffer: its own, or a host activation uploaded.
pub(crate) enum Held<'a> {
    Shared(&'a GBuf),
    Owned(GBuf),
}

impl Deref for Held<'_> {
    type Target = GBuf;
    fn deref(&self) -> &GBuf {
        match self {
            Held::Shared(g) => g,
            Held::Owned(g) => g,
        }
    }
}

const ELEM: fn(&'static str) -> Kernel = |e| kernel("elementwise", e);
const NORM: fn(&'static str) -> Kernel = |e| kernel("norm", e);
const COPY: fn(&'static str) -> Kernel = |e| kernel("copy", e);

fn on_gpu(w: &Weight) -> &GpuWeight {
    w.device::<GpuWeight>()
        .expect("a weight the GPU backend did not prepare")
}

impl Gpu {
    pub(crate) fn held<'a>(&self, a: &'a Act) -> Held<'a> {
        match a.device::<Dev>() {
            Some(d) => Held::Shared(&d.0),
            None => {
                let m = a.host().expect("an activation of another device backend");
                Held::Owned(self.ctx.upload(&m.data))
            }
        }
    }

    /// One element-wise kernel over `n` elements into a new buffer.
    fn elementwise(&self, entry: &'static str, p: Params, n: usize, ins: &[&GBuf]) -> GBuf {
        let out = self.ctx.alloc(n);
        let mut binds = vec![out.bind()];
        binds.extend(ins.iter().map(|g| g.bind()));
        self.ctx
            .dispatch(ELEM(entry), p.bytes(), &binds, grid(n.div_ceil(256)));
        out
    }

    /// `x ← f(x, ys)` for an element-wise kernel whose `Params` are `(n, width, s, form)`.
    fn map(
        &self,
        x: &mut Act,
        entry: &'static str,
        width: usize,
        s: f32,
        form: usize,
        ys: &[&Act],
    ) {
        let (rows, cols) = (x.rows(), x.cols());
        let n = rows * cols;
        let xb = self.held(x);
        let ys: Vec<Held> = ys.iter().map(|y| self.held(y)).collect();
        let mut ins: Vec<&GBuf> = vec![&xb];
        ins.extend(ys.iter().map(|y| &**y));
        let p = Params::new().u(n).u(width.max(1)).f(s).u(form);
        let out = self.elementwise(entry, p, n, &ins);
        drop(ys);
        drop(xb);
        *x = act(out, rows, cols);
    }

    /// A norm over `groups` groups of `width` into a new buffer, in place of `x`.
    fn norm(
        &self,
        x: &mut Act,
        entry: &'static str,
        width: usize,
        eps: f32,
        extra: &[wgpu::Buffer],
        z: Option<&Act>,
    ) {
        let (rows, cols) = (x.rows(), x.cols());
        let n = rows * cols;
        assert!(
            width > 0 && cols.is_multiple_of(width),
            "{entry}: groups of {width} in rows of {cols}"
        );
        let groups = n / width;
        let xb = self.held(x);
        let zb = z.map(|z| self.held(z));
        let out = self.ctx.alloc(n);
        let mut binds = vec![out.bind(), xb.bind()];
        binds.extend(extra.iter().map(|b| b.as_entire_binding()));
        if let Some(z) = &zb {
            binds.push(z.bind());
        }
        let p = Params::new().u(groups).u(width).f(eps);
        self.ctx
            .dispatch(NORM(entry), p.bytes(), &binds, grid(groups));
        drop(binds);
        drop(zb);
        drop(xb);
        *x = act(out, rows, cols);
    }

    /// Copies `rows × cols` from `src` (row stride, first row, first column) into `dst`
    /// (likewise), or from the rows `idx` names.
    #[allow(clippy::too_many_arguments)]
    fn copy_block(
        &self,
        dst: &GBuf,
        (dst_stride, dst_row, dst_col): (usize, usize, usize),
        src: &GBuf,
        (src_stride, src_row, src_col): (usize, usize, usize),
        rows: usize,
        cols: usize,
        idx: Option<&GBuf>,
    ) {
        let n = rows * cols;
        if n == 0 {
            return;
        }
        let p = Params::new()
            .u(rows)
            .u(cols)
            .u(src_stride)
            .u(src_row)
            .u(src_col)
            .u(dst_stride)
            .u(dst_row)
            .u(dst_col)
            .u(0)
            .u(0);
        let mut binds = vec![dst.bind(), src.bind()];
        let entry = match idx {
            Some(i) => {
                binds.push(i.bind());
                "gather_rows"
            }
            None => "copy_rows",
        };
        self.ctx
            .dispatch(COPY(entry), p.bytes(), &binds, grid(n.div_ceil(256)));
    }

    fn upload_u32(&self, v: &[u32]) -> GBuf {
        let g = self.ctx.alloc(v.len());
        self.ctx.write(g.buffer(), 0, bytemuck::cast_slice(v));
        g
    }
}

impl Backend for Gpu {
    fn describe(&self) -> String {
        format!(
            "gpu {} ({})",
            self.summary.name,
            self.summary.api.to_lowercase()
        )
    }

    fn supports(&self, dtype: DType) -> bool {
        matmul::supports_dtype(dtype)
    }

    fn prepare(&self, w: Weight) -> Result<Weight, PrepareError> {
        let err = |reason: String| PrepareError {
            backend: self.describe(),
            reason,
        };
        if w.device::<GpuWeight>().is_some() {
            return Ok(w);
        }
        if !self.supports(w.dtype()) {
            return Err(err(format!("no matmul reads {} weights", w.dtype())));
        }
        let bytes = w.bytes();
        let key = (bytes.as_ptr() as usize, bytes.len(), w.dtype());
        let mut cache = self.weights.lock().unwrap_or_else(|e| e.into_inner());
        let copy = match cache.get(&key).and_then(|c| c.upgrade()) {
            Some(c) if c.rows == w.rows() && c.cols == w.cols() => c,
            _ => {
                let scope = self
                    .ctx
                    .device
                    .push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                let c = matmul::upload_weight(&self.ctx, &w).map_err(err);
                if let Some(e) = pollster::block_on(scope.pop()) {
                    let held = self.weight_bytes();
                    return Err(err(format!(
                        "out of device memory uploading a [{}, {}] {} weight after {:.2} GB of weights ({e}); \
                         the model needs more memory than the GPU has: `qinfer fit` gives the sizes, a smaller \
                         quantization fits in less",
                        w.rows(),
                        w.cols(),
                        w.dtype(),
                        held as f64 / 1e9
                    )));
                }
                let c = Arc::new(c?);
                let mut up = self.uploaded.lock().unwrap_or_else(|e| e.into_inner());
                up.0 += bytes.len() as u64;
                (up.1)(bytes.len() as u64);
                drop(up);
                cache.retain(|_, c| c.strong_count() > 0);
                cache.insert(key, Arc::downgrade(&c));
                c
            }
        };
        Ok(w.with_device(copy))
    }

    fn upload(&self, m: Mat) -> Act {
        let g = self.ctx.upload(&m.data);
        act(g, m.rows, m.cols)
    }

    fn zeros(&self, rows: usize, cols: usize) -> Act {
        let n = rows * cols;
        let out = self.elementwise("fill", Params::new().u(n).u(1).f(0.0).u(0), n, &[]);
        act(out, rows, cols)
    }

    fn download(&self, a: Act) -> Mat {
        let (rows, cols) = (a.rows(), a.cols());
        let g = self.held(&a);
        let data = self.ctx.read_f32(&g, rows * cols);
        Mat::from_vec(data, rows, cols)
    }

    fn write_state(&self, a: &Act, s: &mut StateBuf) {
        let g = self.held(a);
        state::write_state(&self.ctx, &g, a.rows() * a.cols(), s);
    }

    fn read_state(&self, s: &StateBuf, rows: Range<usize>, cols: usize) -> Act {
        let n = rows.len();
        let g = state::read_state(&self.ctx, s, rows, cols);
        act(g, n, cols)
    }

    fn embed(&self, table: &Weight, ids: &[u32]) -> Act {
        let g = matmul::embed(&self.ctx, on_gpu(table), ids);
        act(g, ids.len(), table.cols())
    }

    fn rows(&self, a: &Act, range: Range<usize>) -> Act {
        let cols = a.cols();
        let n = range.len();
        assert!(range.end <= a.rows(), "rows: {range:?} of {}", a.rows());
        let src = self.held(a);
        let out = self.ctx.alloc(n * cols);
        self.ctx.copy(
            src.buffer(),
            (range.start * cols * 4) as u64,
            out.buffer(),
            0,
            (n * cols * 4) as u64,
        );
        act(out, n, cols)
    }

    fn cols(&self, a: &Act, start: usize, len: usize) -> Act {
        let (rows, cols) = (a.rows(), a.cols());
        assert!(start + len <= cols, "cols: {start}+{len} of {cols}");
        let src = self.held(a);
        let out = self.ctx.alloc(rows * len);
        self.copy_block(&out, (len, 0, 0), &src, (cols, 0, start), rows, len, None);
        act(out, rows, len)
    }

    fn gather(&self, a: &Act, rows: &[usize]) -> Act {
        let cols = a.cols();
        assert!(
            rows.iter().all(|&r| r < a.rows()),
            "gather: a row past {}",
            a.rows()
        );
        let src = self.held(a);
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = self.upload_u32(&idx);
        let out = self.ctx.alloc(rows.len() * cols);
        self.copy_block(
            &out,
            (cols, 0, 0),
            &src,
            (cols, 0, 0),
            rows.len(),
            cols,
            Some(&idx),
        );
        act(out, rows.len(), cols)
    }

    fn stack(&self, parts: &[Act]) -> Act {
        let cols = parts.first().map_or(0, |p| p.cols());
        assert!(
            parts.iter().all(|p| p.cols() == cols),
            "stack: widths differ"
        );
        let rows: usize = parts.iter().map(|p| p.rows()).sum();
        let out = self.ctx.alloc(rows * cols);
        let mut at = 0u64;
        for p in parts {
            let bytes = (p.rows() * cols * 4) as u64;
            let src = self.held(p);
            self.ctx.copy(src.buffer(), 0, out.buffer(), at, bytes);
            at += bytes;
        }
        act(out, rows, cols)
    }

    fn split_heads(&self, a: &Act, heads: usize, widths: &[usize]) -> Vec<Act> {
        let (rows, cols) = (a.rows(), a.cols());
        let sum: usize = widths.iter().sum();
        assert_eq!(
            heads * sum,
            cols,
            "split_heads: widths disagree with the row"
        );
        let src = self.held(a);
        let mut off = 0;
        widths
            .iter()
            .map(|&w| {
                // Rows of `[T·heads, Σ widths]`, this width's columns.
                let out = self.ctx.alloc(rows * heads * w);
                self.copy_block(&out, (w, 0, 0), &src, (sum, 0, off), rows * heads, w, None);
                off += w;
                act(out, rows, heads * w)
            })
            .collect()
    }

    fn matmul_many(&self, x: &Act, ws: &[&Weight]) -> Vec<Act> {
        let t = x.rows();
        let xb = self.held(x);
        ws.iter()
            .map(|w| {
                let g = on_gpu(w);
                assert_eq!(g.cols, x.cols(), "matmul: input width");
                act(matmul::matmul(&self.ctx, &xb, t, g), t, g.rows)
            })
            .collect()
    }

    fn add(&self, x: &mut Act, y: &Act) {
        assert!(
            x.rows() == y.rows() && x.cols() == y.cols(),
            "add: shapes disagree"
        );
        self.map(x, "add", 1, 0.0, 0, &[y]);
    }

    fn scatter_add(&self, out: &mut Act, src: &Act, rows: &[usize], weights: &[f32]) {
        assert!(
            rows.len() == src.rows() && weights.len() == src.rows() && out.cols() == src.cols(),
            "scatter_add: shapes disagree"
        );
        assert!(
            rows.iter().all(|&r| r < out.rows()),
            "scatter_add: a row past the output"
        );
        let (r, c) = (out.rows(), out.cols());
        let n = r * c;
        let o = self.held(out);
        let fresh = self.ctx.alloc(n);
        self.ctx
            .copy(o.buffer(), 0, fresh.buffer(), 0, (n * 4) as u64);
        drop(o);
        if !rows.is_empty() && c > 0 {
            let mut table: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
            table.extend(weights.iter().map(|w| w.to_bits()));
            let table = self.upload_u32(&table);
            let s = self.held(src);
            let p = Params::new().u(rows.len()).u(c).f(0.0).u(0);
            self.ctx.dispatch(
                ELEM("scatter_add"),
                p.bytes(),
                &[fresh.bind(), s.bind(), table.bind()],
                grid(c.div_ceil(256)),
            );
        }
        *out = act(fresh, r, c);
    }

    fn scale(&self, x: &mut Act, s: f32) {
        self.map(x, "scale", 1, s, 0, &[]);
    }

    fn sigmoid_mul(&self, x: &mut Act, gate: &Act) {
        assert!(
            x.rows() == gate.rows() && x.cols() == gate.cols(),
            "sigmoid_mul: shapes"
        );
        self.map(x, "sigmoid_mul", 1, 0.0, 0, &[gate]);
    }

    fn swiglu(&self, gate: &mut Act, up: &Act) {
        assert!(
            gate.rows() == up.rows() && gate.cols() == up.cols(),
            "swiglu: shapes"
        );
        self.map(gate, "swiglu", 1, 0.0, 0, &[up]);
    }

    fn add_bias(&self, x: &mut Act, b: &[f32]) {
        assert_eq!(b.len(), x.cols(), "add_bias: one bias per column");
        let (rows, cols) = (x.rows(), x.cols());
        let n = rows * cols;
        let bias = self.constant(b);
        let xb = self.held(x);
        let out = self.ctx.alloc(n);
        let p = Params::new().u(n).u(cols.max(1)).f(0.0).u(0);
        self.ctx.dispatch(
            ELEM("add_bias"),
            p.bytes(),
            &[out.bind(), xb.bind(), bias.as_entire_binding()],
            grid(n.div_ceil(256)),
        );
        drop(xb);
        *x = act(out, rows, cols);
    }

    fn gelu(&self, x: &mut Act, form: Gelu) {
        let f = match form {
            Gelu::Erf => 0,
            Gelu::Tanh => 1,
        };
        self.map(x, "gelu", 1, 0.0, f, &[]);
    }

    fn reshape(&self, a: Act, rows: usize, cols: usize) -> Act {
        assert_eq!(
            rows * cols,
            a.rows() * a.cols(),
            "reshape: element counts differ"
        );
        match a.device::<Dev>() {
            Some(d) => Act::from_device(rows, cols, Arc::new(Dev(d.0.clone()))),
            None => {
                let m = a.host().expect("an activation").clone();
                self.upload(Mat::from_vec(m.data, rows, cols))
            }
        }
    }

    fn rms_norm(&self, x: &mut Act, w: &[f32], eps: f32) {
        let wb = self.constant(w);
        self.norm(x, "rms_norm", w.len(), eps, &[wb], None);
    }

    fn layer_norm(&self, x: &mut Act, w: &[f32], b: &[f32], eps: f32) {
        assert!(
            w.len() == x.cols() && b.len() == x.cols(),
            "layer_norm: widths"
        );
        let wb = self.constant(w);
        let bb = self.constant(b);
        self.norm(x, "layer_norm", w.len(), eps, &[wb, bb], None);
    }

    fn l2_norm(&self, x: &mut Act, width: usize, eps: f32) {
        self.norm(x, "l2_norm", width, eps, &[], None);
    }

    fn gated_rms_norm(&self, x: &mut Act, z: &Act, w: &[f32], eps: f32) {
        assert!(
            x.rows() == z.rows() && x.cols() == z.cols(),
            "gated_rms_norm: shapes"
        );
        let wb = self.constant(w);
        self.norm(x, "gated_rms_norm", w.len(), eps, &[wb], Some(z));
    }

    fn rope(&self, x: &mut Act, head_dim: usize, cos: &[f32], sin: &[f32]) {
        let (rows, cols) = (x.rows(), x.cols());
        if rows == 0 {
            return;
        }
        let half = cos.len() / rows;
        assert!(
            cos.len() == half * rows && sin.len() == cos.len(),
            "rope: one angle row per row"
        );
        assert!(
            2 * half <= head_dim && cols.is_multiple_of(head_dim),
            "rope: head layout"
        );
        let n = rows * cols;
        let xb = self.held(x);
        let (c, s) = (self.ctx.upload(cos), self.ctx.upload(sin));
        let out = self.ctx.alloc(n);
        let p = Params::new()
            .u(rows)
            .u(cols)
            .u(0)
            .u(0)
            .u(0)
            .u(0)
            .u(0)
            .u(0)
            .u(head_dim)
            .u(half);
        self.ctx.dispatch(
            COPY("rope"),
            p.bytes(),
            &[out.bind(), xb.bind(), c.bind(), s.bind()],
            grid(n.div_ceil(256)),
        );
        drop(xb);
        *x = act(out, rows, cols);
    }

    fn attend(&self, q: &Act, k: &Act, v: &Act, kv: &mut KvCache, shape: AttentionShape) -> Act {
        let t = q.rows();
        let (qb, kb, vb) = (self.held(q), self.held(k), self.held(v));
        let out = attention::attend(&self.ctx, &qb, &kb, &vb, t, kv, shape);
        act(out, t, shape.n_heads * shape.head_dim)
    }

    fn attend_all(&self, q: &Act, k: &Act, v: &Act, shape: AttentionShape) -> Act {
        let t = q.rows();
        let (qb, kb, vb) = (self.held(q), self.held(k), self.held(v));
        let out = attention::attend_all(&self.ctx, &qb, &kb, &vb, t, shape);
        act(out, t, shape.n_heads * shape.head_dim)
    }

    fn route(&self, logits: &Act, k: usize) -> Vec<Vec<(usize, f32)>> {
        let m = self.download(logits.clone());
        Reference.route(&Act::from_host(m), k)
    }

    fn add_gated(&self, out: &mut Act, x: &Act, gate: &Act) {
        assert!(
            gate.cols() == 1
                && gate.rows() == x.rows()
                && out.rows() == x.rows()
                && out.cols() == x.cols(),
            "add_gated: shapes disagree"
        );
        let width = x.cols();
        self.map(out, "add_gated", width, 0.0, 0, &[x, gate]);
    }

    fn conv_silu(
        &self,
        x: &Act,
        window: &mut StateBuf,
        taps: &[f32],
        kernel: usize,
        keep: Option<&mut StateBuf>,
    ) -> Act {
        let (t, c) = (x.rows(), x.cols());
        assert_eq!(taps.len(), kernel * c, "conv_silu: taps are [K, C]");
        let xb = self.held(x);
        let taps = self.constant(taps);
        let out = deltanet::conv_silu(&self.ctx, &xb, t, c, window, &taps, kernel, keep);
        act(out, t, c)
    }

    fn deltanet_gates(&self, b: &Act, a: &Act, a_neg: &[f32], dt_bias: &[f32]) -> (Act, Act) {
        let (t, nv) = (b.rows(), b.cols());
        assert!(
            a.rows() == t && a.cols() == nv && a_neg.len() == nv && dt_bias.len() == nv,
            "deltanet_gates: shapes disagree"
        );
        let (bb, ab) = (self.held(b), self.held(a));
        let (an, dt) = (self.constant(a_neg), self.constant(dt_bias));
        let (beta, g) = deltanet::gates(&self.ctx, &bb, &ab, t, nv, &an, &dt);
        (act(beta, t, nv), act(g, t, nv))
    }

    fn delta_rule(
        &self,
        shape: DeltaRuleShape,
        inputs: DeltaInputs<'_>,
        state: &mut StateBuf,
        form: DeltaForm,
    ) -> Act {
        let t = inputs.q.rows();
        let q = self.held(inputs.q);
        let k = self.held(inputs.k);
        let v = self.held(inputs.v);
        let g = self.held(inputs.g);
        let beta = self.held(inputs.beta);
        let out = deltanet::delta_rule(&self.ctx, shape, [&q, &k, &v, &g, &beta], t, state, form);
        act(out, t, shape.nv * shape.dv)
    }
}
