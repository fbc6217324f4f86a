//! AVX2 (with FMA and F16C) kernels: one weight row against `N ≤ 8` activation rows, for CPUs
//! without AVX-512 (most desktop Intel chips, AMD Zen 2/3).
//!
//! The arithmetic is the AVX-512 tier's at half the width. Integer formats unpack each weight
//! block once into bytes (one 256-bit register per sub-block of 32) and reuse it for every
//! activation row: `vpmaddubsw` (unsigned weight × signed activation → pairs in `i16`, which
//! never saturate: weights are at most 128 in magnitude and activations stay within ±127),
//! then `vpmaddwd` against the sub-block scale (→ `i32`), then one `f32` FMA per block with
//! `d_w · d_a`. Signed weights (Q8_0, IQ4_XS) use `|w|` and move the sign onto the activation
//! (`vpsignb`). Offsets (`q − 8`, `q − 32`, the K-quant minimums) come from the activation
//! block sums. Float weights widen 8 values at a time and FMA.
//!
//! # AVX-VNNI
//! Where the CPU has AVX-VNNI, the formats with one scale per 32 weights (Q8_0, Q4_0) use
//! `vpdpbusd` (`_mm256_dpbusd_avx_epi32`, stable since Rust 1.89 with the `avxvnni` target
//! feature) for the byte products, one instruction instead of `vpmaddubsw` + `vpmaddwd` with
//! ones. The K-quants and IQ4_XS gain nothing from it: their `vpmaddwd` multiplies by the
//! sub-block scale, which `vpdpbusd` could only replace with a slower `i32` multiply, so both
//! variants run the same code there. Each kernel body is `#[inline(always)]` and generic over
//! `VNNI`; it is compiled only inside the two entry points below, [`int`] with
//! `avx2,fma,f16c` and with `avx2,fma,f16c,avxvnni`, so its intrinsics inline under the right
//! features (the `VNNI = false` copy is what tests compare on a VNNI machine).
//!
//! Every function here requires the features [`super::Isa::Avx2`] stands for (and `vnni`
//! requires AVX-VNNI); they are reached only from the dispatch in `mod.rs` and `act.rs`.
//! Equivalence with `reference.rs` is tested in `tests.rs`.

use std::arch::x86_64::*;

use qinfer_tensor::{DType, Mat};

use super::IntFmt;
use super::act::{BlockQ8_0, BlockQ8K, QuantActs};

/// Calls `$kernel::<N, ..>($w, rows)` with `N = out.len()` activation rows `$row(t)` for
/// `t = t0 .. t0 + N`, and writes the `N` results to `out`.
macro_rules! by_n {
    ($out:expr, $t0:expr, |$t:ident| $row:expr, $kernel:ident$(::<$g:tt>)?($w:expr)) => {{
        let out: &mut [f32] = $out;
        let t0: usize = $t0;
        let row = |$t: usize| $row;
        match out.len() {
            1 => out.copy_from_slice(&$kernel::<1 $(, $g)?>($w, [row(t0)])),
            2 => out.copy_from_slice(&$kernel::<2 $(, $g)?>($w, std::array::from_fn(|i| row(t0 + i)))),
            3 => out.copy_from_slice(&$kernel::<3 $(, $g)?>($w, std::array::from_fn(|i| row(t0 + i)))),
            4 => out.copy_from_slice(&$kernel::<4 $(, $g)?>($w, std::array::from_fn(|i| row(t0 + i)))),
            5 => out.copy_from_slice(&$kernel::<5 $(, $g)?>($w, std::array::from_fn(|i| row(t0 + i)))),
            6 => out.copy_from_slice(&$kernel::<6 $(, $g)?>($w, std::array::from_fn(|i| row(t0 + i)))),
            7 => out.copy_from_slice(&$kernel::<7 $(, $g)?>($w, std::array::from_fn(|i| row(t0 + i)))),
            8 => out.copy_from_slice(&$kernel::<8 $(, $g)?>($w, std::array::from_fn(|i| row(t0 + i)))),
            n => unreachable!("kernels take 1..={} rows, not {n}", super::MAX_TOKENS),
        }
    }};
}

