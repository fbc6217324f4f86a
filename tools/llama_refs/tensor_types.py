"""Per-tensor types of a GGUF (gguf-py of the vendored llama.cpp tree on PYTHONPATH), plus a summary."""
import collections
import sys

from gguf import GGUFReader

r = GGUFReader(sys.argv[1])
ft = r.fields.get("general.file_type")
if ft is not None:
    print(f"general.file_type = {int(ft.parts[ft.data[0]][0])}")
count = collections.Counter()
for t in r.tensors:
    shape = "x".join(str(int(s)) for s in t.shape)
    print(f"{t.name:40s} {t.tensor_type.name:6s} {shape}")
    count[t.tensor_type.name] += 1
print("summary: " + ", ".join(f"{k} {v}" for k, v in sorted(count.items())))
