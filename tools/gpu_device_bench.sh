#!/usr/bin/env bash
# The GPU backend's speed figures (issue 18) on a lent NVIDIA machine, in one run.
#
# Prepare here (this machine), then run through the `device` tool:
#   cargo build --release -p qinfer-cli
#   mkdir -p .bin && cp target/release/qinfer .bin/ && strip .bin/qinfer   # ~37 MB
#   echo /.bin/ >> .git/info/exclude
#   # the Vulkan loader, as the device README says (into .gl, also excluded)
#   device run: command "bash tools/gpu_device_bench.sh", carry [".gl", ".bin"], timeout 600
#
# There: unpacks the loader, lists the adapters, writes random-weight Q4_K_M GGUFs with the
# real shapes (tools/make_random_gguf.py: numpy only) of Qwen3.5-0.8B and Qwen3.6-27B, and
# runs `qinfer bench` on the GPU (and the 0.8B on the CPU, for the ratio), each as JSON into
# $OUT. tg128 as a share of bandwidth is `bandwidth_share` (the GPU's read bandwidth measured
# by `Gpu::read_bandwidth_gb_s`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-bench-out}
mkdir -p "$OUT"

for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
Q=.bin/qinfer
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true
$Q inspect --devices | tee -a "$OUT/gpu.txt"

M=/tmp/models
mkdir -p $M
python3 tools/make_random_gguf.py --shape 0.8b $M/0.8b-q4_k_m.gguf
$Q bench $M/0.8b-q4_k_m.gguf --device gpu -p 512 -n 128 -r 3 --json >"$OUT/0.8b-gpu.json"
$Q bench $M/0.8b-q4_k_m.gguf --device cpu -p 512 -n 128 -r 3 --json >"$OUT/0.8b-cpu.json"
rm -f $M/0.8b-q4_k_m.gguf
python3 tools/make_random_gguf.py --shape 27b $M/27b-q4_k_m.gguf
$Q bench $M/27b-q4_k_m.gguf --device gpu -p 512 -n 128 -r 3 --json >"$OUT/27b-gpu.json"
python3 - "$OUT" <<'EOF'
import json, sys, os
out = sys.argv[1]
for name in ["0.8b-gpu", "0.8b-cpu", "27b-gpu"]:
    p = os.path.join(out, name + ".json")
    if os.path.exists(p):
        v = json.load(open(p))
        print(f"{name}: {v['device']}: pp512 {v['pp_tok_s']:.1f} tok/s, tg128 {v['tg_tok_s']:.1f} tok/s, "
              f"{v['tg_bandwidth_gb_s']:.0f} GB/s = {100 * v['bandwidth_share']:.0f}% of {v['bandwidth_limit_gb_s']:.0f} GB/s")
EOF
