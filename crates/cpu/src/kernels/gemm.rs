//! AVX-512 VNNI matrix-matrix kernels for prefill (many activation rows against Q4_K, Q5_K,
//! Q6_K and Q8_0 weights).
//!
//! The row kernels in `avx512.rs` put one weight row's *elements* in the vector lanes, so each
//! 64 products cost a `vpmaddubsw` + `vpdpwssd` pair and a 64-byte activation load. Here the
//! lanes are *tokens*: activations are rearranged once per matmul into groups of 16 tokens,
//! four consecutive bytes of each token per 32-bit lane ([`GemmActs`]), and four bytes of a
//! weight row are broadcast to every lane, so one `vpdpbusd` does 64 products of one weight row
//! against 16 tokens. A tile of `R` weight rows × `NT` token groups reuses every activation load
//! for `R` rows and every weight broadcast for `NT` groups. Weight rows are unpacked once per
//! tile into bytes (`u8`: Q4_K 0..15, Q5_K 0..31, Q6_K 0..63, Q8_0 `q + 128`) with their integer sub-block
//! scales.
//!
//! # Arithmetic (the same as the reference tier and the row kernels, bit for bit)
//! Per block `b` of a weight row and a token, the integer sums are exact:
//! * Q4_K, Q5_K: `I = Σ_j sc_j · Σ_{i∈j} q_i a_i`, `M = Σ_j m_j · Σ_{i∈j} a_i` (sub-blocks of 32);
//!   `p = (d·d_a)·I − (dmin·d_a)·M`.
//! * Q6_K: `I = Σ_j sc_j · Σ_{i∈j} (q_i − 32) a_i` (sub-blocks of 16); `p = (d·d_a)·I`.
//! * Q8_0: `I = Σ q_i a_i`; `p = (d·d_a)·I`.
//!
//! and `y = ((0 + p_0) + p_1) + …` in block order, every operation rounded to `f32` as written
//! (no fused multiply-add). [`super::reference`] and the row kernels compute exactly this, so a
//! token's result does not depend on how many tokens share the call, which kernel ran, or the
//! thread count: batched and single-sequence forwards agree bit for bit.

use std::arch::x86_64::*;

use super::act::QuantActs;

/// Tokens per group (the vector lanes).
pub(crate) const LANES: usize = 16;
/// Fewest activation rows for which the GEMM path is used for Q6_K and Q8_0 (below it, the
/// row kernels; Q4_K and Q5_K meet the rows-in-lanes kernel up to `rows16::MAX_TOKENS`): one
/// routed Q4_K expert of the 35B-A3B (`cargo bench -p qinfer-cpu --bench kernels -- expert`)
/// at 12 tokens took 471 µs in the row kernels, 429 µs here (one group of 16 lanes, 12 filled).
pub(crate) const MIN_ROWS: usize = 12;
/// Weight rows per tile.
const R: usize = 4;
/// Token groups per tile.
const NT: usize = 3;
/// Weight elements of a row unpacked at a time (a whole number of blocks, at least one): a
/// tile's unpacked bytes (`R × 1024`) stay in L1 while every token group passes over them, and
/// each weight row is unpacked once per pass (a row unpacked whole, 9,216 elements of the 4B's
/// `ffn_down`, filled 36 KB: out of L1, and unpacked again for every pass).
const CHUNK_ELEMS: usize = 1024;
/// Activation bytes of one K-chunk that a pass covers (they stay in L2 while every tile of the
/// chunk passes over them); at least [`MIN_GROUPS_PER_PASS`] groups. With 1,024-element chunks a
/// pass is 32 groups: a 512-token prefill in one pass.
const PASS_BYTES: usize = 512 << 10;
const MIN_GROUPS_PER_PASS: usize = 8;
/// Weight rows whose running sums a pass keeps (`64 × 512 tokens × 4` bytes = 128 KB, in L2
/// beside the activations) while it walks the K-chunks.
const PANEL_ROWS: usize = 64;

/// Weight formats with a GEMM kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GemmFmt {
    Q4K,
    Q5K,
    Q6K,
    Q8_0,
}

