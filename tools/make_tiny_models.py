#!/usr/bin/env python3
"""Build tiny random-weight Qwen3.5 checkpoints and HF transformers reference outputs.

The checkpoints keep the exact structure of the real Qwen3.5 / Qwen3.6 family (hybrid
Gated-DeltaNet + gated-attention stack, zero-centred norms, partial interleaved MRoPE,
fused MoE experts, MTP tensors, multimodal wrapper) at toy sizes, so that the Rust engine
can be tested numerically against transformers on CPU.

Usage (see tests/fixtures/README.md):

    python -m venv .venv-oracle && .venv-oracle/bin/pip install -r tools/requirements.txt
    .venv-oracle/bin/python tools/make_tiny_models.py --out tests/fixtures

Everything is deterministic: weights are generated from fixed seeds (one generator per
tensor, seeded from the fixture seed and the tensor name), CPU compute uses a single
thread, and files are written in a stable order.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import safetensors
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    GenerationConfig,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForCausalLM,
    Qwen3_5MoeTextConfig,
)
from transformers.models.qwen3_5 import modeling_qwen3_5 as M_DENSE
from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as M_MOE

EXPECTED_VERSIONS = {"torch": "2.15.0", "transformers": "5.23.0"}

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

VOCAB = 320
HIDDEN = 64
N_LAYERS = 8
LAYER_TYPES = (["linear_attention"] * 3 + ["full_attention"]) * 2

# Shared text dims (dense and MoE).
TEXT_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=N_LAYERS,
    layer_types=LAYER_TYPES,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    hidden_act="silu",
    rope_parameters=dict(
        rope_type="default",
        rope_theta=10000000,
        partial_rotary_factor=0.25,
        mrope_section=[2, 1, 1],
        mrope_interleaved=True,
    ),
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    attention_bias=False,
    # Keys that the official config.json files carry but that transformers 5.23 does not
    # use (it always applies the output gate, ignores mtp_* and mamba_ssm_dtype); they are
    # kept as extra attributes and written back to config.json.
    attn_output_gate=True,
    mtp_num_hidden_layers=1,
    mtp_use_dedicated_embeddings=False,
    mamba_ssm_dtype="float32",
    eos_token_id=1,
)
DENSE_TEXT = dict(TEXT_COMMON, intermediate_size=128, tie_word_embeddings=False)
MOE_TEXT = dict(
    TEXT_COMMON,
    num_experts=8,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    shared_expert_intermediate_size=48,
    tie_word_embeddings=True,
)
# The MoE fixture has no MTP tensors, so it does not advertise an MTP head.
MOE_TEXT["mtp_num_hidden_layers"] = 0

VISION = dict(
    depth=1,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    in_channels=3,
    patch_size=4,
    temporal_patch_size=2,
    spatial_merge_size=2,
    out_hidden_size=HIDDEN,
    num_position_embeddings=16,
    hidden_act="gelu_pytorch_tanh",
)

# Keys written into config.json's text part after transformers serialised it: the official
# checkpoints carry them, transformers consumes them in __post_init__ and does not write
# them back (values are identical to what is inside rope_parameters / layer_types).
TEXT_EXTRA_KEYS = {"partial_rotary_factor": 0.25, "full_attention_interval": 4}

# Generation config, mirroring the official one with small ids:
# <|endoftext|> (248044) -> 1, <|im_end|> (248046) -> 2.
GENERATION_CONFIG = {
    "bos_token_id": 1,
    "do_sample": True,
    "eos_token_id": [2, 1],
    "pad_token_id": 1,
    "temperature": 1.0,
    "top_k": 20,
    "top_p": 0.95,
}
EOS_IDS = set(GENERATION_CONFIG["eos_token_id"])

DENSE_SEED = 1021
MOE_SEED = 2236
PROMPT_SEED = 3003
SHORT_LEN = 13
LONG_LEN = 157  # 2 full 64-token chunks + a 29-token remainder
N_GREEDY = 32
MIN_MARGIN_REQUIRED = 0.05  # top1-top2 logit gap along every greedy path (f32 compute)

# Weight scales.
NORM_ZC_STD = 0.3  # zero-centred RMSNorm weights ("1 + w"): w ~ N(0, 0.3)
GDN_NORM_STD = 0.3  # plain gated RMSNorm weight: 1 + N(0, 0.3)
EMBED_STD_UNTIED = 1.0
EMBED_STD_TIED = 0.6  # tied: embedding is also the LM head -> logit std ~ 0.6*sqrt(64)
LM_HEAD_GAIN = 5.0  # untied lm_head std = 5/sqrt(H) -> logit std ~ 5
ROUTER_GAIN = 2.5  # router std = 2.5/sqrt(H) -> router logit std ~ 2.5


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def log(*a):
    print(*a, flush=True)


def gen_for(seed: int, name: str) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    return g


def normal(shape, std, g, mean=0.0):
    return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean


def uniform(shape, lo, hi, g):
    return torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo


def random_tensor(name: str, shape, seed: int, tied: bool) -> torch.Tensor:
    """Seeded random value for the parameter called `name` (HF checkpoint naming)."""
    g = gen_for(seed, name)
    shape = tuple(shape)

    if name.startswith("model.visual."):
        if name.endswith(".bias"):
            return normal(shape, 0.1, g)
        if "norm" in name:  # LayerNorm weights
            return normal(shape, 0.1, g, mean=1.0)
        if name.endswith("pos_embed.weight"):
            return normal(shape, 0.5, g)
        fan_in = int(np.prod(shape[1:]))
        return normal(shape, 1.0 / math.sqrt(fan_in), g)

    if name.endswith("linear_attn.A_log"):
        # A uniform in [1, 16] (HF init range, minus the near-zero tail).
        return uniform(shape, math.log(1.0), math.log(16.0), g)
    if name.endswith("linear_attn.dt_bias"):
        # Mamba-style: softplus(dt_bias) = dt, dt log-uniform in [1e-3, 0.2].
        dt = torch.exp(uniform(shape, math.log(1e-3), math.log(0.2), g))
        return dt + torch.log(-torch.expm1(-dt))
    if name.endswith("linear_attn.norm.weight"):
        return normal(shape, GDN_NORM_STD, g, mean=1.0)
    if name.endswith("linear_attn.conv1d.weight"):
        return normal(shape, 1.0 / math.sqrt(shape[-1]), g)
    if name.endswith("norm.weight") or name.endswith("norm_embedding.weight") or name.endswith(
        "norm_hidden.weight"
    ):
        # input_layernorm, post_attention_layernorm, q_norm, k_norm, final norm, mtp norms.
        return normal(shape, NORM_ZC_STD, g)
    if name.endswith("embed_tokens.weight"):
        return normal(shape, EMBED_STD_TIED if tied else EMBED_STD_UNTIED, g)
    if name == "lm_head.weight":
        return normal(shape, LM_HEAD_GAIN / math.sqrt(shape[1]), g)
    if name.endswith("mlp.gate.weight"):  # MoE router
        return normal(shape, ROUTER_GAIN / math.sqrt(shape[1]), g)
    if name.endswith("mlp.experts.gate_up_proj"):  # [E, 2I, H]
        return normal(shape, 1.0 / math.sqrt(shape[2]), g)
    if name.endswith("mlp.experts.down_proj"):  # [E, H, I]
        return normal(shape, 1.0 / math.sqrt(shape[2]), g)
    if len(shape) == 2 and name.endswith(".weight"):
        return normal(shape, 1.0 / math.sqrt(shape[1]), g)
    raise ValueError(f"no init rule for {name} {shape}")


def randomize_model(model: torch.nn.Module, seed: int, tied: bool) -> None:
    """Overwrite every parameter of `model` with seeded random values."""
    seen = set()
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=True):
            if id(p) in seen:
                continue
            seen.add(id(p))
            p.copy_(random_tensor(name, p.shape, seed, tied))


def mtp_tensors(model_sd: dict, seed: int) -> dict:
    """Synthetic MTP head (HF's classes have none): fc, 3 norms, one full-attention layer."""
    out = {}
    h = HIDDEN
    prefix = "model.language_model.layers.3."  # a full-attention layer, for names/shapes
    assert LAYER_TYPES[3] == "full_attention"
    for k, v in model_sd.items():
        if k.startswith(prefix):
            name = "mtp.layers.0." + k[len(prefix):]
            out[name] = random_tensor(name, v.shape, seed, tied=False)
    assert len(out) == 11, sorted(out)
    out["mtp.fc.weight"] = random_tensor("mtp.fc.weight", (h, 2 * h), seed, tied=False)
    for n in ("mtp.pre_fc_norm_embedding.weight", "mtp.pre_fc_norm_hidden.weight", "mtp.norm.weight"):
        out[n] = random_tensor(n, (h,), seed, tied=False)
    return out


def split_experts(sd: dict) -> dict:
    """Fused [E,2I,H]/[E,H,I] expert stacks -> per-expert 2-D tensors (HF save_pretrained form)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            base = k[: -len("gate_up_proj")]
            inter = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = v[e, :inter].clone()
                out[f"{base}{e}.up_proj.weight"] = v[e, inter:].clone()
        elif k.endswith("mlp.experts.down_proj"):
            base = k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = v[e].clone()
        else:
            out[k] = v
    return out


def contiguous(sd: dict, dtype) -> dict:
    return {k: v.detach().to(dtype).contiguous().clone() for k, v in sd.items()}


def write_safetensors(path: Path, tensors: dict) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})


def write_sharded(dirpath: Path, tensors: dict, shard_of) -> None:
    shards: dict[int, dict] = {}
    for k, v in tensors.items():
        shards.setdefault(shard_of(k), {})[k] = v
    n = len(shards)
    assert sorted(shards) == list(range(n)), sorted(shards)
    weight_map = {}
    total_size = 0
    total_params = 0
    for i in range(n):
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        write_safetensors(dirpath / fname, shards[i])
        for k, v in shards[i].items():
            weight_map[k] = fname
            total_size += v.numel() * v.element_size()
            total_params += v.numel()
    index = {
        "metadata": {"total_parameters": total_params, "total_size": total_size},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (dirpath / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def dense_shard_of(name: str) -> int:
    """Shard 0: embeddings, vision tower, layers 0-3. Shard 1: layers 4-7, norm, lm_head, mtp."""
    m = re.match(r"model\.language_model\.layers\.(\d+)\.", name)
    if m:
        return 0 if int(m.group(1)) < 4 else 1
    if name.startswith("model.visual.") or name.endswith("embed_tokens.weight"):
        return 0
    return 1


def write_config(model, dirpath: Path, dtype_name: str) -> None:
    model.config.save_pretrained(str(dirpath))
    p = dirpath / "config.json"
    cfg = json.loads(p.read_text())
    cfg["dtype"] = dtype_name
    text = cfg.get("text_config", cfg)
    for k, v in TEXT_EXTRA_KEYS.items():
        text.setdefault(k, v)
    p.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (dirpath / "generation_config.json").write_text(
        json.dumps(dict(GENERATION_CONFIG, transformers_version=transformers.__version__), indent=2, sort_keys=True)
        + "\n"
    )


def compact_json(obj) -> str:
    """json.dumps with indent, but lists of numbers kept on one line."""
    s = json.dumps(obj, indent=2)
    return re.sub(
        r"\[\s*([-0-9.eE+,\s]+?)\s*\]",
        lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]",
        s,
    )


# --------------------------------------------------------------------------------------
# Instrumentation: which GDN code paths transformers takes
# --------------------------------------------------------------------------------------

PATH_LOG: Counter = Counter()
_PATCHED = False


def instrument_gdn_paths() -> None:
    global _PATCHED
    if _PATCHED:
        return
    _PATCHED = True
    names = [
        "torch_chunk_gated_delta_rule",
        "torch_recurrent_gated_delta_rule",
        "causal_conv1d_fn",
        "causal_conv1d_update",
    ]
    for mod in (M_DENSE, M_MOE):
        for name in names:
            fn = getattr(mod, name)
            # The pure-torch fallbacks are wrapped by transformers; make sure the wrapped function is the torch
            # implementation defined in this module (i.e. flash-linear-attention / causal-conv1d are absent).
            inner = getattr(fn, "__wrapped__", fn)
            assert inner.__module__ == mod.__name__, (name, inner.__module__)

            def make(fn=fn, name=name):
                def wrapper(*args, **kwargs):
                    if name.endswith("delta_rule"):
                        seq = args[0].shape[1]
                        init = kwargs.get("initial_state") is not None
                        PATH_LOG[f"{name}(seq_len={'1' if seq == 1 else '>1'}, initial_state={init})"] += 1
                    else:
                        seq = args[0].shape[-1]
                        PATH_LOG[f"{name}(seq_len={'1' if seq == 1 else '>1'})"] += 1
                    return fn(*args, **kwargs)

                return wrapper

            setattr(mod, name, make())
    for pkg in ("fla", "causal_conv1d", "kernels"):
        try:
            __import__(pkg)
        except ImportError:
            continue
        raise SystemExit(f"package {pkg!r} is installed: uninstall it so transformers uses its torch fallbacks")


# --------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------


def make_prompts():
    rs = np.random.RandomState(PROMPT_SEED)
    short = rs.randint(3, VOCAB, size=SHORT_LEN).tolist()
    long = rs.randint(3, VOCAB, size=LONG_LEN).tolist()
    return short, long


def text_model(model):
    """The Qwen3_5TextModel / Qwen3_5MoeTextModel inside `model`."""
    if isinstance(model, Qwen3_5ForConditionalGeneration):
        return model.model.language_model
    return model.model


@torch.no_grad()
def forward_logits(model, ids: list) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, prompt: list) -> dict:
    """Greedy decoding with the cache (generate), cross-checked by a no-cache argmax loop."""
    model.generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=N_GREEDY, min_new_tokens=0, eos_token_id=None, pad_token_id=0
    )
    PATH_LOG.clear()
    out = model.generate(
        torch.tensor([prompt]),
        do_sample=False,
        max_new_tokens=N_GREEDY,
        use_cache=True,
        return_dict_in_generate=True,
        output_logits=True,
    )
    paths = dict(sorted(PATH_LOG.items()))
    ids = out.sequences[0, len(prompt):].tolist()
    assert len(ids) == N_GREEDY, ids
    step_logits = torch.stack([x[0].float() for x in out.logits])  # [32, V]
    assert step_logits.argmax(-1).tolist() == ids

    # No-cache reference: full forward over the whole sequence at every step.
    seq = list(prompt)
    nc_ids, nc_logits = [], []
    for _ in range(N_GREEDY):
        last = forward_logits(model, seq)[-1]
        nxt = int(last.argmax())
        nc_ids.append(nxt)
        nc_logits.append(last)
        seq.append(nxt)
    nc_logits = torch.stack(nc_logits)

    top2 = step_logits.topk(2, dim=-1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    return {
        "ids": ids,
        "step_logits": step_logits,
        "margins": margins,
        "min_margin": min(margins),
        "nocache_ids": nc_ids,
        "nocache_equal": nc_ids == ids,
        "cache_vs_nocache_max_abs_logit_diff": float((nc_logits - step_logits).abs().max())
        if nc_ids == ids
        else None,
        "paths": paths,
    }


@torch.no_grad()
def hidden_states(model, ids: list):
    tm = text_model(model)
    captured = {}
    h = tm.layers[-1].register_forward_hook(lambda m, a, o: captured.__setitem__("last", o))
    try:
        out = tm(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    finally:
        h.remove()
    hs = torch.stack([x[0].float() for x in out.hidden_states])  # [L+1, T, H]
    assert hs.shape[0] == N_LAYERS + 1
    assert torch.equal(hs[-1], out.last_hidden_state[0].float())
    last = captured["last"]
    last = last[0] if isinstance(last, tuple) else last
    return hs, last[0].float()


def load(cls, path: Path, dtype):
    model, info = cls.from_pretrained(
        str(path),
        dtype=dtype,
        attn_implementation="eager",
        experts_implementation="eager",
        output_loading_info=True,
    )
    missing = [k for k in info["missing_keys"]]
    unexpected = [k for k in info["unexpected_keys"] if not k.startswith("mtp.")]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise RuntimeError(f"loading {path}: missing={missing} unexpected={unexpected} mismatched={mismatched}")
    model.eval()
    for n, p in model.named_parameters():
        assert p.dtype == dtype, (n, p.dtype)
    return model


def check_loaded_weights(model, tensors: dict, fused_from_split: bool) -> None:
    """The model loaded by transformers holds exactly the tensors written to disk."""
    sd = model.state_dict()
    file_sd = dict(tensors)
    if fused_from_split:
        # re-fuse per-expert tensors for comparison
        fused = {}
        for k in list(file_sd):
            m = re.match(r"(.*mlp\.experts\.)(\d+)\.(gate|up|down)_proj\.weight$", k)
            if m:
                fused.setdefault(m.group(1), {})[(int(m.group(2)), m.group(3))] = file_sd.pop(k)
        for base, parts in fused.items():
            n_e = 1 + max(e for e, _ in parts)
            file_sd[base + "gate_up_proj"] = torch.stack(
                [torch.cat([parts[(e, "gate")], parts[(e, "up")]], 0) for e in range(n_e)]
            )
            file_sd[base + "down_proj"] = torch.stack([parts[(e, "down")] for e in range(n_e)])
    for k, v in file_sd.items():
        if k.startswith("mtp."):
            continue
        assert k in sd, k
        assert torch.equal(sd[k].to(v.dtype), v), k
    for k in sd:
        if k == "lm_head.weight" and "lm_head.weight" not in file_sd:
            assert torch.equal(sd[k], sd["model.embed_tokens.weight"])  # tied
            continue
        assert k in file_sd, f"{k} not in file"


def check_against_save_pretrained(model, tensors: dict, tmp: Path, per_expert: bool) -> None:
    """Our hand-written tensor names/values agree with what transformers' own writer produces."""
    d = tmp / "hf_save"
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(str(d))
    theirs = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for k in fh.keys():
                theirs[k] = fh.get_tensor(k)
    ours = {k: v for k, v in tensors.items() if not k.startswith("mtp.")}
    ours = split_experts(ours) if not per_expert else ours
    assert sorted(theirs) == sorted(ours), (sorted(set(theirs) ^ set(ours)))[:10]
    for k in ours:
        assert torch.equal(theirs[k].to(ours[k].dtype), ours[k]), k
    shutil.rmtree(d)


# --------------------------------------------------------------------------------------
# Fixture builders
# --------------------------------------------------------------------------------------


def build_dense_model() -> Qwen3_5ForConditionalGeneration:
    cfg = Qwen3_5Config(text_config=dict(DENSE_TEXT), vision_config=dict(VISION), tie_word_embeddings=False)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Qwen3_5ForConditionalGeneration(cfg)
    randomize_model(model, DENSE_SEED, tied=False)
    model.eval()
    return model


def build_moe_model() -> Qwen3_5MoeForCausalLM:
    cfg = Qwen3_5MoeTextConfig(**MOE_TEXT)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    model = Qwen3_5MoeForCausalLM(cfg)
    randomize_model(model, MOE_SEED, tied=True)
    model.eval()
    return model


def reference_record(kind: str, compute_dtype: str, short, long, g) -> dict:
    rec = {
        "fixture": kind,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "compute_dtype": compute_dtype,
        "device": "cpu",
        "attn_implementation": "eager",
        "short_prompt": short,
        "long_prompt": long,
        "greedy_prompt": short,
        "greedy_ids": g["ids"],
        "greedy_min_margin": round(g["min_margin"], 6),
        "greedy_margins": [round(x, 6) for x in g["margins"]],
        "greedy_nocache_matches": g["nocache_equal"],
        "greedy_cache_vs_nocache_max_abs_logit_diff": g["cache_vs_nocache_max_abs_logit_diff"],
        "greedy_eos_token_ids_ignored": sorted(EOS_IDS),
        "hf_code_paths_during_generate": g["paths"],
    }
    return rec


def finish_reference(d: Path, model, rec: dict, short, long, full: bool, g: dict) -> None:
    logits_short = forward_logits(model, short)
    np.save(d / "logits_short.npy", logits_short.numpy().astype(np.float32))
    np.save(d / "greedy_logits.npy", g["step_logits"].numpy().astype(np.float32))
    if full:
        PATH_LOG.clear()
        logits_long = forward_logits(model, long)
        rec["hf_code_paths_long_prefill"] = dict(sorted(PATH_LOG.items()))
        np.save(d / "logits_long.npy", logits_long.numpy().astype(np.float32))
        # prefix consistency: the first positions of the long prefill vs a prefill of just that prefix
        prefix_diff = float((logits_long[:SHORT_LEN] - forward_logits(model, long[:SHORT_LEN])).abs().max())
        rec["long_prefix13_vs_separate_prefill_max_abs_logit_diff"] = prefix_diff
        assert prefix_diff < 2e-3, prefix_diff
        hs, last_prenorm = hidden_states(model, short)
        np.save(d / "hidden_short.npy", hs.numpy().astype(np.float32))
        np.save(d / "last_layer_prenorm_short.npy", last_prenorm.numpy().astype(np.float32))
        # sanity: logits == final hidden @ lm_head^T
        lm = model.lm_head.weight.float()
        assert torch.allclose(hs[-1] @ lm.T, logits_short, atol=1e-4)
        # sdpa vs eager, for information
        model.set_attn_implementation("sdpa")
        rec["sdpa_vs_eager_max_abs_logit_diff_long"] = float((forward_logits(model, long) - logits_long).abs().max())
        model.set_attn_implementation("eager")
    rec["logits_short_abs_max"] = float(logits_short.abs().max())
    top2 = logits_short.topk(2, -1).values
    rec["logits_short_min_top1_margin"] = float((top2[:, 0] - top2[:, 1]).min())
    (d / "reference.json").write_text(compact_json(rec) + "\n")


def check_greedy(name: str, g: dict) -> None:
    log(f"  greedy ids: {g['ids']}")
    log(f"  min margin {g['min_margin']:.4f}  no-cache equal: {g['nocache_equal']}  paths: {g['paths']}")
    if not g["nocache_equal"]:
        log(f"  WARNING {name}: cached greedy {g['ids']} != no-cache greedy {g['nocache_ids']}")
    if g["min_margin"] < MIN_MARGIN_REQUIRED:
        raise SystemExit(f"{name}: greedy min margin {g['min_margin']} < {MIN_MARGIN_REQUIRED}; change the seed")
    if EOS_IDS & set(g["ids"]):
        raise SystemExit(f"{name}: greedy path contains an eos id; change the seed")
    want = {
        "torch_chunk_gated_delta_rule(seq_len=>1, initial_state=False)",
        "torch_recurrent_gated_delta_rule(seq_len=1, initial_state=True)",
        "causal_conv1d_fn(seq_len=>1)",
        "causal_conv1d_update(seq_len=1)",
    }
    assert want <= set(g["paths"]), g["paths"]


def make_dense(out: Path, tmp: Path, short, long) -> dict:
    summary = {}
    model = build_dense_model()
    sd = {k: v for k, v in model.state_dict().items()}
    tensors32 = contiguous(sd, torch.float32)
    tensors32.update(mtp_tensors(sd, DENSE_SEED))
    check_against_save_pretrained(model, tensors32, tmp, per_expert=True)

    variants = [
        ("tiny-dense-f32", torch.float32, "float32", False),
        ("tiny-dense-bf16", torch.bfloat16, "bfloat16", True),
        ("tiny-dense-f16", torch.float16, "float16", False),
    ]
    for name, dtype, dtype_name, sharded in variants:
        log(f"[{name}]")
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        tensors = contiguous(tensors32, dtype)
        write_config(model, d, dtype_name)
        if sharded:
            write_sharded(d, tensors, dense_shard_of)
        else:
            write_safetensors(d / "model.safetensors", tensors)

        # f32 compute on the (possibly half-rounded) weights, as the Rust engine does.
        m32 = load(Qwen3_5ForConditionalGeneration, d, torch.float32)
        check_loaded_weights(m32, contiguous(tensors, torch.float32), fused_from_split=False)
        g = greedy(m32, short)
        check_greedy(name, g)
        rec = reference_record(name, "float32", short, long, g)
        rec["weights_dtype"] = dtype_name
        rec["sharded"] = sharded
        if dtype != torch.float32:
            mh = load(Qwen3_5ForConditionalGeneration, d, dtype)
            gh = greedy(mh, short)
            rec["hf_native_half_greedy_ids"] = gh["ids"]
            rec["hf_native_half_greedy_matches_f32_compute"] = gh["ids"] == g["ids"]
            rec["hf_native_half_max_abs_logit_diff_short"] = float(
                (forward_logits(mh, short) - forward_logits(m32, short)).abs().max()
            )
            log(f"  native {dtype_name} greedy: {gh['ids']} (same: {gh['ids'] == g['ids']})")
            del mh
        finish_reference(d, m32, rec, short, long, full=(dtype == torch.float32), g=g)
        summary[name] = rec
        del m32
    return summary


def make_moe(out: Path, tmp: Path, short, long) -> dict:
    summary = {}
    model = build_moe_model()
    sd = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    tensors32 = contiguous(sd, torch.float32)
    # transformers 5.23's save_pretrained splits the experts per expert; check that our split matches it.
    check_against_save_pretrained(model, tensors32, tmp, per_expert=False)

    variants = [
        ("tiny-moe-f32", torch.float32, "float32", "fused"),
        ("tiny-moe-bf16", torch.bfloat16, "bfloat16", "per_expert"),
    ]
    for name, dtype, dtype_name, layout in variants:
        log(f"[{name}] experts: {layout}")
        d = out / name
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        tensors = contiguous(tensors32, dtype)
        if layout == "per_expert":
            tensors = split_experts(tensors)
        write_config(model, d, dtype_name)
        write_safetensors(d / "model.safetensors", tensors)

        m32 = load(Qwen3_5MoeForCausalLM, d, torch.float32)
        check_loaded_weights(m32, contiguous(tensors, torch.float32), fused_from_split=(layout == "per_expert"))
        g = greedy(m32, short)
        check_greedy(name, g)
        rec = reference_record(name, "float32", short, long, g)
        rec["weights_dtype"] = dtype_name
        rec["sharded"] = False
        rec["expert_layout"] = layout
        rec.update(router_stats(m32, short, long))
        if dtype != torch.float32:
            mh = load(Qwen3_5MoeForCausalLM, d, dtype)
            gh = greedy(mh, short)
            rec["hf_native_half_greedy_ids"] = gh["ids"]
            rec["hf_native_half_greedy_matches_f32_compute"] = gh["ids"] == g["ids"]
            rec["hf_native_half_max_abs_logit_diff_short"] = float(
                (forward_logits(mh, short) - forward_logits(m32, short)).abs().max()
            )
            log(f"  native {dtype_name} greedy: {gh['ids']} (same: {gh['ids'] == g['ids']})")
            del mh
        finish_reference(d, m32, rec, short, long, full=(dtype == torch.float32), g=g)
        summary[name] = rec
        del m32
    return summary


@torch.no_grad()
def router_stats(model, short, long) -> dict:
    """How varied / how robust expert selection is: distinct top-k sets per layer on the long prompt and the
    smallest gap between the k-th and (k+1)-th router logit over all tokens and layers (a near-tie there
    is where an engine with different rounding could route differently)."""
    out = {}
    for label, ids in (("short", short), ("long", long)):
        sets, min_gap = [], float("inf")

        def hook(mod, args, res):
            nonlocal min_gap
            logits = res[0].float()
            top = logits.topk(mod.top_k + 1, -1)
            min_gap = min(min_gap, (top.values[:, mod.top_k - 1] - top.values[:, mod.top_k]).min().item())
            sets.append(len({tuple(sorted(r)) for r in top.indices[:, : mod.top_k].tolist()}))

        hooks = [layer.mlp.gate.register_forward_hook(hook) for layer in text_model(model).layers]
        try:
            forward_logits(model, ids)
        finally:
            for h in hooks:
                h.remove()
        out[f"router_distinct_topk_sets_per_layer_{label}"] = sets
        out[f"router_min_logit_gap_kth_vs_next_{label}"] = round(min_gap, 6)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory (e.g. tests/fixtures)")
    ap.add_argument("--skip-version-check", action="store_true")
    args = ap.parse_args()

    versions = {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
    if versions != EXPECTED_VERSIONS and not args.skip_version_check:
        raise SystemExit(f"expected {EXPECTED_VERSIONS}, found {versions} (use --skip-version-check to override)")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    instrument_gdn_paths()
    transformers.logging.set_verbosity_error()

    args.out.mkdir(parents=True, exist_ok=True)
    short, long = make_prompts()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        summary = {}
        summary.update(make_dense(args.out, tmp, short, long))
        summary.update(make_moe(args.out, tmp, short, long))

    log("\nsummary:")
    for name, rec in summary.items():
        log(f"  {name:18s} min margin {rec['greedy_min_margin']:.4f}  nocache-equal {rec['greedy_nocache_matches']}")


if __name__ == "__main__":
    main()
