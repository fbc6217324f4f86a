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
//! Two kernels share one summation order. [`dot_avx512`] (up to 4 weight rows × 4 tokens a
//! call) serves decode and small batches; [`gemm`] serves prefill (from
//! [`TILE_TOKENS`] tokens up): register tiles of 6 weight rows × 4 tokens (24 accumulators,
//! 10 loads per 24 `vdpbf16ps`), blocks of tokens and of `K` sized so that the tile's weight
//! rows stay in L1 while the activations stream from L2, the next weights prefetched. In
//! both, each (weight row, token) pair has its own 16-lane accumulator that sees the same
//! 32-value steps in the same order (a masked first step up to the weights' first cache-line
//! boundary, full steps, a masked tail) and ends in `_mm512_reduce_add_ps`'s addition tree
//! ([`reduce16`] does 16 of those trees at once), so a token's results are the same bits
//! whatever batch, tile or thread computed them (prompt caching and batched decode rely on
//! it). Measured on a 2-core Zen 5 (`qinfer bench`, pp512, 2 threads), the GEMM against the
//! row kernel in 4 × 4 tiles: Qwen3.5 0.8B BF16 579 against 455 tokens/s, 4B 99.8 against
//! 77.7 (llama.cpp: 339 and 62.9); single-threaded, the matmuls went from about 62% to about
//! 80% of the `vdpbf16ps` peak (two per cycle). What is left is mostly the L2 streams of the
//! activations, the masked lead and tail steps and the final reductions.
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
/// accumulators, so a tile of 4 × 4 reads each activation once per four weight rows (decode,
/// one token, takes one weight row per call: see [`super::Plan::rows_per_call`]; prefill
/// takes [`gemm`]).
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

/// `_mm512_reduce_add_ps` of each of `v[0..16]`, bit for bit, in one vector: `out[j]` is the
/// sum of `v[j]`'s lanes added in the same tree (`i + 8`, then `i + 4`, `i + 2`, `i + 1`), but
/// the 16 trees share their shuffles and adds (45 instructions instead of 144).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
pub(super) fn reduce16(v: [__m512; 16]) -> __m512 {
    // Lanes i and i + 8 of each vector: u[p] holds v[2p]'s eight sums, then v[2p + 1]'s.
    let u: [__m512; 8] = std::array::from_fn(|p| {
        let (a, b) = (v[2 * p], v[2 * p + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(a, b),
            _mm512_shuffle_f32x4::<0xEE>(a, b),
        )
    });
    // Then i + 4: w[q]'s 128-bit lane l holds the four sums of v[4q + l].
    let w: [__m512; 4] = std::array::from_fn(|q| {
        let (a, b) = (u[2 * q], u[2 * q + 1]);
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(a, b),
            _mm512_shuffle_f32x4::<0xDD>(a, b),
        )
    });
    // Then i + 2: z[h]'s lane l holds two sums of v[8h + l], then two of v[8h + 4 + l].
    let z: [__m512; 2] = std::array::from_fn(|h| {
        let (a, b) = (_mm512_castps_pd(w[2 * h]), _mm512_castps_pd(w[2 * h + 1]));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        )
    });
    // Then i + 1: lane 4l + e holds the sum of v[l + 4e]; one permutation puts v[j] in lane j.
    let r = _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(z[0], z[1]),
        _mm512_shuffle_ps::<0xDD>(z[0], z[1]),
    );
    _mm512_permutexvar_ps(
        _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15),
        r,
    )
}

/// Weight rows in one [`gemm`] register tile.
pub const TILE_ROWS: usize = 6;
/// Activation rows (tokens) in one [`gemm`] register tile.
pub const TILE_TOKENS: usize = 4;
/// Accumulators of one register tile.
const TILE: usize = TILE_ROWS * TILE_TOKENS;

/// The values `start .. end` of rows of `k` values, `lead` of them before the first 32-value
/// step ([`lead`]): one block of `K` for [`tile`]. Inner block boundaries fall between steps.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    k: usize,
    lead: usize,
}

