//! Causal softmax attention with grouped-query heads, over a KV cache (contiguous, or in the
//! blocks of a paged cache: one implementation serves both, so they agree bit for bit).
//!
//! # Method
//! The work is split into pool tasks of (a tile of [`TILE`] query rows, one kv head): the
//! `Hq / Hkv` query heads that read that kv head, over all rows of the tile, form `M` query
//! vectors that share one pass over its keys and values. Keys are visited in blocks of
//! [`BLOCK`] positions aligned to position 0 (the paged cache's blocks), with an online
//! softmax (the flash-attention recurrence): per block, scores `s = q·k · scale` of the visible
//! keys, the running maximum `m ← max(m, max s)`, `α = e^(m_old − m)`, `p = e^(s − m)`,
//! `l ← l·α + Σp` and `o ← o·α + Σ p·v`; at the end `o / l`. Scratch stays `M × BLOCK` scores
//! plus the `M × D` accumulators whatever the context length, and blocks past a tile's last
//! visible key are never read. Tasks run latest tile first, as later rows see more keys.
//!
//! Keys are also cut into chunks of [`CHUNK`] positions aligned to position 0; each chunk's
//! recurrence starts afresh and the chunks' `(m, l, o)` are merged in order
//! ([`Partial::merge`]). A prefill tile runs its chunks in turn; when there are few tasks (a
//! decode step: one query row, `Hkv` tasks) every chunk of every task becomes its own pool
//! task and the merges follow, so decode at depth uses every thread. The cache's segments are
//! located per key block (no per-position table).
//!
//! # Stored types
//! The cache may hold its rows as `f32`, BF16, F16 or Q8_0 ([`KvRows`]). `f32` rows are read
//! in place. Rows of another type are widened, one block of keys and one kv head at a time,
//! into an `[BLOCK, D]` `f32` panel the task owns (as a GEMM packs its operands), and the same
//! `f32` code runs on it: so a typed cache gives exactly the bits of `f32` attention over its
//! decoded rows, and never holds more than a block of them in `f32`. The AVX-512 tier reads
//! the stored rows itself (F16C, BF16 shifts, Q8_0 int8 conversion, 16 values per
//! instruction); the portable tier through [`KvRows::decode`]. A task of [`TILE`] query rows
//! widens each block once for its `TILE · Hq/Hkv` query vectors, so the cache is streamed
//! from memory and widened once per `TILE` rows of a prefill.
//!
//! # Bit-for-bit invariance
//! Every query vector goes through the same operations in the same order whatever tile or
//! call it lands in, however many threads run and whether its chunks run in turn or apart:
//! its dot products, its block and chunk partitions (fixed by absolute key position), its
//! running `m` and `l`, each output element's accumulation over keys in order, and the merges
//! in chunk order. A tile's rows that see fewer keys than the tile's last row
//! get `p = 0` for the keys they must not see; adding `0·v` leaves the accumulator unchanged
//! up to the sign of a zero, which the final `+ 0.0` normalises. So a prefill split into
//! several calls, a decode step and a batched step give identical bits.
//!
//! # Tiers
//! * `attention/avx512.rs` — register-blocked kernels: `S = Q Kᵀ` four query vectors × four
//!   keys at a time (16 accumulators reduced together by a transposing tree), softmax with the
//!   vectorised [`crate::kernels::vmath::exp`], `O = P V` four vectors × 64 output columns at a
//!   time. Needs `D` a multiple of 16.
//! * [`attend_portable`] — the same recurrence one query vector at a time in plain Rust
//!   (the scalar tier, and any `D` the fast tier does not take).
//!
//! The tiers differ only in rounding (dot-product order, `exp` within 2 ulp): tests bound their
//! difference, and each against a naive `f64` reference, by `1e-5` for values of order 1.
use crate::Cpu;

pub use qinfer_backend::AttentionShape;
pub use qinfer_cache::{KvRows, KvSegment};
use qinfer_tensor::Mat;

use super::matmul::dot;
use crate::kernels::Isa;
use crate::pool::{SharedMut, parallel_for};

#[cfg(target_arch = "x86_64")]
mod avx512;

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
pub fn causal_attention(cpu: Cpu, q: &Mat, k: &[f32], v: &[f32], shape: AttentionShape) -> Mat {
    causal_attention_blocks(cpu, q, &[(KvRows::F32(k), KvRows::F32(v))], shape)
}

