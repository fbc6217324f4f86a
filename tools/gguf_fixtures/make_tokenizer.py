#!/usr/bin/env python3
"""Write a tiny (320-id) byte-level BPE tokenizer for the tiny Qwen3.5 fixtures.

Only used by tools/make_gguf_fixtures.sh, on TEMPORARY copies of tests/fixtures/tiny-*:
llama.cpp's convert_hf_to_gguf.py needs a tokenizer in the model directory, the fixtures
have none (vocab_size 320).

Layout (ids), chosen so that the ids agree with the fixtures' generation_config.json
(bos 1, eos [2, 1], pad 1: "token 1 plays <|endoftext|>, token 2 plays <|im_end|>"):
  0 <|im_start|>  1 <|endoftext|>  2 <|im_end|>        (special, like Qwen3.5)
  3 <think>  4 </think>  5 <tool_call>  6 </tool_call>  (added, not special, like Qwen3.5)
  7..262    the 256 byte-level tokens, in the order of the real Qwen3.5 vocab ids 0..255
  263..319  the results of the FIRST 57 merges of the real Qwen3.5 tokenizer (real ids 256..312)
Normalizer (NFC), pre-tokenizer (Qwen3.5 Split regex + ByteLevel), post-processor and decoder are
copied from the real tokenizer in assets/qwen3.5-tokenizer/tokenizer.json.gz, so the tokenizer is
"Qwen3.5's, truncated to 313 BPE ids" and the pre-tokenizer really is qwen35's.
Deterministic: no training, only truncation. Built and saved with the `tokenizers` package.

usage: make_tokenizer.py REPO_ROOT OUT_DIR
"""
import gzip
import json
import sys
from pathlib import Path

from tokenizers import AddedToken, Tokenizer
from tokenizers.models import BPE

N_VOCAB = 320
SPECIALS = [  # (id, content, special)
    (0, "<|im_start|>", True),
    (1, "<|endoftext|>", True),
    (2, "<|im_end|>", True),
    (3, "<think>", False),
    (4, "</think>", False),
    (5, "<tool_call>", False),
    (6, "</tool_call>", False),
]
OFFSET = len(SPECIALS)
N_MERGES = N_VOCAB - OFFSET - 256  # 57


def main() -> None:
    repo, out = Path(sys.argv[1]), Path(sys.argv[2])
    real = json.loads(gzip.decompress((repo / "assets/qwen3.5-tokenizer/tokenizer.json.gz").read_bytes()))
    rv = real["model"]["vocab"]
    by_id = {i: t for t, i in rv.items()}
    vocab = {}
    for i in range(256 + N_MERGES):
        vocab[by_id[i]] = i + OFFSET
    merges = []
    for m in real["model"]["merges"][:N_MERGES]:
        a, b = m if isinstance(m, list) else m.split(" ")
        assert a in vocab and b in vocab, (a, b)
        assert rv[a + b] - 256 == len(merges), (a, b, rv[a + b])  # merge k produces real id 256+k
        merges.append((a, b))
    assert len(vocab) == 256 + N_MERGES
    # The special/added tokens must also be model-vocab entries: `tokenizers` gives an added token
    # the id the model has for its content, and otherwise appends it after the model's last id
    # (ignoring the id written in tokenizer.json).
    for i, c, _ in SPECIALS:
        vocab[c] = i

    model = BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None,
                continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                byte_fallback=False, ignore_merges=False)
    tok = Tokenizer(model)
    # copy the real pipeline pieces verbatim
    skeleton = json.loads(tok.to_str())
    for k in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        skeleton[k] = real[k]
    tok = Tokenizer.from_str(json.dumps(skeleton))
    # added tokens: tokenizers assigns ids in order starting after the largest model id, so add
    # them through the JSON with explicit ids instead, then round-trip through the package.
    skeleton = json.loads(tok.to_str())
    skeleton["added_tokens"] = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": s}
        for i, c, s in SPECIALS
    ]
    tok = Tokenizer.from_str(json.dumps(skeleton))
    assert tok.get_vocab_size(with_added_tokens=True) == N_VOCAB
    toks = [tok.id_to_token(i) for i in range(N_VOCAB)]
    assert None not in toks and len(set(toks)) == N_VOCAB, "ids must be exactly 0..319"
    assert tok.id_to_token(N_VOCAB) is None
    for i, c, _ in SPECIALS:
        assert tok.token_to_id(c) == i
    assert tok.encode("<|im_start|>user\nhi<|im_end|>").ids[0] == 0
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=True)

    chat_template = (repo / "tests/fixtures/chat-templates/qwen3.5.jinja").read_text(encoding="utf-8")
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": 4096,
        "added_tokens_decoder": {
            str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": s}
            for i, c, s in SPECIALS
        },
        "chat_template": chat_template,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
