#!/usr/bin/env python3
"""Build the tiny random-weight Qwen3.5 vision-language fixture `tiny-vl-f32` and its HF references.

Why: the text fixtures (`make_tiny_models.py`) carry a vision tower that no reference uses. This
fixture exercises the whole image path of a Qwen3.5/3.6 checkpoint against transformers on CPU:
image preprocessing (smart_resize, bicubic resize, normalisation, block-major patchify), the
vision tower (Conv3d patch embedding, bilinear-resampled learned position table, 2-D axial RoPE,
per-image bidirectional attention, patch merger), placement of the merged vision tokens in the
prompt, MRoPE (t, h, w) prompt positions from `get_rope_index`, and decode positions after images
(`rope_deltas`).

What it writes to `<out>/tiny-vl-f32/` (see tests/fixtures/README.md, section "tiny-vl-f32"):

* `config.json` / `generation_config.json`: `Qwen3_5ForConditionalGeneration`, float32. The
  text part is `tiny-dense-f32`'s (with `mtp_num_hidden_layers: 0`), the vision tower has
  depth 2, hidden 32, patch 16 and an 8x8 position table. Image/vision token ids lie inside the
  320-token vocabulary (248..251).
* `model.safetensors` (F32). The text weights are bit-identical to `tiny-dense-f32`'s (same seed,
  same per-tensor generators); the `model.visual.*` tensors come from their own seed.
* `preprocessor_config.json`: the official Qwen3.5 image-processor settings with a small size
  range (32*32 .. 96*96 pixels).
* `image_a.png` (100x60) and `image_b.png` (50x130): synthetic RGB images.
* Reference outputs (`*.npy`, `reference.json`) computed by transformers in float32 on CPU with
  eager attention and one thread.

Usage (same environment as make_tiny_models.py, pinned in tools/requirements.txt):

    .venv-oracle/bin/python tools/make_tiny_vl_model.py --out tests/fixtures

Deterministic: seeded weights and images, one CPU thread, stable file order. Run after
make_tiny_models.py (it checks that the text weights and text config equal tiny-dense-f32's).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL
import safetensors
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from safetensors import safe_open
from transformers import AutoImageProcessor, GenerationConfig, Qwen3_5Config, Qwen3_5ForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_tiny_models as T  # noqa: E402  (shared text config, weight rules and helpers)

EXPECTED_VERSIONS = {"torch": "2.15.0", "transformers": "5.23.0", "pillow": "13.0.0"}
NAME = "tiny-vl-f32"

# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------

TEXT = dict(T.DENSE_TEXT, mtp_num_hidden_layers=0)  # no mtp.* tensors in this fixture

VISION = dict(
    depth=2,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    in_channels=3,
    patch_size=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
    out_hidden_size=T.HIDDEN,
    num_position_embeddings=64,  # 8x8 table
    hidden_act="gelu_pytorch_tanh",
    rope_parameters=dict(rope_type="axial", rope_theta=10000.0),
)

TOKEN_IDS = dict(vision_start_token_id=248, vision_end_token_id=249, image_token_id=250, video_token_id=251)
VS, VE, IMG = TOKEN_IDS["vision_start_token_id"], TOKEN_IDS["vision_end_token_id"], TOKEN_IDS["image_token_id"]

PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen3VLProcessor",
    "do_convert_rgb": True,
    "do_resize": True,
    "do_rescale": True,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "merge_size": 2,
    "patch_size": 16,
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 1024, "longest_edge": 9216},  # 32*32 .. 96*96 pixels
    "temporal_patch_size": 2,
}

TEXT_SEED = T.DENSE_SEED  # text weights identical to tiny-dense-f32
VISION_SEED = 4242
IMAGE_SEEDS = {"a": 51, "b": 52}
IMAGE_SIZES = {"a": (100, 60), "b": (50, 130)}  # (height, width)
EXPECTED_GRIDS = {"a": [1, 6, 4], "b": [1, 4, 8]}
N_GREEDY = 8
MAX_FIXTURE_BYTES = 3_000_000


def log(*a):
    print(*a, flush=True)


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def vision_tensor(name: str, shape) -> torch.Tensor:
    g = T.gen_for(VISION_SEED, name)
    shape = tuple(shape)
    if name.endswith(".bias"):
        return T.normal(shape, 0.1, g)  # all vision biases (Linear, Conv3d, LayerNorm)
    if "norm" in name:  # LayerNorm weights: norm1, norm2, merger.norm
        return T.normal(shape, 0.1, g, mean=1.0)
    if name.endswith("pos_embed.weight"):
        return T.normal(shape, 1.0, g)
    fan_in = int(np.prod(shape[1:]))  # Linear [out, in]; Conv3d [out, 3, 2, 16, 16] -> 1536
    return T.normal(shape, 1.0 / math.sqrt(fan_in), g)


def build_model() -> Qwen3_5ForConditionalGeneration:
    cfg = Qwen3_5Config(
        text_config=dict(TEXT), vision_config=dict(VISION), tie_word_embeddings=False, **TOKEN_IDS
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Qwen3_5ForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.visual."):
                p.copy_(vision_tensor(name, p.shape))
            else:
                p.copy_(T.random_tensor(name, p.shape, TEXT_SEED, tied=False))
    model.eval()
    return model


def check_text_part_equals_dense(d: Path, tensors: dict, dense_dir: Path) -> None:
    """Text config and text weights are tiny-dense-f32's (so text-only behaviour is shared)."""
    ours = json.loads((d / "config.json").read_text())["text_config"]
    theirs = json.loads((dense_dir / "config.json").read_text())["text_config"]
    assert ours["mtp_num_hidden_layers"] == 0 and theirs["mtp_num_hidden_layers"] == 1
    ours = dict(ours, mtp_num_hidden_layers=None)
    theirs = dict(theirs, mtp_num_hidden_layers=None)
    assert ours == theirs, sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    n = 0
    with safe_open(str(dense_dir / "model.safetensors"), "pt") as fh:
        for k in fh.keys():
            if k.startswith("model.language_model.") or k == "lm_head.weight":
                assert torch.equal(fh.get_tensor(k), tensors[k]), k
                n += 1
    assert n == sum(1 for k in tensors if not k.startswith("model.visual.")), n


