//! AVX-512 (F, BW, VL, VNNI) kernels: one weight row against `N ≤ 8` activation rows.
//!
//! Integer formats unpack each weight block once into bytes and reuse it for every activation
//! row: `vpmaddubsw` (unsigned weight × signed activation → pairs in `i16`) followed by
//! `vpdpwssd` with the sub-block scales (→ `i32`), then one `f32` FMA per super-block with
//! `d_w · d_a`. Signed weights (Q8_0, IQ4_*) use `|w|` and move the sign onto the activation,
//! which never overflows because activations stay within ±127. Offsets (`q − 32`, minimums)
//! come from the activation block sums. Float weights widen 16 values at a time and FMA.
//!
//! Every function here requires the features [`super::Isa::Avx512`] checks; they are reached
//! only through [`super::select`]. Equivalence with `reference.rs` is tested in `mod.rs`.

use std::arch::x86_64::*;

use super::act::{BlockQ8_0, BlockQ8K};

/// How far ahead of the block it works on a one-token (`*_x4`) kernel asks for each weight
/// stream's bytes (the four rows of a call lie in four sequential streams, see
/// `Plan::compute_x4`). Decode streams every weight once per token with enough arithmetic
/// between loads that the hardware prefetchers alone leave the memory idle part of the time;
/// asking 3 KiB ahead in each stream keeps more lines in flight. A prefetch never faults, so
/// one past the end of the matrix only wastes a request. Measured figures: `docs/PERFORMANCE.md`
/// (third session). The BF16 row kernel does not prefetch: it does little arithmetic per byte,
/// and prefetching made it slower (a 134 MB matrix at one token: 90–92 → 85–87 GB/s).
const PREFETCH_AHEAD: usize = 3072;

/// Asks for the `LINES` cache lines from `PREFETCH_AHEAD` bytes past `p`. Called once per
/// block with enough lines to cover a block, it touches every line of the row once or twice.
#[inline(always)]
fn prefetch_ahead<const LINES: usize>(p: *const u8) {
    for l in 0..LINES {
        // SAFETY: a prefetch is a hint: it does not fault whatever the address
        // (`wrapping_add` keeps the pointer arithmetic defined).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + 64 * l).cast::<i8>());
        }
    }
}

/// `f16` bits → `f32` with F16C.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: the caller passes a pointer to two readable bytes.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// `i16` lane indices: lanes `0..16` take element `a`, lanes `16..32` element `b`.
#[inline(always)]
fn idx_halves(a: i16, b: i16) -> __m512i {
    let mut v = [0i16; 32];
    for (i, x) in v.iter_mut().enumerate() {
        *x = if i < 16 { a } else { b };
    }
    // SAFETY: `[i16; 32]` and `__m512i` have the same size and any bit pattern is valid.
    unsafe { std::mem::transmute::<[i16; 32], __m512i>(v) }
}

/// `i16` lane indices: lanes `8j..8j + 8` take element `base + j`.
#[inline(always)]
fn idx_quarters(base: i16) -> __m512i {
    let mut v = [0i16; 32];
    for (i, x) in v.iter_mut().enumerate() {
        *x = base + (i / 8) as i16;
    }
    // SAFETY: as in `idx_halves`.
    unsafe { std::mem::transmute::<[i16; 32], __m512i>(v) }
}

/// A Q4_K/Q5_K block unpacked for the activations' sub-block order (see [`q45_k`]).
struct Q45Block {
    /// Quants as bytes: register r holds sub-blocks (4(r/2) + r%2, that + 2) in its halves.
    wq: [__m512i; 4],
    /// The sub-block scales spread to the `i16` lanes of the `vpmaddubsw` pairs they multiply.
    scales: [__m512i; 4],
    /// The minimums as `i16`, each twice, in the order of the activations' 16-value sums.
    mins16: __m256i,
}

/// The `vpermw` indices [`q45_unpack`] spreads the scales with.
#[inline(always)]
fn q45_idx() -> [__m512i; 4] {
    [
        idx_halves(0, 2),
        idx_halves(1, 3),
        idx_halves(4, 6),
        idx_halves(5, 7),
    ]
}

/// Unpacks the Q4_K (`BITS5 = false`) or Q5_K block at `blk` (`idx` from [`q45_idx`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
unsafe fn q45_unpack<const BITS5: bool>(blk: *const u8, idx: &[__m512i; 4]) -> Q45Block {
    let m4 = _mm512_set1_epi8(0x0F);
    // SAFETY: the caller passes a whole block (144 or 176 bytes).
    unsafe {
        let (sc16, mins16) = k_scales_vec(blk.add(4));
        let qs = blk.add(if BITS5 { 48 } else { 16 });
        let mut wq = [_mm512_setzero_si512(); 4];
        for c2 in 0..2 {
            let q = _mm512_loadu_si512(qs.add(64 * c2).cast());
            wq[2 * c2] = _mm512_and_si512(q, m4);
            wq[2 * c2 + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
        }
        if BITS5 {
            let sixteen = _mm512_set1_epi8(16);
            let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(16).cast()));
            for (r, wr) in wq.iter_mut().enumerate() {
                // Register r covers sub-blocks s0 = 4(r/2) + r%2 and s0 + 2.
                let s0 = 4 * (r / 2) + r % 2;
                let bits = _mm512_inserti64x4::<1>(
                    _mm512_set1_epi8(1 << s0),
                    _mm256_set1_epi8(1 << (s0 + 2)),
                );
                let m = _mm512_test_epi8_mask(qh, bits);
                *wr = _mm512_mask_add_epi8(*wr, m, *wr, sixteen);
            }
        }
        let scales = std::array::from_fn(|r| _mm512_permutexvar_epi16(idx[r], sc16));
        Q45Block { wq, scales, mins16 }
    }
}

