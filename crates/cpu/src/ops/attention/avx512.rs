//! The AVX-512 tier of causal attention: one task's online-softmax recurrence (see the parent
//! module) with register-blocked products.
//!
//! * `S = Q Kᵀ`: four query vectors × four keys in 16 accumulators, each summing its products
//!   lane-wise over `D` in order; [`reduce16`] then folds all 16 at once with the same halving
//!   tree for each (so a score does not depend on its slot in the block).
//! * softmax: 64 scores of a vector at a time, masked to its visible keys, with
//!   [`vmath::exp`].
//! * `O = O·α + P V`: four query vectors × 64 output columns in 16 accumulators, each row of
//!   `V` loaded once per four vectors, accumulated over keys in order.
//!
//! Query vectors are padded to a multiple of four with a zero vector that sees no key.

use std::arch::x86_64::*;

use half::{bf16, f16};
use qinfer_cache::KvRows;
use qinfer_quant::q8_0::{self, BlockQ8_0};

use super::{BLOCK, Decoded, Partial, Task};
use crate::kernels::vmath;

/// Runs task `t`'s chunk into `part` (reset; `[M, D]` accumulators, unnormalised).
///
/// # Safety
/// The CPU must have AVX-512 F/VL/BW/DQ and FMA; `D` must be a multiple of 16.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,fma")]
pub(super) unsafe fn attend(t: &Task<'_>, part: &mut Partial) {
    let d = t.shape.head_dim;
    let g = t.group();
    let vectors = t.n * g;
    let padded = vectors.next_multiple_of(4);
    assert!(d.is_multiple_of(16) && part.o.len() == vectors * d);
    let zero = vec![0.0f32; d];
    let q: Vec<*const f32> = (0..padded)
        .map(|v| if v < vectors { t.query(v) } else { &zero }.as_ptr())
        .collect();
    let visible: Vec<usize> = (0..padded)
        .map(|v| if v < vectors { t.visible(v / g) } else { 0 })
        .collect();
    // Scores, then probabilities, of the current block: [padded, BLOCK].
    let mut s = vec![0.0f32; padded * BLOCK];
    let mut acc = vec![0.0f32; padded * d];
    let mut m = vec![f32::NEG_INFINITY; padded];
    let mut l = vec![0.0f32; padded];
    let mut alpha = vec![1.0f32; padded];
    // Key and value rows of the current block; keys past its end read zeros.
    let mut kp = [zero.as_ptr(); BLOCK];
    let mut vp = [zero.as_ptr(); BLOCK];
    // The block's rows as stored (the first `nk`), and the next block's (the first `next_nk`),
    // fetched into L2 while this block is widened so that its reads overlap this block's sums.
    let none = (Src::F32(zero.as_ptr()), Src::F32(zero.as_ptr()));
    let mut srcs = [none; BLOCK];
    let mut next = [none; BLOCK];
    let span = t.visible(t.n - 1);
    let scale = _mm512_set1_ps(t.shape.scale);
    // Keys of the block at `b0` that any of the four vectors from `r0` sees.
    let seen = |visible: &[usize], b0: usize| {
        let last = visible.iter().copied().max().unwrap_or(0);
        last.saturating_sub(b0).min(BLOCK)
    };
    // Rows of the current block not stored as `f32`, decoded.
    let mut dec = Decoded::new(d);
    // The rows of the block at `b0` as stored, into `out`; returns how many there are.
    let mut locate = |b0: usize, out: &mut [(Src, Src); BLOCK]| {
        let nk = span.saturating_sub(b0).min(BLOCK);
        t.locate_block(b0, nk, &mut dec.rows);
        for (src, &(k, v, r)) in out.iter_mut().zip(&dec.rows) {
            *src = (Src::of(k, t.head_at(r)), Src::of(v, t.head_at(r)));
        }
        nk
    };
    let mut next_nk = locate(t.lo, &mut next);
    for b0 in (t.lo..span).step_by(BLOCK) {
        let nk = next_nk;
        srcs[..nk].copy_from_slice(&next[..nk]);
        next_nk = locate(b0 + BLOCK, &mut next);
        for j in 0..BLOCK {
            if j >= nk {
                (kp[j], vp[j]) = (zero.as_ptr(), zero.as_ptr());
                continue;
            }
            if let Some(&(k, v)) = srcs[..nk].get(j + AHEAD) {
                k.prefetch::<_MM_HINT_T0>(d);
                v.prefetch::<_MM_HINT_T0>(d);
            }
            if let Some(&(k, v)) = next[..next_nk].get(j) {
                k.prefetch::<_MM_HINT_T1>(d);
                v.prefetch::<_MM_HINT_T1>(d);
            }
            kp[j] = widen(srcs[j].0, &mut dec.k[j * d..(j + 1) * d]);
            vp[j] = widen(srcs[j].1, &mut dec.v[j * d..(j + 1) * d]);
        }
        for r0 in (0..padded).step_by(4) {
            let keys = seen(&visible[r0..r0 + 4], b0);
            for j0 in (0..keys).step_by(4) {
                // SAFETY: every pointer is to a row of `d` floats.
                let f = unsafe { dots4x4(&q[r0..r0 + 4], &kp[j0..j0 + 4], d) };
                let f = _mm512_mul_ps(f, scale);
                for r in 0..4 {
                    let at = (r0 + r) * BLOCK + j0;
                    let lanes = match r {
                        0 => _mm512_extractf32x4_ps::<0>(f),
                        1 => _mm512_extractf32x4_ps::<1>(f),
                        2 => _mm512_extractf32x4_ps::<2>(f),
                        _ => _mm512_extractf32x4_ps::<3>(f),
                    };
                    // SAFETY: `j0 + 4 ≤ BLOCK`, so the four floats lie in row `r0 + r` of `s`.
                    unsafe { _mm_storeu_ps(s.as_mut_ptr().add(at), lanes) };
                }
            }
        }
        for v in 0..padded {
            let row = &mut s[v * BLOCK..(v + 1) * BLOCK];
            let n = visible[v].saturating_sub(b0).min(BLOCK);
            if n == 0 {
                row.fill(0.0);
                alpha[v] = 1.0;
                continue;
            }
            // SAFETY: `row` holds BLOCK = 64 floats.
            let (a, sum) = unsafe { softmax_block(row, n, &mut m[v]) };
            l[v] = l[v] * a + sum;
            alpha[v] = a;
        }
        for r0 in (0..padded).step_by(4) {
            let keys = seen(&visible[r0..r0 + 4], b0);
            if keys == 0 {
                continue;
            }
            let mut c0 = 0;
            // SAFETY: for every call, rows `r0..r0 + 4` of `acc` and `s` exist, the columns
            // `c0..c0 + 16·C` lie inside `D`, and `vp[..keys]` are value rows of `D` floats.
            unsafe {
                let (a, p, al) = (
                    acc.as_mut_ptr().add(r0 * d),
                    s.as_ptr().add(r0 * BLOCK),
                    &alpha[r0..r0 + 4],
                );
                while c0 + 64 <= d {
                    pv::<4>(a, d, p, &vp[..keys], al, c0);
                    c0 += 64;
                }
                match (d - c0) / 16 {
                    3 => pv::<3>(a, d, p, &vp[..keys], al, c0),
                    2 => pv::<2>(a, d, p, &vp[..keys], al, c0),
                    1 => pv::<1>(a, d, p, &vp[..keys], al, c0),
                    _ => {}
                }
            }
        }
    }
    part.o.copy_from_slice(&acc[..vectors * d]);
    part.m.copy_from_slice(&m[..vectors]);
    part.l.copy_from_slice(&l[..vectors]);
}

