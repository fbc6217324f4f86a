//! Partial, interleaved multimodal RoPE (mRoPE) angles.
//!
//! Each head rotates only its first `rotary_dim` dims, in NeoX pairs `(d, d + rotary_dim/2)`.
//! Frequency `i` (of `rotary_dim/2`) takes its angle from one of three position streams
//! (time, height, width): with interleaving, `i mod 3 == 1` (and `i < 3·section[1]`) → height,
//! `i mod 3 == 2` (and `i < 3·section[2]`) → width, otherwise time. For text all three streams
//! equal the token position, so this reduces to ordinary partial RoPE; the streams exist so
//! image tokens can be added without touching this file.

use crate::config::{RopeConfig, Yarn};

/// Position of a token in the three mRoPE streams `(t, h, w)`.
pub type Position3 = [u32; 3];

/// The text position `p` in all three streams.
pub fn text_position(p: usize) -> Position3 {
    let p = u32::try_from(p).unwrap_or(u32::MAX);
    [p, p, p]
}

/// `cos` and `sin` of every frequency's angle for each row of a step, `[T, rotary_dim / 2]`
/// each (what [`qinfer_backend::Backend::rope`] takes).
#[derive(Clone, Debug)]
pub struct RopeAngles {
    pub rows: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct Rope {
    /// `θ^(−2i / rotary_dim)`, `[rotary_dim / 2]`, computed in `f32` as the reference does
    /// (blended with its interpolation under YaRN).
    inv_freq: Vec<f32>,
    /// Stream (0 = t, 1 = h, 2 = w) of each frequency.
    stream: Vec<usize>,
    /// YaRN's multiplier of cos and sin (none without YaRN: the angles stay bit-identical).
    scale: Option<f32>,
}

/// YaRN's frequencies, in transformers' order of `f32` operations (`_compute_yarn_parameters`):
/// `inv = interp·(1 − e) + extrap·e` with `e = 1 − ramp`, the ramp linear over the correction
/// range of dims (computed in `f64`, as Python does) and clamped to [0, 1].
fn yarn_inv_freq(c: &RopeConfig, y: &Yarn) -> Vec<f32> {
    let dim = c.rotary_dim;
    let base = c.theta;
    let correction_dim = |rotations: f64| {
        dim as f64 * (y.original_ctx as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    let (mut low, mut high) = (correction_dim(y.beta_fast), correction_dim(y.beta_slow));
    if y.truncate {
        (low, high) = (low.floor(), high.ceil());
    }
    let (low, mut high) = (low.max(0.0), high.min((dim - 1) as f64));
    if low == high {
        high += 0.001;
    }
    let (theta, factor) = (base as f32, y.factor as f32);
    let (low32, span) = (low as f32, (high - low) as f32);
    (0..dim / 2)
        .map(|i| {
            let pos_freq = theta.powf((2 * i) as f32 / dim as f32);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (factor * pos_freq);
            let ramp = ((i as f32 - low32) / span).clamp(0.0, 1.0);
            let e = 1.0 - ramp;
            interpolation * (1.0 - e) + extrapolation * e
        })
        .collect()
}

impl Rope {
    pub fn new(c: &RopeConfig) -> Self {
        let half = c.rotary_dim / 2;
        let theta = c.theta as f32;
        let inv_freq = match &c.yarn {
            Some(y) => yarn_inv_freq(c, y),
            None => (0..half)
                .map(|i| 1.0 / theta.powf((2 * i) as f32 / c.rotary_dim as f32))
                .collect(),
        };
        let [_, sh, sw] = c.mrope_section;
        let stream = (0..half)
            .map(|i| {
                if c.mrope_interleaved {
                    match i % 3 {
                        1 if i < 3 * sh => 1,
                        2 if i < 3 * sw => 2,
                        _ => 0,
                    }
                } else {
                    let st = c.mrope_section[0];
                    if i < st {
                        0
                    } else if i < st + sh {
                        1
                    } else {
                        2
                    }
                }
            })
            .collect();
        Rope {
            inv_freq,
            stream,
            scale: c.yarn.map(|y| y.attention_factor as f32),
        }
    }

    /// The inverse frequencies, `[rotary_dim / 2]`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// YaRN's multiplier of cos and sin (`None` without YaRN).
    pub fn scale(&self) -> Option<f32> {
        self.scale
    }

    /// The angles of every row of a step, at each of `positions` (computed once per step
    /// and shared by every attention layer).
    pub fn angles_of(&self, positions: &[Position3]) -> RopeAngles {
        let n = positions.len() * self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for &p in positions {
            let (c, s) = self.angles(p);
            cos.extend(c);
            sin.extend(s);
        }
        RopeAngles {
            rows: positions.len(),
            cos,
            sin,
        }
    }

    /// `(cos, sin)` of every frequency's angle at `pos`.
    pub fn angles(&self, pos: Position3) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .zip(&self.stream)
            .map(|(f, &s)| {
                let a = pos[s] as f32 * f;
                match self.scale {
                    Some(m) => (a.cos() * m, a.sin() * m),
                    None => (a.cos(), a.sin()),
                }
            })
            .unzip()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(interleaved: bool) -> RopeConfig {
        RopeConfig {
            theta: 1e7,
            rotary_dim: 64,
            mrope_section: [11, 11, 10],
            mrope_interleaved: interleaved,
            yarn: None,
        }
    }

    #[test]
    fn interleaved_streams_follow_i_mod_3() {
        let r = Rope::new(&config(true));
        assert_eq!(&r.stream[..7], &[0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(r.stream.iter().filter(|&&s| s == 1).count(), 11);
        assert_eq!(r.stream.iter().filter(|&&s| s == 2).count(), 10);
        assert_eq!(r.stream[30], 0);
        assert_eq!(r.stream[31], 1);
    }

    /// With t = h = w, mRoPE is plain partial RoPE whichever assignment is used.
    #[test]
    fn text_positions_reduce_to_plain_rope() {
        let (a, b) = (Rope::new(&config(true)), Rope::new(&config(false)));
        for p in [0, 1, 77, 4096] {
            assert_eq!(a.angles(text_position(p)), b.angles(text_position(p)));
        }
        let (cos, sin) = a.angles([5, 0, 0]);
        assert_eq!(cos[1], 1.0);
        assert!(sin[0] != 0.0);
    }
}
