//! Weight storage formats and their scalar reference codecs.
//!
//! [`dequantize_row`] widens one row of any [`DType`] to `f32`; it is the one dispatch point
//! kernels and loaders call. [`quantize_row`] is its inverse for the formats qinfer can write.
//! Block-quantized GGML formats get one file each (`q8_0.rs`, `q4_k.rs`, …) with a
//! `#[repr(C)]` block documenting the byte layout, a `dequantize_block_ref` and, where we
//! quantize, a `quantize_block_ref`. They are tested against the `gguf` Python package
//! (`tools/make_quant_fixtures.py`); faster kernels in `qinfer-cpu` are tested against these.
//!
//! Blocks are parsed from bytes with explicit offsets and `from_le_bytes`, so rows need no
//! alignment and no `unsafe` is involved; the `#[repr(C)]` structs have exactly the GGML size
//! (checked at compile time) and serve as the layout's documentation and in-memory form.
//!
//! Architecture invariant: this crate knows no model and no file format; it maps bytes of one
//! row to numbers and back.

use qinfer_tensor::DType;

mod fit;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;

/// A row could not be converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantError {
    #[error("{0} is not supported here yet")]
    Unsupported(DType),
    #[error("{dtype}: {elements} elements do not fill {bytes} bytes of whole blocks")]
    Shape {
        dtype: DType,
        elements: usize,
        bytes: usize,
    },
}

fn check_shape(dtype: DType, elements: usize, bytes: usize) -> Result<(), QuantError> {
    if dtype.row_bytes(elements) == Some(bytes) {
        Ok(())
    } else {
        Err(QuantError::Shape {
            dtype,
            elements,
            bytes,
        })
    }
}

/// Whether [`dequantize_row`] can decode `dtype` (loaders check this, so kernels never meet an
/// undecodable weight).
pub fn supported(dtype: DType) -> bool {
    let mut one = vec![0.0f32; dtype.block_size()];
    let zeros = vec![0u8; dtype.block_bytes()];
    dequantize_row(dtype, &zeros, &mut one).is_ok()
}

/// Widens one row (`src`, whole blocks) of type `dtype` into `dst` (`f32`, one per element).
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_shape(dtype, dst.len(), src.len())?;
    match dtype {
        DType::F32 => {
            for (o, c) in dst.iter_mut().zip(src.as_chunks::<4>().0) {
                *o = f32::from_le_bytes(*c);
            }
        }
        DType::F16 => {
            for (o, c) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
                *o = half::f16::from_le_bytes(*c).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in dst.iter_mut().zip(src.as_chunks::<2>().0) {
                *o = half::bf16::from_le_bytes(*c).to_f32();
            }
        }
        DType::Q4_0 => widen(src, dst, q4_0::dequantize_block_ref),
        DType::Q4_1 => widen(src, dst, q4_1::dequantize_block_ref),
        DType::Q5_0 => widen(src, dst, q5_0::dequantize_block_ref),
        DType::Q5_1 => widen(src, dst, q5_1::dequantize_block_ref),
        DType::Q8_0 => widen(src, dst, q8_0::dequantize_block_ref),
        DType::Q2_K => widen(src, dst, q2_k::dequantize_block_ref),
        DType::Q3_K => widen(src, dst, q3_k::dequantize_block_ref),
        DType::Q4_K => widen(src, dst, q4_k::dequantize_block_ref),
        DType::Q5_K => widen(src, dst, q5_k::dequantize_block_ref),
        DType::Q6_K => widen(src, dst, q6_k::dequantize_block_ref),
        DType::IQ4_NL => widen(src, dst, iq4_nl::dequantize_block_ref),
        DType::IQ4_XS => widen(src, dst, iq4_xs::dequantize_block_ref),
    }
    Ok(())
}

/// Narrows one row of `f32` (`src`, whole blocks) into `dst`, encoded as `dtype`.
///
/// Float types round to nearest even. Block formats use the scalar reference quantizer in
/// their module: bit-exact with llama.cpp / gguf-python for Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0;
/// our own scale search for Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS (see each module's
/// docs and the `fit` module).
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_shape(dtype, src.len(), dst.len())?;
    match dtype {
        DType::F32 => {
            for (c, x) in dst.as_chunks_mut::<4>().0.iter_mut().zip(src) {
                *c = x.to_le_bytes();
            }
        }
        DType::F16 => {
            for (c, x) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
                *c = half::f16::from_f32(*x).to_le_bytes();
            }
        }
        DType::BF16 => {
            for (c, x) in dst.as_chunks_mut::<2>().0.iter_mut().zip(src) {
                *c = half::bf16::from_f32(*x).to_le_bytes();
            }
        }
        DType::Q4_0 => narrow(src, dst, q4_0::quantize_block_ref),
        DType::Q4_1 => narrow(src, dst, q4_1::quantize_block_ref),
        DType::Q5_0 => narrow(src, dst, q5_0::quantize_block_ref),
        DType::Q5_1 => narrow(src, dst, q5_1::quantize_block_ref),
        DType::Q8_0 => narrow(src, dst, q8_0::quantize_block_ref),
        DType::Q4_K => narrow(src, dst, q4_k::quantize_block_ref),
        DType::Q5_K => narrow(src, dst, q5_k::quantize_block_ref),
        DType::Q6_K => narrow(src, dst, q6_k::quantize_block_ref),
        DType::IQ4_NL => narrow(src, dst, iq4_nl::quantize_block_ref),
        DType::IQ4_XS => narrow(src, dst, iq4_xs::quantize_block_ref),
        DType::Q2_K => narrow(src, dst, q2_k::quantize_block_ref),
        DType::Q3_K => narrow(src, dst, q3_k::quantize_block_ref),
    }
    Ok(())
}

