//! Causal attention over a sequence's KV cache in device memory, and bidirectional attention
//! of one segment (`shaders/attention.wgsl`).
//!
//! # Method
//! The keys and values are read where they are: the cache's pages ([`kv`]), located through
//! a page table uploaded per call (4 words a page: 64 KiB at 262,144 positions), or for
//! [`attend_all`] the activations `k`, `v` themselves, seen as pages of 64 `f32` rows. A
//! workgroup takes 8 query vectors — consecutive (row, query head) pairs of one kv head
//! (grouped-query attention: query head `h` reads kv head `h / (Hq/Hkv)`) — and walks the
//! keys visible to them in chunks of 512 positions (8 pages) aligned to position 0, with an
//! online softmax in `f32` that starts afresh each chunk; the chunks' `(m, l, o)` are merged
//! in chunk order, as the CPU backend does (`qinfer_cpu` `ops/attention.rs`).
//!
//! * Few workgroups (a decode step: `⌈T·Hq/Hkv / 8⌉ · Hkv` of them) leave a GPU idle, so then
//!   every chunk is its own workgroup, writing its partial `(m, l, o)`, and a second pass
//!   merges them in order (`split`); otherwise a workgroup walks its chunks itself. Both run
//!   the same shader functions on the same values in the same order.
//! * A dispatch binds up to [`SLOTS`] slabs. A sequence whose pages sit in more takes several
//!   dispatches, each over whole chunks whose pages lie in at most `SLOTS` slabs ("runs"): in
//!   order, the running total is carried between them through a buffer (stored exactly); in
//!   split mode each run writes its chunks' partials. ([`kv::layout`] first moves a chunk
//!   spread over more than `SLOTS` slabs into one.)
//!
//! # Same bits whatever the split into steps
//! A query row's output depends only on its absolute position and the stored rows: its dot
//! products run over `D` in order, its per-page maxima and sums over the keys it sees in order
//! (keys it must not see are skipped, not zeroed), its accumulators likewise, its chunks and
//! pages are fixed by absolute position, and the merges run in chunk order — whatever tile,
//! step, mode or run it lands in. Tested: a sequence fed as one step, as one-row steps, or in
//! uneven pieces gives identical bits.
//!
//! # Against the CPU backend
//! Same recurrence; different summation order of the dot products (the CPU's SIMD lanes),
//! and each side's own `exp`: agreement to a few `f32` ulp of values of order 1.

use std::sync::Arc;

use qinfer_backend::AttentionShape;
use qinfer_cache::{BLOCK_TOKENS, KvCache};

use crate::context::{Ctx, GBuf, Kernel, fits, grid, kernel, mul};
use crate::kv::{self, CHUNK_BLOCKS, Layout, P, SLOTS};

const ATT: fn(&'static str) -> Kernel = |e| kernel("attention", e);

/// Query vectors per workgroup (the shader's `TV`).
const TV: usize = 8;
/// Largest head dim (the shader's `MAXD`).
pub(crate) const MAX_HEAD_DIM: usize = 256;
/// Key positions per chunk.
const CHUNK: usize = CHUNK_BLOCKS * BLOCK_TOKENS;
/// Workgroups below which a call's chunks run apart (a GPU has ~100 compute units).
const SPLIT_BELOW: usize = 256;
/// Largest buffer of chunk partials a call takes by default.
const MAX_PARTIALS: u64 = 64 << 20;

/// How a call is run (tests force each way; the bits are the same).
#[derive(Clone, Copy, Debug)]
struct Opts {
    /// Chunks apart (`Some(true)`), in order (`Some(false)`), or by the number of workgroups.
    split: Option<bool>,
    /// Slabs one dispatch binds (2..=SLOTS).
    slots: usize,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            split: None,
            slots: SLOTS,
        }
    }
}

/// `(Hq, Hkv, D)`, checked.
fn heads(shape: AttentionShape) -> (usize, usize, usize) {
    let AttentionShape {
        n_heads: hq,
        n_kv_heads: hkv,
        head_dim: d,
        ..
    } = shape;
    assert!(
        hkv > 0 && hq.is_multiple_of(hkv),
        "attention: {hq} query heads over {hkv} kv heads"
    );
    assert!(
        d > 0 && d <= MAX_HEAD_DIM,
        "attention: head dim {d} (the GPU kernel takes 1..={MAX_HEAD_DIM})"
    );
    (hq, hkv, d)
}

