//! The scale searches shared by qinfer's K-quant encoders (our own; gguf-python has none).
//!
//! Two grids cover every K-quant:
//!
//! * **affine** (`x ≈ scale · l − min`, `l` in `0..=nmax`, `min ≥ 0`): Q2_K, Q4_K, Q5_K;
//! * **symmetric** (`x ≈ scale · l`, `l` in `lo..=hi`): Q3_K, Q6_K.
//!
//! Each works in three steps on a 256-value super-block split into sub-blocks:
//!
//! 1. **Sub-block fit.** Candidate grids stretch the plain range-to-levels step by factors
//!    `(n + 0.1k) / n`, `k = −10..=10` (the symmetric grid tries both orientations of its lopsided
//!    level range: the element of largest magnitude mapped near `lo` and near `hi`). For each,
//!    levels are assigned by rounding and the scale (and minimum) re-solved by least squares,
//!    refined Lloyd-style — reassign, re-solve — while the squared error drops. Errors are
//!    unweighted: the target is plain round-trip MSE.
//! 2. **Integer sub-block scales.** The super-block's `f16` step maps the largest sub-block
//!    scale onto the integer limit; every sub-block scale (and minimum) rounds to an integer.
//! 3. **Neighbourhood search.** With the `f16` steps fixed, each sub-block tries its integer
//!    scale (and minimum) ±1, reassigns levels and keeps the choice with the least error,
//!    measured through the decoder's exact `f32` arithmetic.

use half::f16;

use crate::{f16_covering, nearest_int};

/// Elements per super-block.
pub(crate) const BLOCK: usize = 256;
/// The largest sub-block any format uses.
const MAX_SUB: usize = 32;

/// A super-block on the affine grid: `x ≈ (d · scales[s]) · levels − dmin · mins[s]`.
#[derive(Debug)]
pub(crate) struct AffineSuperBlock {
    pub d: f16,
    pub dmin: f16,
    /// One per sub-block (the first `256 / sub` are used).
    pub scales: [u8; 16],
    pub mins: [u8; 16],
    pub levels: [u8; BLOCK],
}

/// Quantizes 256 values to levels `0..=nmax` in sub-blocks of `sub`, with integer sub-block
/// scales and minimums in `0..=int_max`.
pub(crate) fn quantize_affine(
    x: &[f32; BLOCK],
    sub: usize,
    nmax: u8,
    int_max: i32,
) -> AffineSuperBlock {
    debug_assert!(sub <= MAX_SUB && BLOCK / sub <= 16);
    let subs: Vec<&[f32]> = x.chunks_exact(sub).collect();
    let fits: Vec<(f32, f32)> = subs.iter().map(|s| fit_scale_min(s, nmax)).collect();
    let max_scale = fits.iter().fold(0.0f32, |m, f| m.max(f.0));
    let max_min = fits.iter().fold(0.0f32, |m, f| m.max(f.1));
    let d = f16_covering(max_scale / int_max as f32);
    let dmin = f16_covering(max_min / int_max as f32);
    let to_int = |v: f32, step: f16| {
        let step = step.to_f32();
        if step > 0.0 {
            nearest_int(v / step).clamp(0, int_max)
        } else {
            0
        }
    };

    let mut out = AffineSuperBlock {
        d,
        dmin,
        scales: [0; 16],
        mins: [0; 16],
        levels: [0; BLOCK],
    };
    let mut levels = [0u8; MAX_SUB];
    for (s, (x, fit)) in subs.iter().zip(fits).enumerate() {
        let (ls0, lm0) = (to_int(fit.0, d), to_int(fit.1, dmin));
        let mut best = (f32::INFINITY, 0u8, 0u8, [0u8; MAX_SUB]);
        for ls in (ls0 - 1).max(0)..=(ls0 + 1).min(int_max) {
            for lm in (lm0 - 1).max(0)..=(lm0 + 1).min(int_max) {
                // The decoder's arithmetic: (d · ls) · q − dmin · lm.
                let scale = d.to_f32() * ls as f32;
                let min = dmin.to_f32() * lm as f32;
                assign_affine(x, scale, min, nmax, &mut levels[..sub]);
                let err = affine_error(x, scale, min, &levels[..sub]);
                if err < best.0 {
                    best = (err, ls as u8, lm as u8, levels);
                }
            }
        }
        out.scales[s] = best.1;
        out.mins[s] = best.2;
        out.levels[s * sub..(s + 1) * sub].copy_from_slice(&best.3[..sub]);
    }
    out
}

