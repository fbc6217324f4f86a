//! Causal softmax attention with grouped-query heads, over a KV cache (contiguous, or in the
//! blocks of a paged cache: one implementation serves both, so they agree bit for bit).

use qinfer_tensor::Mat;

use super::elementwise::softmax;
use super::matmul::dot;

/// Head layout of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// `Hq`.
    pub n_heads: usize,
    /// `Hkv`; query head `i` reads kv head `i / (Hq / Hkv)`.
    pub n_kv_heads: usize,
    /// `D`.
    pub head_dim: usize,
    /// Multiplier of `q·k` (usually `D^-½`).
    pub scale: f32,
}

/// `softmax(q kᵀ · scale + causal mask) v` for every query head.
///
/// * `q`: `[T, Hq·D]`, the queries of the last `T` positions of the sequence.
/// * `k`, `v`: `[S, Hkv·D]` with `S ≥ T`: the whole sequence so far, these `T` tokens included.
///   Query `t` sits at position `S - T + t` and sees keys `0..=S - T + t`.
///
/// Returns `[T, Hq·D]`.
///
/// # Panics
/// If the shapes disagree.
pub fn causal_attention(q: &Mat, k: &[f32], v: &[f32], shape: AttentionShape) -> Mat {
    causal_attention_blocks(q, &[(k, v)], shape)
}

/// [`causal_attention`] over keys and values stored in segments (the blocks of a paged KV
/// cache, in order) instead of one contiguous buffer: `kv` lists `(k, v)` pairs of
/// `[rows, Hkv·D]` each; together they are the `[S, Hkv·D]` of [`causal_attention`]. Every
/// output element is computed exactly as for one contiguous buffer (same dot products, softmax
/// and accumulation order).
///
/// # Panics
/// If the shapes disagree.
pub fn causal_attention_blocks(q: &Mat, kv: &[(&[f32], &[f32])], shape: AttentionShape) -> Mat {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: d,
        ..
    } = shape;
    let kv_width = n_kv_heads * d;
    assert_eq!(q.cols, n_heads * d, "attention: query width");
    assert!(
        n_kv_heads > 0 && n_heads.is_multiple_of(n_kv_heads),
        "attention: head grouping"
    );
    assert!(
        kv.iter()
            .all(|(k, v)| k.len() == v.len() && k.len().is_multiple_of(kv_width)),
        "attention: kv shape"
    );
    // Row j of the whole sequence: its segment and offset there.
    let rows: Vec<(&[f32], &[f32], usize)> = kv
        .iter()
        .flat_map(|&(k, v)| (0..k.len() / kv_width).map(move |r| (k, v, r * kv_width)))
        .collect();
    let s = rows.len();
    assert!(s >= q.rows, "attention: fewer keys than queries");
    let past = s - q.rows;

    let mut out = Mat::zeros(q.rows, n_heads * d);
    let avx512 = crate::kernels::isa() == crate::kernels::Isa::Avx512;
    let row = Row {
        q,
        rows: &rows,
        shape,
        past,
    };
    crate::pool::parallel_chunks_mut(&mut out.data, TILE * n_heads * d, &|c, out_tile| {
        #[cfg(target_arch = "x86_64")]
        if avx512 {
            // SAFETY: `isa()` confirmed the features.
            return unsafe { attend_avx512(&row, c * TILE, out_tile) };
        }
        let _ = avx512;
        attend(&row, c * TILE, out_tile);
    });
    out
}

/// Query rows that share one pass over the keys and values: each key and value row is read
/// once per tile and head instead of once per query row (at long contexts the K/V stream, not
/// arithmetic, is what costs).
const TILE: usize = 16;

/// The inputs one query row reads.
struct Row<'a> {
    q: &'a Mat,
    /// `(k segment, v segment, offset)` of every key position.
    rows: &'a [(&'a [f32], &'a [f32], usize)],
    shape: AttentionShape,
    past: usize,
}

/// [`attend`] compiled for AVX-512 (its loops auto-vectorise 16 lanes wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,fma")]
unsafe fn attend_avx512(r: &Row<'_>, t0: usize, out: &mut [f32]) {
    attend(r, t0, out);
}

