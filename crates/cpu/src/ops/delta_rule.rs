//! The gated delta rule (Gated DeltaNet's recurrence), in its two forms.
//!
//! Per value head, a state `S ∈ R^{Dk×Dv}` evolves token by token:
//!
//! ```text
//! S ← exp(g_t) · S
//! S ← S + k_t ⊗ β_t (v_t − Sᵀ k_t)          (delta-rule write)
//! o_t = Sᵀ q_t                              (read, after the write)
//! ```
//!
//! [`gated_delta_rule_recurrent`] runs exactly that (the decode path).
//! [`gated_delta_rule_chunked`] is the WY/UT-transform form used for prefill: within a chunk
//! the intra-chunk interactions become small triangular solves and matrix products, and the
//! state is touched once per chunk. Both give the same result up to rounding (tested).
//!
//! The chunked form is arranged so that nearly all of its work is dense products on one head's
//! chunk (`L = 64`, `Dk = Dv = 128`): `K Kᵀ` and `Q Kᵀ` (lower triangles), `K S` and `Q S`, the
//! off-diagonal part of the triangular solve, `P V'` and the state update `Kᵀ V'`, all through
//! the register-tiled [`crate::kernels::sgemm`] kernel. The decay factors `e^{γ_i−γ_j}` are one
//! `L×L` matrix per chunk, computed with the vectorised exp and shared by `A` and the output;
//! pairs that underflow come out as 0. The solve never forms `(I + A)⁻¹`: `V'` is found in
//! place by blocked forward substitution (16-row diagonal blocks solved row by row, the rest as
//! one product per block). Every head runs on one thread and every sum has a fixed order, so
//! the result depends only on the chunking (chunks aligned to the start of the call), never on
//! the thread count; the portable tier runs the same algorithm with the scalar kernels.
use crate::Cpu;

use qinfer_tensor::Mat;

use crate::kernels::Isa;
use crate::kernels::sgemm::{self, MatMut, MatRef, Tri, Update};
use crate::kernels::vmath;

pub use qinfer_backend::{DeltaRuleShape, VHeadOrder};

/// Inputs of one call, per token: `q`, `k` `[T, Nk·Dk]` (L2-normalised; `q` already scaled by
/// `Dk^-½`), `v` `[T, Nv·Dv]`, `g` (log decay, ≤ 0) and `beta` `[T, Nv]`.
#[derive(Clone, Copy, Debug)]
pub struct DeltaRuleInputs<'a> {
    pub q: &'a Mat,
    pub k: &'a Mat,
    pub v: &'a Mat,
    pub g: &'a [f32],
    pub beta: &'a [f32],
}

fn check(shape: &DeltaRuleShape, x: &DeltaRuleInputs<'_>, state: &[f32]) -> usize {
    let t = x.q.rows;
    assert!(
        shape.nk > 0 && shape.nv.is_multiple_of(shape.nk),
        "delta rule: head grouping"
    );
    assert!(
        x.q.cols == shape.nk * shape.dk && x.k.cols == x.q.cols,
        "delta rule: q/k width"
    );
    assert!(x.v.cols == shape.nv * shape.dv, "delta rule: v width");
    assert!(x.k.rows == t && x.v.rows == t, "delta rule: token counts");
    assert!(
        x.g.len() == t * shape.nv && x.beta.len() == t * shape.nv,
        "delta rule: g/beta"
    );
    assert_eq!(
        state.len(),
        shape.state_len(),
        "delta rule: state must be [Nv, Dk, Dv]"
    );
    t
}