/// `Σ scale·q·a` over a block's four registers of quants (`vpmaddubsw` pairs, then
/// `vpdpwssd` by the spread scales), sixteen `i32` partial sums.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
fn scaled_dot(wq: &[__m512i; 4], scales: &[__m512i; 4], av: &[__m512i; 4]) -> __m512i {
    let mut s = _mm512_setzero_si512();
    for r in 0..4 {
        s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(wq[r], av[r]), scales[r]);
    }
    s
}

/// A Q8_K block's 256 activations as the four 64-byte registers the kernels take.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
unsafe fn q8k_regs(ab: &BlockQ8K) -> [__m512i; 4] {
    // SAFETY: a block holds 256 bytes of quants.
    std::array::from_fn(|r| unsafe { _mm512_loadu_si512(ab.qs.as_ptr().add(64 * r).cast()) })
}

/// Sixteen `i32` lanes → eight (the low and high halves added), exactly.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
fn fold256(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// The eight sums of `a[j]`'s lanes (`j < 4`) and `b[j]`'s, as `[Σa0, …, Σa3, Σb0, …, Σb3]`:
/// one transposing `vphaddd` tree for eight horizontal sums (exact, wrapping like them).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
fn hsum_4x2(a: [__m256i; 4], b: [__m256i; 4]) -> __m256i {
    let h0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
    let h1 = _mm256_hadd_epi32(_mm256_hadd_epi32(b[0], b[1]), _mm256_hadd_epi32(b[2], b[3]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256::<0x20>(h0, h1),
        _mm256_permute2x128_si256::<0x31>(h0, h1),
    )
}

/// The `f16` at byte offset `off` of four blocks, as `f32` (converted as [`f16`] does).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
unsafe fn f16x4(blk: [*const u8; 4], off: usize) -> __m128 {
    // SAFETY: the caller passes blocks with two readable bytes at `off`.
    let h: [i16; 4] =
        std::array::from_fn(|j| unsafe { blk[j].add(off).cast::<i16>().read_unaligned() });
    _mm_cvtph_ps(_mm_setr_epi16(h[0], h[1], h[2], h[3], 0, 0, 0, 0))
}

/// The eight 6-bit scales and minimums of a Q4_K/Q5_K block (`p`: its 12 packed bytes, with
/// 4 more readable after them) unpacked in vector registers: the scales as `i16` (lanes
/// `0..8`), and the minimums as `i16`, each twice, in the activations' sub-block order (1↔2
/// and 5↔6 swapped), ready for `vpmaddwd` against the activation block's 16 sums.
/// (Unpacking them with scalar shifts and masks cost thirty-odd instructions a block.)
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
unsafe fn k_scales_vec(p: *const u8) -> (__m512i, __m256i) {
    // SAFETY: the caller passes 16 readable bytes.
    let x = unsafe { _mm_loadu_si128(p.cast()) }; // [a0..a3, b0..b3, c0..c3, …]
    let m6 = _mm_set1_epi8(0x3F);
    let m4 = _mm_set1_epi8(0x0F);
    // Bytes 0..8: the low six bits of a (scales 0..4) and b (minimums 0..4).
    let lo = _mm_and_si128(x, m6);
    // Bytes 0..8: the top two bits of a and b, moved to bits 4..6 (the 16-bit shifts move
    // other bytes' bits in only where the masks clear them).
    let top = _mm_slli_epi16::<4>(_mm_and_si128(_mm_srli_epi16::<6>(x), _mm_set1_epi8(3)));
    // c's low nibbles (scales 4..8) to bytes 0..4, its high nibbles (minimums 4..8) to 4..8.
    let c_lo = _mm_shuffle_epi8(
        _mm_and_si128(x, m4),
        _mm_setr_epi8(8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1),
    );
    let c_hi = _mm_shuffle_epi8(
        _mm_and_si128(_mm_srli_epi16::<4>(x), m4),
        _mm_setr_epi8(-1, -1, -1, -1, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1),
    );
    let hi = _mm_or_si128(_mm_or_si128(c_lo, c_hi), top);
    // [scales 0..4, minimums 0..4, scales 4..8, minimums 4..8].
    let v = _mm_unpacklo_epi64(lo, hi);
    let sc = _mm_shuffle_epi8(
        v,
        _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1),
    );
    let mn = _mm_shuffle_epi8(
        v,
        _mm_setr_epi8(4, 4, 6, 6, 5, 5, 7, 7, 12, 12, 14, 14, 13, 13, 15, 15),
    );
    (
        _mm512_castsi128_si512(_mm_cvtepu8_epi16(sc)),
        _mm256_cvtepu8_epi16(mn),
    )
}

/// Q4_K (`BITS5 = false`) and Q5_K (`true`) against Q8_K activations stored in
/// [`super::act::QuantActs::to_k4_order`] (sub-blocks 0, 2, 1, 3, 4, 6, 5, 7: the order the
/// nibbles come out of 64 bytes of quants, so every activation load is one 64-byte load).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q45_k<const N: usize, const BITS5: bool>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let bytes = if BITS5 { 176 } else { 144 };
    let nb = w.len() / bytes;
    let idx = q45_idx();
    let mut y = [0.0f32; N];
    for b in 0..nb {
        // SAFETY: `b < nb` blocks of `bytes` lie inside `w`; activation blocks match in number.
        unsafe {
            let blk = w.as_ptr().add(b * bytes);
            let d = f16(blk);
            let dmin = f16(blk.add(2));
            let u = q45_unpack::<BITS5>(blk, &idx);
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let s = scaled_dot(&u.wq, &u.scales, &q8k_regs(ab));
                let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
                let m = hsum256_epi32(_mm256_madd_epi16(bs, u.mins16));
                // The block's exact integers, scaled and added as `reference::q4_k` does.
                let i = _mm512_reduce_add_epi32(s);
                y[t] += d * ab.d * i as f32 - dmin * ab.d * m as f32;
            }
        }
    }
    y
}