/// Every head of query rows `t0..t0 + n` into `out` (`[n, Hq·D]`), key-major so that each key
/// and value row serves the whole tile. Each output element is computed exactly as one row at
/// a time would: the same dot products, softmax input, and accumulation over keys in order.
#[inline(always)]
fn attend(r: &Row<'_>, t0: usize, out: &mut [f32]) {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim: d,
        scale,
    } = r.shape;
    let group = n_heads / n_kv_heads;
    let width = n_heads * d;
    let n = out.len() / width;
    // Row i of the tile sees keys 0..visible(i).
    let visible = |i: usize| r.past + t0 + i + 1;
    let span = visible(n - 1);
    let mut scores = vec![0.0f32; n * span];
    for h in 0..n_heads {
        let kvh = h / group;
        for (j, &(k, _, at)) in r.rows[..span].iter().enumerate() {
            let kj = &k[at + kvh * d..at + (kvh + 1) * d];
            for i in (0..n).filter(|&i| j < visible(i)) {
                let qh = &r.q.row(t0 + i)[h * d..(h + 1) * d];
                scores[i * span + j] = dot(qh, kj) * scale;
            }
        }
        for i in 0..n {
            softmax(&mut scores[i * span..i * span + visible(i)]);
        }
        for (j, &(_, v, at)) in r.rows[..span].iter().enumerate() {
            let vj = &v[at + kvh * d..at + (kvh + 1) * d];
            for i in (0..n).filter(|&i| j < visible(i)) {
                let p = scores[i * span + j];
                let oh = &mut out[i * width + h * d..i * width + (h + 1) * d];
                for (o, x) in oh.iter_mut().zip(vj) {
                    *o += p * x;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Prefilling T queries at once equals T single-query steps over a growing cache.
    #[test]
    fn batched_queries_equal_incremental_steps() {
        let shape = AttentionShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 3,
            scale: 0.5,
        };
        let t = 5;
        let q: Vec<f32> = (0..t * 12).map(|i| (i as f32 * 0.3).sin()).collect();
        let k: Vec<f32> = (0..t * 6).map(|i| (i as f32 * 0.7).cos()).collect();
        let v: Vec<f32> = (0..t * 6).map(|i| (i as f32 * 0.11).sin()).collect();
        let all = causal_attention(&Mat::from_vec(q.clone(), t, 12), &k, &v, shape);
        for step in 0..t {
            let qs = Mat::from_vec(q[step * 12..(step + 1) * 12].to_vec(), 1, 12);
            let one = causal_attention(&qs, &k[..(step + 1) * 6], &v[..(step + 1) * 6], shape);
            for (a, b) in one.data.iter().zip(all.row(step)) {
                assert!((a - b).abs() < 1e-6);
            }
        }
        // The first query sees only itself: output = its own value rows.
        assert!((all.data[0] - v[0]).abs() < 1e-6);
    }

    /// Any split of the cache into segments gives exactly the contiguous result.
    #[test]
    fn blocks_equal_contiguous_bit_for_bit() {
        let shape = AttentionShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 3,
            scale: 0.5,
        };
        let (s, t) = (11, 4);
        let q: Vec<f32> = (0..t * 12).map(|i| (i as f32 * 0.3).sin()).collect();
        let k: Vec<f32> = (0..s * 6).map(|i| (i as f32 * 0.7).cos()).collect();
        let v: Vec<f32> = (0..s * 6).map(|i| (i as f32 * 0.11).sin()).collect();
        let q = Mat::from_vec(q, t, 12);
        let whole = causal_attention(&q, &k, &v, shape);
        for cuts in [vec![0, 11], vec![0, 4, 8, 11], vec![0, 1, 10, 11]] {
            let segs: Vec<(&[f32], &[f32])> = cuts
                .windows(2)
                .map(|w| (&k[w[0] * 6..w[1] * 6], &v[w[0] * 6..w[1] * 6]))
                .collect();
            assert_eq!(causal_attention_blocks(&q, &segs, shape).data, whole.data);
        }
    }
}
