//! Weight storage formats and their scalar reference codecs.
//!
//! [`dequantize_row`] widens one row of any [`DType`] to `f32`; it is the one dispatch point
//! kernels and loaders call. Block-quantized GGML formats get one file each (`q8_0.rs`,
//! `q4_k.rs`, …) with a `#[repr(C)]` block and its scalar reference, tested against the `gguf`
//! Python package; faster kernels in `qinfer-cpu` are tested against these.
//!
//! Architecture invariant: this crate knows no model and no file format; it maps bytes of one
//! row to numbers and back.

use qinfer_tensor::DType;

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

/// Whether [`dequantize_row`] can decode `dtype` (loaders check this, so kernels never meet an
/// undecodable weight).
pub fn supported(dtype: DType) -> bool {
    let mut one = vec![0.0f32; dtype.block_size()];
    let zeros = vec![0u8; dtype.block_bytes()];
    dequantize_row(dtype, &zeros, &mut one).is_ok()
}

/// Widens one row (`src`, whole blocks) of type `dtype` into `dst` (`f32`, one per element).
pub fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    if dtype.row_bytes(dst.len()) != Some(src.len()) {
        return Err(QuantError::Shape {
            dtype,
            elements: dst.len(),
            bytes: src.len(),
        });
    }
    match dtype {
        DType::F32 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        DType::F16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        DType::BF16 => {
            for (o, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        q => return Err(QuantError::Unsupported(q)),
    }
    Ok(())
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
}
