//! Activations quantized on the fly to 8-bit blocks, following GGML's published activation
//! formats so that qinfer rounds exactly where llama.cpp rounds:
//!
//! * [`BlockQ8_0`] (32 values, scale `amax / 127` stored as `f16`) for weights in blocks of 32
//!   (Q4_0, Q5_0, Q8_0, IQ4_NL);
//! * [`BlockQ8K`] (256 values, `f32` scale `max / −127` of the signed maximum, sums of each 16)
//!   for the K-quants and IQ4_XS.
//!
//! Both round to nearest, ties to even, as GGML's x86 code paths do. Each block also carries the
//! integer sum of its quants (GGML's Q8_K `bsums`; for Q8_0 blocks our own addition), which the
//! kernels need to apply the weights' offsets (`q − 8`, `q − 32`, the K-quant minimums).
//!
//! BF16 weights meet activations rounded to BF16 instead ([`Bf16Acts`], as llama.cpp converts
//! them for its BF16 dot products), rounded as `vcvtne2ps2bf16` rounds ([`to_bf16`]).

use super::Isa;

/// 32 activations as `d · qs[i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8_0 {
    /// The scale, already rounded through `f16` as GGML stores it.
    pub d: f32,
    /// `Σ qs`.
    pub sum: i32,
    pub qs: [i8; 32],
}

/// 256 activations as `d · qs[i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    /// `Σ qs` over each group of 16.
    pub bsums: [i16; 16],
}

/// Quantizes 32 values (GGML Q8_0: `d = amax / 127`, `q = round(x · 127 / amax)`).
pub fn quantize_q8_0(x: &[f32]) -> BlockQ8_0 {
    debug_assert_eq!(x.len(), 32);
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
        sum += i32::from(*q);
    }
    BlockQ8_0 {
        d: half::f16::from_f32(d).to_f32(),
        sum,
        qs,
    }
}

/// Quantizes 256 values (GGML Q8_K: the signed maximum maps to −127, `d = 1 / iscale`).
pub fn quantize_q8_k(x: &[f32]) -> BlockQ8K {
    debug_assert_eq!(x.len(), 256);
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut b = BlockQ8K {
        d: 0.0,
        qs: [0; 256],
        bsums: [0; 16],
    };
    if amax == 0.0 {
        return b;
    }
    let iscale = -127.0 / max;
    for (q, v) in b.qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (s, chunk) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = chunk.iter().map(|&q| i16::from(q)).sum();
    }
    b.d = 1.0 / iscale;
    b
}

/// `f(t, blocks of row t)` for every row; rows split over the pool when there are 16 or more.
fn for_rows<B: Send>(
    blocks: &mut [B],
    per_row: usize,
    rows: usize,
    f: &(dyn Fn(usize, &mut [B]) + Sync),
) {
    if rows < 16 || per_row == 0 {
        for (t, out) in blocks.chunks_mut(per_row.max(1)).enumerate() {
            f(t, out);
        }
        return;
    }
    let rows_per_chunk = rows.div_ceil(crate::threads() * 4);
    crate::pool::parallel_chunks_mut(blocks, rows_per_chunk * per_row, &|c, out| {
        for (i, row) in out.chunks_mut(per_row).enumerate() {
            f(c * rows_per_chunk + i, row);
        }
    });
}

/// A matrix of activations `[T, K]` quantized row by row.
#[derive(Clone, Debug)]
pub enum QuantActs {
    Q8_0 {
        blocks: Vec<BlockQ8_0>,
        per_row: usize,
    },
    Q8K {
        blocks: Vec<BlockQ8K>,
        per_row: usize,
    },
}

impl QuantActs {
    /// Quantizes `x` (`[rows, cols]`) to Q8_0 blocks, rows in parallel when there are many.
    pub fn q8_0(x: &[f32], rows: usize, cols: usize, isa: Isa) -> Self {
        let per_row = cols / 32;
        let zero = BlockQ8_0 {
            d: 0.0,
            sum: 0,
            qs: [0; 32],
        };
        let mut blocks = vec![zero; rows * per_row];
        for_rows(&mut blocks, per_row, rows, &|t, out| {
            for (b, xs) in out
                .iter_mut()
                .zip(x[t * cols..(t + 1) * cols].chunks_exact(32))
            {
                match isa {
                    // SAFETY: `isa` is Avx512 only when the CPU has the features.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => unsafe { super::avx512::quantize_q8_0(xs, b) },
                    // SAFETY: `isa` is Avx2 only when the CPU has the features.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 { .. } => unsafe { super::avx2::quantize_q8_0(xs, b) },
                    _ => *b = quantize_q8_0(xs),
                }
            }
        });
        QuantActs::Q8_0 { blocks, per_row }
    }