/// [`causal_attention`] over keys and values stored in segments (the blocks of a paged KV
/// cache, in order) instead of one contiguous buffer, in any [`KvRows`] type: `kv` lists
/// `(k, v)` pairs of `[rows, Hkv·D]` each; together they are the `[S, Hkv·D]` of
/// [`causal_attention`]. Every output element is computed exactly as for one contiguous `f32`
/// buffer of the decoded rows.
///
/// # Panics
/// If the shapes disagree.
pub fn causal_attention_blocks(
    cpu: Cpu,
    q: &Mat,
    kv: &[KvSegment<'_>],
    shape: AttentionShape,
) -> Mat {
    attention_with(cpu.isa(), q, kv, shape)
}

/// Key positions per block of the online softmax, aligned to position 0.
pub(crate) const BLOCK: usize = 64;

/// Key positions per chunk, aligned to position 0: each query vector's keys are split at
/// multiples of `CHUNK`, each chunk's online softmax starts afresh, and the chunks' partial
/// results are merged in order (see [`Partial::merge`]). A decode step spreads one query's
/// chunks over the pool; a prefill tile runs its chunks in turn: the arithmetic is the same.
pub(crate) const CHUNK: usize = 8 * BLOCK;

/// Query rows per pool task (times the query heads of one kv head). At depth each task
/// streams its kv head's whole cache, so a larger tile reads it fewer times: 64 rows (256
/// query vectors at the 0.8B shape; accumulators and queries 256 KB each, inside a 1 MB L2):
/// a 512-row chunk after 16K keys (f16 KV, 2 threads) took 494 / 443 / 376 ms with 16 / 32 /
/// 64 rows per task; 128 gained nothing more.
const TILE: usize = 64;

/// One segment of the cache: rows `start..start + rows` of the sequence.
#[derive(Clone, Copy)]
pub(crate) struct Seg<'a> {
    k: KvRows<'a>,
    v: KvRows<'a>,
    start: usize,
    rows: usize,
}

/// A chunk's unnormalised online-softmax state for `M` query vectors: running maximum `m`,
/// sum `l` and accumulator `o` (`[M, D]`). A vector that saw no key of the chunk has `l = 0`.
pub(crate) struct Partial {
    pub(crate) m: Vec<f32>,
    pub(crate) l: Vec<f32>,
    pub(crate) o: Vec<f32>,
}

impl Partial {
    fn new(vectors: usize, d: usize) -> Self {
        Partial {
            m: vec![f32::NEG_INFINITY; vectors],
            l: vec![0.0; vectors],
            o: vec![0.0; vectors * d],
        }
    }

    /// Back to no keys seen.
    pub(crate) fn reset(&mut self) {
        self.m.fill(f32::NEG_INFINITY);
        self.l.fill(0.0);
        self.o.fill(0.0);
    }

    /// Folds the next chunk's state in, vector by vector: `m' = max(m, m_c)`,
    /// `l' = l·e^(m−m') + l_c·e^(m_c−m')`, `o' = o·e^(m−m') + o_c·e^(m_c−m')`. A vector the
    /// chunk did not reach is left as it is.
    fn merge(&mut self, next: &Partial, d: usize) {
        for v in 0..self.m.len() {
            if next.l[v] == 0.0 {
                continue;
            }
            let o = &mut self.o[v * d..(v + 1) * d];
            let oc = &next.o[v * d..(v + 1) * d];
            if self.l[v] == 0.0 {
                o.copy_from_slice(oc);
                (self.m[v], self.l[v]) = (next.m[v], next.l[v]);
                continue;
            }
            let m = self.m[v].max(next.m[v]);
            let (a, b) = ((self.m[v] - m).exp(), (next.m[v] - m).exp());
            self.l[v] = self.l[v] * a + next.l[v] * b;
            self.m[v] = m;
            for (x, &y) in o.iter_mut().zip(oc) {
                *x = *x * a + y * b;
            }
        }
    }