impl GemmFmt {
    /// The GEMM format for an integer format, if it has one.
    pub(crate) fn of(fmt: super::IntFmt) -> Option<Self> {
        use super::IntFmt;
        Some(match fmt {
            IntFmt::Q4K => GemmFmt::Q4K,
            IntFmt::Q5K => GemmFmt::Q5K,
            IntFmt::Q6K => GemmFmt::Q6K,
            IntFmt::Q8_0 => GemmFmt::Q8_0,
            _ => return None,
        })
    }

    /// Elements per block.
    const fn block(self) -> usize {
        match self {
            GemmFmt::Q4K | GemmFmt::Q5K | GemmFmt::Q6K => 256,
            GemmFmt::Q8_0 => 32,
        }
    }

    /// Bytes per block in the weight row.
    const fn block_bytes(self) -> usize {
        match self {
            GemmFmt::Q4K => 144,
            GemmFmt::Q5K => 176,
            GemmFmt::Q6K => 210,
            GemmFmt::Q8_0 => 34,
        }
    }

    /// 32-bit words of activation sums per block and lane (see [`GemmActs::sums`]).
    const fn sum_words(self) -> usize {
        match self {
            GemmFmt::Q4K | GemmFmt::Q5K => 4,
            GemmFmt::Q6K => 8,
            GemmFmt::Q8_0 => 1,
        }
    }
}

/// Activations `[T, K]`, quantized as the row kernels quantize them, rearranged for the GEMM.
#[derive(Debug)]
pub(crate) struct GemmActs {
    fmt: GemmFmt,
    /// Activation rows (tokens); lanes past `t` in the last group are zero.
    t: usize,
    groups: usize,
    /// `K / 4`.
    quads: usize,
    /// `K / block`.
    blocks: usize,
    /// `[group][quad][lane]`: bytes `4·quad .. 4·quad + 4` of the token's quantized row.
    qs: Vec<i32>,
    /// `[group][block][lane]`: the token's scale for the block.
    d: Vec<f32>,
    /// `[group][block][word][lane]`: Q4_K: the sums of sub-blocks `(2w, 2w + 1)` of 32 as an
    /// `i16` pair; Q6_K: the sums of sub-blocks `(2w, 2w + 1)` of 16 as an `i16` pair; Q8_0:
    /// `128 · Σ a` of the block.
    sums: Vec<i32>,
}

impl GemmActs {
    /// Rearranges `q` (Q8_K blocks for Q4_K/Q6_K, Q8_0 blocks for Q8_0, natural element order).
    pub(crate) fn new(fmt: GemmFmt, q: &QuantActs, t: usize, k: usize) -> Self {
        let groups = t.div_ceil(LANES);
        let (quads, blocks, words) = (k / 4, k / fmt.block(), fmt.sum_words());
        let mut a = GemmActs {
            fmt,
            t,
            groups,
            quads,
            blocks,
            qs: vec![0; groups * quads * LANES],
            d: vec![0.0; groups * blocks * LANES],
            sums: vec![0; groups * blocks * words * LANES],
        };
        for tok in 0..t {
            let (g, lane) = (tok / LANES, tok % LANES);
            for b in 0..blocks {
                let at = (g * blocks + b) * LANES + lane;
                let (bytes, d): (&[i8], f32) = match fmt {
                    GemmFmt::Q8_0 => {
                        let blk = &q.q8_0_row(tok)[b];
                        // Wrapping: a block of non-finite activations (a damaged state) may
                        // carry any sum; its outputs are NaN-tainted either way, never a panic.
                        a.sums[at] = blk.sum.wrapping_mul(128);
                        (&blk.qs, blk.d)
                    }
                    GemmFmt::Q4K | GemmFmt::Q5K | GemmFmt::Q6K => {
                        let blk = &q.q8_k_row(tok)[b];
                        let s = |i: usize| i32::from(blk.bsums[i]);
                        for w in 0..words {
                            a.sums[((g * blocks + b) * words + w) * LANES + lane] = match fmt {
                                GemmFmt::Q4K | GemmFmt::Q5K => {
                                    i16_pair(s(4 * w) + s(4 * w + 1), s(4 * w + 2) + s(4 * w + 3))
                                }
                                _ => i16_pair(s(2 * w), s(2 * w + 1)),
                            };
                        }
                        (&blk.qs, blk.d)
                    }
                };
                a.d[at] = d;
                let q0 = b * fmt.block() / 4;
                for (i, c) in bytes.chunks_exact(4).enumerate() {
                    a.qs[(g * quads + q0 + i) * LANES + lane] =
                        i32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]);
                }
            }
        }
        a
    }
}

