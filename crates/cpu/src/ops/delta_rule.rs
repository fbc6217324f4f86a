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

use qinfer_tensor::Mat;

use super::matmul::dot;

/// Which key head each value head reads when `Nv > Nk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VHeadOrder {
    /// Hugging Face checkpoints: consecutive value heads share a key head (`j / (Nv/Nk)`).
    Grouped,
    /// llama.cpp GGUF files: value heads are tiled over key heads (`j mod Nk`).
    Tiled,
}

/// Head layout of a Gated DeltaNet layer.
#[derive(Clone, Copy, Debug)]
pub struct DeltaRuleShape {
    /// `Nk`: query/key heads.
    pub nk: usize,
    /// `Nv`: value heads (a multiple of `Nk`).
    pub nv: usize,
    /// `Dk`.
    pub dk: usize,
    /// `Dv`.
    pub dv: usize,
    pub order: VHeadOrder,
}

impl DeltaRuleShape {
    /// The key head that value head `j` reads.
    pub fn k_head(&self, j: usize) -> usize {
        match self.order {
            VHeadOrder::Grouped => j / (self.nv / self.nk),
            VHeadOrder::Tiled => j % self.nk,
        }
    }

    /// Elements of the recurrent state: `[Nv, Dk, Dv]`.
    pub fn state_len(&self) -> usize {
        self.nv * self.dk * self.dv
    }
}

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
    shape: DeltaRuleShape,
    x: DeltaRuleInputs<'_>,
    state: &mut [f32],
) -> Mat {
    let t = check(&shape, &x, state);
    let (nv, dk, dv) = (shape.nv, shape.dk, shape.dv);
    let isa = crate::kernels::isa();
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
/// Per chunk of `L` tokens with cumulative log decay `γ` and incoming state `S`
/// (`A[i][j] = β_i (k_i·k_j) e^{γ_i−γ_j}` for `j < i`):
///
/// ```text
/// U = (I + A)⁻¹ diag(β) V                 W = (I + A)⁻¹ diag(β e^γ) K
/// V' = U − W S
/// O_i = e^{γ_i} q_i S + Σ_{j≤i} (q_i·k_j) e^{γ_i−γ_j} V'_j
/// S ← e^{γ_L} S + Σ_j e^{γ_L−γ_j} k_j ⊗ V'_j
/// ```
///
/// The remainder chunk needs no padding: padding tokens (g = 0, β = 0) would contribute nothing.
///
/// # Panics
/// If the shapes disagree or `chunk == 0`.
pub fn gated_delta_rule_chunked(
    shape: DeltaRuleShape,
    x: DeltaRuleInputs<'_>,
    state: &mut [f32],
    chunk: usize,
) -> Mat {
    assert!(chunk > 0, "delta rule: chunk size must be positive");
    let t = check(&shape, &x, state);
    let avx512 = crate::kernels::isa() == crate::kernels::Isa::Avx512;
    per_head(&shape, t, state, |h, s| {
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: `isa()` confirmed the features.
            return unsafe { chunked_head_avx512(&shape, &x, t, chunk, h, s) };
        }
        let _ = avx512;
        chunked_head(&shape, &x, t, chunk, h, s)
    })
}

/// [`chunked_head`] compiled for AVX-512 (its loops auto-vectorise 16 lanes wide).
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
    chunked_head(shape, x, t, chunk, h, s)
}

