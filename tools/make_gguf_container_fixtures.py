#!/usr/bin/env python3
"""Writes the GGUF container fixtures in tests/fixtures/gguf-container/.

Each fixture FILE.gguf (or the parts of a split model) comes with FILE.json: the version, the
alignment, every metadata entry in file order with its GGUF value type, and every tensor (GGML
dims, type id, file, data as hex). crates/formats/tests/gguf.rs checks that qinfer reads exactly
that. After writing, every fixture is read back with gguf.GGUFReader as a cross-check.

    python3 -m venv /work/gguf-venv && /work/gguf-venv/bin/pip install -r tools/requirements-gguf.txt
    /work/gguf-venv/bin/python tools/make_gguf_container_fixtures.py

    # check that gguf-py reads a file written by qinfer's GgufWriter (see the fixture README):
    /work/gguf-venv/bin/python tools/make_gguf_container_fixtures.py --check FILE.gguf FILE.json

The data is arbitrary bytes (a container test: nothing is dequantized). Everything is derived from
a fixed seed, so re-running reproduces the files byte for byte.
"""

import argparse
import importlib.metadata
import json
import struct
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as T

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf-container"
TYPE_NAMES = {
    T.UINT8: "u8", T.INT8: "i8", T.UINT16: "u16", T.INT16: "i16", T.UINT32: "u32",
    T.INT32: "i32", T.FLOAT32: "f32", T.BOOL: "bool", T.STRING: "string", T.ARRAY: "array",
    T.UINT64: "u64", T.INT64: "i64", T.FLOAT64: "f64",
}


def typed(vtype, value, sub_type=None):
    """The JSON form of a value: {"type": ..., "value": ...}, arrays element by element."""
    if vtype == T.ARRAY:
        items = []
        for item in value:
            if sub_type is not None:
                st = sub_type
            elif isinstance(item, bytes):
                st = T.STRING
            else:
                st = T.get_type(item)
            if st == T.ARRAY and isinstance(item, bytes):
                items.append(typed(T.ARRAY, list(item), T.UINT8))
            else:
                items.append(typed(st, item))
        return {"type": "array", "value": items}
    if vtype == T.FLOAT32:
        value = float(np.float32(value))
    return {"type": TYPE_NAMES[vtype], "value": value}


RNG = np.random.default_rng(20260601)


def raw_bytes(n):
    return RNG.integers(0, 256, size=n, dtype=np.uint8)


def tensor_json(name, dims, qtype, data, file):
    return {"name": name, "dims": dims, "ggml_type": int(qtype), "type_name": qtype.name,
            "file": file, "data_hex": bytes(data.tobytes()).hex()}


# (key, value type, value, array element type) in file order, after general.architecture.
METADATA = [
    ("test.u8", T.UINT8, 200, None),
    ("test.i8", T.INT8, -100, None),
    ("test.u16", T.UINT16, 60000, None),
    ("test.i16", T.INT16, -30000, None),
    ("test.u32", T.UINT32, 4_000_000_000, None),
    ("test.i32", T.INT32, -2_000_000_000, None),
    ("test.u64", T.UINT64, 18_000_000_000_000_000_000, None),
    ("test.i64", T.INT64, -9_000_000_000_000_000_000, None),
    ("test.f32", T.FLOAT32, 1e-6, None),
    ("test.f64", T.FLOAT64, 10000000.000001, None),
    ("test.bool_true", T.BOOL, True, None),
    ("test.bool_false", T.BOOL, False, None),
    ("test.string", T.STRING, "gpt2", None),
    ("test.string_empty", T.STRING, "", None),
    ("test.string_unicode", T.STRING, "héllo, 世界 🦀 \u0000 end", None),
    ("test.array_u8", T.ARRAY, [0, 1, 255], T.UINT8),
    ("test.array_i32", T.ARRAY, [11, 11, 10, 0], T.INT32),
    ("test.array_u64", T.ARRAY, [2**64 - 1, 0], T.UINT64),
    ("test.array_f32", T.ARRAY, [0.5, -1.25, 3.0e38], T.FLOAT32),
    ("test.array_bool", T.ARRAY, [True, False, True], T.BOOL),
    ("test.array_string", T.ARRAY, ["a", "", "Ġthe", "日本"], T.STRING),
    ("test.array_nested_i32", T.ARRAY, [[1, 2], [3]], T.ARRAY),
    ("test.array_nested_string", T.ARRAY, [["x"], ["y", "z"]], T.ARRAY),
    ("test.array_nested_u8", T.ARRAY, [b"\x01\x02", b"\x03"], T.ARRAY),
    ("tokenizer.chat_template", T.STRING, "{% for m in messages %}{{ m.content }}{% endfor %}", None),
]


