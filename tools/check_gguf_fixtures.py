#!/usr/bin/env python3
"""Check tests/fixtures/gguf/*.gguf (llama.cpp's converter) against the HF safetensors they came from.

Prints what it verified (README "Verified facts" section quotes this output) and exits non-zero on any
mismatch. Needs numpy, safetensors and the `gguf` package (gguf-py from the same llama.cpp, passed with
--gguf-py, or PyPI gguf==0.19.0).

    python tools/check_gguf_fixtures.py --gguf-py /work/llama-src/llama_cpp_python-0.3.36/vendor/llama.cpp/gguf-py
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--gguf-py", default=None)
args = ap.parse_args()
if args.gguf_py:
    sys.path.insert(0, args.gguf_py)
import gguf  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIX = REPO / "tests/fixtures"
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL", msg)


def eq(a, b, msg):
    check(a.shape == b.shape and np.array_equal(a, b), f"{msg}: shapes {a.shape} vs {b.shape}, "
          f"max diff {np.abs(a - b).max() if a.shape == b.shape else 'n/a'}")


def read_gguf(path):
    r = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    t = {}
    for x in r.tensors:
        if x.tensor_type == gguf.GGMLQuantizationType.F32:
            a = np.array(x.data, dtype=np.float32)
        else:
            a = gguf.quants.dequantize(x.data, x.tensor_type)
        # numpy shape is the reverse of ggml ne, i.e. the HF [out, in] order
        t[x.name] = (a.reshape([int(d) for d in reversed(x.shape)]), x.tensor_type.name, [int(d) for d in x.shape])
    return kv, t


def head_perm(g, h, nheads, axis, rtol=0.0):
    """Which HF head each GGUF head block holds (blocks split along `axis`).
    rtol 0: bit-exact match required; else the closest block, within rtol * max|h|."""
    gb = np.split(g, nheads, axis=axis)
    hb = np.split(h, nheads, axis=axis)
    tol = rtol * float(np.abs(h).max())
    perm = []
    for b in gb:
        m = [j for j, c in enumerate(hb) if np.abs(b - c).max() <= tol]
        check(len(m) == 1, "head block matched %d HF heads" % len(m))
        perm.append(m[0] if len(m) == 1 else -1)
    return perm


def check_model(name, gpath, hf_prefix, mtp, quant=False):
    cfg = json.loads((FIX / name / "config.json").read_text())
    tc = cfg.get("text_config", cfg)
    hf = load_file(FIX / name / "model.safetensors")
    kv, gt = read_gguf(gpath)
    arch = kv["general.architecture"]
    used = set()
    print(f"\n== {gpath.relative_to(REPO)} ({arch}, {len(gt)} tensors) vs tests/fixtures/{name}")

    def H(n):
        used.add(n)
        return hf[n]

    def G(n):
        return gt[n][0]

    cmp = (lambda a, b, m: check(a.shape == b.shape and np.abs(a - b).max() <= 0.01 * np.abs(b).max() + 1e-6, m)) if quant else eq

    def R(gname):  # tolerance: exact for tensors stored as F32, 1% of max|w| for quantized ones
        return 0.01 if gt[gname][1] != "F32" else 0.0
    nk, nv = tc["linear_num_key_heads"], tc["linear_num_value_heads"]
    dk, dv = tc["linear_key_head_dim"], tc["linear_value_head_dim"]
    r = nv // nk
    expect = [k * r + i for i in range(r) for k in range(nk)]  # tiled position i*nk+k holds grouped head k*r+i
    L = tc["num_hidden_layers"]
    perms = {}
    ssm_a_maxrel = []
    for i in range(L):
        p = f"{hf_prefix}layers.{i}."
        b = f"blk.{i}."
        cmp(G(b + "attn_norm.weight"), H(p + "input_layernorm.weight") + 1, f"{b}attn_norm = input_layernorm + 1")
        cmp(G(b + "post_attention_norm.weight"), H(p + "post_attention_layernorm.weight") + 1,
            f"{b}post_attention_norm = post_attention_layernorm + 1")
        if tc["layer_types"][i] == "linear_attention":
            a = p + "linear_attn."
            eq(G(b + "ssm_norm.weight"), H(a + "norm.weight"), f"{b}ssm_norm = linear_attn.norm (no +1)")
            hq = H(a + "in_proj_qkv.weight")
            gq = G(b + "attn_qkv.weight")
            qk = 2 * nk * dk
            cmp(gq[:qk], hq[:qk], f"{b}attn_qkv q,k rows unchanged")
            perms.setdefault("attn_qkv V rows", []).append(head_perm(gq[qk:], hq[qk:], nv, 0, rtol=R(b + "attn_qkv.weight")))
            perms.setdefault("attn_gate rows", []).append(head_perm(G(b + "attn_gate.weight"), H(a + "in_proj_z.weight"), nv, 0, rtol=R(b + "attn_gate.weight")))
            perms.setdefault("ssm_alpha rows", []).append(head_perm(G(b + "ssm_alpha.weight"), H(a + "in_proj_a.weight"), nv, 0, rtol=R(b + "ssm_alpha.weight")))
            perms.setdefault("ssm_beta rows", []).append(head_perm(G(b + "ssm_beta.weight"), H(a + "in_proj_b.weight"), nv, 0, rtol=R(b + "ssm_beta.weight")))
            perms.setdefault("ssm_dt.bias", []).append(head_perm(G(b + "ssm_dt.bias"), H(a + "dt_bias"), nv, 0, rtol=R(b + "ssm_dt.bias")))
            ssm_a_ref = -np.exp(H(a + "A_log").astype(np.float64)).astype(np.float32)
            ga = G(b + "ssm_a")
            check(np.allclose(ga, ssm_a_ref[expect], rtol=1e-6, atol=0), f"{b}ssm_a = -exp(A_log)[perm]")
            ssm_a_maxrel.append(float(np.abs(ga / ssm_a_ref[expect] - 1).max()))
            perms.setdefault("ssm_a (vs -exp(A_log))", []).append(head_perm(ga, ssm_a_ref, nv, 0, rtol=1e-6))
            hc = H(a + "conv1d.weight")  # [C, 1, K]
            gc = G(b + "ssm_conv1d.weight")  # numpy [C, K] = ggml ne [K, C]
            check(gt[b + "ssm_conv1d.weight"][2] == [hc.shape[2], hc.shape[0]], f"{b}ssm_conv1d ne = [K, C]")
            eq(gc[:qk], hc[:qk, 0, :], f"{b}ssm_conv1d q,k channels unchanged")
            perms.setdefault("ssm_conv1d V channels", []).append(head_perm(gc[qk:], hc[qk:, 0, :], nv, 0, rtol=R(b + "ssm_conv1d.weight")))
            perms.setdefault("ssm_out COLUMNS", []).append(head_perm(G(b + "ssm_out.weight"), H(a + "out_proj.weight"), nv, 1, rtol=R(b + "ssm_out.weight")))
            check(ga.dtype == np.float32 and gt[b + "ssm_conv1d.weight"][1] == "F32", "ssm_a/conv1d F32")
        else:
            s = p + "self_attn."
            for g_, h_ in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
                cmp(G(b + g_ + ".weight"), H(s + h_ + ".weight"), f"{b}{g_} = {h_}")
            cmp(G(b + "attn_q_norm.weight"), H(s + "q_norm.weight") + 1, f"{b}attn_q_norm = q_norm + 1")
            cmp(G(b + "attn_k_norm.weight"), H(s + "k_norm.weight") + 1, f"{b}attn_k_norm = k_norm + 1")
        m = p + "mlp."
        if "num_experts" in tc:
            E, I = tc["num_experts"], tc["moe_intermediate_size"]
            gu = H(m + "experts.gate_up_proj")  # [E, 2I, H]
            dn = H(m + "experts.down_proj")     # [E, H, I]
            cmp(G(b + "ffn_gate_exps.weight"), gu[:, :I, :], f"{b}ffn_gate_exps = gate_up_proj[:, :I, :]")
            cmp(G(b + "ffn_up_exps.weight"), gu[:, I:, :], f"{b}ffn_up_exps = gate_up_proj[:, I:, :]")
            cmp(G(b + "ffn_down_exps.weight"), dn, f"{b}ffn_down_exps = down_proj")
            cmp(G(b + "ffn_gate_inp.weight"), H(m + "gate.weight"), f"{b}ffn_gate_inp = mlp.gate")
            for g_, h_ in (("ffn_gate_shexp", "gate_proj"), ("ffn_up_shexp", "up_proj"), ("ffn_down_shexp", "down_proj")):
                cmp(G(b + g_ + ".weight"), H(m + "shared_expert." + h_ + ".weight"), f"{b}{g_}")
            cmp(G(b + "ffn_gate_inp_shexp.weight"), H(m + "shared_expert_gate.weight"), f"{b}ffn_gate_inp_shexp")
            check(b + "ffn_gate_up_exps.weight" not in gt, "no fused ffn_gate_up_exps")
        else:
            for g_, h_ in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")):
                cmp(G(b + g_ + ".weight"), H(m + h_ + ".weight"), f"{b}{g_}")
    cmp(G("token_embd.weight"), H(hf_prefix + "embed_tokens.weight"), "token_embd")
    cmp(G("output_norm.weight"), H(hf_prefix + "norm.weight") + 1, "output_norm = norm + 1")
    if "lm_head.weight" in hf:
        cmp(G("output.weight"), H("lm_head.weight"), "output = lm_head")
    else:
        check("output.weight" not in gt, "tied model has no output.weight")
    if mtp:
        b = f"blk.{L}."
        cmp(G(b + "nextn.eh_proj.weight"), H("mtp.fc.weight"), "nextn.eh_proj = mtp.fc")
        for g_, h_ in (("nextn.enorm", "pre_fc_norm_embedding"), ("nextn.hnorm", "pre_fc_norm_hidden"),
                       ("nextn.shared_head_norm", "norm")):
            cmp(G(b + g_ + ".weight"), H("mtp." + h_ + ".weight") + 1, f"{b}{g_} = mtp.{h_} + 1")
        p = "mtp.layers.0."
        cmp(G(b + "attn_norm.weight"), H(p + "input_layernorm.weight") + 1, "mtp attn_norm + 1")
        cmp(G(b + "post_attention_norm.weight"), H(p + "post_attention_layernorm.weight") + 1, "mtp post_attention_norm + 1")
        for g_, h_ in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
            cmp(G(b + g_ + ".weight"), H(p + "self_attn." + h_ + ".weight"), f"mtp {g_}")
        cmp(G(b + "attn_q_norm.weight"), H(p + "self_attn.q_norm.weight") + 1, "mtp q_norm + 1")
        cmp(G(b + "attn_k_norm.weight"), H(p + "self_attn.k_norm.weight") + 1, "mtp k_norm + 1")
        for g_, h_ in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")):
            cmp(G(b + g_ + ".weight"), H(p + "mlp." + h_ + ".weight"), f"mtp {g_}")
    unused = sorted(set(hf) - used)
    vis = [n for n in unused if n.startswith("model.visual.")]
    check(len(unused) == len(vis), f"HF tensors not in the GGUF (besides vision): {[n for n in unused if n not in vis]}")
    check(not any(n.startswith(("v.", "mm.")) for n in gt), "no vision tensors in the GGUF")
    print(f"  all {len(used)} text{'+MTP' if mtp else ''} HF tensors matched"
          f"{' (Q8_0 dequantized, within 1% of max|w|)' if quant else ' bit-exactly (after the transforms below)'}; "
          f"{len(vis)} model.visual.* tensors are not in the GGUF")
    for k, v in perms.items():
        ok = all(x == expect for x in v)
        check(ok, f"{k} permutation {v} != {expect}")
        print(f"  {k}: GGUF head j holds HF head {v[0]} in all {len(v)} linear layers" + ("" if ok else f" (NOT UNIFORM: {v})"))
    print(f"  ssm_a vs -exp(A_log) (float64 exp, rounded to f32), after the permutation: max rel diff {max(ssm_a_maxrel):.2e}")
    print(f"  expected tiled order (nk={nk}, r={r}): GGUF head i*nk+k = HF head k*r+i -> {expect}")
    return kv, gt


check_model("tiny-dense-f32", FIX / "gguf/tiny-dense-f32.gguf", "model.language_model.", mtp=True)
check_model("tiny-moe-f32", FIX / "gguf/tiny-moe-f32.gguf", "model.", mtp=False)
check_model("tiny-dense-f32", FIX / "gguf/tiny-dense-q8_0.gguf", "model.language_model.", mtp=True, quant=True)

# split == unsplit
_, whole = read_gguf(FIX / "gguf/tiny-dense-f32.gguf")
parts = sorted((FIX / "gguf/split").glob("*.gguf"))
merged = {}
for pth in parts:
    kv, t = read_gguf(pth)
    merged.update(t)
    print(f"\n== {pth.relative_to(REPO)}: {len(t)} tensors, split.no={kv.get('split.no')}, "
          f"split.count={kv.get('split.count')}, split.tensors.count={kv.get('split.tensors.count')}, "
          f"has tokenizer: {'tokenizer.ggml.tokens' in kv}")
check(set(merged) == set(whole) and all(np.array_equal(merged[n][0], whole[n][0]) for n in whole),
      "split parts == unsplit file")
print(f"  split parts together == tiny-dense-f32.gguf ({len(merged)} tensors)")

if failures:
    print(f"\n{len(failures)} FAILURES")
    sys.exit(1)
print("\nALL CHECKS PASSED")
