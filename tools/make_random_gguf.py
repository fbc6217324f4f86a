#!/usr/bin/env python3
"""A random-weight Qwen3.5 / Qwen3.6 GGUF in llama.cpp's Q4_K_M type mix, written directly.

For decode-speed measurements (bytes read per token against memory bandwidth): every tensor has
the name, shape and GGML type that llama.cpp's `convert_hf_to_gguf.py` followed by
`llama-quantize … Q4_K_M` would give the real model, but the blocks hold random quants, so the
text is meaningless. No intermediate checkpoint is made (the 27B in BF16 would be 54 GB): the
GGUF container (header, metadata, tensor infos, 32-byte alignment, data) is written here, tensor
by tensor in chunks of ~64 MB of blocks, so memory stays small and 16.5 GB take a few minutes.
Needs only Python 3 and numpy (no `gguf` package).

usage:
    python3 tools/make_random_gguf.py --shape 27b OUT.gguf              # the full 27B (~16.5 GB)
    python3 tools/make_random_gguf.py --shape 27b --layers 4 OUT.gguf   # its first 4 layers only
    python3 tools/make_random_gguf.py --shape 0.8b OUT.gguf             # 0.8B (~0.5 GB)
    python3 tools/make_random_gguf.py --shape 35b-a3b OUT.gguf          # 35B-A3B, 8 layers (~4.8 GB)
    python3 tools/make_random_gguf.py --shape 27b --dry-run [--list]    # sizes (and tensors) only
    # self-check of the type rules against llama.cpp's own output (tensor table only):
    python3 tools/make_random_gguf.py --shape tiny --dry-run \
        --compare tests/fixtures/gguf/llama/tiny-dense-q4_k_m.gguf

options: --seed N (random data, default 0), --mtp N (MTP blocks, see below), --layers N,
--no-tokenizer (omit the vocabulary; qinfer then cannot tokenize text, `bench` still runs),
--tokenizer DIR (default assets/qwen3.5-tokenizer), --force (write even if the disk looks full),
--compare FILE (compare the tensor table — names, shapes, types — with another GGUF).
Before writing it prints the exact file size and the weight bytes one decode step reads (every
tensor except `token_embd`, plus one `token_embd` row; a tied `token_embd` is read whole as the
LM head; of an MoE layer's 3-D expert tensors only the experts a token uses, top_k/E of each
(the router `ffn_gate_inp` and the shared expert are read whole); the MTP block is not counted),
and checks the written size at the end.

Sizes (--dry-run prints them): 27b 16,547,403,200 bytes (16.55 GB), decode reads 15,821,247,296
bytes of weights per token (15.82 GB); with --mtp 1 16,810,717,568 bytes; --layers 4 2.76 GB
(2.03 GB per token: the untied LM head and embedding dominate); 4b 2.71 GB (2.70 GB per token);
0.8b 0.53 GB (0.52 GB per token); 35b-a3b 4,801,466,368 bytes (4.80 GB; the routed experts
3.90 GB of it), decode reads 725,640,832 bytes per token (0.73 GB: 8 of 256 experts = 0.12 GB
and the shared one per layer, the Q6_K LM head 0.42 GB). `qinfer bench` reports the same
per-token weight bytes. A file with MTP blocks makes `qinfer bench` draft with them by default:
pass `--draft none` for plain decode (random MTP weights never get a draft accepted).

Shapes (`--shape`; hidden, layers, heads/kv heads (head_dim 256), DeltaNet key/value heads (dims
128), FFN, tied embeddings): `0.8b` and `4b` are tools/make_bench_models.py's (1024, 24, 8/2,
16/16, 3584, tied; 2560, 32, 16/4, 16/32, 9216, tied), `27b` is Qwen3.6-27B (5120, 64, 24/4,
16/48, 17408, untied), `35b-a3b` is make_bench_models.py's `35b-a3b`: the Qwen3.5-35B-A3B's
layer shapes at 8 of its 40 layers (2048, 8, 16/2, 16/32, untied; MoE: 256 routed experts of FFN
512, top 8, plus one shared expert of 512 with its sigmoid gate), all with vocab 248320, conv
kernel 4, every 4th layer full attention (gated), rms_norm_eps 1e-6, rope_theta 1e7, partial
rotary 0.25 (64 dims), mrope_section [11, 11, 10], context 262144. `tiny` is
tests/fixtures/tiny-dense-f32's config (the fixture that llama.cpp converted and quantized), only
for `--compare`.
`--mtp N` adds N multi-token-prediction blocks the way the current converter writes them
(`blk.{L}` with `nextn.eh_proj`/`enorm`/`hnorm`/`shared_head_norm` and a full-attention layer,
`nextn_predict_layers = N`, `block_count = L + N`). Default: 0, as the configs above (and
make_bench_models.py's checkpoints, which this converter only takes with `--no-mtp`) have none;
the released Qwen3.6-27B has one MTP layer, so `--mtp 1` is what converting the real release gives
(≈0.27 GB more; not read by plain decode). `tiny` defaults to 1, as its fixture has it.
`--layers N` writes the first N decoder layers (block_count N + MTP) with the types those layers
have in the full model (so the file is a prefix of the full one, layer for layer; llama-quantize
run on an N-layer model would pick the "more bits" layers relative to N instead).

Tensors and metadata (checked against tests/fixtures/gguf/llama/tiny-dense-q4_k_m.gguf): the
converter's `qwen35` names and GGML shapes (ne0 first) — `token_embd [H, V]`, `output [H, V]`
(untied only), `output_norm [H]`; per DeltaNet layer `attn_norm [H]`, `attn_qkv [H, 2·Nk·Dk +
Nv·Dv]`, `attn_gate [H, Nv·Dv]`, `ssm_alpha`/`ssm_beta [H, Nv]`, `ssm_conv1d [K, 2·Nk·Dk +
Nv·Dv]`, `ssm_dt.bias [Nv]`, `ssm_a [Nv]`, `ssm_norm [Dv]`, `ssm_out [Nv·Dv, H]`; per attention
layer `attn_q [H, 2·heads·D]` (query + gate), `attn_k`/`attn_v [H, kv·D]`, `attn_output [heads·D,
H]`, `attn_q_norm`/`attn_k_norm [D]`; every layer `post_attention_norm [H]`, `ffn_gate`/`ffn_up
[H, F]`, `ffn_down [F, H]`; in an MoE model (`qwen35moe`, E experts) instead of these three:
`ffn_gate_inp [H, E]` (router), `ffn_gate_exps`/`ffn_up_exps [H, F, E]` and `ffn_down_exps [F, H,
E]` (the experts stacked: expert e's rows are the e-th contiguous run of blocks, as the converter
stacks HF's `experts.gate_up_proj` / `down_proj`), `ffn_gate_shexp`/`ffn_up_shexp [H, F]`,
`ffn_down_shexp [F, H]`, `ffn_gate_inp_shexp [H]` (the converter writes [H, 1], llama-quantize
writes ggml_n_dims dims: 1-D). Tensors are in llama-quantize's output order (non-layer tensors by
name, then layer by layer, each layer's by name). Metadata: the fixture's keys in its order
(general.*, qwen35.* incl. `attention.recurrent_layers`, tokenizer.* from the real Qwen3.5
vocabulary as the converter writes it, `general.file_type` 15, `quantization_version` 2). MoE
(names, shapes and key order checked against tests/fixtures/gguf/tiny-moe-f32.gguf, the
converter's qwen35moe output): `qwen35moe.*`, no `feed_forward_length` (the config has no
`intermediate_size`), `expert_count`/`expert_used_count` after the rms epsilon,
`expert_feed_forward_length`/`expert_shared_feed_forward_length` after `value_length`;
`general.size_label` "256x1.3B" (gguf-py: E x (shared + one expert's parameters)).

Q4_K_M types: llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp, as in llama-cpp-python
0.3.36's vendored llama.cpp, and as the fixture shows):
  * not quantized: 1-D tensors and `*_norm.weight` (F32), `ssm_conv1d` (F32, as converted),
    the routers `ffn_gate_inp` and `ffn_gate_inp_shexp` (F32: the converter forces both, and
    llama-quantize skips `ffn_gate_inp.weight`);
  * `output` Q6_K; `token_embd` Q4_K, or Q6_K when tied (no `output`: it is the LM head);
  * "attn_v-like" = `attn_v` and `attn_qkv` (the DeltaNet input counts as one, one per layer):
    Q6_K where use_more_bits(i, n) else Q4_K; `ffn_down`: Q6_K where use_more_bits(i, n) else
    Q4_K — use_more_bits(i, n) = i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2, i the layer
    (tensors are counted in file order, one per layer), n = block_count incl. MTP; with experts
    (n_expert > 1) i is the layer parsed from the name, and every tensor with `ffn_down` in its
    name counts: `ffn_down_exps` and `ffn_down_shexp` of a layer get the same type;
  * everything else (`attn_q`, `attn_k`, `attn_output`, `attn_gate`, `ssm_alpha`, `ssm_beta`,
    `ssm_out`, `ffn_gate`, `ffn_up`, `ffn_gate_exps`, `ffn_up_exps`, `ffn_gate_shexp`,
    `ffn_up_shexp`, `nextn.eh_proj`) Q4_K (llama.cpp's bumps for models of exactly 8 experts —
    attn_v-like and `attn_k` Q8_0, `attn_output` Q5_K — do not apply to 256);
  * rows not a whole number of 256-blocks fall back: Q4_K → Q5_0, Q6_K → Q8_0 (then F16);
    `output`/tied `token_embd` go to Q8_0 then (only `tiny` needs this).
(qinfer's own `qinfer quantize --type Q4_K_M` differs from this: `attn_qkv` always Q5_K,
`ssm_alpha`/`ssm_beta` Q8_0, a tied `token_embd` Q4_K.)

Block contents (layouts as crates/quant/src/*.rs): random quant bytes with the scales fixed so
weights are about zero-mean with std 0.020-0.026 (like a 0.02 init) and every value is finite:
Q4_K (144 B/256: f16 d, f16 dmin, 12 scale bytes, 128 quant bytes) d = 1e-4, dmin = 7.5e-4
(= d · mean quant), random 6-bit scales/mins; Q6_K (210 B/256: 128 ql, 64 qh, 16 int8 scales,
f16 d) scales in −16..15, d = 1.2e-4; Q8_0 (34 B/32) d = 2.7e-4; Q5_0 (22 B/32) d = 2.2e-3; F16
normal · 0.02. F32: norms 1.0 (the converter stores RMSNorm weights with the +1 folded in),
`ssm_a` = −uniform(1, 16) (= −exp(A_log)), `ssm_dt.bias` 1.0, `ssm_conv1d` normal · 0.1, the
routers normal · 0.02. The 3-D expert tensors are written the same way, block after block.
"""

