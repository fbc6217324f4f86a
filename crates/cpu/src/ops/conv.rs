//! Causal depthwise 1-D convolution (Gated DeltaNet's short conv), with its rolling state.
//!
//! The taps come transposed to `[K, C]` ([`conv_taps`], once at load) so each output row is `K`
//! contiguous multiply-adds over all channels (vectorisable), followed by SiLU over the row with
//! the vectorised exponential. Rows are independent, so they are split over the pool; every
//! element is computed the same way whatever the split.

use qinfer_tensor::Mat;

use super::elementwise::silu;
use crate::Cpu;
use crate::kernels::{self, Isa};

/// Output rows per parallel chunk.
const ROWS_PER_TASK: usize = 16;

pub use qinfer_backend::conv_taps;

/// Causal depthwise conv over time followed by SiLU.
///
/// * `x`: `[T, C]` new inputs.
/// * `state`: `[K-1, C]`, the `K-1` inputs before `x` (zeros at sequence start); replaced by the
///   last `K-1` rows of `state ‖ x`.
/// * `taps`: `[K, C]` ([`conv_taps`]); tap `K-1` multiplies the current token, tap 0 the token
///   `K-1` steps back (PyTorch `Conv1d` cross-correlation).
///
/// Returns `silu(conv(x))`, `[T, C]`.
///
/// # Panics
/// If the shapes disagree.
pub fn causal_conv1d_silu(
    cpu: Cpu,
    x: &Mat,
    state: &mut [f32],
    taps: &[f32],
    kernel: usize,
) -> Mat {
    let (t, c) = (x.rows, x.cols);
    let hist = kernel - 1;
    assert_eq!(state.len(), hist * c, "conv state must be [K-1, C]");
    assert_eq!(taps.len(), kernel * c, "conv taps must be [K, C]");
    // Row `r` of the window `state ‖ x` ([K-1 + T, C]) that every output reads from.
    let window = |r: usize| -> &[f32] {
        if r < hist {
            &state[r * c..(r + 1) * c]
        } else {
            x.row(r - hist)
        }
    };
    let isa = cpu.isa();
    let mut out = Mat::zeros(t, c);
    crate::pool::parallel_chunks_mut(&mut out.data, ROWS_PER_TASK * c, &|task, rows| {
        for (r, o) in rows.chunks_exact_mut(c).enumerate() {
            let ti = task * ROWS_PER_TASK + r;
            for (i, tap) in taps.chunks_exact(c).enumerate() {
                for ((o, wi), xi) in o.iter_mut().zip(tap).zip(window(ti + i)) {
                    *o += wi * xi;
                }
            }
            silu_in_place(isa, o);
        }
    });
    // The new history: the last K-1 rows of `state ‖ x`: x's last `from_x` rows after the
    // state's last `K-1 − from_x` rows, moved to its front.
    let from_x = t.min(hist);
    state.copy_within(from_x * c.., 0);
    state[(hist - from_x) * c..].copy_from_slice(&x.data[(t - from_x) * c..t * c]);
    out
}

/// [`causal_conv1d_silu`] that also writes the rolling window after every row: `kept` is
/// `[T, (K-1)·C]`, row `t` the last `K-1` rows of `state ‖ x[..=t]` (what `state` would be
/// after `t + 1` one-row calls). The output and the final `state` are those of
/// [`causal_conv1d_silu`].
///
/// # Panics
/// If the shapes disagree.
pub fn causal_conv1d_silu_keep(
    cpu: Cpu,
    x: &Mat,
    state: &mut [f32],
    taps: &[f32],
    kernel: usize,
    kept: &mut [f32],
) -> Mat {
    let (t, c, hist) = (x.rows, x.cols, kernel - 1);
    let w = hist * c;
    assert_eq!(kept.len(), t * w, "conv: kept windows must be [T, (K-1)·C]");
    for (ti, row) in kept.chunks_exact_mut(w.max(1)).take(t).enumerate() {
        // Rows `ti + 1 .. ti + K` of `state ‖ x`: the state's tail, then x up to `ti`.
        let from_state = hist.saturating_sub(ti + 1);
        row[..from_state * c].copy_from_slice(&state[(hist - from_state) * c..]);
        let first_x = (ti + 1).saturating_sub(hist);
        row[from_state * c..].copy_from_slice(&x.data[first_x * c..(ti + 1) * c]);
    }
    causal_conv1d_silu(cpu, x, state, taps, kernel)
}

