//! One token of the gated delta rule for one value head, fused into two passes over the state.
//!
//! With state `S [Dk, Dv]`, decay `a = e^g` and `β`:
//!
//! ```text
//! pass 1:  u = Sᵀk                       δ = β (v − a·u)       (a·Sᵀk = (aS)ᵀk)
//! pass 2:  S ← a·S + k ⊗ δ               o = Sᵀq (new S)
//! ```
//!
//! The unfused form reads the state three times (decay, `Sᵀk`, update); at 1 MB of state per
//! layer in the small models that traffic is a visible share of a decode step.

use super::Isa;

/// Reference (scalar) form of [`step`].
pub fn step_ref(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    decay: f32,
    beta: f32,
    o: &mut [f32],
) {
    let dv = v.len();
    let mut delta = vec![0.0f32; dv];
    for (i, ki) in k.iter().enumerate() {
        for (dj, sij) in delta.iter_mut().zip(&s[i * dv..(i + 1) * dv]) {
            *dj += ki * sij;
        }
    }
    for (dj, vj) in delta.iter_mut().zip(v) {
        *dj = beta * (vj - decay * *dj);
    }
    o.fill(0.0);
    for (i, (ki, qi)) in k.iter().zip(q).enumerate() {
        let row = &mut s[i * dv..(i + 1) * dv];
        for ((sij, dj), oj) in row.iter_mut().zip(&delta).zip(o.iter_mut()) {
            *sij = decay * *sij + ki * dj;
            *oj += qi * *sij;
        }
    }
}