/// Runs `f(head, state_of_head) -> [T, Dv]` for every value head in parallel and interleaves the
/// per-head outputs into `[T, Nv·Dv]`.
fn per_head(
    shape: &DeltaRuleShape,
    t: usize,
    state: &mut [f32],
    f: impl Fn(usize, &mut [f32]) -> Vec<f32> + Sync,
) -> Mat {
    let (nv, dv) = (shape.nv, shape.dv);
    let mut outs: Vec<Vec<f32>> = vec![Vec::new(); nv];
    let slots = crate::pool::SharedMut::new(&mut outs);
    crate::pool::parallel_chunks_mut(state, shape.dk * dv, &|h, s| {
        // SAFETY: chunk `h` writes only slot `h`; `outs` outlives the region.
        unsafe { slots.slice(h, 1)[0] = f(h, s) };
    });
    let mut out = Mat::zeros(t, nv * dv);
    for (h, o) in outs.iter().enumerate() {
        for ti in 0..t {
            out.row_mut(ti)[h * dv..(h + 1) * dv].copy_from_slice(&o[ti * dv..(ti + 1) * dv]);
        }
    }
    out
}

/// Token-by-token gated delta rule. `state` (`[Nv, Dk, Dv]`) is read and updated.
/// Returns `o`, `[T, Nv·Dv]`.
///
/// # Panics
/// If the shapes disagree.
pub fn gated_delta_rule_recurrent(
    cpu: Cpu,
    shape: DeltaRuleShape,
    x: DeltaRuleInputs<'_>,
    state: &mut [f32],
) -> Mat {
    let t = check(&shape, &x, state);
    let (nv, dk, dv) = (shape.nv, shape.dk, shape.dv);
    let isa = cpu.isa();
    per_head(&shape, t, state, |h, s| {
        let kh = shape.k_head(h);
        let mut out = vec![0.0f32; t * dv];
        for ti in 0..t {
            let q = &x.q.row(ti)[kh * dk..(kh + 1) * dk];
            let k = &x.k.row(ti)[kh * dk..(kh + 1) * dk];
            let v = &x.v.row(ti)[h * dv..(h + 1) * dv];
            let (decay, beta) = (x.g[ti * nv + h].exp(), x.beta[ti * nv + h]);
            // S ← e^g S;  δ = β (v − Sᵀk);  S += k ⊗ δ;  o = Sᵀq  (two passes over S)
            crate::kernels::delta::step(
                isa,
                s,
                q,
                k,
                v,
                decay,
                beta,
                &mut out[ti * dv..(ti + 1) * dv],
            );
        }
        out
    })
}

/// Chunked gated delta rule (prefill form), chunks of `chunk` tokens and a shorter remainder.
/// Same contract as [`gated_delta_rule_recurrent`].
///
/// Per chunk of `L` tokens with cumulative log decay `γ` and incoming state `S`, with the decay
/// matrix `D[i][j] = e^{γ_i−γ_j}` for `j ≤ i` (0 above the diagonal) and
/// `A = strict_lower(diag(β) (K Kᵀ ∘ D))`:
///
/// ```text
/// V' = U − W S = (I + A)⁻¹ diag(β) (V − diag(e^γ) K S)
///      (U = (I + A)⁻¹ diag(β) V, W = (I + A)⁻¹ diag(β e^γ) K)
/// O  = diag(e^γ) Q S + (Q Kᵀ ∘ D) V'
/// S ← e^{γ_L} S + Kᵀ diag(e^{γ_L−γ}) V'
/// ```
///
/// The remainder chunk needs no padding: padding tokens (g = 0, β = 0) would contribute nothing.
///
/// # Panics
/// If the shapes disagree or `chunk == 0`.
pub fn gated_delta_rule_chunked(
    cpu: Cpu,
    shape: DeltaRuleShape,
    x: DeltaRuleInputs<'_>,
    state: &mut [f32],
    chunk: usize,
) -> Mat {
    assert!(chunk > 0, "delta rule: chunk size must be positive");
    let t = check(&shape, &x, state);
    let isa = cpu.isa();
    per_head(&shape, t, state, |h, s| {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 {
            // SAFETY: `Cpu` checked the features.
            return unsafe { chunked_head_avx512(&shape, &x, t, chunk, h, s) };
        }
        chunked_head(isa, &shape, &x, t, chunk, h, s)
    })
}