    /// `o / l`, vector by vector, into `out` (`[M, D]`).
    fn normalise_into(&self, out: &mut [f32], d: usize) {
        for ((o, a), &l) in out
            .chunks_exact_mut(d)
            .zip(self.o.chunks_exact(d))
            .zip(&self.l)
        {
            let inv = 1.0 / l;
            for (x, &y) in o.iter_mut().zip(a) {
                *x = y * inv + 0.0;
            }
        }
    }
}

/// [`causal_attention_blocks`] on a given instruction set.
fn attention_with(isa: Isa, q: &Mat, kv: &[KvSegment<'_>], shape: AttentionShape) -> Mat {
    attention_split(isa, q, kv, shape, None)
}

/// [`attention_with`], spreading each task's chunks over the pool or not (`split`; by default
/// when there are fewer tasks than twice the threads, as in a decode step). The bits are the
/// same either way.
fn attention_split(
    isa: Isa,
    q: &Mat,
    kv: &[KvSegment<'_>],
    shape: AttentionShape,
    split: Option<bool>,
) -> Mat {
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
    let mut segs: Vec<Seg<'_>> = Vec::with_capacity(kv.len());
    let mut s = 0usize;
    for &(k, v) in kv {
        let rows = k.rows(kv_width);
        assert!(
            rows.is_some() && rows == v.rows(kv_width),
            "attention: kv shape"
        );
        let rows = rows.unwrap_or(0);
        if rows > 0 {
            segs.push(Seg {
                k,
                v,
                start: s,
                rows,
            });
        }
        s += rows;
    }
    assert!(s >= q.rows, "attention: fewer keys than queries");

    let mut out = Mat::zeros(q.rows, n_heads * d);
    let width = n_heads * d;
    let group = n_heads / n_kv_heads;
    let fast = isa == Isa::Avx512 && d.is_multiple_of(16);
    let tiles = q.rows.div_ceil(TILE);
    let task = |c: usize, lo: usize| {
        // Latest tile first: it sees the most keys.
        let t0 = (tiles - 1 - c / n_kv_heads) * TILE;
        Task {
            q,
            segs: &segs,
            shape,
            past: s - q.rows,
            t0,
            n: TILE.min(q.rows - t0),
            kvh: c % n_kv_heads,
            lo,
            hi: lo + CHUNK,
        }
    };
    // One chunk of one task, afresh, into `part`.
    let run = |t: &Task<'_>, part: &mut Partial| {
        part.reset();
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: `Isa::Avx512` comes from `isa()` (or a test that checked the features),
            // and `D` is a multiple of 16.
            unsafe { avx512::attend(t, part) };
        }
        if !cfg!(target_arch = "x86_64") || !fast {
            attend_portable(t, part);
        }
    };
    let dst = SharedMut::new(&mut out.data);
    let write = |c: usize, total: &Partial| {
        let t = task(c, 0);
        let mut o = vec![0.0f32; t.n * group * d];
        total.normalise_into(&mut o, d);
        for (i, oi) in o.chunks_exact(group * d).enumerate() {
            let at = (t.t0 + i) * width + t.kvh * group * d;
            // SAFETY: tasks cover disjoint (row, kv head) ranges of `out`, which outlives the
            // region.
            unsafe { dst.slice(at, group * d) }.copy_from_slice(oi);
        }
    };
    let chunks = s.div_ceil(CHUNK);
    let split = split.unwrap_or(tiles * n_kv_heads < 2 * crate::threads::threads());
    if chunks > 1 && split {
        // Few tasks (a decode step): every chunk of every task in parallel, then the merges.
        let parts: Vec<std::sync::Mutex<Option<Partial>>> = (0..tiles * n_kv_heads * chunks)
            .map(|_| std::sync::Mutex::new(None))
            .collect();
        parallel_for(parts.len(), &|i| {
            let t = task(i / chunks, (i % chunks) * CHUNK);
            if t.lo < t.visible(t.n - 1) {
                let mut part = Partial::new(t.n * group, d);
                run(&t, &mut part);
                *parts[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(part);
            }
        });
        parallel_for(tiles * n_kv_heads, &|c| {
            let t = task(c, 0);
            let mut total = Partial::new(t.n * group, d);
            for part in &parts[c * chunks..(c + 1) * chunks] {
                if let Some(p) = part.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    total.merge(p, d);
                }
            }
            write(c, &total);
        });
    } else {
        parallel_for(tiles * n_kv_heads, &|c| {
            let t = task(c, 0);
            let span = t.visible_all(t.n - 1);
            let mut total = Partial::new(t.n * group, d);
            let mut part = Partial::new(t.n * group, d);
            for lo in (0..span).step_by(CHUNK) {
                run(&task(c, lo), &mut part);
                total.merge(&part, d);
            }
            write(c, &total);
        });
    }
    out
}

