//! `qinfer-vision` against transformers' Qwen2-VL image processor (PIL backend) and Pillow.
//!
//! The goldens in `tests/fixtures/vision-preprocess/` come from
//! `tools/make_vision_preprocess_fixtures.py` (its README says how). Each source image goes
//! through the whole path, bytes to `pixel_values`, and is compared at every stage that the
//! fixtures record: the decoded RGB8 (exactly), the resized RGB8 (exactly), the grid, and
//! `pixel_values` (exactly where stored; by checksum elsewhere).

use std::path::{Path, PathBuf};

use qinfer_vision::{
    DecodeLimits, PreprocessConfig, RgbImage, VisionError, decode, preprocess, resize_bicubic,
    smart_resize,
};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/vision-preprocess")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn manifest() -> Value {
    serde_json::from_slice(&read("cases.json")).unwrap()
}

fn load(name: &str) -> RgbImage {
    decode(&read(name), &DecodeLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn config(setting: &str) -> PreprocessConfig {
    PreprocessConfig::from_file(&dir().join(format!("preprocessor_{setting}.json"))).unwrap()
}

fn hw(v: &Value) -> [usize; 2] {
    [
        v[0].as_u64().unwrap() as usize,
        v[1].as_u64().unwrap() as usize,
    ]
}

/// The first differing pixel, for a readable failure.
fn assert_same_image(got: &RgbImage, want: &RgbImage, what: &str) {
    assert_eq!(
        (got.height(), got.width()),
        (want.height(), want.width()),
        "{what}: size"
    );
    if let Some(i) = (0..got.as_bytes().len()).find(|&i| got.as_bytes()[i] != want.as_bytes()[i]) {
        let (p, c) = (i / 3, i % 3);
        panic!(
            "{what}: first difference at row {}, column {}, channel {c}: {} vs {}",
            p / got.width(),
            p % got.width(),
            got.as_bytes()[i],
            want.as_bytes()[i]
        );
    }
}

#[test]
fn bytes_to_pixel_values_equal_transformers() {
    let m = manifest();
    let cases = m["preprocess"].as_array().unwrap();
    assert!(cases.len() >= 15, "cases: {}", cases.len());
    let (mut exact_npy, mut resized_checked) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let img = load(&format!("{name}.png"));
        assert_eq!(
            [img.height(), img.width()],
            hw(&case["decoded_hw"]),
            "{name}: decoded size"
        );
        if let Some(want) = case["decoded"].as_str() {
            assert_same_image(&img, &load(want), &format!("{name}: decoded RGB"));
        }
        for (setting, want) in case["settings"].as_object().unwrap() {
            let what = format!("{name}/{setting}");
            let cfg = config(setting);
            if want.get("error").is_some() {
                let err = preprocess(&img, &cfg).unwrap_err();
                assert!(
                    matches!(err, VisionError::AspectRatio { .. }),
                    "{what}: {err}"
                );
                continue;
            }
            let [h, w] = hw(&want["resized_hw"]);
            let factor = cfg.patch_size * cfg.merge_size;
            assert_eq!(
                smart_resize(
                    img.height(),
                    img.width(),
                    factor,
                    cfg.min_pixels,
                    cfg.max_pixels
                )
                .unwrap(),
                (h, w),
                "{what}: smart_resize"
            );
            let resized = resize_bicubic(&img, h, w);
            assert_same_image(
                &resized,
                &load(want["resized"].as_str().unwrap()),
                &format!("{what}: resized"),
            );
            resized_checked += 1;

            let got = preprocess(&img, &cfg).unwrap();
            let grid: Vec<usize> = want["grid"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(got.grid.to_vec(), grid, "{what}: grid");
            assert_eq!(
                [got.pixels.rows, got.pixels.cols],
                hw(&want["pixel_values_shape"]),
                "{what}: shape"
            );
            assert_eq!(
                got.merged_tokens(),
                grid.iter().product::<usize>() / (cfg.merge_size * cfg.merge_size)
            );
            if let Some(file) = want["pixel_values"].as_str() {
                let (shape, data) = qinfer_formats::npy::read_f32(&dir().join(file)).unwrap();
                assert_eq!(
                    shape,
                    [got.pixels.rows, got.pixels.cols],
                    "{what}: npy shape"
                );
                // Written tolerance 1e-5; in fact every value is bit-identical.
                let worst = data
                    .iter()
                    .zip(&got.pixels.data)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(worst <= 1e-5, "{what}: max |diff| {worst}");
                let identical = data
                    .iter()
                    .zip(&got.pixels.data)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(identical, "{what}: not bit-identical (max |diff| {worst})");
                exact_npy += 1;
            }
            // Checksums over every value (numpy sums pairwise, we in order: compare loosely).
            let sum: f64 = got.pixels.data.iter().map(|&v| f64::from(v)).sum();
            let abs: f64 = got.pixels.data.iter().map(|&v| f64::from(v).abs()).sum();
            for (mine, key) in [(sum, "pixel_values_sum"), (abs, "pixel_values_abs_sum")] {
                let theirs = want[key].as_f64().unwrap();
                assert!(
                    (mine - theirs).abs() <= 1e-9 * theirs.abs().max(1.0) + 1e-6,
                    "{what}: {key} {mine} vs {theirs}"
                );
            }
        }
    }
    assert!(exact_npy >= 8, "pixel_values files compared: {exact_npy}");
    assert!(resized_checked >= 30, "resizes compared: {resized_checked}");
}

/// PNG, GIF and WebP (lossless and lossy: image-webp matches libwebp) decode exactly as PIL
/// does. JPEG does not: the `image` crate decodes with zune-jpeg, PIL with libjpeg-turbo; their
/// IDCTs, chroma upsampling and YCbCr conversion differ. Measured on these fixtures (hard
/// black/white stripes, the worst case for 4:2:0 chroma): RGB quality 90, max 9, mean 0.39,
/// 97% of samples within 2; greyscale, max 1, mean 0.01. Written tolerances: max 12, mean 0.5.
const JPEG_MAX_DIFF: u8 = 12;
const JPEG_MEAN_DIFF: f64 = 0.5;

#[test]
fn other_formats_decode_as_pil_does() {
    let m = manifest();
    let cases = m["decode"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let got = load(file);
        let want = load(case["expected"].as_str().unwrap());
        assert_eq!([got.height(), got.width()], hw(&case["hw"]), "{file}");
        if case["exact"].as_bool().unwrap() {
            assert_same_image(&got, &want, file);
        } else {
            let diffs: Vec<u8> = got
                .as_bytes()
                .iter()
                .zip(want.as_bytes())
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            let worst = *diffs.iter().max().unwrap();
            let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
            assert!(
                worst <= JPEG_MAX_DIFF && mean <= JPEG_MEAN_DIFF,
                "{file}: max |diff| {worst}, mean {mean}"
            );
        }
    }
}

#[test]
fn smart_resize_equals_transformers() {
    let table: Value = serde_json::from_slice(&read("smart_resize.json")).unwrap();
    let rows = table.as_array().unwrap();
    assert!(rows.len() > 100);
    for r in rows {
        let u = |k: &str| r[k].as_u64().unwrap();
        let (h, w, f) = (u("h") as usize, u("w") as usize, u("factor") as usize);
        let got = smart_resize(h, w, f, u("min_pixels"), u("max_pixels"));
        match r["out"].as_array() {
            Some(out) => assert_eq!(
                got.unwrap(),
                (
                    out[0].as_u64().unwrap() as usize,
                    out[1].as_u64().unwrap() as usize
                ),
                "{r}"
            ),
            None => assert!(
                matches!(got, Err(VisionError::AspectRatio { .. })),
                "{r}: {got:?}"
            ),
        }
    }
}

#[test]
fn bad_bytes_give_clear_errors() {
    let png = read("rgb_h129_w255.png");
    let limits = DecodeLimits::default();
    let check = |bytes: &[u8], ok: fn(&VisionError) -> bool, what: &str| {
        let err = decode(bytes, &limits).expect_err(what);
        assert!(ok(&err), "{what}: {err:?}");
        // A message a user can act on, never empty.
        assert!(err.to_string().len() > 20, "{what}: {err}");
    };
    for cut in [png.len() / 2, 40, 60] {
        check(
            &png[..cut],
            |e| matches!(e, VisionError::Truncated { format: "PNG" }),
            "truncated PNG",
        );
    }
    // JPEG and GIF say truncated (a GIF cut inside its first frame: the file has two, and
    // PIL reads only the first); a cut WebP bitstream reads as corrupt.
    for (file, cuts) in [
        ("decode_jpeg.jpg", [0.5, 0.99]),
        ("decode_jpeg_exif6.jpg", [0.3, 0.99]),
        ("decode_gif.gif", [0.2, 0.35]),
    ] {
        let b = read(file);
        for cut in cuts.map(|f| (b.len() as f64 * f) as usize) {
            let err = decode(&b[..cut], &limits).expect_err(file);
            assert!(
                matches!(err, VisionError::Truncated { .. }),
                "{file} cut to {cut}: {err:?}"
            );
        }
    }
    let b = read("decode_webp.webp");
    let err = decode(&b[..b.len() / 2], &limits).unwrap_err();
    assert!(
        matches!(
            err,
            VisionError::Truncated { format: "WebP" }
                | VisionError::Malformed { format: "WebP", .. }
        ),
        "WebP cut in half: {err:?}"
    );
    check(
        b"this is not an image, just some text",
        |e| matches!(e, VisionError::NotAnImage),
        "text",
    );
    check(&[], |e| matches!(e, VisionError::NotAnImage), "empty");
    check(
        b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0",
        |e| matches!(e, VisionError::UnsupportedFormat { .. }),
        "BMP header",
    );
    let mut corrupt = png.clone();
    corrupt[60..90].fill(0xAB);
    check(
        &corrupt,
        |e| {
            matches!(
                e,
                VisionError::Malformed { format: "PNG", .. } | VisionError::Truncated { .. }
            )
        },
        "corrupt PNG",
    );
}

#[test]
fn huge_header_is_refused_before_allocating() {
    let bytes = read("huge_header.png");
    assert!(bytes.len() < 200);
    let err = decode(&bytes, &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            VisionError::TooLarge {
                width: 50000,
                height: 50000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("50000x50000"), "{err}");
    // Total-pixel limit alone (sides allowed): still refused from the header.
    let wide = DecodeLimits {
        max_width: 100_000,
        max_height: 100_000,
        max_pixels: 1_000_000,
    };
    let err = decode(&bytes, &wide).unwrap_err();
    assert!(matches!(err, VisionError::TooLarge { .. }), "{err:?}");
    // A real image over a small limit.
    let small = DecodeLimits {
        max_width: 100,
        max_height: 100,
        max_pixels: 10_000,
    };
    let err = decode(&read("rgb_h129_w255.png"), &small).unwrap_err();
    assert!(
        matches!(
            err,
            VisionError::TooLarge {
                width: 255,
                height: 129,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn extreme_aspect_ratio_is_refused() {
    let img = load("rgb_h1_w300.png");
    let err = preprocess(&img, &PreprocessConfig::qwen35()).unwrap_err();
    assert!(
        matches!(
            err,
            VisionError::AspectRatio {
                width: 300,
                height: 1
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        smart_resize(0, 5, 32, 1, 10),
        Err(VisionError::Empty { .. })
    ));
    assert!(matches!(
        smart_resize(usize::MAX, usize::MAX, 32, 1, 10),
        Err(VisionError::SizeOverflow(_))
    ));
}

#[test]
fn official_setting_token_counts() {
    // A 1080p frame with Qwen3.5's own settings: 1088x1920 -> 68x120 patches -> 2040 tokens.
    let cfg = PreprocessConfig::qwen35();
    assert_eq!(
        smart_resize(1080, 1920, 32, cfg.min_pixels, cfg.max_pixels).unwrap(),
        (1088, 1920)
    );
    let img = RgbImage::from_raw(7, 5, vec![128; 105]).unwrap();
    let p = preprocess(&img, &cfg).unwrap();
    // 5x7 is scaled up to at least 256² pixels: 224x320.
    assert_eq!(p.grid, [1, 14, 20]);
    assert_eq!(p.pixels.cols, 3 * 2 * 16 * 16);
    assert_eq!(p.merged_tokens(), 70);
    // 128/255 rescaled and normalised with mean = std = 0.5.
    let v = ((128.0f64 / 255.0) as f32 - 0.5) / 0.5;
    assert!(p.pixels.data.iter().all(|&x| x == v));
}

/// The tiny vision-language fixture's own images and `preprocessor_config.json` (made by
/// `tools/make_tiny_vl_model.py`, the Qwen3.5 settings with a small size range): the exact
/// `pixel_values` its model references were computed from.
#[test]
fn tiny_vl_fixture_pixel_values() {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-vl-f32");
    let cfg = PreprocessConfig::from_file(&d.join("preprocessor_config.json")).unwrap();
    for (key, grid) in [("a", [1, 6, 4]), ("b", [1, 4, 8])] {
        let bytes = std::fs::read(d.join(format!("image_{key}.png"))).unwrap();
        let got = preprocess(&decode(&bytes, &DecodeLimits::default()).unwrap(), &cfg).unwrap();
        assert_eq!(got.grid, grid, "image_{key}");
        let (shape, want) =
            qinfer_formats::npy::read_f32(&d.join(format!("pixel_values_{key}.npy"))).unwrap();
        assert_eq!(shape, [got.pixels.rows, got.pixels.cols], "image_{key}");
        assert!(
            want.iter()
                .zip(&got.pixels.data)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "image_{key}: pixel_values differ"
        );
    }
}