    /// Quantizes `x` (`[rows, cols]`) to Q8_K blocks, rows in parallel when there are many.
    pub fn q8_k(x: &[f32], rows: usize, cols: usize, isa: Isa) -> Self {
        let per_row = cols / 256;
        let zero = BlockQ8K {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        };
        let mut blocks = vec![zero; rows * per_row];
        for_rows(&mut blocks, per_row, rows, &|t, out| {
            for (b, xs) in out
                .iter_mut()
                .zip(x[t * cols..(t + 1) * cols].chunks_exact(256))
            {
                match isa {
                    // SAFETY: `isa` is Avx512 only when the CPU has the features.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 => unsafe { super::avx512::quantize_q8_k(xs, b) },
                    // SAFETY: `isa` is Avx2 only when the CPU has the features.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 { .. } => unsafe { super::avx2::quantize_q8_k(xs, b) },
                    _ => *b = quantize_q8_k(xs),
                }
            }
        });
        QuantActs::Q8K { blocks, per_row }
    }

    /// Reorders every Q8_K block's sub-blocks of 32 to 0, 2, 1, 3, 4, 6, 5, 7 (the bsums move
    /// with their values): the order in which the AVX-512 Q4_K/Q5_K kernel unpacks nibbles.
    pub fn to_k4_order(&mut self) {
        if let QuantActs::Q8K { blocks, .. } = self {
            for b in blocks.iter_mut() {
                for half in 0..2 {
                    let base = 128 * half;
                    let mut tmp = [0i8; 32];
                    tmp.copy_from_slice(&b.qs[base + 32..base + 64]);
                    b.qs.copy_within(base + 64..base + 96, base + 32);
                    b.qs[base + 64..base + 96].copy_from_slice(&tmp);
                    b.bsums.swap(8 * half + 2, 8 * half + 4);
                    b.bsums.swap(8 * half + 3, 8 * half + 5);
                }
            }
        }
    }

    /// The number of activation rows.
    pub fn rows(&self) -> usize {
        let (blocks, per_row) = match self {
            QuantActs::Q8_0 { blocks, per_row } => (blocks.len(), *per_row),
            QuantActs::Q8K { blocks, per_row } => (blocks.len(), *per_row),
        };
        blocks.checked_div(per_row).unwrap_or(0)
    }

    /// Row `t` as Q8_0 blocks.
    pub fn q8_0_row(&self, t: usize) -> &[BlockQ8_0] {
        match self {
            QuantActs::Q8_0 { blocks, per_row } => &blocks[t * per_row..(t + 1) * per_row],
            QuantActs::Q8K { .. } => {
                unreachable!("the plan pairs each weight type with its format")
            }
        }
    }

    /// Row `t` as Q8_K blocks.
    pub fn q8_k_row(&self, t: usize) -> &[BlockQ8K] {
        match self {
            QuantActs::Q8K { blocks, per_row } => &blocks[t * per_row..(t + 1) * per_row],
            QuantActs::Q8_0 { .. } => {
                unreachable!("the plan pairs each weight type with its format")
            }
        }
    }
}

/// `x` rounded to BF16 bits as `vcvtne2ps2bf16` rounds: to nearest, ties to even; subnormal
/// inputs become zero of the same sign, NaNs stay NaN (made quiet). A finite value rounds to
/// within `2^-8` of itself, relatively (8 significant bits).
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        ((b >> 16) as u16) | 0x0040
    } else if x.is_subnormal() {
        ((b >> 16) as u16) & 0x8000
    } else {
        // Adding 0x7FFF (0x8000 when the kept part is odd) carries into bit 16 exactly when
        // the dropped half is above the tie, or at the tie with an odd kept part.
        ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
    }
}