/// The chunked delta rule for value head `h` (state `s`, `[Dk, Dv]`); returns `[T, Dv]`.
#[inline(always)]
fn chunked_head(
    shape: &DeltaRuleShape,
    x: &DeltaRuleInputs<'_>,
    t: usize,
    chunk: usize,
    h: usize,
    s: &mut [f32],
) -> Vec<f32> {
    let (nv, dk, dv) = (shape.nv, shape.dk, shape.dv);
    let kh = shape.k_head(h);
    let mut out = vec![0.0f32; t * dv];
    let mut start = 0;
    while start < t {
        let l = chunk.min(t - start);
        let q = |i: usize| &x.q.row(start + i)[kh * dk..(kh + 1) * dk];
        let k = |i: usize| &x.k.row(start + i)[kh * dk..(kh + 1) * dk];
        let v = |i: usize| &x.v.row(start + i)[h * dv..(h + 1) * dv];
        let beta: Vec<f32> = (0..l).map(|i| x.beta[(start + i) * nv + h]).collect();
        let mut gamma = vec![0.0f32; l];
        let mut acc = 0.0;
        for (i, gm) in gamma.iter_mut().enumerate() {
            acc += x.g[(start + i) * nv + h];
            *gm = acc;
        }
        // A (strictly lower), [L, L].
        let mut a = vec![0.0f32; l * l];
        for i in 0..l {
            for j in 0..i {
                a[i * l + j] = beta[i] * dot(k(i), k(j)) * (gamma[i] - gamma[j]).exp();
            }
        }
        // Forward substitution for U [L, Dv] and W [L, Dk].
        let mut u = vec![0.0f32; l * dv];
        let mut w = vec![0.0f32; l * dk];
        for i in 0..l {
            let (done_u, rest_u) = u.split_at_mut(i * dv);
            let ui = &mut rest_u[..dv];
            for (o, vi) in ui.iter_mut().zip(v(i)) {
                *o = beta[i] * vi;
            }
            let (done_w, rest_w) = w.split_at_mut(i * dk);
            let wi = &mut rest_w[..dk];
            let scale = beta[i] * gamma[i].exp();
            for (o, ki) in wi.iter_mut().zip(k(i)) {
                *o = scale * ki;
            }
            for j in 0..i {
                let aij = a[i * l + j];
                for (o, uj) in ui.iter_mut().zip(&done_u[j * dv..(j + 1) * dv]) {
                    *o -= aij * uj;
                }
                for (o, wj) in wi.iter_mut().zip(&done_w[j * dk..(j + 1) * dk]) {
                    *o -= aij * wj;
                }
            }
        }
        // V' = U − W S, [L, Dv] (reuses u).
        let mut vp = u;
        for i in 0..l {
            let row = &mut vp[i * dv..(i + 1) * dv];
            for (c, wc) in w[i * dk..(i + 1) * dk].iter().enumerate() {
                for (o, sc) in row.iter_mut().zip(&s[c * dv..(c + 1) * dv]) {
                    *o -= wc * sc;
                }
            }
        }
        // Outputs.
        for i in 0..l {
            let o = &mut out[(start + i) * dv..(start + i + 1) * dv];
            let qi = q(i);
            let eg = gamma[i].exp();
            for (c, qc) in qi.iter().enumerate() {
                let f = eg * qc;
                for (oj, sc) in o.iter_mut().zip(&s[c * dv..(c + 1) * dv]) {
                    *oj += f * sc;
                }
            }
            for j in 0..=i {
                let f = dot(qi, k(j)) * (gamma[i] - gamma[j]).exp();
                for (oj, vj) in o.iter_mut().zip(&vp[j * dv..(j + 1) * dv]) {
                    *oj += f * vj;
                }
            }
        }
        // State update.
        let g_last = gamma[l - 1];
        let decay = g_last.exp();
        for e in s.iter_mut() {
            *e *= decay;
        }
        for j in 0..l {
            let f = (g_last - gamma[j]).exp();
            let vj = &vp[j * dv..(j + 1) * dv];
            for (c, kc) in k(j).iter().enumerate() {
                let fk = f * kc;
                for (sc, vv) in s[c * dv..(c + 1) * dv].iter_mut().zip(vj) {
                    *sc += fk * vv;
                }
            }
        }
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
                let o1 = gated_delta_rule_recurrent(shape, x, &mut s1);
                let o2 = gated_delta_rule_chunked(shape, x, &mut s2, 16);
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
