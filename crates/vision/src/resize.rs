//! The target size (`smart_resize`) and the resize itself (Pillow's bicubic), both bit-exact
//! with what transformers' PIL-backend Qwen2-VL processor runs.
//!
//! Pillow's `Image.resize(size, BICUBIC)` on an RGB8 image (`ImagingResample` in
//! libImaging/Resample.c) is separable and works in fixed point:
//!
//! * per axis, output pixel `i` is centred on `(i + 0.5)·scale` in input coordinates, with
//!   `scale = in / out`; the cubic kernel (a = −0.5, support 2) is stretched by
//!   `max(scale, 1)`, so a downscale averages over more input pixels (antialiasing) and an
//!   upscale interpolates from 4;
//! * the taps are the inputs `[trunc(centre − support + 0.5), trunc(centre + support + 0.5))`
//!   clipped to the image, weighted `kernel((j − centre + 0.5) / max(scale, 1))`, normalised to
//!   sum 1 in `f64`, then rounded half away from zero to integers with 22 fraction bits;
//! * each output sample is `clamp((2^21 + Σ w·v) >> 22, 0, 255)` in 32-bit integers;
//! * the two passes go through a uint8 intermediate; an axis whose size does not change is not
//!   filtered at all (no pass, not an identity filter);
//! * the pass order matters (the intermediate is rounded) and is Pillow 13's: vertical first
//!   when the height shrinks by more than twice as many pixels as the width does
//!   (`in_h − out_h > 2·(in_w − out_w)`, so always when the height shrinks and the width
//!   grows), else horizontal first. Pillow ≤ 12 always ran horizontal first; the fixtures pin
//!   Pillow 13.0.0, where this rule was measured (it matched every one of ~650 probed sizes).

use std::borrow::Cow;

use crate::{RgbImage, VisionError};

/// `smart_resize` from transformers' Qwen2-VL image processor: the size closest to
/// `height` x `width` whose sides are multiples of `factor` and whose area lies in
/// `[min_pixels, max_pixels]` (only approximately, as in the Python: the rounding up for
/// `min_pixels` may overshoot `max_pixels`). Returns `(height, width)`.
///
/// Bit-exact with the Python: `round` is round-half-to-even on the `f64` quotient, and
/// `sqrt`, `floor` and `ceil` are taken in `f64` on the same operands in the same order.
/// Refuses an aspect ratio over 200 (as the Python does), a zero side, and sizes whose area
/// is not exact in an `f64` (over 2^53, where the Python's integer arithmetic would be exact
/// but ours not).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: u64,
    max_pixels: u64,
) -> Result<(usize, usize), VisionError> {
    if height == 0 || width == 0 {
        return Err(VisionError::Empty { width, height });
    }
    if factor == 0 || min_pixels == 0 || max_pixels == 0 {
        return Err(VisionError::SizeOverflow(format!(
            "smart_resize needs a positive factor and pixel bounds (factor {factor}, min {min_pixels}, max {max_pixels})"
        )));
    }
    let overflow = || {
        VisionError::SizeOverflow(format!(
            "resizing {width}x{height} to multiples of {factor}"
        ))
    };
    const EXACT: u64 = 1 << 53;
    let (h, w, f) = (height as u64, width as u64, factor as u64);
    let area = h
        .checked_mul(w)
        .filter(|&a| a <= EXACT)
        .ok_or_else(overflow)?;
    if [min_pixels, max_pixels, f].iter().any(|&v| v > EXACT) {
        return Err(overflow());
    }
    let (hf, wf, ff) = (h as f64, w as f64, f as f64);
    if hf.max(wf) / hf.min(wf) > 200.0 {
        return Err(VisionError::AspectRatio { width, height });
    }
    // A float that is a whole number of `factor`s, times factor, checked.
    let times_factor = |n: f64| -> Result<u64, VisionError> {
        if !(0.0..EXACT as f64).contains(&n) {
            return Err(overflow());
        }
        (n as u64).checked_mul(f).ok_or_else(overflow)
    };
    let mut h_bar = times_factor((hf / ff).round_ties_even())?;
    let mut w_bar = times_factor((wf / ff).round_ties_even())?;
    let bar_area = u128::from(h_bar) * u128::from(w_bar);
    if bar_area > u128::from(max_pixels) {
        let beta = (area as f64 / max_pixels as f64).sqrt();
        h_bar = f.max(times_factor((hf / beta / ff).floor())?);
        w_bar = f.max(times_factor((wf / beta / ff).floor())?);
    } else if bar_area < u128::from(min_pixels) {
        let beta = (min_pixels as f64 / area as f64).sqrt();
        h_bar = times_factor((hf * beta / ff).ceil())?;
        w_bar = times_factor((wf * beta / ff).ceil())?;
    }
    if h_bar == 0 || w_bar == 0 {
        // Only reachable with min_pixels 0, which the processor refuses too.
        return Err(VisionError::Empty {
            width: w_bar as usize,
            height: h_bar as usize,
        });
    }
    let h_out = usize::try_from(h_bar).map_err(|_| overflow())?;
    let w_out = usize::try_from(w_bar).map_err(|_| overflow())?;
    Ok((h_out, w_out))
}