import argparse
import gzip
import json
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ALIGN = 32
CHUNK = 64 << 20  # bytes of blocks generated and written at a time

# hidden, layers, heads, kv heads, DeltaNet key heads, value heads, FFN (MoE: one expert's and the
# shared expert's), tied embeddings
SHAPES = {
    "0.8b": (1024, 24, 8, 2, 16, 16, 3584, True),
    "4b": (2560, 32, 16, 4, 16, 32, 9216, True),
    "27b": (5120, 64, 24, 4, 16, 48, 17408, False),
    "35b-a3b": (2048, 8, 16, 2, 16, 32, 512, False),
    "tiny": (64, 8, 4, 2, 2, 4, 128, False),
}
# MoE shapes: routed experts, experts per token.
MOE = {"35b-a3b": (256, 8)}
NAMES = {"0.8b": "Qwen3.5 0.8B", "4b": "Qwen3.5 4B", "27b": "Qwen3.6 27B", "35b-a3b": "Qwen3.5 35B-A3B",
         "tiny": "Tiny Dense"}


def config(shape: str) -> dict:
    hidden, layers, heads, kv, nk, nv, ffn, tied = SHAPES[shape]
    experts, top_k = MOE.get(shape, (0, 0))
    tiny = shape == "tiny"
    return {
        "hidden": hidden, "layers": layers, "heads": heads, "kv": kv, "head_dim": 32 if tiny else 256,
        "nk": nk, "nv": nv, "dk": 16 if tiny else 128, "dv": 16 if tiny else 128, "conv_kernel": 4,
        "ffn": ffn, "tied": tied, "vocab": 320 if tiny else 248320, "eps": 1e-6, "theta": 1e7,
        "partial_rotary": 0.25, "sections": [2, 1, 1] if tiny else [11, 11, 10],
        "context": 4096 if tiny else 262144, "interval": 4, "mtp": 1 if tiny else 0,
        "experts": experts, "top_k": top_k,
    }