/// Applies a block decoder to every block of a row whose shape was already checked.
fn widen<const N: usize, const B: usize>(
    src: &[u8],
    dst: &mut [f32],
    block: fn(&[u8; B]) -> [f32; N],
) {
    for (out, bytes) in dst
        .as_chunks_mut::<N>()
        .0
        .iter_mut()
        .zip(src.as_chunks::<B>().0)
    {
        *out = block(bytes);
    }
}

/// Applies a block encoder to every block of a row whose shape was already checked.
fn narrow<const N: usize, const B: usize>(
    src: &[f32],
    dst: &mut [u8],
    block: fn(&[f32; N]) -> [u8; B],
) {
    for (out, x) in dst
        .as_chunks_mut::<B>()
        .0
        .iter_mut()
        .zip(src.as_chunks::<N>().0)
    {
        *out = block(x);
    }
}

/// Reads the little-endian `f16` at `bytes[at..at + 2]`.
fn f16_at(bytes: &[u8], at: usize) -> half::f16 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// Copies `N` bytes starting at `at` into an array.
fn array_at<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// The `f16` nearest to `v`, moved one step away from zero if rounding shrank it.
///
/// Super-block scales are `max / N` with the largest sub-block landing on the integer limit
/// `N`; a scale rounded down would push that sub-block past the limit, where it gets clamped.
/// This matters once the `f16` is subnormal (tiny weights), where one step is several percent.
fn f16_covering(v: f32) -> half::f16 {
    let h = half::f16::from_f32(v);
    if h.to_f32().abs() < v.abs() && h.is_finite() {
        half::f16::from_bits(h.to_bits() + 1)
    } else {
        h
    }
}

/// Rounds to the nearest integer, halves away from zero (C's `roundf`), as an `i32`.
fn nearest_int(x: f32) -> i32 {
    x.round() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_widen_exactly() {
        let v = [1.5f32, -2.25, 0.0, 65504.0];
        let mut out = [0.0f32; 4];
        let f32s: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        dequantize_row(DType::F32, &f32s, &mut out).unwrap();
        assert_eq!(out, v);
        let f16s: Vec<u8> = v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        dequantize_row(DType::F16, &f16s, &mut out).unwrap();
        assert_eq!(out, v);
        let bf16s: Vec<u8> = v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        dequantize_row(DType::BF16, &bf16s, &mut out).unwrap();
        assert_eq!(out[..3], v[..3]);
        assert!(dequantize_row(DType::F32, &f32s[..8], &mut out).is_err());
    }

    /// Each module's block constants agree with the `DType` table.
    #[test]
    fn block_constants_match_dtype_table() {
        let table = [
            (DType::Q4_0, q4_0::BLOCK, q4_0::BYTES),
            (DType::Q4_1, q4_1::BLOCK, q4_1::BYTES),
            (DType::Q5_0, q5_0::BLOCK, q5_0::BYTES),
            (DType::Q5_1, q5_1::BLOCK, q5_1::BYTES),
            (DType::Q8_0, q8_0::BLOCK, q8_0::BYTES),
            (DType::Q2_K, q2_k::BLOCK, q2_k::BYTES),
            (DType::Q3_K, q3_k::BLOCK, q3_k::BYTES),
            (DType::Q4_K, q4_k::BLOCK, q4_k::BYTES),
            (DType::Q5_K, q5_k::BLOCK, q5_k::BYTES),
            (DType::Q6_K, q6_k::BLOCK, q6_k::BYTES),
            (DType::IQ4_NL, iq4_nl::BLOCK, iq4_nl::BYTES),
            (DType::IQ4_XS, iq4_xs::BLOCK, iq4_xs::BYTES),
        ];
        for (dtype, block, bytes) in table {
            assert_eq!(
                (dtype.block_size(), dtype.block_bytes()),
                (block, bytes),
                "{dtype}"
            );
        }
    }
}
