#!/usr/bin/env python3
"""Generate the GGML block-format goldens in tests/fixtures/quant from the `gguf` package.

The `gguf` package (pinned in tools/requirements-quant.txt) carries numpy dequantizers for every
GGML block type and quantizers for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 that mirror llama.cpp's reference
rounding. This script writes two files of records (format below):

* dequant.bin: for every block type, 8 blocks of random bytes (f16 scale fields replaced by
  finite random values, some of them subnormal) and gguf's dequantization of them.
* quantize.bin: for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, rows of 256 f32 values (several distributions,
  an all-zero row, rows with one huge outlier, rows that hit rounding ties) and gguf's bytes.

Record format (little-endian), repeated until end of file:
    u8 len, type name (ASCII)          e.g. "Q4_K"
    u8 len, case name (ASCII)          e.g. "random-bytes", "outlier"
    u32 elements, u32 bytes
    bytes  quantized data (`bytes` long)
    f32    values (`elements` of them): expected output (dequant.bin) or input (quantize.bin)

Usage (from the repository root):
    python3 -m venv /work/quant-venv
    /work/quant-venv/bin/pip install -r tools/requirements-quant.txt
    /work/quant-venv/bin/python tools/make_quant_fixtures.py
"""

import struct
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, quants

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "quant"
SEED = 20240611
BLOCKS = 8

# Byte offsets of each f16 scale field inside one block (`d`, `dmin` / `m`).
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
}
QUANTIZABLE = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


def record(qtype: T, case: str, data: np.ndarray, values: np.ndarray) -> bytes:
    data = np.ascontiguousarray(data, dtype=np.uint8).ravel()
    values = np.ascontiguousarray(values, dtype="<f4").ravel()
    name, label = qtype.name.encode(), case.encode()
    head = struct.pack("<B", len(name)) + name + struct.pack("<B", len(label)) + label
    return head + struct.pack("<II", values.size, data.size) + data.tobytes() + values.tobytes()


def random_blocks(rng: np.random.Generator, qtype: T) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(BLOCKS, type_size), dtype=np.uint8)
    for b in range(BLOCKS):
        for off in F16_FIELDS[qtype]:
            # |scale| in [2^-20, 2^0]: finite, and below 2^-14 it is an f16 subnormal.
            mag = 2.0 ** rng.uniform(-20.0, 0.0)
            sign = -1.0 if rng.random() < 0.3 else 1.0
            blocks[b, off:off + 2] = np.frombuffer(np.float16(sign * mag).tobytes(), dtype=np.uint8)
    return blocks


def quantize_rows(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    n = 256
    outlier = rng.standard_normal(n).astype(np.float32)
    outlier[37] = 1000.0
    neg_outlier = rng.standard_normal(n).astype(np.float32) * 0.02
    neg_outlier[200] = -500.0
    # Values that land exactly on rounding ties for several formats: multiples of 1/2 with a
    # block maximum of 8 (Q4_0, Q4_1 step 1) or 127 (Q8_0 step 1).
    ties = (rng.integers(-16, 17, size=n) / 2.0).astype(np.float32)
    ties[::32] = -8.0
    ties8 = (rng.integers(-254, 255, size=n) / 2.0).astype(np.float32)
    ties8[::32] = 127.0
    return [
        ("normal", rng.standard_normal(n).astype(np.float32)),
        ("small-uniform", rng.uniform(-0.01, 0.01, n).astype(np.float32)),
        ("positive", rng.uniform(0.5, 2.0, n).astype(np.float32)),
        ("zeros", np.zeros(n, dtype=np.float32)),
        ("constant", np.full(n, 0.37, dtype=np.float32)),
        ("outlier", outlier),
        ("negative-outlier", neg_outlier),
        ("ties-half", ties),
        ("ties-127", ties8),
    ]


def main() -> None:
    rng = np.random.default_rng(SEED)
    OUT.mkdir(parents=True, exist_ok=True)

    dequant = bytearray()
    for qtype in F16_FIELDS:
        blocks = random_blocks(rng, qtype)
        expected = quants.dequantize(blocks, qtype)
        assert np.all(np.isfinite(expected)), qtype.name
        dequant += record(qtype, "random-bytes", blocks, expected)
    (OUT / "dequant.bin").write_bytes(dequant)

    quant = bytearray()
    rows = quantize_rows(rng)
    for qtype in QUANTIZABLE:
        for case, row in rows:
            data = quants.quantize(row.reshape(1, -1), qtype)
            quant += record(qtype, case, data, row)
    (OUT / "quantize.bin").write_bytes(quant)

    for name in ("dequant.bin", "quantize.bin"):
        print(f"{name}: {(OUT / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
