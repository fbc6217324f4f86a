#!/usr/bin/env python3
"""YaRN references from HF transformers, for qinfer's rope-scaling tests.

Writes tests/fixtures/yarn/:

* `inv_freq_qwen36.npy` and `reference.json` (`attention_factor`): transformers'
  `_compute_yarn_parameters` for Qwen3.6-27B's rotary setup (head_dim 256, partial rotary 0.25,
  theta 1e7) at factor 4 over 262,144 tokens, as its model card suggests for ~1M context.
* `config.json`: tests/fixtures/tiny-dense-f32's config with `rope_type: "yarn"`, factor 4,
  `original_max_position_embeddings` 64 (so the 157-token long prompt crosses it).
* `logits_long.npy`: that model's logits over the fixture's `long_prompt` (f32 weights, eager
  attention, one thread), and in `reference.json` greedy ids from a 50-token prompt.

Same oracle environment as tools/make_tiny_models.py (tools/requirements.txt):

    .venv-oracle/bin/python tools/make_yarn_reference.py
"""

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import Qwen3_5ForConditionalGeneration, Qwen3_5TextConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
SRC = FIXTURES / "tiny-dense-f32"
OUT = FIXTURES / "yarn"
YARN_TINY = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
N_GREEDY = 32


def qwen36_inv_freq():
    cfg = Qwen3_5TextConfig(
        hidden_size=5120,
        num_attention_heads=24,
        num_key_value_heads=4,
        head_dim=256,
        max_position_embeddings=262144,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000000,
            "partial_rotary_factor": 0.25,
            "mrope_section": [11, 11, 10],
            "mrope_interleaved": True,
            "factor": 4.0,
            "original_max_position_embeddings": 262144,
        },
    )
    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](cfg)
    return inv_freq.float().numpy(), float(attention_factor)


@torch.no_grad()
def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    inv_freq, attention_factor = qwen36_inv_freq()
    np.save(OUT / "inv_freq_qwen36.npy", inv_freq.astype(np.float32))

    ref = json.loads((SRC / "reference.json").read_text())
    cfg = json.loads((SRC / "config.json").read_text())
    cfg["text_config"]["rope_parameters"].update(YARN_TINY)
    (OUT / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        for f in ["config.json", "generation_config.json"]:
            shutil.copy(OUT / f if f == "config.json" else SRC / f, Path(tmp) / f)
        shutil.copy(SRC / "model.safetensors", Path(tmp) / "model.safetensors")
        model = Qwen3_5ForConditionalGeneration.from_pretrained(
            tmp, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        rotary = model.model.language_model.rotary_emb
        assert rotary.rope_type == "yarn", rotary.rope_type
        long_prompt = ref["long_prompt"]
        logits = model(input_ids=torch.tensor([long_prompt]), use_cache=False).logits[0].float()
        np.save(OUT / "logits_long.npy", logits.numpy().astype(np.float32))
        greedy_prompt = long_prompt[:50]
        seq = list(greedy_prompt)
        margins = []
        for _ in range(N_GREEDY):
            last = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1].float()
            top = torch.topk(last, 2).values
            margins.append(float(top[0] - top[1]))
            seq.append(int(last.argmax()))
    (OUT / "reference.json").write_text(json.dumps({
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "weights": "tests/fixtures/tiny-dense-f32/model.safetensors",
        "tiny_rope_parameters": YARN_TINY,
        "long_prompt": long_prompt,
        "greedy_prompt": greedy_prompt,
        "greedy_ids": seq[len(greedy_prompt):],
        "greedy_min_margin": min(margins),
        "qwen36_yarn": {"rope_theta": 1e7, "rotary_dim": 64, "factor": 4.0,
                        "original_max_position_embeddings": 262144,
                        "attention_factor": attention_factor},
    }, indent=2) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
