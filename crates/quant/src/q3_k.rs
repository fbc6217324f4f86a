//! Q3_K: super-blocks of 256 elements in 16 sub-blocks of 16, 3-bit signed quants (2 low bits
//! plus a high bit kept in a separate mask) and 6-bit signed sub-block scales;
//! `x = d · (scale[s] − 32) · q` with `q` in `−4..4`.
//!
//! The high bit is stored *inverted*: a set mask bit means "no offset", a clear one subtracts
//! 4. Only the decoder is here; qinfer does not write Q3_K yet.

use half::f16;

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
