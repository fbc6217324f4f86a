//! Storage element types of weights: plain floats and GGML's block-quantized formats.

use std::fmt;

/// How the elements of a [`crate::Weight`] are stored.
///
/// Float types store one element per value. Block-quantized types (GGML formats, as found in
/// GGUF files) store rows as consecutive blocks of [`DType::block_size`] elements, each
/// [`DType::block_bytes`] long; a row's length must be a multiple of the block size.
/// Decoding lives in `qinfer-quant` (one file per format).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_NL,
    IQ4_XS,
}

/// `(dtype, GGML type id, name, block size, block bytes)`.
const TABLE: [(DType, u32, &str, usize, usize); 15] = [
    (DType::F32, 0, "F32", 1, 4),
    (DType::F16, 1, "F16", 1, 2),
    (DType::BF16, 30, "BF16", 1, 2),
    (DType::Q4_0, 2, "Q4_0", 32, 18),
    (DType::Q4_1, 3, "Q4_1", 32, 20),
    (DType::Q5_0, 6, "Q5_0", 32, 22),
    (DType::Q5_1, 7, "Q5_1", 32, 24),
    (DType::Q8_0, 8, "Q8_0", 32, 34),
    (DType::Q2_K, 10, "Q2_K", 256, 84),
    (DType::Q3_K, 11, "Q3_K", 256, 110),
    (DType::Q4_K, 12, "Q4_K", 256, 144),
    (DType::Q5_K, 13, "Q5_K", 256, 176),
    (DType::Q6_K, 14, "Q6_K", 256, 210),
    (DType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (DType::IQ4_XS, 23, "IQ4_XS", 256, 136),
];

impl DType {
    /// Every supported type.
    pub const ALL: [DType; 15] = {
        let mut all = [DType::F32; 15];
        let mut i = 0;
        while i < 15 {
            all[i] = TABLE[i].0;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static (DType, u32, &'static str, usize, usize) {
        TABLE
            .iter()
            .find(|r| r.0 == self)
            .expect("every DType is in the table")
    }

    /// Elements per block (1 for float types).
    pub fn block_size(self) -> usize {
        self.row().3
    }

    /// Bytes per block (bytes per element for float types).
    pub fn block_bytes(self) -> usize {
        self.row().4
    }

    /// The GGML / GGUF type id.
    pub fn ggml_id(self) -> u32 {
        self.row().1
    }

    /// The type with GGML id `id`, if qinfer supports it.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        TABLE.iter().find(|r| r.1 == id).map(|r| r.0)
    }

    /// The type named `name` (`"Q4_K"`, `"bf16"`, …; case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        TABLE
            .iter()
            .find(|r| r.2.eq_ignore_ascii_case(name))
            .map(|r| r.0)
    }

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes of a row of `cols` elements, or `None` if `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        cols.is_multiple_of(self.block_size())
            .then(|| cols / self.block_size() * self.block_bytes())
    }

    /// Alignment (in bytes) a float view must have to be read as a typed slice; blocks are
    /// read byte-wise.
    pub fn align(self) -> usize {
        if self.is_quantized() {
            1
        } else {
            self.block_bytes()
        }
    }

    /// Decodes element `i` of a float-typed buffer to `f32` (slow; load-time and tests).
    ///
    /// # Panics
    /// For block-quantized types, which decode whole blocks (`qinfer-quant`).
    pub fn read_f32(self, bytes: &[u8], i: usize) -> f32 {
        let s = self.block_bytes();
        let b = &bytes[i * s..(i + 1) * s];
        match self {
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            q => panic!("read_f32 on block-quantized {q}"),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.row().2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_round_trips() {
        for d in DType::ALL {
            assert_eq!(DType::from_ggml_id(d.ggml_id()), Some(d));
            assert_eq!(DType::from_name(&d.to_string().to_lowercase()), Some(d));
        }
        assert_eq!(DType::Q4_K.row_bytes(512), Some(288));
        assert_eq!(DType::Q8_0.row_bytes(33), None);
        assert_eq!(
            DType::from_ggml_id(9),
            None,
            "Q8_1 is not a storage type we load"
        );
    }
}
