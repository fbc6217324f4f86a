#!/usr/bin/env bash
# Regenerate tests/fixtures/gguf/llama/ with llama.cpp itself (built by tools/build_llama_cpp.sh):
#   * tiny-dense-q4_k_m.gguf   = llama-quantize tiny-dense-f32.gguf ... Q4_K_M
#   * llama.cpp logits (.npy, float32 [T, n_vocab]) for the short prompt (and the long prompt for f32 files)
#   * llama.cpp's 32 greedy ids per file -> llama-refs.json
#   * quantize log and per-tensor types of the Q4_K_M file (q4_k_m-tensor-types.txt)
#   * for the quantized files, llama.cpp on the same weights dequantized to F32 by
#     `llama-quantize --allow-requantize X F32` (the .gguf stays in a temp dir): *.dequant_f32.logits_short.npy
#   * transformers on the dequantized Q4_K_M weights (tools/make_gguf_quant_reference.py, as for Q8_0):
#     tiny-dense-q4_k_m.tf_logits_short.npy + tiny-dense-q4_k_m.reference.json (skipped if CONVERT_PY is missing)
#   * the comparison with the transformers references (comparison.md, used in README.md)
# Environment: LLAMA_BUILD (default /work/llama-build), LLAMA_SRC (default /work/llama-src),
#              PY (python with numpy; default /work/gguf-fix-venv/bin/python),
#              CONVERT_PY (python with torch + transformers; default /work/oracle-venv/bin/python).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
LLAMA_BUILD="${LLAMA_BUILD:-/work/llama-build}"
LLAMA_SRC="${LLAMA_SRC:-/work/llama-src}"
PY="${PY:-/work/gguf-fix-venv/bin/python}"
CONVERT_PY="${CONVERT_PY:-/work/oracle-venv/bin/python}"
BIN="$LLAMA_BUILD/cpu/bin"
GG="$REPO/tests/fixtures/gguf"
OUT="$GG/llama"
GGUF_PY="$LLAMA_SRC/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py"
export LLAMA_THREADS="${LLAMA_THREADS:-1}"

[ -x "$BIN/llama-quantize" ] && [ -x "$BIN/llama-logits" ] || { echo "run tools/build_llama_cpp.sh first" >&2; exit 1; }
mkdir -p "$OUT"

ids() {  # reference.json key -> "a,b,c"
    "$PY" -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))[sys.argv[2]])))" "$1" "$2"
}
REF="$REPO/tests/fixtures/tiny-dense-f32/reference.json"
SHORT="$(ids "$REF" short_prompt)"
LONG="$(ids "$REF" long_prompt)"
GREEDY="$(ids "$REF" greedy_prompt)"
# the MoE fixture uses the same prompts
for k in short_prompt long_prompt greedy_prompt; do
    [ "$(ids "$REF" $k)" = "$(ids "$REPO/tests/fixtures/tiny-moe-f32/reference.json" $k)" ]
done

# (a) Q4_K_M with llama.cpp's quantizer (1 thread; the log lists the type each tensor got)
"$BIN/llama-quantize" "$GG/tiny-dense-f32.gguf" "$OUT/tiny-dense-q4_k_m.gguf" Q4_K_M 1 > "$OUT/quantize-q4_k_m.log" 2>&1 \
    || { cat "$OUT/quantize-q4_k_m.log"; exit 1; }
# keep only the per-tensor lines and the summary (the full log has machine-specific system info)
grep -E "^\[ *[0-9]+/ *[0-9]+\]|llama_model_quantize_impl: (model|quant) size|fallback|converting|falling back" \
    "$OUT/quantize-q4_k_m.log" | sed -e 's/[[:space:]]*$//' > "$OUT/quantize-q4_k_m.txt" || true
rm "$OUT/quantize-q4_k_m.log"
PYTHONPATH="$GGUF_PY" "$PY" "$REPO/tools/llama_refs/tensor_types.py" "$OUT/tiny-dense-q4_k_m.gguf" > "$OUT/q4_k_m-tensor-types.txt"