/// One register tile: `R` weight rows and `M` activation rows (pointers `w[..R]`, `a[..M]`).
type TileFn =
    unsafe fn(&[*const u16], &[*const u16], Span, &mut [__m512; TILE], *const u8, *mut f32, usize);

/// `R ≤ TILE_ROWS` weight rows (`w`) against `M ≤ TILE_TOKENS` activation rows (`a`) over
/// the values of `span`, one 16-lane accumulator per pair, exactly the steps of
/// [`dot_avx512`] (the masked `lead` step in the first block, 32-value steps, the masked
/// tail in the last). The accumulators start at zero in the first block and continue from
/// `acc[j · M + i]` in later ones; they are left there unless `span` is the last block, where
/// `out[i · out_stride + j]` = `w[j] · a[i]`, reduced in `_mm512_reduce_add_ps`'s tree
/// ([`reduce16`]).
/// So each pair is summed as [`dot_avx512`] sums it, bit for bit. One line of `pf` per step
/// is prefetched (the weights of a later tile).
///
/// Called through [`TileFn`] pointers: inlined into the caller, the accumulators compete with
/// its values for registers and spill.
///
/// # Safety
/// `w[j]` and `a[i]` must be valid for `span.k` values and `out` for `M` rows of
/// `out_stride ≥ R` values; the CPU must have AVX-512 F/BW and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const R: usize, const M: usize>(
    w: &[*const u16],
    a: &[*const u16],
    span: Span,
    acc_io: &mut [__m512; TILE],
    pf: *const u8,
    out: *mut f32,
    out_stride: usize,
) {
    let w: [*const u16; R] = std::array::from_fn(|j| w[j]);
    let a: [*const u16; M] = std::array::from_fn(|i| a[i]);
    let mut acc = [[_mm512_setzero_ps(); M]; R];
    if span.start > 0 {
        for j in 0..R {
            for t in 0..M {
                acc[j][t] = acc_io[j * M + t];
            }
        }
    }
    let masked = |acc: &mut [[__m512; M]; R], i: usize, n: usize| {
        let m = (1u32 << n) - 1;
        // SAFETY: the mask reads only values `i .. i + n ≤ k` of each row.
        unsafe {
            let wv: [__m512bh; R] =
                std::array::from_fn(|j| bh(_mm512_maskz_loadu_epi16(m, w[j].add(i).cast())));
            for t in 0..M {
                let av = bh(_mm512_maskz_loadu_epi16(m, a[t].add(i).cast()));
                for j in 0..R {
                    acc[j][t] = _mm512_dpbf16_ps(acc[j][t], wv[j], av);
                }
            }
        }
    };
    let mut i = span.start;
    if i == 0 && span.lead > 0 {
        i = span.lead.min(span.k);
        masked(&mut acc, 0, i);
    }
    let mut pf = pf;
    while i + 32 <= span.end {
        _mm_prefetch::<_MM_HINT_T0>(pf.cast());
        pf = pf.wrapping_add(64);
        // SAFETY: values `i .. i + 32 ≤ k` of each row.
        unsafe {
            let wv: [__m512bh; R] =
                std::array::from_fn(|j| bh(_mm512_loadu_si512(w[j].add(i).cast())));
            for t in 0..M {
                let av = bh(_mm512_loadu_si512(a[t].add(i).cast()));
                for j in 0..R {
                    acc[j][t] = _mm512_dpbf16_ps(acc[j][t], wv[j], av);
                }
            }
        }
        i += 32;
    }
    if i < span.end {
        masked(&mut acc, i, span.end - i);
    }
    if span.end < span.k {
        for j in 0..R {
            for t in 0..M {
                acc_io[j * M + t] = acc[j][t];
            }
        }
        return;
    }
    // Pair (j, i) in lane i · R + j of the reduced vectors (constant indices throughout, so
    // the accumulators stay in registers): each token's `R` results are adjacent lanes.
    let mut flat = [_mm512_setzero_ps(); 32];
    for j in 0..R {
        for t in 0..M {
            flat[t * R + j] = acc[j][t];
        }
    }
    let sums = [
        reduce16(std::array::from_fn(|l| flat[l])),
        if R * M > 16 {
            reduce16(std::array::from_fn(|l| flat[16 + l]))
        } else {
            _mm512_setzero_ps()
        },
    ];
    let mut lanes = [0.0f32; 32];
    // SAFETY: 32 floats.
    unsafe {
        _mm512_storeu_ps(lanes.as_mut_ptr(), sums[0]);
        _mm512_storeu_ps(lanes.as_mut_ptr().add(16), sums[1]);
    }
    for t in 0..M {
        // SAFETY: the caller's `out` holds `M` rows of `out_stride ≥ R` values.
        unsafe {
            std::ptr::copy_nonoverlapping(lanes.as_ptr().add(t * R), out.add(t * out_stride), R);
        }
    }
}

