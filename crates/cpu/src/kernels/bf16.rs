//! BF16 weights against BF16 activations with AVX-512 BF16: the default-precision path for
//! BF16 weights (see [`super::MatmulPrecision`]).
//!
//! The activations are rounded to BF16 once per matmul ([`round_avx512`], `vcvtne2ps2bf16`:
//! to nearest, ties to even), so a weight row and an activation row are both 2 bytes a value
//! and `vdpbf16ps` multiplies 32 pairs per instruction, adding each lane's two products into an
//! `f32` accumulator. A BF16 × BF16 product has at most 16 significant bits, so every product
//! is exact in `f32`; the only roundings are the activations' and the `f32` sums'. This halves
//! the loads and the multiply instructions per value against widening the weights to `f32`.
//!
//! Every function here requires AVX-512 F/BW and BF16; they are reached only when
//! [`super::has_avx512_bf16`] confirmed them.

use std::arch::x86_64::*;

/// 32 BF16 values as the operand type of `vdpbf16ps`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
fn bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 64 bytes, and any bit pattern is a valid vector of BF16 values.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// Rounds `x` to BF16 into `out` (`out.len() ≥ x.len()`), zeroing `out` past `x.len()`.
/// Bit for bit [`super::act::to_bf16`].
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn round_avx512(x: &[f32], out: &mut [u16]) {
    assert!(out.len() >= x.len());
    let mut i = 0;
    while i < out.len() {
        let n = (x.len().saturating_sub(i)).min(32);
        let m = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
        let (lo, hi) = (m as u16, (m >> 16) as u16);
        // SAFETY: the masks read only `x[i..i + n]`; a store of 32 values would run past `out`
        // only where `out` ends inside them, which the store mask excludes.
        unsafe {
            let p = x.as_ptr().add(i.min(x.len()));
            let a = _mm512_maskz_loadu_ps(lo, p);
            let b = _mm512_maskz_loadu_ps(hi, p.add(16.min(n)));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
            let left = (out.len() - i).min(32);
            let sm = if left == 32 {
                u32::MAX
            } else {
                (1u32 << left) - 1
            };
            _mm512_mask_storeu_epi16(out.as_mut_ptr().add(i).cast(), sm, v);
        }
        i += 32;
    }
}

/// One BF16 weight row (`w`, `K` values as stored) against `N ≤ 8` BF16 activation rows, each
/// at least `K` rounded up to 32 values long and zero past `K` (as [`super::act::Bf16Acts`]
/// stores them). Two accumulators per row: 64 values per iteration, so consecutive
/// `vdpbf16ps` of one row do not wait on each other.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn dot_avx512<const N: usize>(w: &[u8], a: [&[u16]; N]) -> [f32; N] {
    let k = w.len() / 2;
    let wp = w.as_ptr().cast::<u16>();
    for row in a {
        debug_assert!(row.len() >= k.next_multiple_of(32));
    }
    let mut acc0 = [_mm512_setzero_ps(); N];
    let mut acc1 = [_mm512_setzero_ps(); N];
    let mut i = 0;
    while i + 64 <= k {
        // SAFETY: `i + 64 ≤ K`, and every activation row holds at least `K` values.
        unsafe {
            let w0 = bh(_mm512_loadu_si512(wp.add(i).cast()));
            let w1 = bh(_mm512_loadu_si512(wp.add(i + 32).cast()));
            for t in 0..N {
                let ap = a[t].as_ptr().add(i);
                acc0[t] = _mm512_dpbf16_ps(acc0[t], w0, bh(_mm512_loadu_si512(ap.cast())));
                acc1[t] = _mm512_dpbf16_ps(acc1[t], w1, bh(_mm512_loadu_si512(ap.add(32).cast())));
            }
        }
        i += 64;
    }
    while i < k {
        let n = (k - i).min(32);
        let m = if n == 32 { u32::MAX } else { (1u32 << n) - 1 };
        // SAFETY: the mask reads only the `n` remaining weights; `i` is a multiple of 32 below
        // `K`, so the activation rows (padded to a multiple of 32) hold `i + 32` values, the
        // ones past `K` zero, and they meet zeroed weights.
        unsafe {
            let wv = bh(_mm512_maskz_loadu_epi16(m, wp.add(i).cast()));
            for t in 0..N {
                let av = bh(_mm512_loadu_si512(a[t].as_ptr().add(i).cast()));
                acc0[t] = _mm512_dpbf16_ps(acc0[t], wv, av);
            }
        }
        i += 32;
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
    }
    out
}
