//! Sixteen weight rows in the vector lanes against a few activation rows (tokens): the
//! matmuls of [`MIN_TOKENS`] to [`MAX_TOKENS`] tokens that an MoE expert meets in a prefill step
//! (the 35B-A3B's 256 experts, top 8, see 16 tokens each on average in a 512-position piece).
//!
//! The GEMM (`gemm.rs`) puts tokens in the lanes: below 16 tokens part of every vector is
//! idle. The row kernels (`avx512::q45_k_x4n`) put a row's elements in the lanes and pay a
//! horizontal sum per block, row and token. Here lane `r` is weight row `r` of a tile of 16:
//! a block of the 16 rows is read in 64-byte pieces and transposed in registers (a lane per
//! row, in the "four consecutive elements per 32-bit lane" layout `vpdpbusd` wants; gathers
//! were 2× slower), unpacked once for every token, and each token's four activation bytes are broadcast, so one `vpdpbusd` does
//! 64 products and no lane idles whatever the token count.
//!
//! # Arithmetic (bit for bit that of [`super::reference`], the row kernels and the GEMM)
//! Per block and token the integer sums `I = Σ_j sc_j · Σ_{i∈j} q_i a_i` and
//! `M = Σ_j m_j · Σ_{i∈j} a_i` are exact; `p = (d·d_a)·I − (dmin·d_a)·M`, and
//! `y = ((0 + p_0) + p_1) + …` in block order, each operation rounded to `f32` as written.

use std::arch::x86_64::*;

use super::act::{BlockQ8K, QuantActs};
use super::{IntFmt, gemm};

/// Weight rows per tile (the lanes).
pub(crate) const ROWS: usize = 16;
/// Fewest tokens this kernel takes (the GEMM's: below, `avx512::q45_k_x4n`). In cache it is
/// faster from 4 tokens (one routed 35B-A3B expert, 8 tokens: 232 µs against 302), but a
/// batched decode step streams its dense weights from memory 4 to 11 tokens at a time, and
/// there the four-row kernel's four long streams read faster than 16 rows' block columns
/// (35B-A3B shape, `bench -b 4`: 55.3 against 60.3 tok/s).
pub(crate) const MIN_TOKENS: usize = gemm::MIN_ROWS;
/// Tokens from which the GEMM takes over. One routed expert of the 35B-A3B (gate + up +
/// down, Q4_K, `cargo bench -p qinfer-cpu --bench kernels -- expert`), here against the GEMM
/// in the same minutes: 32 tokens 500 µs against 685, 48 tokens 706 against 652; 12 tokens
/// 218 µs against 374.
pub(crate) const MAX_TOKENS: usize = 40;
/// Tokens per kernel call (each keeps two accumulators in registers): the row kernels' group,
/// so that `for_token_count!` dispatches the calls.
const NN: usize = super::MAX_TOKENS;

/// Largest weight (bytes) this kernel takes. One routed expert's matrix of the 35B-A3B is
/// 576 KB (Q4_K); the dense projections a batched decode step streams from memory are several
/// MB, and there the GEMM's and the four-row kernels' long row streams read faster than 16
/// rows' block columns (35B-A3B shape, `bench -b 16`, all sizes here: 69.2 against 75.9
/// tok/s).
pub(crate) const MAX_BYTES: usize = 2 << 20;

/// Whether `fmt` against `t` activation rows runs here, for a weight of `bytes`.
pub(crate) fn takes(fmt: IntFmt, t: usize, bytes: usize) -> bool {
    matches!(fmt, IntFmt::Q4K | IntFmt::Q5K)
        && (MIN_TOKENS..MAX_TOKENS).contains(&t)
        && bytes <= MAX_BYTES
}

/// One block of a tile's 16 rows, unpacked: quants in natural element order, four per lane
/// (`w[q]`: elements `4q .. 4q + 4` of every row), scales per lane.
struct Block {
    w: [__m512i; 64],
    /// Sub-block scales (8 of 32 elements).
    sc: [__m512i; 8],
    /// `i16` pairs of the sub-block minimums `(m_{2k}, m_{2k+1})`.
    mins: [__m512i; 4],
    d: __m512,
    dmin: __m512,
}

