#!/usr/bin/env bash
# Builds qinfer's built-in demo model from tools/train_demo.py's output and its reference.
#
#   tools/make_demo_model.sh OUT          # OUT: train_demo.py's --out directory
#
# 1. `qinfer quantize --type q8_0` of OUT/hf (weights, config, MTP head, draft vocabulary; the
#    tokenizer and template stay out: the binary carries them once already), gzipped into
#    assets/demo/qinfer-demo-q8_0.gguf.gz;
# 2. tools/demo_reference.py: transformers on exactly those (dequantized) weights computes the
#    held-out perplexity and a greedy answer, written to assets/demo/reference.json for the
#    tests (crates/engine/tests/demo.rs).
# Needs a built qinfer (cargo build --release) and tools/requirements.txt's environment with
# gguf (tools/requirements-gguf.txt).
set -euo pipefail
out=${1:?usage: tools/make_demo_model.sh OUT}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
qinfer=${QINFER:-$root/target/release/qinfer}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/hf" "$root/assets/demo"
for f in config.json generation_config.json model.safetensors; do
    ln -s "$(cd "$out/hf" && pwd)/$f" "$work/hf/$f"
done
cp "$out/draft_vocab.json" "$work/hf/"
"$qinfer" quantize "$work/hf" "$work/demo.gguf" --type q8_0
gzip -9 -n -c "$work/demo.gguf" > "$root/assets/demo/qinfer-demo-q8_0.gguf.gz"
ls -l "$work/demo.gguf" "$root/assets/demo/qinfer-demo-q8_0.gguf.gz"
(cd "$root/tools" && "$py" demo_reference.py "$work/demo.gguf" "$out" "$root/assets/demo/reference.json")
