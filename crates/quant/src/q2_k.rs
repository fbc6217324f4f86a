//! Q2_K: super-blocks of 256 elements in 16 sub-blocks of 16, 2-bit quants; each sub-block has
//! a 4-bit scale and a 4-bit minimum, themselves scaled by the super-block's `f16` `d` and
//! `dmin`: `x = d · scale[s] · q − dmin · min[s]`.
//!
//! # Quantization
//!
//! qinfer's affine search ([`crate::fit`]) with levels `0..=3` and 4-bit sub-block scales and
//! minimums (`d = max(scale) / 15`, `dmin = max(min) / 15`).

use half::f16;

use crate::fit::quantize_affine;
use crate::{array_at, f16_at};

/// Elements per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BYTES: usize = 84;

/// One Q2_K super-block as stored: bytes `0..16` sub-block scales, `16..80` quants, `80..82`
/// `d`, `82..84` `dmin`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ2K {
    /// Sub-block `s` (elements `16s..16s + 16`): scale in the low nibble, minimum in the high.
    pub scales: [u8; BLOCK / 16],
    /// Two halves of 128 elements. Element `128h + 32j + l` (`j < 4`, `l < 32`) is bits
    /// `2j..2j + 2` of `qs[32h + l]`.
    pub qs: [u8; BLOCK / 4],
    /// Scale of the sub-block scales.
    pub d: f16,
    /// Scale of the sub-block minimums.
    pub dmin: f16,
}

const _: () = assert!(size_of::<BlockQ2K>() == BYTES);

impl BlockQ2K {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        Self {
            scales: array_at(b, 0),
            qs: array_at(b, 16),
            d: f16_at(b, 80),
            dmin: f16_at(b, 82),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..16].copy_from_slice(&self.scales);
        b[16..80].copy_from_slice(&self.qs);
        b[80..82].copy_from_slice(&self.d.to_le_bytes());
        b[82..84].copy_from_slice(&self.dmin.to_le_bytes());
        b
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        let mut out = [0.0; BLOCK];
        for h in 0..2 {
            for j in 0..4 {
                for l in 0..32 {
                    let i = 128 * h + 32 * j + l;
                    let q = f32::from((self.qs[32 * h + l] >> (2 * j)) & 3);
                    let sc = self.scales[i / 16];
                    let scale = d * f32::from(sc & 0x0F);
                    let min = dmin * f32::from(sc >> 4);
                    out[i] = scale * q - min;
                }
            }
        }
        out
    }
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ2K::from_bytes(bytes).dequantize()
}

/// Encodes one block (qinfer's affine search, see the module docs).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let sb = quantize_affine(x, 16, 3, 15);
    let scales = std::array::from_fn(|s| sb.scales[s] | (sb.mins[s] << 4));
    let mut qs = [0u8; BLOCK / 4];
    for (i, &q) in sb.levels.iter().enumerate() {
        let (h, j, l) = (i / 128, (i % 128) / 32, i % 32);
        qs[32 * h + l] |= q << (2 * j);
    }
    BlockQ2K {
        scales,
        qs,
        d: sb.d,
        dmin: sb.dmin,
    }
    .to_bytes()
}
