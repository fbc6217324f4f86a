#!/usr/bin/env python3
"""MTP-head reference logits for the tiny dense fixtures (tools/qwen35_mtp.py's PyTorch block).

For each fixture directory: the trunk (transformers) runs the fixture's short prompt t[0..n);
the MTP block then runs over slots 0..n-2 (slot i: trunk hidden h[i] after the final norm,
token t[i+1], position i), then two draft steps past the prompt: slot n-1 with the trunk's
greedy next token g1, and slot n with the MTP's own output and the MTP's argmax d2. Writes
`mtp_logits.npy` ([n+1, V], f32: n-1 prompt slots + 2 draft slots) and `mtp_reference.json`
(tokens, positions, versions). F32 compute; a single thread.

    .venv-oracle/bin/python tools/make_mtp_reference.py tests/fixtures/tiny-dense-f32 tests/fixtures/tiny-dense-bf16
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from safetensors import safe_open
from transformers import Qwen3_5ForConditionalGeneration

from qwen35_mtp import Mtp, positions


@torch.no_grad()
def reference(d: Path) -> None:
    torch.set_num_threads(1)
    ref = json.loads((d / "reference.json").read_text())
    prompt = ref["short_prompt"]
    model = Qwen3_5ForConditionalGeneration.from_pretrained(str(d), dtype=torch.float32).eval()
    text = model.model.language_model
    cfg = text.config
    mtp = Mtp(cfg).eval()
    sd = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if k.startswith("mtp."):
                    sd[k[len("mtp."):]] = st.get_tensor(k).float()
    missing, unexpected = mtp.load_state_dict(sd, strict=True), None
    del missing, unexpected
    ids = torch.tensor([prompt])
    out = text(input_ids=ids, use_cache=False)
    h = out.last_hidden_state  # after the final norm
    lm_head = model.lm_head.weight.float()
    g1 = int((h[0, -1] @ lm_head.T).argmax())
    embed = text.embed_tokens.weight.float()
    n = len(prompt)

    def run(hidden, toks, start):
        pe = text.rotary_emb(hidden, positions(hidden.shape[1], start))
        return mtp(hidden, embed[torch.tensor([toks])], pe)

    # Whole sequence at once: slots 0..n-1 (prompt slots + the first draft slot).
    toks = prompt[1:] + [g1]
    hm = run(h, toks, 0)  # [1, n, H]
    logits = hm[0] @ lm_head.T  # [n, V]
    d2 = int(logits[-1].argmax())
    # Second draft slot: the MTP's own output as the hidden state, continuing the causal
    # context (recompute over n + 1 slots: the block is causal, earlier rows are unchanged).
    h2 = torch.cat([h, hm[:, -1:]], 1)
    hm2 = run(h2, toks + [d2], 0)
    assert torch.allclose(hm2[0, :n], hm[0], atol=1e-5)
    logits2 = hm2[0, -1:] @ lm_head.T
    all_logits = torch.cat([logits, logits2], 0).numpy().astype(np.float32)
    np.save(d / "mtp_logits.npy", all_logits)
    (d / "mtp_reference.json").write_text(
        json.dumps(
            {
                "prompt": prompt,
                "slot_tokens": toks + [d2],
                "greedy_next": g1,
                "mtp_draft2": int(all_logits[-1].argmax()),
                "rows": "slots 0..n-1 use the trunk's hidden states; slot n uses the MTP output of slot n-1",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "compute_dtype": "float32",
            },
            indent=1,
        )
        + "\n"
    )
    print(d, all_logits.shape, "g1", g1, "d2", d2)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        reference(Path(arg))