/// [`chunked_head`] compiled for AVX-512 (its element-wise loops auto-vectorise 16 lanes wide;
/// the products and exponentials call the AVX-512 kernels).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,fma")]
unsafe fn chunked_head_avx512(
    shape: &DeltaRuleShape,
    x: &DeltaRuleInputs<'_>,
    t: usize,
    chunk: usize,
    h: usize,
    s: &mut [f32],
) -> Vec<f32> {
    chunked_head(Isa::Avx512, shape, x, t, chunk, h, s)
}

/// A dense `rows × cols` view of the front of `v`.
fn dense(v: &[f32], rows: usize, cols: usize) -> MatRef<'_> {
    MatRef {
        data: &v[..rows * cols],
        rows,
        cols,
        stride: cols,
    }
}

/// A writable dense `rows × cols` view of the front of `v`.
fn dense_mut(v: &mut [f32], rows: usize, cols: usize) -> MatMut<'_> {
    MatMut {
        data: &mut v[..rows * cols],
        rows,
        cols,
        stride: cols,
    }
}

/// Rows per diagonal block of the blocked forward substitution for `V'`.
const SOLVE_BLOCK: usize = 16;

/// The chunked delta rule for value head `h` (state `s`, `[Dk, Dv]`); returns `[T, Dv]`.
#[inline(always)]
fn chunked_head(
    isa: Isa,
    shape: &DeltaRuleShape,
    x: &DeltaRuleInputs<'_>,
    t: usize,
    chunk: usize,
    h: usize,
    s: &mut [f32],
) -> Vec<f32> {
    let (nv, dk, dv) = (shape.nv, shape.dk, shape.dv);
    let kh = shape.k_head(h);
    let c = chunk.min(t);
    let mut out = vec![0.0f32; t * dv];
    // Scratch for every chunk of this head: [L] vectors, [L, L] matrices, K and Q as dense
    // [L, Dk], Kᵀ [Dk, L], and R / V' [L, Dv].
    let (mut beta, mut gamma, mut eg, mut el) = (
        vec![0.0f32; c],
        vec![0.0f32; c],
        vec![0.0f32; c],
        vec![0.0f32; c],
    );
    let (mut d, mut a, mut p) = (
        vec![0.0f32; c * c],
        vec![0.0f32; c * c],
        vec![0.0f32; c * c],
    );
    let (mut kd, mut qd, mut kt) = (
        vec![0.0f32; c * dk],
        vec![0.0f32; c * dk],
        vec![0.0f32; dk * c],
    );
    let mut r = vec![0.0f32; c * dv];
    let mut start = 0;
    while start < t {
        let l = chunk.min(t - start);
        // This chunk's rows of the head, dense (the rows of x.q / x.k are Nk·Dk apart).
        for i in 0..l {
            let at = kh * dk..(kh + 1) * dk;
            kd[i * dk..(i + 1) * dk].copy_from_slice(&x.k.row(start + i)[at.clone()]);
            qd[i * dk..(i + 1) * dk].copy_from_slice(&x.q.row(start + i)[at]);
        }
        let (kc, qc) = (dense(&kd, l, dk), dense(&qd, l, dk));
        let sv = || MatRef {
            data: &s[..],
            rows: dk,
            cols: dv,
            stride: dv,
        };
        // β, γ (cumulative log decay), e^γ and e^{γ_L − γ}.
        let mut acc = 0.0;
        for i in 0..l {
            beta[i] = x.beta[(start + i) * nv + h];
            acc += x.g[(start + i) * nv + h];
            gamma[i] = acc;
        }
        let g_last = gamma[l - 1];
        eg[..l].copy_from_slice(&gamma[..l]);
        vmath::exp_slice(isa, &mut eg[..l]);
        for (e, g) in el[..l].iter_mut().zip(&gamma[..l]) {
            *e = g_last - g;
        }
        vmath::exp_slice(isa, &mut el[..l]);
        // D (−∞ above the diagonal exponentiates to 0; so does any pair that underflows).
        for i in 0..l {
            let row = &mut d[i * l..(i + 1) * l];
            for (j, o) in row.iter_mut().enumerate() {
                *o = if j <= i {
                    gamma[i] - gamma[j]
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
        vmath::exp_slice(isa, &mut d[..l * l]);
        // Kᵀ [Dk, L], 16 rows of K at a time; K Kᵀ and Q Kᵀ (lower triangles), then −A (kept
        // negated so the substitution below only adds) and P = Q Kᵀ ∘ D.
        for i0 in (0..l).step_by(16) {
            let rows = &kd[i0 * dk..(i0 + 16).min(l) * dk];
            for (col, ktc) in kt[..dk * l].chunks_exact_mut(l).enumerate() {
                for (o, kr) in ktc[i0..].iter_mut().zip(rows.chunks_exact(dk)) {
                    *o = kr[col];
                }
            }
        }
        let (ktv, lower) = (dense(&kt, dk, l), Tri::LowerC);
        sgemm::gemm(isa, kc, ktv, dense_mut(&mut a, l, l), lower, Update::Set);
        sgemm::gemm(isa, qc, ktv, dense_mut(&mut p, l, l), lower, Update::Set);
        for i in 0..l {
            let (ai, pi, di) = (
                &mut a[i * l..(i + 1) * l],
                &mut p[i * l..(i + 1) * l],
                &d[i * l..(i + 1) * l],
            );
            let nb = -beta[i];
            for j in 0..l {
                ai[j] = if j < i { nb * ai[j] * di[j] } else { 0.0 };
                pi[j] = if j <= i { pi[j] * di[j] } else { 0.0 };
            }
        }
        // R = diag(β) (V − diag(e^γ) K S).
        sgemm::gemm(
            isa,
            kc,
            sv(),
            dense_mut(&mut r, l, dv),
            Tri::Full,
            Update::Set,
        );
        for i in 0..l {
            let vi = &x.v.row(start + i)[h * dv..(h + 1) * dv];
            let (b, e) = (beta[i], eg[i]);
            for (o, v) in r[i * dv..(i + 1) * dv].iter_mut().zip(vi) {
                *o = b * (v - e * *o);
            }
        }
        // V' = (I + A)⁻¹ R in place, by blocked forward substitution: each block of rows first
        // takes −A·V' of all earlier rows in one product, then solves its own unit lower
        // triangle row by row.
        for b0 in (0..l).step_by(SOLVE_BLOCK) {
            let b1 = (b0 + SOLVE_BLOCK).min(l);
            let (done, rest) = r.split_at_mut(b0 * dv);
            if b0 > 0 {
                let na = MatRef {
                    data: &a[b0 * l..],
                    rows: b1 - b0,
                    cols: b0,
                    stride: l,
                };
                let (vd, rb) = (dense(done, b0, dv), dense_mut(rest, b1 - b0, dv));
                sgemm::gemm(isa, na, vd, rb, Tri::Full, Update::ScaleAdd(1.0));
            }
            for i in 1..b1 - b0 {
                let (prev, ri) = rest.split_at_mut(i * dv);
                for (j, vj) in prev.chunks_exact(dv).enumerate() {
                    let naij = a[(b0 + i) * l + b0 + j];
                    for (o, v) in ri[..dv].iter_mut().zip(vj) {
                        *o += naij * v;
                    }
                }
            }
        }
        let vp = dense(&r, l, dv);
        // O = diag(e^γ) Q S + P V'.
        let o = &mut out[start * dv..(start + l) * dv];
        sgemm::gemm(isa, qc, sv(), dense_mut(o, l, dv), Tri::Full, Update::Set);
        for (oi, e) in o.chunks_exact_mut(dv).zip(&eg[..l]) {
            oi.iter_mut().for_each(|x| *x *= e);
        }
        let pv = dense(&p, l, l);
        sgemm::gemm(
            isa,
            pv,
            vp,
            dense_mut(o, l, dv),
            Tri::LowerA,
            Update::ScaleAdd(1.0),
        );
        // S ← e^{γ_L} S + (Kᵀ diag(e^{γ_L−γ})) V'.
        for row in kt[..dk * l].chunks_exact_mut(l) {
            for (kv, e) in row.iter_mut().zip(&el[..l]) {
                *kv *= e;
            }
        }
        let sm = MatMut {
            data: &mut s[..],
            rows: dk,
            cols: dv,
            stride: dv,
        };
        let decay = g_last.exp();
        sgemm::gemm(
            isa,
            dense(&kt, dk, l),
            vp,
            sm,
            Tri::Full,
            Update::ScaleAdd(decay),
        );
        start += l;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    fn normalise(m: &mut Mat, d: usize) {
        crate::ops::l2_norm(&mut m.data, d, 1e-6);
    }

    /// Chunked == recurrent for lengths around the chunk size, both head orders, from a
    /// non-zero incoming state. Tolerance 1e-4: f32 rounding in a different summation order
    /// over ≤ 200 tokens with |o| ~ 1.
    #[test]
    fn chunked_equals_recurrent() {
        for order in [VHeadOrder::Grouped, VHeadOrder::Tiled] {
            let shape = DeltaRuleShape {
                nk: 2,
                nv: 4,
                dk: 8,
                dv: 6,
                order,
            };
            for t in [1usize, 5, 16, 17, 40, 63] {
                let mut q = Mat::from_vec(noise(t * 16, 0.37), t, 16);
                let mut k = Mat::from_vec(noise(t * 16, 0.91), t, 16);
                normalise(&mut q, 8);
                normalise(&mut k, 8);
                let v = Mat::from_vec(noise(t * 24, 0.53), t, 24);
                let g: Vec<f32> = noise(t * 4, 0.29)
                    .iter()
                    .map(|x| -0.5 * (x + 1.1))
                    .collect();
                let beta: Vec<f32> = noise(t * 4, 0.77).iter().map(|x| 0.5 + 0.45 * x).collect();
                let x = DeltaRuleInputs {
                    q: &q,
                    k: &k,
                    v: &v,
                    g: &g,
                    beta: &beta,
                };
                let init = noise(shape.state_len(), 0.13);
                let (mut s1, mut s2) = (init.clone(), init);
                let o1 = gated_delta_rule_recurrent(Cpu::default(), shape, x, &mut s1);
                let o2 = gated_delta_rule_chunked(Cpu::default(), shape, x, &mut s2, 16);
                let max = |a: &[f32], b: &[f32]| {
                    a.iter()
                        .zip(b)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0f32, f32::max)
                };
                assert!(max(&o1.data, &o2.data) < 1e-4, "{order:?} t={t} outputs");
                assert!(max(&s1, &s2) < 1e-4, "{order:?} t={t} state");
            }
        }
    }

    /// A recurrent call over `T` tokens is bit for bit `T` one-token calls, outputs and state
    /// (what a rewind's replay and the decode path rely on).
    #[test]
    fn recurrent_steps_equal_one_token_calls() {
        let shape = DeltaRuleShape {
            nk: 2,
            nv: 4,
            dk: 16,
            dv: 16,
            order: VHeadOrder::Grouped,
        };
        let t = 5;
        let mut q = Mat::from_vec(noise(t * 32, 0.37), t, 32);
        let mut k = Mat::from_vec(noise(t * 32, 0.91), t, 32);
        normalise(&mut q, 16);
        normalise(&mut k, 16);
        let v = Mat::from_vec(noise(t * 64, 0.53), t, 64);
        let g: Vec<f32> = noise(t * 4, 0.29)
            .iter()
            .map(|x| -0.5 * (x + 1.1))
            .collect();
        let beta: Vec<f32> = noise(t * 4, 0.77).iter().map(|x| 0.5 + 0.45 * x).collect();
        let init = noise(shape.state_len(), 0.13);
        let whole = DeltaRuleInputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
        };
        let mut s_plain = init.clone();
        let o_plain = gated_delta_rule_recurrent(Cpu::default(), shape, whole, &mut s_plain);
        let mut s = init;
        let row = |m: &Mat, i: usize| Mat::from_vec(m.row(i).to_vec(), 1, m.cols);
        for i in 0..t {
            let (qi, ki, vi) = (row(&q, i), row(&k, i), row(&v, i));
            let one = DeltaRuleInputs {
                q: &qi,
                k: &ki,
                v: &vi,
                g: &g[i * 4..(i + 1) * 4],
                beta: &beta[i * 4..(i + 1) * 4],
            };
            let o = gated_delta_rule_recurrent(Cpu::default(), shape, one, &mut s);
            assert_eq!(o.data, o_plain.row(i), "output of token {i}");
        }
        assert_eq!(s, s_plain, "state after {t} tokens");
    }

    /// The AVX-512 tier of the chunked form against the portable one at the real head size
    /// (Dk = Dv = 128, chunks of 64, a remainder chunk): the same algorithm with FMA-contracted
    /// products and a ≤ 2 ulp exp, so 1e-4 of |o| ~ 1 as above.
    #[test]
    fn chunked_tiers_agree() {
        let shape = DeltaRuleShape {
            nk: 1,
            nv: 2,
            dk: 128,
            dv: 128,
            order: VHeadOrder::Grouped,
        };
        let t = 150;
        let mut q = Mat::from_vec(noise(t * 128, 0.37), t, 128);
        let mut k = Mat::from_vec(noise(t * 128, 0.91), t, 128);
        normalise(&mut q, 128);
        normalise(&mut k, 128);
        let v = Mat::from_vec(noise(t * 256, 0.53), t, 256);
        let g: Vec<f32> = noise(t * 2, 0.29)
            .iter()
            .map(|x| -0.5 * (x + 1.1))
            .collect();
        let beta: Vec<f32> = noise(t * 2, 0.77).iter().map(|x| 0.5 + 0.45 * x).collect();
        let x = DeltaRuleInputs {
            q: &q,
            k: &k,
            v: &v,
            g: &g,
            beta: &beta,
        };
        let init = noise(shape.state_len(), 0.13);
        let isa = Isa::best();
        for h in 0..2 {
            let s0 = &init[h * 128 * 128..(h + 1) * 128 * 128];
            let (mut s1, mut s2) = (s0.to_vec(), s0.to_vec());
            let o1 = chunked_head(Isa::Scalar, &shape, &x, t, 64, h, &mut s1);
            let o2 = chunked_head(isa, &shape, &x, t, 64, h, &mut s2);
            for (a, b) in o1.iter().zip(&o2).chain(s1.iter().zip(&s2)) {
                assert!((a - b).abs() < 1e-4, "head {h}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn head_orders_map_value_heads_to_key_heads() {
        let grouped = DeltaRuleShape {
            nk: 2,
            nv: 6,
            dk: 1,
            dv: 1,
            order: VHeadOrder::Grouped,
        };
        let tiled = DeltaRuleShape {
            order: VHeadOrder::Tiled,
            ..grouped
        };
        assert_eq!(
            (0..6).map(|j| grouped.k_head(j)).collect::<Vec<_>>(),
            [0, 0, 0, 1, 1, 1]
        );
        assert_eq!(
            (0..6).map(|j| tiled.k_head(j)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0, 1]
        );
    }
}