/// [`qinfer_backend::Backend::attend`]: appends `k`, `v` (`[t, Hkv·D]`) to `kv`, then the
/// causal attention of `q` (`[t, Hq·D]`) at the cache's last `t` positions: `[t, Hq·D]`.
pub(crate) fn attend(
    ctx: &Arc<Ctx>,
    q: &GBuf,
    k: &GBuf,
    v: &GBuf,
    t: usize,
    kv: &mut KvCache,
    shape: AttentionShape,
) -> GBuf {
    attend_with(ctx, q, k, v, t, kv, shape, Opts::default())
}

fn attend_with(
    ctx: &Arc<Ctx>,
    q: &GBuf,
    k: &GBuf,
    v: &GBuf,
    t: usize,
    kv: &mut KvCache,
    shape: AttentionShape,
    opts: Opts,
) -> GBuf {
    let (hq, hkv, d) = heads(shape);
    let w = hkv * d;
    assert_eq!(
        kv.kv_width(),
        w,
        "attend: the cache holds rows of {} values, not Hkv·D",
        kv.kv_width()
    );
    let n = mul(t, hq * d, "attend: queries");
    assert!(q.len >= n, "attend: q must be [{t}, {}]", hq * d);
    assert!(
        k.len >= mul(t, w, "attend: keys") && v.len >= t * w,
        "attend: k and v must be [{t}, {w}]"
    );
    let out = ctx.alloc(n);
    if t == 0 {
        return out;
    }
    kv::resident_blocks(ctx, kv);
    kv::append(ctx, kv, k, v, t);
    let layout = kv::layout(ctx, kv, opts.slots);
    let ty = kv.kv_type();
    run(
        ctx,
        &Call {
            q,
            out: &out,
            rows: t,
            keys: kv.len(),
            causal: true,
            shape,
            kind: kv::kind(ty),
            row_bytes: ty.row_bytes(w),
            layout: &layout,
        },
        opts,
    );
    out
}

/// [`qinfer_backend::Backend::attend_all`]: every row of `q` (`[t, Hq·D]`) over every row of
/// `k`, `v` (`[t, Hkv·D]`), no mask.
pub(crate) fn attend_all(
    ctx: &Arc<Ctx>,
    q: &GBuf,
    k: &GBuf,
    v: &GBuf,
    t: usize,
    shape: AttentionShape,
) -> GBuf {
    attend_all_with(ctx, q, k, v, t, shape, Opts::default())
}

fn attend_all_with(
    ctx: &Arc<Ctx>,
    q: &GBuf,
    k: &GBuf,
    v: &GBuf,
    t: usize,
    shape: AttentionShape,
    opts: Opts,
) -> GBuf {
    let (hq, hkv, d) = heads(shape);
    let w = hkv * d;
    let n = mul(t, hq * d, "attend_all: queries");
    assert!(q.len >= n, "attend_all: q must be [{t}, {}]", hq * d);
    let kn = mul(t, w, "attend_all: keys");
    assert!(
        k.len >= kn && v.len >= kn,
        "attend_all: k and v must be [{t}, {w}]"
    );
    fits(ctx, kn, "attend_all: keys");
    let out = ctx.alloc(n);
    if t == 0 {
        return out;
    }
    // The activations as pages of 64 f32 rows: keys in "slab" 0, values in 1.
    let pages = (0..t.div_ceil(BLOCK_TOKENS))
        .map(|p| {
            let word = u32::try_from(p * BLOCK_TOKENS * w).expect("key words fit u32");
            [(0, word), (1, word)]
        })
        .collect();
    let layout = Layout {
        slabs: vec![k.buffer().clone(), v.buffer().clone()],
        pages,
    };
    run(
        ctx,
        &Call {
            q,
            out: &out,
            rows: t,
            keys: t,
            causal: false,
            shape,
            kind: 0,
            row_bytes: w * 4,
            layout: &layout,
        },
        opts,
    );
    out
}

/// One attention call: `rows` query rows over `keys` keys in `layout`.
struct Call<'a> {
    q: &'a GBuf,
    out: &'a GBuf,
    rows: usize,
    keys: usize,
    causal: bool,
    shape: AttentionShape,
    /// The keys' encoding (`kv::kind`) and bytes per row.
    kind: usize,
    row_bytes: usize,
    layout: &'a Layout,
}

