#!/usr/bin/env python3
"""Random-weight Hugging Face checkpoints with the real shapes of Qwen3.5-0.8B, Qwen3.5-4B and the
layers of Qwen3.5/3.6-35B-A3B.

For speed comparisons only (tools/bench_vs_llama_cpp.sh): the weights are random, so the text is
meaningless, but every tensor has the real model's name, shape and dtype (BF16), and the
tokenizer is the real Qwen3.5 one (assets/qwen3.5-tokenizer). Tensor names and shapes follow
transformers' Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM (`tensors`); where torch and transformers
are installed they are checked against the model instantiated on the `meta` device (no memory
used). Values are written straight into a safetensors file, tensor by tensor (the stacked experts
expert by expert, so memory stays at one expert's matrices).

`35b-a3b` is the 35B-A3B's layers at 8 of its 40 (2 × [3 DeltaNet + 1 attention]): hidden 2048,
attention 16/2 heads, DeltaNet 16/32 heads, 256 routed experts of 512 (top 8) + one shared expert
of 512, the experts fused and stacked as the official checkpoints store them, untied LM head.
7.6 B parameters, 15.3 GB of BF16; Q4_K_M 4.6 GB. Per token it reads what the full model's 8
layers read (8 experts + the shared one): the speed per layer of the real model, a fifth of its
depth.

usage: make_bench_models.py {0.8b,4b,35b-a3b} OUT_DIR   (python with numpy; torch + transformers
                                                         5.23 optional, for the cross-check)
"""

import gzip
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

SHAPES = {
    # hidden, layers, heads, kv heads, DeltaNet key heads, value heads, FFN (dense: the MLP's;
    # MoE: one expert's and the shared expert's)
    "0.8b": (1024, 24, 8, 2, 16, 16, 3584),
    "4b": (2560, 32, 16, 4, 16, 32, 9216),
    "35b-a3b": (2048, 8, 16, 2, 16, 32, 512),
}
# MoE shapes: routed experts, experts per token.
MOE = {"35b-a3b": (256, 8)}


def config(name: str) -> dict:
    hidden, layers, heads, kv, nk, nv, ffn = SHAPES[name]
    cfg = {
        "architectures": ["Qwen3_5ForCausalLM"],
        "model_type": "qwen3_5_text",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_output_gate": True,
        "bos_token_id": None,
        "eos_token_id": 248046,
        "pad_token_id": 248044,
        "full_attention_interval": 4,
        "head_dim": 256,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": ffn,
        "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * (layers // 4),
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_num_key_heads": nk,
        "linear_num_value_heads": nv,
        "linear_value_head_dim": 128,
        "max_position_embeddings": 262144,
        "mtp_num_hidden_layers": 0,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv,
        "partial_rotary_factor": 0.25,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "mrope_interleaved": True,
            "mrope_section": [11, 11, 10],
            "partial_rotary_factor": 0.25,
            "rope_theta": 10000000,
            "rope_type": "default",
        },
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 248320,
    }
    if name in MOE:
        experts, top_k = MOE[name]
        cfg.update(
            {
                "architectures": ["Qwen3_5MoeForCausalLM"],
                "model_type": "qwen3_5_moe_text",
                "num_experts": experts,
                "num_experts_per_tok": top_k,
                "moe_intermediate_size": ffn,
                "shared_expert_intermediate_size": ffn,
                "tie_word_embeddings": False,
            }
        )
        del cfg["intermediate_size"]
    return cfg


