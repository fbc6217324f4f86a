//! Every GGML tensor type id 0..=41 as of gguf-py 0.19.0, with its block geometry where it is
//! still defined. qinfer computes with a subset ([`DType`]); the rest are known here by name so
//! that errors can say which type a file uses, and so their byte sizes can still be checked.

use qinfer_tensor::DType;

/// Name and block geometry of one GGML type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlType {
    pub id: u32,
    pub name: &'static str,
    /// `(elements per block, bytes per block)`; `None` for ids that were removed from GGML
    /// and have no defined size any more.
    pub block: Option<(usize, usize)>,
}

const QK_K: usize = 256;

const fn t(id: u32, name: &'static str, block: Option<(usize, usize)>) -> GgmlType {
    GgmlType { id, name, block }
}

/// Indexed by id (`GGMLQuantizationType` and `GGML_QUANT_SIZES` in gguf-py's constants.py;
/// the removed ids come from ggml.h's history).
const TYPES: [GgmlType; 42] = [
    t(0, "F32", Some((1, 4))),
    t(1, "F16", Some((1, 2))),
    t(2, "Q4_0", Some((32, 2 + 16))),
    t(3, "Q4_1", Some((32, 2 + 2 + 16))),
    t(4, "Q4_2", None),
    t(5, "Q4_3", None),
    t(6, "Q5_0", Some((32, 2 + 4 + 16))),
    t(7, "Q5_1", Some((32, 2 + 2 + 4 + 16))),
    t(8, "Q8_0", Some((32, 2 + 32))),
    t(9, "Q8_1", Some((32, 4 + 4 + 32))),
    t(10, "Q2_K", Some((QK_K, 2 + 2 + QK_K / 16 + QK_K / 4))),
    t(11, "Q3_K", Some((QK_K, 2 + QK_K / 4 + QK_K / 8 + 12))),
    t(12, "Q4_K", Some((QK_K, 2 + 2 + QK_K / 2 + 12))),
    t(13, "Q5_K", Some((QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12))),
    t(
        14,
        "Q6_K",
        Some((QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16)),
    ),
    t(15, "Q8_K", Some((QK_K, 4 + QK_K + QK_K / 8))),
    t(16, "IQ2_XXS", Some((QK_K, 2 + QK_K / 4))),
    t(17, "IQ2_XS", Some((QK_K, 2 + QK_K / 4 + QK_K / 32))),
    t(18, "IQ3_XXS", Some((QK_K, 2 + QK_K / 4 + QK_K / 8))),
    t(19, "IQ1_S", Some((QK_K, 2 + QK_K / 8 + QK_K / 16))),
    t(20, "IQ4_NL", Some((32, 2 + 16))),
    t(
        21,
        "IQ3_S",
        Some((QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4)),
    ),
    t(22, "IQ2_S", Some((QK_K, 2 + QK_K / 4 + QK_K / 16))),
    t(23, "IQ4_XS", Some((QK_K, 2 + 2 + QK_K / 2 + QK_K / 64))),
    t(24, "I8", Some((1, 1))),
    t(25, "I16", Some((1, 2))),
    t(26, "I32", Some((1, 4))),
    t(27, "I64", Some((1, 8))),
    t(28, "F64", Some((1, 8))),
    t(29, "IQ1_M", Some((QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32))),
    t(30, "BF16", Some((1, 2))),
    t(31, "Q4_0_4_4", None),
    t(32, "Q4_0_4_8", None),
    t(33, "Q4_0_8_8", None),
    t(34, "TQ1_0", Some((QK_K, 2 + 4 * 13))),
    t(35, "TQ2_0", Some((QK_K, 2 + 64))),
    t(36, "IQ4_NL_4_4", None),
    t(37, "IQ4_NL_4_8", None),
    t(38, "IQ4_NL_8_8", None),
    t(39, "MXFP4", Some((32, 1 + 16))),
    t(40, "NVFP4", Some((64, 4 + 32))),
    t(41, "Q1_0", Some((128, 2 + 16))),
];

impl GgmlType {
    /// The type with id `id`, if GGML ever defined one (ids 0..=41).
    pub fn from_id(id: u32) -> Option<&'static GgmlType> {
        TYPES.get(usize::try_from(id).ok()?)
    }

    /// Every id 0..=41, in order.
    pub fn all() -> &'static [GgmlType] {
        &TYPES
    }

    /// The qinfer storage type for this id, if qinfer supports it.
    pub fn dtype(&self) -> Option<DType> {
        DType::from_ggml_id(self.id)
    }
}

/// `"Q4_K (id 12)"`, or `"unknown type (id 99)"`: how errors name a tensor type.
pub fn ggml_type_label(id: u32) -> String {
    match GgmlType::from_id(id) {
        Some(t) => format!("{} (id {id})", t.name),
        None => format!("unknown type (id {id})"),
    }
}