/// Resizes to `new_height` x `new_width` exactly as Pillow's `Image.resize(..., BICUBIC)` does
/// an RGB image (byte-identical output; see the module docs for the algorithm).
///
/// # Panics
/// If either size, old or new, is zero.
pub fn resize_bicubic(img: &RgbImage, new_height: usize, new_width: usize) -> RgbImage {
    let (w, h) = (img.width(), img.height());
    assert!(
        w > 0 && h > 0 && new_width > 0 && new_height > 0,
        "resize_bicubic: {w}x{h} -> {new_width}x{new_height} has an empty side"
    );
    let shrink_h = h as i128 - new_height as i128;
    let shrink_w = w as i128 - new_width as i128;
    let vertical_first = shrink_h > 0 && shrink_h > 2 * shrink_w;
    let mut cur = Cow::Borrowed(img);
    for pass_is_vertical in [vertical_first, !vertical_first] {
        if pass_is_vertical && new_height != h {
            let taps = Taps::bicubic(h, new_height);
            let data = vertical(cur.as_bytes(), cur.width(), &taps);
            cur = Cow::Owned(
                RgbImage::from_raw(cur.width(), new_height, data).expect("vertical pass shape"),
            );
        } else if !pass_is_vertical && new_width != w {
            let taps = Taps::bicubic(w, new_width);
            let data = horizontal(cur.as_bytes(), w, cur.height(), &taps);
            cur = Cow::Owned(
                RgbImage::from_raw(new_width, cur.height(), data).expect("horizontal pass shape"),
            );
        }
    }
    cur.into_owned()
}

/// Pillow's fixed point: 32 bits − 8 for the sample − 2 for the kernel's overshoot.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// For each output position along one axis: the first input index and the fixed-point weights
/// of the consecutive inputs it reads (Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Taps {
    fn bicubic(in_size: usize, out_size: usize) -> Self {
        const SUPPORT: f64 = 2.0;
        // Pillow takes the source box as `float` coordinates: (0, in_size).
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = if scale < 1.0 { 1.0 } else { scale };
        let support = SUPPORT * filterscale;
        let inv_filterscale = 1.0 / filterscale;
        let mut first = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for i in 0..out_size {
            let center = (i as f64 + 0.5) * scale;
            // C's `(int)` conversion truncates toward zero.
            let lo = ((center - support + 0.5) as i64).max(0);
            let hi = ((center + support + 0.5) as i64).min(in_size as i64);
            let k: Vec<f64> = (lo..hi)
                .map(|j| bicubic((j as f64 - center + 0.5) * inv_filterscale))
                .collect();
            let sum: f64 = k.iter().sum();
            let norm = |v: f64| if sum != 0.0 { v / sum } else { v };
            let one = f64::from(1u32 << PRECISION_BITS);
            weights.push(
                k.iter()
                    .map(|&v| {
                        let v = norm(v);
                        if v < 0.0 {
                            (-0.5 + v * one) as i32
                        } else {
                            (0.5 + v * one) as i32
                        }
                    })
                    .collect(),
            );
            first.push(lo as usize);
        }
        Taps { first, weights }
    }
}

/// The cubic convolution kernel with a = −0.5, written as Pillow writes it (same operation
/// order, so the same `f64` roundings).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// `clamp(acc >> 22, 0, 255)`: Pillow's `clip8`.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// `[h, w, 3]` -> `[h, out_w, 3]`.
fn horizontal(src: &[u8], w: usize, h: usize, taps: &Taps) -> Vec<u8> {
    let out_w = taps.first.len();
    let mut out = Vec::with_capacity(h * out_w * 3);
    for row in src.chunks_exact(w * 3) {
        for (&first, k) in taps.first.iter().zip(&taps.weights) {
            let mut acc = [HALF; 3];
            for (j, &wt) in k.iter().enumerate() {
                let px = &row[(first + j) * 3..][..3];
                for c in 0..3 {
                    acc[c] += i32::from(px[c]) * wt;
                }
            }
            out.extend(acc.map(clip8));
        }
    }
    out
}

/// `[h, w, 3]` -> `[out_h, w, 3]`.
fn vertical(src: &[u8], w: usize, taps: &Taps) -> Vec<u8> {
    let stride = w * 3;
    let mut out = Vec::with_capacity(taps.first.len() * stride);
    let mut acc = vec![0i32; stride];
    for (&first, k) in taps.first.iter().zip(&taps.weights) {
        acc.fill(HALF);
        for (j, &wt) in k.iter().enumerate() {
            let row = &src[(first + j) * stride..][..stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i32::from(v) * wt;
            }
        }
        out.extend(acc.iter().map(|&a| clip8(a)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_roughly() {
        for (n_in, n_out) in [(5, 32), (300, 288), (129, 64), (7, 7), (1, 3), (3, 1)] {
            let taps = Taps::bicubic(n_in, n_out);
            for k in &taps.weights {
                let s: i64 = k.iter().map(|&v| i64::from(v)).sum();
                assert!(
                    (s - (1 << 22)).abs() <= k.len() as i64,
                    "{n_in}->{n_out}: {s}"
                );
            }
        }
    }

    #[test]
    fn same_size_is_a_copy_and_constant_stays_constant() {
        let img = RgbImage::from_raw(3, 2, (0..18).collect()).unwrap();
        assert_eq!(resize_bicubic(&img, 2, 3), img);
        let flat = RgbImage::from_raw(5, 4, vec![77; 60]).unwrap();
        let big = resize_bicubic(&flat, 9, 13);
        assert!(big.as_bytes().iter().all(|&v| v == 77));
    }
}