/// Q4_K/Q5_K: four weight rows of one matrix against one activation row (decode), each
/// output bit for bit what [`q45_k`] gives for that row. The rows share the activation
/// loads, their eight horizontal integer sums per block go through one [`hsum_4x2`] tree,
/// and their four sums run in the lanes of one vector instead of one dependent chain.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q45_k_x4<const BITS5: bool>(w: [&[u8]; 4], a: &[BlockQ8K]) -> [f32; 4] {
    let bytes = if BITS5 { 176 } else { 144 };
    let nb = w[0].len() / bytes;
    let idx = q45_idx();
    // [d0, dmin0, d1, dmin1, …] → [d0, …, d3, dmin0, …, dmin3].
    let split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let mut y = _mm_setzero_ps();
    for b in 0..nb {
        // SAFETY: as in `q45_k`, for each of the four rows (all of `nb` blocks).
        unsafe {
            let ab = a.get_unchecked(b);
            let av = q8k_regs(ab);
            let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
            let blk: [*const u8; 4] = std::array::from_fn(|j| w[j].as_ptr().add(b * bytes));
            let mut s = [_mm256_setzero_si256(); 4];
            let mut m = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                // 144 or 176 bytes: three lines.
                prefetch_ahead::<3>(blk[j]);
                let u = q45_unpack::<BITS5>(blk[j], &idx);
                s[j] = fold256(scaled_dot(&u.wq, &u.scales, &av));
                m[j] = _mm256_madd_epi16(bs, u.mins16);
            }
            let im = _mm256_cvtepi32_ps(hsum_4x2(s, m));
            // d and dmin of each row: the first four bytes of its block.
            let dd: [i32; 4] = std::array::from_fn(|j| blk[j].cast::<i32>().read_unaligned());
            let dd = _mm256_cvtph_ps(_mm_setr_epi32(dd[0], dd[1], dd[2], dd[3]));
            let dd = _mm256_permutevar8x32_ps(dd, split);
            // (d·d_a)·I − (dmin·d_a)·M per row, as `q45_k` rounds it.
            let p = _mm256_mul_ps(_mm256_mul_ps(dd, _mm256_set1_ps(ab.d)), im);
            y = _mm_add_ps(
                y,
                _mm_sub_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps::<1>(p)),
            );
        }
    }
    // SAFETY: `__m128` and `[f32; 4]` have the same size.
    unsafe { std::mem::transmute::<__m128, [f32; 4]>(y) }
}

/// Q4_K/Q5_K: four weight rows against `N` activation rows (a small batch; the few tokens an
/// MoE expert gets in a prefill step), each output bit for bit what [`q45_k`] gives for that
/// row and token. Each block of the four rows is unpacked once for the `N` tokens, and each
/// token's four rows finish through one [`hsum_4x2`] tree as in [`q45_k_x4`], instead of two
/// horizontal sums per row and token.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q45_k_x4n<const N: usize, const BITS5: bool>(
    w: [&[u8]; 4],
    a: [&[BlockQ8K]; N],
) -> [[f32; N]; 4] {
    let bytes = if BITS5 { 176 } else { 144 };
    let nb = w[0].len() / bytes;
    let idx = q45_idx();
    let split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let mut y = [_mm_setzero_ps(); N];
    // Per token, the four rows' folded block sums and minimum sums.
    let mut s = [[_mm256_setzero_si256(); 4]; N];
    let mut m = [[_mm256_setzero_si256(); 4]; N];
    for b in 0..nb {
        // SAFETY: as in `q45_k`, for each of the four rows (all of `nb` blocks) and each of
        // the `N` activation rows.
        unsafe {
            let blk: [*const u8; 4] = std::array::from_fn(|j| w[j].as_ptr().add(b * bytes));
            for j in 0..4 {
                prefetch_ahead::<3>(blk[j]);
                let u = q45_unpack::<BITS5>(blk[j], &idx);
                for t in 0..N {
                    let ab = a[t].get_unchecked(b);
                    s[t][j] = fold256(scaled_dot(&u.wq, &u.scales, &q8k_regs(ab)));
                    let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
                    m[t][j] = _mm256_madd_epi16(bs, u.mins16);
                }
            }
            let dd: [i32; 4] = std::array::from_fn(|j| blk[j].cast::<i32>().read_unaligned());
            let dd = _mm256_cvtph_ps(_mm_setr_epi32(dd[0], dd[1], dd[2], dd[3]));
            let dd = _mm256_permutevar8x32_ps(dd, split);
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let im = _mm256_cvtepi32_ps(hsum_4x2(s[t], m[t]));
                // (d·d_a)·I − (dmin·d_a)·M per row, as `q45_k` rounds it.
                let p = _mm256_mul_ps(_mm256_mul_ps(dd, _mm256_set1_ps(ab.d)), im);
                y[t] = _mm_add_ps(
                    y[t],
                    _mm_sub_ps(_mm256_castps256_ps128(p), _mm256_extractf128_ps::<1>(p)),
                );
            }
        }
    }
    // SAFETY: `__m128` and `[f32; 4]` have the same size.
    let y: [[f32; 4]; N] = y.map(|v| unsafe { std::mem::transmute::<__m128, [f32; 4]>(v) });
    std::array::from_fn(|j| std::array::from_fn(|t| y[t][j]))
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Sum of eight `i32` lanes (exact, wrapping like the integer sums it finishes).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
fn hsum256_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<1>(s));
    _mm_cvtsi128_si32(s)
}