/// Unpacked weight rows of one tile, one K-chunk of them: bytes in natural order and per-block
/// scales, for the chunk's blocks `b0 .. b0 + blocks` (`blocks ≤` the capacity the strides use).
struct Tile {
    /// Row stride of `q` (elements of a full chunk).
    k: usize,
    /// Row stride of the scales (blocks of a full chunk).
    nb: usize,
    /// The chunk: its first block in the row, and its blocks.
    b0: usize,
    blocks: usize,
    /// `[R][K]`.
    q: Vec<u8>,
    /// `[R][block]`: `d` (Q4_K, Q6_K, Q8_0) and `dmin` (Q4_K).
    d: Vec<f32>,
    dmin: Vec<f32>,
    /// `[R][block][16]`: sub-block scales (Q4_K: 8 used, Q6_K: 16).
    sc: Vec<i32>,
    /// `[R][block][8]`: `i16` pairs of Q4_K minimums (4 used) or Q6_K scales (8 used).
    pairs: Vec<i32>,
}

impl Tile {
    fn new(k: usize, blocks: usize) -> Self {
        Tile {
            k,
            nb: blocks,
            b0: 0,
            blocks,
            q: vec![0; R * k],
            d: vec![0.0; R * blocks],
            dmin: vec![0.0; R * blocks],
            sc: vec![0; R * blocks * 16],
            pairs: vec![0; R * blocks * 8],
        }
    }
}

/// Two values (each fitting `i16`) as the `i16` pair `vpdpwssd` multiplies lane-wise.
fn i16_pair(lo: i32, hi: i32) -> i32 {
    (lo as u16 as u32 | ((hi as u16 as u32) << 16)) as i32
}

/// The `f16` at byte `at` of a block.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
fn f16_at(b: &[u8], at: usize) -> f32 {
    assert!(at + 2 <= b.len());
    // SAFETY: two bytes at `at` are in `b` (checked above); the features are enabled here.
    unsafe { super::avx512::f16(b.as_ptr().add(at)) }
}

