//! Equivalence of every kernel tier, and the error the 8-bit (and BF16) activations add.

use qinfer_tensor::{ByteView, DType, Mat, Weight};

use super::*;

fn noise(n: usize, seed: u32) -> Vec<f32> {
    crate::noise::noise(n, seed)
        .into_iter()
        .enumerate()
        // A few outliers, as real activations have.
        .map(|(i, v)| if i % 97 == 5 { v * 8.0 } else { v })
        .collect()
}

fn weight(dtype: DType, n: usize, k: usize, seed: u32) -> Weight {
    let values = noise(n * k, seed);
    let mut bytes = vec![0u8; n * dtype.row_bytes(k).unwrap()];
    let rb = dtype.row_bytes(k).unwrap();
    for (dst, src) in bytes.chunks_mut(rb).zip(values.chunks(k)) {
        qinfer_quant::quantize_row(dtype, src, dst).unwrap();
    }
    Weight::new(dtype, n, k, ByteView::from_vec(bytes)).unwrap()
}

const TYPES: [DType; 11] = [
    DType::Q4_K,
    DType::Q5_K,
    DType::Q6_K,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q5_0,
    DType::IQ4_NL,
    DType::IQ4_XS,
    DType::BF16,
    DType::F16,
    DType::F32,
];

fn run(plan: &Plan<'_>, n: usize, t: usize, group: usize) -> Vec<f32> {
    let mut out = vec![0.0; t * n];
    #[cfg(target_arch = "x86_64")]
    if matches!(plan.acts, Acts::Gemm(_) | Acts::Rows16 { .. }) {
        plan.compute(0..n, t, |tok, r, v| {
            out[tok * n + r..tok * n + r + v.len()].copy_from_slice(v)
        });
        return out;
    }
    for r in 0..n {
        let mut t0 = 0;
        while t0 < t {
            let g = group.min(t - t0);
            let mut o = [0.0; MAX_TOKENS];
            plan.dot(r, t0, &mut o[..g]);
            for i in 0..g {
                out[(t0 + i) * n + r] = o[i];
            }
            t0 += g;
        }
    }
    out
}

/// As [`run`], `rows` weight rows per [`Plan::dot_rows`] call (the last call fewer).
fn run_rows(plan: &Plan<'_>, n: usize, t: usize, group: usize, rows: usize) -> Vec<f32> {
    let mut out = vec![0.0; t * n];
    for r0 in (0..n).step_by(rows) {
        let nr = rows.min(n - r0);
        let mut t0 = 0;
        while t0 < t {
            let g = group.min(t - t0);
            let mut o = [[0.0; MAX_TOKENS]; MAX_ROWS];
            plan.dot_rows(r0, t0, g, &mut o[..nr]);
            for j in 0..nr {
                for i in 0..g {
                    out[(t0 + i) * n + r0 + j] = o[j][i];
                }
            }
            t0 += g;
        }
    }
    out
}

/// `Σ |w x|` per output: the scale of `f32` summation error.
fn magnitude(x: &Mat, w: &Weight) -> Vec<f32> {
    let mut row = vec![0.0; w.cols()];
    let mut out = vec![0.0; x.rows * w.rows()];
    for r in 0..w.rows() {
        qinfer_quant::dequantize_row(w.dtype(), w.row(r), &mut row).unwrap();
        for t in 0..x.rows {
            out[t * w.rows() + r] = row.iter().zip(x.row(t)).map(|(a, b)| (a * b).abs()).sum();
        }
    }
    out
}