/// `out[i] = row · activation row t0 + i` for an integer format (returns whether `fmt` has an
/// AVX2 kernel; Q5_0 and IQ4_NL do not and take the reference path).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and AVX-VNNI if `vnni`.
pub(super) unsafe fn int(
    fmt: IntFmt,
    vnni: bool,
    row: &[u8],
    q: &QuantActs,
    t0: usize,
    out: &mut [f32],
) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe {
        if vnni {
            int_vnni(fmt, row, q, t0, out)
        } else {
            int_plain(fmt, row, q, t0, out)
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn int_plain(fmt: IntFmt, row: &[u8], q: &QuantActs, t0: usize, out: &mut [f32]) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { int_body::<false>(fmt, row, q, t0, out) }
}

#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
unsafe fn int_vnni(fmt: IntFmt, row: &[u8], q: &QuantActs, t0: usize, out: &mut [f32]) -> bool {
    // SAFETY: forwarded from the caller.
    unsafe { int_body::<true>(fmt, row, q, t0, out) }
}

#[inline(always)]
unsafe fn int_body<const VNNI: bool>(
    fmt: IntFmt,
    row: &[u8],
    q: &QuantActs,
    t0: usize,
    out: &mut [f32],
) -> bool {
    // SAFETY: the kernels' requirements are the caller's.
    unsafe {
        match fmt {
            IntFmt::Q8_0 => by_n!(out, t0, |t| q.q8_0_row(t), q8_0::<VNNI>(row)),
            IntFmt::Q4_0 => by_n!(out, t0, |t| q.q8_0_row(t), q4_0::<VNNI>(row)),
            IntFmt::Q4K => by_n!(out, t0, |t| q.q8_k_row(t), q45_k::<false>(row)),
            IntFmt::Q5K => by_n!(out, t0, |t| q.q8_k_row(t), q45_k::<true>(row)),
            IntFmt::Q6K => by_n!(out, t0, |t| q.q8_k_row(t), q6_k(row)),
            IntFmt::Iq4Xs => by_n!(out, t0, |t| q.q8_k_row(t), iq4_xs(row)),
            IntFmt::Q5_0 | IntFmt::Iq4Nl => return false,
        }
    }
    true
}

/// `out[i] = row · x row t0 + i` for float weights (F32, F16, BF16).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn float(dtype: DType, row: &[u8], x: &Mat, t0: usize, out: &mut [f32]) {
    // SAFETY: the features are enabled; `row` holds `x.cols` elements of `dtype`.
    unsafe {
        match dtype {
            DType::F32 => by_n!(out, t0, |t| x.row(t), float_n::<0>(row)),
            DType::F16 => by_n!(out, t0, |t| x.row(t), float_n::<1>(row)),
            DType::BF16 => by_n!(out, t0, |t| x.row(t), float_n::<2>(row)),
            d => unreachable!("{d} is not a float type"),
        }
    }
}

/// `f16` bits → `f32` with F16C.
#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: the caller passes a pointer to two readable bytes and enables F16C.
    unsafe {
        let bits = p.cast::<u16>().read_unaligned();
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    // SAFETY: the caller passes 32 readable bytes.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// `acc + Σ w·a` over each group of 4 bytes (`w` unsigned, `a` signed), exact in `i32`.
#[inline(always)]
unsafe fn dot_bytes<const VNNI: bool>(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    // SAFETY: the caller enables AVX2, and AVX-VNNI when `VNNI`.
    unsafe {
        if VNNI {
            _mm256_dpbusd_avx_epi32(acc, w, a)
        } else {
            let pairs = _mm256_maddubs_epi16(w, a);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
}

/// `acc + Σ w·a·scale` per sub-block: `scale` holds one `i16` per pair of products.
#[inline(always)]
unsafe fn dot_scaled(acc: __m256i, w: __m256i, a: __m256i, scale: __m256i) -> __m256i {
    // SAFETY: the caller enables AVX2.
    unsafe { _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), scale)) }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the caller enables AVX2.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
}

#[inline(always)]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    // SAFETY: the caller enables AVX2.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<1>(s));
        _mm_cvtsi128_si32(s)
    }
}

#[inline(always)]
unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: the caller enables AVX2.
    unsafe {
        let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_max_ss(s, _mm_shuffle_ps::<1>(s, s));
        _mm_cvtss_f32(s)
    }
}

/// Byte-shuffle indices that broadcast `i16` lane `lo` of each 128-bit half to the low half
/// and lane `hi` to the high half.
const fn splat16(lo: u8, hi: u8) -> [u8; 32] {
    let mut v = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        let lane = if i < 16 { lo } else { hi };
        v[i] = 2 * lane + (i % 2) as u8;
        i += 1;
    }
    v
}