/// Unpacks the tile's chunk of weight row `row` (the row's bytes) into slot `r` of `tile`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
fn unpack(fmt: GemmFmt, row: &[u8], tile: &mut Tile, r: usize) {
    let (k, nb, bb) = (tile.k, tile.nb, fmt.block_bytes());
    let q = &mut tile.q[r * k..(r + 1) * k];
    let chunk = &row[tile.b0 * bb..(tile.b0 + tile.blocks) * bb];
    for (b, blk) in chunk.chunks_exact(bb).enumerate() {
        let qb = &mut q[b * fmt.block()..(b + 1) * fmt.block()];
        let at = r * nb + b;
        match fmt {
            GemmFmt::Q4K | GemmFmt::Q5K => {
                let five = fmt == GemmFmt::Q5K;
                tile.d[at] = f16_at(blk, 0);
                tile.dmin[at] = f16_at(blk, 2);
                let packed: &[u8; 12] = blk[4..16].try_into().expect("12 scale bytes");
                let (sc, mn) = qinfer_quant::q4_k::unpack_scale_min(packed);
                for j in 0..8 {
                    tile.sc[at * 16 + j] = i32::from(sc[j]);
                }
                for w in 0..4 {
                    tile.pairs[at * 8 + w] =
                        i16_pair(i32::from(mn[2 * w]), i32::from(mn[2 * w + 1]));
                }
                let (m4, one) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(1));
                let qs = if five { 48 } else { 16 };
                for c in 0..4 {
                    // SAFETY: the quants (bytes `qs + 32c ..` + 32) and Q5_K's high bits (bytes
                    // 16 .. 48) lie in the block; elements 64c .. 64c + 64 in the output.
                    unsafe {
                        let v = _mm256_loadu_si256(blk.as_ptr().add(qs + 32 * c).cast());
                        let mut lo = _mm256_and_si256(v, m4);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                        if five {
                            // Bit 2c of byte i is element 64c + i's fifth bit, bit 2c + 1 that
                            // of element 64c + 32 + i.
                            let qh = _mm256_loadu_si256(blk.as_ptr().add(16).cast());
                            let sh = _mm_cvtsi32_si128(2 * c as i32);
                            let b0 = _mm256_and_si256(_mm256_srl_epi16(qh, sh), one);
                            let b1 = _mm256_and_si256(
                                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * c as i32 + 1)),
                                one,
                            );
                            lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(b0));
                            hi = _mm256_or_si256(hi, _mm256_slli_epi16::<4>(b1));
                        }
                        _mm256_storeu_si256(qb.as_mut_ptr().add(64 * c).cast(), lo);
                        _mm256_storeu_si256(qb.as_mut_ptr().add(64 * c + 32).cast(), hi);
                    }
                }
            }
            GemmFmt::Q6K => {
                tile.d[at] = f16_at(blk, 208);
                let sc = |j: usize| i32::from(blk[192 + j] as i8);
                for j in 0..16 {
                    tile.sc[at * 16 + j] = sc(j);
                }
                for w in 0..8 {
                    tile.pairs[at * 8 + w] = i16_pair(sc(2 * w), sc(2 * w + 1));
                }
                let (m4, m3) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
                for h in 0..2 {
                    // SAFETY: ql 64h .. 64h + 64, qh 128 + 32h .. + 32 lie in the 210-byte
                    // block; elements 128h .. 128h + 128 in the output.
                    unsafe {
                        let p = blk.as_ptr();
                        let l0 = _mm256_loadu_si256(p.add(64 * h).cast());
                        let l1 = _mm256_loadu_si256(p.add(64 * h + 32).cast());
                        let hb = _mm256_loadu_si256(p.add(128 + 32 * h).cast());
                        let hi = |s: i32| {
                            let x = match s {
                                0 => hb,
                                2 => _mm256_srli_epi16::<2>(hb),
                                4 => _mm256_srli_epi16::<4>(hb),
                                _ => _mm256_srli_epi16::<6>(hb),
                            };
                            _mm256_slli_epi16::<4>(_mm256_and_si256(x, m3))
                        };
                        let parts = [
                            _mm256_or_si256(_mm256_and_si256(l0, m4), hi(0)),
                            _mm256_or_si256(_mm256_and_si256(l1, m4), hi(2)),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                                hi(4),
                            ),
                            _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                                hi(6),
                            ),
                        ];
                        for (m, v) in parts.into_iter().enumerate() {
                            _mm256_storeu_si256(qb.as_mut_ptr().add(128 * h + 32 * m).cast(), v);
                        }
                    }
                }
            }
            GemmFmt::Q8_0 => {
                tile.d[at] = f16_at(blk, 0);
                // SAFETY: 32 quants at byte 2 of the 34-byte block; 32 output bytes.
                unsafe {
                    let v = _mm256_loadu_si256(blk.as_ptr().add(2).cast());
                    let u = _mm256_xor_si256(v, _mm256_set1_epi8(-128));
                    _mm256_storeu_si256(qb.as_mut_ptr().cast(), u);
                }
            }
        }
    }
}

