#!/usr/bin/env python3
"""Independent float64 NumPy re-implementation of the Qwen3.5 text forward pass.

It reads only a fixture's config.json and safetensors files (no transformers) and checks
its logits / greedy ids against the transformers references in reference.json and *.npy.
This pins down the conventions the Rust engine must follow (norm "+1", q_proj per-head
[q|gate] layout, v-head -> k-head grouping, partial NeoX RoPE, MoE routing, ...), since
they are written out here in plain code and agree with transformers to float32 precision.

GDN uses the token-by-token recurrent form only (transformers uses the chunked form for
prefill), so agreement also shows the two forms match.

    python tools/check_fixtures_numpy.py tests/fixtures/tiny-{dense,moe}-*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open


def load_tensors(d: Path) -> dict:
    files = sorted(d.glob("*.safetensors"))
    idx = d / "model.safetensors.index.json"
    if idx.exists():
        files = sorted({d / f for f in json.loads(idx.read_text())["weight_map"].values()})
    out = {}
    for f in files:
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                out[k] = fh.get_tensor(k).to(torch.float64).numpy()
    return out


def silu(x):
    return x / (1.0 + np.exp(-x))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))  # torch threshold=20


class Model:
    def __init__(self, d: Path):
        cfg = json.loads((d / "config.json").read_text())
        self.c = cfg.get("text_config", cfg)
        self.tied = cfg.get("tie_word_embeddings", self.c.get("tie_word_embeddings", False))
        self.w = load_tensors(d)
        self.p = "model.language_model." if "model.language_model.embed_tokens.weight" in self.w else "model."
        c = self.c
        self.eps = c["rms_norm_eps"]
        self.nk, self.nv = c["linear_num_key_heads"], c["linear_num_value_heads"]
        self.dk, self.dv = c["linear_key_head_dim"], c["linear_value_head_dim"]
        self.nh, self.nkv, self.hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        rp = c["rope_parameters"]
        self.rd = int(self.hd * rp["partial_rotary_factor"])
        self.theta = rp["rope_theta"]
        self.msec = rp.get("mrope_section")

    def W(self, name):
        return self.w[self.p + name]

    def zc_norm(self, x, w):  # zero-centred RMSNorm: x / rms * (1 + w)
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * (1.0 + w)

    def mlp(self, x, pre):
        return (silu(x @ self.W(pre + "gate_proj.weight").T) * (x @ self.W(pre + "up_proj.weight").T)) @ self.W(
            pre + "down_proj.weight"
        ).T

    def experts(self, pre):
        if self.p + pre + "experts.gate_up_proj" in self.w:
            gu, dn = self.W(pre + "experts.gate_up_proj"), self.W(pre + "experts.down_proj")
            i = gu.shape[1] // 2
            return [(gu[e, :i], gu[e, i:], dn[e]) for e in range(gu.shape[0])]
        n = self.c["num_experts"]
        return [
            tuple(self.W(f"{pre}experts.{e}.{t}_proj.weight") for t in ("gate", "up", "down")) for e in range(n)
        ]

    def moe(self, x, pre):
        k = self.c["num_experts_per_tok"]
        logits = x @ self.W(pre + "gate.weight").T
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        top = np.argsort(-p, axis=-1, kind="stable")[:, :k]
        ex = self.experts(pre)
        out = np.zeros_like(x)
        for t in range(x.shape[0]):
            wts = p[t, top[t]] / p[t, top[t]].sum()
            for j, e in enumerate(top[t]):
                g, u, dn = ex[e]
                out[t] += wts[j] * ((silu(x[t] @ g.T) * (x[t] @ u.T)) @ dn.T)
        shared = self.mlp(x, pre + "shared_expert.")
        return out + sigmoid(x @ self.W(pre + "shared_expert_gate.weight").T) * shared

    def gdn(self, x, pre):
        T = x.shape[0]
        nk, nv, dk, dv = self.nk, self.nv, self.dk, self.dv
        m = x @ self.W(pre + "in_proj_qkv.weight").T  # [T, 2*nk*dk + nv*dv], rows q | k | v
        z = (x @ self.W(pre + "in_proj_z.weight").T).reshape(T, nv, dv)
        b = x @ self.W(pre + "in_proj_b.weight").T
        a = x @ self.W(pre + "in_proj_a.weight").T
        cw = self.W(pre + "conv1d.weight")[:, 0, :]  # [C, K]; tap K-1 = current token
        K = cw.shape[1]
        mp = np.concatenate([np.zeros((K - 1, m.shape[1])), m], 0)
        m = silu(sum(cw[:, i] * mp[i : i + T] for i in range(K)))
        q = m[:, : nk * dk].reshape(T, nk, dk)
        k = m[:, nk * dk : 2 * nk * dk].reshape(T, nk, dk)
        v = m[:, 2 * nk * dk :].reshape(T, nv, dv)
        beta = sigmoid(b)
        g = -np.exp(self.W(pre + "A_log")) * softplus(a + self.W(pre + "dt_bias"))
        q = q / np.sqrt((q * q).sum(-1, keepdims=True) + 1e-6) / np.sqrt(dk)  # l2norm eps 1e-6 inside sqrt
        k = k / np.sqrt((k * k).sum(-1, keepdims=True) + 1e-6)
        r = nv // nk
        q, k = np.repeat(q, r, axis=1), np.repeat(k, r, axis=1)  # v-head j uses k-head j // r
        S = np.zeros((nv, dk, dv))
        o = np.zeros((T, nv, dv))
        for t in range(T):
            S *= np.exp(g[t])[:, None, None]
            delta = (v[t] - np.einsum("hkv,hk->hv", S, k[t])) * beta[t][:, None]
            S += k[t][:, :, None] * delta[:, None, :]
            o[t] = np.einsum("hkv,hk->hv", S, q[t])
        o = o / np.sqrt((o * o).mean(-1, keepdims=True) + self.eps) * self.W(pre + "norm.weight") * silu(z)
        return o.reshape(T, nv * dv) @ self.W(pre + "out_proj.weight").T

    def attn(self, x, pre):
        T, nh, nkv, hd, rd = x.shape[0], self.nh, self.nkv, self.hd, self.rd
        qg = (x @ self.W(pre + "q_proj.weight").T).reshape(T, nh, 2 * hd)  # per head [q | gate]
        q, gate = qg[..., :hd], qg[..., hd:].reshape(T, nh * hd)
        q = self.zc_norm(q, self.W(pre + "q_norm.weight"))
        k = self.zc_norm((x @ self.W(pre + "k_proj.weight").T).reshape(T, nkv, hd), self.W(pre + "k_norm.weight"))
        v = (x @ self.W(pre + "v_proj.weight").T).reshape(T, nkv, hd)
        inv = self.theta ** (-np.arange(0, rd, 2, dtype=np.float64) / rd)
        ang = np.arange(T, dtype=np.float64)[:, None] * inv[None]  # text: t = h = w = position
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

        def rope(u):
            ur, up = u[..., :rd], u[..., rd:]
            rot = np.concatenate([-ur[..., rd // 2 :], ur[..., : rd // 2]], -1)
            return np.concatenate([ur * cos[:, None] + rot * sin[:, None], up], -1)

        q, k = rope(q), rope(k)
        mask = np.triu(np.full((T, T), -np.inf), 1)
        o = np.zeros((T, nh, hd))
        for h in range(nh):
            kv = h // (nh // nkv)
            s = q[:, h] @ k[:, kv].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            o[:, h] = (s / s.sum(-1, keepdims=True)) @ v[:, kv]
        o = o.reshape(T, nh * hd) * sigmoid(gate)
        return o @ self.W(pre + "o_proj.weight").T

    def forward(self, ids):
        x = self.W("embed_tokens.weight")[ids]
        for l, lt in enumerate(self.c["layer_types"]):
            pre = f"layers.{l}."
            h = self.zc_norm(x, self.W(pre + "input_layernorm.weight"))
            x = x + (self.gdn(h, pre + "linear_attn.") if lt == "linear_attention" else self.attn(h, pre + "self_attn."))
            h = self.zc_norm(x, self.W(pre + "post_attention_layernorm.weight"))
            x = x + (self.moe(h, pre + "mlp.") if "num_experts" in self.c else self.mlp(h, pre + "mlp."))
        x = self.zc_norm(x, self.W("norm.weight"))
        head = self.W("embed_tokens.weight") if self.tied else self.w["lm_head.weight"]
        return x @ head.T


def check(d: Path) -> bool:
    ref = json.loads((d / "reference.json").read_text())
    m = Model(d)
    ok = True
    for name, key in (("short", "short_prompt"), ("long", "long_prompt")):
        f = d / f"logits_{name}.npy"
        if not f.exists():
            continue
        hf = np.load(f).astype(np.float64)
        ours = m.forward(np.array(ref[key]))
        err = np.abs(ours - hf).max()
        good = err < 2e-3 and (ours.argmax(-1) == hf.argmax(-1)).all()
        ok &= bool(good)
        print(f"{d.name}: logits_{name} max|f64 - hf| = {err:.2e} (|logits| max {np.abs(hf).max():.1f}) {'OK' if good else 'FAIL'}")
    seq = list(ref["greedy_prompt"])
    ids = []
    for _ in range(len(ref["greedy_ids"])):
        nxt = int(m.forward(np.array(seq))[-1].argmax())
        ids.append(nxt)
        seq.append(nxt)
    good = ids == ref["greedy_ids"]
    ok &= good
    print(f"{d.name}: greedy ids {'match' if good else 'MISMATCH ' + str(ids)}")
    return ok


if __name__ == "__main__":
    results = [check(Path(p)) for p in sys.argv[1:]]
    sys.exit(0 if results and all(results) else 1)