/// A matrix of activations `[T, K]` rounded to BF16, each row padded with zeros to a multiple
/// of 32 values. Rows start `lead` values before a 64-byte boundary: the offset in a cache
/// line at which the weights' rows start (see `bf16::lead`), so that the kernel's
/// loads of both are aligned after the same first `lead` values.
#[derive(Debug)]
pub struct Bf16Acts {
    data: Vec<u16>,
    start: usize,
    stride: usize,
    rows: usize,
    lead: usize,
}

impl Bf16Acts {
    /// Rounds `x` (`[rows, cols]`) row by row, rows in parallel when there are many; with
    /// `vcvtne2ps2bf16` when `isa` is AVX-512 and the CPU has AVX-512 BF16 (same bits).
    pub fn new(x: &[f32], rows: usize, cols: usize, isa: Isa, lead: usize) -> Self {
        let stride = cols.next_multiple_of(32);
        let lead = lead % 32;
        let mut data = vec![0u16; rows * stride + 32];
        let start = (64 - (data.as_ptr() as usize + 2 * lead) % 64) % 64 / 2;
        let body = &mut data[start..start + rows * stride];
        for_rows(body, stride, rows, &|t, out| {
            let xs = &x[t * cols..(t + 1) * cols];
            match isa {
                // SAFETY: the guard confirmed AVX-512 BF16.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 if super::has_avx512_bf16() => unsafe {
                    super::bf16::round_avx512(xs, out)
                },
                _ => {
                    for (o, v) in out.iter_mut().zip(xs) {
                        *o = to_bf16(*v);
                    }
                }
            }
        });
        Bf16Acts {
            data,
            start,
            stride,
            rows,
            lead,
        }
    }

    /// Number of rows (`T`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values before each row's first 64-byte boundary.
    pub fn lead(&self) -> usize {
        self.lead
    }

    /// Row `t`: its `K` values, then zeros up to a multiple of 32.
    pub fn row(&self, t: usize) -> &[u16] {
        let r = self.start + t * self.stride;
        &self.data[r..r + self.stride]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value is within half a step of its quantized value (the rounding bound), and the
    /// sums are exact.
    #[test]
    fn quantizers_round_within_half_a_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let b = quantize_q8_k(&x);
        for (v, q) in x.iter().zip(b.qs) {
            assert!((v - b.d * f32::from(q)).abs() <= b.d.abs() * 0.5 + 1e-7);
        }
        let s: i32 = b.bsums.iter().map(|&s| i32::from(s)).sum();
        assert_eq!(s, b.qs.iter().map(|&q| i32::from(q)).sum::<i32>());
        let b = quantize_q8_0(&x[..32]);
        // d is rounded through f16 after quantizing, so allow that relative error too.
        for (v, q) in x.iter().zip(b.qs) {
            assert!((v - b.d * f32::from(q)).abs() <= b.d * 0.5 + v.abs() * 1e-3 + 1e-7);
        }
        assert_eq!(b.sum, b.qs.iter().map(|&q| i32::from(q)).sum::<i32>());
        assert!(quantize_q8_k(&[0.0; 256]).qs.iter().all(|&q| q == 0));
    }

    /// The SIMD quantizers of every tier the CPU has produce the same blocks, bit for bit
    /// (including an all-zero block and a row whose largest magnitude is negative).
    #[test]
    fn simd_quantizers_are_bit_exact() {
        let mut x: Vec<f32> = (0..512 * 3)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.5) * 0.0137)
            .collect();
        x[512..768].fill(0.0);
        x[1100] = -40.0;
        for isa in super::super::tiers() {
            let (a, b) = (
                QuantActs::q8_k(&x, 3, 512, Isa::Scalar),
                QuantActs::q8_k(&x, 3, 512, isa),
            );
            for t in 0..3 {
                for (p, q) in a.q8_k_row(t).iter().zip(b.q8_k_row(t)) {
                    assert_eq!((p.d, p.qs, p.bsums), (q.d, q.qs, q.bsums), "{isa:?}");
                }
            }
            let (a, b) = (
                QuantActs::q8_0(&x, 3, 512, Isa::Scalar),
                QuantActs::q8_0(&x, 3, 512, isa),
            );
            for t in 0..3 {
                for (p, q) in a.q8_0_row(t).iter().zip(b.q8_0_row(t)) {
                    assert_eq!((p.d, p.sum, p.qs), (q.d, q.sum, q.qs), "{isa:?}");
                }
            }
        }
    }
}