/// Adds to `y[r][n]` (16 tokens each), block by block in order, the products of the tile's
/// chunk of `RR ≤ R` rows against groups `g0 .. g0 + NN`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
fn kernel<const F: u8, const RR: usize, const NN: usize>(
    a: &GemmActs,
    tile: &Tile,
    g0: usize,
    y: &mut [[__m512; NN]; RR],
) {
    // Q5_K runs as Q4_K (the same arithmetic on 5-bit quants).
    let fmt = match F {
        0 => GemmFmt::Q4K,
        1 => GemmFmt::Q6K,
        _ => GemmFmt::Q8_0,
    };
    let (nb, words) = (tile.nb, fmt.sum_words());
    let (sub, subs) = match fmt {
        GemmFmt::Q4K | GemmFmt::Q5K => (32, 8),
        GemmFmt::Q6K => (16, 16),
        GemmFmt::Q8_0 => (32, 1),
    };
    let (b0, blocks) = (tile.b0, tile.blocks);
    assert!(g0 + NN <= a.groups && RR <= R && blocks <= nb && b0 + blocks <= a.blocks);
    let zero = _mm512_setzero_si512();
    // SAFETY (every pointer below): groups `g0 + n < a.groups` have `quads × 16` words of
    // quants, `a.blocks × 16` scales and `a.blocks × words × 16` sums, of which the chunk's
    // blocks `b0 .. b0 + blocks` are read; tile rows `r < R` have `tile.k` bytes and `nb`
    // scale sets, of which the first `blocks` are read (checked above and by construction).
    let qs: [*const i32; NN] = std::array::from_fn(|n| {
        // SAFETY: as stated above (the chunk's first quad of the group).
        unsafe {
            a.qs.as_ptr()
                .add(((g0 + n) * a.quads + b0 * fmt.block() / 4) * LANES)
        }
    });
    let wq: [*const u8; RR] = std::array::from_fn(|r| {
        // SAFETY: as stated above.
        unsafe { tile.q.as_ptr().add(r * tile.k) }
    });
    let mut quad = 0;
    for b in 0..blocks {
        let mut isum = [[zero; NN]; RR];
        for j in 0..subs {
            let mut p = [[zero; NN]; RR];
            for _ in 0..sub / 4 {
                // SAFETY: as stated above.
                unsafe {
                    let av: [__m512i; NN] =
                        std::array::from_fn(|n| _mm512_loadu_si512(qs[n].add(quad * LANES).cast()));
                    for r in 0..RR {
                        let w =
                            _mm512_set1_epi32(wq[r].add(4 * quad).cast::<i32>().read_unaligned());
                        for n in 0..NN {
                            p[r][n] = _mm512_dpbusd_epi32(p[r][n], w, av[n]);
                        }
                    }
                }
                quad += 1;
            }
            if fmt == GemmFmt::Q8_0 {
                isum = p;
            } else {
                for r in 0..RR {
                    // SAFETY: as stated above.
                    let sc = unsafe { *tile.sc.get_unchecked((r * nb + b) * 16 + j) };
                    let s = _mm512_set1_epi32(sc);
                    for n in 0..NN {
                        isum[r][n] = _mm512_add_epi32(isum[r][n], _mm512_mullo_epi32(p[r][n], s));
                    }
                }
            }
        }
        for r in 0..RR {
            let at = r * nb + b;
            // SAFETY: as stated above.
            let (dw, dmin) = unsafe { (*tile.d.get_unchecked(at), *tile.dmin.get_unchecked(at)) };
            let dw = _mm512_set1_ps(dw);
            for n in 0..NN {
                let ab = (g0 + n) * a.blocks + b0 + b;
                // SAFETY: as stated above.
                unsafe {
                    let da = _mm512_loadu_ps(a.d.as_ptr().add(ab * LANES));
                    let dd = _mm512_mul_ps(dw, da);
                    let sums = |w: usize| {
                        _mm512_loadu_si512(a.sums.as_ptr().add((ab * words + w) * LANES).cast())
                    };
                    let pair = |w: usize| _mm512_set1_epi32(*tile.pairs.get_unchecked(at * 8 + w));
                    let i = isum[r][n];
                    let pv = match fmt {
                        GemmFmt::Q8_0 => {
                            _mm512_mul_ps(dd, _mm512_cvtepi32_ps(_mm512_sub_epi32(i, sums(0))))
                        }
                        GemmFmt::Q6K => {
                            let mut o = zero;
                            for w in 0..8 {
                                o = _mm512_dpwssd_epi32(o, sums(w), pair(w));
                            }
                            let i = _mm512_sub_epi32(i, _mm512_slli_epi32::<5>(o));
                            _mm512_mul_ps(dd, _mm512_cvtepi32_ps(i))
                        }
                        GemmFmt::Q4K | GemmFmt::Q5K => {
                            let mut m = zero;
                            for w in 0..4 {
                                m = _mm512_dpwssd_epi32(m, sums(w), pair(w));
                            }
                            let ddm = _mm512_mul_ps(_mm512_set1_ps(dmin), da);
                            _mm512_sub_ps(
                                _mm512_mul_ps(dd, _mm512_cvtepi32_ps(i)),
                                _mm512_mul_ps(ddm, _mm512_cvtepi32_ps(m)),
                            )
                        }
                    };
                    y[r][n] = _mm512_add_ps(y[r][n], pv);
                }
            }
        }
    }
}

