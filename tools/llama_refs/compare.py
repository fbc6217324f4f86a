"""llama.cpp logits/greedy ids (tests/fixtures/gguf/llama/) vs the transformers references. Prints markdown."""
import json
import os
import sys

import numpy as np

repo = sys.argv[1]
fx = os.path.join(repo, "tests", "fixtures")
llama = os.path.join(fx, "gguf", "llama")
refs = json.load(open(os.path.join(llama, "llama-refs.json")))


def tf_ref(name):
    """(description, {prompt: logits path}, greedy ids) of the transformers reference for a GGUF."""
    if name == "tiny-dense-q8_0.gguf":
        return ("transformers on the same Q8_0-dequantized weights",
                {"short": os.path.join(fx, "gguf", "tiny-dense-q8_0.logits_short.npy")},
                json.load(open(os.path.join(fx, "gguf", "tiny-dense-q8_0.reference.json")))["greedy_ids"])
    if "q4_k_m" in name:
        return ("transformers on the same Q4_K_M-dequantized weights",
                {"short": os.path.join(llama, "tiny-dense-q4_k_m.tf_logits_short.npy")},
                json.load(open(os.path.join(llama, "tiny-dense-q4_k_m.reference.json")))["greedy_ids"])
    model = "tiny-moe-f32" if "moe" in name else "tiny-dense-f32"
    desc = f"transformers f32 `{model}`"
    return (desc,
            {p: os.path.join(fx, model, f"logits_{p}.npy") for p in ("short", "long")},
            json.load(open(os.path.join(fx, model, "reference.json")))["greedy_ids"])


def greedy(ours, ref):
    if ours == ref:
        return "yes (32/32)"
    prefix = next(i for i, (x, y) in enumerate(zip(ours, ref)) if x != y)
    return f"no: first {prefix}/32 agree"


def cmp(a, b):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    top = int((a.argmax(-1) == b.argmax(-1)).sum())
    return d.max(), top, a.shape[0], np.abs(b).max()


print("| GGUF | reference | prompt | max abs Δlogit | ref max abs logit | argmax agree | greedy ids agree |")
print("|---|---|---|---|---|---|---|")
for name, e in refs.items():
    if name.startswith("_"):
        continue
    desc, paths, gids = tf_ref(name)
    first = True
    for p in ("short", "long"):
        key = f"{p}_logits"
        if key not in e or p not in paths:
            continue
        a = np.load(os.path.join(llama, e[key]))
        b = np.load(paths[p])
        assert a.shape == b.shape, (name, p, a.shape, b.shape)
        dmax, top, n, bmax = cmp(a, b)
        g = greedy(e["greedy_ids"], gids) if first else ""
        print(f"| `{name}` | {desc if first else ''} | {p} ({n}) | {dmax:.3g} | {bmax:.3g} | {top}/{n} | {g} |")
        first = False
    if "dequant_f32_short_logits" in e:
        a = np.load(os.path.join(llama, e["dequant_f32_short_logits"]))
        dmax, top, n, bmax = cmp(a, np.load(paths["short"]))
        print(f"| `{name}` dequantized to F32 by `llama-quantize` | (same) | short ({n}) | {dmax:.3g} | {bmax:.3g} | "
              f"{top}/{n} | {greedy(e['dequant_f32_greedy_ids'], gids)} |")

# llama.cpp Q4_K_M vs llama.cpp f32 (same engine, only the weights differ)
q = os.path.join(llama, "tiny-dense-q4_k_m.logits_short.npy")
f = os.path.join(llama, "tiny-dense-f32.logits_short.npy")
if os.path.exists(q) and os.path.exists(f):
    dmax, top, n, _ = cmp(np.load(q), np.load(f))
    gq = refs["llama/tiny-dense-q4_k_m.gguf"]["greedy_ids"]
    gf = refs["tiny-dense-f32.gguf"]["greedy_ids"]
    print()
    print(f"Quantization error for scale, llama.cpp Q4_K_M vs llama.cpp f32 (short): max abs Δlogit {dmax:.3g}, "
          f"argmax agree {top}/{n}, greedy ids: {greedy(gq, gf)}.")
