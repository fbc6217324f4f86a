#!/usr/bin/env bash
# Write tests/fixtures/tiny-vl-f32/mmproj-tiny-vl-f32.gguf with llama.cpp's OWN converter
# (convert_hf_to_gguf.py --mmproj), i.e. the vision tower of the tiny Qwen3.5 VL fixture exactly as
# llama.cpp exports a Qwen3.5 / Qwen3.6 `mmproj` GGUF. Then check every tensor against the HF
# safetensors (bit-exact, after the converter's transforms) and dump all metadata and tensors.
#
# The pins and the converter are tools/llama_cpp_converter.sh's (shared with make_gguf_fixtures.sh):
#   * llama-cpp-python==0.3.36 sdist from PyPI (sha256 832db069...a2e), which vendors
#     ggml-org/llama.cpp@0c1e57098 and gguf-py 0.19.0. Nothing of llama.cpp is committed.
#   * The sdist is downloaded with `pip download --no-binary :all: --no-deps --no-build-isolation`
#     (pip must build its metadata, so the tool venv has scikit-build-core + cmake).
#   * The converter runs under /work/oracle-venv/bin/python (torch 2.15, transformers 5.23) with the
#     vendored gguf-py (the converter puts <llama.cpp>/gguf-py on sys.path itself).
#
# Conversion path in this llama.cpp: MMPROJ_MODEL_MAP["Qwen3_5ForConditionalGeneration"] = "qwen3vl"
# -> conversion/qwen3vl.py:Qwen3VLVisionModel (shared with Qwen3-VL, projector type "qwen3vl_merger").
# The mmproj pass needs no tokenizer files. Input is a temporary copy named tiny-vl-f32 (the dir name
# becomes general.name "Tiny Vl F32"); the fixture dir is only read, and only the .gguf is written there.
#
# Command run (from the temp dir):
#   python convert_hf_to_gguf.py $TMP/tiny-vl-f32 --mmproj --outtype f32 \
#          --outfile tests/fixtures/tiny-vl-f32/mmproj-tiny-vl-f32.gguf
#
# Environment (all optional):
#   LLAMA_SRC   where the sdist is downloaded and extracted   (default /work/llama-src)
#   TOOL_VENV   venv used for `pip download`                   (default /work/gguf-fix-venv; created)
#   CONVERT_PY  python with torch + transformers + safetensors + numpy + pyyaml + tqdm
#               (default /work/oracle-venv/bin/python)
set -euo pipefail

# The pins and the converter (llama-cpp-python sdist): REPO, LLAMA_SRC, TOOL_VENV, CONVERT_PY, LLAMA_DIR.
source "$(dirname "$0")/llama_cpp_converter.sh"
FIX="$REPO/tests/fixtures/tiny-vl-f32"
OUTFILE="$FIX/mmproj-tiny-vl-f32.gguf"

# temporary copy of the HF fixture (never written into tests/fixtures/tiny-vl-f32 except the .gguf)
TMP="$(mktemp -d /tmp/mmproj-fixture.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/tiny-vl-f32"
cp "$FIX/config.json" "$FIX/preprocessor_config.json" "$FIX/model.safetensors" "$TMP/tiny-vl-f32/"

rm -f "$OUTFILE"
(cd "$TMP" && "$CONVERT_PY" "$LLAMA_DIR/convert_hf_to_gguf.py" "$TMP/tiny-vl-f32" \
    --mmproj --outtype f32 --outfile "$OUTFILE") > "$TMP/log.txt" 2>&1 \
    || { cat "$TMP/log.txt"; exit 1; }
grep -E "architecture|n_tensors|WARNING|successfully" "$TMP/log.txt" || true

ls -l "$OUTFILE"
sha256sum "$OUTFILE"

# ---- verify (bit-exact) and dump ----------------------------------------------------------------
"$CONVERT_PY" - "$LLAMA_DIR/gguf-py" "$OUTFILE" "$FIX/model.safetensors" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import gguf
import numpy as np
from safetensors.numpy import load_file

r = gguf.GGUFReader(sys.argv[2])
hf = {k: v for k, v in load_file(sys.argv[3]).items() if k.startswith("model.visual.")}

print("== metadata ==")
for k, f in r.fields.items():
    types = "/".join(gguf.GGUFValueType(t).name for t in f.types)
    print(f"{k} [{types}] = {f.contents()!r}")

print("== tensors (name: ggml ne[] | numpy row-major shape | type) ==")
g = {}
for t in r.tensors:
    g[t.name] = np.array(t.data)
    print(f"{t.name}: ne={[int(x) for x in t.shape]} | np={list(t.data.shape)} | {t.tensor_type.name}")

# expected GGUF tensor -> HF tensor (+ transform), per conversion/qwen3vl.py
exp = {
    "v.patch_embd.weight":   hf["model.visual.patch_embed.proj.weight"][:, :, 0],  # temporal slice t=0
    "v.patch_embd.weight.1": hf["model.visual.patch_embed.proj.weight"][:, :, 1],  # temporal slice t=1
    "v.patch_embd.bias":     hf["model.visual.patch_embed.proj.bias"],
    "v.position_embd.weight": hf["model.visual.pos_embed.weight"],
    "v.post_ln.weight": hf["model.visual.merger.norm.weight"],
    "v.post_ln.bias":   hf["model.visual.merger.norm.bias"],
    "mm.0.weight": hf["model.visual.merger.linear_fc1.weight"],
    "mm.0.bias":   hf["model.visual.merger.linear_fc1.bias"],
    "mm.2.weight": hf["model.visual.merger.linear_fc2.weight"],
    "mm.2.bias":   hf["model.visual.merger.linear_fc2.bias"],
}
blk = {"attn_qkv": "attn.qkv", "attn_out": "attn.proj", "ffn_up": "mlp.linear_fc1",
       "ffn_down": "mlp.linear_fc2", "ln1": "norm1", "ln2": "norm2"}
n_blk = 1 + max(int(k.split(".")[3]) for k in hf if k.startswith("model.visual.blocks."))
for i in range(n_blk):
    for gn, hn in blk.items():
        for s in ("weight", "bias"):
            exp[f"v.blk.{i}.{gn}.{s}"] = hf[f"model.visual.blocks.{i}.{hn}.{s}"]

bad = []
if set(exp) != set(g):
    bad.append(f"name sets differ: missing {sorted(set(exp) - set(g))}, extra {sorted(set(g) - set(exp))}")
for n, e in exp.items():
    if n in g and (g[n].shape != e.shape or g[n].dtype != e.dtype or not np.array_equal(g[n], e)):
        bad.append(f"{n}: gguf {g[n].shape} {g[n].dtype} != expected {e.shape} {e.dtype}")
if bad:
    print("\n".join(["FAIL"] + bad))
    sys.exit(1)
print(f"OK: all {len(g)} tensors bit-identical to their HF model.visual.* source "
      f"(Conv3d kernel split into [:, :, 0] / [:, :, 1]; everything else unchanged)")
PY
