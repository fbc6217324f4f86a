#!/usr/bin/env python3
"""Transformers reference for a quantized GGUF fixture: the same model computed on exactly the
quantized weights.

Starts from the fixture's original safetensors, replaces every tensor that the GGUF stores
quantized by its dequantized values (gguf-py's reference dequantizer, which qinfer's decoders
match bit for bit), mapped back to the Hugging Face layout (undoing the converter's value-head
reorder), then runs transformers in float32 and writes the logits of the short prompt and the
greedy ids. qinfer must match this to float32 rounding, as for the unquantized models.

    python tools/make_gguf_quant_reference.py tests/fixtures/gguf/tiny-dense-q8_0.gguf tests/fixtures/tiny-dense-f32
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import dequantize
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoModelForCausalLM

def dequantized_state_dict(gguf_path: Path, hf_dir: Path):
    """The checkpoint in `hf_dir` with every tensor the GGUF stores quantized replaced by its
    dequantized values, mapped back to the Hugging Face layout. Returns (state dict, config,
    number of tensors replaced)."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    nk, nv, dv = text["linear_num_key_heads"], text["linear_num_value_heads"], text["linear_value_head_dim"]
    key_dim = nk * text["linear_key_head_dim"]
    r = nv // nk
    prefix = "model.language_model." if "text_config" in cfg else "model."

    # GGUF value head i*nk + k holds HF head k*r + i; `inv[hf] = gguf` undoes it.
    perm = [k * r + i for i in range(r) for k in range(nk)]
    inv = np.argsort(perm)


    def ungroup_rows(x, d):
        """Rows laid out as nv heads of d (tiled order) -> HF grouped order."""
        return x.reshape(nv, d, *x.shape[1:])[inv].reshape(x.shape)


    names = {
        "token_embd.weight": "embed_tokens.weight", "output.weight": None,
        "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
        "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
        "attn_qkv.weight": "linear_attn.in_proj_qkv.weight", "attn_gate.weight": "linear_attn.in_proj_z.weight",
        "ssm_beta.weight": "linear_attn.in_proj_b.weight", "ssm_alpha.weight": "linear_attn.in_proj_a.weight",
        "ssm_out.weight": "linear_attn.out_proj.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
        "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
    }

    sd = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        sd.update(load_file(f))
    n_layers = text["num_hidden_layers"]
    replaced = 0
    for t in GGUFReader(gguf_path).tensors:
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16):
            continue
        w = dequantize(t.data, t.tensor_type).astype(np.float32)  # row-major [rows, cols]
        parts = t.name.split(".")
        if parts[0] == "blk":
            layer, short = int(parts[1]), ".".join(parts[2:])
            if layer >= n_layers:
                continue  # MTP block: not part of the transformers model
            hf = f"{prefix}layers.{layer}.{names[short]}"
            if short == "attn_qkv.weight":
                w = np.concatenate([w[: 2 * key_dim], ungroup_rows(w[2 * key_dim:], dv)])
            elif short == "attn_gate.weight":
                w = ungroup_rows(w, dv)
            elif short in ("ssm_beta.weight", "ssm_alpha.weight"):
                w = ungroup_rows(w, 1)
            elif short == "ssm_out.weight":
                w = ungroup_rows(w.T, dv).T
        elif t.name == "output.weight":
            hf = "lm_head.weight"
        else:
            hf = prefix + names[t.name]
        assert sd[hf].shape == tuple(w.shape), (t.name, hf, sd[hf].shape, w.shape)
        sd[hf] = torch.from_numpy(np.ascontiguousarray(w))
        replaced += 1
    return sd, cfg, replaced


def main():
    gguf_path, hf_dir = Path(sys.argv[1]), Path(sys.argv[2])
    sd, cfg, replaced = dequantized_state_dict(gguf_path, hf_dir)
    ref = json.loads((hf_dir / "reference.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("config.json", "generation_config.json"):
            shutil.copy(hf_dir / f, tmp)
        save_file({k: v.contiguous() for k, v in sd.items()}, f"{tmp}/model.safetensors")
        cls = AutoModelForImageTextToText if "text_config" in cfg else AutoModelForCausalLM
        model = cls.from_pretrained(tmp, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(torch.tensor([ref["short_prompt"]])).logits[0].float().numpy()
            ids = torch.tensor([ref["greedy_prompt"]])
            out = model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    stem = gguf_path.name.removesuffix(".gguf")
    np.save(gguf_path.parent / f"{stem}.logits_short.npy", logits.astype(np.float32))
    (gguf_path.parent / f"{stem}.reference.json").write_text(json.dumps({
        "source": f"transformers on the dequantized weights of {gguf_path.name} ({replaced} quantized tensors)",
        "short_prompt": ref["short_prompt"], "greedy_prompt": ref["greedy_prompt"],
        "greedy_ids": out[0, len(ref["greedy_prompt"]):].tolist(),
    }, indent=1))
    print(f"{replaced} tensors replaced; logits max |diff| vs unquantized: "
          f"{np.abs(logits - np.load(hf_dir / 'logits_short.npy')).max():.3f}")


if __name__ == "__main__":
    main()
