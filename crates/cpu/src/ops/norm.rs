//! Normalisations. Weights arrive as *effective* multipliers: the model loader has already
//! turned Qwen's zero-centred `(1 + w)` convention into plain `w` (once, at load time), so every
//! op here is a plain RMSNorm.
use crate::Cpu;

use super::elementwise::silu;

/// RMSNorm of each `w.len()`-wide group of `x` in place: `x / sqrt(mean(x²) + eps) · w`.
/// Groups are consecutive (a row of `[T, H]`, or one head of `[T, heads·D]`).
///
/// # Panics
/// If `x.len()` is not a multiple of `w.len()`.
pub fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let d = w.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "rms_norm: {} values in groups of {d}",
        x.len()
    );
    for group in x.chunks_exact_mut(d) {
        let inv = 1.0 / (mean_square(group) + eps).sqrt();
        for (v, wi) in group.iter_mut().zip(w) {
            *v = *v * inv * wi;
        }
    }
}

/// Gated RMSNorm of Gated DeltaNet's output, per `w.len()`-wide head:
/// `x / sqrt(mean(x²) + eps) · w · silu(z)`.
///
/// # Panics
/// If the shapes disagree.
pub fn gated_rms_norm(cpu: Cpu, x: &mut [f32], z: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    assert!(
        d > 0 && x.len().is_multiple_of(d) && x.len() == z.len(),
        "gated_rms_norm: shapes disagree"
    );
    let avx512 = cpu.isa() == crate::kernels::Isa::Avx512 && d.is_multiple_of(16);
    for (group, gate) in x.chunks_exact_mut(d).zip(z.chunks_exact(d)) {
        let inv = 1.0 / (mean_square(group) + eps).sqrt();
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: `Cpu` checked the AVX-512 features; `d` is a multiple of 16.
            unsafe { gate_avx512(group, gate, w, inv) };
            continue;
        }
        let _ = avx512;
        for ((v, wi), zi) in group.iter_mut().zip(w).zip(gate) {
            *v = *v * inv * wi * silu(*zi);
        }
    }
}

/// `v ← v · inv · w · silu(z)` 16 lanes at a time (same order of products as the scalar form).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn gate_avx512(x: &mut [f32], z: &[f32], w: &[f32], inv: f32) {
    use std::arch::x86_64::*;
    let vi = _mm512_set1_ps(inv);
    for i in (0..x.len()).step_by(16) {
        // SAFETY: the three slices have the same length, a multiple of 16.
        unsafe {
            let v = _mm512_loadu_ps(x.as_ptr().add(i));
            let s = crate::kernels::vmath::silu(_mm512_loadu_ps(z.as_ptr().add(i)));
            let wv = _mm512_loadu_ps(w.as_ptr().add(i));
            let r = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(v, vi), wv), s);
            _mm512_storeu_ps(x.as_mut_ptr().add(i), r);
        }
    }
}

/// L2 normalisation of each `d`-wide group in place: `x / sqrt(Σx² + eps)`
/// (the epsilon placement of the reference implementation).
///
/// # Panics
/// If `x.len()` is not a multiple of `d`.
pub fn l2_norm(x: &mut [f32], d: usize, eps: f32) {
    assert!(
        d > 0 && x.len().is_multiple_of(d),
        "l2_norm: {} values in groups of {d}",
        x.len()
    );
    for group in x.chunks_exact_mut(d) {
        let inv = 1.0 / (group.iter().map(|v| v * v).sum::<f32>() + eps).sqrt();
        for v in group.iter_mut() {
            *v *= inv;
        }
    }
}

fn mean_square(x: &[f32]) -> f32 {
    x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_normalises_each_group() {
        let mut x = vec![3.0, 4.0, 1.0, 1.0];
        rms_norm(&mut x, &[1.0, 2.0], 0.0);
        let r = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / r).abs() < 1e-6 && (x[1] - 8.0 / r).abs() < 1e-6);
        assert!((x[2] - 1.0).abs() < 1e-6 && (x[3] - 2.0).abs() < 1e-6);
    }

    #[test]
    fn l2_norm_gives_unit_vectors() {
        let mut x = vec![3.0, 4.0, 0.0, 2.0];
        l2_norm(&mut x, 2, 0.0);
        assert_eq!(x, vec![0.6, 0.8, 0.0, 1.0]);
    }

    #[test]
    fn gated_norm_applies_silu_gate() {
        let mut x = vec![2.0, 2.0];
        gated_rms_norm(Cpu::default(), &mut x, &[0.0, 1.0], &[1.0, 1.0], 0.0);
        assert_eq!(x[0], 0.0);
        assert!((x[1] - silu(1.0)).abs() < 1e-6);
    }
}
