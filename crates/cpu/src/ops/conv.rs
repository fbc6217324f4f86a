//! Causal depthwise 1-D convolution (Gated DeltaNet's short conv), with its rolling state.

use qinfer_tensor::Mat;

use super::elementwise::silu;

/// Causal depthwise conv over time followed by SiLU.
///
/// * `x`: `[T, C]` new inputs.
/// * `state`: `[K-1, C]`, the `K-1` inputs before `x` (zeros at sequence start); replaced by the
///   last `K-1` rows of `state ‖ x`.
/// * `w`: `[C, K]`; tap `K-1` multiplies the current token, tap 0 the token `K-1` steps back
///   (PyTorch `Conv1d` cross-correlation).
///
/// Returns `silu(conv(x))`, `[T, C]`.
///
/// # Panics
/// If the shapes disagree.
pub fn causal_conv1d_silu(x: &Mat, state: &mut [f32], w: &[f32], kernel: usize) -> Mat {
    let (t, c) = (x.rows, x.cols);
    let hist = kernel - 1;
    assert_eq!(state.len(), hist * c, "conv state must be [K-1, C]");
    assert_eq!(w.len(), c * kernel, "conv weight must be [C, K]");
    // [K-1 + T, C]: the window every output reads from.
    let mut window = Vec::with_capacity((hist + t) * c);
    window.extend_from_slice(state);
    window.extend_from_slice(&x.data);
    let mut out = Mat::zeros(t, c);
    for ti in 0..t {
        let out_row = out.row_mut(ti);
        for ch in 0..c {
            let taps = &w[ch * kernel..(ch + 1) * kernel];
            let mut acc = 0.0;
            for (i, tap) in taps.iter().enumerate() {
                acc += tap * window[(ti + i) * c + ch];
            }
            out_row[ch] = silu(acc);
        }
    }
    state.copy_from_slice(&window[t * c..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_equals_one_shot() {
        let (c, k) = (3, 4);
        let w: Vec<f32> = (0..c * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let data: Vec<f32> = (0..7 * c).map(|i| (i as f32 * 0.71).cos()).collect();
        let mut s1 = vec![0.0; (k - 1) * c];
        let whole = causal_conv1d_silu(&Mat::from_vec(data.clone(), 7, c), &mut s1, &w, k);
        let mut s2 = vec![0.0; (k - 1) * c];
        let mut rows = Vec::new();
        for (a, b) in [(0, 2), (2, 3), (3, 7)] {
            let part = Mat::from_vec(data[a * c..b * c].to_vec(), b - a, c);
            rows.extend(causal_conv1d_silu(&part, &mut s2, &w, k).data);
        }
        assert_eq!(whole.data, rows);
        assert_eq!(s1, s2);
    }
}
