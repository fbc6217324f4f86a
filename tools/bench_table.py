#!/usr/bin/env python3
"""Markdown table from a tools/bench_vs_llama_cpp.sh results directory (stdlib only).

usage: bench_table.py RESULTS_DIR
"""
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows = []
for q in sorted(out.glob("qinfer-*.json")):
    stem = q.name[len("qinfer-"):-len(".json")]
    qi = json.loads(q.read_text())
    ll_path = out / f"llama-{stem}.json"
    ll = json.loads(ll_path.read_text()) if ll_path.exists() else []
    lpp = next((r for r in ll if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0), None)
    ltg = next((r for r in ll if r.get("n_gen", 0) > 0 and r.get("n_prompt", 0) == 0), None)
    rows.append((stem, qi, lpp, ltg))

print("| model | file GB | test | qinfer t/s | llama.cpp t/s | ratio | best qinfer / best llama.cpp | qinfer GB/s (share of limit) |")
print("|---|---|---|---|---|---|---|---|")
for stem, qi, lpp, ltg in rows:
    size = qi["file_bytes"] / 1e9
    for name, samples, mean, std, theirs in (
        (f"pp{qi['n_prompt']}", qi["pp_samples"], qi["pp_tok_s"], qi["pp_tok_s_std"], lpp),
        (f"tg{qi['n_gen']}", qi["tg_samples"], qi["tg_tok_s"], qi["tg_tok_s_std"], ltg),
    ):
        ref = f"{theirs['avg_ts']:.2f} ± {theirs['stddev_ts']:.2f}" if theirs else "n/a"
        ratio = f"{mean / theirs['avg_ts']:.2f}×" if theirs else "n/a"
        best = (
            f"{max(samples):.1f} / {max(theirs['samples_ts']):.1f} = {max(samples) / max(theirs['samples_ts']):.2f}×"
            if theirs and samples
            else "n/a"
        )
        bw = (
            f"{qi['tg_bandwidth_gb_s']:.1f} ({qi['bandwidth_share'] * 100:.0f}%)"
            if name.startswith("tg")
            else ""
        )
        print(f"| {stem} | {size:.2f} | {name} | {mean:.2f} ± {std:.2f} | {ref} | {ratio} | {best} | {bw} |")
print()
print("| model | decode bytes/token (MB) | sync points/token | load s | peak RSS GB |")
print("|---|---|---|---|---|")
for stem, qi, _, _ in rows:
    rss = qi.get("peak_rss_bytes") or 0
    print(
        f"| {stem} | {qi['bytes_per_token'] / 1e6:.1f} | {qi['sync_points_per_token']:.0f} | "
        f"{qi['load_s']:.2f} | {rss / 1e9:.2f} |"
    )