/// Where one kv head of one cached row starts, in its stored type.
#[derive(Clone, Copy)]
enum Src {
    F32(*const f32),
    F16(*const f16),
    Bf16(*const bf16),
    /// The row's blocks from the one holding the head's first value, which is value `first`
    /// of that block.
    Q8 {
        blocks: *const BlockQ8_0,
        first: usize,
    },
}

/// Rows fetched ahead of the one being widened.
const AHEAD: usize = 4;

impl Src {
    /// Asks for the cache lines of the head's `d` values, into the cache level `HINT` names.
    fn prefetch<const HINT: i32>(self, d: usize) {
        let (p, bytes) = match self {
            Src::F32(p) => (p.cast::<i8>(), 4 * d),
            Src::F16(p) => (p.cast(), 2 * d),
            Src::Bf16(p) => (p.cast(), 2 * d),
            Src::Q8 { blocks, .. } => (
                blocks.cast(),
                (d / q8_0::BLOCK + 1) * size_of::<BlockQ8_0>(),
            ),
        };
        for off in (0..bytes).step_by(64) {
            // SAFETY: prefetching is a hint; it never faults.
            unsafe { _mm_prefetch::<HINT>(p.wrapping_add(off)) };
        }
    }

    /// The head starting at value `at` of `rows`.
    ///
    /// # Panics
    /// If `at` is past the rows' end.
    fn of(rows: KvRows<'_>, at: usize) -> Src {
        match rows {
            KvRows::F32(x) => Src::F32(x[at..].as_ptr()),
            KvRows::F16(x) => Src::F16(x[at..].as_ptr()),
            KvRows::Bf16(x) => Src::Bf16(x[at..].as_ptr()),
            KvRows::Q8_0(x) => Src::Q8 {
                blocks: x[at / q8_0::BLOCK..].as_ptr(),
                first: at % q8_0::BLOCK,
            },
        }
    }

