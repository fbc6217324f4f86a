//! Q4_1: blocks of 32 elements, `f16` scale and minimum, 4-bit quants; `x = d · q + m`.
//!
//! Quantization follows llama.cpp's reference (`quantize_row_q4_1_ref`, mirrored bit for bit
//! by gguf-python): `m = min(x)`, `d = (max(x) − m) / 15`,
//! `q = min(15, trunc((x − m) · (1/d) + 0.5))`. The `f32` minimum (not its `f16` rounding)
//! is used for the quants, as in the reference.

use half::f16;

use crate::{array_at, f16_at};

/// Elements per block.
pub const BLOCK: usize = 32;
/// Bytes per block.
pub const BYTES: usize = 20;

/// One Q4_1 block as stored: bytes `0..2` scale, `2..4` minimum, `4..20` packed quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (the value of `q = 0`).
    pub m: f16,
    /// Byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble.
    pub qs: [u8; BLOCK / 2],
}

const _: () = assert!(size_of::<BlockQ4_1>() == BYTES);

impl BlockQ4_1 {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        Self {
            d: f16_at(b, 0),
            m: f16_at(b, 2),
            qs: array_at(b, 4),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.m.to_le_bytes());
        b[4..].copy_from_slice(&self.qs);
        b
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        let mut out = [0.0; BLOCK];
        for (j, q) in self.qs.iter().enumerate() {
            out[j] = d * f32::from(q & 0x0F) + m;
            out[j + BLOCK / 2] = d * f32::from(q >> 4) + m;
        }
        out
    }
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ4_1::from_bytes(bytes).dequantize()
}

/// Encodes one block (reference; bit-exact with llama.cpp's `quantize_row_q4_1_ref`).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    // Strict comparisons as in the reference (this decides the sign of a zero minimum).
    let min = x.iter().fold(f32::MAX, |m, &v| if v < m { v } else { m });
    let max = x.iter().fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    let d = (max - min) / 15.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let q = x.map(|v| (((v - min) * id + 0.5) as u8).min(15));
    let mut qs = [0u8; BLOCK / 2];
    for (j, b) in qs.iter_mut().enumerate() {
        *b = q[j] | (q[j + BLOCK / 2] << 4);
    }
    BlockQ4_1 {
        d: f16::from_f32(d),
        m: f16::from_f32(min),
        qs,
    }
    .to_bytes()
}