/// Every SIMD tier the CPU has (AVX-512; AVX2 with and without AVX-VNNI) against the scalar
/// reference tier, for every type, 1–8 rows per call and `T` not a multiple of the group; and
/// within a tier, the same bits whatever the group.
/// Tolerance: all compute the same exact integer (or `f32`, or BF16 × BF16) products and differ only in the
/// order of `f32` scaling and summation, so `2e-6 · Σ|w·x|` (≈ 16 ulp of the magnitude, over a
/// few hundred terms of partial sums).
#[test]
fn simd_tiers_match_reference_tier() {
    for isa in tiers().into_iter().filter(|&i| i != Isa::Scalar) {
        for dtype in TYPES {
            for (t, n, k) in [
                (1, 3, 256),
                (7, 5, 512),
                (3, 2, 768),
                (19, 3, 512),
                (2, 2, 288),
                (2, 2, 270),
            ] {
                if dtype.row_bytes(k).is_none() {
                    continue;
                }
                let w = weight(dtype, n, k, 7);
                let x = Mat::from_vec(noise(t * k, 3), t, k);
                let mag = magnitude(&x, &w);
                for precision in [MatmulPrecision::Int8, MatmulPrecision::Exact] {
                    if dtype == DType::BF16
                        && precision == MatmulPrecision::Int8
                        && !bf16_products(isa)
                    {
                        // This tier keeps f32 activations for BF16 weights; the reference
                        // tier rounds them to BF16.
                        continue;
                    }
                    let want = run(&Plan::new(&x, &w, Isa::Scalar, precision), n, t, 1);
                    let single = run(&Plan::new(&x, &w, isa, precision), n, t, 1);
                    for group in 1..=MAX_TOKENS {
                        let got = run(&Plan::new(&x, &w, isa, precision), n, t, group);
                        // A row's result may not depend on the rows it is grouped with
                        // (batched and separate forwards agree bit for bit).
                        assert_eq!(got, single, "{isa:?} {dtype} {precision:?} group={group}");
                        for i in 0..got.len() {
                            let err = (got[i] - want[i]).abs();
                            assert!(
                                err <= 2e-6 * mag[i] + 1e-6,
                                "{isa:?} {dtype} {precision:?} t={t} n={n} k={k} group={group}: \
                                 {} vs {} (Σ|wx| {})",
                                got[i],
                                want[i],
                                mag[i]
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Q4_K, Q5_K, Q6_K and Q8_0 follow the reference tier's arithmetic exactly (per-block exact
/// integers, scaled and added in block order), in the row kernels (1–8 rows per call), the
/// GEMM kernel (tiles of up to 4 weight rows × 48 tokens; Q6_K and Q8_0 from 12 rows, Q4_K and
/// Q5_K from 40), Q4_K/Q5_K's sixteen-rows-in-lanes kernel (`rows16.rs`, 12–39 tokens, partial
/// tiles of rows), the four-rows-one-token kernels (`*_x4`), the four-rows-several-tokens
/// kernels (`q45_k_x4n`, `q6_k_x4n`, 2–11 tokens; `q8_0_x4n`) and Q8_0's sixteen-rows kernel (`q8_0_x16n`,
/// 2–11 tokens; the last three reached through `Plan::compute`): every output is
/// bit-identical to the reference, so a token's result does not depend on the batch it is in.
#[test]
fn exact_formats_are_bit_identical_to_the_reference_at_every_batch_size() {
    if !has_avx512() {
        return;
    }
    for dtype in [DType::Q4_K, DType::Q5_K, DType::Q6_K, DType::Q8_0] {
        for (t, n, k) in [
            (1, 3, 512),
            (8, 5, 256),
            (16, 5, 512),
            (19, 7, 768),
            (53, 9, 256),
            (1, 37, 512),
            (2, 37, 256),
            (6, 4, 256),
            (11, 9, 512),
            (12, 5, 256),
            // Q8_0's sixteen-rows kernel: whole calls from four quarters, leftovers, and
            // two groups of tokens.
            (5, 200, 256),
            (11, 70, 512),
            // Long rows, and the GEMM's passes (530 tokens: two at k = 1280).
            (40, 6, 2304),
            (530, 5, 1280),
            // The rows-in-lanes kernel's last token count and partial tiles of rows.
            (39, 21, 512),
            (17, 16, 1024),
        ] {
            let w = weight(dtype, n, k, 13);
            let x = Mat::from_vec(noise(t * k, 17), t, k);
            let want = run(
                &Plan::new(&x, &w, Isa::Scalar, MatmulPrecision::Int8),
                n,
                t,
                1,
            );
            for group in [1, 3, MAX_TOKENS] {
                let got = run(
                    &Plan::new(&x, &w, Isa::Avx512, MatmulPrecision::Int8),
                    n,
                    t,
                    group,
                );
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        e.to_bits(),
                        "{dtype} t={t} n={n} k={k} group={group} output {i}: {g} vs {e}"
                    );
                }
            }
            // Through `Plan::compute` as the matmul op calls it (several rows per call where
            // the kernel takes them), over row ranges split at odd places as threads do.
            let plan = Plan::new(&x, &w, Isa::Avx512, MatmulPrecision::Int8);
            let mut got = vec![f32::NAN; t * n];
            for rows in [0..n.min(3), n.min(3)..n.min(22), n.min(22)..n] {
                plan.compute(rows, t, |tok, r, v| {
                    got[tok * n + r..tok * n + r + v.len()].copy_from_slice(v)
                });
            }
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "{dtype} t={t} n={n} k={k} compute output {i}: {g} vs {e}"
                );
            }
        }
    }
}

/// Int8 against exact `f64` products of the dequantized weights. The only difference is the
/// activation rounding: each activation moves by at most half its block's step (`d/2`; Q8_0
/// blocks store `d` rounded to `f16` after quantizing, so up to `0.56·d`), hence the bound
/// `Σ_blocks 0.6·d · Σ|w|` plus `f32` summation error. For BF16 weights each activation moves
/// by at most `2^-8` of itself (8 significant bits, to nearest), so `2^-8 · Σ|w·x|`.
#[test]
fn int8_error_is_bounded_by_the_activation_rounding() {
    for dtype in TYPES {
        let (t, n, k) = (3, 4, 512);
        let w = weight(dtype, n, k, 11);
        let x = Mat::from_vec(noise(t * k, 5), t, k);
        let got = run(
            &Plan::new(&x, &w, Isa::best(), MatmulPrecision::Int8),
            n,
            t,
            2,
        );
        let mag = magnitude(&x, &w);
        let block = if IntFmt::of(dtype).is_some_and(IntFmt::k_quant) {
            256
        } else {
            32
        };
        let mut row = vec![0.0; k];
        for r in 0..n {
            qinfer_quant::dequantize_row(dtype, w.row(r), &mut row).unwrap();
            for ti in 0..t {
                let xr = x.row(ti);
                let exact: f64 = row
                    .iter()
                    .zip(xr)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let bound: f32 = if dtype == DType::BF16 {
                    mag[ti * n + r] / 256.0
                } else if IntFmt::of(dtype).is_some() {
                    (0..k / block)
                        .map(|b| {
                            let r = b * block..(b + 1) * block;
                            let amax = xr[r.clone()].iter().fold(0.0f32, |m, v| m.max(v.abs()));
                            0.6 * amax / 127.0 * row[r].iter().map(|v| v.abs()).sum::<f32>()
                        })
                        .sum()
                } else {
                    0.0
                };
                let err = (f64::from(got[ti * n + r]) - exact).abs() as f32;
                assert!(
                    err <= bound + 2e-6 * mag[ti * n + r] + 1e-6,
                    "{dtype}: error {err} above the rounding bound {bound}"
                );
            }
        }
    }
}

/// The AVX-512 BF16 rounding gives [`act::to_bf16`]'s bits, and those are round-to-nearest-even
/// (`half`'s conversion, an independent implementation) on normal values; subnormals flush to
/// signed zero as the instruction does. Rows of several lengths cover the masked tails.
#[test]
fn bf16_rounding_is_to_nearest_even_and_simd_matches() {
    let mut x = noise(1000, 13);
    x.extend([
        0.0,
        -0.0,
        1.0,
        f32::from_bits(0x3F80_8000), // a tie, kept part even: rounds down
        f32::from_bits(0x3F81_8000), // a tie, kept part odd: rounds up
        f32::from_bits(0x3F80_8001),
        f32::MAX,
        f32::MIN_POSITIVE,
        f32::from_bits(1),
        -f32::from_bits(0x0040_0000),
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1e-30,
        -3.5e20,
    ]);
    for &v in &x {
        let b = act::to_bf16(v);
        if v.is_nan() {
            assert!(f32::from_bits(u32::from(b) << 16).is_nan());
        } else if v.is_subnormal() {
            assert_eq!(b, (v.to_bits() >> 16) as u16 & 0x8000, "{v:e}");
        } else {
            assert_eq!(b, half::bf16::from_f32(v).to_bits(), "{v:e}");
        }
    }
    if !has_avx512_bf16() {
        return;
    }
    for cols in [1, 15, 16, 17, 31, 32, 33, 64, 100, x.len()] {
        let rows = x.len() / cols;
        let a = act::Bf16Acts::new(&x[..rows * cols], rows, cols, Isa::Scalar, 0);
        let b = act::Bf16Acts::new(&x[..rows * cols], rows, cols, Isa::Avx512, 5);
        for t in 0..rows {
            assert_eq!(a.row(t), b.row(t), "cols {cols} row {t}");
            assert!(a.row(t)[cols..].iter().all(|&v| v == 0));
        }
    }
}

/// The `vdpbf16ps` kernel against [`reference::bf16`] on lengths that are not multiples of
/// 32 (the masked tail), 1–4 weight rows × 1–8 activation rows per call (and one row through
/// [`Plan::dot`]; all bit-identical), and the reference against the `f64` sum of
/// the same BF16 × BF16 products. Tolerance: the products are exact in `f32` in all three, so
/// only the `f32` summation order differs — 16 lanes in the kernel, 8 accumulators
/// in the reference — which leaves a few ulp of `Σ|w·x|` (the same `2e-6 · Σ|w·x|` as the tier
/// test above; the worst case, `K · 2^-24 · Σ|w·x|`, is never approached by sums of random
/// signs).
#[test]
fn bf16_products_match_the_reference() {
    if !has_avx512_bf16() {
        return;
    }
    let widen = |b: u16| f64::from(f32::from_bits(u32::from(b) << 16));
    for (t, n, k) in [
        (1, 3, 7),
        (9, 5, 67),
        (5, 2, 100),
        (8, 7, 1000),
        (3, 2, 2048),
    ] {
        let w = weight(DType::BF16, n, k, 17);
        let x = Mat::from_vec(noise(t * k, 19), t, k);
        let acts = act::Bf16Acts::new(&x.data, t, k, Isa::Scalar, 0);
        let mut want = vec![0.0; t * n];
        let mut mag = vec![0.0; t * n];
        for r in 0..n {
            let wr: Vec<u16> = w
                .row(r)
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            for ti in 0..t {
                let i = ti * n + r;
                want[i] = reference::bf16(w.row(r), acts.row(ti));
                let p = wr
                    .iter()
                    .zip(acts.row(ti))
                    .map(|(&a, &b)| widen(a) * widen(b));
                let exact: f64 = p.clone().sum();
                mag[i] = p.map(f64::abs).sum::<f64>() as f32;
                let err = (f64::from(want[i]) - exact).abs() as f32;
                assert!(
                    err <= 2e-6 * mag[i] + 1e-6,
                    "reference k={k}: {} vs {exact}",
                    want[i]
                );
            }
        }
        let plan = Plan::new(&x, &w, Isa::Avx512, MatmulPrecision::Int8);
        assert_eq!(plan.rows_per_call(), if t > 1 { bf16::ROWS } else { 1 });
        let first = run_rows(&plan, n, t, 1, 1);
        for (group, rows) in (1..=MAX_TOKENS).flat_map(|g| (0..=MAX_ROWS).map(move |r| (g, r))) {
            let got = if rows == 0 {
                run(&plan, n, t, group)
            } else {
                run_rows(&plan, n, t, group, rows)
            };
            // Every pair is summed in one order whatever the grouping: bit-identical.
            assert_eq!(got, first, "t={t} n={n} k={k} group={group} rows={rows}");
            for i in 0..got.len() {
                assert!(
                    (got[i] - want[i]).abs() <= 2e-6 * mag[i] + 1e-6,
                    "t={t} n={n} k={k} group={group} rows={rows}: {} vs {} (Σ|wx| {})",
                    got[i],
                    want[i],
                    mag[i]
                );
            }
        }
    }
}

/// The BF16 GEMM (`bf16::gemm`, which [`Plan::compute`] takes for `bf16::TILE_TOKENS` tokens
/// or more) and the four-row decode path (one token) sum every (weight row, token) pair
/// exactly as the one-row, one-token kernel does, so a
/// token's results are the bits its decode gives whatever the batch: for every number of
/// tokens from 1 to 40, chunks that start and end mid-tile, weights at several offsets from a
/// cache line (the masked `lead` step), lengths with a masked tail, and rows longer than one
/// block of `K` (accumulators carried between blocks).
#[test]
fn bf16_gemm_is_bit_identical_to_the_row_kernel_at_every_batch_size() {
    if !has_avx512_bf16() {
        return;
    }
    for (n, k) in [(9, 64), (23, 1000), (21, 1024), (70, 3104), (6, 4000)] {
        let base = weight(DType::BF16, n, k, 23);
        let len = base.bytes().len();
        let mut padded = vec![0u8; 64];
        padded.extend_from_slice(base.bytes());
        let view = ByteView::from_vec(padded);
        let x = Mat::from_vec(noise(40 * k, 29), 40, k);
        // Each token alone (a decode step): the row kernel, one row and one token per call.
        let one: Vec<Mat> = (0..40)
            .map(|t| Mat::from_vec(x.row(t).to_vec(), 1, k))
            .collect();
        for offset in [0, 2, 32, 46] {
            let w = Weight::new(DType::BF16, n, k, view.slice(offset, len)).unwrap();
            let single: Vec<Vec<f32>> = one
                .iter()
                .map(|xt| {
                    let plan = Plan::new(xt, &w, Isa::Avx512, MatmulPrecision::Int8);
                    (0..n)
                        .map(|r| {
                            let mut o = [0.0];
                            plan.dot(r, 0, &mut o);
                            o[0]
                        })
                        .collect()
                })
                .collect();
            for t in (1..=40).filter(|&t| t <= 14 || t % 9 == 4) {
                let xt = Mat::from_vec(x.data[..t * k].to_vec(), t, k);
                let plan = Plan::new(&xt, &w, Isa::Avx512, MatmulPrecision::Int8);
                for rows in [0..n, n / 3..n - n / 4] {
                    let mut got = vec![f32::NAN; t * n];
                    plan.compute(rows.clone(), t, |tok, r, v| {
                        got[tok * n + r..tok * n + r + v.len()].copy_from_slice(v)
                    });
                    for tok in 0..t {
                        for r in rows.clone() {
                            let (g, e) = (got[tok * n + r], single[tok][r]);
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "n={n} k={k} offset={offset} t={t} rows={rows:?} token {tok} \
                                 row {r}: {g} vs {e}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `bf16::reduce16` gives each vector's `_mm512_reduce_add_ps`, bit for bit, on lanes whose
/// magnitudes differ so much that any other order of the additions would change the sums.
#[test]
fn bf16_reduce16_matches_the_horizontal_add_bit_for_bit() {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        if !has_avx512_bf16() {
            return;
        }
        let scales = [1e-8f32, 1.0, 3e7, -1e12, 0.5, 7e3];
        let vals: Vec<f32> = noise(256, 31)
            .iter()
            .enumerate()
            .map(|(i, v)| v * scales[i % scales.len()] * (1 + i % 7) as f32)
            .collect();
        // SAFETY: the CPU has AVX-512 F/BW and BF16 (checked above).
        unsafe {
            let v: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(vals[16 * j..].as_ptr()));
            let mut got = [0.0f32; 16];
            _mm512_storeu_ps(got.as_mut_ptr(), super::bf16::reduce16(v));
            for (j, g) in got.iter().enumerate() {
                let want = _mm512_reduce_add_ps(v[j]);
                assert_eq!(g.to_bits(), want.to_bits(), "vector {j}: {g} vs {want}");
            }
        }
    }
}