/// `out[k]` (lane `r`) = 32-bit word `k` of `rows[r]` (a 16 × 16 transpose).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
fn transpose(rows: [__m512i; 16]) -> [__m512i; 16] {
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
    }
    // u[4i + c], 128-bit lane L: word 4L + c of rows 4i .. 4i + 4.
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        u[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    let mut v = [_mm512_setzero_si512(); 16];
    for i in 0..2 {
        for j in 0..4 {
            v[8 * i + j] = _mm512_shuffle_i32x4::<0x88>(u[8 * i + j], u[8 * i + 4 + j]);
            v[8 * i + 4 + j] = _mm512_shuffle_i32x4::<0xdd>(u[8 * i + j], u[8 * i + 4 + j]);
        }
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..8 {
        out[j] = _mm512_shuffle_i32x4::<0x88>(v[j], v[8 + j]);
        out[j + 8] = _mm512_shuffle_i32x4::<0xdd>(v[j], v[8 + j]);
    }
    out
}

/// Words `0 .. W` of one block of every lane's row (`rows[r]`: the block's first byte; `BB`
/// bytes, read in 64-byte pieces, the last one masked to the block), transposed: `out[k]`
/// lane `r` = word `k` of row `r`'s block (bytes past `BB` read as zero).
///
/// # Safety
/// Each `rows[r]` has `BB` readable bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
unsafe fn words<const BB: usize, const W: usize>(rows: &[*const u8; ROWS]) -> [__m512i; W] {
    let mut out = [_mm512_setzero_si512(); W];
    for piece in 0..W.div_ceil(16) {
        let at = 64 * piece;
        let len = (BB - at).min(64);
        let mask: u64 = if len == 64 { !0 } else { (1u64 << len) - 1 };
        let loaded: [__m512i; 16] = std::array::from_fn(|r| {
            // SAFETY: bytes `at .. at + len` of the block (the caller's promise); masked-off
            // bytes are not read.
            unsafe { _mm512_maskz_loadu_epi8(mask, rows[r].add(at).cast()) }
        });
        let t = transpose(loaded);
        for k in 0..16 {
            if 16 * piece + k < W {
                out[16 * piece + k] = t[k];
            }
        }
    }
    out
}

/// Unpacks one block of the tile's 16 rows (`rows[r]`: the block in lane `r`'s row; a
/// padded lane repeats a real row and is never stored).
///
/// # Safety
/// Each `rows[r]` has a whole block (144 bytes, 176 for Q5_K).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
unsafe fn unpack<const FIVE: bool>(rows: &[*const u8; ROWS]) -> Block {
    // Words: 0 d/dmin, 1..4 scales, then Q4_K: 4..36 quants; Q5_K: 4..12 fifth bits, 12..44
    // quants.
    let (qh_at, qs_at) = if FIVE { (4, 12) } else { (4, 4) };
    let mut wd = [_mm512_setzero_si512(); 44];
    // SAFETY: forwarded from the caller.
    unsafe {
        if FIVE {
            wd = words::<176, 44>(rows);
        } else {
            wd[..36].copy_from_slice(&words::<144, 36>(rows));
        }
    }
    let head = wd[0];
    let lo16 = _mm512_set1_epi32(0xFFFF);
    let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_and_si512(head, lo16)));
    let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(head)));
    // The 12 scale bytes: s[0..4], s[4..8], s[8..12] of every row.
    let (s0, s1, s2) = (wd[1], wd[2], wd[3]);
    let m6 = _mm512_set1_epi32(63);
    let (m4, m2) = (_mm512_set1_epi32(15), _mm512_set1_epi32(3));
    let byte = |v: __m512i, k: u32| _mm512_srlv_epi32(v, _mm512_set1_epi32(8 * k as i32));
    let mut sc = [_mm512_setzero_si512(); 8];
    let mut mn = [_mm512_setzero_si512(); 8];
    for j in 0..4u32 {
        // j < 4: sc = s[j] & 63, m = s[j + 4] & 63;
        // j + 4: sc = (s[j + 8] & 15) | (s[j] >> 6) << 4, m = (s[j + 8] >> 4) | (s[j + 4] >> 6) << 4.
        let (a, c, e) = (byte(s0, j), byte(s1, j), byte(s2, j));
        sc[j as usize] = _mm512_and_si512(a, m6);
        mn[j as usize] = _mm512_and_si512(c, m6);
        let hi =
            |v: __m512i| _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(v), m2));
        sc[j as usize + 4] = _mm512_or_si512(_mm512_and_si512(e, m4), hi(a));
        mn[j as usize + 4] =
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(e), m4), hi(c));
    }
    let mins =
        std::array::from_fn(|k| _mm512_or_si512(mn[2 * k], _mm512_slli_epi32::<16>(mn[2 * k + 1])));
    let nib = _mm512_set1_epi8(0x0F);
    let one = _mm512_set1_epi8(1);
    let mut w = [_mm512_setzero_si512(); 64];
    for c in 0..4 {
        for m in 0..8 {
            // Bytes 32c + 4m .. + 4 of the quants: elements 64c + 4m .. in the low nibbles,
            // 64c + 32 + 4m .. in the high ones; Q5_K's fifth bits are bits 2c and 2c + 1 of
            // the same bytes of qh.
            let v = wd[qs_at + 8 * c + m];
            let mut lo = _mm512_and_si512(v, nib);
            let mut hi = _mm512_and_si512(_mm512_srli_epi32::<4>(v), nib);
            if FIVE {
                let h = wd[qh_at + m];
                let b0 =
                    _mm512_and_si512(_mm512_srlv_epi32(h, _mm512_set1_epi32(2 * c as i32)), one);
                let b1 = _mm512_and_si512(
                    _mm512_srlv_epi32(h, _mm512_set1_epi32(2 * c as i32 + 1)),
                    one,
                );
                lo = _mm512_or_si512(lo, _mm512_slli_epi32::<4>(b0));
                hi = _mm512_or_si512(hi, _mm512_slli_epi32::<4>(b1));
            }
            w[16 * c + m] = lo;
            w[16 * c + 8 + m] = hi;
        }
    }
    Block {
        w,
        sc,
        mins,
        d,
        dmin,
    }
}