/// One delta-rule step for one head: updates `s` (`[Dk, Dv]`) and writes `o` (`[Dv]`).
pub fn step(
    isa: Isa,
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    decay: f32,
    beta: f32,
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 && v.len().is_multiple_of(16) && v.len() <= 256 {
        // SAFETY: `isa` is Avx512 only when the CPU has the features; shapes checked above and
        // by the caller (`s.len() == k.len() * v.len()`).
        unsafe { step_avx512(s, q, k, v, decay, beta, o) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx2 { .. }) && v.len().is_multiple_of(8) && v.len() <= 256 {
        // SAFETY: `isa` is Avx2 only when the CPU has AVX2 and FMA; shapes as above.
        unsafe { step_avx2(s, q, k, v, decay, beta, o) };
        return;
    }
    let _ = isa;
    step_ref(s, q, k, v, decay, beta, o);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn step_avx512(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    decay: f32,
    beta: f32,
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    const MAXV: usize = 16; // up to 256 values = 16 vectors
    let dv = v.len();
    let nvec = dv / 16;
    assert!(s.len() == k.len() * dv && q.len() == k.len() && o.len() == dv);
    let mut u = [_mm512_setzero_ps(); MAXV];
    let sp = s.as_mut_ptr();
    // SAFETY: every access is inside `s`, `v` or `o` (lengths asserted above).
    unsafe {
        for (i, &ki) in k.iter().enumerate() {
            let kv = _mm512_set1_ps(ki);
            let row = sp.add(i * dv);
            for j in 0..nvec {
                u[j] = _mm512_fmadd_ps(kv, _mm512_loadu_ps(row.add(16 * j)), u[j]);
            }
        }
        let (a, b) = (_mm512_set1_ps(decay), _mm512_set1_ps(beta));
        let mut delta = [_mm512_setzero_ps(); MAXV];
        for j in 0..nvec {
            let vj = _mm512_loadu_ps(v.as_ptr().add(16 * j));
            delta[j] = _mm512_mul_ps(b, _mm512_fnmadd_ps(a, u[j], vj));
        }
        let mut acc = [_mm512_setzero_ps(); MAXV];
        for (i, (&ki, &qi)) in k.iter().zip(q).enumerate() {
            let (kv, qv) = (_mm512_set1_ps(ki), _mm512_set1_ps(qi));
            let row = sp.add(i * dv);
            for j in 0..nvec {
                let p = row.add(16 * j);
                let sn = _mm512_fmadd_ps(kv, delta[j], _mm512_mul_ps(a, _mm512_loadu_ps(p)));
                _mm512_storeu_ps(p, sn);
                acc[j] = _mm512_fmadd_ps(qv, sn, acc[j]);
            }
        }
        for j in 0..nvec {
            _mm512_storeu_ps(o.as_mut_ptr().add(16 * j), acc[j]);
        }
    }
}

/// [`step_avx512`] at 8 lanes: the same operations on every element, in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn step_avx2(
    s: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    decay: f32,
    beta: f32,
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    const MAXV: usize = 32; // up to 256 values = 32 vectors
    let dv = v.len();
    let nvec = dv / 8;
    assert!(s.len() == k.len() * dv && q.len() == k.len() && o.len() == dv);
    let mut u = [_mm256_setzero_ps(); MAXV];
    let sp = s.as_mut_ptr();
    // SAFETY: every access is inside `s`, `v` or `o` (lengths asserted above).
    unsafe {
        for (i, &ki) in k.iter().enumerate() {
            let kv = _mm256_set1_ps(ki);
            let row = sp.add(i * dv);
            for j in 0..nvec {
                u[j] = _mm256_fmadd_ps(kv, _mm256_loadu_ps(row.add(8 * j)), u[j]);
            }
        }
        let (a, b) = (_mm256_set1_ps(decay), _mm256_set1_ps(beta));
        let mut delta = [_mm256_setzero_ps(); MAXV];
        for j in 0..nvec {
            let vj = _mm256_loadu_ps(v.as_ptr().add(8 * j));
            delta[j] = _mm256_mul_ps(b, _mm256_fnmadd_ps(a, u[j], vj));
        }
        let mut acc = [_mm256_setzero_ps(); MAXV];
        for (i, (&ki, &qi)) in k.iter().zip(q).enumerate() {
            let (kv, qv) = (_mm256_set1_ps(ki), _mm256_set1_ps(qi));
            let row = sp.add(i * dv);
            for j in 0..nvec {
                let p = row.add(8 * j);
                let sn = _mm256_fmadd_ps(kv, delta[j], _mm256_mul_ps(a, _mm256_loadu_ps(p)));
                _mm256_storeu_ps(p, sn);
                acc[j] = _mm256_fmadd_ps(qv, sn, acc[j]);
            }
        }
        for j in 0..nvec {
            _mm256_storeu_ps(o.as_mut_ptr().add(8 * j), acc[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every SIMD tier the CPU has vs scalar: the same operations, FMA-contracted in one and
    /// not the other (`u`, `o` sum Dk = 64 terms, with cancellation): 1e-5 of the largest
    /// magnitude involved.
    #[test]
    fn fused_step_tiers_agree() {
        let (dk, dv) = (64, 48);
        let f = |n: usize, m: f32| (0..n).map(|i| (i as f32 * m).sin()).collect::<Vec<f32>>();
        let (q, k, v) = (f(dk, 0.37), f(dk, 0.11), f(dv, 0.53));
        for isa in super::super::tiers() {
            let mut s1 = f(dk * dv, 0.013);
            let mut s2 = s1.clone();
            let (mut o1, mut o2) = (vec![0.0; dv], vec![0.0; dv]);
            for _ in 0..3 {
                step_ref(&mut s1, &q, &k, &v, 0.9, 0.7, &mut o1);
                step(isa, &mut s2, &q, &k, &v, 0.9, 0.7, &mut o2);
            }
            let scale = s1.iter().chain(&o1).fold(1.0f32, |m, x| m.max(x.abs()));
            for (a, b) in s1.iter().zip(&s2).chain(o1.iter().zip(&o2)) {
                assert!(
                    (a - b).abs() < 1e-5 * scale,
                    "{isa:?}: {a} vs {b} (scale {scale})"
                );
            }
        }
    }
}
