//! Element-wise activations and arithmetic.

use crate::Cpu;
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// `ln(1 + eˣ)`, switching to the identity above 20 as PyTorch's `softplus` does (threshold 20).
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 { x } else { x.exp().ln_1p() }
}

/// SwiGLU: `gate ← silu(gate) ⊙ up`.
///
/// # Panics
/// If the lengths differ.
pub fn swiglu(cpu: Cpu, gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "swiglu: gate and up differ in length");
    #[cfg(target_arch = "x86_64")]
    if cpu.isa() == crate::kernels::Isa::Avx512 {
        // SAFETY: `Cpu` checked the AVX-512 features.
        unsafe { swiglu_avx512(gate, up) };
        return;
    }
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// [`swiglu`] 16 lanes at a time with the vectorised SiLU (`kernels::vmath::silu`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn swiglu_avx512(gate: &mut [f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let n = gate.len();
    let mut i = 0;
    while i < n {
        let m: __mmask16 = if n - i >= 16 {
            0xFFFF
        } else {
            (1u16 << (n - i)) - 1
        };
        // SAFETY: the mask covers only elements `i .. min(i + 16, n)` of both slices.
        unsafe {
            let g = _mm512_maskz_loadu_ps(m, gate.as_ptr().add(i));
            let u = _mm512_maskz_loadu_ps(m, up.as_ptr().add(i));
            let v = _mm512_mul_ps(crate::kernels::vmath::silu(g), u);
            _mm512_mask_storeu_ps(gate.as_mut_ptr().add(i), m, v);
        }
        i += 16;
    }
}

/// `dst += src`.
///
/// # Panics
/// If the lengths differ.
pub fn add_assign(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "add_assign: lengths differ");
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Numerically stable softmax in place. An all-`-inf` input becomes all zeros.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_closed_forms() {
        for x in [-30.0f32, -2.5, 0.0, 0.7, 19.0, 25.0] {
            let s = 1.0 / (1.0 + f64::from(-x).exp());
            assert!((f64::from(sigmoid(x)) - s).abs() < 1e-6);
            assert!((f64::from(silu(x)) - f64::from(x) * s).abs() < 1e-5);
            let sp = (1.0 + f64::from(x).exp()).ln();
            assert!(
                (f64::from(softplus(x)) - sp).abs() < 1e-5 * sp.max(1.0),
                "softplus({x})"
            );
        }
    }

    /// The vectorised SwiGLU agrees with the scalar one within 4 ulp-scale relative error
    /// (exp ≤ 2 ulp, one division and two multiplications), tails shorter than 16 included.
    #[test]
    fn swiglu_tiers_agree() {
        let n = 1000 + 7;
        let g: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 211) as f32 - 105.0) * 0.13)
            .collect();
        let u: Vec<f32> = (0..n)
            .map(|i| ((i * 11 % 97) as f32 - 48.0) * 0.05)
            .collect();
        let mut fast = g.clone();
        swiglu(Cpu::default(), &mut fast, &u);
        for ((x, y), f) in g.iter().zip(&u).zip(&fast) {
            let want = silu(*x) * y;
            assert!(
                (f - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "swiglu({x}, {y}) = {f}, scalar {want}"
            );
        }
    }

    #[test]
    fn softmax_sums_to_one_and_handles_masked_rows() {
        let mut x = [1.0, 2.0, f32::NEG_INFINITY, 3.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[2], 0.0);
        assert!(x[3] > x[1] && x[1] > x[0]);
        let mut masked = [f32::NEG_INFINITY; 3];
        softmax(&mut masked);
        assert_eq!(masked, [0.0; 3]);
    }
}
