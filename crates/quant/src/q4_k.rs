//! Q4_K: super-blocks of 256 elements in 8 sub-blocks of 32, 4-bit quants; each sub-block has a
//! 6-bit scale and a 6-bit minimum, themselves scaled by the super-block's `f16` `d` and
//! `dmin`: `x = (d · scale[s]) · q − dmin · min[s]`.
//!
//! # Quantization
//!
//! qinfer's affine search ([`crate::fit`]) with levels `0..=15` and 6-bit sub-block scales and
//! minimums (`d = max(scale) / 63`, `dmin = max(min) / 63`); Q5_K uses it with levels `0..=31`.
//! The round-trip RMSE it reaches is recorded in `docs/QUANTIZATION.md`.

use half::f16;

use crate::fit::quantize_affine;
use crate::{array_at, f16_at};

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
    let sb = quantize_affine(x, SUB, 15, 63);
    let mut qs = [0u8; BLOCK / 2];
    for (k, b) in qs.iter_mut().enumerate() {
        let (c, l) = (k / 32, k % 32);
        *b = sb.levels[64 * c + l] | (sb.levels[64 * c + 32 + l] << 4);
    }
    BlockQ4K {
        d: sb.d,
        dmin: sb.dmin,
        scales: pack_scale_min(&first8(&sb.scales), &first8(&sb.mins)),
        qs,
    }
    .to_bytes()
}

/// The first eight of sixteen sub-block integers (Q4_K and Q5_K have eight sub-blocks).
pub(crate) fn first8(v: &[u8; 16]) -> [u8; 8] {
    std::array::from_fn(|i| v[i])
}