    /// Values `x..x + 16` of the head as `f32`, exactly as [`KvRows::decode`] gives them.
    ///
    /// # Safety
    /// The head must have `x + 16` values; for Q8_0, `first + x` a multiple of 16.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn load16(self, x: usize) -> __m512 {
        // SAFETY: the caller's bounds.
        unsafe {
            match self {
                Src::F32(p) => _mm512_loadu_ps(p.add(x)),
                Src::F16(p) => _mm512_cvtph_ps(_mm256_loadu_si256(p.add(x).cast())),
                Src::Bf16(p) => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256(p.add(x).cast())),
                )),
                Src::Q8 { blocks, first } => {
                    let e = first + x;
                    let b = &*blocks.add(e / q8_0::BLOCK);
                    let qs = _mm_loadu_si128(b.qs.as_ptr().add(e % q8_0::BLOCK).cast());
                    // The scale widened in a register (exact, as `f16::to_f32`), not by a
                    // call per 16 values.
                    _mm512_mul_ps(
                        _mm512_cvtph_ps(_mm256_set1_epi16(b.d.to_bits() as i16)),
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(qs)),
                    )
                }
            }
        }
    }
}

/// The head's values as `f32`: in place, or widened into `row`.
#[target_feature(enable = "avx512f,avx512bw")]
fn widen(src: Src, row: &mut [f32]) -> *const f32 {
    match src {
        Src::F32(p) => p,
        src => {
            for x in (0..row.len()).step_by(16) {
                // SAFETY: the head holds `row.len()` values, a multiple of 16.
                unsafe { _mm512_storeu_ps(row.as_mut_ptr().add(x), src.load16(x)) };
            }
            row.as_ptr()
        }
    }
}

/// The 16 dot products `q[r]·k[c]` (`r, c < 4`) of `d`-float rows, as lanes `4r + c`.
///
/// # Safety
/// Every pointer must address `d` readable floats, `d` a multiple of 16.
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn dots4x4(q: &[*const f32], k: &[*const f32], d: usize) -> __m512 {
    // a[4c + r] accumulates q[r]·k[c] lane-wise.
    let mut a = [_mm512_setzero_ps(); 16];
    let (q, k) = ([q[0], q[1], q[2], q[3]], [k[0], k[1], k[2], k[3]]);
    let mut x = 0;
    while x < d {
        // SAFETY: `x + 16 ≤ d`.
        let (qv, kv) = unsafe {
            (
                [
                    _mm512_loadu_ps(q[0].add(x)),
                    _mm512_loadu_ps(q[1].add(x)),
                    _mm512_loadu_ps(q[2].add(x)),
                    _mm512_loadu_ps(q[3].add(x)),
                ],
                [
                    _mm512_loadu_ps(k[0].add(x)),
                    _mm512_loadu_ps(k[1].add(x)),
                    _mm512_loadu_ps(k[2].add(x)),
                    _mm512_loadu_ps(k[3].add(x)),
                ],
            )
        };
        for c in 0..4 {
            for r in 0..4 {
                a[4 * c + r] = _mm512_fmadd_ps(qv[r], kv[c], a[4 * c + r]);
            }
        }
        x += 16;
    }
    reduce16(a)
}

/// Lane `4q + p` of the result is the sum of the 16 lanes of `a[4p + q]`, by the same halving
/// tree for every accumulator: lanes `i + 8`, then `i + 4`, `i + 2`, `i + 1` added to lane `i`.
#[target_feature(enable = "avx512f")]
#[inline]
fn reduce16(a: [__m512; 16]) -> __m512 {
    // 256-bit halves: b[m] = [a[2m] lo+hi, a[2m+1] lo+hi].
    let mut b = [_mm512_setzero_ps(); 8];
    for m in 0..8 {
        let (x, y) = (a[2 * m], a[2 * m + 1]);
        b[m] = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(x, y),
            _mm512_shuffle_f32x4::<0xEE>(x, y),
        );
    }
    // 128-bit quarters: quad j of c[m] holds a[4m + j], four partial sums.
    let mut c = [_mm512_setzero_ps(); 4];
    for m in 0..4 {
        let (x, y) = (b[2 * m], b[2 * m + 1]);
        c[m] = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xDD>(x, y),
        );
    }
    // Pairs: quad j of e[m] holds a[8m + j] then a[8m + 4 + j], two partial sums each.
    let mut e = [_mm512_setzero_ps(); 2];
    for m in 0..2 {
        let (x, y) = (_mm512_castps_pd(c[2 * m]), _mm512_castps_pd(c[2 * m + 1]));
        e[m] = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
        );
    }
    // Singles: quad j holds a[j], a[4 + j], a[8 + j], a[12 + j].
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(e[0], e[1]),
        _mm512_shuffle_ps::<0xDD>(e[0], e[1]),
    )
}