/// Runs [`kernel`] for `rr` rows and `nn` groups (dispatching to the const shapes), its sums
/// carried in `acc` (`[group - g_first][row - first row][lane]`; rows at `col ..`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
fn run_tile(a: &GemmActs, tile: &Tile, rr: usize, g0: usize, nn: usize, acc: Acc<'_>) {
    macro_rules! go {
        ($r:literal, $n:literal) => {{
            let at =
                |r: usize, n: usize| ((g0 + n - acc.g_first) * acc.width + acc.col + r) * LANES;
            let mut y = [[_mm512_setzero_ps(); $n]; $r];
            for (r, yr) in y.iter_mut().enumerate() {
                for (n, yn) in yr.iter_mut().enumerate() {
                    let v = &acc.buf[at(r, n)..at(r, n) + LANES];
                    // SAFETY: `v` holds 16 floats (bounds-checked above).
                    *yn = unsafe { _mm512_loadu_ps(v.as_ptr()) };
                }
            }
            match a.fmt {
                GemmFmt::Q4K | GemmFmt::Q5K => kernel::<0, $r, $n>(a, tile, g0, &mut y),
                GemmFmt::Q6K => kernel::<1, $r, $n>(a, tile, g0, &mut y),
                GemmFmt::Q8_0 => kernel::<2, $r, $n>(a, tile, g0, &mut y),
            }
            for (r, yr) in y.iter().enumerate() {
                for (n, yn) in yr.iter().enumerate() {
                    let v = &mut acc.buf[at(r, n)..at(r, n) + LANES];
                    // SAFETY: `v` holds 16 floats (bounds-checked above).
                    unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *yn) };
                }
            }
        }};
    }
    match (rr, nn) {
        (4, 3) => go!(4, 3),
        (4, 2) => go!(4, 2),
        (4, 1) => go!(4, 1),
        (3, 3) => go!(3, 3),
        (3, 2) => go!(3, 2),
        (3, 1) => go!(3, 1),
        (2, 3) => go!(2, 3),
        (2, 2) => go!(2, 2),
        (2, 1) => go!(2, 1),
        (1, 3) => go!(1, 3),
        (1, 2) => go!(1, 2),
        (1, 1) => go!(1, 1),
        _ => unreachable!("tiles are at most {R} rows × {NT} groups"),
    }
}

/// Asks for `bytes` in L1 ahead of use.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c")]
fn prefetch(bytes: &[u8]) {
    for at in (0..bytes.len()).step_by(64) {
        // SAFETY: `at` is inside `bytes`; a prefetch never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.as_ptr().add(at).cast()) };
    }
}

/// A panel's running sums in a pass: `[group - g_first][width][lane]`, the tile's rows at
/// `col ..`.
struct Acc<'b> {
    buf: &'b mut [f32],
    width: usize,
    col: usize,
    g_first: usize,
}