/// A Q6_K block unpacked: quants as bytes `0..64` (register r holds sub-blocks 4r..4r + 4 in
/// its quarters), the sixteen scales spread to the `i16` lanes they multiply, and the scales
/// as `i16` for the `−32` offset against the activation block sums.
struct Q6Block {
    wq: [__m512i; 4],
    scales: [__m512i; 4],
    sc256: __m256i,
}

/// Unpacks the Q6_K block at `blk`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
unsafe fn q6_unpack(blk: *const u8) -> Q6Block {
    // Byte l of the 32 high-bit bytes of a half holds bits 4..6 of quants l, l + 32, l + 64,
    // l + 96 in its bit pairs 0, 1, 2, 3. Register 2h takes pairs 0 (low 256 bits) and 1
    // (high), register 2h + 1 pairs 2 and 3: keep those pairs, shift each to bits 4..6 of its
    // byte, and select the low nibble from the quants (`m4 ? q : high`, one ternary op). What
    // a 16-bit shift carries into the neighbouring byte lands in that byte's low nibble, which
    // the select discards.
    let m4 = _mm512_set1_epi8(0x0F);
    let keep = _mm512_inserti64x4::<1>(_mm512_set1_epi8(0x33), _mm256_set1_epi8(0xCCu8 as i8));
    let shl = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
    let shr = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
    // SAFETY: the caller passes a whole 210-byte block.
    unsafe {
        let sc256 = _mm256_cvtepi8_epi16(_mm_loadu_si128(blk.add(192).cast()));
        let sc16 = _mm512_castsi256_si512(sc256);
        let mut wq = [_mm512_setzero_si512(); 4];
        for h in 0..2 {
            let q = _mm512_loadu_si512(blk.add(64 * h).cast());
            let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(blk.add(128 + 32 * h).cast()));
            let qh = _mm512_and_si512(qh, keep);
            let hi_lo = _mm512_sllv_epi16(qh, shl);
            let hi_hi = _mm512_srlv_epi16(qh, shr);
            // 0xE4: c ? a : b, bit by bit.
            wq[2 * h] = _mm512_ternarylogic_epi32::<0xE4>(q, hi_lo, m4);
            wq[2 * h + 1] = _mm512_ternarylogic_epi32::<0xE4>(_mm512_srli_epi16::<4>(q), hi_hi, m4);
        }
        let scales =
            std::array::from_fn(|r| _mm512_permutexvar_epi16(idx_quarters(4 * r as i16), sc16));
        Q6Block { wq, scales, sc256 }
    }
}

/// Q6_K against Q8_K activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q6_k<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = w.len() / 210;
    let mut y = [0.0f32; N];
    for b in 0..nb {
        // SAFETY: as in `q45_k`.
        unsafe {
            let blk = w.as_ptr().add(b * 210);
            let d = f16(blk.add(208));
            let u = q6_unpack(blk);
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let s = scaled_dot(&u.wq, &u.scales, &q8k_regs(ab));
                let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
                let o = hsum256_epi32(_mm256_madd_epi16(bs, u.sc256));
                // Σ sc·(q − 32)·a exactly, scaled and added as `reference::q6_k` does.
                let i = _mm512_reduce_add_epi32(s) - 32 * o;
                y[t] += d * ab.d * i as f32;
            }
        }
    }
    y
}

/// Q6_K: four weight rows against one activation row, each output bit for bit what
/// [`q6_k`] gives for that row (shared activation loads, one [`hsum_4x2`] tree per block,
/// the four sums in the lanes of one vector: see [`q45_k_x4`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q6_k_x4(w: [&[u8]; 4], a: &[BlockQ8K]) -> [f32; 4] {
    let nb = w[0].len() / 210;
    let mut y = _mm_setzero_ps();
    for b in 0..nb {
        // SAFETY: as in `q45_k`, for each of the four rows.
        unsafe {
            let ab = a.get_unchecked(b);
            let av = q8k_regs(ab);
            let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
            let blk: [*const u8; 4] = std::array::from_fn(|j| w[j].as_ptr().add(b * 210));
            let mut s = [_mm256_setzero_si256(); 4];
            let mut o = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                // 210 bytes: four lines.
                prefetch_ahead::<4>(blk[j]);
                let u = q6_unpack(blk[j]);
                s[j] = fold256(scaled_dot(&u.wq, &u.scales, &av));
                o[j] = _mm256_madd_epi16(bs, u.sc256);
            }
            let so = hsum_4x2(s, o);
            let i = _mm_sub_epi32(
                _mm256_castsi256_si128(so),
                _mm_slli_epi32::<5>(_mm256_extracti128_si256::<1>(so)),
            );
            let d = f16x4(blk, 208);
            let p = _mm_mul_ps(_mm_mul_ps(d, _mm_set1_ps(ab.d)), _mm_cvtepi32_ps(i));
            y = _mm_add_ps(y, p);
        }
    }
    // SAFETY: `__m128` and `[f32; 4]` have the same size.
    unsafe { std::mem::transmute::<__m128, [f32; 4]>(y) }
}

