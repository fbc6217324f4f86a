//! IQ4_NL: blocks of 32 elements, one `f16` scale and 4-bit indices into a fixed non-linear
//! codebook ([`KVALUES`], denser near zero, where weights concentrate); `x = d · KVALUES[q]`.
//!
//! # Quantization (our own reference; gguf-python has none)
//!
//! A scale search over a fixed codebook: the element of largest magnitude is mapped near either
//! end of the codebook (`−127` or `+113`), stretched by `(n + k) / n` for `k = −8..=8` codebook
//! units; each element takes the nearest codebook entry, the scale is re-solved by least
//! squares (`Σ x·c / Σ c²`) and refined Lloyd-style while the squared error drops. Indices are
//! finally reassigned against the `f16`-rounded scale. The same sub-block fit, with a 6-bit
//! scale on top, quantizes IQ4_XS.

use half::f16;

use crate::{array_at, f16_at};

/// Elements per block.
pub const BLOCK: usize = 32;
/// Bytes per block.
pub const BYTES: usize = 18;

/// The codebook shared with IQ4_XS, in increasing order.
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// One IQ4_NL block as stored: bytes `0..2` scale, `2..18` packed indices.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockIq4Nl {
    /// Scale.
    pub d: f16,
    /// Byte `j` holds the index of element `j` (low nibble) and `j + 16` (high nibble).
    pub qs: [u8; BLOCK / 2],
}

const _: () = assert!(size_of::<BlockIq4Nl>() == BYTES);

impl BlockIq4Nl {
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
        decode_32(self.d.to_f32(), &self.qs)
    }
}

/// `scale · KVALUES[index]` for 32 elements packed as in [`BlockIq4Nl::qs`].
pub(crate) fn decode_32(scale: f32, qs: &[u8; 16]) -> [f32; 32] {
    std::array::from_fn(|i| {
        let q = (qs[i % 16] >> (4 * (i / 16))) & 0x0F;
        scale * f32::from(KVALUES[usize::from(q)])
    })
}

/// Packs 32 indices as in [`BlockIq4Nl::qs`].
pub(crate) fn pack_32(indices: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| indices[j] | (indices[j + 16] << 4))
}

/// The index of the codebook entry nearest to `v` (in codebook units).
fn nearest_index(v: f32) -> u8 {
    let above = KVALUES.partition_point(|&k| f32::from(k) < v);
    if above == 0 {
        return 0;
    }
    if above == KVALUES.len() {
        return 15;
    }
    let (lo, hi) = (f32::from(KVALUES[above - 1]), f32::from(KVALUES[above]));
    if v - lo <= hi - v {
        (above - 1) as u8
    } else {
        above as u8
    }
}

/// Nearest codebook indices of `x / scale` (index 8, the entry nearest zero, when `scale` is 0).
pub(crate) fn assign_indices(x: &[f32; 32], scale: f32) -> [u8; 32] {
    if scale == 0.0 {
        return [8; 32];
    }
    let inv = 1.0 / scale;
    x.map(|v| nearest_index(v * inv))
}

/// Squared error of `scale · KVALUES[index]` against `x`.
pub(crate) fn codebook_error(x: &[f32; 32], scale: f32, indices: &[u8; 32]) -> f32 {
    x.iter()
        .zip(indices)
        .map(|(&v, &q)| {
            let e = scale * f32::from(KVALUES[usize::from(q)]) - v;
            e * e
        })
        .sum()
}

/// The best (signed) scale of 32 values over the codebook; see the module docs.
pub(crate) fn fit_codebook(x: &[f32; 32]) -> f32 {
    let amax = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if amax == 0.0 {
        return 0.0;
    }
    let mut best = (f32::INFINITY, 0.0f32);
    for end in [-127.0f32, 113.0] {
        for k in -8..=8 {
            let mut scale = amax / (end + end.signum() * k as f32);
            let mut err = f32::INFINITY;
            for _ in 0..4 {
                let indices = assign_indices(x, scale);
                let (mut sxc, mut scc) = (0.0f32, 0.0f32);
                for (&v, &q) in x.iter().zip(&indices) {
                    let c = f32::from(KVALUES[usize::from(q)]);
                    sxc += v * c;
                    scc += c * c;
                }
                let s = sxc / scc;
                let e = codebook_error(x, s, &indices);
                if e >= err {
                    break;
                }
                (scale, err) = (s, e);
            }
            if err < best.0 {
                best = (err, scale);
            }
        }
    }
    best.1
}

/// Decodes one block (reference).
pub fn dequantize_block_ref(bytes: &[u8; BYTES]) -> [f32; BLOCK] {
    BlockIq4Nl::from_bytes(bytes).dequantize()
}

/// Encodes one block (our reference quantizer, see the module docs).
pub fn quantize_block_ref(x: &[f32; BLOCK]) -> [u8; BYTES] {
    let d = f16::from_f32(fit_codebook(x));
    BlockIq4Nl {
        d,
        qs: pack_32(&assign_indices(x, d.to_f32())),
    }
    .to_bytes()
}