/// Chunks `lo..hi` whose pages lie in the layout's slabs `slabs` (at most the slots).
struct Run {
    lo: usize,
    hi: usize,
    slabs: Vec<usize>,
}

/// Cuts the chunks into runs of at most `slots` slabs each, in order.
fn runs(layout: &Layout, chunks: usize, slots: usize) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for c in 0..chunks {
        let mut need: Vec<usize> = Vec::new();
        let pages =
            &layout.pages[c * CHUNK_BLOCKS..((c + 1) * CHUNK_BLOCKS).min(layout.pages.len())];
        for &[(ks, _), (vs, _)] in pages {
            for s in [ks, vs] {
                if !need.contains(&s) {
                    need.push(s);
                }
            }
        }
        assert!(
            need.len() <= slots,
            "a chunk's pages in {} slabs",
            need.len()
        );
        if let Some(r) = runs.last_mut() {
            let mut all = r.slabs.clone();
            all.extend(need.iter().filter(|s| !r.slabs.contains(s)));
            if all.len() <= slots {
                (r.slabs, r.hi) = (all, c + 1);
                continue;
            }
        }
        runs.push(Run {
            lo: c,
            hi: c + 1,
            slabs: need,
        });
    }
    runs
}

fn run(ctx: &Arc<Ctx>, c: &Call<'_>, opts: Opts) {
    let (hq, hkv, d) = heads(c.shape);
    assert!(
        (2..=SLOTS).contains(&opts.slots),
        "attention binds 2..={SLOTS} slabs"
    );
    assert!(c.keys >= c.rows, "attention: fewer keys than queries");
    u32::try_from(c.keys).expect("attention: keys past u32");
    fits(ctx, c.rows * hq * d, "attention: queries");
    let group = hq / hkv;
    let tiles = (c.rows * group).div_ceil(TV);
    let groups = mul(tiles, hkv, "attention: workgroups");
    let chunks = c.keys.div_ceil(CHUNK);
    let n_pages = c.keys.div_ceil(BLOCK_TOKENS);
    assert_eq!(
        c.layout.pages.len(),
        n_pages,
        "attention: a page per 64 keys"
    );
    let runs = runs(c.layout, chunks, opts.slots);

    // The page table: per page its keys' and values' slot (within its run) and first word.
    let mut table = vec![0u32; 4 * n_pages];
    for r in &runs {
        let slot = |s: usize| {
            r.slabs
                .iter()
                .position(|&x| x == s)
                .expect("a slab of the run") as u32
        };
        for pg in r.lo * CHUNK_BLOCKS..(r.hi * CHUNK_BLOCKS).min(n_pages) {
            let [(ks, kw), (vs, vw)] = c.layout.pages[pg];
            table[4 * pg..4 * pg + 4].copy_from_slice(&[slot(ks), kw, slot(vs), vw]);
        }
    }
    fits(ctx, table.len(), "attention: page table");
    let table_buf = ctx.alloc(table.len());
    ctx.write(table_buf.buffer(), 0, bytemuck::cast_slice(&table));

    // Where partials or the carried total go: [slot][TV][m, l, o_0..o_{D-1}].
    let slot_words = TV * (d + 2);
    let partial_words = mul(
        mul(groups, chunks, "attention: partials"),
        slot_words,
        "attention: partials",
    );
    let partials_fit = (partial_words as u64).saturating_mul(4) <= ctx.max_binding();
    let split = chunks > 1
        && partials_fit
        && opts.split.unwrap_or(
            groups < SPLIT_BELOW && (partial_words as u64).saturating_mul(4) <= MAX_PARTIALS,
        );
    let state = if split {
        ctx.alloc(partial_words)
    } else if runs.len() > 1 {
        let words = mul(groups, slot_words, "attention: carried state");
        fits(ctx, words, "attention: carried state");
        ctx.alloc(words)
    } else {
        ctx.alloc(1)
    };
    let base = P {
        rows: c.rows,
        hq,
        hkv,
        d,
        group,
        scale: c.shape.scale,
        keys: c.keys,
        causal: usize::from(c.causal),
        kind: c.kind,
        width: hkv * d,
        row_bytes: c.row_bytes,
        tiles,
        split: usize::from(split),
        chunks,
        ..P::default()
    };
    for (i, r) in runs.iter().enumerate() {
        let p = P {
            c_lo: r.lo,
            c_hi: r.hi,
            carry_in: usize::from(!split && i > 0),
            carry_out: usize::from(!split && i + 1 < runs.len()),
            ..base
        };
        let slab =
            |j: usize| c.layout.slabs[*r.slabs.get(j).unwrap_or(&r.slabs[0])].as_entire_binding();
        let n = if split {
            groups * (r.hi - r.lo)
        } else {
            groups
        };
        ctx.dispatch(
            ATT("attend"),
            p.params().bytes(),
            &[
                c.out.bind(),
                state.bind(),
                c.q.bind(),
                table_buf.bind(),
                slab(0),
                slab(1),
                slab(2),
                slab(3),
            ],
            grid(n),
        );
    }
    if split {
        ctx.dispatch(
            ATT("attend_merge"),
            base.params().bytes(),
            &[c.out.bind(), state.bind()],
            grid(groups),
        );
    }
}

