//! Q5_K: Q4_K with a fifth bit per quant. Super-blocks of 256 elements in 8 sub-blocks of 32,
//! 5-bit quants (low nibble plus one high bit), 6-bit sub-block scales and minimums packed as
//! Q4_K's: `x = (d · scale[s]) · q − dmin · min[s]`.
//!
//! Quantization is Q4_K's routine ([`crate::q4_k`] module docs) with 32 levels.

use half::f16;

use crate::fit::quantize_affine;
use crate::q4_k::{SUB, decode_affine, first8, pack_scale_min};
use crate::{array_at, f16_at};

/// Elements per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BYTES: usize = 176;

/// One Q5_K super-block as stored: bytes `0..2` `d`, `2..4` `dmin`, `4..16` packed scales and
/// minimums, `16..48` high bits, `48..176` low nibbles.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5K {
    /// Scale of the sub-block scales.
    pub d: f16,
    /// Scale of the sub-block minimums.
    pub dmin: f16,
    /// Eight 6-bit scales and minimums; see [`crate::q4_k::unpack_scale_min`].
    pub scales: [u8; 12],
    /// Element `32i + l` (`i < 8`) has its fifth bit at bit `i` of `qh[l]`.
    pub qh: [u8; BLOCK / 8],
    /// Low nibbles, laid out as Q4_K's quants.
    pub qs: [u8; BLOCK / 2],
}

const _: () = assert!(size_of::<BlockQ5K>() == BYTES);

impl BlockQ5K {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 2),
            scales: array_at(b, 4),
            qh: array_at(b, 16),
            qs: array_at(b, 48),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.dmin.to_le_bytes());
        b[4..16].copy_from_slice(&self.scales);
        b[16..48].copy_from_slice(&self.qh);
        b[48..].copy_from_slice(&self.qs);
        b
    }

    /// The 5-bit quant of every element.
    pub fn quants(&self) -> [u8; BLOCK] {
        std::array::from_fn(|i| {
            let (c, r) = (i / 64, i % 64);
            let low = (self.qs[32 * c + r % 32] >> (4 * (r / 32))) & 0x0F;
            let high = (self.qh[i % 32] >> (i / 32)) & 1;
            low | (high << 4)
        })
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        decode_affine(self.d, self.dmin, &self.scales, &self.quants())
    }
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ5K::from_bytes(bytes).dequantize()
}

/// Encodes one block (our reference quantizer, see [`crate::q4_k`]).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let sb = quantize_affine(x, SUB, 31, 63);
    let q = &sb.levels;
    let mut qs = [0u8; BLOCK / 2];
    for (k, b) in qs.iter_mut().enumerate() {
        let (c, l) = (k / 32, k % 32);
        *b = (q[64 * c + l] & 0x0F) | ((q[64 * c + 32 + l] & 0x0F) << 4);
    }
    let mut qh = [0u8; BLOCK / 8];
    for (i, v) in q.iter().enumerate() {
        qh[i % 32] |= ((v >> 4) & 1) << (i / 32);
    }
    BlockQ5K {
        d: sb.d,
        dmin: sb.dmin,
        scales: pack_scale_min(&first8(&sb.scales), &first8(&sb.mins)),
        qh,
        qs,
    }
    .to_bytes()
}
