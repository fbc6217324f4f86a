//! Scalar references of the integer dot products: one weight row (whole blocks, as stored)
//! against one row of quantized activations; and of BF16 weights against BF16 activations.
//!
//! Each sums integer products per (sub-)block exactly, then applies the weight and activation
//! scales in `f32`. For Q8_0, Q4_K, Q5_K and Q6_K the block results are added in block order
//! from `+0.0`, exactly as the AVX-512 row and GEMM kernels do (see `gemm.rs`), so those agree
//! with this tier bit for bit; the other formats' SIMD kernels sum in a different order and
//! agree to `f32` rounding. Weight quants come from `qinfer-quant`'s block decoders.

use qinfer_quant::{iq4_nl, iq4_xs, q4_0, q4_k, q5_0, q5_k, q6_k, q8_0};

use super::act::{BlockQ8_0, BlockQ8K};

fn blocks<const B: usize>(w: &[u8]) -> impl Iterator<Item = &[u8; B]> {
    w.as_chunks::<B>().0.iter()
}

fn isum(w: impl Iterator<Item = i32>, a: &[i8]) -> i32 {
    w.zip(a).map(|(w, &a)| w * i32::from(a)).sum()
}

pub fn q8_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    blocks::<{ q8_0::BYTES }>(w)
        .zip(a)
        .map(|(wb, ab)| {
            let b = q8_0::BlockQ8_0::from_bytes(wb);
            b.d.to_f32() * ab.d * isum(b.qs.iter().map(|&q| i32::from(q)), &ab.qs) as f32
        })
        .fold(0.0, |y, p| y + p)
}

pub fn q4_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    blocks::<{ q4_0::BYTES }>(w)
        .zip(a)
        .map(|(wb, ab)| {
            let b = q4_0::BlockQ4_0::from_bytes(wb);
            let q = (0..32).map(|i| {
                let byte = b.qs[i % 16];
                i32::from(if i < 16 { byte & 0x0F } else { byte >> 4 }) - 8
            });
            b.d.to_f32() * ab.d * isum(q, &ab.qs) as f32
        })
        .sum()
}

pub fn q5_0(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    blocks::<{ q5_0::BYTES }>(w)
        .zip(a)
        .map(|(wb, ab)| {
            let b = q5_0::BlockQ5_0::from_bytes(wb);
            let q = b.quants().map(|q| i32::from(q) - 16);
            b.d.to_f32() * ab.d * isum(q.into_iter(), &ab.qs) as f32
        })
        .sum()
}

pub fn iq4_nl(w: &[u8], a: &[BlockQ8_0]) -> f32 {
    blocks::<{ iq4_nl::BYTES }>(w)
        .zip(a)
        .map(|(wb, ab)| {
            let b = iq4_nl::BlockIq4Nl::from_bytes(wb);
            let q = (0..32).map(|i| {
                let byte = b.qs[i % 16];
                let idx = if i < 16 { byte & 0x0F } else { byte >> 4 };
                i32::from(iq4_nl::KVALUES[usize::from(idx)])
            });
            b.d.to_f32() * ab.d * isum(q, &ab.qs) as f32
        })
        .sum()
}

/// Q4_K and Q5_K: `Σ_s (d·sc_s)·Σ q·a − (dmin·m_s)·Σ a`, the sums of `a` from the bsums.
fn affine_k(d: f32, dmin: f32, packed: &[u8; 12], q: &[u8; 256], ab: &BlockQ8K) -> f32 {
    let (sc, mn) = q4_k::unpack_scale_min(packed);
    let mut dot = 0i32;
    let mut mins = 0i32;
    for s in 0..8 {
        let r = 32 * s..32 * (s + 1);
        dot += i32::from(sc[s]) * isum(q[r.clone()].iter().map(|&q| i32::from(q)), &ab.qs[r]);
        mins += i32::from(mn[s]) * (i32::from(ab.bsums[2 * s]) + i32::from(ab.bsums[2 * s + 1]));
    }
    d * ab.d * dot as f32 - dmin * ab.d * mins as f32
}

pub fn q4_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    blocks::<{ q4_k::BYTES }>(w)
        .zip(a)
        .map(|(wb, ab)| {
            let b = q4_k::BlockQ4K::from_bytes(wb);
            affine_k(b.d.to_f32(), b.dmin.to_f32(), &b.scales, &b.quants(), ab)
        })
        .fold(0.0, |y, p| y + p)
}

pub fn q5_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    blocks::<{ q5_k::BYTES }>(w)
        .zip(a)
        .map(|(wb, ab)| {
            let b = q5_k::BlockQ5K::from_bytes(wb);
            affine_k(b.d.to_f32(), b.dmin.to_f32(), &b.scales, &b.quants(), ab)
        })
        .fold(0.0, |y, p| y + p)
}

pub fn q6_k(w: &[u8], a: &[BlockQ8K]) -> f32 {
    blocks::<{ q6_k::BYTES }>(w)
        .zip(a)
        .map(|(wb, ab)| {
            let b = q6_k::BlockQ6K::from_bytes(wb);
            let q = b.quants();
            let mut dot = 0i32;
            for s in 0..16 {
                let r = 16 * s..16 * (s + 1);
                dot += i32::from(b.scales[s])
                    * isum(q[r.clone()].iter().map(|&q| i32::from(q)), &ab.qs[r]);
            }
            b.d.to_f32() * ab.d * dot as f32
        })
        .fold(0.0, |y, p| y + p)
}

pub fn iq4_xs(w: &[u8], a: &[BlockQ8K]) -> f32 {
    blocks::<{ iq4_xs::BYTES }>(w)
        .zip(a)
        .map(|(wb, ab)| {
            let b = iq4_xs::BlockIq4Xs::from_bytes(wb);
            let mut dot = 0i32;
            for (s, scale) in b.sub_scales().into_iter().enumerate() {
                let q = (0..32).map(|i| {
                    let byte = b.qs[16 * s + i % 16];
                    let idx = if i < 16 { byte & 0x0F } else { byte >> 4 };
                    i32::from(iq4_nl::KVALUES[usize::from(idx)])
                });
                dot += i32::from(scale) * isum(q, &ab.qs[32 * s..32 * (s + 1)]);
            }
            b.d.to_f32() * ab.d * dot as f32
        })
        .sum()
}

/// `Σ w·x` for an `f32` weight row already widened (exact path, and float weights).
pub fn f32_dot(w: &[f32], x: &[f32]) -> f32 {
    crate::ops::dot(w, x)
}

/// BF16 weights (`w`, as stored) against BF16 activations (an [`super::act::Bf16Acts`] row,
/// at least as long): both widened to `f32` exactly, every product exact in `f32` (8 × 8
/// significant bits), the products summed in `f32`.
pub fn bf16(w: &[u8], a: &[u16]) -> f32 {
    let widen = |b: u16| f32::from_bits(u32::from(b) << 16);
    let w: Vec<f32> = w
        .chunks_exact(2)
        .map(|b| widen(u16::from_le_bytes([b[0], b[1]])))
        .collect();
    let a: Vec<f32> = a[..w.len()].iter().map(|&b| widen(b)).collect();
    f32_dot(&w, &a)
}