/// Q6_K: four weight rows against `N` activation rows, each output bit for bit what
/// [`q6_k`] gives for that row and token: each block of the four rows is unpacked once for
/// the `N` tokens, and each token's four rows finish through one [`hsum_4x2`] tree as in
/// [`q6_k_x4`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q6_k_x4n<const N: usize>(w: [&[u8]; 4], a: [&[BlockQ8K]; N]) -> [[f32; N]; 4] {
    let nb = w[0].len() / 210;
    let mut y = [_mm_setzero_ps(); N];
    // Per token, the four rows' folded block sums and scale-weighted activation sums.
    let mut s = [[_mm256_setzero_si256(); 4]; N];
    let mut o = [[_mm256_setzero_si256(); 4]; N];
    for b in 0..nb {
        // SAFETY: as in `q45_k`, for each of the four rows (all of `nb` blocks) and each of
        // the `N` activation rows.
        unsafe {
            let blk: [*const u8; 4] = std::array::from_fn(|j| w[j].as_ptr().add(b * 210));
            for j in 0..4 {
                prefetch_ahead::<4>(blk[j]);
                let u = q6_unpack(blk[j]);
                for t in 0..N {
                    let ab = a[t].get_unchecked(b);
                    s[t][j] = fold256(scaled_dot(&u.wq, &u.scales, &q8k_regs(ab)));
                    let bs = _mm256_loadu_si256(ab.bsums.as_ptr().cast());
                    o[t][j] = _mm256_madd_epi16(bs, u.sc256);
                }
            }
            let d = f16x4(blk, 208);
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let so = hsum_4x2(s[t], o[t]);
                let i = _mm_sub_epi32(
                    _mm256_castsi256_si128(so),
                    _mm_slli_epi32::<5>(_mm256_extracti128_si256::<1>(so)),
                );
                let p = _mm_mul_ps(_mm_mul_ps(d, _mm_set1_ps(ab.d)), _mm_cvtepi32_ps(i));
                y[t] = _mm_add_ps(y[t], p);
            }
        }
    }
    // SAFETY: `__m128` and `[f32; 4]` have the same size.
    let y: [[f32; 4]; N] = y.map(|v| unsafe { std::mem::transmute::<__m128, [f32; 4]>(v) });
    std::array::from_fn(|j| std::array::from_fn(|t| y[t][j]))
}

/// IQ4_XS against Q8_K activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn iq4_xs<const N: usize>(w: &[u8], a: [&[BlockQ8K]; N]) -> [f32; N] {
    let nb = w.len() / 136;
    let m4 = _mm512_set1_epi8(0x0F);
    // SAFETY: reading the 16-byte codebook.
    let table = _mm512_broadcast_i32x4(unsafe {
        _mm_loadu_si128(qinfer_quant::iq4_nl::KVALUES.as_ptr().cast())
    });
    let even = _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0);
    let odd = _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4);
    let idx = [
        idx_halves(0, 1),
        idx_halves(2, 3),
        idx_halves(4, 5),
        idx_halves(6, 7),
    ];
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); N];
    for b in 0..nb {
        // SAFETY: as in `q45_k`.
        unsafe {
            let blk = w.as_ptr().add(b * 136);
            let d = f16(blk);
            let sh = blk.add(2).cast::<u16>().read_unaligned();
            let sl = blk.add(4).cast::<u32>().read_unaligned();
            let mut sc = [0i16; 8];
            for (s, x) in sc.iter_mut().enumerate() {
                let low = (sl >> (4 * s)) & 0x0F;
                let high = u32::from((sh >> (2 * s)) & 3);
                *x = (low | (high << 4)) as i16 - 32;
            }
            let sc16 = _mm512_castsi128_si512(_mm_loadu_si128(sc.as_ptr().cast()));
            let mut wabs = [zero; 4];
            let mut wneg = [0u64; 4];
            for k in 0..2 {
                let q = _mm512_loadu_si512(blk.add(8 + 64 * k).cast());
                let lo = _mm512_and_si512(q, m4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), m4);
                for (j, perm) in [even, odd].into_iter().enumerate() {
                    let nat = _mm512_permutex2var_epi64(lo, perm, hi);
                    let v = _mm512_shuffle_epi8(table, nat);
                    wabs[2 * k + j] = _mm512_abs_epi8(v);
                    wneg[2 * k + j] = _mm512_movepi8_mask(v);
                }
            }
            let scales = [
                _mm512_permutexvar_epi16(idx[0], sc16),
                _mm512_permutexvar_epi16(idx[1], sc16),
                _mm512_permutexvar_epi16(idx[2], sc16),
                _mm512_permutexvar_epi16(idx[3], sc16),
            ];
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let ap = ab.qs.as_ptr();
                let mut s = zero;
                for r in 0..4 {
                    let av = _mm512_loadu_si512(ap.add(64 * r).cast());
                    let av = _mm512_mask_sub_epi8(av, wneg[r], zero, av);
                    s = _mm512_dpwssd_epi32(s, _mm512_maddubs_epi16(wabs[r], av), scales[r]);
                }
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(d * ab.d), acc[t]);
            }
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = _mm512_reduce_add_ps(acc[t]);
    }
    out
}