# --------------------------------------------------------------------------------------
# Images and preprocessing
# --------------------------------------------------------------------------------------


def make_image(h: int, w: int, seed: int) -> np.ndarray:
    """uint8 [h, w, 3]: colour gradients, diagonal stripes, a dark box and seeded noise."""
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255.0 * x / (w - 1)
    g = 255.0 * y / (h - 1)
    b = 127.5 + 110.0 * np.sin(2 * np.pi * (x / 13.0 + y / 9.0))
    img = np.stack([r, g, b], -1) + rs.normal(0.0, 20.0, (h, w, 3))
    img[h // 4 : h // 2, w // 3 : (2 * w) // 3] *= 0.25
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def smart_resize(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    h_bar = round(h / factor) * factor
    w_bar = round(w / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        h_bar = max(factor, math.floor(h / beta / factor) * factor)
        w_bar = max(factor, math.floor(w / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        h_bar = math.ceil(h * beta / factor) * factor
        w_bar = math.ceil(w * beta / factor) * factor
    return h_bar, w_bar


def numpy_preprocess(img: Image.Image) -> tuple[np.ndarray, np.ndarray, list]:
    """Independent re-derivation of Qwen2VLImageProcessor: returns (resized uint8 HWC, patches, grid)."""
    p = PREPROCESSOR
    ps, tps, ms = p["patch_size"], p["temporal_patch_size"], p["merge_size"]
    w0, h0 = img.size
    h, w = smart_resize(h0, w0, ps * ms, p["size"]["shortest_edge"], p["size"]["longest_edge"])
    resized = np.asarray(img.convert("RGB").resize((w, h), resample=Image.Resampling.BICUBIC))  # uint8 [h, w, 3]
    x = (resized.astype(np.float64) * p["rescale_factor"]).astype(np.float32)  # rescale in f64, store f32
    x = (x - np.float32(0.5)) / np.float32(0.5)  # normalise in f32
    x = x.transpose(2, 0, 1)  # [C, H, W]
    gh, gw = h // ps, w // ps
    out = np.empty((gh * gw, 3 * tps * ps * ps), np.float32)
    i = 0
    for bh in range(gh // ms):  # block-major: (bh, bw, mh, mw)
        for bw in range(gw // ms):
            for mh in range(ms):
                for mw in range(ms):
                    r, c = bh * ms + mh, bw * ms + mw
                    patch = x[:, r * ps : (r + 1) * ps, c * ps : (c + 1) * ps]  # [C, ph, pw]
                    out[i] = np.broadcast_to(patch[:, None], (3, tps, ps, ps)).reshape(-1)  # (C, T, ph, pw)
                    i += 1
    return resized, out, [1, gh, gw]


# --------------------------------------------------------------------------------------
# Independent float64 NumPy vision tower and MRoPE positions (checks our reading of HF)
# --------------------------------------------------------------------------------------


def np_layernorm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def np_gelu_erf(x):
    from math import erf

    return 0.5 * x * (1 + np.vectorize(erf)(x / math.sqrt(2)))


def np_vision(W: dict, pixels: np.ndarray, grid: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vision tower of one image in float64. Returns (embed+pos [N,C], last hidden [N,C], merged [N/4,D])."""
    v = VISION
    C, nh, ms = v["hidden_size"], v["num_heads"], v["spatial_merge_size"]
    hd = C // nh
    side = int(math.isqrt(v["num_position_embeddings"]))
    pre = "model.visual."
    w = lambda n: W[pre + n].astype(np.float64)  # noqa: E731
    _, gh, gw = grid
    x = pixels.astype(np.float64) @ w("patch_embed.proj.weight").reshape(C, -1).T + w("patch_embed.proj.bias")
    # (row, col) of each patch in block-major order
    rows, cols = [], []
    for bh in range(gh // ms):
        for bw in range(gw // ms):
            for mh in range(ms):
                for mw in range(ms):
                    rows.append(bh * ms + mh)
                    cols.append(bw * ms + mw)
    rows, cols = np.array(rows), np.array(cols)
    # bilinear, align_corners=True resampling of the side x side table to gh x gw
    table = w("pos_embed.weight").reshape(side, side, C)
    sy = rows * (side - 1) / max(gh - 1, 1)
    sx = cols * (side - 1) / max(gw - 1, 1)
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    y1, x1 = np.minimum(y0 + 1, side - 1), np.minimum(x0 + 1, side - 1)
    fy, fx = (sy - y0)[:, None], (sx - x0)[:, None]
    pos = (
        table[y0, x0] * (1 - fy) * (1 - fx)
        + table[y0, x1] * (1 - fy) * fx
        + table[y1, x0] * fy * (1 - fx)
        + table[y1, x1] * fy * fx
    )
    x = x + pos
    embed = x.copy()
    # 2-D axial rope: hd/4 frequencies; angles [h-angles | w-angles] duplicated; rotate-half over hd
    inv = 1.0 / (v["rope_parameters"]["rope_theta"] ** (np.arange(0, hd // 2, 2) / (hd // 2)))
    ang = np.concatenate([rows[:, None] * inv, cols[:, None] * inv], -1)
    ang = np.concatenate([ang, ang], -1)  # [N, hd]
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]

    def rope(t):  # t [N, nh, hd]
        half = hd // 2
        rot = np.concatenate([-t[..., half:], t[..., :half]], -1)
        return t * cos + rot * sin

    N = x.shape[0]
    for i in range(v["depth"]):
        b = f"blocks.{i}."
        h = np_layernorm(x, w(b + "norm1.weight"), w(b + "norm1.bias"))
        qkv = h @ w(b + "attn.qkv.weight").T + w(b + "attn.qkv.bias")  # [N, 3*C] = q | k | v, each head-major
        q, k, vv = qkv.reshape(N, 3, nh, hd).transpose(1, 0, 2, 3)
        q, k = rope(q), rope(k)
        s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, vv).reshape(N, C)
        x = x + o @ w(b + "attn.proj.weight").T + w(b + "attn.proj.bias")
        h = np_layernorm(x, w(b + "norm2.weight"), w(b + "norm2.bias"))
        h = np_gelu_tanh(h @ w(b + "mlp.linear_fc1.weight").T + w(b + "mlp.linear_fc1.bias"))
        x = x + h @ w(b + "mlp.linear_fc2.weight").T + w(b + "mlp.linear_fc2.bias")
    last = x
    m = np_layernorm(x, w("merger.norm.weight"), w("merger.norm.bias")).reshape(N // (ms * ms), -1)
    m = np_gelu_erf(m @ w("merger.linear_fc1.weight").T + w("merger.linear_fc1.bias"))
    m = m @ w("merger.linear_fc2.weight").T + w("merger.linear_fc2.bias")
    return embed, last, m


def np_positions(ids: list, grids: list) -> tuple[np.ndarray, int]:
    """MRoPE prompt positions [3, T] and rope_delta (spec §9.3)."""
    ms = VISION["spatial_merge_size"]
    out, p, i, gi = [], 0, 0, 0
    while i < len(ids):
        if ids[i] != IMG:
            out.append((p, p, p))
            p += 1
            i += 1
            continue
        t, h, w = grids[gi]
        gi += 1
        H, W = h // ms, w // ms
        for ti in range(t):
            for hi in range(H):
                for wi in range(W):
                    out.append((p + ti, p + hi, p + wi))
        i += t * H * W
        p += max(H, W)
    pos = np.array(out, dtype=np.int64).T
    return pos, int(pos.max()) + 1 - len(ids)


# --------------------------------------------------------------------------------------
# transformers references
# --------------------------------------------------------------------------------------


def mm_types(ids: list) -> torch.Tensor:
    return torch.tensor([[1 if t == IMG else 0 for t in ids]], dtype=torch.int32)


@torch.no_grad()
def logits_of(model, ids: list, pixels=None, grid=None) -> torch.Tensor:
    model.model.rope_deltas = None
    kw = {}
    if pixels is not None:
        kw = dict(pixel_values=pixels, image_grid_thw=grid, mm_token_type_ids=mm_types(ids))
    out = model(input_ids=torch.tensor([ids]), use_cache=False, **kw)
    model.model.rope_deltas = None
    return out.logits[0].float()


@torch.no_grad()
def rope_index(model, ids: list, grid) -> tuple[np.ndarray, int]:
    pos, delta = model.model.get_rope_index(
        torch.tensor([ids]), mm_token_type_ids=mm_types(ids), image_grid_thw=grid
    )
    assert pos.shape == (3, 1, len(ids)) and delta.shape == (1, 1)
    return pos[:, 0].numpy().astype(np.int64), int(delta.item())


@torch.no_grad()
def greedy(model, ids: list, pixels, grid) -> dict:
    model.generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=N_GREEDY, min_new_tokens=0, eos_token_id=None, pad_token_id=0
    )
    model.model.rope_deltas = None
    out = model.generate(
        torch.tensor([ids]),
        pixel_values=pixels,
        image_grid_thw=grid,
        mm_token_type_ids=mm_types(ids),
        do_sample=False,
        max_new_tokens=N_GREEDY,
        use_cache=True,
        output_logits=True,
        return_dict_in_generate=True,
    )
    paths = dict(sorted(T.PATH_LOG.items()))
    rope_delta_after = int(model.model.rope_deltas.item())
    model.model.rope_deltas = None
    new = out.sequences[0, len(ids) :].tolist()
    step_logits = torch.stack([l[0].float() for l in out.logits])  # [N, V]
    assert step_logits.argmax(-1).tolist() == new
    top2 = step_logits.topk(2, -1).values
    margins = (top2[:, 0] - top2[:, 1]).tolist()
    # no-cache check: full forward (positions recomputed by get_rope_index) at every step
    seq, nocache_rows = list(ids), []
    for _ in range(N_GREEDY):
        lg = logits_of(model, seq, pixels, grid)[-1]
        nocache_rows.append(lg)
        seq.append(int(lg.argmax()))
    return {
        "ids": new,
        "step_logits": step_logits,
        "margins": margins,
        "nocache_ids": seq[len(ids) :],
        "cache_vs_nocache_max_abs_logit_diff": float((torch.stack(nocache_rows) - step_logits).abs().max()),
        "rope_delta_cached_by_generate": rope_delta_after,
        "paths": paths,
    }


def fmt_positions(pos: np.ndarray) -> list:
    return [list(map(int, r)) for r in pos]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="output directory (e.g. tests/fixtures)")
    ap.add_argument("--skip-version-check", action="store_true")
    args = ap.parse_args()

    versions = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
    }
    if versions != EXPECTED_VERSIONS and not args.skip_version_check:
        raise SystemExit(f"expected {EXPECTED_VERSIONS}, found {versions} (use --skip-version-check to override)")

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    T.instrument_gdn_paths()  # also refuses to run with fla / causal-conv1d / kernels installed
    transformers.logging.set_verbosity_error()

    dense_dir = args.out / "tiny-dense-f32"
    d = args.out / NAME
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    log(f"[{NAME}]")

    # ---- checkpoint -------------------------------------------------------------------
    model = build_model()
    tensors = T.contiguous(model.state_dict(), torch.float32)
    model.config.architectures = ["Qwen3_5ForConditionalGeneration"]  # as save_pretrained writes it
    T.write_config(model, d, "float32")
    T.write_safetensors(d / "model.safetensors", tensors)
    (d / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2, sort_keys=True) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        T.check_against_save_pretrained(model, tensors, Path(tmp), per_expert=True)
    check_text_part_equals_dense(d, tensors, dense_dir)
    cfg_json = json.loads((d / "config.json").read_text())
    assert "deepstack_visual_indexes" not in cfg_json["vision_config"]
    assert cfg_json["architectures"] == ["Qwen3_5ForConditionalGeneration"] and cfg_json["model_type"] == "qwen3_5"
    del model

    m = T.load(Qwen3_5ForConditionalGeneration, d, torch.float32)
    T.check_loaded_weights(m, tensors, fused_from_split=False)
    assert m.config.vision_config._attn_implementation == "eager", m.config.vision_config._attn_implementation
    W = {k: v.numpy() for k, v in tensors.items() if k.startswith("model.visual.")}

    # ---- images and preprocessing ------------------------------------------------------
    imgs = {}
    for key, (h, w) in IMAGE_SIZES.items():
        Image.fromarray(make_image(h, w, IMAGE_SEEDS[key]), "RGB").save(d / f"image_{key}.png")
        imgs[key] = Image.open(d / f"image_{key}.png")
        imgs[key].load()
        assert imgs[key].mode == "RGB" and imgs[key].size == (w, h)

    # backend="pil": without it transformers picks the torchvision backend whenever torchvision is installed, and
    # that backend's bicubic resize (torch, on tensors) gives different pixel values from PIL's.
    proc = AutoImageProcessor.from_pretrained(str(d), backend="pil")
    proc_cls = f"{type(proc).__module__}.{type(proc).__name__}"
    assert type(proc).__name__ == "Qwen2VLImageProcessorPil", proc_cls
    log(f"  image processor: {proc_cls}")
    pix, grid, resized = {}, {}, {}
    for key in ("a", "b"):
        o = proc(images=[imgs[key]], return_tensors="pt")
        pix[key], grid[key] = o["pixel_values"], o["image_grid_thw"]
        assert pix[key].dtype == torch.float32 and grid[key].tolist() == [EXPECTED_GRIDS[key]], grid[key]
        resized[key], np_pix, np_grid = numpy_preprocess(imgs[key])
        assert np_grid == EXPECTED_GRIDS[key]
        assert np.array_equal(np_pix, pix[key].numpy()), float(np.abs(np_pix - pix[key].numpy()).max())
        np.save(d / f"pixel_values_{key}.npy", pix[key].numpy())
        np.save(d / f"resized_{key}.npy", resized[key])
    o = proc(images=[imgs["a"], imgs["b"]], return_tensors="pt")
    pix_ab, grid_ab = o["pixel_values"], o["image_grid_thw"]
    assert torch.equal(pix_ab, torch.cat([pix["a"], pix["b"]])) and grid_ab.tolist() == list(EXPECTED_GRIDS.values())
    n_a = int(grid["a"].prod()) // 4
    n_b = int(grid["b"].prod()) // 4
    log(f"  grids a {grid['a'].tolist()} b {grid['b'].tolist()}  N_a {n_a}  N_b {n_b}")

    # ---- vision tower -------------------------------------------------------------------
    vis = m.model.visual
    captured = {}
    hook = vis.blocks[0].register_forward_pre_hook(lambda mod, a: captured.__setitem__("embed", a[0].clone()))
    with torch.no_grad():
        va = vis(pix["a"], grid_thw=grid["a"])
        embed_a = captured["embed"]
        vb = vis(pix["b"], grid_thw=grid["b"])
        vab = vis(pix_ab, grid_thw=grid_ab)
    hook.remove()
    vision = {"a": va.pooler_output, "b": vb.pooler_output}
    assert vision["a"].shape == (n_a, T.HIDDEN) and vision["b"].shape == (n_b, T.HIDDEN)
    assert va.last_hidden_state.shape == (4 * n_a, VISION["hidden_size"])
    ab_diff = float((vab.pooler_output - torch.cat([vision["a"], vision["b"]])).abs().max())
    assert ab_diff <= 1e-6, ab_diff
    for key in ("a", "b"):
        np.save(d / f"vision_{key}.npy", vision[key].numpy())
    np.save(d / "vision_ab.npy", vab.pooler_output.numpy())
    np.save(d / "vision_hidden_a.npy", va.last_hidden_state.numpy())
    np.save(d / "vision_embed_a.npy", embed_a.numpy())

    # HF's position-table resampling (gather 4 taps, weights = wy*wx, summed) vs F.interpolate
    side = int(math.isqrt(VISION["num_position_embeddings"]))
    table = vis.pos_embed.weight.detach().T.reshape(1, -1, side, side)
    gh, gw = EXPECTED_GRIDS["a"][1:]
    interp = F.interpolate(table, size=(gh, gw), mode="bilinear", align_corners=True)[0]  # [C, gh, gw]
    # the same (block-major) patch order as the model
    ms = VISION["spatial_merge_size"]
    order = [
        (bh * ms + mh, bw * ms + mw)
        for bh in range(gh // ms)
        for bw in range(gw // ms)
        for mh in range(ms)
        for mw in range(ms)
    ]
    interp_bm = torch.stack([interp[:, r, c] for r, c in order])
    patch_only = vis.patch_embed(pix["a"]).detach()
    pos_interp_diff = float(((embed_a - patch_only) - interp_bm).abs().max())

    # independent float64 NumPy vision tower
    np_diffs = {}
    for key in ("a", "b"):
        e, last, merged = np_vision(W, pix[key].numpy(), EXPECTED_GRIDS[key])
        np_diffs[f"vision_{key}"] = float(np.abs(merged - vision[key].numpy()).max())
        if key == "a":
            np_diffs["vision_hidden_a"] = float(np.abs(last - va.last_hidden_state.numpy()).max())
            np_diffs["vision_embed_a"] = float(np.abs(e - embed_a.numpy()).max())
    log(f"  float64 NumPy vision tower vs HF: {np_diffs}")
    assert max(np_diffs.values()) < 1e-4, np_diffs

    # ---- prompts ------------------------------------------------------------------------
    one = [5, 17, VS] + [IMG] * n_a + [VE, 33, 44, 55]
    two = [5, VS] + [IMG] * n_a + [VE, 7, 8, VS] + [IMG] * n_b + [VE, 9, 10, 11]
    grids_two = torch.cat([grid["a"], grid["b"]])

    logits_one = logits_of(m, one, pix["a"], grid["a"])
    logits_two = logits_of(m, two, pix_ab, grids_two)
    pos_one, delta_one = rope_index(m, one, grid["a"])
    pos_two, delta_two = rope_index(m, two, grids_two)
    for ids, grids, pos, delta in (
        (one, [EXPECTED_GRIDS["a"]], pos_one, delta_one),
        (two, list(EXPECTED_GRIDS.values()), pos_two, delta_two),
    ):
        np_pos, np_delta = np_positions(ids, grids)
        assert np.array_equal(np_pos, pos) and np_delta == delta, (np_pos, pos, np_delta, delta)
    np.save(d / "logits_one.npy", logits_one.numpy())
    np.save(d / "logits_two.npy", logits_two.numpy())
    np.save(d / "positions_one.npy", pos_one)
    np.save(d / "positions_two.npy", pos_two)

    # the image matters; tokens before the first image do not see it
    noimg_one = logits_of(m, one)
    image_effect = float((logits_one - noimg_one).abs().max())
    first = one.index(IMG)
    prefix_diff = float((logits_one[:first] - noimg_one[:first]).abs().max())
    assert image_effect > 1.0, image_effect
    assert prefix_diff < 1e-4, prefix_diff
    # explicit 3-D position ids give the same logits as positions computed inside forward
    with torch.no_grad():
        m.model.rope_deltas = None
        explicit = m(
            input_ids=torch.tensor([one]),
            pixel_values=pix["a"],
            image_grid_thw=grid["a"],
            position_ids=torch.from_numpy(pos_one)[:, None],
            use_cache=False,
        ).logits[0]
        m.model.rope_deltas = None
    assert torch.equal(explicit, logits_one)
    # logits == lm_head(final hidden)? (the merged vision rows really replace the image-pad embeddings)
    with torch.no_grad():
        emb = m.model.language_model.embed_tokens(torch.tensor([one]))[0].clone()
        emb[torch.tensor(one) == IMG] = vision["a"]
        via_embeds = m(
            inputs_embeds=emb[None], position_ids=torch.from_numpy(pos_one)[:, None], use_cache=False
        ).logits[0]
    embeds_diff = float((via_embeds - logits_one).abs().max())
    assert embeds_diff < 1e-5, embeds_diff

    # sdpa vs eager, for information
    m.set_attn_implementation("sdpa")
    sdpa_diff = float((logits_of(m, two, pix_ab, grids_two) - logits_two).abs().max())
    with torch.no_grad():
        sdpa_vis_diff = float((m.model.visual(pix_ab, grid_thw=grid_ab).pooler_output - vab.pooler_output).abs().max())
    m.set_attn_implementation("eager")

    # ---- greedy -------------------------------------------------------------------------
    T.PATH_LOG.clear()
    g = greedy(m, two, pix_ab, grids_two)
    log(f"  greedy two: {g['ids']}  min margin {min(g['margins']):.4f}  nocache {g['nocache_ids']}")
    assert g["ids"] == g["nocache_ids"], (g["ids"], g["nocache_ids"])
    assert min(g["margins"]) >= T.MIN_MARGIN_REQUIRED, f"greedy margin {min(g['margins'])}: change VISION_SEED"
    assert g["rope_delta_cached_by_generate"] == delta_two
    assert g["paths"].get("torch_recurrent_gated_delta_rule(seq_len=1, initial_state=True)") == 6 * (N_GREEDY - 1)
    np.save(d / "greedy_logits_two.npy", g["step_logits"].numpy())

    # ---- reference.json -----------------------------------------------------------------
    t2 = len(two)
    rec = {
        "fixture": NAME,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "compute_dtype": "float32",
        "device": "cpu",
        "attn_implementation": "eager",
        "image_processor_class": proc_cls,
        "weights_seed_text": TEXT_SEED,
        "weights_seed_vision": VISION_SEED,
        "text_weights_identical_to": "tiny-dense-f32",
        "images": {
            k: {"file": f"image_{k}.png", "height": IMAGE_SIZES[k][0], "width": IMAGE_SIZES[k][1]} for k in IMAGE_SIZES
        },
        "resized_hw": {k: list(resized[k].shape[:2]) for k in resized},
        "grid_thw_a": EXPECTED_GRIDS["a"],
        "grid_thw_b": EXPECTED_GRIDS["b"],
        "N_a": n_a,
        "N_b": n_b,
        "token_ids": TOKEN_IDS,
        "prompt_one": one,
        "prompt_one_images": ["a"],
        "rope_delta_one": delta_one,
        "positions_one": fmt_positions(pos_one),
        "prompt_two": two,
        "prompt_two_images": ["a", "b"],
        "rope_delta_two": delta_two,
        "positions_two": fmt_positions(pos_two),
        "greedy_prompt": "prompt_two",
        "greedy_two": g["ids"],
        "greedy_two_decode_positions": [t2 + i + delta_two for i in range(N_GREEDY - 1)],
        "greedy_two_min_margin": round(min(g["margins"]), 6),
        "greedy_two_margins": [round(x, 6) for x in g["margins"]],
        "greedy_two_nocache_matches": g["ids"] == g["nocache_ids"],
        "greedy_two_cache_vs_nocache_max_abs_logit_diff": g["cache_vs_nocache_max_abs_logit_diff"],
        "greedy_eos_token_ids_ignored": sorted(T.EOS_IDS),
        "greedy_two_contains_eos": bool(T.EOS_IDS & set(g["ids"])),
        "hf_code_paths_during_generate": g["paths"],
        "checks": {
            "pixel_values_equal_numpy_rederivation": True,
            "vision_ab_vs_concat_max_abs_diff": ab_diff,
            "numpy_f64_vision_vs_hf_max_abs_diff": np_diffs,
            "pos_embed_gather_vs_F_interpolate_max_abs_diff_a": pos_interp_diff,
            "image_vs_no_image_logits_one_max_abs_diff": image_effect,
            "prefix_before_image_vs_no_image_max_abs_diff": prefix_diff,
            "logits_via_inputs_embeds_vs_forward_max_abs_diff": embeds_diff,
            "sdpa_vs_eager_max_abs_logit_diff_two": sdpa_diff,
            "sdpa_vs_eager_max_abs_vision_ab_diff": sdpa_vis_diff,
        },
        "logits_one_abs_max": float(logits_one.abs().max()),
        "logits_two_abs_max": float(logits_two.abs().max()),
        "vision_ab_abs_max": float(vab.pooler_output.abs().max()),
        "tolerance_notes": (
            "float32 references from one CPU run. vision_*: abs 1e-4 (HF f32 vs float64 NumPy differs by the "
            "numpy_f64_vision_vs_hf figures); logits: abs 1e-3; pixel_values: exact for an engine that reproduces "
            "PIL's bicubic uint8 resize (resized_*.npy), otherwise compare from resized_*.npy on; positions and "
            "greedy ids: exact."
        ),
    }
    (d / "reference.json").write_text(T.compact_json(rec) + "\n")

    total = sum(f.stat().st_size for f in d.iterdir())
    for f in sorted(d.iterdir()):
        log(f"  {f.name:28s} {f.stat().st_size:9d}")
    log(f"  total {total} bytes")
    assert total < MAX_FIXTURE_BYTES, total


if __name__ == "__main__":
    main()