/// `SPLAT[s]`: `i16` lane `s` of a register whose halves hold the same 8 values, everywhere.
const SPLAT: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut s = 0;
    while s < 8 {
        t[s] = splat16(s as u8, s as u8);
        s += 1;
    }
    t
};

/// `PAIR[q]`: lane `2q` in the low half, lane `2q + 1` in the high half (Q6_K's two scales of
/// 16 in one register of 32 weights).
const PAIR: [[u8; 32]; 4] = [splat16(0, 1), splat16(2, 3), splat16(4, 5), splat16(6, 7)];

/// Eight 6-bit scales and minimums of a Q4_K/Q5_K block, as the bytes of two `u64`s.
#[inline(always)]
unsafe fn k_scales(p: *const u8) -> (u64, u64) {
    // SAFETY: the caller passes the 12 packed bytes.
    let (a, b, c) = unsafe {
        (
            p.cast::<u32>().read_unaligned(),
            p.add(4).cast::<u32>().read_unaligned(),
            p.add(8).cast::<u32>().read_unaligned(),
        )
    };
    // Sub-blocks 0..4 keep the low 6 bits of bytes 0..4 (scales) and 4..8 (minimums);
    // sub-blocks 4..8 take 4 bits from bytes 8..12 and their top 2 bits from the top of
    // bytes 0..8.
    let sc_lo = a & 0x3F3F_3F3F;
    let mn_lo = b & 0x3F3F_3F3F;
    let sc_hi = (c & 0x0F0F_0F0F) | (((a >> 6) & 0x0303_0303) << 4);
    let mn_hi = ((c >> 4) & 0x0F0F_0F0F) | (((b >> 6) & 0x0303_0303) << 4);
    (
        u64::from(sc_lo) | (u64::from(sc_hi) << 32),
        u64::from(mn_lo) | (u64::from(mn_hi) << 32),
    )
}

/// Q8_0 against Q8_0 activations. Even and odd blocks go to separate accumulators so that
/// consecutive blocks do not wait on each other's FMA.
#[inline(always)]
unsafe fn q8_0<const N: usize, const VNNI: bool>(w: &[u8], a: [&[BlockQ8_0]; N]) -> [f32; N] {
    let nb = w.len() / 34;
    // SAFETY: blocks `< nb` lie inside `w`, activation rows have `nb` blocks, and the caller
    // enables the features.
    unsafe {
        let zero = _mm256_setzero_si256();
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for b2 in (0..nb).step_by(2) {
            for u in 0..2 {
                let b = b2 + u;
                if b == nb {
                    break;
                }
                let blk = w.as_ptr().add(b * 34);
                let d = f16(blk);
                let v = load(blk.add(2));
                let wa = _mm256_abs_epi8(v);
                for t in 0..N {
                    let ab = a[t].get_unchecked(b);
                    let av = _mm256_sign_epi8(load(ab.qs.as_ptr().cast()), v);
                    let p = dot_bytes::<VNNI>(zero, wa, av);
                    acc[t][u] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * ab.d), acc[t][u]);
                }
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum(_mm256_add_ps(acc[t][0], acc[t][1]));
        }
        out
    }
}

/// Q4_0 against Q8_0 activations: `Σ q·a − 8·Σ a` per block.
#[inline(always)]
unsafe fn q4_0<const N: usize, const VNNI: bool>(w: &[u8], a: [&[BlockQ8_0]; N]) -> [f32; N] {
    let nb = w.len() / 18;
    // SAFETY: as in `q8_0`.
    unsafe {
        let m4 = _mm_set1_epi8(0x0F);
        let zero = _mm256_setzero_si256();
        let mut acc = [_mm256_setzero_ps(); N];
        let mut offs = [0.0f32; N];
        for b in 0..nb {
            let blk = w.as_ptr().add(b * 18);
            let d = f16(blk);
            let q = _mm_loadu_si128(blk.add(2).cast());
            let lo = _mm_and_si128(q, m4);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m4);
            let wq = _mm256_set_m128i(hi, lo);
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let p = dot_bytes::<VNNI>(zero, wq, load(ab.qs.as_ptr().cast()));
                let dd = d * ab.d;
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dd), acc[t]);
                offs[t] += dd * (8 * ab.sum) as f32;
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum(acc[t]) - offs[t];
        }
        out
    }
}

