#!/usr/bin/env bash
# qinfer vs llama.cpp on the same GGUF files, same thread count, in one run.
#
# usage: tools/bench_vs_llama_cpp.sh [SHAPE...]        SHAPE: 0.8b (default), 4b
#
# For each shape: random-weight checkpoints with the real Qwen3.5 shapes
# (tools/make_bench_models.py), converted to BF16 GGUF by llama.cpp's own converter and quantized
# to Q8_0 and Q4_K_M by llama-quantize (all under $MODELS, never in the repo; reused when present).
# Then, file by file, `qinfer bench` and `llama-bench` with the same -p/-n/-r/threads, and a
# table with the ratios (tools/bench_table.py).
#
# Environment (all optional):
#   MODELS       where models go                    (default /work/bench-models)
#   THREADS      threads for both engines           (default 2)
#   REPS         repetitions                        (default 3)
#   PP, TG       prompt / generated tokens          (default 512 / 128)
#   TYPES        GGUF types                         (default "q4_k_m q8_0 bf16")
#   EVICT        1: drop each file from the page cache before its runs (default 1; see below)
#   LLAMA_BENCH  llama-bench binary  (default /work/llama-build/cpu-vnni/bin/llama-bench: AVX-512
#                with VNNI/BF16/VBMI, no AMX, built by VARIANT=cpu-vnni tools/build_llama_cpp.sh;
#                AMX is off because llama.cpp's AMX path crashes on Q8_0 on these machines)
#   LLAMA_BUILD  llama.cpp build root (llama-quantize)  (default /work/llama-build)
#   LLAMA_DIR    the vendored llama.cpp tree (converter)
#   ORACLE_PY    python with torch + transformers   (default /work/oracle-venv/bin/python)
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
MODELS="${MODELS:-/work/bench-models}"
THREADS="${THREADS:-2}"
REPS="${REPS:-3}"
PP="${PP:-512}"
TG="${TG:-128}"
TYPES="${TYPES:-q4_k_m q8_0 bf16}"
EVICT="${EVICT:-1}"
LLAMA_BUILD="${LLAMA_BUILD:-/work/llama-build}"
LLAMA_BENCH="${LLAMA_BENCH:-$LLAMA_BUILD/cpu-vnni/bin/llama-bench}"
LLAMA_DIR="${LLAMA_DIR:-/work/llama-src/llama_cpp_python-0.3.36/vendor/llama.cpp}"
ORACLE_PY="${ORACLE_PY:-/work/oracle-venv/bin/python}"
SHAPES=("$@")
[ ${#SHAPES[@]} -gt 0 ] || SHAPES=(0.8b)

cargo build --release -p qinfer-cli --manifest-path "$REPO/Cargo.toml" >&2
QINFER="$REPO/target/release/qinfer"
OUT="$MODELS/results-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

for shape in "${SHAPES[@]}"; do
    bf16="$MODELS/qwen35-$shape-bf16.gguf"
    if [ ! -f "$bf16" ]; then
        "$ORACLE_PY" "$REPO/tools/make_bench_models.py" "$shape" "$MODELS/hf-$shape" >&2
        (cd "$MODELS" && "$ORACLE_PY" "$REPO/tools/gguf_fixtures/convert.py" "$LLAMA_DIR" "hf-$shape" \
            --outfile "$bf16" --outtype bf16 --no-mtp) > "$OUT/convert-$shape.log" 2>&1
        rm -rf "$MODELS/hf-$shape"
    fi
    for t in $TYPES; do
        f="$MODELS/qwen35-$shape-$t.gguf"
        if [ ! -f "$f" ]; then
            "$LLAMA_BUILD/cpu/bin/llama-quantize" "$bf16" "$f" "$(echo "$t" | tr a-z A-Z)" > "$OUT/quantize-$shape-$t.log" 2>&1
        fi
        if [ "$EVICT" = 1 ]; then
            # Drop the file from the page cache (written or not) so that both engines map it as
            # it is cached after a fresh read from disk: on Linux 6.x with ext4/xfs large folios
            # that is mostly 2 MiB folios, mapped whole, instead of the small folios a file
            # written on this machine sits in. The first reader (qinfer) faults it back in; both
            # engines then map the same page cache.
            sync "$f"
            python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$f"
        fi
        echo "== $shape $t: qinfer" >&2
        "$QINFER" bench "$f" -p "$PP" -n "$TG" -r "$REPS" --threads "$THREADS" --json > "$OUT/qinfer-$shape-$t.json"
        echo "== $shape $t: llama-bench" >&2
        "$LLAMA_BENCH" -m "$f" -p "$PP" -n "$TG" -r "$REPS" -t "$THREADS" -o json > "$OUT/llama-$shape-$t.json" 2> "$OUT/llama-$shape-$t.log"
    done
done
{
    echo "Date: $(date -u +%Y-%m-%dT%H:%MZ); qinfer commit $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet || echo -dirty); llama.cpp 0c1e57098 ($(basename "$(dirname "$(dirname "$LLAMA_BENCH")")")); $(nproc) vCPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads $THREADS, -p $PP -n $TG -r $REPS"
    echo
    python3 "$REPO/tools/bench_table.py" "$OUT"
} | tee "$OUT/table.md"
