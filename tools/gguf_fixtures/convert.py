#!/usr/bin/env python3
"""Run llama.cpp's own convert_hf_to_gguf.py with ONE documented change.

usage: convert.py LLAMA_CPP_DIR [convert_hf_to_gguf.py arguments...]

The converter picks `tokenizer.ggml.pre` by hashing the token ids that the model's tokenizer
produces for a fixed test string (TextModel.get_vocab_base_pre) and raises NotImplementedError
for an unknown hash. The tiny fixtures' 320-id tokenizer (tools/gguf_fixtures/make_tokenizer.py)
uses Qwen3.5's exact normalizer and pre-tokenizer regex, but its ids cannot reproduce the hash
of the 248k-id Qwen3.5 vocab. So when, and only when, the hash is unknown, this wrapper returns
"qwen35" (override with GGUF_FIXTURE_TOKENIZER_PRE) and logs the hash. Everything else is the
unmodified upstream code path.
"""
import logging
import os
import runpy
import sys
from pathlib import Path

llama_dir = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(llama_dir))
if "NO_LOCAL_GGUF" not in os.environ:
    sys.path.insert(1, str(llama_dir / "gguf-py"))

import conversion.base as base  # noqa: E402  (the vendored converter package)

_orig = base.TextModel.get_vocab_base_pre
_log = logging.getLogger("gguf-fixtures")


def _get_vocab_base_pre(self, tokenizer):
    try:
        return _orig(self, tokenizer)
    except NotImplementedError:
        from hashlib import sha256
        # same string and hash as upstream, recomputed only for the log line
        import inspect
        src = inspect.getsource(_orig)
        chktxt = eval(src.split("chktxt = ", 1)[1].split("\n", 1)[0])  # noqa: S307 (upstream literal)
        chkhsh = sha256(str(tokenizer.encode(chktxt)).encode()).hexdigest()
        pre = os.environ.get("GGUF_FIXTURE_TOKENIZER_PRE", "qwen35")
        _log.warning("gguf-fixtures: unknown pre-tokenizer hash %s -> forcing tokenizer.ggml.pre=%r", chkhsh, pre)
        return pre


base.TextModel.get_vocab_base_pre = _get_vocab_base_pre

script = llama_dir / "convert_hf_to_gguf.py"
sys.argv = [str(script)] + sys.argv[2:]
runpy.run_path(str(script), run_name="__main__")
