#!/usr/bin/env python3
"""Build `tests/fixtures/vision-preprocess/`: reference outputs of transformers' Qwen2-VL image
processor (the one Qwen3.5/3.6 use) for the `qinfer-vision` crate's tests.

Why: `qinfer-vision` claims to turn image bytes into exactly the `pixel_values` and
`image_grid_thw` that transformers computes for an image given as bytes (a file, a URL or a
base64 data URL), that is `transformers.image_utils.load_image` (EXIF transpose, then PIL's
`convert("RGB")`, which drops alpha but keeps a single-colour transparency as an RGB key)
followed by `Qwen2VLImageProcessorPil` (its `convert_to_rgb` composites such a key onto
white; smart_resize, Pillow bicubic resize, rescale, normalise, block-major patchify). These
files are that claim's evidence; nothing here is hand-edited.

What it writes (the README.md beside them describes each file; the script keeps it):

* `preprocessor_<setting>.json`: the processor settings, in `preprocessor_config.json` form.
* `<case>.png`: small synthetic images of odd sizes (gradients, seeded noise and hard edges so
  the bicubic resize overshoots and clips): RGB, RGBA, palettes, greyscale, tRNS keys, 16-bit
  samples and EXIF orientations.
* `<case>.<setting>.resized.png`: the processor's resized uint8 image (byte-exact resize test).
* `<case>.<setting>.pixel_values.npy`: its `pixel_values` (float32), for cases small enough.
* `<case>.decoded.png`: the RGB8 the processor resizes, for sources that are not plain RGB8.
* `decode_<fmt>.<ext>` + `decode_<fmt>.expected.png`: JPEG (one with EXIF orientation), WebP
  (lossless and lossy) and GIF inputs and the RGB8 that PIL (+ `convert_to_rgb`) decodes.
* `huge_header.png`: a PNG whose header claims 50,000 x 50,000 pixels (no pixel data).
* `smart_resize.json`: transformers' `smart_resize` on a table of sizes, including ties.
* `cases.json`: the manifest the Rust tests read.

Usage (the oracle environment, transformers 5.23.0, Pillow 13.0.0, numpy 2.4):

    /work/oracle-venv/bin/python tools/make_vision_preprocess_fixtures.py \
        --out tests/fixtures/vision-preprocess

Deterministic: seeded images, stable file order, no timestamps in any file written.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL
import transformers
from PIL import Image
from transformers.image_transforms import convert_to_rgb
from transformers.image_utils import load_image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

# Settings: the official Qwen3.5/3.6 values with a small pixel range, and a Qwen2-VL-like one
# (patch 14, CLIP mean/std, legacy min_pixels/max_pixels keys) to exercise the general path.
SETTINGS = {
    "small": {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": 2,
        "patch_size": 16,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"longest_edge": 16384, "shortest_edge": 1024},
        "temporal_patch_size": 2,
    },
    "clip14": {
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "merge_size": 2,
        "patch_size": 14,
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "min_pixels": 3136,
        "max_pixels": 6272,
        "temporal_patch_size": 2,
    },
}

# pixel_values files are written for cases of at most this many patches (4 patches of 1536 floats
# are 25 KB) and for NPY_ALWAYS; the others are checked through their resized bytes (from which
# pixel_values follow) and a checksum of pixel_values, to keep the directory under ~1 MB.
MAX_NPY_PATCHES = 4
NPY_ALWAYS = {("rgb_h37_w61", "small"), ("rgb_h64_w50", "clip14")}


def structured(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    """Gradients + seeded noise + a hard-edged 0/255 block, uint8 [h, w, channels]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.empty((h, w, channels), np.float64)
    for c in range(channels):
        out[..., c] = 255.0 * ((x / max(w - 1, 1)) * (c % 2) + (y / max(h - 1, 1)) * ((c + 1) % 2)) * 0.7
        out[..., c] += 40.0 * np.sin((x * (c + 1) + y * (3 - c)) / 3.0)
    out += rng.normal(0.0, 12.0, out.shape)
    # A block of full black and white stripes: the bicubic kernel's negative lobes overshoot.
    y0, y1, x0, x1 = h // 4, max(h // 4 + 1, 3 * h // 4), w // 3, max(w // 3 + 1, 2 * w // 3)
    out[y0:y1, x0:x1] = np.where((np.arange(x0, x1) // 2) % 2 == 0, 255.0, 0.0)[None, :, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def png_raw(w: int, h: int, color_type: int, depth: int, rows: bytes, extra: bytes = b"") -> bytes:
    """A PNG written by hand (filter 0 rows), for layouts PIL will not save (16-bit RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def save_png(img: Image.Image, path: Path, **kw) -> None:
    img.save(path, "PNG", optimize=True, **kw)


def make_sources(out: Path) -> list[dict]:
    """Writes the source PNGs; returns [{name, note}]."""
    cases = []

    def rgb(name: str, h: int, w: int, seed: int, note: str) -> None:
        save_png(Image.fromarray(structured(h, w, 3, seed), "RGB"), out / f"{name}.png")
        cases.append({"name": name, "note": note})

    rgb("rgb_h37_w61", 37, 61, 1, "both axes shrink a little")
    rgb("rgb_h61_w37", 61, 37, 2, "transpose of the above")
    rgb("rgb_h5_w7", 5, 7, 3, "rounds to 0x0, scaled up to min_pixels (ceil branch)")
    rgb("rgb_h17_w300", 17, 300, 4, "height up, width down")
    rgb("rgb_h129_w255", 129, 255, 5, "over max_pixels (floor branch), downscale ~2x")
    rgb("rgb_h64_w50", 64, 50, 6, "height unchanged: Pillow skips the vertical pass")
    rgb("rgb_h80_w48", 80, 48, 7, "80/32 = 2.5 rounds half to even (64), 48/32 = 1.5 to 64")

    a = structured(40, 50, 4, 8)
    a[..., 3] = (np.arange(50)[None, :] * 5 + np.arange(40)[:, None] * 3) % 256  # varied alpha incl. 0
    save_png(Image.fromarray(a, "RGBA"), out / "rgba_h40_w50.png")
    cases.append({"name": "rgba_h40_w50", "note": "RGBA: load_image drops alpha, no compositing"})

    p = Image.fromarray(structured(45, 33, 3, 9), "RGB").quantize(colors=23, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    save_png(p, out / "palette_h45_w33.png", transparency=5)
    cases.append({"name": "palette_h45_w33", "note": "palette + tRNS entry: convert('RGB') ignores transparency"})

    save_png(Image.fromarray(structured(50, 20, 1, 10)[..., 0], "L"), out / "grey_h50_w20.png")
    cases.append({"name": "grey_h50_w20", "note": "8-bit greyscale"})

    g = structured(20, 30, 4, 11).astype(np.uint16) * 257 + 3  # distinct low bytes
    g[0, :3, :] = [[0, 0, 0, 0], [255, 256, 1000, 65535], [65535, 65534, 300, 12]]
    rows = b"".join(b"\x00" + g[r, :, :2].astype(">u2").tobytes() for r in range(20))  # LA 16-bit
    (out / "greya16_h20_w30.png").write_bytes(png_raw(30, 20, 4, 16, rows))
    cases.append({"name": "greya16_h20_w30", "note": "16-bit grey+alpha: PIL keeps the high byte"})
    rows = b"".join(b"\x00" + g[r, :, :3].astype(">u2").tobytes() for r in range(20))
    (out / "rgb16_h20_w30.png").write_bytes(png_raw(30, 20, 2, 16, rows))
    cases.append({"name": "rgb16_h20_w30", "note": "16-bit RGB: PIL keeps the high byte"})
    rows = b"".join(b"\x00" + g[r, :, :1].astype(">u2").tobytes() for r in range(20))
    (out / "grey16_h20_w30.png").write_bytes(png_raw(30, 20, 0, 16, rows))
    cases.append({"name": "grey16_h20_w30", "note": "16-bit grey: PIL opens I;16, convert('RGB') clips at 255"})

    # Single-colour transparency: load_image's convert("RGB") keeps it as an RGB key colour and the
    # processor's convert_to_rgb then composites onto white, so every pixel of that colour turns white.
    lt = structured(26, 34, 1, 14)[..., 0]
    lt[::3, ::4] = 77
    save_png(Image.fromarray(lt, "L"), out / "greytrns_h26_w34.png", transparency=77)
    cases.append({"name": "greytrns_h26_w34", "note": "grey + tRNS 77: pixels of 77 become white"})
    rt = structured(27, 31, 3, 15)
    rt[::2, ::5] = (12, 200, 34)
    save_png(Image.fromarray(rt, "RGB"), out / "rgbtrns_h27_w31.png", transparency=(12, 200, 34))
    cases.append({"name": "rgbtrns_h27_w31", "note": "RGB + tRNS key: pixels of the key become white"})
    pm = Image.fromarray(structured(29, 23, 3, 16), "RGB").quantize(colors=12, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    save_png(pm, out / "palettealpha_h29_w23.png", transparency=bytes([255, 0, 128, 255, 7] + [255] * 7))
    cases.append({"name": "palettealpha_h29_w23", "note": "palette + per-entry alphas: alpha dropped, no key"})

    for orientation, seed in [(6, 12), (5, 17)]:
        exif = Image.Exif()
        exif[0x0112] = orientation
        name = f"exif{orientation}_h30_w44"
        save_png(Image.fromarray(structured(30, 44, 3, seed), "RGB"), out / f"{name}.png", exif=exif.tobytes())
        cases.append({"name": name, "note": f"EXIF orientation {orientation}: load_image transposes to 44x30"})

    save_png(Image.fromarray(structured(1, 300, 3, 13), "RGB"), out / "rgb_h1_w300.png")
    cases.append({"name": "rgb_h1_w300", "note": "aspect ratio 300: smart_resize raises"})
    return cases


def processor_rgb(img: Image.Image) -> np.ndarray:
    """The RGB8 array the processor resizes, from load_image's output: transformers' own
    convert_to_rgb, checked against the rule it amounts to (key-colour pixels become white)."""
    got = convert_to_rgb(img, return_numpy=True)
    want = np.asarray(img.convert("RGB")).copy()
    key = img.info.get("transparency")
    if key is not None:
        assert isinstance(key, tuple), key
        want[(want == np.array(key, np.uint8)).all(-1)] = 255
    assert np.array_equal(got, want)
    return got


def npy_f32(path: Path, a: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(a, dtype="<f4"), allow_pickle=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for f in out.iterdir():
        if f.is_file() and f.name != "README.md":
            f.unlink()

    procs = {}
    for name, cfg in SETTINGS.items():
        (out / f"preprocessor_{name}.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        procs[name] = Qwen2VLImageProcessorPil.from_dict(dict(cfg))
        assert type(procs[name]).__name__ == "Qwen2VLImageProcessorPil"

    manifest = {"preprocess": [], "decode": [], "errors": {}}
    sources = make_sources(out)
    for src in sources:
        name = src["name"]
        img = load_image(str(out / f"{name}.png"))
        seen = processor_rgb(img)
        raw = Image.open(out / f"{name}.png")
        entry = {"name": name, "note": src["note"], "source_mode": raw.mode, "decoded_hw": [img.height, img.width]}
        if raw.mode != "RGB" or "exif" in name or "trns" in name:
            save_png(Image.fromarray(seen, "RGB"), out / f"{name}.decoded.png")
            entry["decoded"] = f"{name}.decoded.png"
        results = {}
        for setting, proc in procs.items():
            try:
                o = proc(images=[img], return_tensors="np")
            except ValueError as e:
                assert "aspect ratio" in str(e), e
                results[setting] = {"error": "aspect_ratio"}
                continue
            pv, grid = o["pixel_values"], o["image_grid_thw"]
            assert pv.dtype == np.float32, pv.dtype
            t, gh, gw = (int(v) for v in grid[0])
            ps = proc.patch_size
            h, w = gh * ps, gw * ps
            resized = Image.fromarray(seen, "RGB").resize((w, h), Image.Resampling.BICUBIC)
            # The processor resizes through its own PIL round trip; check that it is this resize.
            res_np = np.asarray(resized).astype(np.float64) * proc.rescale_factor
            mean = np.array(proc.image_mean, np.float32)
            std = np.array(proc.image_std, np.float32)
            norm = (res_np.astype(np.float32) - mean) / std  # [h, w, C]
            m = proc.merge_size
            chk = norm.transpose(2, 0, 1).reshape(3, gh // m, m, ps, gw // m, m, ps).transpose(1, 4, 2, 5, 0, 3, 6)
            chk = np.broadcast_to(chk[:, :, :, :, :, None], (*chk.shape[:5], proc.temporal_patch_size, ps, ps))
            assert np.array_equal(chk.reshape(pv.shape), pv), f"{name}/{setting}: independent re-derivation differs"
            save_png(resized, out / f"{name}.{setting}.resized.png")
            r = {
                "grid": [t, gh, gw],
                "resized_hw": [h, w],
                "resized": f"{name}.{setting}.resized.png",
                "pixel_values_shape": list(pv.shape),
                "pixel_values_sum": float(pv.astype(np.float64).sum()),
                "pixel_values_abs_sum": float(np.abs(pv.astype(np.float64)).sum()),
            }
            if pv.shape[0] <= MAX_NPY_PATCHES or (name, setting) in NPY_ALWAYS:
                npy_f32(out / f"{name}.{setting}.pixel_values.npy", pv)
                r["pixel_values"] = f"{name}.{setting}.pixel_values.npy"
            results[setting] = r
        entry["settings"] = results
        manifest["preprocess"].append(entry)

    # Decoders: what PIL (through load_image) decodes from other formats.
    base = structured(48, 40, 3, 20)
    rgba = structured(36, 28, 4, 21)
    rgba[..., 3] = (np.arange(28)[None, :] * 9) % 256
    gif0 = Image.fromarray(structured(24, 32, 3, 22), "RGB").quantize(colors=16, dither=Image.Dither.NONE)
    gif1 = Image.fromarray(structured(24, 32, 3, 23), "RGB").quantize(colors=16, dither=Image.Dither.NONE)
    exif6 = Image.Exif()
    exif6[0x0112] = 6
    encoders = [
        ("jpeg", "jpg", lambda b: Image.fromarray(base, "RGB").save(b, "JPEG", quality=90)),
        ("jpeg_grey", "jpg", lambda b: Image.fromarray(base[..., 1], "L").save(b, "JPEG", quality=85)),
        ("jpeg_exif6", "jpg", lambda b: Image.fromarray(base, "RGB").save(b, "JPEG", quality=90, exif=exif6.tobytes())),
        ("webp", "webp", lambda b: Image.fromarray(rgba, "RGBA").save(b, "WEBP", lossless=True, exact=True)),
        ("webp_lossy", "webp", lambda b: Image.fromarray(base, "RGB").save(b, "WEBP", quality=80)),
        ("gif", "gif", lambda b: gif0.save(b, "GIF", save_all=True, append_images=[gif1], transparency=3, duration=50, loop=0)),
    ]
    for fmt, ext, enc in encoders:
        buf = io.BytesIO()
        enc(buf)
        src = out / f"decode_{fmt}.{ext}"
        src.write_bytes(buf.getvalue())
        img = load_image(str(src))
        save_png(Image.fromarray(processor_rgb(img), "RGB"), out / f"decode_{fmt}.expected.png")
        manifest["decode"].append(
            {"file": src.name, "expected": f"decode_{fmt}.expected.png", "exact": not fmt.startswith("jpeg"), "hw": [img.height, img.width]}
        )

    # A header claiming 50,000 x 50,000 RGB pixels, then a few bytes of IDAT.
    (out / "huge_header.png").write_bytes(png_raw(50000, 50000, 2, 8, b"\x00" * 64))
    manifest["errors"]["huge_header"] = "huge_header.png"
    manifest["errors"]["aspect_ratio"] = "rgb_h1_w300.png"

    # smart_resize on a table of (h, w, factor, min, max), ties and big sizes included.
    table = []
    rng = np.random.default_rng(99)
    shapes = [(5, 7), (48, 80), (80, 48), (16, 16), (112, 48), (1, 200), (200, 1), (3000, 4000), (4096, 4096),
              (4097, 4095), (10000, 60), (100000, 600), (1080, 1920), (720, 1280), (33, 33), (15, 3000), (31, 31)]
    shapes += [(int(a), int(b)) for a, b in rng.integers(1, 6000, size=(40, 2)) if max(a, b) / min(a, b) <= 200]
    for h, w in shapes:
        for factor, lo, hi in [(32, 65536, 16777216), (32, 1024, 16384), (28, 3136, 12845056), (32, 1024, 9216)]:
            table.append({"h": h, "w": w, "factor": factor, "min_pixels": lo, "max_pixels": hi, "out": list(smart_resize(h, w, factor, lo, hi))})
    for h, w in [(1, 201), (300, 1), (2, 401)]:
        try:
            smart_resize(h, w, 32, 1024, 16384)
            raise AssertionError("expected an aspect-ratio error")
        except ValueError:
            table.append({"h": h, "w": w, "factor": 32, "min_pixels": 1024, "max_pixels": 16384, "out": None})
    (out / "smart_resize.json").write_text(json.dumps(table) + "\n")

    manifest["versions"] = {"transformers": transformers.__version__, "pillow": PIL.__version__, "numpy": np.__version__}
    (out / "cases.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {len(list(out.iterdir()))} files, {total} bytes, to {out}")
    assert total < 1_000_000, "keep the fixture directory under ~1 MB"


if __name__ == "__main__":
    main()
