#!/usr/bin/env python3
"""Train qinfer's built-in demo model: a small Qwen3.5-structured model with an MTP head.

The model has the exact structure of the Qwen3.5 family (Gated DeltaNet + gated attention,
zero-centred norms, partial interleaved MRoPE, tied embeddings like the 0.8B, one MTP block
trained jointly with the trunk), the real Qwen3.5 tokenizer and vocabulary (248,320 rows) and
chat template. It is trained on the CPU, on text that Debian ships:

* English: the Python documentation sources, package `python3-doc` 3.11.2-1
  (/usr/share/doc/python3.11/html/_sources/**/*.rst.txt);
* code: the Python standard library, package `libpython3.11-stdlib` 3.11.2-6+deb12u7
  (/usr/lib/python3.11/*.py);
* chats: (section title -> first paragraph) pairs from the same documentation, rendered with
  the real Qwen3.5 chat template (half with a short thinking block, half with thinking off).

Files whose CRC-32 of the relative path is 0 mod 50 are held out (perplexity).

Vocabulary: only the tokens that occur in the training text ("used", ~tens of thousands) get
their own embedding rows; every other row of the 248,320 is one shared trained vector `u`.
The training loss is the exact full-vocabulary softmax (the unused rows enter as one logit
`u.h + ln(n_unused)`), so training itself drives the probability of unused tokens down; the
script reports that mass on held-out text. Identical rows also make the shipped file compress
to the size of the used rows.

Usage (tools/requirements.txt's environment, plus `apt-get install python3-doc`):

    python tools/train_demo.py --out /tmp/demo --steps 1800         # ~1 h on 2 vCPUs
    python tools/train_demo.py --out /tmp/demo --eval-only          # perplexity of the export

Writes OUT/hf (config.json, generation_config.json, model.safetensors with `mtp.*`, F32),
OUT/heldout.json (held-out token ids and transformers' perplexity) and OUT/draft_vocab.json
(used token ids, most frequent first).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import time
import zlib
from collections import Counter
from pathlib import Path

import jinja2
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import nn
from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

from qwen35_mtp import Mtp, positions

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "fixtures"
DOCS = Path("/usr/share/doc/python3.11/html/_sources")
STDLIB = Path("/usr/lib/python3.11")

VOCAB = 248320
ENDOFTEXT, IM_START, IM_END = 248044, 248045, 248046
CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=256,
    num_hidden_layers=4,
    layer_types=["linear_attention"] * 3 + ["full_attention"],
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    hidden_act="silu",
    intermediate_size=768,
    rope_parameters=dict(
        rope_type="default",
        rope_theta=10000000,
        partial_rotary_factor=0.25,
        mrope_section=[3, 3, 2],
        mrope_interleaved=True,
    ),
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=64,
    linear_value_head_dim=64,
    linear_conv_kernel_dim=4,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    attention_bias=False,
    tie_word_embeddings=True,
    eos_token_id=IM_END,
    bos_token_id=ENDOFTEXT,
    pad_token_id=ENDOFTEXT,
)
CONFIG_EXTRA = dict(
    architectures=["Qwen3_5ForCausalLM"],
    model_type="qwen3_5_text",
    attn_output_gate=True,
    mtp_num_hidden_layers=1,
    mtp_use_dedicated_embeddings=False,
    partial_rotary_factor=0.25,
    full_attention_interval=4,
)
GENERATION_CONFIG = {
    "bos_token_id": ENDOFTEXT,
    "eos_token_id": [IM_END, ENDOFTEXT],
    "pad_token_id": ENDOFTEXT,
    "do_sample": True,
    "temperature": 0.7,
    "top_k": 20,
    "top_p": 0.8,
}
SEQ = 256
BATCH = 16
MTP_WEIGHT = 0.3
SEED = 5150
HELDOUT_WINDOWS, HELDOUT_LEN = 8, 512
MIN_COUNT = 4  # rarer tokens share the unused row (their probability is still exact)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def held_out(rel: str) -> bool:
    return zlib.crc32(rel.encode()) % 50 == 0


def clean_rst(text: str) -> str:
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and len(set(s)) == 1 and s[0] in "=-~^*#+'\"`:.":
            continue  # heading underline
        if s.startswith(".. ") or s.startswith(":") and s.endswith(":"):
            continue  # directive / field list
        out.append(line.rstrip())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def chat_pairs(text: str):
    """(title, first paragraph) of each section of an .rst file."""
    lines = text.splitlines()
    for i in range(1, len(lines) - 1):
        title, under = lines[i - 1].strip(), lines[i].strip()
        if not title or not under or len(set(under)) != 1 or under[0] not in "=-~^*":
            continue
        if len(under) < len(title) or title.startswith(".."):
            continue
        para, j = [], i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        while j < len(lines) and lines[j].strip() and not lines[j].startswith(".."):
            para.append(lines[j].strip())
            j += 1
        p = " ".join(para)
        if 80 <= len(p) <= 900 and not p.startswith((":", "*", "+", "|")):
            yield title.strip("`*:"), p


def corpus():
    """(relative name, kind, text) of every source document, in a fixed order."""
    for f in sorted(DOCS.rglob("*.rst.txt")):
        yield "docs/" + str(f.relative_to(DOCS)), "rst", f.read_text(errors="replace")
    for f in sorted(STDLIB.glob("*.py")):
        yield "stdlib/" + f.name, "py", f.read_text(errors="replace")


def render_chat(env_template, title: str, answer: str, rng: random.Random) -> str:
    question = rng.choice(["What is {}?", "Tell me about {}.", "Explain {}.", "{}?", "Can you describe {}?"])
    think = rng.random() < 0.5
    prompt = env_template.render(
        messages=[{"role": "user", "content": question.format(title)}],
        add_generation_prompt=True,
        enable_thinking=think,
    )
    if think:
        prompt += f"The user asks about {title}. I will explain it briefly.\n</think>\n\n"
    return prompt + answer + "<|im_end|>\n"


def build_streams(tok: Tokenizer):
    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = lambda m: (_ for _ in ()).throw(RuntimeError(m))
    template = env.from_string((SHARED / "chat-templates" / "qwen3.5.jinja").read_text())
    rng = random.Random(SEED)
    train, held = [], []
    for rel, kind, text in corpus():
        docs = []
        if kind == "rst":
            docs.append(clean_rst(text))
            docs += [render_chat(template, t, a, rng) for t, a in chat_pairs(text)]
        else:
            docs.append(text)
        for d in docs:
            ids = tok.encode(d, add_special_tokens=False).ids + [ENDOFTEXT]
            (held if held_out(rel) else train).extend(ids)
    return train, held


def cosine(step: int, steps: int, peak: float) -> float:
    warm = 100
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


class Demo(nn.Module):
    """The trunk (transformers' own Qwen3.5 text model), the MTP block, and the tied
    embedding as `used` rows plus one shared row for every unused token."""

    def __init__(self, config, n_used: int):
        super().__init__()
        self.trunk = Qwen3_5ForCausalLM(config).model
        self.trunk.embed_tokens = None  # replaced by `used` + `unused`
        self.mtp = Mtp(config)
        self.used = nn.Parameter(torch.randn(n_used, config.hidden_size) * 0.02)
        self.unused = nn.Parameter(torch.zeros(config.hidden_size))
        self.log_n_unused = math.log(VOCAB - n_used)

    def logits(self, h):
        w = torch.cat([self.used, self.unused[None]], 0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = (h @ w.T).float()
        return torch.cat([z[..., :-1], z[..., -1:] + self.log_n_unused], -1)

    def forward(self, x):
        """x: [B, T] compact ids (n_used = the unused class). Returns (main, mtp) losses."""
        emb = torch.cat([self.used, self.unused[None]], 0)[x]
        h = self.trunk(inputs_embeds=emb, use_cache=False).last_hidden_state
        main = nn.functional.cross_entropy(self.logits(h[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        t = x.shape[1]
        pe = self.trunk.rotary_emb(h, positions(t - 1).expand(3, x.shape[0], -1))
        hm = self.mtp(h[:, :-1], emb[:, 1:], pe)  # slot i: (h[i], t[i+1]) -> t[i+2]
        # Every other slot: the head's softmax is most of the cost, and the slots are correlated.
        mtp = nn.functional.cross_entropy(self.logits(hm[:, :-1:2]).flatten(0, 1), x[:, 2::2].flatten())
        return main, mtp


def export(model: Demo, used_ids: list, out: Path, config) -> None:
    h = config.hidden_size
    embed = model.unused.detach()[None].expand(VOCAB, h).clone()
    embed[torch.tensor(used_ids)] = model.used.detach()
    sd = {"model.embed_tokens.weight": embed}
    for k, v in model.trunk.state_dict().items():
        sd["model." + k] = v
    for k, v in model.mtp.state_dict().items():
        sd["mtp." + k] = v
    sd = {k: v.detach().float().contiguous() for k, v in sd.items() if "rotary_emb" not in k}
    out.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads(config.to_json_string())
    cfg.update(CONFIG_EXTRA)
    cfg.pop("transformers_version", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (out / f).write_bytes((SHARED / "qwen3.5-tokenizer" / f).read_bytes())
    (out / "chat_template.jinja").write_bytes((SHARED / "chat-templates" / "qwen3.5.jinja").read_bytes())


@torch.no_grad()
def evaluate(out: Path, held: list, used_ids: list) -> dict:
    """Perplexity of the exported checkpoint through transformers' full-vocabulary forward,
    the probability mass on unused rows, and MTP top-1 agreement with the trunk's next token."""
    model = Qwen3_5ForCausalLM.from_pretrained(str(out / "hf"), dtype=torch.float32).eval()
    used = torch.zeros(VOCAB, dtype=torch.bool)
    used[torch.tensor(used_ids)] = True
    nlls, masses = [], []
    for w in range(HELDOUT_WINDOWS):
        ids = torch.tensor([held[w * HELDOUT_LEN : (w + 1) * HELDOUT_LEN]])
        lp = torch.log_softmax(model(input_ids=ids, use_cache=False).logits[0].double(), -1)
        nlls.append(-lp[:-1].gather(1, ids[0, 1:, None])[:, 0])
        masses.append(lp[:, ~used].exp().sum(-1))
    nll = torch.cat(nlls).mean().item()
    mass = torch.cat(masses)
    return {
        "windows": HELDOUT_WINDOWS,
        "window_len": HELDOUT_LEN,
        "perplexity": math.exp(nll),
        "mean_nll": nll,
        "unused_mass_mean": mass.mean().item(),
        "unused_mass_max": mass.max().item(),
        "n_used": len(used_ids),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1800)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-only", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(str(SHARED / "qwen3.5-tokenizer" / "tokenizer.json"))
    log("tokenizing")
    train, held = build_streams(tok)
    counts = Counter(train)
    for t in (ENDOFTEXT, IM_START, IM_END):
        counts[t] += MIN_COUNT
    used_ids = [t for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= MIN_COUNT]
    log(f"train {len(train)} tokens, held out {len(held)}, used vocabulary {len(used_ids)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "draft_vocab.json").write_text(json.dumps(used_ids) + "\n")
    config = Qwen3_5TextConfig(**CONFIG)
    if not args.eval_only:
        compact = {t: i for i, t in enumerate(used_ids)}
        data = torch.tensor([compact.get(t, len(used_ids)) for t in train])
        model = Demo(config, len(used_ids))
        decay = [p for n, p in model.named_parameters() if p.ndim == 2]
        rest = [p for n, p in model.named_parameters() if p.ndim != 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
            lr=args.lr,
            betas=(0.9, 0.95),
        )
        gen = torch.Generator().manual_seed(SEED)
        t0 = time.time()
        for step in range(args.steps):
            starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
            x = torch.stack([data[s : s + SEQ + 1] for s in starts])
            for g in opt.param_groups:
                g["lr"] = cosine(step, args.steps, args.lr)
            main_loss, mtp_loss = model(x)
            loss = main_loss + MTP_WEIGHT * mtp_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % 25 == 0 or step == args.steps - 1:
                el = time.time() - t0
                log(
                    f"step {step} main {main_loss.item():.3f} mtp {mtp_loss.item():.3f} "
                    f"{(step + 1) * BATCH * SEQ / el:.0f} tok/s, {el / 60:.1f} min"
                )
        export(model, used_ids, args.out / "hf", config)
    report = evaluate(args.out, held, used_ids)
    report["heldout_ids"] = held[: HELDOUT_WINDOWS * HELDOUT_LEN]
    (args.out / "heldout.json").write_text(json.dumps(report) + "\n")
    log({k: v for k, v in report.items() if k != "heldout_ids"})


if __name__ == "__main__":
    main()
