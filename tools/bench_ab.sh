#!/usr/bin/env bash
# A/B of two qinfer builds on one model file, alternating in ABBA order (which side runs first
# in a round was seen to matter by a few per cent on a busy host), in one run: pp and tg
# medians of each and their ratio (B / A). For "no speed regression against the previous
# commit".
#
# usage: tools/bench_ab.sh A_BIN B_BIN MODEL [ROUNDS]
#   environment: PP (512), TG (128), REPS (3), THREADS (2), A_ARGS, B_ARGS (extra bench flags,
#   e.g. B_ARGS="--kv-type f32" to compare a build whose defaults differ)
set -euo pipefail
A=$1 B=$2 MODEL=$3 ROUNDS=${4:-3}
PP=${PP:-512} TG=${TG:-128} REPS=${REPS:-3} THREADS=${THREADS:-2}
out=$(mktemp)
for r in $(seq "$ROUNDS"); do
    order="A B"
    [ $((r % 2)) -eq 0 ] && order="B A"
    for side in $order; do
        bin=${!side}; args_var=${side}_ARGS
        # --bandwidth skips the probe (not compared here).
        # shellcheck disable=SC2086
        "$bin" bench "$MODEL" -p "$PP" -n "$TG" -r "$REPS" --threads "$THREADS" --bandwidth 50 \
            --json ${!args_var:-} 2>/dev/null | sed "s/^/$side /" >>"$out"
    done
done
python3 - "$out" <<'PY'
import json, statistics, sys
runs = {"A": [], "B": []}
for line in open(sys.argv[1]):
    side, js = line.split(" ", 1)
    runs[side].append(json.loads(js))
def med(side, key):
    return statistics.median(s for r in runs[side] for s in r[key.replace("tok_s", "samples")])
for key in ("pp_tok_s", "tg_tok_s"):
    if not all(r[key.replace("tok_s", "samples")] for side in runs for r in runs[side]):
        continue  # that test was skipped (-p 0 or -n 0)
    a, b = med("A", key), med("B", key)
    print(f"{key[:2]}: A {a:8.1f}  B {b:8.1f} tok/s   B/A {b / a:.3f}   (medians of {sum(len(r[key.replace('tok_s','samples')]) for r in runs['A'])} samples each)")
PY
rm -f "$out"
