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

`0.8b-vl` is the 0.8B text model as a multimodal checkpoint (`Qwen3_5ForConditionalGeneration`)
with the Qwen3.6-27B's vision tower (depth 27, width 1152, 16 heads, MLP 4304, patch 16, merge 2,
a 48×48 position table; 0.46 B parameters, its merger projecting to the 0.8B's width 1024 instead
of 5120) and the Qwen processor's `preprocessor_config.json`: the encoder's cost per image at the
27B's shape (`qinfer bench DIR --image FILE`).

usage: make_bench_models.py {0.8b,4b,35b-a3b,0.8b-vl} OUT_DIR   (python with numpy; torch + transformers
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
# Multimodal variants: the text shape they extend.
VL = {"0.8b-vl": "0.8b"}
# The Qwen3.6-27B's vision tower (spec §1.3); `out_hidden_size` is set to the text width.
VISION = {
    "depth": 27,
    "hidden_size": 1152,
    "hidden_act": "gelu_pytorch_tanh",
    "intermediate_size": 4304,
    "num_heads": 16,
    "in_channels": 3,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "num_position_embeddings": 2304,
    "model_type": "qwen3_5_vision",
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"},
}
PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
    "do_convert_rgb": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
}


def config(name: str) -> dict:
    if name in VL:
        text = config(VL[name])
        text.pop("architectures")
        text.pop("torch_dtype")
        vision = dict(VISION, out_hidden_size=text["hidden_size"])
        return {
            "architectures": ["Qwen3_5ForConditionalGeneration"],
            "model_type": "qwen3_5",
            "image_token_id": 248056,
            "video_token_id": 248057,
            "vision_start_token_id": 248053,
            "vision_end_token_id": 248054,
            "tie_word_embeddings": text["tie_word_embeddings"],
            "torch_dtype": "bfloat16",
            "text_config": text,
            "vision_config": vision,
        }
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


def vision_tensors(v: dict) -> list:
    """(name, shape) of every tensor of the vision tower `model.visual.*` for `vision_config` v."""
    h, f, m = v["hidden_size"], v["intermediate_size"], v["spatial_merge_size"]
    c, t, p = v["in_channels"], v["temporal_patch_size"], v["patch_size"]
    out = [
        ("model.visual.patch_embed.proj.weight", (h, c, t, p, p)),
        ("model.visual.patch_embed.proj.bias", (h,)),
        ("model.visual.pos_embed.weight", (v["num_position_embeddings"], h)),
    ]
    for i in range(v["depth"]):
        b = f"model.visual.blocks.{i}."
        out += [
            (b + "norm1.weight", (h,)),
            (b + "norm1.bias", (h,)),
            (b + "norm2.weight", (h,)),
            (b + "norm2.bias", (h,)),
            (b + "attn.qkv.weight", (3 * h, h)),
            (b + "attn.qkv.bias", (3 * h,)),
            (b + "attn.proj.weight", (h, h)),
            (b + "attn.proj.bias", (h,)),
            (b + "mlp.linear_fc1.weight", (f, h)),
            (b + "mlp.linear_fc1.bias", (f,)),
            (b + "mlp.linear_fc2.weight", (h, f)),
            (b + "mlp.linear_fc2.bias", (h,)),
        ]
    mh = h * m * m
    out += [
        ("model.visual.merger.norm.weight", (h,)),
        ("model.visual.merger.norm.bias", (h,)),
        ("model.visual.merger.linear_fc1.weight", (mh, mh)),
        ("model.visual.merger.linear_fc1.bias", (mh,)),
        ("model.visual.merger.linear_fc2.weight", (v["out_hidden_size"], mh)),
        ("model.visual.merger.linear_fc2.bias", (v["out_hidden_size"],)),
    ]
    return out


def tensors(cfg: dict) -> list:
    """(name, shape) of every tensor of Qwen3_5ForCausalLM / Qwen3_5MoeForCausalLM for `cfg` (the
    LM head only when untied); for a multimodal config, Qwen3_5ForConditionalGeneration's."""
    if "text_config" in cfg:
        text = [(k.replace("model.", "model.language_model.", 1) if k.startswith("model.") else k, s)
                for k, s in tensors(cfg["text_config"])]
        return text + vision_tensors(cfg["vision_config"])
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
    if "text_config" in cfg:
        try:
            import torch
            import transformers
        except ImportError:
            print("torch/transformers not installed: tensor list not cross-checked")
            return
        with torch.device("meta"):
            model = transformers.Qwen3_5ForConditionalGeneration(
                transformers.Qwen3_5Config(**{k: v for k, v in cfg.items() if k != "architectures"})
            )
        tied = cfg["tie_word_embeddings"]
        theirs = [(k, tuple(v.shape)) for k, v in model.state_dict().items()
                  if not (tied and k == "lm_head.weight")]
        assert sorted(theirs) == sorted(ours), "tensor list differs from transformers'"
        return
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
    if name.startswith("model.visual."):
        if "norm" in name and name.endswith("weight"):
            return np.ones(n, np.float32)  # LayerNorm: plain multiplier
        if name.endswith("bias"):
            return np.zeros(n, np.float32)
        if "pos_embed" in name:
            return rng.standard_normal(n, np.float32) * np.float32(0.02)
        return rng.standard_normal(n, np.float32) * np.float32(1.0 / np.sqrt(np.prod(shape[1:])))
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
    if len(sys.argv) != 3 or sys.argv[1] not in {**SHAPES, **VL}:
        sys.exit(f"usage: make_bench_models.py {{{','.join([*SHAPES, *VL])}}} OUT_DIR")
    name, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    cfg = config(name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [248046, 248044]}))
    with gzip.open(REPO / "assets/qwen3.5-tokenizer/tokenizer.json.gz", "rb") as f:
        (out / "tokenizer.json").write_bytes(f.read())
    shutil.copy(REPO / "assets/qwen3.5-tokenizer/tokenizer_config.json", out)
    if name in VL:
        (out / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))

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