# ---- GGML types -------------------------------------------------------------------------------

F32, F16, Q5_0, Q8_0, Q4_K, Q6_K = "F32", "F16", "Q5_0", "Q8_0", "Q4_K", "Q6_K"
TYPE_ID = {F32: 0, F16: 1, Q5_0: 6, Q8_0: 8, Q4_K: 12, Q6_K: 14}
TYPE_NAME = {v: k for k, v in TYPE_ID.items()} | {2: "Q4_0", 3: "Q4_1", 7: "Q5_1", 10: "Q2_K",
                                                  11: "Q3_K", 13: "Q5_K", 30: "BF16"}
# elements per block, bytes per block
BLOCK = {F32: (1, 4), F16: (1, 2), Q5_0: (32, 22), Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}
FALLBACK = {Q4_K: Q5_0, Q6_K: Q8_0}


def nbytes(ttype: str, dims: list) -> int:
    per, size = BLOCK[ttype]
    assert dims[0] % per == 0, (ttype, dims)
    return int(np.prod(dims, dtype=np.int64)) // per * size


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def q4_k_m_type(name: str, dims: list, layer, n_blocks: int, tied: bool) -> str:
    """llama.cpp's llama_tensor_get_type for LLAMA_FTYPE_MOSTLY_Q4_K_M (see the docstring)."""
    if (len(dims) < 2 or not name.endswith("weight") or "_norm.weight" in name or "ssm_conv1d" in name
            or "ffn_gate_inp" in name):
        return F32
    ncols = dims[0]
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return Q8_0 if ncols % 256 else Q6_K
    want = Q4_K
    if "attn_v.weight" in name or "attn_qkv.weight" in name or "ffn_down" in name:
        if use_more_bits(layer, n_blocks):
            want = Q6_K
    while ncols % BLOCK[want][0]:
        want = FALLBACK.get(want, F16)
    return want