/// `out(token, first_row, values)` for weight rows `rows` (bytes of each from `row_bytes(r)`)
/// against every token of `a`: `values[i]` is row `first_row + i`; every (token, row) pair is
/// delivered once.
///
/// Loops, outermost first: passes of token groups (one K-chunk of their activations fits L2),
/// panels of [`PANEL_ROWS`] rows (their running sums stay in L2), K-chunks of
/// [`CHUNK_ELEMS`], tiles of [`R`] rows (unpacked once per chunk and pass: in L1 while the
/// pass's groups go by), tiles of [`NT`] groups. A (token, row)'s blocks are added in order
/// across the chunks, so the bits do not depend on the chunking.
///
/// # Safety
/// The CPU must have the AVX-512 features of [`super::Isa::Avx512`].
pub(crate) unsafe fn gemm<'w>(
    a: &GemmActs,
    rows: std::ops::Range<usize>,
    row_bytes: impl Fn(usize) -> &'w [u8],
    mut out: impl FnMut(usize, usize, &[f32]),
) {
    // Up to one tile of groups, an unpacked row meets every token at once: whole rows, read
    // as long streams (a batched decode step's weights come from memory; in K-chunks they
    // read slower: 35B-A3B shape, `bench -b 16`, 73.3 against 81.7 tok/s).
    let chunk_blocks = if a.groups <= NT {
        a.blocks.max(1)
    } else {
        (CHUNK_ELEMS / a.fmt.block()).clamp(1, a.blocks.max(1))
    };
    let chunk_elems = chunk_blocks * a.fmt.block();
    let mut tile = Tile::new(chunk_elems, chunk_blocks);
    let per_pass = (PASS_BYTES / (chunk_elems * LANES)).max(MIN_GROUPS_PER_PASS);
    let panel = PANEL_ROWS.min(rows.len());
    let mut acc = vec![0.0f32; per_pass.min(a.groups) * panel * LANES];
    let mut line = vec![0.0f32; panel];
    let bb = a.fmt.block_bytes();
    let mut g_pass = 0;
    while g_pass < a.groups {
        let g_end = (g_pass + per_pass).min(a.groups);
        let mut p0 = rows.start;
        while p0 < rows.end {
            let width = panel.min(rows.end - p0);
            let used = (g_end - g_pass) * width * LANES;
            acc[..used].fill(0.0);
            let mut b0 = 0;
            while b0 < a.blocks {
                tile.b0 = b0;
                tile.blocks = chunk_blocks.min(a.blocks - b0);
                let mut r0 = p0;
                while r0 < p0 + width {
                    let rr = R.min(p0 + width - r0);
                    for i in 0..rr {
                        // SAFETY: forwarded from the caller.
                        unsafe { unpack(a.fmt, row_bytes(r0 + i), &mut tile, i) };
                    }
                    // The next tile's piece of its rows (the next chunk's first tile at the
                    // panel's end), fetched while this one computes: pieces of rows a row
                    // apart are not a stream the hardware prefetchers follow.
                    let (next, nb0) = if r0 + rr < p0 + width {
                        (r0 + rr, b0)
                    } else {
                        (p0, b0 + tile.blocks)
                    };
                    if nb0 < a.blocks {
                        let nblocks = chunk_blocks.min(a.blocks - nb0);
                        for r in next..(next + R).min(p0 + width) {
                            // SAFETY: forwarded from the caller.
                            unsafe { prefetch(&row_bytes(r)[nb0 * bb..(nb0 + nblocks) * bb]) };
                        }
                    }
                    let mut g0 = g_pass;
                    while g0 < g_end {
                        let nn = NT.min(g_end - g0);
                        let o = Acc {
                            buf: &mut acc,
                            width,
                            col: r0 - p0,
                            g_first: g_pass,
                        };
                        // SAFETY: forwarded from the caller.
                        unsafe { run_tile(a, &tile, rr, g0, nn, o) };
                        g0 += nn;
                    }
                    r0 += rr;
                }
                b0 += tile.blocks;
            }
            for tok in g_pass * LANES..(g_end * LANES).min(a.t) {
                let (g, lane) = (tok / LANES - g_pass, tok % LANES);
                let sums = &acc[g * width * LANES..(g + 1) * width * LANES];
                for (c, v) in line[..width].iter_mut().enumerate() {
                    *v = sums[c * LANES + lane];
                }
                out(tok, p0, &line[..width]);
            }
            p0 += width;
        }
        g_pass = g_end;
    }
}
