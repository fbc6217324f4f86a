#!/usr/bin/env python3
"""Transformers reference for the built-in demo model (run by tools/make_demo_model.sh).

    python demo_reference.py DEMO.gguf TRAIN_OUT OUT.json

transformers (float32) computes on exactly the demo GGUF's weights (dequantized by the gguf
package, mapped back to the Hugging Face layout: make_gguf_quant_reference.py): the held-out
windows' negative log-likelihoods (perplexity) and a greedy answer to a chat prompt. The
trained F32 model's own figures (perplexity, probability mass on unused vocabulary rows) come
from train_demo.py's TRAIN_OUT/heldout.json and are copied beside them.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import jinja2
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import Qwen3_5ForCausalLM

from make_gguf_quant_reference import dequantized_state_dict

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"
QUESTION = "What is a list comprehension?"
N_GREEDY = 48


@torch.no_grad()
def main() -> None:
    gguf_path, train_out, out_json = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(2)
    sd, _, replaced = dequantized_state_dict(gguf_path, train_out / "hf")
    held = json.loads((train_out / "heldout.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for f in ("config.json", "generation_config.json"):
            shutil.copy(train_out / "hf" / f, tmp)
        save_file({k: v.contiguous() for k, v in sd.items() if not k.startswith("mtp.")}, f"{tmp}/model.safetensors")
        model = Qwen3_5ForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    ids = held["heldout_ids"]
    n, w = held["windows"], held["window_len"]
    sums = []
    for i in range(n):
        x = torch.tensor([ids[i * w : (i + 1) * w]])
        lp = torch.log_softmax(model(input_ids=x, use_cache=False).logits[0].double(), -1)
        sums.append(float(-lp[:-1].gather(1, x[0, 1:, None]).sum()))
    ppl = math.exp(sum(sums) / (n * (w - 1)))

    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(RuntimeError(m))
    template = env.from_string((SHARED / "chat-templates" / "qwen3.5.jinja").read_text())
    text = template.render(
        messages=[{"role": "user", "content": QUESTION}], add_generation_prompt=True, enable_thinking=False
    )
    tok = Tokenizer.from_file(str(SHARED / "qwen3.5-tokenizer" / "tokenizer.json"))
    prompt = tok.encode(text, add_special_tokens=False).ids
    seq, margins = list(prompt), []
    for _ in range(N_GREEDY):
        logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        top = logits.topk(2).values
        margins.append(float(top[0] - top[1]))
        seq.append(int(logits.argmax()))
    answer = seq[len(prompt) :]
    out_json.write_text(
        json.dumps(
            {
                "source": f"transformers (float32) on the dequantized weights of the demo GGUF ({replaced} quantized tensors)",
                "heldout_windows": n,
                "heldout_window_len": w,
                "heldout_ids": ids[: n * w],
                "window_nll_sums": sums,
                "perplexity_q8_0": ppl,
                "perplexity_f32": held["perplexity"],
                "unused_mass_mean_f32": held["unused_mass_mean"],
                "unused_mass_max_f32": held["unused_mass_max"],
                "used_vocabulary": held["n_used"],
                "greedy_question": QUESTION,
                "greedy_prompt": prompt,
                "greedy_ids": answer,
                "greedy_text": tok.decode(answer),
                "greedy_min_margin": min(margins),
            }
        )
        + "\n"
    )
    print(f"perplexity q8_0 {ppl:.3f} (f32 {held['perplexity']:.3f}); greedy: {tok.decode(answer)!r}")


if __name__ == "__main__":
    main()
