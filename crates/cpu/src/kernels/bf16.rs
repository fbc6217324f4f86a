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

use super::MAX_TOKENS;
use super::act::Bf16Acts;

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

/// Most weight rows one kernel call takes: they share every activation load.
pub const ROWS: usize = 4;

/// Values at the start of a row of `w` before its first 64-byte boundary, when every row of
/// a matrix with rows of `row_bytes` starts at the same offset in a cache line (else 0).
pub fn lead(w: &[u8], row_bytes: usize) -> usize {
    if row_bytes.is_multiple_of(64) {
        (64 - w.as_ptr() as usize % 64) % 64 / 2
    } else {
        0
    }
}

/// `R ≤ ROWS` BF16 weight rows (`w`, `K` values each, as stored) against `M ≤ 4` BF16
/// activation rows (`K` values each at least): `out[j][i] = w[j] · a[i]`.
///
/// Each 32 values cost `R + M` loads for `R · M` `vdpbf16ps` into as many independent
/// accumulators, so a prefill tile of 4 × 4 reads each activation once per four weight rows
/// (decode, one token, takes one weight row per call: see [`super::Plan::rows_per_call`]).
/// The first `lead` values
/// ([`lead`]) go first, masked, so that the other weight loads never straddle two cache lines
/// (GGUF aligns tensors to 32 bytes only); [`super::act::Bf16Acts`] places the activations at
/// the same offset. Every (weight row, activation row) pair is summed in the same order
/// whatever `R` and `M` are, so results do not depend on how tokens are grouped.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn dot_avx512<const R: usize, const M: usize>(
    w: [&[u8]; R],
    a: [&[u16]; M],
    lead: usize,
) -> [[f32; M]; R] {
    let k = w[0].len() / 2;
    for j in 0..R {
        debug_assert_eq!(w[j].len(), 2 * k);
    }
    for row in a {
        debug_assert!(row.len() >= k);
    }
    let mut acc = [[_mm512_setzero_ps(); M]; R];
    let step = |acc: &mut [[__m512; M]; R], i: usize, n: usize| {
        // SAFETY: `i + n ≤ K`, and the masks read only those `n ≤ 32` values of each row
        // (the loads are plain when `n = 32`).
        unsafe {
            let (wv, av): ([__m512bh; R], [__m512bh; M]) = if n == 32 {
                (
                    std::array::from_fn(|j| {
                        bh(_mm512_loadu_si512(w[j].as_ptr().add(2 * i).cast()))
                    }),
                    std::array::from_fn(|t| bh(_mm512_loadu_si512(a[t].as_ptr().add(i).cast()))),
                )
            } else {
                let m = (1u32 << n) - 1;
                (
                    std::array::from_fn(|j| {
                        bh(_mm512_maskz_loadu_epi16(m, w[j].as_ptr().add(2 * i).cast()))
                    }),
                    std::array::from_fn(|t| {
                        bh(_mm512_maskz_loadu_epi16(m, a[t].as_ptr().add(i).cast()))
                    }),
                )
            };
            for t in 0..M {
                for j in 0..R {
                    acc[j][t] = _mm512_dpbf16_ps(acc[j][t], wv[j], av[t]);
                }
            }
        }
    };
    let mut i = lead.min(k);
    if i > 0 {
        step(&mut acc, 0, i);
    }
    while i < k {
        let n = (k - i).min(32);
        step(&mut acc, i, n);
        i += n;
    }
    let mut out = [[0.0f32; M]; R];
    for j in 0..R {
        for t in 0..M {
            out[j][t] = _mm512_reduce_add_ps(acc[j][t]);
        }
    }
    out
}

/// `out[j][i] = rows[j] · activation row t0 + i` for `j < rows.len() ≤ ROWS` and
/// `i < g ≤ MAX_TOKENS`, the activations in groups of up to four.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn rows_avx512(
    rows: &[&[u8]],
    a: &Bf16Acts,
    t0: usize,
    g: usize,
    out: &mut [[f32; MAX_TOKENS]],
) {
    let lead = a.lead();
    let mut t = t0;
    while t < t0 + g {
        let m = (t0 + g - t).min(4);
        macro_rules! tile {
            ($r:literal, $m:literal) => {{
                // SAFETY: forwarded from the caller.
                let res = unsafe {
                    dot_avx512::<$r, $m>(
                        std::array::from_fn(|j| rows[j]),
                        std::array::from_fn(|i| a.row(t + i)),
                        lead,
                    )
                };
                for (o, r) in out.iter_mut().zip(res) {
                    o[t - t0..t - t0 + $m].copy_from_slice(&r);
                }
            }};
        }
        match (rows.len(), m) {
            (1, 1) => tile!(1, 1),
            (1, 2) => tile!(1, 2),
            (1, 3) => tile!(1, 3),
            (1, 4) => tile!(1, 4),
            (2, 1) => tile!(2, 1),
            (2, 2) => tile!(2, 2),
            (2, 3) => tile!(2, 3),
            (2, 4) => tile!(2, 4),
            (3, 1) => tile!(3, 1),
            (3, 2) => tile!(3, 2),
            (3, 3) => tile!(3, 3),
            (3, 4) => tile!(3, 4),
            (4, 1) => tile!(4, 1),
            (4, 2) => tile!(4, 2),
            (4, 3) => tile!(4, 3),
            (4, 4) => tile!(4, 4),
            (r, m) => unreachable!("{r} weight rows × {m} activation rows"),
        }
        t += m;
    }
}