/// `x ← silu(x) = x / (1 + e^{−x})` for every element.
fn silu_in_place(isa: Isa, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: `isa()` confirmed the features.
        unsafe { silu_avx512(x) };
        return;
    }
    let _ = isa;
    x.iter_mut().for_each(|v| *v = silu(*v));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,fma")]
unsafe fn silu_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    for c in x.chunks_mut(16) {
        let m: __mmask16 = ((1u32 << c.len()) - 1) as u16;
        // SAFETY: the mask covers only the `c.len()` elements.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, c.as_ptr());
            _mm512_mask_storeu_ps(c.as_mut_ptr(), m, kernels::vmath::silu(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot() {
        let (c, k) = (3, 4);
        let w: Vec<f32> = (0..c * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w = conv_taps(&w, c, k);
        let data: Vec<f32> = (0..7 * c).map(|i| (i as f32 * 0.71).cos()).collect();
        let mut s1 = vec![0.0; (k - 1) * c];
        let whole = causal_conv1d_silu(
            Cpu::default(),
            &Mat::from_vec(data.clone(), 7, c),
            &mut s1,
            &w,
            k,
        );
        let mut s2 = vec![0.0; (k - 1) * c];
        let mut rows = Vec::new();
        for (a, b) in [(0, 2), (2, 3), (3, 7)] {
            let part = Mat::from_vec(data[a * c..b * c].to_vec(), b - a, c);
            rows.extend(causal_conv1d_silu(Cpu::default(), &part, &mut s2, &w, k).data);
        }
        assert_eq!(whole.data, rows);
        assert_eq!(s1, s2);
    }

    /// The kept windows are the states one-row calls pass through, for steps shorter and
    /// longer than the window, from a non-zero incoming state.
    #[test]
    fn kept_windows_equal_one_row_states() {
        let (c, k) = (3, 4);
        let w = conv_taps(
            &(0..c * k)
                .map(|i| (i as f32 * 0.37).sin())
                .collect::<Vec<_>>(),
            c,
            k,
        );
        for t in [1, 2, 3, 5] {
            let data: Vec<f32> = (0..t * c).map(|i| (i as f32 * 0.71).cos()).collect();
            let init: Vec<f32> = (0..(k - 1) * c).map(|i| i as f32 - 4.0).collect();
            let (mut s_keep, mut s_one) = (init.clone(), init);
            let mut kept = vec![f32::NAN; t * (k - 1) * c];
            let x = Mat::from_vec(data.clone(), t, c);
            let out = causal_conv1d_silu_keep(Cpu::default(), &x, &mut s_keep, &w, k, &mut kept);
            for ti in 0..t {
                let row = Mat::from_vec(data[ti * c..(ti + 1) * c].to_vec(), 1, c);
                let o = causal_conv1d_silu(Cpu::default(), &row, &mut s_one, &w, k);
                assert_eq!(o.data, out.row(ti), "t={t} output {ti}");
                assert_eq!(
                    &kept[ti * (k - 1) * c..(ti + 1) * (k - 1) * c],
                    &s_one[..],
                    "t={t} window {ti}"
                );
            }
            assert_eq!(s_keep, s_one);
        }
    }

    /// The vectorised SiLU against `ops::silu`: the exponentials differ by ≤ 2 ulp, so the
    /// results by a few ulp (1e-6 relative, plus 1e-30 absolute near zero).
    #[test]
    fn silu_tiers_agree() {
        let xs: Vec<f32> = (0..1001).map(|i| -100.0 + 0.2 * i as f32).collect();
        let mut got = xs.clone();
        silu_in_place(Isa::best(), &mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = silu(*x);
            assert!(
                (g - want).abs() <= 1e-6 * want.abs() + 1e-30,
                "silu({x}) = {g}, want {want}"
            );
        }
    }
}
