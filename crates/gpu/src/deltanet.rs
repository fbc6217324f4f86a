//! Gated DeltaNet on the device: the causal conv, the gates, the delta rule
//! (`shaders/deltanet.wgsl`).
//!
//! The conv window and the recurrent state are [`GpuState`](crate::state::GpuState)s: each op
//! moves a host state onto the device the first time it sees it ([`state::resident`]) and
//! then reads and writes it there, in command order — no op here reads anything back.
//!
//! * `conv_silu`: one thread per output element over `window ‖ x`; the new window (the last
//!   `K-1` rows of `window ‖ x`) and the kept windows are byte ranges of that same view, so
//!   the window is moved by buffer copies and the kept rows by a gather kernel, both recorded
//!   after the conv that reads the old window.
//! * `delta_rule`: one thread per (value head, `Dv` column) owning its column of the state
//!   for the whole call (in private memory for `Dk ≤ 128`), looping over positions; the
//!   arithmetic is the CPU's fused recurrent step, operation for operation, with WGSL `fma`
//!   where the CPU's SIMD tiers fuse (a driver may round an `fma` as a multiply and an add —
//!   lavapipe does — and each side has its own `exp`, so the bits agree with the CPU's only up
//!   to those; tested to 2e-6). Both
//!   [`DeltaForm`]s run this recurrent kernel for now (the trait allows any rounding between
//!   forms; a chunked kernel is a later speed-up for long prefills), so here `Chunked` gives
//!   the same bits as `Recurrent`.

use std::sync::Arc;

use qinfer_backend::{DeltaForm, DeltaRuleShape, VHeadOrder};
use qinfer_cache::StateBuf;

use crate::context::{Ctx, GBuf, Kernel, Params, fits, grid, kernel, mul};
use crate::state;

const DN: fn(&'static str) -> Kernel = |e| kernel("deltanet", e);

/// Threads per workgroup of the element-wise kernels (`conv_silu`, `conv_keep`, `gates`).
const WG: usize = 256;
/// Value columns per delta-rule workgroup (the shader's `DV_BLOCK`).
const DV_BLOCK: usize = 128;
/// Largest `Dk` whose column a delta-rule thread keeps in private memory (`DK_LOCAL`).
const DK_LOCAL: usize = 128;

/// The shader's `Params`, field by field.
#[derive(Clone, Copy, Default)]
struct P {
    n: usize,
    t: usize,
    c: usize,
    kern: usize,
    row0: usize,
    nk: usize,
    nv: usize,
    dk: usize,
    dv: usize,
    order: usize,
}

impl P {
    fn params(self) -> Params {
        Params::new()
            .u(self.n)
            .u(self.t)
            .u(self.c)
            .u(self.kern)
            .u(self.row0)
            .u(self.nk)
            .u(self.nv)
            .u(self.dk)
            .u(self.dv)
            .u(self.order)
    }
}

/// [`qinfer_backend::Backend::conv_silu`] for `x` `[t, c]`; `taps` `[K, C]` on the device.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_silu(
    ctx: &Arc<Ctx>,
    x: &GBuf,
    t: usize,
    c: usize,
    window: &mut StateBuf,
    taps: &wgpu::Buffer,
    kernel: usize,
    keep: Option<&mut StateBuf>,
) -> GBuf {
    conv_silu_within(ctx, x, t, c, window, taps, kernel, keep, ctx.max_binding())
}