def tensors(cfg: dict) -> list:
    """(name, shape) of every tensor of Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM for `cfg` (the
    LM head only when untied)."""
    h = cfg["hidden_size"]
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    heads, kv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    conv = 2 * nk * dk + nv * dv
    out = [("model.embed_tokens.weight", (cfg["vocab_size"], h))]
    for i, kind in enumerate(cfg["layer_types"]):
        p = f"model.layers.{i}."
        out.append((p + "input_layernorm.weight", (h,)))
        if kind == "linear_attention":
            a = p + "linear_attn."
            out += [
                (a + "A_log", (nv,)),
                (a + "conv1d.weight", (conv, 1, cfg["linear_conv_kernel_dim"])),
                (a + "dt_bias", (nv,)),
                (a + "in_proj_a.weight", (nv, h)),
                (a + "in_proj_b.weight", (nv, h)),
                (a + "in_proj_qkv.weight", (conv, h)),
                (a + "in_proj_z.weight", (nv * dv, h)),
                (a + "norm.weight", (dv,)),
                (a + "out_proj.weight", (h, nv * dv)),
            ]
        else:
            a = p + "self_attn."
            out += [
                (a + "k_norm.weight", (d,)),
                (a + "k_proj.weight", (kv * d, h)),
                (a + "o_proj.weight", (h, heads * d)),
                (a + "q_norm.weight", (d,)),
                (a + "q_proj.weight", (heads * d * 2, h)),
                (a + "v_proj.weight", (kv * d, h)),
            ]
        if "num_experts" in cfg:
            e, f, fs = cfg["num_experts"], cfg["moe_intermediate_size"], cfg["shared_expert_intermediate_size"]
            m = p + "mlp."
            out += [
                (m + "experts.down_proj", (e, h, f)),
                (m + "experts.gate_up_proj", (e, 2 * f, h)),
                (m + "gate.weight", (e, h)),
                (m + "shared_expert.down_proj.weight", (h, fs)),
                (m + "shared_expert.gate_proj.weight", (fs, h)),
                (m + "shared_expert.up_proj.weight", (fs, h)),
                (m + "shared_expert_gate.weight", (1, h)),
            ]
        else:
            f = cfg["intermediate_size"]
            out += [
                (p + "mlp.down_proj.weight", (h, f)),
                (p + "mlp.gate_proj.weight", (f, h)),
                (p + "mlp.up_proj.weight", (f, h)),
            ]
        out.append((p + "post_attention_layernorm.weight", (h,)))
    out.append(("model.norm.weight", (h,)))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (cfg["vocab_size"], h)))
    return out


def check_with_transformers(cfg: dict, ours: list) -> None:
    """Our tensor list against transformers' own, where torch and transformers are installed."""
    try:
        import torch
        import transformers
    except ImportError:
        print("torch/transformers not installed: tensor list not cross-checked")
        return
    moe = "num_experts" in cfg
    model_cls = transformers.Qwen3_5MoeForCausalLM if moe else transformers.Qwen3_5ForCausalLM
    config_cls = transformers.Qwen3_5MoeTextConfig if moe else transformers.Qwen3_5TextConfig
    with torch.device("meta"):
        model = model_cls(config_cls(**{k: v for k, v in cfg.items() if k != "architectures"}))
    tied = cfg["tie_word_embeddings"]
    theirs = [(k, tuple(v.shape)) for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")]
    assert sorted(theirs) == sorted(ours), "tensor list differs from transformers'"


def values(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    n = int(np.prod(shape))
    if name.endswith("A_log"):
        return np.log(rng.uniform(1.0, 16.0, n)).astype(np.float32)
    if name.endswith("dt_bias"):
        return np.ones(n, np.float32)
    if name.endswith("linear_attn.norm.weight"):
        return np.ones(n, np.float32)  # plain RMSNorm
    if "norm" in name:
        return (rng.standard_normal(n, np.float32) * 0.02).astype(np.float32)  # zero-centred
    std = 0.1 if "conv1d" in name else 0.02
    return rng.standard_normal(n, np.float32) * np.float32(std)


def bf16_bytes(x: np.ndarray) -> bytes:
    u = x.astype(np.float32).view(np.uint32)
    # round to nearest even
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16).tobytes()


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in SHAPES:
        sys.exit(f"usage: make_bench_models.py {{{','.join(SHAPES)}}} OUT_DIR")
    name, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    cfg = config(name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [248046, 248044]}))
    with gzip.open(REPO / "assets/qwen3.5-tokenizer/tokenizer.json.gz", "rb") as f:
        (out / "tokenizer.json").write_bytes(f.read())
    shutil.copy(REPO / "assets/qwen3.5-tokenizer/tokenizer_config.json", out)

    names = tensors(cfg)
    check_with_transformers(cfg, names)
    header, offset = {}, 0
    for k, shape in names:
        size = int(np.prod(shape)) * 2
        header[k] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    rng = np.random.default_rng(0)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for k, shape in names:
            # Stacked experts one expert at a time: memory for one expert's matrix, not 256.
            for part in (range(shape[0]) if ".experts." in k else [None]):
                f.write(bf16_bytes(values(k, shape if part is None else shape[1:], rng)))
    print(f"{out}: {len(names)} tensors, {offset / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
