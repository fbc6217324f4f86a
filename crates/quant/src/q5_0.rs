//! Q5_0: blocks of 32 elements, one `f16` scale and 5-bit quants split into a low nibble and
//! one high bit; `x = d · (q − 16)`.
//!
//! Quantization follows llama.cpp's reference (`quantize_row_q5_0_ref`, mirrored bit for bit
//! by gguf-python): like Q4_0 with 32 levels, `d = max / −16` (signed maximum) and
//! `q = min(31, trunc(x · (1/d) + 16.5))`.

use half::f16;

use crate::{array_at, f16_at};

/// Elements per block.
pub const BLOCK: usize = 32;
/// Bytes per block.
pub const BYTES: usize = 22;

/// One Q5_0 block as stored: bytes `0..2` scale, `2..6` high bits, `6..22` low nibbles.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Little-endian `u32`; bit `i` is bit 4 of element `i`'s quant.
    pub qh: [u8; 4],
    /// Byte `j` holds the low 4 bits of element `j` (low nibble) and `j + 16` (high nibble).
    pub qs: [u8; BLOCK / 2],
}

const _: () = assert!(size_of::<BlockQ5_0>() == BYTES);

impl BlockQ5_0 {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        Self {
            d: f16_at(b, 0),
            qh: array_at(b, 2),
            qs: array_at(b, 6),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..6].copy_from_slice(&self.qh);
        b[6..].copy_from_slice(&self.qs);
        b
    }

    /// The 5-bit quant of every element, `0..32`.
    pub fn quants(&self) -> [u8; BLOCK] {
        unpack_5bit(self.qh, &self.qs)
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        self.quants().map(|q| d * f32::from(q as i8 - 16))
    }
}

/// Splits 5-bit quants into the `qh` bit field and `qs` nibbles shared by Q5_0 and Q5_1.
pub(crate) fn pack_5bit(q: &[u8; BLOCK]) -> ([u8; 4], [u8; BLOCK / 2]) {
    let mut high = 0u32;
    let mut qs = [0u8; BLOCK / 2];
    for j in 0..BLOCK / 2 {
        qs[j] = (q[j] & 0x0F) | ((q[j + BLOCK / 2] & 0x0F) << 4);
    }
    for (i, v) in q.iter().enumerate() {
        high |= u32::from(v >> 4 & 1) << i;
    }
    (high.to_le_bytes(), qs)
}

/// Inverse of [`pack_5bit`].
pub(crate) fn unpack_5bit(qh: [u8; 4], qs: &[u8; BLOCK / 2]) -> [u8; BLOCK] {
    let high = u32::from_le_bytes(qh);
    let mut q = [0u8; BLOCK];
    for (j, b) in qs.iter().enumerate() {
        q[j] = b & 0x0F;
        q[j + BLOCK / 2] = b >> 4;
    }
    for (i, v) in q.iter_mut().enumerate() {
        *v |= ((high >> i & 1) as u8) << 4;
    }
    q
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockQ5_0::from_bytes(bytes).dequantize()
}

/// Encodes one block (reference; bit-exact with llama.cpp's `quantize_row_q5_0_ref`).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let max = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -16.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let q = x.map(|v| ((v * id + 16.5) as u8).min(31));
    let (qh, qs) = pack_5bit(&q);
    BlockQ5_0 {
        d: f16::from_f32(d),
        qh,
        qs,
    }
    .to_bytes()
}