/// One pool task: query rows `t0..t0 + n`, the query heads of kv head `kvh`, over the keys of
/// one chunk `lo..hi`. Its query vector `m` is query head `kvh·group + m % group` of row
/// `t0 + m / group`.
pub(crate) struct Task<'a> {
    q: &'a Mat,
    segs: &'a [Seg<'a>],
    shape: AttentionShape,
    /// Positions before the first query row.
    past: usize,
    t0: usize,
    n: usize,
    kvh: usize,
    /// The chunk's first key position (a multiple of [`CHUNK`]).
    lo: usize,
    /// One past its last.
    hi: usize,
}

/// The `[BLOCK, D]` keys and values of kv head `kvh` for the rows of one key block that are
/// not stored as `f32` (row `j` of the block at `j·D`), and where each row of the block lives.
pub(crate) struct Decoded<'a> {
    k: Vec<f32>,
    v: Vec<f32>,
    /// `(k rows, v rows, row)` of each position of the block.
    rows: Vec<(KvRows<'a>, KvRows<'a>, usize)>,
}

impl<'a> Decoded<'a> {
    pub(crate) fn new(d: usize) -> Self {
        Decoded {
            k: vec![0.0; BLOCK * d],
            v: vec![0.0; BLOCK * d],
            rows: Vec::with_capacity(BLOCK),
        }
    }
}

impl<'a> Task<'a> {
    fn group(&self) -> usize {
        self.shape.n_heads / self.shape.n_kv_heads
    }

    /// Keys `0..visible_all(i)` are visible to row `i` of the tile.
    fn visible_all(&self, i: usize) -> usize {
        self.past + self.t0 + i + 1
    }

    /// Keys `lo..visible(i)` of this chunk are visible to row `i` (none when `visible(i) ≤
    /// lo`).
    fn visible(&self, i: usize) -> usize {
        self.visible_all(i).min(self.hi)
    }

    fn query(&self, m: usize) -> &[f32] {
        let (d, g) = (self.shape.head_dim, self.group());
        let h = self.kvh * g + m % g;
        &self.q.row(self.t0 + m / g)[h * d..(h + 1) * d]
    }

    /// Locates the rows `b0..b0 + nk` in the cache's segments: `rows[j]` for position
    /// `b0 + j` (nothing decoded).
    fn locate_block(&self, b0: usize, nk: usize, rows: &mut Vec<(KvRows<'a>, KvRows<'a>, usize)>) {
        let mut si = self.segs.partition_point(|s| s.start + s.rows <= b0);
        rows.clear();
        for j in 0..nk {
            let p = b0 + j;
            while self.segs[si].start + self.segs[si].rows <= p {
                si += 1;
            }
            let seg = self.segs[si];
            rows.push((seg.k, seg.v, p - seg.start));
        }
    }

    /// [`Task::locate_block`], then decodes the rows not stored as `f32` into `dec` (the
    /// others are read in place by [`Task::key`] and [`Task::value`]).
    fn decode_block(&self, b0: usize, nk: usize, dec: &mut Decoded<'a>) {
        let d = self.shape.head_dim;
        let width = self.shape.n_kv_heads * d;
        self.locate_block(b0, nk, &mut dec.rows);
        for (j, &(k, v, r)) in dec.rows.iter().enumerate() {
            if !matches!(k, KvRows::F32(_)) {
                k.decode(r, width, self.kvh * d, &mut dec.k[j * d..(j + 1) * d]);
            }
            if !matches!(v, KvRows::F32(_)) {
                v.decode(r, width, self.kvh * d, &mut dec.v[j * d..(j + 1) * d]);
            }
        }
    }

    /// Where kv head `kvh` of row `r` starts, in values (rows `Hkv·D` wide).
    fn head_at(&self, r: usize) -> usize {
        let d = self.shape.head_dim;
        r * self.shape.n_kv_heads * d + self.kvh * d
    }

