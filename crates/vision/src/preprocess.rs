//! RGB8 image to the vision tower's input rows, as `Qwen2VLImageProcessorPil._preprocess`.
//!
//! Shapes: `H x W` the resized image, `p` the patch size, `m` the merge size, `T` the temporal
//! patch size, `gh = H / p`, `gw = W / p`. The output has one row per patch,
//! `[gh·gw, 3·T·p·p]`, rows in 2x2-block-major order `(bh, bw, mh, mw)` — patch
//! `(bh·m + mh, bw·m + mw)` — so that each run of `m²` rows is one merger group, and each row
//! ordered `(channel, t, py, px)` with the still image repeated over `t`.
//!
//! Numbers: transformers rescales in `f64` (`uint8 → float64 · rescale_factor`) and rounds to
//! `f32`, then normalises in `f32`: `(x − mean) / std` with `mean` and `std` as `float32`.
//! Every `u8` level of a channel maps to one value, so a 256-entry table per channel computes
//! exactly that.

use qinfer_tensor::Mat;

use crate::{PreprocessConfig, RgbImage, VisionError, resize_bicubic, smart_resize};

/// One image's rows for the vision tower.
#[derive(Clone, Debug, PartialEq)]
pub struct Patches {
    /// `[grid_t·grid_h·grid_w, 3·temporal_patch_size·patch_size²]`, block-major (module docs).
    pub pixels: Mat,
    /// `[t, h, w]` in patches (`t` = 1 for an image): transformers' `image_grid_thw`.
    pub grid: [usize; 3],
    /// The merge size the rows were ordered for.
    pub merge_size: usize,
}

impl Patches {
    /// How many LLM tokens (`<|image_pad|>`) the image becomes: `t·h·w / merge²`.
    pub fn merged_tokens(&self) -> usize {
        let [t, h, w] = self.grid;
        t * h * w / (self.merge_size * self.merge_size)
    }
}

/// Resizes (smart_resize + Pillow bicubic), rescales, normalises and patchifies `img`.
pub fn preprocess(img: &RgbImage, cfg: &PreprocessConfig) -> Result<Patches, VisionError> {
    cfg.validate()?;
    let (p, m, t) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let factor = p * m; // both bounded by validate()
    let (h, w) = smart_resize(
        img.height(),
        img.width(),
        factor,
        cfg.min_pixels,
        cfg.max_pixels,
    )?;
    let overflow = || VisionError::SizeOverflow(format!("patches of a {w}x{h} image"));
    let (gh, gw) = (h / p, w / p);
    let cols = 3 * t * p * p;
    let rows = gh.checked_mul(gw).ok_or_else(overflow)?;
    rows.checked_mul(cols)
        .filter(|&n| n <= isize::MAX as usize / 4)
        .ok_or_else(overflow)?;
    let resized = resize_bicubic(img, h, w);
    let px = resized.as_bytes();

    // [3][256]: the normalised value of each level, per channel.
    let table: Vec<[f32; 256]> = (0..3)
        .map(|c| {
            std::array::from_fn(|v| {
                let x = (v as f64 * cfg.rescale) as f32;
                (x - cfg.mean[c]) / cfg.std[c]
            })
        })
        .collect();

    let mut pixels = Mat::zeros(rows, cols);
    let mut out = pixels.rows_iter_mut();
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let row = out.next().expect("one row per patch");
                    let (y0, x0) = ((bh * m + mh) * p, (bw * m + mw) * p);
                    // [3, T, p, p]
                    for (c, plane) in row.chunks_exact_mut(t * p * p).enumerate() {
                        let (first, rest) = plane.split_at_mut(p * p);
                        for py in 0..p {
                            let line = &px[((y0 + py) * w + x0) * 3..][..p * 3];
                            for (dst, rgb) in
                                first[py * p..][..p].iter_mut().zip(line.chunks_exact(3))
                            {
                                *dst = table[c][usize::from(rgb[c])];
                            }
                        }
                        for frame in rest.chunks_exact_mut(p * p) {
                            frame.copy_from_slice(first);
                        }
                    }
                }
            }
        }
    }
    Ok(Patches {
        pixels,
        grid: [1, gh, gw],
        merge_size: m,
    })
}
