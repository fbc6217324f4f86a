//! IQ4_XS: super-blocks of 256 elements in 8 sub-blocks of 32, IQ4_NL's non-linear codebook
//! with a signed 6-bit scale per sub-block under one `f16` `d`;
//! `x = (d · (scale[s] − 32)) · KVALUES[q]`.
//!
//! # Quantization (our own reference)
//!
//! Each sub-block gets IQ4_NL's codebook fit ([`crate::iq4_nl`]); the sub-block scale of largest
//! magnitude `m` maps to `−32` (`d = m / −32`, stored as `f16`), the others round to
//! `−32..=31`; then each sub-block tries its integer scale ±1, reassigns indices and keeps the
//! one with the least error through the decoder arithmetic.

use half::f16;

use crate::iq4_nl::{assign_indices, codebook_error, decode_32, fit_codebook, pack_32};
use crate::{array_at, f16_at, f16_covering, nearest_int};

/// Elements per block.
pub const BLOCK: usize = 256;
/// Bytes per block.
pub const BYTES: usize = 136;
const SUB: usize = 32;

/// One IQ4_XS super-block as stored: bytes `0..2` `d`, `2..4` high scale bits, `4..8` low
/// scale nibbles, `8..136` packed indices.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockIq4Xs {
    /// Scale of the sub-block scales.
    pub d: f16,
    /// Bits `2s..2s + 2` are the top two bits of sub-block `s`'s biased scale.
    pub scales_h: u16,
    /// Nibble `s % 2` of byte `s / 2` is the low four bits of sub-block `s`'s biased scale.
    pub scales_l: [u8; 4],
    /// Sub-block `s` occupies `qs[16s..16s + 16]`, packed as an IQ4_NL block's indices.
    pub qs: [u8; BLOCK / 2],
}

const _: () = assert!(size_of::<BlockIq4Xs>() == BYTES);

impl BlockIq4Xs {
    pub fn from_bytes(b: &[u8; BYTES]) -> Self {
        Self {
            d: f16_at(b, 0),
            scales_h: u16::from_le_bytes([b[2], b[3]]),
            scales_l: array_at(b, 4),
            qs: array_at(b, 8),
        }
    }

    pub fn to_bytes(&self) -> [u8; BYTES] {
        let mut b = [0u8; BYTES];
        b[0..2].copy_from_slice(&self.d.to_le_bytes());
        b[2..4].copy_from_slice(&self.scales_h.to_le_bytes());
        b[4..8].copy_from_slice(&self.scales_l);
        b[8..].copy_from_slice(&self.qs);
        b
    }

    /// The eight sub-block scales, `−32..32`.
    pub fn sub_scales(&self) -> [i8; 8] {
        std::array::from_fn(|s| {
            let low = (self.scales_l[s / 2] >> (4 * (s % 2))) & 0x0F;
            let high = ((self.scales_h >> (2 * s)) & 3) as u8;
            (low | (high << 4)) as i8 - 32
        })
    }

    pub fn dequantize(&self) -> [f32; BLOCK] {
        let d = self.d.to_f32();
        let mut out = [0.0; BLOCK];
        for (s, scale) in self.sub_scales().into_iter().enumerate() {
            let qs = array_at(&self.qs, 16 * s);
            out[s * SUB..(s + 1) * SUB].copy_from_slice(&decode_32(d * f32::from(scale), &qs));
        }
        out
    }
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockIq4Xs::from_bytes(bytes).dequantize()
}

/// Encodes one block (our reference quantizer, see the module docs).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let subs: [[f32; SUB]; 8] = std::array::from_fn(|s| array_at_f32(x, s * SUB));
    let fits = subs.map(|sub| fit_codebook(&sub));
    let m = fits
        .iter()
        .fold(0.0f32, |m, &s| if s.abs() > m.abs() { s } else { m });
    let d = f16_covering(m / -32.0);

    let mut block = BlockIq4Xs {
        d,
        scales_h: 0,
        scales_l: [0; 4],
        qs: [0; BLOCK / 2],
    };
    for (s, (sub, fit)) in subs.iter().zip(fits).enumerate() {
        let mut best = (f32::INFINITY, 0i32, [8u8; SUB]);
        if d.to_f32() != 0.0 {
            let ls0 = nearest_int(fit / d.to_f32()).clamp(-32, 31);
            for ls in (ls0 - 1).max(-32)..=(ls0 + 1).min(31) {
                let scale = d.to_f32() * ls as f32;
                let indices = assign_indices(sub, scale);
                let err = codebook_error(sub, scale, &indices);
                if err < best.0 {
                    best = (err, ls, indices);
                }
            }
        }
        let biased = (best.1 + 32) as u8;
        block.scales_l[s / 2] |= (biased & 0x0F) << (4 * (s % 2));
        block.scales_h |= u16::from(biased >> 4) << (2 * s);
        block.qs[16 * s..16 * (s + 1)].copy_from_slice(&pack_32(&best.2));
    }
    block.to_bytes()
}

fn array_at_f32(x: &[f32; BLOCK], at: usize) -> [f32; SUB] {
    std::array::from_fn(|i| x[at + i])
}