# transformers on exactly the Q4_K_M weights (same tool as for tiny-dense-q8_0.logits_short.npy);
# run on a temp copy because the tool writes its outputs next to the .gguf
TMP="$(mktemp -d /tmp/llama-refs.XXXXXX)"; trap 'rm -rf "$TMP"' EXIT
if [ -x "$CONVERT_PY" ]; then
    cp "$OUT/tiny-dense-q4_k_m.gguf" "$TMP/"
    OMP_NUM_THREADS=1 PYTHONPATH="$GGUF_PY" "$CONVERT_PY" "$REPO/tools/make_gguf_quant_reference.py" \
        "$TMP/tiny-dense-q4_k_m.gguf" "$REPO/tests/fixtures/tiny-dense-f32" 2>&1 | grep -v "^\[transformers\]" || true
    mv "$TMP/tiny-dense-q4_k_m.logits_short.npy" "$OUT/tiny-dense-q4_k_m.tf_logits_short.npy"
    "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); d['logits']='tiny-dense-q4_k_m.tf_logits_short.npy'; json.dump(d, open(sys.argv[2],'w'), indent=1)" \
        "$TMP/tiny-dense-q4_k_m.reference.json" "$OUT/tiny-dense-q4_k_m.reference.json"
    rm "$TMP/tiny-dense-q4_k_m.gguf"
else
    echo "warning: $CONVERT_PY missing; transformers reference for Q4_K_M not regenerated" >&2
fi

# (b) logits, (c) greedy ids
declare -A FILES=(
    [tiny-dense-f32.gguf]="$GG/tiny-dense-f32.gguf"
    [tiny-moe-f32.gguf]="$GG/tiny-moe-f32.gguf"
    [tiny-dense-q8_0.gguf]="$GG/tiny-dense-q8_0.gguf"
    [llama/tiny-dense-q4_k_m.gguf]="$OUT/tiny-dense-q4_k_m.gguf"
)
JSON="$OUT/greedy.tmp"; : > "$JSON"
for name in tiny-dense-f32.gguf tiny-moe-f32.gguf tiny-dense-q8_0.gguf llama/tiny-dense-q4_k_m.gguf; do
    f="${FILES[$name]}"; stem="$(basename "$name" .gguf)"
    "$BIN/llama-logits" logits "$f" "$OUT/$stem.logits_short.npy" "$SHORT"
    case "$stem" in *f32) "$BIN/llama-logits" logits "$f" "$OUT/$stem.logits_long.npy" "$LONG" ;; esac
    g="$("$BIN/llama-logits" greedy "$f" 32 "$GREEDY")"
    gd=""
    case "$stem" in *q8_0|*q4_k_m)
        # same weights, dequantized to F32 by llama.cpp: separates llama.cpp's quantized kernels from the weights
        "$BIN/llama-quantize" --allow-requantize "$f" "$TMP/deq.gguf" F32 1 > "$TMP/deq.log" 2>&1 || { cat "$TMP/deq.log"; exit 1; }
        "$BIN/llama-logits" logits "$TMP/deq.gguf" "$OUT/$stem.dequant_f32.logits_short.npy" "$SHORT"
        gd="$("$BIN/llama-logits" greedy "$TMP/deq.gguf" 32 "$GREEDY")"
        rm "$TMP/deq.gguf" ;;
    esac
    echo "$name	$stem	$g	$gd" >> "$JSON"
done
"$PY" - "$OUT" "$REF" <<'PY'
import json, os, sys
out, ref = sys.argv[1], json.load(open(sys.argv[2]))
d = {}
for line in open(os.path.join(out, "greedy.tmp")):
    name, stem, g, gd = line.rstrip("\n").split("\t")
    e = {"short_logits": stem + ".logits_short.npy"}
    if os.path.exists(os.path.join(out, stem + ".logits_long.npy")):
        e["long_logits"] = stem + ".logits_long.npy"
    e["greedy_prompt"] = ref["greedy_prompt"]
    e["greedy_ids"] = json.loads(g)
    if gd:
        e["dequant_f32_short_logits"] = stem + ".dequant_f32.logits_short.npy"
        e["dequant_f32_greedy_ids"] = json.loads(gd)
    d[name] = e
meta = {"llama.cpp": "ggml-org/llama.cpp@0c1e57098 (vendored in llama-cpp-python 0.3.36)",
        "tool": "tools/llama_logits.cpp (n_ctx 512, n_batch = n_ubatch = 512, 1 sequence, CPU, 1 thread)",
        "paths": "keys are relative to tests/fixtures/gguf/; logits files are in tests/fixtures/gguf/llama/"}
json.dump({"_about": meta, **d}, open(os.path.join(out, "llama-refs.json"), "w"), indent=1)
os.remove(os.path.join(out, "greedy.tmp"))
PY
"$PY" "$REPO/tools/llama_refs/compare.py" "$REPO" | tee "$OUT/comparison.md"
du -sh "$OUT"; ls -l "$OUT"