/// Q8_0 against Q8_0 activations: each block's exact integer dot product, scaled and added in
/// block order as `reference::q8_0` does. Blocks go eight at a time: their eight `vpdpbusd`
/// results are reduced together (one transposing `vphaddd` tree instead of eight horizontal
/// sums), then the scalar scale-and-add runs in block order.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q8_0<const N: usize>(w: &[u8], a: [&[BlockQ8_0]; N]) -> [f32; N] {
    let nb = w.len() / 34;
    let zero = _mm256_setzero_si256();
    let mut y = [0.0f32; N];
    let mut b = 0;
    while b + 8 <= nb {
        // SAFETY: blocks `b .. b + 8` lie inside `w`; activation blocks match in number.
        unsafe {
            let blk = |k: usize| w.as_ptr().add((b + k) * 34);
            let v: [__m256i; 8] = std::array::from_fn(|k| _mm256_loadu_si256(blk(k).add(2).cast()));
            let wa: [__m256i; 8] = std::array::from_fn(|k| _mm256_abs_epi8(v[k]));
            let dw = _mm256_setr_ps(
                f16(blk(0)),
                f16(blk(1)),
                f16(blk(2)),
                f16(blk(3)),
                f16(blk(4)),
                f16(blk(5)),
                f16(blk(6)),
                f16(blk(7)),
            );
            // Byte offsets of the eight activation blocks' scales.
            const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 40);
            let at = _mm256_setr_epi32(0, 40, 80, 120, 160, 200, 240, 280);
            for t in 0..N {
                let ab = a[t].as_ptr().add(b);
                let p: [__m256i; 8] = std::array::from_fn(|k| {
                    let av = _mm256_loadu_si256((*ab.add(k)).qs.as_ptr().cast());
                    _mm256_dpbusd_epi32(zero, wa[k], _mm256_sign_epi8(av, v[k]))
                });
                let h0 =
                    _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
                let h1 =
                    _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
                let sums = _mm256_add_epi32(
                    _mm256_permute2x128_si256::<0x20>(h0, h1),
                    _mm256_permute2x128_si256::<0x31>(h0, h1),
                );
                // p_k = (d_w·d_a)·I_k for the eight blocks at once (the same roundings as the
                // scalar form), then added in block order.
                let da = _mm256_i32gather_ps::<1>(std::ptr::addr_of!((*ab).d), at);
                let p: [f32; 8] = std::mem::transmute(_mm256_mul_ps(
                    _mm256_mul_ps(dw, da),
                    _mm256_cvtepi32_ps(sums),
                ));
                for pk in p {
                    y[t] += pk;
                }
            }
        }
        b += 8;
    }
    while b < nb {
        // SAFETY: as above, one block.
        unsafe {
            let blk = w.as_ptr().add(b * 34);
            let d = f16(blk);
            let v = _mm256_loadu_si256(blk.add(2).cast());
            let wa = _mm256_abs_epi8(v);
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let av = _mm256_sign_epi8(_mm256_loadu_si256(ab.qs.as_ptr().cast()), v);
                let i = hsum256_epi32(_mm256_dpbusd_epi32(zero, wa, av));
                y[t] += d * ab.d * i as f32;
            }
        }
        b += 1;
    }
    y
}

/// Q8_0: four weight rows against one activation row, each output bit for bit what
/// [`q8_0`] gives for that row. One row alone adds its blocks in one dependent chain (four
/// cycles a block, the limit of a row at one token); four rows run four chains in the lanes
/// of one vector, and their four horizontal sums per block share one `vphaddd` tree.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q8_0_x4(w: [&[u8]; 4], a: &[BlockQ8_0]) -> [f32; 4] {
    let nb = w[0].len() / 34;
    let zero = _mm256_setzero_si256();
    let mut y = _mm_setzero_ps();
    for b in 0..nb {
        // SAFETY: block `b` of each row lies inside it; activation blocks match in number.
        unsafe {
            let ab = a.get_unchecked(b);
            let av = _mm256_loadu_si256(ab.qs.as_ptr().cast());
            let blk: [*const u8; 4] = std::array::from_fn(|j| w[j].as_ptr().add(b * 34));
            // 34 bytes: a line covers the block (and half the next).
            for p in blk {
                prefetch_ahead::<1>(p);
            }
            let p: [__m256i; 4] = std::array::from_fn(|j| {
                let v = _mm256_loadu_si256(blk[j].add(2).cast());
                _mm256_dpbusd_epi32(zero, _mm256_abs_epi8(v), _mm256_sign_epi8(av, v))
            });
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
            let i = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
            let d = f16x4(blk, 0);
            y = _mm_add_ps(
                y,
                _mm_mul_ps(_mm_mul_ps(d, _mm_set1_ps(ab.d)), _mm_cvtepi32_ps(i)),
            );
        }
    }
    // SAFETY: `__m128` and `[f32; 4]` have the same size.
    unsafe { std::mem::transmute::<__m128, [f32; 4]>(y) }
}

/// Q8_0: four weight rows against `N` activation rows (a verification step's few tokens),
/// each output bit for bit what [`q8_0_x4`] (and so [`q8_0`]) gives for that row and token:
/// per token, the four rows' block sums share one `vphaddd` tree and are scaled and added in
/// block order in the lanes of one vector. Each weight block is loaded and its magnitudes
/// taken once for the `N` tokens; the `N` per-token chains are independent.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q8_0_x4n<const N: usize>(w: [&[u8]; 4], a: [&[BlockQ8_0]; N]) -> [[f32; N]; 4] {
    let nb = w[0].len() / 34;
    let zero = _mm256_setzero_si256();
    let mut y = [_mm_setzero_ps(); N];
    for b in 0..nb {
        // SAFETY: block `b` of each row lies inside it; activation blocks match in number.
        unsafe {
            let blk: [*const u8; 4] = std::array::from_fn(|j| w[j].as_ptr().add(b * 34));
            for p in blk {
                prefetch_ahead::<1>(p);
            }
            let v: [__m256i; 4] = std::array::from_fn(|j| _mm256_loadu_si256(blk[j].add(2).cast()));
            let wa: [__m256i; 4] = std::array::from_fn(|j| _mm256_abs_epi8(v[j]));
            let d = f16x4(blk, 0);
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let av = _mm256_loadu_si256(ab.qs.as_ptr().cast());
                let p: [__m256i; 4] = std::array::from_fn(|j| {
                    _mm256_dpbusd_epi32(zero, wa[j], _mm256_sign_epi8(av, v[j]))
                });
                let h =
                    _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
                let i = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
                y[t] = _mm_add_ps(
                    y[t],
                    _mm_mul_ps(_mm_mul_ps(d, _mm_set1_ps(ab.d)), _mm_cvtepi32_ps(i)),
                );
            }
        }
    }
    let mut out = [[0.0f32; N]; 4];
    for (t, yt) in y.iter().enumerate() {
        // SAFETY: `__m128` and `[f32; 4]` have the same size.
        let r = unsafe { std::mem::transmute::<__m128, [f32; 4]>(*yt) };
        for (j, o) in out.iter_mut().enumerate() {
            o[t] = r[j];
        }
    }
    out
}