/// [`conv_silu`], the kept windows written in blocks of rows of at most `max_bytes` per
/// binding (a kept row is `K-1` input rows wide, so the kept windows of a long step may be
/// past what one binding sees when `x` is not).
#[allow(clippy::too_many_arguments)]
fn conv_silu_within(
    ctx: &Arc<Ctx>,
    x: &GBuf,
    t: usize,
    c: usize,
    window: &mut StateBuf,
    taps: &wgpu::Buffer,
    kernel: usize,
    keep: Option<&mut StateBuf>,
    max_bytes: u64,
) -> GBuf {
    assert!(kernel >= 1, "conv: at least one tap");
    let hist = kernel - 1;
    let w = mul(hist, c, "conv window");
    let n = mul(t, c, "conv input");
    assert!(x.len >= n, "conv: x holds {} values, not [{t}, {c}]", x.len);
    assert_eq!(window.len(), w, "conv: the window must be [K-1, C]");
    assert!(
        taps.size() >= mul(kernel, c, "conv taps") as u64 * 4,
        "conv: taps must be [K, C]"
    );
    fits(ctx, n, "conv input");
    let win = state::resident(ctx, window);
    let p = P {
        n,
        t,
        c,
        kern: kernel,
        ..P::default()
    };
    let out = ctx.alloc(n);
    if n > 0 {
        ctx.dispatch(
            DN("conv_silu"),
            p.params().bytes(),
            &[
                out.bind(),
                x.bind(),
                win.as_entire_binding(),
                taps.as_entire_binding(),
            ],
            grid(n.div_ceil(WG)),
        );
    }
    if let Some(keep) = keep {
        let kept = state::sized(ctx, keep, mul(t, w, "kept conv windows"));
        if w > 0 {
            let align = u64::from(ctx.limits.min_storage_buffer_offset_alignment);
            for (row0, rows) in row_blocks(t, w as u64 * 4, align, max_bytes) {
                let len = rows * w;
                let binding = wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &kept,
                    offset: (row0 * w) as u64 * 4,
                    size: wgpu::BufferSize::new(len as u64 * 4),
                });
                let p = P { n: len, row0, ..p };
                ctx.dispatch(
                    DN("conv_keep"),
                    p.params().bytes(),
                    &[binding, x.bind(), win.as_entire_binding()],
                    grid(len.div_ceil(WG)),
                );
            }
        }
    }
    // The new window, rows t .. t + K-1 of `window ‖ x`, recorded after the kernels that read
    // the old one. A buffer cannot be copied onto itself, so a shift within the window goes
    // through a scratch buffer.
    if t > 0 && w > 0 {
        let row = c as u64 * 4;
        if t >= hist {
            ctx.copy(x.buffer(), (t - hist) as u64 * row, &win, 0, w as u64 * 4);
        } else {
            let tmp = ctx.alloc(w);
            let kept_rows = (hist - t) as u64;
            ctx.copy(&win, t as u64 * row, tmp.buffer(), 0, kept_rows * row);
            ctx.copy(x.buffer(), 0, tmp.buffer(), kept_rows * row, t as u64 * row);
            ctx.copy(tmp.buffer(), 0, &win, 0, w as u64 * 4);
        }
    }
    out
}

/// Splits `rows` rows of `row_bytes` into blocks `(first row, rows)` whose bindings start at a
/// multiple of `align` bytes and span at most `max_bytes`.
fn row_blocks(rows: usize, row_bytes: u64, align: u64, max_bytes: u64) -> Vec<(usize, usize)> {
    // Rows per aligned start: align / gcd(row_bytes, align) (align is a power of two).
    let step = align / (1u64 << row_bytes.trailing_zeros().min(align.trailing_zeros()));
    let per = (max_bytes / row_bytes) / step * step;
    assert!(
        per > 0,
        "conv: a kept window of {row_bytes} bytes is past what one GPU binding may see"
    );
    let per = usize::try_from(per).unwrap_or(usize::MAX);
    (0..rows)
        .step_by(per)
        .map(|r0| (r0, per.min(rows - r0)))
        .collect()
}

