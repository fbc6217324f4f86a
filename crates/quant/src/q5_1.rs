//! Q5_1: blocks of 32 elements, `f16` scale and minimum, 5-bit quants split into a low nibble
//! and one high bit; `x = d · q + m`.
//!
//! Quantization follows llama.cpp's reference (`quantize_row_q5_1_ref`, mirrored bit for bit
//! by gguf-python): `m = min(x)`, `d = (max(x) − m) / 31`,
//! `q = min(31, trunc((x − m) · (1/d) + 0.5))`.

use half::f16;

use crate::q5_0::{pack_5bit, unpack_5bit};
use crate::{array_at, f16_at};

/// Elements per block.
pub const BLOCK: usize = 32;
/// Bytes per block.
pub const BYTES: usize = 24;

/// One Q5_1 block as stored: bytes `0..2` scale, `2..4` minimum, `4..8` high bits,
/// `8..24` low nibbles.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (the value of `q = 0`).
    pub m: f16,
    /// Little-endian `u32`; bit `i` is bit 4 of element `i`'s quant.
    pub qh: [u8; 4],
    /// Byte `j` holds the low 4 bits of element `j` (low nibble) and `j + 16` (high nibble).
    pub qs: [u8; BLOCK / 2],
}

const _: () = assert!(size_of::<BlockQ5_1>() == BYTES);

impl BlockQ5_1 {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        Self {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qh: array_at(b, 4),
            qs: array_at(b, 8),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.m.to_le_bytes());
        b[4..8].copy_from_slice(&self.qh);
        b[8..].copy_from_slice(&self.qs);
        b
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        unpack_5bit(self.qh, &self.qs).map(|q| d * f32::from(q) + m)
    }
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ5_1::from_bytes(bytes).dequantize()
}

/// Encodes one block (reference; bit-exact with llama.cpp's `quantize_row_q5_1_ref`).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    // Strict comparisons as in the reference (this decides the sign of a zero minimum).
    let min = x.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
    let max = x.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    let d = (max - min) / 31.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let q = x.map(|v| (((v - min) * id + 0.5) as u8).min(31));
    let (qh, qs) = pack_5bit(&q);
    BlockQ5_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(min),
        qh,
        qs,
    }
    .to_bytes()
}
