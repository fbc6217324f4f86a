//! Block formats against the `gguf` Python package (fixtures from
//! `tools/make_quant_fixtures.py`; format in `tests/fixtures/quant/README.md`).
//!
//! Tolerance: none. Every comparison is bit-exact (`f32::to_bits` for values, bytes for
//! quantized data): the decoders do the same `f32` operations in the same order as gguf's
//! numpy code, and the legacy quantizers the same operations as llama.cpp's reference.

use std::path::PathBuf;

use qinfer_quant::{QuantError, dequantize_row, quantize_row};
use qinfer_tensor::DType;

/// One fixture record: a case for one type, with quantized bytes and f32 values.
struct Record {
    dtype: DType,
    case: String,
    bytes: Vec<u8>,
    values: Vec<f32>,
}

fn fixture(name: &str) -> Vec<Record> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/quant")
        .join(name);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut rest: &[u8] = &data;
    let mut take = |n: usize| {
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head
    };
    let mut records = Vec::new();
    let mut left = data.len();
    while left > 0 {
        let name_len = take(1)[0] as usize;
        let type_name = String::from_utf8(take(name_len).to_vec()).unwrap();
        let case_len = take(1)[0] as usize;
        let case = String::from_utf8(take(case_len).to_vec()).unwrap();
        let elements = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        let n_bytes = u32::from_le_bytes(take(4).try_into().unwrap()) as usize;
        let bytes = take(n_bytes).to_vec();
        let values = take(4 * elements)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        left -= 1 + name_len + 1 + case_len + 8 + n_bytes + 4 * elements;
        let dtype = DType::from_name(&type_name).unwrap_or_else(|| panic!("unknown {type_name}"));
        records.push(Record {
            dtype,
            case,
            bytes,
            values,
        });
    }
    records
}

/// The one check: our codec on `r` must reproduce the fixture exactly.
fn check(r: &Record, direction: Direction) {
    let what = format!("{} {} ({direction:?})", r.dtype, r.case);
    match direction {
        Direction::Dequantize => {
            let mut out = vec![f32::NAN; r.values.len()];
            dequantize_row(r.dtype, &r.bytes, &mut out).unwrap();
            for (i, (got, want)) in out.iter().zip(&r.values).enumerate() {
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{what}: element {i}: {got} vs {want}"
                );
            }
        }
        Direction::Quantize => {
            let mut out = vec![0u8; r.bytes.len()];
            quantize_row(r.dtype, &r.values, &mut out).unwrap();
            let block = r.dtype.block_bytes();
            for (b, (got, want)) in out.chunks(block).zip(r.bytes.chunks(block)).enumerate() {
                assert_eq!(got, want, "{what}: block {b}");
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Dequantize,
    Quantize,
}

#[test]
fn dequantize_matches_gguf_for_every_block_type() {
    let records = fixture("dequant.bin");
    let covered: Vec<DType> = records.iter().map(|r| r.dtype).collect();
    for dtype in DType::ALL.into_iter().filter(|d| d.is_quantized()) {
        assert!(covered.contains(&dtype), "no dequant fixture for {dtype}");
    }
    for r in &records {
        assert_eq!(r.bytes.len(), 8 * r.dtype.block_bytes(), "{}", r.dtype);
        check(r, Direction::Dequantize);
    }
}

#[test]
fn legacy_quantize_matches_gguf_bit_exactly() {
    let records = fixture("quantize.bin");
    assert_eq!(records.len(), 5 * 9, "5 types × 9 rows");
    for r in &records {
        check(r, Direction::Quantize);
    }
}

#[test]
fn shape_errors_are_errors_not_panics() {
    for dtype in DType::ALL {
        let (n, b) = (dtype.block_size(), dtype.block_bytes());
        // Right element count with one byte too many or too few; a partial block.
        let bad = [(2 * n, 2 * b + 1), (2 * n, 2 * b - 1), (n + 1, b), (0, b)];
        for (elements, bytes) in bad {
            let want = Err(QuantError::Shape {
                dtype,
                elements,
                bytes,
            });
            let mut f = vec![0.0f32; elements];
            let mut q = vec![0u8; bytes];
            assert_eq!(
                dequantize_row(dtype, &q, &mut f),
                want,
                "{dtype} {elements}/{bytes}"
            );
            // The shape is checked before anything else, even for types we cannot write.
            assert_eq!(
                quantize_row(dtype, &f, &mut q),
                want,
                "{dtype} {elements}/{bytes}"
            );
        }
        // Empty rows are fine.
        assert_eq!(dequantize_row(dtype, &[], &mut []), Ok(()));
    }
}
