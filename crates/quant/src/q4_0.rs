//! Q4_0: blocks of 32 elements, one `f16` scale and 4-bit quants; `x = d · (q − 8)`.
//!
//! Quantization follows llama.cpp's reference (`quantize_row_q4_0_ref`, mirrored bit for bit
//! by gguf-python): the element of largest magnitude, with its sign, maps to `q = 0`, i.e.
//! `d = max / −8`; the others get `q = min(15, trunc(x · (1/d) + 8.5))`. Using the signed
//! maximum spends the asymmetric extra level (−8 has no +8 partner) on the largest value.

use half::f16;

use crate::{array_at, f16_at};

/// Elements per block.
pub const BLOCK: usize = 32;
/// Bytes per block.
pub const BYTES: usize = 18;

/// One Q4_0 block as stored: bytes `0..2` scale, `2..18` packed quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble.
    pub qs: [u8; BLOCK / 2],
}

const _: () = assert!(size_of::<BlockQ4_0>() == BYTES);

impl BlockQ4_0 {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        Self {
            d: f16_at(b, 0),
            qs: array_at(b, 2),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..].copy_from_slice(&self.qs);
        b
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        let mut out = [0.0; BLOCK];
        for (j, q) in self.qs.iter().enumerate() {
            out[j] = d * f32::from((q & 0x0F) as i8 - 8);
            out[j + BLOCK / 2] = d * f32::from((q >> 4) as i8 - 8);
        }
        out
    }
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ4_0::from_bytes(bytes).dequantize()
}

/// Encodes one block (reference; bit-exact with llama.cpp's `quantize_row_q4_0_ref`).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    // The first element of largest magnitude, keeping its sign.
    let max = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let q = x.map(|v| ((v * id + 8.5) as u8).min(15));
    let mut qs = [0u8; BLOCK / 2];
    for (j, b) in qs.iter_mut().enumerate() {
        *b = q[j] | (q[j + BLOCK / 2] << 4);
    }
    BlockQ4_0 {
        d: f16::from_f32(d),
        qs,
    }
    .to_bytes()
}