/// Q4_K (`BITS5 = false`) and Q5_K (`true`) against Q8_K activations in their natural order:
/// 32 bytes of quants hold sub-block `2j` in the low nibbles and `2j + 1` in the high ones.
#[inline(always)]
unsafe fn q45_k<const N: usize, const BITS5: bool>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let bytes = if BITS5 { 176 } else { 144 };
    let nb = w.len() / bytes;
    // SAFETY: as in `q8_0`.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let sixteen = _mm256_set1_epi8(16);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut accm = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let blk = w.as_ptr().add(b * bytes);
            let d = f16(blk);
            let dmin = f16(blk.add(2));
            let (sc, mn) = k_scales(blk.add(4));
            // The 8 scales as `i16` in both halves; the minimums each twice (one per bsum).
            let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
            let mnx = _mm_cvtsi64_si128(mn as i64);
            let mins16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mnx, mnx));
            let qh = if BITS5 {
                load(blk.add(16))
            } else {
                _mm256_setzero_si256()
            };
            let qs = blk.add(if BITS5 { 48 } else { 16 });
            let mut isum = [_mm256_setzero_si256(); N];
            for s in 0..8 {
                let q = load(qs.add(32 * (s / 2)));
                let mut wq = if s % 2 == 0 {
                    _mm256_and_si256(q, m4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4)
                };
                if BITS5 {
                    // Bit s of each byte of qh is the fifth bit of sub-block s.
                    let bit = _mm256_set1_epi8((1u8 << s) as i8);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    wq = _mm256_or_si256(wq, _mm256_and_si256(set, sixteen));
                }
                let scale = _mm256_shuffle_epi8(sc16, load(SPLAT[s].as_ptr()));
                for t in 0..N {
                    let av = load(a[t].get_unchecked(b).qs.as_ptr().add(32 * s).cast());
                    isum[t] = dot_scaled(isum[t], wq, av, scale);
                }
            }
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                acc[t] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(isum[t]),
                    _mm256_set1_ps(d * ab.d),
                    acc[t],
                );
                let m = _mm256_madd_epi16(load(ab.bsums.as_ptr().cast()), mins16);
                accm[t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(m), _mm256_set1_ps(dmin * ab.d), accm[t]);
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum(acc[t]) - hsum(accm[t]);
        }
        out
    }
}

/// Q6_K against Q8_K activations: `Σ_j sc_j (Σ q·a − 32·bsum_j)` over sub-blocks of 16.
#[inline(always)]
unsafe fn q6_k<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = w.len() / 210;
    // SAFETY: as in `q8_0`.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let m30 = _mm256_set1_epi8(0x30);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut acco = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let blk = w.as_ptr().add(b * 210);
            let d = f16(blk.add(208));
            let sc256 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast()));
            let mut isum = [_mm256_setzero_si256(); N];
            for h in 0..2 {
                // Half h: 128 weights from 64 bytes of low nibbles and 32 bytes of top bits.
                let l0 = load(blk.add(64 * h));
                let l1 = load(blk.add(64 * h + 32));
                let hb = load(blk.add(128 + 32 * h));
                let wq = [
                    _mm256_or_si256(
                        _mm256_and_si256(l0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(l1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                        _mm256_and_si256(hb, m30),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                    ),
                ];
                // This half's 8 scales in both 128-bit halves.
                let sc = if h == 0 {
                    _mm256_permute2x128_si256::<0x00>(sc256, sc256)
                } else {
                    _mm256_permute2x128_si256::<0x11>(sc256, sc256)
                };
                for (j, wj) in wq.into_iter().enumerate() {
                    let scale = _mm256_shuffle_epi8(sc, load(PAIR[j].as_ptr()));
                    for t in 0..N {
                        let ap = a[t].get_unchecked(b).qs.as_ptr();
                        let av = load(ap.add(128 * h + 32 * j).cast());
                        isum[t] = dot_scaled(isum[t], wj, av, scale);
                    }
                }
            }
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let dd = d * ab.d;
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_set1_ps(dd), acc[t]);
                let o = _mm256_madd_epi16(load(ab.bsums.as_ptr().cast()), sc256);
                acco[t] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(o), _mm256_set1_ps(32.0 * dd), acco[t]);
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum(acc[t]) - hsum(acco[t]);
        }
        out
    }
}

