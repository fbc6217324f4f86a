//! Typed views of stored KV rows, as attention reads them.

use half::{bf16, f16, slice::HalfFloatSliceExt};
use qinfer_quant::q8_0::{self, BlockQ8_0};

/// Key or value rows `[rows, Hkv·D]` as a KV cache stores them. Q8_0 rows are whole blocks of
/// 32 values each (a row never shares a block with the next), so `Hkv·D` must be a multiple
/// of 32 for them.
#[derive(Clone, Copy, Debug)]
pub enum KvRows<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
    F16(&'a [f16]),
    Q8_0(&'a [BlockQ8_0]),
}

/// One segment of a KV cache: its key rows and its value rows.
pub type KvSegment<'a> = (KvRows<'a>, KvRows<'a>);

impl KvRows<'_> {
    /// Rows of `width` values held, or `None` if the data is not whole rows.
    pub fn rows(&self, width: usize) -> Option<usize> {
        let (values, per_unit) = match self {
            KvRows::F32(x) => (x.len(), 1),
            KvRows::Bf16(x) => (x.len(), 1),
            KvRows::F16(x) => (x.len(), 1),
            KvRows::Q8_0(x) if width.is_multiple_of(q8_0::BLOCK) => (x.len(), q8_0::BLOCK),
            KvRows::Q8_0(_) => return None,
        };
        let values = values * per_unit;
        (width > 0 && values.is_multiple_of(width)).then(|| values / width)
    }

    /// Values `from..from + out.len()` of row `row` (rows `width` wide), as `f32`.
    pub fn decode(&self, row: usize, width: usize, from: usize, out: &mut [f32]) {
        let at = row * width + from;
        let n = out.len();
        match self {
            KvRows::F32(x) => out.copy_from_slice(&x[at..at + n]),
            KvRows::Bf16(x) => x[at..at + n].convert_to_f32_slice(out),
            KvRows::F16(x) => x[at..at + n].convert_to_f32_slice(out),
            KvRows::Q8_0(x) => {
                let mut i = 0;
                while i < n {
                    let (b, off) = ((at + i) / q8_0::BLOCK, (at + i) % q8_0::BLOCK);
                    let take = (q8_0::BLOCK - off).min(n - i);
                    out[i..i + take].copy_from_slice(&x[b].dequantize()[off..off + take]);
                    i += take;
                }
            }
        }
    }
}