# ---- the tensor table -------------------------------------------------------------------------

def tensors(c: dict, n_layers: int, n_mtp: int) -> list:
    """(name, GGML dims, type, layer) in llama-quantize's output order."""
    h, f, d = c["hidden"], c["ffn"], c["head_dim"]
    conv = 2 * c["nk"] * c["dk"] + c["nv"] * c["dv"]
    value = c["nv"] * c["dv"]
    n_full = c["layers"] + n_mtp  # the full model's block_count: the type rules count over it

    def attention(p):
        return [(p + "attn_q.weight", [h, 2 * c["heads"] * d]), (p + "attn_k.weight", [h, c["kv"] * d]),
                (p + "attn_v.weight", [h, c["kv"] * d]), (p + "attn_output.weight", [c["heads"] * d, h]),
                (p + "attn_q_norm.weight", [d]), (p + "attn_k_norm.weight", [d])]

    def common(p):
        norms = [(p + "attn_norm.weight", [h]), (p + "post_attention_norm.weight", [h])]
        if not c["experts"]:
            return norms + [(p + "ffn_gate.weight", [h, f]), (p + "ffn_up.weight", [h, f]),
                            (p + "ffn_down.weight", [f, h])]
        e = c["experts"]  # routed experts stacked in ne2, then the shared expert and its scalar gate
        return norms + [(p + "ffn_gate_inp.weight", [h, e]), (p + "ffn_gate_exps.weight", [h, f, e]),
                        (p + "ffn_up_exps.weight", [h, f, e]), (p + "ffn_down_exps.weight", [f, h, e]),
                        (p + "ffn_gate_shexp.weight", [h, f]), (p + "ffn_up_shexp.weight", [h, f]),
                        (p + "ffn_down_shexp.weight", [f, h]), (p + "ffn_gate_inp_shexp.weight", [h])]

    top = [("token_embd.weight", [h, c["vocab"]]), ("output_norm.weight", [h])]
    if not c["tied"]:
        top.append(("output.weight", [h, c["vocab"]]))
    out = [(n, s, None, None) for n, s in sorted(top)]
    blocks = [(i, i) for i in range(n_layers)] + [(n_layers + j, c["layers"] + j) for j in range(n_mtp)]
    for blk, layer in blocks:  # layer: the index in the full model (for the type rules)
        p = f"blk.{blk}."
        ts = common(p)
        if layer >= c["layers"]:  # an MTP block: a full-attention layer plus the nextn tensors
            ts += attention(p) + [(p + "nextn.eh_proj.weight", [2 * h, h]), (p + "nextn.enorm.weight", [h]),
                                  (p + "nextn.hnorm.weight", [h]), (p + "nextn.shared_head_norm.weight", [h])]
        elif (layer + 1) % c["interval"] == 0:
            ts += attention(p)
        else:
            ts += [(p + "attn_qkv.weight", [h, conv]), (p + "attn_gate.weight", [h, value]),
                   (p + "ssm_alpha.weight", [h, c["nv"]]), (p + "ssm_beta.weight", [h, c["nv"]]),
                   (p + "ssm_conv1d.weight", [c["conv_kernel"], conv]), (p + "ssm_dt.bias", [c["nv"]]),
                   (p + "ssm_a", [c["nv"]]), (p + "ssm_norm.weight", [c["dv"]]),
                   (p + "ssm_out.weight", [value, h])]
        out += [(n, s, None, layer) for n, s in sorted(ts)]
    return [(n, s, q4_k_m_type(n, s, layer, n_full, c["tied"]), layer) for n, s, _, layer in out]


