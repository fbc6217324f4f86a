# Sourced by the fixture scripts that run llama.cpp's own converter (make_gguf_fixtures.sh,
# make_mmproj_fixture.sh): the pins, and the llama-cpp-python sdist fetched, checked and
# unpacked. Sets REPO, LLAMA_SRC, TOOL_VENV, CONVERT_PY and LLAMA_DIR (the vendored llama.cpp).
#
#   * llama-cpp-python==0.3.36 sdist from PyPI, which vendors ggml-org/llama.cpp@0c1e57098 and
#     gguf-py 0.19.0. Nothing of llama.cpp is committed.
#   * The sdist is downloaded with `pip download --no-binary :all: --no-deps --no-build-isolation`
#     (pip must build its metadata, so the tool venv has scikit-build-core + cmake).
#
# Environment (all optional):
#   LLAMA_SRC   where the sdist is downloaded and extracted   (default /work/llama-src)
#   TOOL_VENV   venv of the tools (pip download, tokenizer)    (default /work/gguf-fix-venv; created)
#   CONVERT_PY  python with torch + transformers + safetensors + numpy (default /work/oracle-venv/bin/python)

# ---- pins ---------------------------------------------------------------------------------------
LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CPP_PYTHON_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
LLAMA_CPP_COMMIT=0c1e57098        # from the sdist's CHANGELOG.md ("update llama.cpp to ggml-org/llama.cpp@0c1e57098")
GGUF_PY_VERSION=0.19.0            # vendor/llama.cpp/gguf-py/pyproject.toml
TOOL_PKGS="scikit-build-core==1.1.2 cmake==4.* tokenizers==0.23.3 numpy==2.4.6 safetensors==0.8.0"
# -----------------------------------------------------------------------------------------------

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LLAMA_SRC="${LLAMA_SRC:-/work/llama-src}"
TOOL_VENV="${TOOL_VENV:-/work/gguf-fix-venv}"
CONVERT_PY="${CONVERT_PY:-/work/oracle-venv/bin/python}"

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