/// Levels `round((x + min) / scale)` clamped to `0..=nmax` (all zero when `scale` is zero).
fn assign_affine(x: &[f32], scale: f32, min: f32, nmax: u8, out: &mut [u8]) {
    if scale <= 0.0 {
        out.fill(0);
        return;
    }
    let inv = 1.0 / scale;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = nearest_int((v + min) * inv).clamp(0, i32::from(nmax)) as u8;
    }
}

/// Squared error of `scale · level − min` against `x`.
fn affine_error(x: &[f32], scale: f32, min: f32, levels: &[u8]) -> f32 {
    x.iter()
        .zip(levels)
        .map(|(&v, &l)| {
            let e = scale * f32::from(l) - min - v;
            e * e
        })
        .sum()
}

/// Least-squares `(scale, min)` for fixed levels, with `min ≥ 0` (`x ≈ scale · l − min`).
fn solve_scale_min(x: &[f32], levels: &[u8]) -> (f32, f32) {
    let n = x.len() as f32;
    let (mut sl, mut sl2, mut sx, mut sxl) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
    for (&v, &l) in x.iter().zip(levels) {
        let l = f32::from(l);
        sl += l;
        sl2 += l * l;
        sx += v;
        sxl += v * l;
    }
    let det = n * sl2 - sl * sl;
    if det > 0.0 {
        let scale = (n * sxl - sx * sl) / det;
        let offset = (sl2 * sx - sl * sxl) / det;
        if offset <= 0.0 {
            return (scale.max(0.0), -offset);
        }
    }
    // The free fit wants a positive offset (or all levels are equal): pin the offset at zero.
    if sl2 > 0.0 {
        ((sxl / sl2).max(0.0), 0.0)
    } else {
        (0.0, (-sx / n).max(0.0))
    }
}

/// Step 1 on the affine grid: the best `(scale, min)` of one sub-block. The range always
/// includes zero (`min` cannot be negative in these formats).
fn fit_scale_min(x: &[f32], nmax: u8) -> (f32, f32) {
    let lo = x.iter().fold(0.0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        return (0.0, -lo);
    }
    let nmax_f = f32::from(nmax);
    let mut levels = [0u8; MAX_SUB];
    let levels = &mut levels[..x.len()];
    let mut best = (f32::INFINITY, 0.0f32, 0.0f32);
    for k in -10..=10 {
        let mut scale = (hi - lo) / (nmax_f + 0.1 * k as f32);
        let mut min = -lo;
        let mut err = f32::INFINITY;
        for _ in 0..4 {
            assign_affine(x, scale, min, nmax, levels);
            let (s, m) = solve_scale_min(x, levels);
            let e = affine_error(x, s, m, levels);
            if e >= err {
                break;
            }
            (scale, min, err) = (s, m, e);
        }
        if err < best.0 {
            best = (err, scale, min);
        }
    }
    (best.1, best.2)
}

/// A super-block on the symmetric grid: `x ≈ (d · scales[s]) · levels`.
#[derive(Debug)]
pub(crate) struct SymmetricSuperBlock {
    pub d: f16,
    /// One per sub-block (the first `256 / sub` are used).
    pub scales: [i8; 16],
    pub levels: [i8; BLOCK],
}