def write_all_types():
    path = OUT / "all-types.gguf"
    w = gguf.GGUFWriter(path, "test")
    meta = [{"key": "general.architecture", "value": typed(T.STRING, "test")}]
    for key, vtype, value, sub in METADATA:
        w.add_key_value(key, value, vtype, sub_type=sub)
        meta.append({"key": key, "value": typed(vtype, value, sub)})
    tensors = []
    # (name, numpy array or raw bytes [rows, row bytes], raw GGML type or None)
    specs = [
        ("f32.matrix", RNG.standard_normal((3, 5)).astype(np.float32), None),
        ("f16.vector", RNG.standard_normal(7).astype(np.float16), None),
        ("q8_0.matrix", raw_bytes((2, 2 * 34)), Q.Q8_0),
        ("q4_k.matrix", raw_bytes((2, 144)), Q.Q4_K),
        ("bf16.vector", raw_bytes((1, 2 * 3)), Q.BF16),
        ("iq2_xxs.unsupported", raw_bytes((1, 66)), Q.IQ2_XXS),
        ("f32.scalar3d", RNG.standard_normal((2, 1, 3)).astype(np.float32), None),
    ]
    for name, arr, qtype in specs:
        w.add_tensor(name, arr, raw_dtype=qtype)
        if qtype is None:
            qtype = Q.F32 if arr.dtype == np.float32 else Q.F16
            dims = list(reversed(arr.shape))
        else:
            shape = gguf.quant_shape_from_byte_shape(arr.shape, qtype)
            dims = list(reversed(shape))
        tensors.append(tensor_json(name, dims, qtype, arr, path.name))
    finish(w)
    return [path], {"files": [path.name], "version": 3, "alignment": 32, "metadata": meta,
                    "tensors": tensors}


def write_align64():
    path = OUT / "align64.gguf"
    w = gguf.GGUFWriter(path, "test")
    w.add_custom_alignment(64)
    meta = [{"key": "general.architecture", "value": typed(T.STRING, "test")},
            {"key": "general.alignment", "value": typed(T.UINT32, 64)}]
    tensors = []
    # Odd sizes, so that every tensor needs padding.
    for name, n in [("a", 3), ("b", 17), ("c", 1)]:
        arr = RNG.standard_normal(n).astype(np.float32)
        w.add_tensor(name, arr)
        tensors.append(tensor_json(name, [n], Q.F32, arr, path.name))
    finish(w)
    return [path], {"files": [path.name], "version": 3, "alignment": 64, "metadata": meta,
                    "tensors": tensors}


def write_split():
    """Two parts, as gguf-py's writer splits (the same split.* keys as llama.cpp's gguf-split:
    split.no u16 0-based, split.count u16, split.tensors.count i32; only part 1 has the rest)."""
    base = OUT / "split.gguf"
    w = gguf.GGUFWriter(base, "test", split_max_tensors=2)
    w.add_uint32("test.block_count", 3)
    tensors = []
    names = []
    for i in range(3):
        arr = RNG.standard_normal((2, 4)).astype(np.float32)
        name = f"blk.{i}.weight"
        w.add_tensor(name, arr)
        names.append(name)
        tensors.append((name, arr))
    finish(w)
    paths = [OUT / f"split-0000{i}-of-00002.gguf" for i in (1, 2)]
    meta = [{"key": "general.architecture", "value": typed(T.STRING, "test")},
            {"key": "test.block_count", "value": typed(T.UINT32, 3)},
            {"key": "split.no", "value": typed(T.UINT16, 0)},
            {"key": "split.count", "value": typed(T.UINT16, 2)},
            {"key": "split.tensors.count", "value": typed(T.INT32, 3)}]
    tj = [tensor_json(n, [4, 2], Q.F32, a, paths[0 if i < 2 else 1].name)
          for i, (n, a) in enumerate(tensors)]
    return paths, {"files": [p.name for p in paths], "version": 3, "alignment": 32,
                   "metadata": meta, "tensors": tj}


def finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def pack_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def write_hand_packed(version):
    """What gguf-py's writer refuses to write but llama.cpp accepts: empty arrays (their element
    type is not kept by qinfer's Value), arrays of empty arrays; and GGUF v2 (same layout as v3).
    Packed with struct, following the layout in the module docs of crates/formats/src/gguf."""
    name = "hand-packed.gguf" if version == 3 else "version2.gguf"
    path = OUT / name
    kvs = [
        ("general.architecture", struct.pack("<I", T.STRING) + pack_string("test"),
         typed(T.STRING, "test")),
        ("test.empty_u32_array", struct.pack("<IIQ", T.ARRAY, T.UINT32, 0),
         {"type": "array", "value": []}),
        ("test.empty_string_array", struct.pack("<IIQ", T.ARRAY, T.STRING, 0),
         {"type": "array", "value": []}),
        ("test.array_of_empty_arrays",
         struct.pack("<IIQ", T.ARRAY, T.ARRAY, 2) + struct.pack("<IQ", T.INT64, 0) * 2,
         {"type": "array", "value": [{"type": "array", "value": []}] * 2}),
        ("", struct.pack("<I", T.STRING) + pack_string(""), typed(T.STRING, "")),
    ]
    data = np.arange(8, dtype=np.float32)
    head = b"GGUF" + struct.pack("<IQQ", version, 1, len(kvs))
    for key, packed, _ in kvs:
        head += pack_string(key) + packed
    head += pack_string("t") + struct.pack("<I", 1) + struct.pack("<Q", 8)
    head += struct.pack("<IQ", Q.F32, 0)
    head += b"\0" * (-len(head) % 32)
    path.write_bytes(head + data.tobytes())
    meta = [{"key": k, "value": v} for k, _, v in kvs]
    return [path], {"files": [name], "version": version, "alignment": 32, "metadata": meta,
                    "tensors": [tensor_json("t", [8], Q.F32, data, name)]}


def reader_value(field):
    """A field as gguf.GGUFReader decodes it, in the JSON form (flat arrays only)."""
    vtype = field.types[0]
    if vtype == T.ARRAY:
        sub = field.types[1] if len(field.types) > 1 else None
        if sub == T.ARRAY:
            return None  # gguf-py flattens nested arrays; not comparable
        items = field.contents()
        return {"type": "array", "value": [{"type": TYPE_NAMES[sub], "value": v} for v in items]}
    return {"type": TYPE_NAMES[vtype], "value": field.contents()}


def check(paths, expected):
    """Reads every part with gguf.GGUFReader and compares with the expected JSON."""
    seen_meta = None
    tensors = []
    for p in paths:
        r = gguf.GGUFReader(p)
        fields = [f for f in r.fields.values() if not f.name.startswith("GGUF.")]
        if seen_meta is None:
            seen_meta = fields
            assert r.alignment == expected["alignment"], (p, r.alignment)
        for t in r.tensors:
            tensors.append((t.name, [int(d) for d in t.shape], int(t.tensor_type),
                            bytes(np.asarray(t.data).tobytes()).hex()))
    want_keys = [m["key"] for m in expected["metadata"]]
    assert [f.name for f in seen_meta] == want_keys, ([f.name for f in seen_meta], want_keys)
    for f, m in zip(seen_meta, expected["metadata"]):
        got = reader_value(f)
        if got is not None and not (m["value"]["type"] == "array" and not m["value"]["value"]):
            assert got == m["value"], (f.name, got, m["value"])
    want_tensors = [(t["name"], t["dims"], t["ggml_type"], t["data_hex"])
                    for t in expected["tensors"]]
    assert tensors == want_tensors, (tensors, want_tensors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", nargs=2, metavar=("GGUF", "JSON"),
                    help="only check that gguf-py reads GGUF as JSON describes it")
    args = ap.parse_args()
    if args.check:
        check([Path(args.check[0])], json.loads(Path(args.check[1]).read_text()))
        print(f"gguf {importlib.metadata.version('gguf')} reads {args.check[0]} as expected")
        return
    OUT.mkdir(parents=True, exist_ok=True)
    for make in (write_all_types, write_align64, write_split,
                 lambda: write_hand_packed(3), lambda: write_hand_packed(2)):
        paths, expected = make()
        stem = paths[0].name.split("-0000")[0].removesuffix(".gguf")
        (OUT / f"{stem}.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
        check(paths, expected)
        print(f"wrote {', '.join(p.name for p in paths)} and {stem}.json; gguf.GGUFReader agrees")


if __name__ == "__main__":
    sys.exit(main())