/// [`qinfer_backend::Backend::deltanet_gates`]: `(β, g)`, each `[t, nv]`.
pub(crate) fn gates(
    ctx: &Arc<Ctx>,
    b: &GBuf,
    a: &GBuf,
    t: usize,
    nv: usize,
    a_neg: &wgpu::Buffer,
    dt_bias: &wgpu::Buffer,
) -> (GBuf, GBuf) {
    let n = mul(t, nv, "gates");
    assert!(
        b.len >= n && a.len >= n,
        "gates: b and a must be [{t}, {nv}]"
    );
    assert!(
        a_neg.size() >= nv as u64 * 4 && dt_bias.size() >= nv as u64 * 4,
        "gates: one a_neg and dt_bias per head"
    );
    fits(ctx, n, "gates");
    let (beta, g) = (ctx.alloc(n), ctx.alloc(n));
    if n > 0 {
        let p = P {
            n,
            t,
            c: nv,
            ..P::default()
        };
        ctx.dispatch(
            DN("gates"),
            p.params().bytes(),
            &[
                beta.bind(),
                b.bind(),
                a.bind(),
                a_neg.as_entire_binding(),
                dt_bias.as_entire_binding(),
                g.bind(),
            ],
            grid(n.div_ceil(WG)),
        );
    }
    (beta, g)
}

/// [`qinfer_backend::Backend::delta_rule`]; `qkvgb` = `[q, k, v, g, beta]`: `o` `[t, Nv·Dv]`.
/// Both forms run the recurrent kernel (see the module docs).
pub(crate) fn delta_rule(
    ctx: &Arc<Ctx>,
    shape: DeltaRuleShape,
    qkvgb: [&GBuf; 5],
    t: usize,
    state: &mut StateBuf,
    form: DeltaForm,
) -> GBuf {
    match form {
        DeltaForm::Recurrent | DeltaForm::Chunked { .. } => {}
    }
    let DeltaRuleShape { nk, nv, dk, dv, .. } = shape;
    assert!(
        nk > 0 && nv.is_multiple_of(nk),
        "delta rule: {nv} value heads over {nk} key heads"
    );
    let [q, k, v, g, beta] = qkvgb;
    let qk = mul(t, mul(nk, dk, "delta rule q"), "delta rule q");
    let vo = mul(t, mul(nv, dv, "delta rule v"), "delta rule v");
    let gb = mul(t, nv, "delta rule g");
    assert!(
        q.len >= qk && k.len >= qk,
        "delta rule: q and k must be [T, Nk·Dk]"
    );
    assert!(v.len >= vo, "delta rule: v must be [T, Nv·Dv]");
    assert!(
        g.len >= gb && beta.len >= gb,
        "delta rule: g and beta must be [T, Nv]"
    );
    assert_eq!(
        state.len(),
        shape.state_len(),
        "delta rule: the state must be [Nv, Dk, Dv]"
    );
    for (len, what) in [
        (qk, "delta rule q"),
        (vo, "delta rule v"),
        (shape.state_len(), "delta rule state"),
    ] {
        fits(ctx, len, what);
    }
    let s = state::resident(ctx, state);
    let out = ctx.alloc(vo);
    if vo == 0 {
        return out;
    }
    let entry = match dk {
        128 => "delta_rule_128",
        d if d <= DK_LOCAL => "delta_rule",
        _ => "delta_rule_wide",
    };
    let p = P {
        t,
        nk,
        nv,
        dk,
        dv,
        order: match shape.order {
            VHeadOrder::Grouped => 0,
            VHeadOrder::Tiled => 1,
        },
        ..P::default()
    };
    ctx.dispatch(
        DN(entry),
        p.params().bytes(),
        &[
            out.bind(),
            q.bind(),
            k.bind(),
            v.bind(),
            g.bind(),
            s.as_entire_binding(),
            beta.bind(),
        ],
        grid(nv * dv.div_ceil(DV_BLOCK)),
    );
    out
}

#[cfg(test)]
mod tests {
    use qinfer_backend::{Act, Backend, DeltaInputs};
    use qinfer_cpu::Cpu;
    use qinfer_tensor::Mat;

    use super::*;
    use crate::tests::gpu;