#[cfg(test)]
mod tests {
    use qinfer_backend::{Act, Backend};
    use qinfer_cache::KvType;
    use qinfer_cpu::Cpu;
    use qinfer_tensor::Mat;

    use super::*;
    use crate::tests::{cpu, gpu, rand_mat};
    use crate::{Gpu, Pick};

    fn shape(hq: usize, hkv: usize, d: usize) -> AttentionShape {
        AttentionShape {
            n_heads: hq,
            n_kv_heads: hkv,
            head_dim: d,
            scale: (d as f32).powf(-0.5),
        }
    }

    /// A sequence's inputs: `q` `[n, Hq·D]`, `k`, `v` `[n, Hkv·D]`, values in ±2 (scores of a
    /// few units: a softmax neither flat nor one-hot).
    struct Seq {
        s: AttentionShape,
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
    }

    impl Seq {
        fn new(s: AttentionShape, n: usize, seed: u64) -> Seq {
            let (qw, w) = (s.n_heads * s.head_dim, s.n_kv_heads * s.head_dim);
            Seq {
                s,
                q: rand_mat(n, qw, seed, 2.0).data,
                k: rand_mat(n, w, seed + 1, 2.0).data,
                v: rand_mat(n, w, seed + 2, 2.0).data,
            }
        }

        fn widths(&self) -> (usize, usize) {
            (
                self.s.n_heads * self.s.head_dim,
                self.s.n_kv_heads * self.s.head_dim,
            )
        }

        /// Rows `r` of (q, k, v).
        fn rows(&self, r: std::ops::Range<usize>) -> (&[f32], &[f32], &[f32]) {
            let (qw, w) = self.widths();
            (
                &self.q[r.start * qw..r.end * qw],
                &self.k[r.start * w..r.end * w],
                &self.v[r.start * w..r.end * w],
            )
        }

        /// Positions `r` through the GPU into `kv`: the output rows.
        fn gpu(
            &self,
            ctx: &Arc<Ctx>,
            kv: &mut KvCache,
            r: std::ops::Range<usize>,
            opts: Opts,
        ) -> Vec<f32> {
            let t = r.len();
            let (q, k, v) = self.rows(r);
            let (q, k, v) = (ctx.upload(q), ctx.upload(k), ctx.upload(v));
            let out = attend_with(ctx, &q, &k, &v, t, kv, self.s, opts);
            ctx.read_f32(&out, t * self.widths().0)
        }

        /// Positions `r` through the CPU backend into `kv`.
        fn cpu(&self, cpu: &Cpu, kv: &mut KvCache, r: std::ops::Range<usize>) -> Vec<f32> {
            let t = r.len();
            let (qw, w) = self.widths();
            let (q, k, v) = self.rows(r);
            let act = |x: &[f32], c| Act::from_host(Mat::from_vec(x.to_vec(), t, c));
            let out = cpu.attend(&act(q, qw), &act(k, w), &act(v, w), kv, self.s);
            cpu.download(out).data
        }

        /// Every position, fed in steps of `steps`, through the GPU: all output rows.
        fn gpu_steps(&self, ctx: &Arc<Ctx>, ty: KvType, steps: &[usize], opts: Opts) -> Vec<f32> {
            let mut kv = KvCache::new(self.widths().1, ty);
            let mut at = 0;
            let mut out = Vec::new();
            for &t in steps {
                out.extend(self.gpu(ctx, &mut kv, at..at + t, opts));
                at += t;
            }
            out
        }
    }

