#!/usr/bin/env bash
# Build llama.cpp (CPU only) from the tree vendored in the llama-cpp-python 0.3.36 sdist
# (ggml-org/llama.cpp@0c1e57098, see tools/make_gguf_fixtures.sh, which downloads and extracts it),
# OUTSIDE the repo, plus qinfer's tiny logits dumper tools/llama_logits.cpp linked against libllama.
# Nothing of llama.cpp is committed. Only three targets are built: llama-quantize, llama-logits and
# llama-bench (tools/bench_vs_llama_cpp.sh compares qinfer with it).
#
# Environment (all optional):
#   LLAMA_SRC    where the sdist was extracted        (default /work/llama-src)
#   LLAMA_BUILD  build directory root                 (default /work/llama-build)
#   TOOL_VENV    venv that provides cmake (pip)       (default /work/gguf-fix-venv)
#   JOBS         parallel compile jobs                (default 1)
#   VARIANT      "cpu" (default: the build the fixtures were made with) or "cpu-vnni": the same plus
#                AVX512-VNNI, AVX512-BF16 and AVX512-VBMI (still no AMX), llama-bench only; the
#                strongest non-AMX llama.cpp for speed comparisons (tools/bench_vs_llama_cpp.sh)
#
# Result: $LLAMA_BUILD/cpu/bin/{llama-quantize,llama-logits,llama-bench} (static, self-contained).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
LLAMA_SRC="${LLAMA_SRC:-/work/llama-src}"
LLAMA_BUILD="${LLAMA_BUILD:-/work/llama-build}"
TOOL_VENV="${TOOL_VENV:-/work/gguf-fix-venv}"
JOBS="${JOBS:-1}"
VARIANT="${VARIANT:-cpu}"
LLAMA_DIR="$LLAMA_SRC/llama_cpp_python-0.3.36/vendor/llama.cpp"

if [ ! -f "$LLAMA_DIR/include/llama.h" ]; then
    echo "llama.cpp tree not found at $LLAMA_DIR; run tools/make_gguf_fixtures.sh (it downloads the sdist) first" >&2
    exit 1
fi
grep -q "llama.cpp@0c1e57098" "$LLAMA_SRC/llama_cpp_python-0.3.36/CHANGELOG.md"

if [ -x "$TOOL_VENV/bin/cmake" ]; then
    CMAKE="$TOOL_VENV/bin/cmake"
elif command -v cmake >/dev/null; then
    CMAKE=cmake
else
    python3 -m venv "$TOOL_VENV"; "$TOOL_VENV/bin/pip" install -q "cmake==4.*"; CMAKE="$TOOL_VENV/bin/cmake"
fi
GEN=()
if [ -x "$TOOL_VENV/bin/ninja" ]; then GEN=(-G Ninja -DCMAKE_MAKE_PROGRAM="$TOOL_VENV/bin/ninja"); fi

# A 10-line wrapper project: the llama.cpp tree as a subdirectory plus our dumper.
PROJ="$LLAMA_BUILD/qinfer-wrapper"
mkdir -p "$PROJ"
cat > "$PROJ/CMakeLists.txt" <<CMK
cmake_minimum_required(VERSION 3.14)
project(qinfer_llama C CXX)
add_subdirectory("$LLAMA_DIR" llama.cpp)
add_executable(llama-logits "$REPO/tools/llama_logits.cpp")
target_link_libraries(llama-logits PRIVATE llama)
target_compile_features(llama-logits PRIVATE cxx_std_17)
CMK

# CPU only; AVX-512 on (no -march=native, so the binary is the same on every AVX-512 machine);
# AMX off: its AMX path crashes on Q8_0 on these machines. Static libraries.
FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=OFF
    -DGGML_NATIVE=OFF
    -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
    -DGGML_AVX512=ON
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_RPC=OFF
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
    -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$LLAMA_BUILD/$VARIANT/bin"
)
TARGETS=(llama-quantize llama-logits llama-bench)
if [ "$VARIANT" = cpu-vnni ]; then
    FLAGS+=(-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX512_VBMI=ON)
    TARGETS=(llama-bench)
elif [ "$VARIANT" != cpu ]; then
    echo "VARIANT must be cpu or cpu-vnni" >&2; exit 1
fi
start=$(date +%s)
"$CMAKE" -S "$PROJ" -B "$LLAMA_BUILD/$VARIANT" "${GEN[@]}" "${FLAGS[@]}" > "$LLAMA_BUILD/$VARIANT-configure.log" 2>&1 \
    || { cat "$LLAMA_BUILD/$VARIANT-configure.log"; exit 1; }
"$CMAKE" --build "$LLAMA_BUILD/$VARIANT" --target "${TARGETS[@]}" -j "$JOBS"
end=$(date +%s)
echo "built in $((end - start)) s with -j $JOBS:"
ls -l "${TARGETS[@]/#/$LLAMA_BUILD/$VARIANT/bin/}"
grep -E "AVX|AMX|CPU variant|Including CPU" "$LLAMA_BUILD/$VARIANT-configure.log" | sort -u || true