/// Quantizes 256 values to levels `lo..=hi` in sub-blocks of `sub`, with signed integer
/// sub-block scales in `int_lo..=int_hi`; the sub-block scale of largest magnitude maps to
/// `int_lo` (the longer side of the lopsided range).
pub(crate) fn quantize_symmetric(
    x: &[f32; BLOCK],
    sub: usize,
    (lo, hi): (i32, i32),
    (int_lo, int_hi): (i32, i32),
) -> SymmetricSuperBlock {
    debug_assert!(sub <= MAX_SUB && BLOCK / sub <= 16);
    let subs: Vec<&[f32]> = x.chunks_exact(sub).collect();
    let fits: Vec<f32> = subs.iter().map(|s| fit_symmetric(s, lo, hi)).collect();
    let m = fits
        .iter()
        .fold(0.0f32, |m, &s| if s.abs() > m.abs() { s } else { m });
    let d = f16_covering(m / int_lo as f32);

    let mut out = SymmetricSuperBlock {
        d,
        scales: [0; 16],
        levels: [0; BLOCK],
    };
    if d.to_f32() == 0.0 {
        return out;
    }
    let inv_d = 1.0 / d.to_f32();
    let mut levels = [0i8; MAX_SUB];
    for (s, (x, fit)) in subs.iter().zip(fits).enumerate() {
        let ls0 = nearest_int(fit * inv_d).clamp(int_lo, int_hi);
        let mut best = (f32::INFINITY, 0i8);
        for ls in (ls0 - 1).max(int_lo)..=(ls0 + 1).min(int_hi) {
            let scale = d.to_f32() * ls as f32;
            assign_symmetric(x, scale, lo, hi, &mut levels[..sub]);
            let err = symmetric_error(x, scale, &levels[..sub]);
            if err < best.0 {
                best = (err, ls as i8);
            }
        }
        out.scales[s] = best.1;
        let scale = d.to_f32() * f32::from(best.1);
        assign_symmetric(x, scale, lo, hi, &mut out.levels[s * sub..(s + 1) * sub]);
    }
    out
}

/// Levels `round(x / scale)` clamped to `lo..=hi` (all zero when `scale` is zero).
fn assign_symmetric(x: &[f32], scale: f32, lo: i32, hi: i32, out: &mut [i8]) {
    if scale == 0.0 {
        out.fill(0);
        return;
    }
    let inv = 1.0 / scale;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = nearest_int(v * inv).clamp(lo, hi) as i8;
    }
}

/// Squared error of `scale · level` against `x`.
fn symmetric_error(x: &[f32], scale: f32, levels: &[i8]) -> f32 {
    x.iter()
        .zip(levels)
        .map(|(&v, &l)| {
            let e = scale * f32::from(l) - v;
            e * e
        })
        .sum()
}

/// Step 1 on the symmetric grid: the best signed scale of one sub-block.
fn fit_symmetric(x: &[f32], lo: i32, hi: i32) -> f32 {
    let amax = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if amax == 0.0 {
        return 0.0;
    }
    let mut levels = [0i8; MAX_SUB];
    let levels = &mut levels[..x.len()];
    let mut best = (f32::INFINITY, 0.0f32);
    for target in [lo as f32, hi as f32] {
        for k in -10..=10 {
            let stretched = target + target.signum() * 0.1 * k as f32;
            let mut scale = amax / stretched;
            let mut err = f32::INFINITY;
            for _ in 0..4 {
                assign_symmetric(x, scale, lo, hi, levels);
                let (mut sxl, mut sll) = (0.0f32, 0.0f32);
                for (&v, &l) in x.iter().zip(levels.iter()) {
                    sxl += v * f32::from(l);
                    sll += f32::from(l) * f32::from(l);
                }
                if sll == 0.0 {
                    break;
                }
                let s = sxl / sll;
                let e = symmetric_error(x, s, levels);
                if e >= err {
                    break;
                }
                (scale, err) = (s, e);
            }
            if err < best.0 {
                best = (err, scale);
            }
        }
    }
    best.1
}
