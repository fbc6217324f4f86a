//! Q3_K: super-blocks of 256 elements in 16 sub-blocks of 16, 3-bit signed quants (2 low bits
//! plus a high bit kept in a separate mask) and 6-bit signed sub-block scales;
//! `x = d · (scale[s] − 32) · q` with `q` in `−4..4`.
//!
//! The high bit is stored *inverted*: a set mask bit means "no offset", a clear one subtracts
//! 4.
//!
//! # Quantization
//!
//! qinfer's symmetric search ([`crate::fit`]) with levels `−4..=3` and signed 6-bit sub-block
//! scales; the sub-block scale of largest magnitude maps to `−32` (`d = m / −32`, `f16`).

use half::f16;

use crate::fit::quantize_symmetric;
use crate::{array_at, f16_at};

/// Elements per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BYTES: usize = 110;

/// One Q3_K super-block as stored: bytes `0..32` high-bit mask, `32..96` low bits, `96..108`
/// packed scales, `108..110` `d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ3K {
    /// Element `32i + l` (`i < 8`) has its high bit at bit `i` of `hmask[l]` (1 = no offset).
    pub hmask: [u8; BLOCK / 8],
    /// Low two bits, laid out as Q2_K's: element `128h + 32j + l` is bits `2j..2j + 2` of
    /// `qs[32h + l]`.
    pub qs: [u8; BLOCK / 4],
    /// Sixteen 6-bit scales (biased by 32). Scale `k` has low nibble `scales[k] & 0xF` for
    /// `k < 8`, `scales[k − 8] >> 4` otherwise, and high two bits at bits `2(k / 4)..` of
    /// `scales[8 + k % 4]`.
    pub scales: [u8; 12],
    /// Scale of the sub-block scales.
    pub d: f16,
}

const _: () = assert!(size_of::<BlockQ3K>() == BYTES);

impl BlockQ3K {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        Self {
            hmask: array_at(b, 0),
            qs: array_at(b, 32),
            scales: array_at(b, 96),
            d: f16_at(b, 108),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..32].copy_from_slice(&self.hmask);
        b[32..96].copy_from_slice(&self.qs);
        b[96..108].copy_from_slice(&self.scales);
        b[108..110].copy_from_slice(&self.d.to_le_bytes());
        b
    }

    /// The sixteen sub-block scales, `−32..32`.
    pub fn sub_scales(&self) -> [i8; 16] {
        std::array::from_fn(|k| {
            let low = if k < 8 {
                self.scales[k] & 0x0F
            } else {
                self.scales[k - 8] >> 4
            };
            let high = (self.scales[8 + k % 4] >> (2 * (k / 4))) & 3;
            (low | (high << 4)) as i8 - 32
        })
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        let scales = self.sub_scales();
        let mut out = [0.0; BLOCK];
        for h in 0..2 {
            for j in 0..4 {
                for l in 0..32 {
                    let i = 128 * h + 32 * j + l;
                    let low = ((self.qs[32 * h + l] >> (2 * j)) & 3) as i8;
                    let high_set = (self.hmask[l] >> (i / 32)) & 1 == 1;
                    let q = if high_set { low } else { low - 4 };
                    let scale = d * f32::from(scales[i / 16]);
                    out[i] = scale * f32::from(q);
                }
            }
        }
        out
    }
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ3K::from_bytes(bytes).dequantize()
}

/// Encodes one block (qinfer's symmetric search, see the module docs).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let sb = quantize_symmetric(x, 16, (-4, 3), (-32, 31));
    let mut block = BlockQ3K {
        hmask: [0; BLOCK / 8],
        qs: [0; BLOCK / 4],
        scales: [0; 12],
        d: sb.d,
    };
    for (i, &level) in sb.levels.iter().enumerate() {
        // Stored as level + 4 in 0..8: two low bits, and the high bit set when level ≥ 0
        // (the decoder subtracts 4 when it is clear).
        let v = (level + 4) as u8;
        let (h, j, l) = (i / 128, (i % 128) / 32, i % 32);
        block.qs[32 * h + l] |= (v & 3) << (2 * j);
        block.hmask[l] |= (v >> 2) << (i / 32);
    }
    for k in 0..16 {
        let biased = (i32::from(sb.scales[k]) + 32) as u8;
        if k < 8 {
            block.scales[k] |= biased & 0x0F;
        } else {
            block.scales[k - 8] |= (biased & 0x0F) << 4;
        }
        block.scales[8 + k % 4] |= (biased >> 4) << (2 * (k / 4));
    }
    block.to_bytes()
}