/// One vector's softmax step over a block: `row` (64 scores, the first `n` visible) becomes
/// `p = e^(s − m_new)` (0 where masked), `m` the new running maximum. Returns
/// `(α = e^(m_old − m_new), Σp)`.
///
/// # Safety
/// `row` must hold 64 floats; `1 ≤ n ≤ 64`.
#[target_feature(enable = "avx512f,avx512dq,fma")]
#[inline]
unsafe fn softmax_block(row: &mut [f32], n: usize, m: &mut f32) -> (f32, f32) {
    debug_assert!(row.len() == BLOCK && (1..=BLOCK).contains(&n));
    let mut x = [_mm512_setzero_ps(); 4];
    let mut mask = [0u16; 4];
    let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in 0..4 {
        let lanes = n.saturating_sub(16 * c).min(16);
        mask[c] = ((1u32 << lanes) - 1) as u16;
        // SAFETY: chunk `c` of the 64 floats.
        x[c] = unsafe { _mm512_loadu_ps(row.as_ptr().add(16 * c)) };
        mx = _mm512_mask_max_ps(mx, mask[c], mx, x[c]);
    }
    let m_new = m.max(_mm512_reduce_max_ps(mx));
    // SAFETY: AVX-512 F and FMA are enabled here.
    let a = _mm512_cvtss_f32(unsafe { vmath::exp(_mm512_set1_ps(*m - m_new)) });
    *m = m_new;
    let mn = _mm512_set1_ps(m_new);
    let mut p = [_mm512_setzero_ps(); 4];
    for c in 0..4 {
        // SAFETY: the features as above; chunk `c` of the 64 floats.
        unsafe {
            p[c] = _mm512_maskz_mov_ps(mask[c], vmath::exp(_mm512_sub_ps(x[c], mn)));
            _mm512_storeu_ps(row.as_mut_ptr().add(16 * c), p[c]);
        }
    }
    let sum = _mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3]));
    (a, hsum(sum))
}

/// The 16 lanes' sum by halving (lanes `i + 8`, `i + 4`, `i + 2`, `i + 1` onto `i`).
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn hsum(v: __m512) -> f32 {
    let h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v));
    let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    _mm_cvtss_f32(_mm_add_ss(q, _mm_shuffle_ps::<1>(q, q)))
}

/// `acc[r][c0..c0 + 16C] ← acc·α[r] + Σ_j p[r][j] v[j][c0..]` for four query vectors `r`, keys
/// `j` in order.
///
/// # Safety
/// `acc` (row stride `d`) and `p` (row stride [`BLOCK`]) must address four rows, columns
/// `c0..c0 + 16C` inside `d`, and every `v[j]` a row of `d` floats; `v.len() ≤ BLOCK`.
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn pv<const C: usize>(
    acc: *mut f32,
    d: usize,
    p: *const f32,
    v: &[*const f32],
    alpha: &[f32],
    c0: usize,
) {
    let mut a = [[_mm512_setzero_ps(); C]; 4];
    // SAFETY: all addresses lie in the rows and columns the caller guarantees.
    unsafe {
        for r in 0..4 {
            let al = _mm512_set1_ps(alpha[r]);
            for c in 0..C {
                a[r][c] = _mm512_mul_ps(_mm512_loadu_ps(acc.add(r * d + c0 + 16 * c)), al);
            }
        }
        for (j, &vj) in v.iter().enumerate() {
            let mut x = [_mm512_setzero_ps(); C];
            for c in 0..C {
                x[c] = _mm512_loadu_ps(vj.add(c0 + 16 * c));
            }
            for r in 0..4 {
                let pr = _mm512_set1_ps(*p.add(r * BLOCK + j));
                for c in 0..C {
                    a[r][c] = _mm512_fmadd_ps(pr, x[c], a[r][c]);
                }
            }
        }
        for r in 0..4 {
            for c in 0..C {
                _mm512_storeu_ps(acc.add(r * d + c0 + 16 * c), a[r][c]);
            }
        }
    }
}
