//! Q6_K: super-blocks of 256 elements in 16 sub-blocks of 16, 6-bit signed quants (low nibble
//! plus two high bits) and signed 8-bit sub-block scales; `x = (d · scale[s]) · (q − 32)`.
//!
//! # Quantization
//!
//! qinfer's symmetric search ([`crate::fit`]) with levels `−32..=31` and signed 8-bit sub-block
//! scales; the sub-block scale of largest magnitude maps to `−128` (`d = m / −128`, `f16`).

use half::f16;

use crate::fit::quantize_symmetric;
use crate::{array_at, f16_at};

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

/// Encodes one block (qinfer's symmetric search, see the module docs).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let sb = quantize_symmetric(x, SUB, (-32, 31), (-128, 127));
    let scales: [i8; BLOCK / SUB] = std::array::from_fn(|s| sb.scales[s]);
    // Stored quants are the levels biased by 32: 0..64.
    let q = sb.levels.map(|l| (l + 32) as u8);
    let mut ql = [0u8; BLOCK / 2];
    let mut qh = [0u8; BLOCK / 4];
    for (i, &v) in q.iter().enumerate() {
        let (h, r) = (i / 128, i % 128);
        ql[64 * h + r % 64] |= (v & 0x0F) << (4 * (r / 64));
        qh[32 * h + r % 32] |= (v >> 4) << (2 * (r / 32));
    }
    BlockQ6K {
        ql,
        qh,
        scales,
        d: sb.d,
    }
    .to_bytes()
}