/// IQ4_XS against Q8_K activations: codebook lookup with `vpshufb`, then the signed-weight
/// trick of `q8_0`.
#[inline(always)]
unsafe fn iq4_xs<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = w.len() / 136;
    // SAFETY: as in `q8_0`; the codebook has 16 bytes.
    unsafe {
        let m4 = _mm256_set1_epi8(0x0F);
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(
            qinfer_quant::iq4_nl::KVALUES.as_ptr().cast(),
        ));
        let mut acc = [_mm256_setzero_ps(); N];
        for b in 0..nb {
            let blk = w.as_ptr().add(b * 136);
            let d = f16(blk);
            let sh = blk.add(2).cast::<u16>().read_unaligned();
            let sl = blk.add(4).cast::<u32>().read_unaligned();
            let sc: [i16; 8] = std::array::from_fn(|s| {
                let low = (sl >> (4 * s)) & 0x0F;
                let high = u32::from((sh >> (2 * s)) & 3);
                (low | (high << 4)) as i16 - 32
            });
            let sc16 = _mm256_broadcastsi128_si256(_mm_loadu_si128(sc.as_ptr().cast()));
            let mut isum = [_mm256_setzero_si256(); N];
            for p in 0..4 {
                // 32 bytes: sub-block 2p in the low 16 (low nibbles, then high nibbles),
                // sub-block 2p + 1 in the high 16.
                let q = load(blk.add(8 + 32 * p));
                let lo = _mm256_and_si256(q, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let idx = [
                    _mm256_permute2x128_si256::<0x20>(lo, hi),
                    _mm256_permute2x128_si256::<0x31>(lo, hi),
                ];
                for (u, ix) in idx.into_iter().enumerate() {
                    let s = 2 * p + u;
                    let v = _mm256_shuffle_epi8(table, ix);
                    let wa = _mm256_abs_epi8(v);
                    let scale = _mm256_shuffle_epi8(sc16, load(SPLAT[s].as_ptr()));
                    for t in 0..N {
                        let ap = a[t].get_unchecked(b).qs.as_ptr();
                        let av = _mm256_sign_epi8(load(ap.add(32 * s).cast()), v);
                        isum[t] = dot_scaled(isum[t], wa, av, scale);
                    }
                }
            }
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                acc[t] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(isum[t]),
                    _mm256_set1_ps(d * ab.d),
                    acc[t],
                );
            }
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum(acc[t]);
        }
        out
    }
}

/// 8 float weights from element `i`, widened to `f32` (`KIND` 0/1/2: `f32`, `f16`, `bf16`).
#[inline(always)]
unsafe fn load_float<const KIND: u8>(w: *const u8, i: usize) -> __m256 {
    // SAFETY: the caller guarantees elements `i .. i + 8` are readable and enables the features.
    unsafe {
        match KIND {
            0 => _mm256_loadu_ps(w.cast::<f32>().add(i)),
            1 => _mm256_cvtph_ps(_mm_loadu_si128(w.cast::<u16>().add(i).cast())),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(w.cast::<u16>().add(i).cast()),
            ))),
        }
    }
}

/// One float weight, widened (the tail shorter than 8).
#[inline(always)]
unsafe fn float_at<const KIND: u8>(w: *const u8, i: usize) -> f32 {
    // SAFETY: the caller guarantees element `i` is readable.
    unsafe {
        match KIND {
            0 => w.cast::<f32>().add(i).read_unaligned(),
            1 => half::f16::from_bits(w.cast::<u16>().add(i).read_unaligned()).to_f32(),
            _ => f32::from_bits(u32::from(w.cast::<u16>().add(i).read_unaligned()) << 16),
        }
    }
}

/// Float weights against `f32` activations, 16 values per step into two accumulators per row.
/// Each row's arithmetic is the same whatever `N` is (a batched forward must give the logits
/// of separate ones bit for bit), so at `N > 4` some accumulators live on the stack.
#[inline(always)]
unsafe fn float_n<const N: usize, const KIND: u8>(w: &[u8], x: [&[f32]; N]) -> [f32; N] {
    let k = x[0].len();
    // SAFETY: `w` holds `k` elements of the kind's size (checked by the weight's shape), every
    // activation row has `k` values, and no access reaches past `k`.
    unsafe {
        let wp = w.as_ptr();
        let mut acc0 = [_mm256_setzero_ps(); N];
        let mut acc1 = [_mm256_setzero_ps(); N];
        let mut i = 0;
        while i + 16 <= k {
            let w0 = load_float::<KIND>(wp, i);
            let w1 = load_float::<KIND>(wp, i + 8);
            for t in 0..N {
                let xp = x[t].as_ptr().add(i);
                let (x0, x1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
                acc0[t] = _mm256_fmadd_ps(w0, x0, acc0[t]);
                acc1[t] = _mm256_fmadd_ps(w1, x1, acc1[t]);
            }
            i += 16;
        }
        if i + 8 <= k {
            let w0 = load_float::<KIND>(wp, i);
            for t in 0..N {
                acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[t].as_ptr().add(i)), acc0[t]);
            }
            i += 8;
        }
        let mut out = [0.0f32; N];
        for t in 0..N {
            out[t] = hsum(_mm256_add_ps(acc0[t], acc1[t]));
        }
        for j in i..k {
            let wj = float_at::<KIND>(wp, j);
            for t in 0..N {
                out[t] += wj * *x[t].get_unchecked(j);
            }
        }
        out
    }
}

