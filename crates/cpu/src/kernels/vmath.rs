//! Vectorised elementary functions for the `f32` paths (softmax, decays, gates).
//!
//! [`exp`] is `e^x` 16 lanes at a time: `x = n ln2 + r` with `|r| ≤ ln2/2` (`ln2` split in two
//! parts so `r` is exact to `f32`), a degree-6 minimax polynomial for `e^r` (Cephes' `expf`
//! coefficients) and `_mm512_scalef_ps` for `2^n`, which also gives 0 for large negative `x` and
//! `+inf` above `ln(f32::MAX)` without special cases. Measured against `f32::exp` over
//! `[-104, 89]`: at most 2 ulp (test below); the results stay finite and non-negative.
//!
//! [`exp_slice`] applies it in place to a slice, with the scalar `f32::exp` as the reference
//! tier (and for the tail shorter than 16).

use super::Isa;

/// `x ← e^x` for every element.
pub fn exp_slice(isa: Isa, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: `isa()` (or a test) confirmed the AVX-512 features.
        unsafe { exp_slice_avx512(x) };
        return;
    }
    let _ = isa;
    for v in x.iter_mut() {
        *v = v.exp();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,fma")]
unsafe fn exp_slice_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        // SAFETY: `c` holds 16 `f32`.
        unsafe {
            let v = _mm512_loadu_ps(c.as_ptr());
            _mm512_storeu_ps(c.as_mut_ptr(), exp(v));
        }
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let m: __mmask16 = (1u16 << rest.len()) - 1;
        // SAFETY: the mask covers only the `rest.len()` elements.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, rest.as_ptr());
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), m, exp(v));
        }
    }
}

/// `e^x` for 16 lanes (see the module docs for the method and accuracy).
///
/// # Safety
/// The CPU must have AVX-512 F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
pub unsafe fn exp(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Below −104 the result is 0 in f32 (denormals end near −103.97); above 89 it is +inf.
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-104.0)),
        _mm512_set1_ps(89.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    // r = x − n·ln2, ln2 = 0.693359375 − 2.12194440e-4 (the first part exact in 10 bits).
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        0.166_666_65,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(e, n)
}

/// `x · σ(x) = x / (1 + e^{−x})` for 16 lanes, with [`exp`] (the scalar form is
/// `ops::silu`; the two differ by the exp's ≤ 2 ulp and the division's rounding).
///
/// # Safety
/// The CPU must have AVX-512 F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
pub unsafe fn silu(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let one = _mm512_set1_ps(1.0);
    // SAFETY: forwarded from the caller.
    let e = unsafe { exp(_mm512_sub_ps(_mm512_setzero_ps(), x)) };
    _mm512_mul_ps(x, _mm512_div_ps(one, _mm512_add_ps(one, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_diff(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    /// The AVX-512 exp is within 2 ulp of `f32::exp` over its whole range (normal results),
    /// and exactly 0 / +inf / 1 at the edges.
    #[test]
    fn exp_matches_std_within_2_ulp() {
        if !super::super::has_avx512() {
            return;
        }
        let n = 200_001;
        let mut xs: Vec<f32> = (0..n)
            .map(|i| -104.0 + 193.0 * i as f32 / (n - 1) as f32)
            .collect();
        xs.extend([
            0.0,
            -0.0,
            1e-30,
            -1e-30,
            f32::NEG_INFINITY,
            88.7,
            90.0,
            -87.0,
        ]);
        let mut got = xs.clone();
        exp_slice(Isa::Avx512, &mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            if want.is_normal() || want == 0.0 || want.is_infinite() {
                if want >= f32::MIN_POSITIVE {
                    assert!(ulp_diff(*g, want) <= 2, "exp({x}) = {g}, std {want}");
                } else if want.is_infinite() {
                    assert_eq!(*g, f32::INFINITY, "exp({x})");
                } else {
                    assert!(*g < 1e-37, "exp({x}) = {g}, std {want}");
                }
            } else {
                // Denormal results: absolute error below the smallest normal.
                assert!(
                    (g - want).abs() < f32::MIN_POSITIVE,
                    "exp({x}) = {g}, std {want}"
                );
            }
        }
        let mut one = [0.0f32; 3];
        exp_slice(Isa::Avx512, &mut one);
        assert_eq!(one, [1.0; 3]);
    }

    #[test]
    fn scalar_tier_is_std() {
        let mut x = [-1.0f32, 0.5, 3.0];
        exp_slice(Isa::Scalar, &mut x);
        assert_eq!(x, [(-1.0f32).exp(), 0.5f32.exp(), 3.0f32.exp()]);
    }
}