/// Adds block `b`'s products for tokens `a` (their Q8_K rows, natural order) to `y[n]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
fn kernel<const N: usize>(blk: &Block, a: [&[BlockQ8K]; N], b: usize, y: &mut [__m512; N]) {
    let zero = _mm512_setzero_si512();
    let ab: [&BlockQ8K; N] = std::array::from_fn(|n| &a[n][b]);
    let mut isum = [zero; N];
    for s in 0..8 {
        let mut p = [zero; N];
        for m in 0..8 {
            let q = 8 * s + m;
            let w = blk.w[q];
            for n in 0..N {
                // SAFETY: bytes 4q .. 4q + 4 of the token's 256 quants.
                let x = unsafe { ab[n].qs.as_ptr().add(4 * q).cast::<i32>().read_unaligned() };
                p[n] = _mm512_dpbusd_epi32(p[n], w, _mm512_set1_epi32(x));
            }
        }
        for n in 0..N {
            isum[n] = _mm512_add_epi32(isum[n], _mm512_mullo_epi32(p[n], blk.sc[s]));
        }
    }
    for n in 0..N {
        let bs = |s: usize| i32::from(ab[n].bsums[2 * s]) + i32::from(ab[n].bsums[2 * s + 1]);
        let mut mm = zero;
        for k in 0..4 {
            let pair = (bs(2 * k) as u16 as u32 | ((bs(2 * k + 1) as u16 as u32) << 16)) as i32;
            mm = _mm512_dpwssd_epi32(mm, blk.mins[k], _mm512_set1_epi32(pair));
        }
        let da = _mm512_set1_ps(ab[n].d);
        let dd = _mm512_mul_ps(blk.d, da);
        let ddm = _mm512_mul_ps(blk.dmin, da);
        let pv = _mm512_sub_ps(
            _mm512_mul_ps(dd, _mm512_cvtepi32_ps(isum[n])),
            _mm512_mul_ps(ddm, _mm512_cvtepi32_ps(mm)),
        );
        y[n] = _mm512_add_ps(y[n], pv);
    }
}

/// `store(token, first_row, values)` for weight rows `rows` of `bytes` (rows of `row_bytes`,
/// format `fmt`) against every activation row of `q` (Q8_K, natural order), 16 rows at a
/// time; every (token, row) pair is delivered once.
///
/// # Safety
/// The CPU must have the AVX-512 features of [`super::Isa::Avx512`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub(crate) unsafe fn compute(
    fmt: IntFmt,
    bytes: &[u8],
    row_bytes: usize,
    q: &QuantActs,
    rows: std::ops::Range<usize>,
    mut store: impl FnMut(usize, usize, &[f32]),
) {
    let t = q.rows();
    let five = fmt == IntFmt::Q5K;
    let bb = if five { 176 } else { 144 };
    let blocks = row_bytes / bb;
    assert!(
        takes(fmt, t, bytes.len())
            && blocks * bb == row_bytes
            && rows.end * row_bytes <= bytes.len()
    );
    let acts: Vec<&[BlockQ8K]> = (0..t).map(|i| q.q8_k_row(i)).collect();
    assert!(acts.iter().all(|a| a.len() == blocks));
    let mut y = vec![[0.0f32; ROWS]; t];
    let mut acc = vec![_mm512_setzero_ps(); t];
    let mut r0 = rows.start;
    while r0 < rows.end {
        let n = ROWS.min(rows.end - r0);
        acc.fill(_mm512_setzero_ps());
        for b in 0..blocks {
            // Lane r reads row r0 + r (a padded lane: row r0).
            let ptrs: [*const u8; ROWS] = std::array::from_fn(|r| {
                let r = r0 + if r < n { r } else { 0 };
                bytes[r * row_bytes + b * bb..].as_ptr()
            });
            // SAFETY: rows r0 .. r0 + n lie in `bytes` (asserted) and hold `blocks` blocks.
            let blk = unsafe {
                if five {
                    unpack::<true>(&ptrs)
                } else {
                    unpack::<false>(&ptrs)
                }
            };
            let mut t0 = 0;
            while t0 < t {
                let g = NN.min(t - t0);
                macro_rules! go {
                    ($k:literal) => {{
                        let a: [&[BlockQ8K]; $k] = std::array::from_fn(|i| acts[t0 + i]);
                        let mut yy: [__m512; $k] = std::array::from_fn(|i| acc[t0 + i]);
                        kernel::<$k>(&blk, a, b, &mut yy);
                        acc[t0..t0 + $k].copy_from_slice(&yy);
                    }};
                }
                for_token_count!(g, go);
                t0 += g;
            }
        }
        for (tok, (yt, v)) in y.iter_mut().zip(&acc).enumerate() {
            // SAFETY: 16 floats.
            unsafe { _mm512_storeu_ps(yt.as_mut_ptr(), *v) };
            store(tok, r0, &yt[..n]);
        }
        r0 += n;
    }
}