/// `|x|` of 8 lanes.
#[inline(always)]
unsafe fn abs(v: __m256) -> __m256 {
    // SAFETY: the caller enables AVX2.
    unsafe { _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF))) }
}

/// Four registers of 8 `i32` → 32 `i8` in order, saturating (as `as i8` does).
#[inline(always)]
unsafe fn pack32(q: [__m256i; 4], dst: *mut i8) {
    // SAFETY: the caller passes 32 writable bytes and enables AVX2.
    unsafe {
        // packs works within 128-bit halves: bytes come out as dwords
        // (q0 lo, q1 lo, q2 lo, q3 lo | q0 hi, q1 hi, q2 hi, q3 hi); the permute restores order.
        let p = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(dst.cast(), p);
    }
}

/// [`super::act::quantize_q8_0`] with AVX2 (same rounding: `vcvtps2dq` rounds to nearest,
/// ties to even, as `round_ties_even` does).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_0(x: &[f32], b: &mut BlockQ8_0) {
    assert!(x.len() == 32);
    let p = x.as_ptr();
    // SAFETY: 32 values are readable at `p`; `b.qs` has 32 bytes.
    unsafe {
        let v: [__m256; 4] = std::array::from_fn(|j| _mm256_loadu_ps(p.add(8 * j)));
        let amax = hmax(_mm256_max_ps(
            _mm256_max_ps(abs(v[0]), abs(v[1])),
            _mm256_max_ps(abs(v[2]), abs(v[3])),
        ));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q: [__m256i; 4] = std::array::from_fn(|j| _mm256_cvtps_epi32(_mm256_mul_ps(v[j], id)));
        b.sum = hsum_i32(_mm256_add_epi32(
            _mm256_add_epi32(q[0], q[1]),
            _mm256_add_epi32(q[2], q[3]),
        ));
        pack32(q, b.qs.as_mut_ptr());
        b.d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
            _mm_set_ss(d),
        )));
    }
}

/// [`super::act::quantize_q8_k`] with AVX2 (same rounding; the first element of largest
/// magnitude sets the sign of the scale).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_k(x: &[f32], b: &mut BlockQ8K) {
    assert!(x.len() == 256);
    let p = x.as_ptr();
    // SAFETY: 256 values are readable at `p`; `b.qs` has 256 bytes.
    unsafe {
        let mut amax = _mm256_setzero_ps();
        for j in 0..32 {
            amax = _mm256_max_ps(amax, abs(_mm256_loadu_ps(p.add(8 * j))));
        }
        let amax = hmax(amax);
        if amax == 0.0 {
            b.d = 0.0;
            b.qs = [0; 256];
            b.bsums = [0; 16];
            return;
        }
        let max = *x
            .iter()
            .find(|v| v.abs() == amax)
            .expect("the maximum is an element");
        let iscale = -127.0 / max;
        let vs = _mm256_set1_ps(iscale);
        let lim = _mm256_set1_epi32(127);
        for c in 0..8 {
            // 32 values: bsums 2c and 2c + 1.
            let q: [__m256i; 4] = std::array::from_fn(|j| {
                let v = _mm256_loadu_ps(p.add(32 * c + 8 * j));
                _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(vs, v)), lim)
            });
            b.bsums[2 * c] = hsum_i32(_mm256_add_epi32(q[0], q[1])) as i16;
            b.bsums[2 * c + 1] = hsum_i32(_mm256_add_epi32(q[2], q[3])) as i16;
            pack32(q, b.qs.as_mut_ptr().add(32 * c));
        }
        b.d = 1.0 / iscale;
    }
}
