#!/usr/bin/env bash
# Run llama.cpp (tools/llama_logits.cpp built by tools/build_llama_cpp.sh) on any GGUF, e.g. one written by
# `qinfer quantize`, and compare its logits with reference logits.
#
#   tools/check_with_llama_cpp.sh MODEL.gguf [REF_LOGITS.npy [PROMPT_JSON [KEY]]]
#
# REF_LOGITS  float32/float64 .npy [T, n_vocab]  (default tests/fixtures/tiny-dense-f32/logits_short.npy)
# PROMPT_JSON JSON file holding the prompt ids   (default tests/fixtures/tiny-dense-f32/reference.json)
# KEY         key of the prompt in PROMPT_JSON   (default: short_prompt, or long_prompt if REF_LOGITS has
#             157 rows)
# Prints max |Δlogit|, argmax agreement and llama.cpp's 32 greedy ids for greedy_prompt (if present).
# Env: LLAMA_BUILD (default /work/llama-build), PY (default /work/gguf-fix-venv/bin/python), LLAMA_THREADS.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
LLAMA_BUILD="${LLAMA_BUILD:-/work/llama-build}"
PY="${PY:-/work/gguf-fix-venv/bin/python}"
BIN="$LLAMA_BUILD/cpu/bin/llama-logits"
[ -x "$BIN" ] || { echo "run tools/build_llama_cpp.sh first ($BIN missing)" >&2; exit 1; }
[ $# -ge 1 ] || { sed -n 2,12p "$0"; exit 2; }
MODEL="$1"
REFL="${2:-$REPO/tests/fixtures/tiny-dense-f32/logits_short.npy}"
PJ="${3:-$REPO/tests/fixtures/tiny-dense-f32/reference.json}"
KEY="${4:-}"
if [ -z "$KEY" ]; then
    rows="$("$PY" -c "import numpy as np,sys; print(np.load(sys.argv[1], mmap_mode='r').shape[0])" "$REFL")"
    KEY=short_prompt; [ "$rows" = 157 ] && KEY=long_prompt
fi
IDS="$("$PY" -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))[sys.argv[2]])))" "$PJ" "$KEY")"
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
"$BIN" logits "$MODEL" "$TMP/l.npy" "$IDS" 2>/dev/null
"$PY" - "$TMP/l.npy" "$REFL" "$MODEL" "$KEY" <<'PY'
import sys, numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
if a.shape != b.shape:
    sys.exit(f"shape mismatch: llama.cpp {a.shape} vs reference {b.shape}")
d = np.abs(a.astype(np.float64) - b.astype(np.float64))
print(f"{sys.argv[3]} [{sys.argv[4]}, {a.shape[0]} positions]: llama.cpp vs {sys.argv[2]}: "
      f"max |Δlogit| = {d.max():.6g} (ref max |logit| {np.abs(b).max():.4g}), "
      f"argmax agree {(a.argmax(-1) == b.argmax(-1)).sum()}/{a.shape[0]}")
PY
if "$PY" -c "import json,sys; sys.exit(0 if 'greedy_prompt' in json.load(open(sys.argv[1])) else 1)" "$PJ"; then
    G="$("$PY" -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['greedy_prompt'])))" "$PJ")"
    echo "llama.cpp greedy ids (32): $("$BIN" greedy "$MODEL" 32 "$G" 2>/dev/null)"
fi
