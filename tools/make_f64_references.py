#!/usr/bin/env python3
"""Writes float64-exact reference logits for the F32 tiny fixtures.

Uses the independent NumPy forward pass of tools/check_fixtures_numpy.py (float64 throughout,
recurrent Gated DeltaNet) on the short and long prompts of each fixture's reference.json, and
saves them (rounded to float32) as logits_{short,long}_f64.npy beside transformers' own.
These let the Rust tests measure qinfer's error against the exact result, not only against
transformers' float32 rounding.

    python tools/make_f64_references.py tests/fixtures/tiny-dense-f32 tests/fixtures/tiny-moe-f32
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import check_fixtures_numpy as oracle  # noqa: E402

for d in map(Path, sys.argv[1:]):
    model = oracle.Model(d)
    ref = json.loads((d / "reference.json").read_text())
    for which in ("short", "long"):
        logits = np.asarray(model.forward(ref[f"{which}_prompt"]), dtype=np.float64)
        np.save(d / f"logits_{which}_f64.npy", logits.astype(np.float32))
        hf = np.load(d / f"logits_{which}.npy")
        print(f"{d.name} {which}: transformers f32 vs float64 max |diff| {np.abs(hf - logits).max():.3e}")