    fn noise(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    fn host(data: &[f32], rows: usize, cols: usize) -> Act {
        Act::from_host(Mat::from_vec(data.to_vec(), rows, cols))
    }

    fn cpu_rows(cpu: &Cpu, a: Act) -> Vec<f32> {
        cpu.download(a).data
    }

    /// Largest `|a − b|`.
    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "lengths differ");
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A device buffer holding `data` (taps, a_neg, dt_bias as `Gpu::constant` keeps them).
    fn constant(ctx: &Arc<Ctx>, data: &[f32]) -> wgpu::Buffer {
        let b = ctx.buffer(data.len() as u64 * 4);
        ctx.write(&b, 0, bytemuck::cast_slice(data));
        b
    }

    /// The conv against the CPU's over two calls (the window carried), with and without kept
    /// windows (written in blocks of 24 rows, so long steps take several bindings), from a
    /// non-zero host window, for steps shorter than, as long as and longer than the window and
    /// 200 channels (not a multiple of the 256-thread workgroup).
    ///
    /// Windows and kept windows are copies: bit for bit. Outputs: the CPU sums the 4 products
    /// unfused and its SiLU has its own exp (vectorised on AVX-512); the GPU's driver may fuse
    /// a product into the sum and has its own exp — a few ulp of outputs up to 4 (taps and
    /// inputs ≤ 1), so 2e-6 absolute. Measured on lavapipe (CPU AVX-512): 2.4e-7.
    #[test]
    fn conv_silu_matches_cpu() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let cpu = Cpu::from_env();
        let (c, kernel) = (200, 4);
        let w = (kernel - 1) * c;
        let taps = noise(kernel * c, 0.37);
        let taps_dev = constant(ctx, &taps);
        for t in [0, 1, 2, 3, 64, 130] {
            for keep in [false, true] {
                let init = noise(w, 0.11);
                let (mut win_c, mut win_g) = (StateBuf::Host(init.clone()), StateBuf::Host(init));
                let (mut kept_c, mut kept_g) = (StateBuf::zeros(5), StateBuf::zeros(5));
                for call in 0..2 {
                    let x = noise(t * c, 0.71 + call as f32 * 0.13);
                    let want = cpu.conv_silu(
                        &host(&x, t, c),
                        &mut win_c,
                        &taps,
                        kernel,
                        keep.then_some(&mut kept_c),
                    );
                    let got = conv_silu_within(
                        ctx,
                        &ctx.upload(&x),
                        t,
                        c,
                        &mut win_g,
                        &taps_dev,
                        kernel,
                        keep.then_some(&mut kept_g),
                        24 * w as u64 * 4,
                    );
                    let err = max_err(&ctx.read_f32(&got, t * c), &cpu_rows(&cpu, want));
                    assert!(
                        err <= 2e-6,
                        "t={t} keep={keep} call {call}: output off by {err}"
                    );
                    assert!(
                        win_g.device::<state::GpuState>().is_some(),
                        "window moved in"
                    );
                    assert_eq!(win_g, win_c, "t={t} keep={keep} call {call}: window");
                    if keep {
                        assert_eq!(kept_g.len(), t * w);
                        assert_eq!(kept_g, kept_c, "t={t} call {call}: kept windows");
                    }
                }
            }
        }
    }

    /// The blocks of kept rows start aligned and cover every row once.
    #[test]
    fn kept_row_blocks_are_aligned() {
        for (rows, row_bytes, max) in [
            (130usize, 2400u64, 57_600u64),
            (7, 12, 1024),
            (500, 2400, 8 * 2400),
            (1000, 1024, 1 << 20),
        ] {
            let blocks = row_blocks(rows, row_bytes, 256, max);
            let mut next = 0;
            for (r0, n) in blocks {
                assert_eq!(r0, next);
                assert!((r0 as u64 * row_bytes).is_multiple_of(256));
                assert!(n as u64 * row_bytes <= max && n > 0);
                next += n;
            }
            assert_eq!(next, rows);
        }
    }

    /// The gates against the CPU's over both branches of softplus (x > 20, and x down to −40
    /// where e^x is 4e-18), 37 × 16 = 592 elements. Both compute 1 / (1 + e^−b) and
    /// a_neg · ln(1 + e^x) in f32, the CPU with libm's `exp` and `ln_1p`, the GPU with its
    /// `exp` and its own ln(1 + y): relative error within Vulkan's bound for `exp`,
    /// (3 + 2|x|) ulp, plus 5 ulp for the rest. Measured on lavapipe: 0.34 of that bound
    /// (1.9e-6 relative at |x| ≈ 40, ≤ 1e-7 for |x| ≤ 1).
    #[test]
    fn gates_match_cpu() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let cpu = Cpu::from_env();
        let (t, nv) = (37, 16);
        let b: Vec<f32> = noise(t * nv, 0.61).iter().map(|x| 20.0 * x).collect();
        let a: Vec<f32> = noise(t * nv, 0.43).iter().map(|x| 35.0 * x - 5.0).collect();
        let a_neg: Vec<f32> = noise(nv, 0.3).iter().map(|x| -(2.0 + 1.5 * x)).collect();
        let dt: Vec<f32> = noise(nv, 0.9).iter().map(|x| 0.5 * x).collect();
        let (wb, wg) = cpu.deltanet_gates(&host(&b, t, nv), &host(&a, t, nv), &a_neg, &dt);
        let (gb, gg) = gates(
            ctx,
            &ctx.upload(&b),
            &ctx.upload(&a),
            t,
            nv,
            &constant(ctx, &a_neg),
            &constant(ctx, &dt),
        );
        for (got, want, arg, what) in [
            (ctx.read_f32(&gb, t * nv), cpu_rows(&cpu, wb), &b, "beta"),
            (ctx.read_f32(&gg, t * nv), cpu_rows(&cpu, wg), &a, "g"),
        ] {
            for (i, (x, y)) in got.iter().zip(&want).enumerate() {
                let e = if what == "g" {
                    arg[i] + dt[i % nv]
                } else {
                    arg[i]
                };
                // Vulkan's exp: 3 + 2|x| ulp; the rest of either side: a few ulp.
                let bound = f32::EPSILON * (8.0 + 2.0 * e.abs()) * y.abs();
                let r = (x - y).abs() / bound;
                assert!(r <= 1.0, "{what}[{i}] of {e}: {x} vs {y}");
            }
        }
        let (e, _) = gates(
            ctx,
            &ctx.alloc(0),
            &ctx.alloc(0),
            0,
            nv,
            &constant(ctx, &a_neg),
            &constant(ctx, &dt),
        );
        assert_eq!(e.len, 0);
    }

    /// One test case of the delta rule: `t` positions' inputs on the host.
    struct Inputs {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        g: Vec<f32>,
        beta: Vec<f32>,
    }

    /// Inputs as the model makes them: q, k L2-normalised per head (q scaled by Dk^-½), g in
    /// (−1.05, −0.05), β in (0.05, 0.95).
    fn inputs(s: DeltaRuleShape, t: usize, seed: f32) -> Inputs {
        let unit = |n: usize, sd: f32, scale: f32| {
            let mut x = noise(n, sd);
            for head in x.chunks_mut(s.dk) {
                let norm = head.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
                head.iter_mut().for_each(|v| *v *= scale / norm);
            }
            x
        };
        let qk = t * s.nk * s.dk;
        Inputs {
            q: unit(qk, 0.37 * seed, 1.0 / (s.dk as f32).sqrt()),
            k: unit(qk, 0.91 * seed, 1.0),
            v: noise(t * s.nv * s.dv, 0.53 * seed),
            g: noise(t * s.nv, 0.29 * seed)
                .iter()
                .map(|x| -0.5 * (x + 1.1))
                .collect(),
            beta: noise(t * s.nv, 0.77 * seed)
                .iter()
                .map(|x| 0.5 + 0.45 * x)
                .collect(),
        }
    }

    fn cpu_delta(
        cpu: &Cpu,
        s: DeltaRuleShape,
        x: &Inputs,
        t: usize,
        state: &mut StateBuf,
    ) -> Vec<f32> {
        let (q, k) = (host(&x.q, t, s.nk * s.dk), host(&x.k, t, s.nk * s.dk));
        let (v, g, beta) = (
            host(&x.v, t, s.nv * s.dv),
            host(&x.g, t, s.nv),
            host(&x.beta, t, s.nv),
        );
        let inputs = DeltaInputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
        };
        cpu_rows(cpu, cpu.delta_rule(s, inputs, state, DeltaForm::Recurrent))
    }

    fn gpu_delta(
        ctx: &Arc<Ctx>,
        s: DeltaRuleShape,
        x: &Inputs,
        t: usize,
        state: &mut StateBuf,
        form: DeltaForm,
    ) -> Vec<f32> {
        let bufs = [&x.q, &x.k, &x.v, &x.g, &x.beta].map(|v| ctx.upload(v));
        let [q, k, v, g, beta] = &bufs;
        let o = delta_rule(ctx, s, [q, k, v, g, beta], t, state, form);
        ctx.read_f32(&o, t * s.nv * s.dv)
    }

    fn shape(nk: usize, nv: usize, dk: usize, dv: usize, order: VHeadOrder) -> DeltaRuleShape {
        DeltaRuleShape {
            nk,
            nv,
            dk,
            dv,
            order,
        }
    }

    /// The delta rule against the CPU's recurrent form over two calls (the state carried on
    /// the device, read back through `DeviceBuffer::read`), from a non-zero host state, both
    /// head orders, `Dv` under, at and over one 128-column workgroup, `Dk` at the private
    /// limit (128, its own entry point) and past it (the in-place entry point).
    ///
    /// The GPU runs the CPU's fused step operation for operation; what may differ is the
    /// decay e^g (each side's own exp), whether the CPU tier fuses (the scalar tier does not),
    /// and how a driver evaluates `fma`. Those are ulp-level per step and the recurrence does
    /// not amplify them (|e^g| < 1, and I − β k kᵀ has norm ≤ 1 for β ≤ 1, |k| = 1), so
    /// 2e-6 absolute on outputs and state of magnitude ≲ 1 (16 times what was measured: on
    /// lavapipe, CPU AVX-512, 1.2e-7 = 1 ulp, state and outputs alike, any length). Probed
    /// on lavapipe: its `fma` is a rounded multiply then add and its `exp` is never libm's to
    /// the bit, so with g = 0 the GPU gives the CPU's scalar tier (`QINFER_ISA=scalar`) bit
    /// for bit, and otherwise no tier; a GPU with a true fused `fma` would follow the
    /// AVX tiers' bits but for e^g.
    #[test]
    fn delta_rule_matches_cpu() {
        let Some(gp) = gpu() else { return };
        let ctx = &gp.ctx;
        let cpu = Cpu::from_env();
        let (g, ti) = (VHeadOrder::Grouped, VHeadOrder::Tiled);
        let small = [1usize, 5, 64, 130];
        let cases: [(DeltaRuleShape, &[usize]); 8] = [
            (shape(2, 4, 16, 16, g), &small),
            (shape(2, 4, 16, 16, ti), &small),
            (shape(2, 2, 32, 24, ti), &small),
            (shape(2, 2, 32, 24, g), &small),
            (shape(1, 3, 20, 130, g), &[1, 7]),
            (shape(2, 6, 8, 5, ti), &[3, 33]),
            (shape(1, 2, 128, 128, ti), &[1, 9]),
            (shape(1, 2, 160, 8, g), &[1, 6]),
        ];
        for (s, ts) in cases {
            for &t in ts {
                let init = noise(s.state_len(), 0.13);
                let (mut sc, mut sg) = (StateBuf::Host(init.clone()), StateBuf::Host(init));
                for call in 0..2 {
                    let x = inputs(s, t, 1.0 + call as f32 * 0.21);
                    let want = cpu_delta(&cpu, s, &x, t, &mut sc);
                    let got = gpu_delta(ctx, s, &x, t, &mut sg, DeltaForm::Recurrent);
                    let err = max_err(&got, &want);
                    assert!(err <= 2e-6, "{s:?} t={t} call {call}: outputs off by {err}");
                    assert!(sg.device::<state::GpuState>().is_some(), "state moved in");
                    let serr = max_err(&sg.host(), &sc.host());
                    assert!(serr <= 2e-6, "{s:?} t={t} call {call}: state off by {serr}");
                }
            }
        }
    }

    /// 70 positions in one call are bit for bit 70 one-position calls, outputs and final state
    /// (what decode after a prefill and a rewind's replay rely on); the chunked form, which
    /// runs the same kernel, gives the same bits too.
    #[test]
    fn delta_rule_steps_equal_one_position_calls() {
        let Some(gp) = gpu() else { return };
        let ctx = &gp.ctx;
        for s in [
            shape(2, 4, 16, 16, VHeadOrder::Tiled),
            shape(1, 2, 128, 128, VHeadOrder::Grouped),
        ] {
            let t = 70;
            let x = inputs(s, t, 1.0);
            let init = noise(s.state_len(), 0.13);
            let mut whole = StateBuf::Host(init.clone());
            let o_whole = gpu_delta(ctx, s, &x, t, &mut whole, DeltaForm::Recurrent);
            let mut chunked = StateBuf::Host(init.clone());
            let o_chunked = gpu_delta(
                ctx,
                s,
                &x,
                t,
                &mut chunked,
                DeltaForm::Chunked { chunk: 64 },
            );
            assert_eq!(bits(&o_chunked), bits(&o_whole));
            assert_eq!(chunked, whole);
            let mut one = StateBuf::Host(init);
            let (qk, vw) = (s.nk * s.dk, s.nv * s.dv);
            for i in 0..t {
                let xi = Inputs {
                    q: x.q[i * qk..(i + 1) * qk].to_vec(),
                    k: x.k[i * qk..(i + 1) * qk].to_vec(),
                    v: x.v[i * vw..(i + 1) * vw].to_vec(),
                    g: x.g[i * s.nv..(i + 1) * s.nv].to_vec(),
                    beta: x.beta[i * s.nv..(i + 1) * s.nv].to_vec(),
                };
                let o = gpu_delta(ctx, s, &xi, 1, &mut one, DeltaForm::Recurrent);
                assert_eq!(
                    bits(&o),
                    bits(&o_whole[i * vw..(i + 1) * vw]),
                    "{s:?} position {i}"
                );
            }
            assert_eq!(one, whole, "{s:?}: state after {t} positions");
        }
    }

    /// No positions: no output, the state untouched (but moved in).
    #[test]
    fn delta_rule_of_no_positions() {
        let Some(gp) = gpu() else { return };
        let ctx = &gp.ctx;
        let s = shape(2, 4, 16, 16, VHeadOrder::Grouped);
        let init = noise(s.state_len(), 0.13);
        let mut st = StateBuf::Host(init.clone());
        let o = gpu_delta(ctx, s, &inputs(s, 0, 1.0), 0, &mut st, DeltaForm::Recurrent);
        assert!(o.is_empty());
        assert_eq!(st, StateBuf::Host(init));
        assert!(st.device::<state::GpuState>().is_some());
    }

    /// A snapshot (duplicate) of device state is unaffected by later steps on the original.
    #[test]
    fn snapshot_of_state_is_independent() {
        let Some(gp) = gpu() else { return };
        let ctx = &gp.ctx;
        let s = shape(2, 4, 16, 16, VHeadOrder::Grouped);
        let mut st = StateBuf::Host(noise(s.state_len(), 0.13));
        gpu_delta(ctx, s, &inputs(s, 3, 1.0), 3, &mut st, DeltaForm::Recurrent);
        let before = st.host().into_owned();
        let snap = st.clone();
        gpu_delta(ctx, s, &inputs(s, 4, 1.3), 4, &mut st, DeltaForm::Recurrent);
        assert_eq!(snap.host().as_ref(), &before[..]);
        assert_ne!(st.host().as_ref(), &before[..]);
    }
}
