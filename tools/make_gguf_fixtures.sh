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

# ---- pins --------------------------------------------------------------------------------------
LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CPP_PYTHON_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_CPP_COMMIT=0c1e57098        # from the sdist's CHANGELOG.md ("update llama.cpp to ggml-org/llama.cpp@0c1e57098")
GGUF_PY_VERSION=0.19.0            # vendor/llama.cpp/gguf-py/pyproject.toml
TOOL_PKGS="scikit-build-core==1.1.2 cmake==4.* tokenizers==0.23.3 numpy==2.4.6 safetensors==0.8.0"
# -----------------------------------------------------------------------------------------------

REPO="$(cd "$(dirname "$0")/.." && pwd)"
LLAMA_SRC="${LLAMA_SRC:-/work/llama-src}"
TOOL_VENV="${TOOL_VENV:-/work/gguf-fix-venv}"
CONVERT_PY="${CONVERT_PY:-/work/oracle-venv/bin/python}"
OUT="$REPO/tests/fixtures/gguf"

if [ ! -x "$TOOL_VENV/bin/python" ]; then
    python3 -m venv "$TOOL_VENV"
    "$TOOL_VENV/bin/pip" install -q $TOOL_PKGS
fi

SDIST="$LLAMA_SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
mkdir -p "$LLAMA_SRC"
if [ ! -f "$SDIST" ]; then
    # --no-build-isolation: pip must build the sdist's metadata (scikit-build-core looks for cmake);
    # with isolation, --no-binary :all: would also force building cmake/ninja from source.
    PATH="$TOOL_VENV/bin:$PATH" "$TOOL_VENV/bin/pip" download --no-binary :all: --no-deps \
        --no-build-isolation "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$LLAMA_SRC"
fi
echo "$LLAMA_CPP_PYTHON_SHA256  $SDIST" | sha256sum -c -
LLAMA_DIR="$LLAMA_SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
if [ ! -f "$LLAMA_DIR/convert_hf_to_gguf.py" ]; then
    tar -xzf "$SDIST" -C "$LLAMA_SRC"
fi
grep -q "llama.cpp@$LLAMA_CPP_COMMIT" "$LLAMA_SRC/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/CHANGELOG.md"
grep -q "^version = \"$GGUF_PY_VERSION\"" "$LLAMA_DIR/gguf-py/pyproject.toml"

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
