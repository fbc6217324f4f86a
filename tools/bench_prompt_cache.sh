#!/usr/bin/env bash
# Time to first token of turn 10 of an agent-like conversation (8K tokens of history) with the
# prompt cache on and off, on a random-weight model of Qwen3.5-0.8B's shape (no download).
# Prints the per-turn table (prompt, cached and processed tokens, prefill time) and the TTFT
# of the measured turn. Figures are in docs/PROMPT_CACHE.md.
#
# usage: tools/bench_prompt_cache.sh [--shape 0.8b|demo] [--history 8192] [--turns 10] [--answer 16]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p qinfer-engine --example prompt_cache_ttft
exec target/release/examples/prompt_cache_ttft "$@"
