//! Q6_K: super-blocks of 256 elements in 16 sub-blocks of 16, 6-bit signed quants (low nibble
//! plus two high bits) and signed 8-bit sub-block scales; `x = (d · scale[s]) · (q − 32)`.
//!
//! # Quantization (our own reference; gguf-python has none)
//!
//! 1. **Sub-block fit.** A symmetric grid `scale · l`, `l` in `−32..=31`. The level range is
//!    lopsided, so both orientations are tried: the element of largest magnitude mapped near
//!    `−32` and near `+31`, each stretched by `(n + 0.1k) / n`, `k = −10..=10`. For each
//!    candidate the levels are rounded, the scale re-solved by least squares
//!    (`Σ x·l / Σ l²`), and the pair refined Lloyd-style while the squared error drops.
//! 2. **8-bit sub-block scales.** The sub-block scale of largest magnitude `m` maps to `−128`:
//!    `d = m / −128` (stored as `f16`), the others round to `−128..=127`.
//! 3. **Neighbourhood search.** With `d` fixed, each sub-block tries its integer scale ±1,
//!    reassigns levels and keeps the one with the least error through the decoder arithmetic.

use half::f16;

use crate::{array_at, f16_at, f16_covering, nearest_int};

/// Elements per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BYTES: usize = 210;
/// Elements per sub-block (one 8-bit scale each).
const SUB: usize = 16;

/// One Q6_K super-block as stored: bytes `0..128` low nibbles, `128..192` high bits,
/// `192..208` sub-block scales, `208..210` `d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    /// Two halves of 128. Element `128h + 64n + l` (`n < 2`, `l < 64`) is nibble `n` of
    /// `ql[64h + l]`.
    pub ql: [u8; BLOCK / 2],
    /// Element `128h + 32j + l` (`j < 4`, `l < 32`) has its top two bits at bits `2j..2j + 2`
    /// of `qh[32h + l]`.
    pub qh: [u8; BLOCK / 4],
    /// Signed scale of each sub-block of 16.
    pub scales: [i8; BLOCK / SUB],
    /// Scale of the sub-block scales.
    pub d: f16,
}

const _: () = assert!(size_of::<BlockQ6K>() == BYTES);

impl BlockQ6K {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        let scales: [u8; 16] = array_at(b, 192);
        Self {
            ql: array_at(b, 0),
            qh: array_at(b, 128),
            scales: scales.map(|s| s as i8),
            d: f16_at(b, 208),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..128].copy_from_slice(&self.ql);
        b[128..192].copy_from_slice(&self.qh);
        for (o, s) in b[192..208].iter_mut().zip(self.scales) {
            *o = s as u8;
        }
        b[208..].copy_from_slice(&self.d.to_le_bytes());
        b
    }

    /// The signed quant of every element, `−32..32`.
    pub fn quants(&self) -> [i8; BLOCK] {
        std::array::from_fn(|i| {
            let (h, r) = (i / 128, i % 128);
            let low = (self.ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (self.qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            (low | (high << 4)) as i8 - 32
        })
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        let q = self.quants();
        std::array::from_fn(|i| (d * f32::from(self.scales[i / SUB])) * f32::from(q[i]))
    }
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ6K::from_bytes(bytes).dequantize()
}

/// Encodes one block (our reference quantizer, see the module docs).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let subs: [&[f32]; BLOCK / SUB] = std::array::from_fn(|s| &x[s * SUB..(s + 1) * SUB]);
    let fits = subs.map(fit_symmetric);
    let m = fits
        .iter()
        .fold(0.0f32, |m, &s| if s.abs() > m.abs() { s } else { m });
    let d = f16_covering(m / -128.0);

    let mut scales = [0i8; BLOCK / SUB];
    let mut levels = [0i8; BLOCK];
    if d.to_f32() != 0.0 {
        let inv_d = 1.0 / d.to_f32();
        for (s, (sub, fit)) in subs.iter().zip(fits).enumerate() {
            let ls0 = nearest_int(fit * inv_d).clamp(-128, 127);
            let mut best = (f32::INFINITY, 0i8);
            for ls in (ls0 - 1).max(-128)..=(ls0 + 1).min(127) {
                let scale = d.to_f32() * ls as f32;
                let err = symmetric_error(sub, scale, &assign_levels(sub, scale));
                if err < best.0 {
                    best = (err, ls as i8);
                }
            }
            scales[s] = best.1;
            let scale = d.to_f32() * f32::from(best.1);
            levels[s * SUB..(s + 1) * SUB].copy_from_slice(&assign_levels(sub, scale));
        }
    }

    // Stored quants are the levels biased by 32: 0..64.
    let q = levels.map(|l| (l + 32) as u8);
    let mut ql = [0u8; BLOCK / 2];
    let mut qh = [0u8; BLOCK / 4];
    for (i, &v) in q.iter().enumerate() {
        let (h, r) = (i / 128, i % 128);
        ql[64 * h + r % 64] |= (v & 0x0F) << (4 * (r / 64));
        qh[32 * h + r % 32] |= (v >> 4) << (2 * (r / 32));
    }
    BlockQ6K { ql, qh, scales, d }.to_bytes()
}

/// Levels `round(x / scale)` clamped to `−32..=31` (all zero when `scale` is zero).
fn assign_levels(x: &[f32], scale: f32) -> [i8; SUB] {
    if scale == 0.0 {
        return [0; SUB];
    }
    let inv = 1.0 / scale;
    std::array::from_fn(|i| nearest_int(x[i] * inv).clamp(-32, 31) as i8)
}

/// Squared error of `scale · level` against `x`.
fn symmetric_error(x: &[f32], scale: f32, levels: &[i8; SUB]) -> f32 {
    x.iter()
        .zip(levels)
        .map(|(&v, &l)| {
            let e = scale * f32::from(l) - v;
            e * e
        })
        .sum()
}

/// Step 1 of the module docs: the best signed scale of one sub-block.
fn fit_symmetric(x: &[f32]) -> f32 {
    let amax = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if amax == 0.0 {
        return 0.0;
    }
    let mut best = (f32::INFINITY, 0.0f32);
    for target in [-32.0f32, 31.0] {
        for k in -10..=10 {
            let stretched = target + target.signum() * 0.1 * k as f32;
            let mut scale = amax / stretched;
            let mut err = f32::INFINITY;
            for _ in 0..4 {
                let levels = assign_levels(x, scale);
                let (mut sxl, mut sll) = (0.0f32, 0.0f32);
                for (&v, &l) in x.iter().zip(&levels) {
                    sxl += v * f32::from(l);
                    sll += f32::from(l) * f32::from(l);
                }
                if sll == 0.0 {
                    break;
                }
                let s = sxl / sll;
                let e = symmetric_error(x, s, &levels);
                if e >= err {
                    break;
                }
                (scale, err) = (s, e);
            }
            if err < best.0 {
                best = (err, scale);
            }
        }
    }
    best.1
}
