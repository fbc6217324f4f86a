//! Rotary position embedding, NeoX ("rotate half") pairing on a leading slice of each head.

/// Rotates the first `2·cos.len()` dims of every `head_dim`-wide head in `x` (one token):
/// for `d < r = cos.len()`, the pair `(x[d], x[d + r])` turns by the angle whose cosine and sine
/// are `cos[d]`, `sin[d]`. Dims past `2r` are untouched (partial rotary).
///
/// # Panics
/// If the shapes disagree.
pub fn rope_neox(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let r = cos.len();
    assert!(
        sin.len() == r && 2 * r <= head_dim,
        "rope_neox: rotary width exceeds head"
    );
    assert!(
        x.len().is_multiple_of(head_dim),
        "rope_neox: input is not whole heads"
    );
    for head in x.chunks_exact_mut(head_dim) {
        for d in 0..r {
            let (a, b) = (head[d], head[d + r]);
            head[d] = a * cos[d] - b * sin[d];
            head[d + r] = b * cos[d] + a * sin[d];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_pairs_and_leaves_the_tail() {
        let mut x = vec![1.0, 0.0, 0.0, 1.0, 7.0, 7.0];
        let (c, s) = (0.0f32, 1.0f32); // 90 degrees
        rope_neox(&mut x, 6, &[c, 1.0], &[s, 0.0]);
        assert_eq!(x, vec![0.0, 0.0, 1.0, 1.0, 7.0, 7.0]);
    }
}
