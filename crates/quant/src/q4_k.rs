//! Q4_K: super-blocks of 256 elements in 8 sub-blocks of 32, 4-bit quants; each sub-block has a
//! 6-bit scale and a 6-bit minimum, themselves scaled by the super-block's `f16` `d` and
//! `dmin`: `x = (d · scale[s]) · q − dmin · min[s]`.
//!
//! # Quantization (our own reference; gguf-python has none)
//!
//! 1. **Sub-block fit.** For each sub-block of 32 we look for `scale ≥ 0, min ≥ 0` minimising
//!    the squared error of `scale · q − min` with `q` in `0..=nmax`. The range always includes
//!    zero (`min` cannot be negative in this format). Candidate grids stretch the plain
//!    min-max step by factors `(nmax + 0.1k) / nmax`, `k = −10..=10`; for each, the levels are
//!    assigned by rounding and `(scale, min)` re-solved by least squares (a 2×2 normal system;
//!    when it would give a positive offset the offset is pinned to zero). Each candidate is then
//!    refined Lloyd-style — reassign levels to the new grid, re-solve — while the error drops.
//!    The best candidate wins. Errors are unweighted: the target is plain round-trip MSE.
//! 2. **6-bit sub-block scales.** `d = max(scale) / 63`, `dmin = max(min) / 63` (stored as
//!    `f16`), each sub-block's scale and minimum rounded to a 6-bit integer.
//! 3. **Neighbourhood search.** With `d` and `dmin` fixed at their `f16` values, each sub-block
//!    tries its 6-bit scale and minimum ±1 (9 pairs), reassigns levels for each and keeps the
//!    pair with the least error, measured through the exact decoder arithmetic.
//!
//! The same routine with `nmax = 31` quantizes Q5_K. The round-trip RMSE it reaches is
//! recorded in `tests/fixtures/quant/README.md`.

use half::f16;

use crate::{array_at, f16_at, f16_covering, nearest_int};

/// Elements per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BYTES: usize = 144;
/// Elements per sub-block (one 6-bit scale and minimum each).
pub(crate) const SUB: usize = 32;

/// One Q4_K super-block as stored: bytes `0..2` `d`, `2..4` `dmin`, `4..16` packed 6-bit
/// scales and minimums, `16..144` quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    /// Scale of the sub-block scales.
    pub d: f16,
    /// Scale of the sub-block minimums.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit minimums; see [`unpack_scale_min`].
    pub scales: [u8; 12],
    /// Four chunks of 64 elements. Element `64c + l` (`l < 32`) is the low nibble of
    /// `qs[32c + l]`, element `64c + 32 + l` its high nibble.
    pub qs: [u8; BLOCK / 2],
}

const _: () = assert!(size_of::<BlockQ4K>() == BYTES);

impl BlockQ4K {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales: array_at(b, 4),
            qs: array_at(b, 16),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.dmin.to_le_bytes());
        b[4..16].copy_from_slice(&self.scales);
        b[16..].copy_from_slice(&self.qs);
        b
    }

    /// The 4-bit quant of every element.
    pub fn quants(&self) -> [u8; BLOCK] {
        std::array::from_fn(|i| {
            let (c, r) = (i / 64, i % 64);
            (self.qs[32 * c + r % 32] >> (4 * (r / 32))) & 0x0F
        })
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        decode_affine(self.d, self.dmin, &self.scales, &self.quants())
    }
}

/// Decodes `(d · scale[s]) · q − dmin · min[s]` for Q4_K and Q5_K, in the reference's order of
/// `f32` operations.
pub(crate) fn decode_affine(d: f16, dmin: f16, packed: &[u8; 12], q: &[u8; BLOCK]) -> [f32; BLOCK] {
    let (scales, mins) = unpack_scale_min(packed);
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    std::array::from_fn(|i| {
        let s = i / SUB;
        let scale = d * f32::from(scales[s]);
        let min = dmin * f32::from(mins[s]);
        scale * f32::from(q[i]) - min
    })
}

/// Splits the 12 packed bytes into eight 6-bit scales and eight 6-bit minimums.
///
/// Bytes `0..4` hold scales 0–3 in their low 6 bits, bytes `4..8` minimums 0–3; bytes `8..12`
/// hold the low nibbles of scales 4–7 (low half) and minimums 4–7 (high half), whose top two
/// bits sit in the spare top bits of bytes `0..4` (scales) and `4..8` (minimums).
pub fn unpack_scale_min(packed: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for j in 0..4 {
        scales[j] = packed[j] & 0x3F;
        mins[j] = packed[j + 4] & 0x3F;
        scales[j + 4] = (packed[j + 8] & 0x0F) | ((packed[j] >> 6) << 4);
        mins[j + 4] = (packed[j + 8] >> 4) | ((packed[j + 4] >> 6) << 4);
    }
    (scales, mins)
}

/// Inverse of [`unpack_scale_min`]; every value must be below 64.
pub fn pack_scale_min(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = scales[j] | ((scales[j + 4] >> 4) << 6);
        packed[j + 4] = mins[j] | ((mins[j + 4] >> 4) << 6);
        packed[j + 8] = (scales[j + 4] & 0x0F) | ((mins[j + 4] & 0x0F) << 4);
    }
    packed
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ4K::from_bytes(bytes).dequantize()
}

