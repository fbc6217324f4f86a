#!/usr/bin/env bash
# Regenerate tests/fixtures/gguf/*.gguf with llama.cpp's OWN converter (convert_hf_to_gguf.py),
# taken from the llama.cpp copy vendored in the llama-cpp-python sdist on PyPI.
# Nothing from llama.cpp is committed; this script fetches it. No C++ build is needed.
# See tests/fixtures/gguf/README.md.
#
# Environment (all optional):
#   LLAMA_SRC   where the sdist is downloaded and extracted   (default /work/llama-src)
#   TOOL_VENV   venv used for `pip download` and `tokenizers`  (default /work/gguf-fix-venv; created)
#   CONVERT_PY  python with torch + transformers + safetensors + numpy + pyyaml + tqdm that runs the
#               converter (default /work/oracle-venv/bin/python: torch 2.15, transformers 5.23)
set -euo pipefail

# The pins and the converter (llama-cpp-python sdist): REPO, LLAMA_SRC, TOOL_VENV, CONVERT_PY, LLAMA_DIR.
source "$(dirname "$0")/llama_cpp_converter.sh"
OUT="$REPO/tests/fixtures/gguf"

# temporary copies of the HF fixtures + a 320-id tokenizer (never written into tests/fixtures/tiny-*)
TMP="$(mktemp -d /tmp/gguf-fixtures.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
"$TOOL_VENV/bin/python" "$REPO/tools/gguf_fixtures/make_tokenizer.py" "$REPO" "$TMP/tokenizer"
for m in tiny-dense-f32 tiny-moe-f32; do
    mkdir -p "$TMP/$m"
    cp "$REPO/tests/fixtures/$m/config.json" "$REPO/tests/fixtures/$m/generation_config.json" \
       "$REPO/tests/fixtures/$m/model.safetensors" "$TMP/$m/"
    cp "$TMP/tokenizer/tokenizer.json" "$TMP/tokenizer/tokenizer_config.json" "$TMP/$m/"
done

convert() {  # model-dir outfile extra-args...
    local dir="$1" outfile="$2"; shift 2
    (cd "$TMP" && "$CONVERT_PY" "$REPO/tools/gguf_fixtures/convert.py" "$LLAMA_DIR" "$dir" \
        --outfile "$outfile" "$@") > "$TMP/log-$(basename "$outfile").txt" 2>&1 \
        || { cat "$TMP/log-$(basename "$outfile").txt"; exit 1; }
    grep -E "WARNING|skip|Skip|n_tensors" "$TMP/log-$(basename "$outfile").txt" | grep -v "^WARNING:hf-to-gguf:\*\*\|^WARNING:hf-to-gguf:$" || true
}

rm -rf "$OUT"/*.gguf "$OUT/split"
mkdir -p "$OUT/split"
convert tiny-dense-f32 "$OUT/tiny-dense-f32.gguf"  --outtype f32
# The MoE fixture has mtp_num_hidden_layers 0 and no mtp.* tensors. Without --no-mtp this converter
# asserts (conversion/qwen.py: `assert self.opt_num_mtp_layers != 0`), so the flag is required.
convert tiny-moe-f32   "$OUT/tiny-moe-f32.gguf"    --outtype f32 --no-mtp
convert tiny-dense-f32 "$OUT/tiny-dense-q8_0.gguf" --outtype q8_0
# split: 124 tensors -> 2 files of <= 64 tensors; upstream names them <stem>-0000N-of-0000M.gguf
convert tiny-dense-f32 "$OUT/split/tiny-dense-f32.gguf" --outtype f32 --split-max-tensors 64

ls -l "$OUT" "$OUT/split"
"$CONVERT_PY" "$REPO/tools/check_gguf_fixtures.py" --gguf-py "$LLAMA_DIR/gguf-py"