    fn max_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len(), "lengths");
        a.iter()
            .zip(b)
            .map(|(x, y)| {
                if x.is_finite() && y.is_finite() {
                    (x - y).abs()
                } else {
                    f32::INFINITY
                }
            })
            .fold(0.0, f32::max)
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Outputs are convex combinations of value rows in ±2: the CPU and the GPU compute the
    /// same recurrence in `f32` with dot products summed in another order (the CPU's SIMD
    /// lanes; here sums of 16 products added in order) and their own `exp` (LLVM's on
    /// lavapipe, the CPU's vectorised one): a few ulp of the scores and weights, and each is
    /// within ~1e-6 of an `f64` reference (`Reference`, measured at D = 256). So 2e-6 absolute
    /// (8 ulp at 2). Measured on lavapipe: 1.1e-6 (attend), see each test.
    const TOL: f32 = 2e-6;

    /// The GPU against the CPU backend for every KV type, several head layouts (GQA groups of
    /// 2, 4, 6 and 16, head dims 3, 16, 32, 256), prefills of 1, 7, 64, 65, 130 and 600 rows
    /// (past a 512-key chunk) followed by decode steps; the stored rows after every step are
    /// the CPU's, byte for byte. Within [`TOL`]; measured on lavapipe: 1.1e-6.
    #[test]
    fn attend_matches_cpu() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let cpu = cpu();
        for (hq, hkv, d, steps) in [
            (4, 2, 16, vec![1, 7, 64, 65, 130, 1, 1]),
            (8, 2, 32, vec![600, 1, 1, 7]),
            (24, 4, 256, vec![65, 1, 130]),
            // 16 query heads per kv head: a row takes two workgroups.
            (64, 4, 32, vec![70, 1]),
            // Rows of 3 values: 16-bit rows share words.
            (2, 1, 3, vec![5, 64, 1]),
        ] {
            let s = shape(hq, hkv, d);
            let n: usize = steps.iter().sum();
            let seq = Seq::new(s, n, 7 + d as u64);
            for ty in KvType::ALL.into_iter().filter(|ty| ty.supports(hkv * d)) {
                let w = hkv * d;
                let (mut kg, mut kc) = (KvCache::new(w, ty), KvCache::new(w, ty));
                let mut at = 0;
                for &t in &steps {
                    let got = seq.gpu(ctx, &mut kg, at..at + t, Opts::default());
                    let want = seq.cpu(&cpu, &mut kc, at..at + t);
                    let err = max_err(&got, &want);
                    assert!(
                        err <= TOL,
                        "{ty} ({hq},{hkv},{d}) rows {at}..{}: off by {err}",
                        at + t
                    );
                    at += t;
                    assert_eq!(kg, kc, "{ty} ({hq},{hkv},{d}) after {at}: stored rows");
                }
                assert!(!kg.is_host(), "the GPU's rows stay on the device");
            }
        }
    }

    /// A sequence's outputs are the same bits whatever its split into steps — one step, one-row
    /// steps, uneven pieces — and whether chunks run apart or in order (past a 512-key chunk).
    #[test]
    fn outputs_do_not_depend_on_the_split_into_steps() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        for ty in KvType::ALL {
            let seq = Seq::new(shape(4, 2, 16), 150, 3);
            let whole = seq.gpu_steps(ctx, ty, &[150], Opts::default());
            for steps in [vec![1; 150], vec![64, 1, 85]] {
                let got = seq.gpu_steps(ctx, ty, &steps, Opts::default());
                assert_eq!(bits(&got), bits(&whole), "{ty} in steps {:?}", &steps[..3]);
            }
            let seq = Seq::new(shape(6, 2, 32), 600, 4);
            let whole = seq.gpu_steps(ctx, ty, &[600], Opts::default());
            for (steps, split) in [
                (vec![600], Some(true)),
                (vec![511, 1, 1, 87], None),
                (vec![513, 1, 1, 85], Some(false)),
                (vec![513, 1, 1, 85], Some(true)),
            ] {
                let opts = Opts {
                    split,
                    ..Opts::default()
                };
                let got = seq.gpu_steps(ctx, ty, &steps, opts);
                assert_eq!(
                    bits(&got),
                    bits(&whole),
                    "{ty} in steps {steps:?}, split {split:?}"
                );
            }
        }
    }

    /// A sequence spread over many small slabs (16 pages each), read two slabs per dispatch:
    /// several dispatches carry the running total (in order) or write partials (split), with
    /// the same bits as one dispatch; a chunk scattered over three slabs is gathered first.
    #[test]
    fn many_slabs_give_the_same_bits() {
        let Some(g) = gpu() else { return };
        let Ok(small) = Gpu::open(Pick::Best) else {
            return;
        };
        small.ctx.kv.limit_slab_pages(16);
        let seq = Seq::new(shape(4, 1, 32), 1100, 5);
        for ty in [KvType::F16, KvType::Q8_0] {
            let want = seq.gpu_steps(&g.ctx, ty, &[1030, 1, 69], Opts::default());
            for split in [Some(false), Some(true)] {
                let opts = Opts { split, slots: 2 };
                let got = seq.gpu_steps(&small.ctx, ty, &[1030, 1, 69], opts);
                assert_eq!(bits(&got), bits(&want), "{ty} split {split:?}");
            }
            assert!(
                small.ctx.kv.slabs() > 2,
                "spread over more slabs than a dispatch binds"
            );
            // Blocks scattered over three slabs (a fragmented store).
            let (head, rest) = (600, 500);
            let mut kv = KvCache::new(32, ty);
            let (_, k, v) = seq.rows(0..head);
            kv.append(k, v);
            kv::scatter_blocks(&small.ctx, &mut kv, 3);
            let got = seq.gpu(
                &small.ctx,
                &mut kv,
                head..head + rest,
                Opts {
                    split: None,
                    slots: 2,
                },
            );
            let (qw, _) = seq.widths();
            assert_eq!(bits(&got), bits(&want[head * qw..]), "{ty} gathered");
        }
    }

    /// No rows: an empty output, the cache untouched.
    #[test]
    fn attend_of_no_rows() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let mut kv = KvCache::new(32, KvType::F16);
        let e = ctx.alloc(0);
        assert_eq!(attend(ctx, &e, &e, &e, 0, &mut kv, shape(4, 2, 16)).len, 0);
        assert!(kv.is_empty());
        assert_eq!(attend_all(ctx, &e, &e, &e, 0, shape(4, 2, 16)).len, 0);
    }

    /// A snapshot (`KvCache::clone`) and a copy-on-write truncation continue independently of
    /// the cache they came from, each with the bits of a fresh cache fed the same rows.
    #[test]
    fn snapshots_continue_independently() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        for ty in [KvType::F32, KvType::Bf16, KvType::Q8_0] {
            let a = Seq::new(shape(4, 2, 16), 160, 11);
            let b = Seq::new(shape(4, 2, 16), 160, 12);
            let qw = a.widths().0;
            let mut kv = KvCache::new(32, ty);
            a.gpu(ctx, &mut kv, 0..100, Opts::default());
            let mut snap = kv.clone();
            let mut cut = kv.clone();
            cut.truncate(70);
            let on_a = a.gpu(ctx, &mut kv, 100..160, Opts::default());
            // `b`'s rows after `a`'s first 100 (70 for the cut).
            let mixed = |n: usize| Seq {
                s: a.s,
                q: [&a.q[..n * qw], &b.q[n * qw..]].concat(),
                k: [&a.k[..n * 32], &b.k[n * 32..]].concat(),
                v: [&a.v[..n * 32], &b.v[n * 32..]].concat(),
            };
            let on_b = mixed(100).gpu(ctx, &mut snap, 100..160, Opts::default());
            let on_cut = mixed(70).gpu(ctx, &mut cut, 70..160, Opts::default());
            let whole_a = a.gpu_steps(ctx, ty, &[160], Opts::default());
            let whole_b = mixed(100).gpu_steps(ctx, ty, &[160], Opts::default());
            let whole_cut = mixed(70).gpu_steps(ctx, ty, &[160], Opts::default());
            assert_eq!(bits(&on_a), bits(&whole_a[100 * qw..]), "{ty} original");
            assert_eq!(bits(&on_b), bits(&whole_b[100 * qw..]), "{ty} snapshot");
            assert_eq!(bits(&on_cut), bits(&whole_cut[70 * qw..]), "{ty} truncated");
        }
    }

    /// A cache the CPU wrote is continued on the GPU (its blocks and tail moved in), and a
    /// GPU cache on the CPU, with the bits of staying on one device: the stored rows are the
    /// same bytes either way.
    #[test]
    fn caches_move_between_backends() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let cpu = cpu();
        for ty in KvType::ALL {
            let seq = Seq::new(shape(8, 2, 32), 300, 21);
            let qw = seq.widths().0;
            let on_gpu = seq.gpu_steps(ctx, ty, &[130, 70, 1, 99], Opts::default());
            let mut kv = KvCache::new(64, ty);
            seq.cpu(&cpu, &mut kv, 0..130);
            assert!(kv.is_host());
            let got = seq.gpu(ctx, &mut kv, 130..200, Opts::default());
            assert_eq!(
                bits(&got),
                bits(&on_gpu[130 * qw..200 * qw]),
                "{ty} GPU after CPU"
            );
            let got = seq.gpu(ctx, &mut kv, 200..201, Opts::default());
            assert_eq!(bits(&got), bits(&on_gpu[200 * qw..201 * qw]), "{ty} decode");
            // And back: the CPU reads the GPU's rows as it reads its own.
            let mut on_cpu = KvCache::new(64, ty);
            let cpu_all = seq.cpu(&cpu, &mut on_cpu, 0..201);
            let got = seq.cpu(&cpu, &mut kv, 201..300);
            let want = seq.cpu(&cpu, &mut on_cpu, 201..300);
            assert_eq!(bits(&got), bits(&want), "{ty} CPU after GPU");
            assert!(max_err(&on_gpu[..201 * qw], &cpu_all) <= TOL);
        }
    }

    /// One decode step at 262,144 positions (4,096 pages, a 64 KiB page table; every chunk
    /// apart), against the CPU. Within [`TOL`]; measured on lavapipe: 8e-9 (an average of
    /// 262,144 rows).
    #[test]
    fn decode_at_full_context() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let cpu = cpu();
        let n = 262_144;
        let s = shape(2, 1, 32);
        let k = rand_mat(n, 32, 31, 2.0).data;
        let v = rand_mat(n, 32, 32, 2.0).data;
        let mut host = KvCache::new(32, KvType::F16);
        host.append(&k[..(n - 1) * 32], &v[..(n - 1) * 32]);
        let seq = Seq {
            s,
            q: rand_mat(n, 64, 33, 2.0).data,
            k,
            v,
        };
        let mut kg = host.clone();
        let got = seq.gpu(ctx, &mut kg, n - 1..n, Opts::default());
        let want = seq.cpu(&cpu, &mut host, n - 1..n);
        let err = max_err(&got, &want);
        assert!(err <= TOL, "off by {err}");
        assert_eq!(kg.len(), n);
    }

    /// Bidirectional attention against the CPU backend: a row, odd row counts, head dims of
    /// the vision towers (72, 80) and of 64, GQA and not, past a 512-key chunk; every mode
    /// the same bits. Within [`TOL`]; measured on lavapipe: 8.9e-7.
    #[test]
    fn attend_all_matches_cpu() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let cpu = cpu();
        for (t, hq, hkv, d) in [
            (1, 2, 2, 16),
            (63, 2, 1, 16),
            (130, 4, 2, 72),
            (600, 4, 4, 80),
            (65, 8, 8, 64),
        ] {
            let s = shape(hq, hkv, d);
            let seq = Seq::new(s, t, 40 + t as u64);
            let (qw, w) = seq.widths();
            let act = |x: &[f32], c| Act::from_host(Mat::from_vec(x.to_vec(), t, c));
            let want = cpu
                .download(cpu.attend_all(&act(&seq.q, qw), &act(&seq.k, w), &act(&seq.v, w), s))
                .data;
            let (q, k, v) = (ctx.upload(&seq.q), ctx.upload(&seq.k), ctx.upload(&seq.v));
            let mut outs = Vec::new();
            for split in [None, Some(true), Some(false)] {
                let opts = Opts {
                    split,
                    ..Opts::default()
                };
                let got = ctx.read_f32(&attend_all_with(ctx, &q, &k, &v, t, s, opts), t * qw);
                let err = max_err(&got, &want);
                assert!(
                    err <= TOL,
                    "({t},{hq},{hkv},{d}) split {split:?}: off by {err}"
                );
                outs.push(bits(&got));
            }
            assert!(
                outs.iter().all(|o| *o == outs[0]),
                "({t},{hq},{hkv},{d}): modes agree"
            );
        }
    }
}