    fn key<'s>(&'s self, j: usize, dec: &'s Decoded<'a>) -> &'s [f32] {
        let (k, _, r) = dec.rows[j];
        self.head_of(k, r, j, &dec.k)
    }

    fn value<'s>(&'s self, j: usize, dec: &'s Decoded<'a>) -> &'s [f32] {
        let (_, v, r) = dec.rows[j];
        self.head_of(v, r, j, &dec.v)
    }

    /// Kv head `kvh` of row `r` of `rows` (block row `j`): in place, or from `decoded`.
    fn head_of<'s>(&self, rows: KvRows<'s>, r: usize, j: usize, decoded: &'s [f32]) -> &'s [f32] {
        let d = self.shape.head_dim;
        match rows {
            KvRows::F32(x) => {
                let at = r * self.shape.n_kv_heads * d + self.kvh * d;
                &x[at..at + d]
            }
            _ => &decoded[j * d..(j + 1) * d],
        }
    }
}

/// The online-softmax recurrence of the module docs over the task's chunk, one query vector
/// at a time per key block (the block's keys and values stay in cache across the task's
/// vectors), into `part` (reset).
fn attend_portable(t: &Task<'_>, part: &mut Partial) {
    let (d, g, scale) = (t.shape.head_dim, t.group(), t.shape.scale);
    let vectors = t.n * g;
    let (m, l) = (&mut part.m, &mut part.l);
    let mut p = [0.0f32; BLOCK];
    let mut dec = Decoded::new(d);
    let span = t.visible(t.n - 1);
    for b0 in (t.lo..span).step_by(BLOCK) {
        let nk = (span - b0).min(BLOCK);
        t.decode_block(b0, nk, &mut dec);
        for v in 0..vectors {
            let seen = t.visible(v / g).min(b0 + BLOCK).saturating_sub(b0);
            if seen == 0 {
                continue;
            }
            let q = t.query(v);
            let p = &mut p[..seen];
            for (j, pj) in p.iter_mut().enumerate() {
                *pj = dot(q, t.key(j, &dec)) * scale;
            }
            let m_new = p.iter().copied().fold(m[v], f32::max);
            let alpha = (m[v] - m_new).exp();
            let mut sum = 0.0;
            for pj in p.iter_mut() {
                *pj = (*pj - m_new).exp();
                sum += *pj;
            }
            l[v] = l[v] * alpha + sum;
            m[v] = m_new;
            let o = &mut part.o[v * d..(v + 1) * d];
            for x in o.iter_mut() {
                *x *= alpha;
            }
            for (j, &pj) in p.iter().enumerate() {
                for (x, &vj) in o.iter_mut().zip(t.value(j, &dec)) {
                    *x += pj * vj;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};
    use qinfer_quant::q8_0::{self, BlockQ8_0};

    use super::*;
    use crate::noise::noise;

    /// The tiers to test: the portable one, and AVX-512 where the CPU has it.
    fn isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Scalar];
        if crate::kernels::has_avx512() {
            isas.push(Isa::Avx512);
        }
        isas
    }

    /// `t` query rows at the end of an `s`-token sequence.
    struct Case {
        shape: AttentionShape,
        s: usize,
        t: usize,
    }

    impl Case {
        const fn new(
            n_heads: usize,
            n_kv_heads: usize,
            head_dim: usize,
            s: usize,
            t: usize,
        ) -> Self {
            let shape = AttentionShape {
                n_heads,
                n_kv_heads,
                head_dim,
                scale: 0.3,
            };
            Case { shape, s, t }
        }

        /// `(q, k, v)`.
        fn data(&self) -> (Mat, Vec<f32>, Vec<f32>) {
            let AttentionShape {
                n_heads: hq,
                n_kv_heads: hkv,
                head_dim: d,
                ..
            } = self.shape;
            let q = Mat::from_vec(noise(self.t * hq * d, 1), self.t, hq * d);
            (q, noise(self.s * hkv * d, 2), noise(self.s * hkv * d, 3))
        }
    }

    /// Head dim 3 and 20 take the portable tier on every CPU; the others the fast one where
    /// there is one: several key blocks and tiles, history before the queries, query heads
    /// per kv head 1, 3 (vectors padded to four) and 4, a head dim with a 48-column tail.
    const CASES: [Case; 8] = [
        Case::new(4, 2, 3, 11, 5),
        Case::new(4, 1, 20, 70, 40),
        Case::new(8, 2, 64, 200, 130),
        Case::new(6, 2, 48, 150, 150),
        Case::new(2, 2, 16, 70, 1),
        Case::new(4, 1, 32, 129, 65),
        // Past one chunk of keys: merged chunk results, prefill rows spanning chunks.
        Case::new(4, 2, 32, 1100, 600),
        Case::new(2, 1, 20, 1030, 3),
    ];

    /// The naive definition in `f64`: every score, one softmax over the visible keys.
    fn reference(q: &Mat, k: &[f32], v: &[f32], shape: AttentionShape) -> Vec<f64> {
        let AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim: d,
            scale,
        } = shape;
        let (s, kvw) = (k.len() / (n_kv_heads * d), n_kv_heads * d);
        let mut out = vec![0.0f64; q.rows * n_heads * d];
        for t in 0..q.rows {
            let seen = s - q.rows + t + 1;
            for h in 0..n_heads {
                let kvh = h / (n_heads / n_kv_heads);
                let qh = &q.row(t)[h * d..(h + 1) * d];
                let scores: Vec<f64> = (0..seen)
                    .map(|j| {
                        let kj = &k[j * kvw + kvh * d..][..d];
                        let dot: f64 = qh
                            .iter()
                            .zip(kj)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum();
                        dot * f64::from(scale)
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                let o = &mut out[(t * n_heads + h) * d..][..d];
                for (j, ej) in e.iter().enumerate() {
                    for (x, &vj) in o.iter_mut().zip(&v[j * kvw + kvh * d..][..d]) {
                        *x += ej / sum * f64::from(vj);
                    }
                }
            }
        }
        out
    }

    /// One `f32` segment.
    fn f32_segs<'a>(k: &'a [f32], v: &'a [f32]) -> [KvSegment<'a>; 1] {
        [(KvRows::F32(k), KvRows::F32(v))]
    }

    fn bits(m: &Mat) -> Vec<u32> {
        m.data.iter().map(|x| x.to_bits()).collect()
    }

    /// Every tier is within 1e-5 of the `f64` reference (values here are of order 1).
    #[test]
    fn tiers_match_reference() {
        for case in &CASES {
            let (q, k, v) = case.data();
            let want = reference(&q, &k, &v, case.shape);
            for isa in isas() {
                let got = attention_with(isa, &q, &f32_segs(&k, &v), case.shape);
                let err = got
                    .data
                    .iter()
                    .zip(&want)
                    .map(|(&g, w)| (f64::from(g) - w).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-5, "{isa:?} D={}: error {err}", case.shape.head_dim);
            }
        }
    }

    /// Prefilling T queries at once equals T single-query steps over a growing cache, bit for
    /// bit.
    #[test]
    fn batched_queries_equal_incremental_steps() {
        for case in &CASES {
            let (q, k, v) = case.data();
            let kvw = case.shape.n_kv_heads * case.shape.head_dim;
            for isa in isas() {
                let all = attention_with(isa, &q, &f32_segs(&k, &v), case.shape);
                let past = case.s - case.t;
                for step in 0..case.t {
                    let qs = Mat::from_vec(q.row(step).to_vec(), 1, q.cols);
                    let end = (past + step + 1) * kvw;
                    let one = attention_with(isa, &qs, &f32_segs(&k[..end], &v[..end]), case.shape);
                    let want: Vec<u32> = all.row(step).iter().map(|x| x.to_bits()).collect();
                    assert_eq!(bits(&one), want, "{isa:?} step {step}");
                }
            }
        }
        // The first query sees only itself: output = its own value rows.
        let (q, k, v) = CASES[0].data();
        let all = causal_attention(Cpu::default(), &q, &k[..5 * 6], &v[..5 * 6], CASES[0].shape);
        assert!((all.data[0] - v[0]).abs() < 1e-6);
    }

    /// However the query rows are split into calls (so into tiles), each row's bits are the
    /// same.
    #[test]
    fn query_splits_are_bit_identical() {
        for case in &CASES {
            let (q, k, v) = case.data();
            let kvw = case.shape.n_kv_heads * case.shape.head_dim;
            let past = case.s - case.t;
            for isa in isas() {
                let whole = bits(&attention_with(isa, &q, &f32_segs(&k, &v), case.shape));
                for step in [1, 3, 17, 64] {
                    let mut parts = Vec::new();
                    for r0 in (0..case.t).step_by(step) {
                        let r1 = (r0 + step).min(case.t);
                        let qs = Mat::from_vec(
                            q.data[r0 * q.cols..r1 * q.cols].to_vec(),
                            r1 - r0,
                            q.cols,
                        );
                        let end = (past + r1) * kvw;
                        parts.extend(bits(&attention_with(
                            isa,
                            &qs,
                            &f32_segs(&k[..end], &v[..end]),
                            case.shape,
                        )));
                    }
                    assert_eq!(
                        parts, whole,
                        "{isa:?} D={} step {step}",
                        case.shape.head_dim
                    );
                }
            }
        }
    }

    /// Any split of the cache into segments gives exactly the contiguous result.
    #[test]
    fn blocks_equal_contiguous_bit_for_bit() {
        for case in &CASES {
            let (q, k, v) = case.data();
            let kvw = case.shape.n_kv_heads * case.shape.head_dim;
            let s = case.s;
            for isa in isas() {
                let whole = bits(&attention_with(isa, &q, &f32_segs(&k, &v), case.shape));
                for cuts in [
                    vec![0, s],
                    vec![0, 4, 8, s],
                    vec![0, 1, s - 1, s],
                    vec![0, 64.min(s), s],
                ] {
                    let segs: Vec<KvSegment<'_>> = cuts
                        .windows(2)
                        .map(|w| {
                            (
                                KvRows::F32(&k[w[0] * kvw..w[1] * kvw]),
                                KvRows::F32(&v[w[0] * kvw..w[1] * kvw]),
                            )
                        })
                        .collect();
                    assert_eq!(
                        bits(&attention_with(isa, &q, &segs, case.shape)),
                        whole,
                        "{isa:?}"
                    );
                }
            }
        }
    }

    /// A task's chunks spread over the pool (a decode step) or run in turn give the same bits,
    /// for one query row and for many.
    #[test]
    fn split_chunks_equal_chunks_in_turn() {
        for case in &CASES[6..] {
            let (q, k, v) = case.data();
            let kvw = case.shape.n_kv_heads * case.shape.head_dim;
            for isa in isas() {
                let segs = f32_segs(&k, &v);
                let a = attention_split(isa, &q, &segs, case.shape, Some(true));
                let b = attention_split(isa, &q, &segs, case.shape, Some(false));
                assert_eq!(bits(&a), bits(&b), "{isa:?} D={}", case.shape.head_dim);
                let last = Mat::from_vec(q.row(case.t - 1).to_vec(), 1, q.cols);
                let end = case.s * kvw;
                let segs = f32_segs(&k[..end], &v[..end]);
                let a = attention_split(isa, &last, &segs, case.shape, Some(true));
                let b = attention_split(isa, &last, &segs, case.shape, Some(false));
                assert_eq!(bits(&a), bits(&b), "{isa:?} one row");
            }
        }
    }

    /// One thread (a call nested in a pool region runs serially) and the pool give the same
    /// bits.
    #[test]
    fn threads_do_not_change_bits() {
        crate::init_threads(Some(2));
        let case = &CASES[2];
        let (q, k, v) = case.data();
        for isa in isas() {
            let pooled = bits(&attention_with(isa, &q, &f32_segs(&k, &v), case.shape));
            let serial = std::sync::Mutex::new(Vec::new());
            parallel_for(2, &|c| {
                if c == 0 {
                    *serial.lock().unwrap() =
                        bits(&attention_with(isa, &q, &f32_segs(&k, &v), case.shape));
                }
            });
            assert_eq!(serial.into_inner().unwrap(), pooled, "{isa:?}");
        }
    }

    /// Rows encoded in one stored type, and decoded back to `f32` independently of
    /// [`KvRows::decode`] (element by element, Q8_0 block by block).
    enum Typed {
        Bf16(Vec<bf16>),
        F16(Vec<f16>),
        Q8_0(Vec<BlockQ8_0>),
    }

    impl Typed {
        fn encode(kind: usize, x: &[f32]) -> Typed {
            match kind {
                0 => Typed::Bf16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
                1 => Typed::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
                _ => Typed::Q8_0(
                    x.chunks_exact(q8_0::BLOCK)
                        .map(|c| {
                            BlockQ8_0::from_bytes(&q8_0::quantize_block_ref(c.try_into().unwrap()))
                        })
                        .collect(),
                ),
            }
        }

        fn decoded(&self) -> Vec<f32> {
            match self {
                Typed::Bf16(x) => x.iter().map(|v| v.to_f32()).collect(),
                Typed::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
                Typed::Q8_0(x) => x.iter().flat_map(|b| b.dequantize()).collect(),
            }
        }

        /// Rows `r0..r1` of `width` values.
        fn rows(&self, r0: usize, r1: usize, width: usize) -> KvRows<'_> {
            match self {
                Typed::Bf16(x) => KvRows::Bf16(&x[r0 * width..r1 * width]),
                Typed::F16(x) => KvRows::F16(&x[r0 * width..r1 * width]),
                Typed::Q8_0(x) => {
                    let per = width / q8_0::BLOCK;
                    KvRows::Q8_0(&x[r0 * per..r1 * per])
                }
            }
        }
    }

    /// A cache stored as BF16, F16 or Q8_0 (in 64-row segments and a tail, some segments left
    /// as `f32`) gives exactly the bits of `f32` attention over the decoded rows, on every
    /// tier: the typed path only decodes into scratch and runs the `f32` code. Q8_0 runs where
    /// the row width is a multiple of 32, including `D = 48`, whose heads straddle blocks.
    #[test]
    fn typed_rows_equal_f32_attention_over_their_decoded_values() {
        for case in &CASES {
            let (q, k, v) = case.data();
            let kvw = case.shape.n_kv_heads * case.shape.head_dim;
            let kinds = if kvw.is_multiple_of(q8_0::BLOCK) {
                3
            } else {
                2
            };
            for kind in 0..kinds {
                let (tk, tv) = (Typed::encode(kind, &k), Typed::encode(kind, &v));
                let (dk, dv) = (tk.decoded(), tv.decoded());
                let cuts: Vec<usize> = (0..case.s).step_by(BLOCK).chain([case.s]).collect();
                // Every third segment stays `f32` (its decoded values), to mix the paths.
                let segs: Vec<KvSegment<'_>> = cuts
                    .windows(2)
                    .enumerate()
                    .map(|(i, w)| {
                        if i % 3 == 2 {
                            let (a, b) = (w[0] * kvw, w[1] * kvw);
                            (KvRows::F32(&dk[a..b]), KvRows::F32(&dv[a..b]))
                        } else {
                            (tk.rows(w[0], w[1], kvw), tv.rows(w[0], w[1], kvw))
                        }
                    })
                    .collect();
                for isa in isas() {
                    let want = bits(&attention_with(isa, &q, &f32_segs(&dk, &dv), case.shape));
                    let got = bits(&attention_with(isa, &q, &segs, case.shape));
                    assert_eq!(got, want, "{isa:?} kind {kind} D={}", case.shape.head_dim);
                }
                // Decoding a range that starts and ends inside blocks.
                let mut out = vec![0.0f32; kvw - 3];
                tk.rows(0, case.s, kvw).decode(1, kvw, 2, &mut out);
                assert_eq!(out, dk[kvw + 2..2 * kvw - 1], "kind {kind}");
            }
        }
    }

    #[test]
    fn q8_0_rows_must_be_whole_blocks() {
        let blocks = [BlockQ8_0 {
            d: f16::ONE,
            qs: [0; q8_0::BLOCK],
        }; 2];
        assert_eq!(KvRows::Q8_0(&blocks).rows(32), Some(2));
        assert_eq!(KvRows::Q8_0(&blocks).rows(64), Some(1));
        assert_eq!(KvRows::Q8_0(&blocks).rows(48), None);
        assert_eq!(KvRows::F32(&[0.0; 6]).rows(4), None);
    }
}