/// Encodes one block (our reference quantizer, see the module docs).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let sb = quantize_affine(x, 15);
    let mut qs = [0u8; BLOCK / 2];
    for (k, b) in qs.iter_mut().enumerate() {
        let (c, l) = (k / 32, k % 32);
        *b = sb.levels[64 * c + l] | (sb.levels[64 * c + 32 + l] << 4);
    }
    BlockQ4K {
        d: sb.d,
        dmin: sb.dmin,
        scales: pack_scale_min(&sb.scales, &sb.mins),
        qs,
    }
    .to_bytes()
}

/// A super-block quantized to `x ≈ (d · scales[s]) · levels − dmin · mins[s]`.
#[derive(Debug)]
pub(crate) struct AffineSuperBlock {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 8],
    pub mins: [u8; 8],
    pub levels: [u8; BLOCK],
}

/// Quantizes 256 values to levels `0..=nmax` with 6-bit sub-block scales and minimums
/// (steps 1–3 of the module docs).
pub(crate) fn quantize_affine(x: &[f32; BLOCK], nmax: u8) -> AffineSuperBlock {
    let subs: [&[f32; SUB]; 8] = std::array::from_fn(|s| {
        x[s * SUB..(s + 1) * SUB]
            .try_into()
            .expect("sub-block is SUB long")
    });
    let fits = subs.map(|sub| fit_scale_min(sub, nmax));
    let max_scale = fits.iter().fold(0.0f32, |m, f| m.max(f.0));
    let max_min = fits.iter().fold(0.0f32, |m, f| m.max(f.1));
    let d = f16_covering(max_scale / 63.0);
    let dmin = f16_covering(max_min / 63.0);
    let to_6bit = |v: f32, step: f16| {
        let step = step.to_f32();
        if step > 0.0 {
            nearest_int(v / step).clamp(0, 63)
        } else {
            0
        }
    };

    let mut out = AffineSuperBlock {
        d,
        dmin,
        scales: [0; 8],
        mins: [0; 8],
        levels: [0; BLOCK],
    };
    for (s, (sub, fit)) in subs.iter().zip(fits).enumerate() {
        let (ls0, lm0) = (to_6bit(fit.0, d), to_6bit(fit.1, dmin));
        let mut best = (f32::INFINITY, 0u8, 0u8, [0u8; SUB]);
        for ls in (ls0 - 1).max(0)..=(ls0 + 1).min(63) {
            for lm in (lm0 - 1).max(0)..=(lm0 + 1).min(63) {
                // The decoder's arithmetic: (d · ls) · q − dmin · lm.
                let scale = d.to_f32() * ls as f32;
                let min = dmin.to_f32() * lm as f32;
                let levels = assign_levels(sub, scale, min, nmax);
                let err = affine_error(sub, scale, min, &levels);
                if err < best.0 {
                    best = (err, ls as u8, lm as u8, levels);
                }
            }
        }
        out.scales[s] = best.1;
        out.mins[s] = best.2;
        out.levels[s * SUB..(s + 1) * SUB].copy_from_slice(&best.3);
    }
    out
}

/// Levels `round((x + min) / scale)` clamped to `0..=nmax` (all zero when `scale` is zero).
fn assign_levels(x: &[f32; SUB], scale: f32, min: f32, nmax: u8) -> [u8; SUB] {
    if scale <= 0.0 {
        return [0; SUB];
    }
    let inv = 1.0 / scale;
    x.map(|v| nearest_int((v + min) * inv).clamp(0, i32::from(nmax)) as u8)
}

/// Squared error of `scale · level − min` against `x`.
fn affine_error(x: &[f32; SUB], scale: f32, min: f32, levels: &[u8; SUB]) -> f32 {
    x.iter()
        .zip(levels)
        .map(|(&v, &l)| {
            let e = scale * f32::from(l) - min - v;
            e * e
        })
        .sum()
}

/// Least-squares `(scale, min)` for fixed levels, with `min ≥ 0` (`x ≈ scale · l − min`).
fn solve_scale_min(x: &[f32; SUB], levels: &[u8; SUB]) -> (f32, f32) {
    let n = SUB as f32;
    let (mut sl, mut sl2, mut sx, mut sxl) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for (&v, &l) in x.iter().zip(levels) {
        let l = f32::from(l);
        sl += l;
        sl2 += l * l;
        sx += v;
        sxl += v * l;
    }
    let det = n * sl2 - sl * sl;
    if det > 0.0 {
        let scale = (n * sxl - sx * sl) / det;
        let offset = (sl2 * sx - sl * sxl) / det;
        if offset <= 0.0 {
            return (scale.max(0.0), -offset);
        }
    }
    // The free fit wants a positive offset (or all levels are equal): pin the offset at zero.
    if sl2 > 0.0 {
        ((sxl / sl2).max(0.0), 0.0)
    } else {
        (0.0, (-sx / n).max(0.0))
    }
}

/// Step 1 of the module docs: the best `(scale, min)` of one sub-block.
pub(crate) fn fit_scale_min(x: &[f32; SUB], nmax: u8) -> (f32, f32) {
    let lo = x.iter().fold(0.0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        return (0.0, -lo);
    }
    let nmax_f = f32::from(nmax);
    let mut best = (f32::INFINITY, 0.0f32, 0.0f32);
    for k in -10..=10 {
        let mut scale = (hi - lo) / (nmax_f + 0.1 * k as f32);
        let mut min = -lo;
        let mut err = f32::INFINITY;
        for _ in 0..4 {
            let levels = assign_levels(x, scale, min, nmax);
            let (s, m) = solve_scale_min(x, &levels);
            let e = affine_error(x, s, m, &levels);
            if e >= err {
                break;
            }
            (scale, min, err) = (s, m, e);
        }
        if err < best.0 {
            best = (err, scale, min);
        }
    }
    (best.1, best.2)
}
