//! Q8_0: blocks of 32 elements, one `f16` scale and 32 signed bytes; `x = d · q`.
//!
//! Quantization follows llama.cpp's reference (`quantize_row_q8_0_ref`, mirrored bit for bit
//! by gguf-python): `d = max|x| / 127`, `q = round(x · (1/d))` with halves rounded away from
//! zero. The multiply by the reciprocal (rather than a divide) is part of the contract: it is
//! what makes the bytes identical to the reference's.

use half::f16;

use crate::{array_at, f16_at, nearest_int};

/// Elements per block.
pub const BLOCK: usize = 32;
/// Bytes per block.
pub const BYTES: usize = 34;

/// One Q8_0 block as stored: bytes `0..2` scale, `2..34` quants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Element `i` is `d · qs[i]`.
    pub qs: [i8; BLOCK],
}

const _: () = assert!(size_of::<BlockQ8_0>() == BYTES);

impl BlockQ8_0 {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        let qs: [u8; BLOCK] = array_at(b, 2);
        Self {
            d: f16_at(b, 0),
            qs: qs.map(|q| q as i8),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..2].copy_from_slice(&self.d.to_le_bytes());
        for (o, q) in b[2..].iter_mut().zip(self.qs) {
            *o = q as u8;
        }
        b
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        self.qs.map(|q| d * f32::from(q))
    }
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ8_0::from_bytes(bytes).dequantize()
}

/// Encodes one block (reference; bit-exact with llama.cpp's `quantize_row_q8_0_ref`).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    BlockQ8_0 {
        d: f16::from_f32(d),
        qs: x.map(|v| nearest_int(v * id) as i8),
    }
    .to_bytes()
}