/// Weight rows a [`q8_0_x16n`] call takes.
pub const X16_ROWS: usize = 16;

/// The weight row (index into its `w`) whose sums [`q8_0_x16n`] leaves in each lane (its
/// transpose swaps rows 4–7 and 8–11).
pub const X16_ROW_OF_LANE: [usize; X16_ROWS] =
    [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];

/// Q8_0: sixteen weight rows against `N` activation rows (a verification step's few tokens),
/// each output bit for bit what [`q8_0`] gives for that row and token: `out[t][lane]` is
/// row `w[X16_ROW_OF_LANE[lane]]` against token `t`.
///
/// The lanes are the weight rows: each block of the sixteen rows is transposed once (four
/// bytes of each row per 32-bit lane, 24 shuffles) and offset to unsigned (`q + 128`), so for
/// every token a block costs eight `vpdpbusd` against broadcast activation bytes, with no
/// horizontal sum. The offset comes back out exactly: the accumulator starts at
/// `−128 · Σ a` (the activation block's sum). Then `p = (d_w·d_a)·I` and `y += p` in block
/// order, in each lane, as every other Q8_0 kernel rounds. The transpose is paid once per
/// block for the `N` tokens, so this pays from two tokens on (one token keeps [`q8_0_x4`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q8_0_x16n<const N: usize>(
    w: [&[u8]; X16_ROWS],
    a: [&[BlockQ8_0]; N],
) -> [[f32; X16_ROWS]; N] {
    let nb = w[0].len() / 34;
    assert!(w.iter().all(|r| r.len() == w[0].len()) && a.iter().all(|r| r.len() >= nb));
    // Each lane's row start, as a byte offset from row 0's (the scales are gathered by it).
    let base = w[0].as_ptr();
    let off: [i64; X16_ROWS] =
        std::array::from_fn(|l| (w[X16_ROW_OF_LANE[l]].as_ptr() as i64).wrapping_sub(base as i64));
    // SAFETY: eight `i64` are readable at each half.
    let (off_lo, off_hi) = unsafe {
        (
            _mm512_loadu_si512(off.as_ptr().cast()),
            _mm512_loadu_si512(off.as_ptr().add(8).cast()),
        )
    };
    let flip = _mm512_set1_epi8(-128);
    let mut y = [_mm512_setzero_ps(); N];
    for b in 0..nb {
        // SAFETY: block `b` of each of the sixteen rows lies inside it (equal lengths, asserted
        // above): 34 bytes from `b · 34`, of which the gathers read the first four (the scale
        // and two quants); the activation rows have `nb` blocks.
        unsafe {
            let blk: [*const u8; X16_ROWS] = std::array::from_fn(|i| w[i].as_ptr().add(b * 34));
            for p in blk {
                prefetch_ahead::<1>(p);
            }
            let z: [__m512i; 8] = std::array::from_fn(|i| {
                let lo = _mm256_loadu_si256(blk[i].add(2).cast());
                let hi = _mm256_loadu_si256(blk[i + 8].add(2).cast());
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            });
            // Rows i and i + 1 interleaved by 32-bit lanes, then rows i .. i + 4 by 64-bit
            // lanes, then the 128-bit lanes gathered by byte offset.
            let lo32 = |p: __m512i, q: __m512i| _mm512_unpacklo_epi32(p, q);
            let hi32 = |p: __m512i, q: __m512i| _mm512_unpackhi_epi32(p, q);
            let t = [
                lo32(z[0], z[1]),
                hi32(z[0], z[1]),
                lo32(z[2], z[3]),
                hi32(z[2], z[3]),
                lo32(z[4], z[5]),
                hi32(z[4], z[5]),
                lo32(z[6], z[7]),
                hi32(z[6], z[7]),
            ];
            let u = [
                _mm512_unpacklo_epi64(t[0], t[2]),
                _mm512_unpackhi_epi64(t[0], t[2]),
                _mm512_unpacklo_epi64(t[1], t[3]),
                _mm512_unpackhi_epi64(t[1], t[3]),
                _mm512_unpacklo_epi64(t[4], t[6]),
                _mm512_unpackhi_epi64(t[4], t[6]),
                _mm512_unpacklo_epi64(t[5], t[7]),
                _mm512_unpackhi_epi64(t[5], t[7]),
            ];
            // `q[k]`: bytes 4k .. 4k + 4 of every row (lane order `X16_ROW_OF_LANE`), unsigned.
            let mut q = [_mm512_setzero_si512(); 8];
            for k in 0..4 {
                q[k] = _mm512_xor_si512(_mm512_shuffle_i32x4::<0x88>(u[k], u[k + 4]), flip);
                q[k + 4] = _mm512_xor_si512(_mm512_shuffle_i32x4::<0xDD>(u[k], u[k + 4]), flip);
            }
            let at = _mm512_set1_epi64((b * 34) as i64);
            let h_lo = _mm512_i64gather_epi32::<1>(_mm512_add_epi64(off_lo, at), base.cast());
            let h_hi = _mm512_i64gather_epi32::<1>(_mm512_add_epi64(off_hi, at), base.cast());
            let h = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(h_lo), h_hi);
            let dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h));
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let qs = ab.qs.as_ptr().cast::<i32>();
                // (Wrapping: a non-finite activation leaves a meaningless sum, not a panic.)
                let mut acc = _mm512_set1_epi32(ab.sum.wrapping_mul(-128));
                for (k, qk) in q.iter().enumerate() {
                    acc = _mm512_dpbusd_epi32(
                        acc,
                        *qk,
                        _mm512_set1_epi32(qs.add(k).read_unaligned()),
                    );
                }
                y[t] = _mm512_add_ps(
                    y[t],
                    _mm512_mul_ps(
                        _mm512_mul_ps(dw, _mm512_set1_ps(ab.d)),
                        _mm512_cvtepi32_ps(acc),
                    ),
                );
            }
        }
    }
    // SAFETY: `__m512` and `[f32; 16]` have the same size.
    y.map(|yt| unsafe { std::mem::transmute::<__m512, [f32; X16_ROWS]>(yt) })
}