/// [`tile`]`::<R, M>` at `[R - 1][M - 1]`.
const TILES: [[TileFn; TILE_TOKENS]; TILE_ROWS] = {
    macro_rules! row {
        ($r:literal) => {
            [tile::<$r, 1>, tile::<$r, 2>, tile::<$r, 3>, tile::<$r, 4>]
        };
    }
    [row!(1), row!(2), row!(3), row!(4), row!(5), row!(6)]
};

/// Activation bytes (one block of `K` for a block of tokens) that [`gemm`] keeps in L2.
const BLOCK_BYTES: usize = 512 << 10;
/// Most values of `K` per block: a tile's rows then take at most
/// `(TILE_ROWS + TILE_TOKENS) · 3 KiB`, so the weight rows stay in L1 while the tokens'
/// activations stream past them (rows split into even blocks of whole steps).
const K_BLOCK: usize = 1536;
/// Weight rows whose results are gathered per token before `store`.
const ROW_TILE: usize = 48;
/// Weight rows that pass over one block of `K` before the next (their accumulators wait).
const SPAN_ROWS: usize = 24;

/// `store(t, r, v)` with `v[i]` = weight row `r + i` · activation row `t`, for every row in
/// `rows` of the BF16 matrix `bytes` (`row_bytes` a row) and every activation row of `a`.
///
/// Cache blocking: `K` splits into blocks of at most [`K_BLOCK`] values and the tokens into
/// blocks whose slice of one `K` block fits in L2 ([`BLOCK_BYTES`]). For each token block,
/// [`SPAN_ROWS`] weight rows pass over one `K` block at a time (their accumulators wait in
/// memory between blocks, so the activations of a `K` block are read from L3 once per
/// [`SPAN_ROWS`] rows), [`TILE_ROWS`] rows at a time meeting every token of the block in
/// register tiles of [`TILE_TOKENS`]: the rows' slice stays in L1 while the activations stream
/// from L2, and each weight row is read from memory once per token block, prefetched one row
/// per tile while the previous rows compute. Results gather per token for [`ROW_TILE`] rows
/// before `store`. Every (row, token) pair is summed as [`dot_avx512`] sums it, so the results
/// are the row kernels', bit for bit.
///
/// # Safety
/// The CPU must have AVX-512 F/BW and BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn gemm(
    a: &Bf16Acts,
    bytes: &[u8],
    row_bytes: usize,
    rows: std::ops::Range<usize>,
    mut store: impl FnMut(usize, usize, &[f32]),
) {
    let (t, k, lead) = (a.rows(), row_bytes / 2, a.lead().min(row_bytes / 2));
    assert!(rows.end * row_bytes <= bytes.len());
    if t == 0 || rows.is_empty() {
        return;
    }
    debug_assert!(a.row(0).len() >= k);
    // Blocks of `K`, as even as whole 32-value steps allow: the first also takes the lead,
    // so that every inner boundary falls between two steps.
    let steps = (k - lead).div_ceil(32);
    let n_spans = (k - lead).div_ceil(K_BLOCK).max(1);
    let per = steps.div_ceil(n_spans) * 32;
    let mut spans = Vec::new();
    let mut start = 0;
    while start < k {
        let end = (if start == 0 { lead } else { start } + per).min(k);
        spans.push(Span {
            start,
            end,
            k,
            lead,
        });
        start = end;
    }
    let kb = spans[0].end;
    // Token blocks as even as whole tiles allow (a short last block would read every weight
    // row from memory for a few tokens).
    let most = (BLOCK_BYTES / (2 * kb)).max(TILE_TOKENS) / TILE_TOKENS * TILE_TOKENS;
    let block = t
        .div_ceil(t.div_ceil(most))
        .next_multiple_of(TILE_TOKENS)
        .min(t);
    let tiles = block.div_ceil(TILE_TOKENS);
    let mut buf = vec![[0.0f32; ROW_TILE]; block];
    let mut accs = vec![[_mm512_setzero_ps(); TILE]; SPAN_ROWS.div_ceil(TILE_ROWS) * tiles];
    let w0 = bytes.as_ptr().cast::<u16>();
    let (a0, stride) = (a.row(0).as_ptr(), a.row(0).len());
    debug_assert!(t == 1 || a.row(1).as_ptr() == a0.wrapping_add(stride));
    // The row group whose block of `K` the tiles after (r, span si) need first: the next
    // group of the same rows, else the first group for the next block of `K`, else the next
    // rows' first block (the chunk's first rows for the next token block).
    let next_stage = |r: usize, si: usize, sub: std::ops::Range<usize>| {
        if r + TILE_ROWS < sub.end {
            (r + TILE_ROWS, si, sub.end)
        } else if si + 1 < spans.len() {
            (sub.start, si + 1, sub.end)
        } else {
            let n = if sub.end < rows.end {
                sub.end
            } else {
                rows.start
            };
            let sub_end = (n + SPAN_ROWS).min(rows.end);
            (n, 0, sub_end)
        }
    };
    let mut b0 = 0;
    while b0 < t {
        let bn = block.min(t - b0);
        let mut tile0 = rows.start;
        while tile0 < rows.end {
            let tile_end = (tile0 + ROW_TILE).min(rows.end);
            let mut sub0 = tile0;
            while sub0 < tile_end {
                let sub_end = (sub0 + SPAN_ROWS).min(tile_end);
                for (si, &span) in spans.iter().enumerate() {
                    let mut r = sub0;
                    while r < sub_end {
                        let rn = TILE_ROWS.min(sub_end - r);
                        let w: [*const u16; TILE_ROWS] =
                            std::array::from_fn(|j| w0.wrapping_add((r + j.min(rn - 1)) * k));
                        let (pr, psi, pend) = next_stage(r, si, sub0..sub_end);
                        let pn = TILE_ROWS.min(pend - pr);
                        let mut t0 = b0;
                        while t0 < b0 + bn {
                            let mn = TILE_TOKENS.min(b0 + bn - t0);
                            let c = (t0 - b0) / TILE_TOKENS;
                            // One row of the next stage's weights per tile.
                            let pf_row = if c < pn { pr + c } else { r };
                            let pf = bytes
                                .as_ptr()
                                .wrapping_add(pf_row * row_bytes + 2 * spans[psi].start);
                            let act: [*const u16; TILE_TOKENS] = std::array::from_fn(|i| {
                                a0.wrapping_add((t0 + i.min(mn - 1)) * stride)
                            });
                            let acc = &mut accs[(r - sub0) / TILE_ROWS * tiles + c];
                            // SAFETY: rows `r .. r + rn < rows.end` lie in `bytes` (asserted
                            // above), each `k` values; activation rows hold `k` values at
                            // least; `buf` has a row for each token of the block.
                            unsafe {
                                TILES[rn - 1][mn - 1](
                                    &w,
                                    &act,
                                    span,
                                    acc,
                                    pf,
                                    buf[t0 - b0..].as_mut_ptr().cast::<f32>().add(r - tile0),
                                    ROW_TILE,
                                );
                            }
                            t0 += mn;
                        }
                        r += rn;
                    }
                }
                sub0 = sub_end;
            }
            for (i, b) in buf[..bn].iter().enumerate() {
                store(b0 + i, tile0, &b[..tile_end - tile0]);
            }
            tile0 = tile_end;
        }
        b0 += bn;
    }
}
