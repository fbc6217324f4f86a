#!/usr/bin/env python3
"""Print every metadata key (long arrays/strings abbreviated) and every tensor (name, GGML type, ggml ne dims) of a GGUF.

usage: inventory.py [--gguf-py DIR] FILE.gguf   (README inventories in tests/fixtures/gguf/README.md)"""
import sys
if sys.argv[1] == "--gguf-py":
    sys.path.insert(0, sys.argv[2]); del sys.argv[1:3]
import gguf, numpy as np
r = gguf.GGUFReader(sys.argv[1])
for k, f in r.fields.items():
    if k.startswith('GGUF.'): continue
    v = f.contents()
    t = f.types
    if isinstance(v, list):
        s = repr(v) if len(v) <= 8 else f"[{len(v)} items] {v[:4]!r} ... {v[-3:]!r}"
    elif isinstance(v, str) and len(v) > 80:
        s = f"<{len(v)} chars> {v[:50]!r}..."
    else:
        s = repr(v)
    print(f"{k} | {'/'.join(x.name for x in t)} | {s}")
print()
for tn in r.tensors:
    print(tn.name, tn.tensor_type.name, list(map(int, tn.shape)))