/// Q4_0 against Q8_0 activations: `Σ q·a − 8·Σ a` per block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn q4_0<const N: usize>(w: &[u8], a: [&[BlockQ8_0]; N]) -> [f32; N] {
    let nb = w.len() / 18;
    let m4 = _mm_set1_epi8(0x0F);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); N];
    let mut offs = [0.0f32; N];
    for b in 0..nb {
        // SAFETY: as in `q45_k`.
        unsafe {
            let blk = w.as_ptr().add(b * 18);
            let d = f16(blk);
            let q = _mm_loadu_si128(blk.add(2).cast());
            let lo = _mm_and_si128(q, m4);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(q), m4);
            let wq = _mm256_set_m128i(hi, lo);
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let av = _mm256_loadu_si256(ab.qs.as_ptr().cast());
                let p = _mm256_dpbusd_epi32(zero, wq, av);
                let dd = d * ab.d;
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dd), acc[t]);
                offs[t] += dd * (8 * ab.sum) as f32;
            }
        }
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = hsum256(acc[t]) - offs[t];
    }
    out
}

/// Float weights (`f32`, `f16`, `bf16` by `KIND` 0/1/2) against `f32` activations.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn float<const N: usize, const KIND: u8>(w: &[u8], x: [&[f32]; N]) -> [f32; N] {
    let k = x[0].len();
    let mut acc0 = [_mm512_setzero_ps(); N];
    let mut acc1 = [_mm512_setzero_ps(); N];
    let load = |i: usize, m: __mmask16| {
        // SAFETY: `w` holds `k` elements of the kind's size (checked by the weight's shape),
        // and the masks never reach past `k`.
        unsafe { load_float::<KIND>(w.as_ptr(), i, m) }
    };
    let mut i = 0;
    while i + 32 <= k {
        let w0 = load(i, 0xFFFF);
        let w1 = load(i + 16, 0xFFFF);
        for t in 0..N {
            // SAFETY: `i + 32 ≤ k` and every activation row has `k` values.
            unsafe {
                let xp = x[t].as_ptr().add(i);
                acc0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(xp), acc0[t]);
                acc1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xp.add(16)), acc1[t]);
            }
        }
        i += 32;
    }
    while i < k {
        let n = (k - i).min(16);
        let m: __mmask16 = if n == 16 { 0xFFFF } else { (1u16 << n) - 1 };
        let wv = load(i, m);
        for t in 0..N {
            // SAFETY: the masked load reads only the `n` remaining values.
            let xv = unsafe { _mm512_maskz_loadu_ps(m, x[t].as_ptr().add(i)) };
            acc0[t] = _mm512_fmadd_ps(wv, xv, acc0[t]);
        }
        i += n;
    }
    let mut out = [0.0f32; N];
    for t in 0..N {
        out[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[t], acc1[t]));
    }
    out
}

/// 16 float weights from element `i` (masked), widened to `f32`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
#[inline]
unsafe fn load_float<const KIND: u8>(w: *const u8, i: usize, m: __mmask16) -> __m512 {
    // SAFETY: the caller guarantees the masked elements are readable.
    unsafe {
        match KIND {
            0 => _mm512_maskz_loadu_ps(m, w.cast::<f32>().add(i)),
            1 => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w.cast::<i16>().add(i))),
            _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_maskz_loadu_epi16(m, w.cast::<i16>().add(i)),
            ))),
        }
    }
}

/// [`super::act::quantize_q8_k`] with AVX-512 (same rounding: ties to even, the first element
/// of largest magnitude sets the sign of the scale).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn quantize_q8_k(x: &[f32], b: &mut BlockQ8K) {
    assert!(x.len() == 256);
    let p = x.as_ptr();
    // SAFETY: 256 values are readable at `p`; `b.qs` has 256 bytes.
    unsafe {
        let mut amax = _mm512_setzero_ps();
        for j in 0..16 {
            amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(p.add(16 * j))));
        }
        let amax = _mm512_reduce_max_ps(amax);
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
        let vs = _mm512_set1_ps(iscale);
        let lim = _mm512_set1_epi32(127);
        for j in 0..16 {
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(vs, _mm512_loadu_ps(p.add(16 * j))));
            let q = _mm512_min_epi32(q, lim);
            b.bsums[j] = _mm512_reduce_add_epi32(q) as i16;
            _mm_storeu_si128(
                b.qs.as_mut_ptr().add(16 * j).cast(),
                _mm512_cvtsepi32_epi8(q),
            );
        }
        b.d = 1.0 / iscale;
    }
}

/// [`super::act::quantize_q8_0`] with AVX-512 (same rounding).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
pub unsafe fn quantize_q8_0(x: &[f32], b: &mut BlockQ8_0) {
    assert!(x.len() == 32);
    let p = x.as_ptr();
    // SAFETY: 32 values are readable at `p`; `b.qs` has 32 bytes.
    unsafe {
        let (x0, x1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, id));
        let q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, id));
        b.sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        _mm_storeu_si128(b.qs.as_mut_ptr().cast(), _mm512_cvtsepi32_epi8(q0));
        _mm_storeu_si128(b.qs.as_mut_ptr().add(16).cast(), _mm512_cvtsepi32_epi8(q1));
        b.d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
            _mm_set_ss(d),
        )));
    }
}