# ---- metadata ---------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32V, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32V: "f", BOOL: "?",
          U64: "Q", I64: "q", F64: "d"}


def gguf_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def gguf_kv(key: str, vtype: int, value, sub: int = None) -> bytes:
    out = [gguf_string(key), struct.pack("<I", vtype)]
    if vtype == ARR:
        out.append(struct.pack("<IQ", sub, len(value)))
        if sub == STR:
            out += [gguf_string(v) for v in value]
        else:
            out.append(np.asarray(value, dtype="<" + SCALAR[sub]).tobytes())
    elif vtype == STR:
        out.append(gguf_string(value))
    else:
        out.append(struct.pack("<" + SCALAR[vtype], value))
    return b"".join(out)


def size_label(n: int) -> str:
    """gguf-py's model_weight_count_rounded_notation (what the converter writes)."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n > scale:
            break
    scaled = n / scale
    fix = max(2 - len(str(round(scaled)).lstrip("0")), 0)
    return f"{scaled:.{fix}f}{suffix}"


def model_size_label(table: list) -> str:
    """gguf-py's size_label over the tensor table: "{E}x{shared + one expert's parameters}" when
    there are 3-D `_exps` tensors, else the parameter count."""
    counts = [(name, dims, int(np.prod(dims, dtype=np.int64))) for name, dims, _, _ in table]
    exps = [(dims[2], n) for name, dims, n in counts if "_exps." in name]
    total = sum(n for _, _, n in counts)
    if not exps:
        return size_label(total)
    per_expert = sum(n // e for e, n in exps)
    return f"{exps[0][0]}x{size_label(total - sum(n for _, n in exps) + per_expert)}"


def tokenizer_kvs(tok_dir: Path, vocab: int) -> list:
    """tokenizer.* as llama.cpp's converter writes a byte-level BPE (see
    crates/formats/src/hf_tokenizer.rs): tokens by id padded with `[PAD{id}]` (type 5), type 1
    normal / 3 special added / 4 other added, merges as "a b", eos / pad ids, no BOS."""
    path = tok_dir / "tokenizer.json"
    opener = open if path.is_file() else gzip.open
    if not path.is_file():
        path = tok_dir / "tokenizer.json.gz"
    with opener(path, "rt", encoding="utf-8") as fh:
        tok = json.load(fh)
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokens, types = [None] * vocab, [5] * vocab
    for text, i in tok["model"]["vocab"].items():
        tokens[i], types[i] = text, 1
    ids = dict(tok["model"]["vocab"])
    for a in tok["added_tokens"]:
        tokens[a["id"]], types[a["id"]] = a["content"], 3 if a["special"] else 4
        ids[a["content"]] = a["id"]
    tokens = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    merges = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in tok["model"]["merges"]]
    kvs = [gguf_kv("tokenizer.ggml.model", STR, "gpt2"), gguf_kv("tokenizer.ggml.pre", STR, "qwen35"),
           gguf_kv("tokenizer.ggml.tokens", ARR, tokens, STR),
           gguf_kv("tokenizer.ggml.token_type", ARR, types, I32),
           gguf_kv("tokenizer.ggml.merges", ARR, merges, STR)]
    for key, field in (("tokenizer.ggml.eos_token_id", "eos_token"), ("tokenizer.ggml.padding_token_id", "pad_token")):
        t = cfg.get(field)
        t = t.get("content") if isinstance(t, dict) else t
        if t in ids:
            kvs.append(gguf_kv(key, U32, ids[t]))
    kvs += [gguf_kv("tokenizer.ggml.add_bos_token", BOOL, False), gguf_kv("tokenizer.ggml.add_eos_token", BOOL, False)]
    if isinstance(cfg.get("chat_template"), str):
        kvs.append(gguf_kv("tokenizer.chat_template", STR, cfg["chat_template"]))
    return kvs


def metadata(c: dict, shape: str, n_layers: int, n_mtp: int, label: str, tok_dir) -> list:
    arch = "qwen35moe" if c["experts"] else "qwen35"
    a = arch + "."
    kinds = [(i + 1) % c["interval"] != 0 for i in range(n_layers)] + [False] * n_mtp
    kvs = [gguf_kv("general.architecture", STR, arch), gguf_kv("general.type", STR, "model"),
           gguf_kv("general.sampling.top_k", I32, 20), gguf_kv("general.sampling.top_p", F32V, 0.95),
           gguf_kv("general.sampling.temp", F32V, 1.0),
           gguf_kv("general.name", STR, f"{NAMES[shape]} random (qinfer make_random_gguf)"),
           gguf_kv("general.size_label", STR, label),
           gguf_kv(a + "block_count", U32, n_layers + n_mtp), gguf_kv(a + "context_length", U32, c["context"]),
           gguf_kv(a + "embedding_length", U32, c["hidden"])]
    if not c["experts"]:  # an MoE config has no `intermediate_size`
        kvs.append(gguf_kv(a + "feed_forward_length", U32, c["ffn"]))
    kvs += [gguf_kv(a + "attention.head_count", U32, c["heads"]), gguf_kv(a + "attention.head_count_kv", U32, c["kv"]),
            gguf_kv(a + "rope.dimension_sections", ARR, c["sections"] + [0], I32),
            gguf_kv(a + "rope.freq_base", F32V, c["theta"]),
            gguf_kv(a + "attention.layer_norm_rms_epsilon", F32V, c["eps"])]
    if c["experts"]:
        kvs += [gguf_kv(a + "expert_count", U32, c["experts"]), gguf_kv(a + "expert_used_count", U32, c["top_k"])]
    kvs += [gguf_kv(a + "attention.key_length", U32, c["head_dim"]),
            gguf_kv(a + "attention.value_length", U32, c["head_dim"])]
    if c["experts"]:  # one expert's FFN width and the shared expert's (the same here)
        kvs += [gguf_kv(a + "expert_feed_forward_length", U32, c["ffn"]),
                gguf_kv(a + "expert_shared_feed_forward_length", U32, c["ffn"])]
    if n_mtp:
        kvs.append(gguf_kv(a + "nextn_predict_layers", U32, n_mtp))
    kvs += [gguf_kv(a + "ssm.conv_kernel", U32, c["conv_kernel"]), gguf_kv(a + "ssm.state_size", U32, c["dk"]),
            gguf_kv(a + "ssm.group_count", U32, c["nk"]), gguf_kv(a + "ssm.time_step_rank", U32, c["nv"]),
            gguf_kv(a + "ssm.inner_size", U32, c["nv"] * c["dv"]),
            gguf_kv(a + "attention.recurrent_layers", ARR, kinds, BOOL),
            gguf_kv(a + "full_attention_interval", U32, c["interval"]),
            gguf_kv(a + "rope.dimension_count", U32, int(c["head_dim"] * c["partial_rotary"]))]
    if tok_dir is not None:
        kvs += tokenizer_kvs(tok_dir, c["vocab"])
    kvs += [gguf_kv("general.quantization_version", U32, 2), gguf_kv("general.file_type", U32, 15)]
    return kvs


# ---- data -------------------------------------------------------------------------------------

def f16_bits(x: float) -> int:
    return int(np.array(x, dtype=np.float16).view(np.uint16))


# (offset of the f16 scale in the block, its value), per quantized type
D_FIELDS = {Q4_K: ((0, 1e-4), (2, 7.5e-4)), Q6_K: ((208, 1.2e-4),), Q8_0: ((0, 2.7e-4),), Q5_0: ((0, 2.2e-3),)}


def write_quantized(fh, ttype: str, dims: list, rng) -> None:
    per, size = BLOCK[ttype]
    n_blocks = int(np.prod(dims, dtype=np.int64)) // per
    step = max(1, CHUNK // size)
    fields = [(off // 2, f16_bits(v)) for off, v in D_FIELDS[ttype]]
    for start in range(0, n_blocks, step):
        n = min(step, n_blocks - start)
        blocks = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
        words = blocks.view(np.uint16)  # block sizes are even: one row of u16 per block
        for col, bits in fields:
            words[:, col] = bits
        if ttype == Q6_K:  # int8 sub-block scales in −16..15
            s = blocks[:, 192:208]
            np.bitwise_and(s, 0x1F, out=s)
            s += np.uint8(240)
        fh.write(memoryview(blocks).cast("B"))


def float_values(name: str, n: int, rng) -> np.ndarray:
    if name.endswith("ssm_a"):
        return -rng.uniform(1.0, 16.0, n)
    if name.endswith("ssm_conv1d.weight"):
        return rng.standard_normal(n) * 0.1
    if name.endswith("norm.weight") or name.endswith("ssm_dt.bias"):
        return np.ones(n)
    return rng.standard_normal(n) * 0.02


def write_tensor(fh, name: str, dims: list, ttype: str, rng) -> None:
    if ttype in (F32, F16):
        n = int(np.prod(dims, dtype=np.int64))
        for start in range(0, n, CHUNK // 8):
            m = min(CHUNK // 8, n - start)
            fh.write(float_values(name, m, rng).astype("<f4" if ttype == F32 else "<f2").tobytes())
    else:
        write_quantized(fh, ttype, dims, rng)


# ---- reading (for --compare) ------------------------------------------------------------------

def read_tensor_table(path: Path) -> list:
    """(name, dims, type name) of every tensor of a GGUF file."""
    with open(path, "rb") as fh:
        def u(fmt):
            return struct.unpack("<" + fmt, fh.read(struct.calcsize(fmt)))[0]

        def skip(t):
            if t == STR:
                fh.seek(u("Q"), 1)
            elif t == ARR:
                sub, n = u("I"), u("Q")
                if sub in (STR, ARR):
                    for _ in range(n):
                        skip(sub)
                else:
                    fh.seek(n * struct.calcsize(SCALAR[sub]), 1)
            else:
                fh.seek(struct.calcsize(SCALAR[t]), 1)

        if fh.read(4) != b"GGUF":
            sys.exit(f"{path}: not a GGUF file")
        _version, n_tensors, n_kv = u("I"), u("Q"), u("Q")
        for _ in range(n_kv):
            fh.seek(u("Q"), 1)
            skip(u("I"))
        out = []
        for _ in range(n_tensors):
            name = fh.read(u("Q")).decode()
            dims = [u("Q") for _ in range(u("I"))]
            t = u("I")
            u("Q")
            out.append((name, dims, TYPE_NAME.get(t, str(t))))
        return out


def compare(ours: list, path: Path) -> bool:
    theirs = read_tensor_table(path)
    mine = [(n, list(s), t) for n, s, t, _ in ours]
    a, b = {n: (s, t) for n, s, t in mine}, {n: (s, t) for n, s, t in theirs}
    diffs = [f"  only here: {n}" for n in a if n not in b] + [f"  only in {path.name}: {n}" for n in b if n not in a]
    diffs += [f"  {n}: here {a[n][1]} {a[n][0]}, there {b[n][1]} {b[n][0]}" for n in a if n in b and a[n] != b[n]]
    order = [n for n, _, _ in mine] == [n for n, _, _ in theirs]
    print(f"compare with {path}: {len(mine)} tensors here, {len(theirs)} there; "
          f"{'same' if order else 'different'} order; {len(diffs)} differences")
    for line in diffs[:60]:
        print(line)
    return not diffs


# ---- main -------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", type=Path, help="the GGUF file to write")
    ap.add_argument("--shape", choices=list(SHAPES), default="27b")
    ap.add_argument("--layers", type=int, help="write only the first N decoder layers")
    ap.add_argument("--mtp", type=int, help="MTP blocks (default: 0; tiny: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", type=Path, default=REPO / "assets" / "qwen3.5-tokenizer")
    ap.add_argument("--no-tokenizer", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="print sizes only, write nothing")
    ap.add_argument("--list", action="store_true", help="print the tensor table")
    ap.add_argument("--compare", type=Path, help="compare the tensor table with this GGUF file")
    ap.add_argument("--force", action="store_true", help="write even if the disk looks too small")
    args = ap.parse_args()
    if args.out is None and not args.dry_run:
        ap.error("give OUT.gguf, or --dry-run")

    c = config(args.shape)
    n_layers = c["layers"] if args.layers is None else args.layers
    if not 1 <= n_layers <= c["layers"]:
        ap.error(f"--layers must be 1..{c['layers']}")
    n_mtp = c["mtp"] if args.mtp is None else args.mtp
    tok_dir = None if args.no_tokenizer or args.shape == "tiny" else args.tokenizer

    table = tensors(c, n_layers, n_mtp)
    params = sum(int(np.prod(s, dtype=np.int64)) for _, s, _, _ in table)
    label = model_size_label(table)
    kvs = metadata(c, args.shape, n_layers, n_mtp, label, tok_dir)
    head = [b"GGUF", struct.pack("<IQQ", 3, len(table), len(kvs))] + kvs
    offset, infos, layout = 0, [], []
    for name, dims, ttype, _ in table:
        size = nbytes(ttype, dims)
        infos.append(gguf_string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                     + struct.pack("<IQ", TYPE_ID[ttype], offset))
        layout.append((offset, size))
        offset += size + (-size % ALIGN)
    header = b"".join(head + infos)
    header += b"\0" * (-len(header) % ALIGN)
    total = len(header) + offset  # every tensor padded to the alignment, the last one too

    # What one decode step reads: everything but the MTP blocks and the embedding, plus one
    # embedding row; a tied embedding is the LM head and read whole; of each 3-D expert tensor the
    # top-k experts a token is routed to (the router and the shared expert are read whole).
    per_type, weights, per_token = {}, 0, 0
    for (name, dims, ttype, layer), (_, size) in zip(table, layout):
        per_type[ttype] = per_type.get(ttype, 0) + size
        weights += size
        mtp = layer is not None and layer >= c["layers"]
        if name == "token_embd.weight":
            row = nbytes(ttype, [dims[0], 1])
            per_token += size + row if c["tied"] else row
        elif not mtp:
            per_token += size * c["top_k"] // c["experts"] if "_exps." in name else size
    mtp_bytes = sum(s for (_, _, _, l), (_, s) in zip(table, layout) if l is not None and l >= c["layers"])
    print(f"{NAMES[args.shape]} ({args.shape}), {n_layers} of {c['layers']} layers, {n_mtp} MTP block(s): "
          f"{len(table)} tensors, {params / 1e9:.3f} B parameters ({label})")
    print("  by type: " + ", ".join(f"{t} {b / 1e9:.3f} GB" for t, b in sorted(per_type.items())))
    print(f"  file: {total} bytes ({total / 1e9:.3f} GB, {total / 2**30:.3f} GiB); header + metadata "
          f"{len(header)} bytes")
    print(f"  decode reads per token: {per_token} bytes ({per_token / 1e9:.3f} GB) of weights"
          + (f" ({c['top_k']} of {c['experts']} routed experts + the shared one per layer)" if c["experts"] else "")
          + (f"; MTP block(s) {mtp_bytes / 1e9:.3f} GB not counted" if n_mtp else ""))
    if args.list:
        for name, dims, ttype, _ in table:
            print(f"  {name:40} {ttype:5} {'x'.join(map(str, dims))}")
    ok = True
    if args.compare:
        ok = compare(table, args.compare)
    if args.dry_run:
        sys.exit(0 if ok else 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.out.parent).free
    if args.out.exists():
        free += args.out.stat().st_size
    if total + (1 << 30) > free and not args.force:
        sys.exit(f"{args.out.parent}: {free / 1e9:.1f} GB free, need {total / 1e9:.1f} GB + 1 GB (--force to try)")
    rng = np.random.default_rng(args.seed)
    started, done = time.time(), 0
    last = started
    with open(args.out, "wb") as fh:
        fh.write(header)
        for (name, dims, ttype, _), (off, size) in zip(table, layout):
            assert fh.tell() == len(header) + off, name
            write_tensor(fh, name, dims, ttype, rng)
            fh.write(b"\0" * (-size % ALIGN))
            done += size
            now = time.time()
            if now - last > 10:
                last = now
                print(f"  {done / 1e9:7.2f} / {total / 1e9:.2f} GB, {done / 1e9 / max(now - started, 1e-9):.2f} GB/s",
                      flush=True)
    written = os.path.getsize(args.out)
    print(f"{args.out}: {written} bytes in {time.time() - started:.0f} s")
    if written != total:
        sys.exit(f"written {written} bytes, expected {total}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
