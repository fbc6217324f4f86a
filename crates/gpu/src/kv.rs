//! KV rows in device memory: a per-context page store.
//!
//! A [`KvCache`] holds its rows in blocks of [`BLOCK_TOKENS`] rows (shared behind `Arc`s once
//! full) and a partial tail. On this backend each block's keys and each block's values are one
//! [`KvPage`]: a page of exactly one block (`BLOCK_TOKENS` rows in the cache's stored
//! encoding, the bytes [`KvData::to_bytes`] gives: `f32`, BF16 and F16 little-endian, Q8_0 as
//! GGML's 34-byte blocks — 64 rows of any of these are whole words) cut from a large "slab"
//! buffer. A 262K-token context is 4,096 blocks per layer: attention binds a handful of slabs
//! and reads a page table, never a buffer per block.
//!
//! * Slabs: one page size each (keys and values of one width and type share them), up to
//!   `min(max binding, 256 MiB)`, growing from 32 MiB as a size is used more; a slab is kept
//!   once made (freed pages are reused, like the activation pool's buffers).
//! * Placement: a new page goes to the slab of the cache's previous page when it has room,
//!   else to a slab with room for a whole chunk (8 blocks, 16 pages), else a new slab. So a
//!   sequence's layer sits in few slabs, and every 512-position chunk of it (what one
//!   attention workgroup reads) usually in one. Attention binds [`SLOTS`] slabs per dispatch;
//!   a chunk whose pages are spread over more (a fragmented store) is moved into one slab
//!   first ([`pages`]: new blocks in the cache, copies on the device; other sequences keep
//!   the old ones).
//! * A page is a [`DeviceBuffer`]: `read` copies its bytes back (host layout, so files and
//!   host backends read it as they read host rows), `duplicate` takes a page and records a
//!   device copy (snapshots, copy-on-write truncation), and dropping the last handle returns
//!   it to its slab's free list. A dispatch recorded earlier that still reads a freed page
//!   runs before any later write to it (queue order), so reuse is safe.
//! * Writing: [`append`] moves host rows in (blocks, tail) and converts new `f32` rows to the
//!   stored type on the device (`kv_store` in `shaders/attention.wgsl`), bit for bit what
//!   [`KvData::push_rows`] stores: integer arithmetic only (nearest-even F16/BF16 packing,
//!   Q8_0's `amax / 127` and `1/d` by an exact division, the product rounded once and
//!   rounded to an integer halves away from zero), one thread per destination word.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use qinfer_cache::{BLOCK_TOKENS, DeviceBuffer, KvBlock, KvCache, KvData, KvType};

use crate::context::{Ctx, GBuf, Kernel, Params, grid, kernel};

/// Slab bindings of one attention dispatch (the shader's `slab0..slab3`).
pub(crate) const SLOTS: usize = 4;
/// Blocks per attention chunk (512 positions).
pub(crate) const CHUNK_BLOCKS: usize = 8;
/// Pages a slab holds at least: a chunk's keys and values.
const MIN_SLAB_PAGES: u64 = 2 * CHUNK_BLOCKS as u64;
/// Largest slab, bytes (or the largest binding, if smaller).
const SLAB_CAP: u64 = 256 << 20;
/// First slab of a page size, bytes; each further slab of that size doubles, up to the cap.
const FIRST_SLAB: u64 = 32 << 20;

const ATT: fn(&'static str) -> Kernel = |e| kernel("attention", e);

/// The shader's encoding code of a KV type (`kind`).
pub(crate) fn kind(ty: KvType) -> usize {
    match ty {
        KvType::F32 => 0,
        KvType::Bf16 => 1,
        KvType::F16 => 2,
        KvType::Q8_0 => 3,
    }
}

/// A context's KV pages (the `kv` field of [`Ctx`]).
#[derive(Default)]
pub(crate) struct PageStore {
    state: Mutex<Store>,
}

#[derive(Default)]
struct Store {
    /// Every slab made, by id.
    slabs: Vec<Slab>,
    /// Most pages per slab (tests: many small slabs).
    max_pages: Option<u64>,
}

struct Slab {
    buf: wgpu::Buffer,
    page_bytes: u64,
    pages: u32,
    /// Pages never handed out start here.
    next: u32,
    free: Vec<u32>,
}

impl Slab {
    fn room(&self) -> u64 {
        self.free.len() as u64 + u64::from(self.pages - self.next)
    }

    fn take(&mut self) -> Option<u32> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        (self.next < self.pages).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
}

impl PageStore {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Caps slabs at `pages` pages (at least a chunk's 16): tests of sequences spread over
    /// many slabs.
    #[cfg(test)]
    pub(crate) fn limit_slab_pages(&self, pages: u64) {
        self.lock().max_pages = Some(pages.max(MIN_SLAB_PAGES));
    }

    /// Slabs made so far.
    #[cfg(test)]
    pub(crate) fn slabs(&self) -> usize {
        self.lock().slabs.len()
    }

    fn free(&self, slab: u32, index: u32) {
        if let Some(s) = self.lock().slabs.get_mut(slab as usize) {
            s.free.push(index);
        }
    }
}

/// Allocates `n` pages of `page_bytes`: in slab `hint` while it has room, then in a slab with
/// room for a whole chunk or the rest, whichever is less, else in a new slab (all `n` in one
/// slab when `together`).
fn alloc_pages(
    ctx: &Arc<Ctx>,
    page_bytes: u64,
    n: usize,
    hint: Option<u32>,
    together: bool,
) -> Vec<KvPage> {
    assert!(
        page_bytes > 0 && page_bytes.is_multiple_of(4),
        "KV pages are whole words"
    );
    let cap_bytes = ctx.max_binding().min(SLAB_CAP);
    let cap = cap_bytes / page_bytes;
    assert!(
        cap >= MIN_SLAB_PAGES,
        "KV pages of {page_bytes} bytes: {MIN_SLAB_PAGES} of them exceed what one GPU binding may see ({cap_bytes} bytes)"
    );
    let mut st = ctx.kv.lock();
    let mut out = Vec::with_capacity(n);
    let mut hint = hint.filter(|&h| {
        st.slabs
            .get(h as usize)
            .is_some_and(|s| s.page_bytes == page_bytes && (!together || s.room() >= n as u64))
    });
    while out.len() < n {
        let want = (n - out.len()) as u64;
        let slab = match hint.filter(|&h| st.slabs[h as usize].room() > 0) {
            Some(h) => h as usize,
            None => {
                let need = if together {
                    want
                } else {
                    want.min(MIN_SLAB_PAGES)
                };
                match st
                    .slabs
                    .iter()
                    .position(|s| s.page_bytes == page_bytes && s.room() >= need)
                {
                    Some(i) => i,
                    None => {
                        let made = st
                            .slabs
                            .iter()
                            .filter(|s| s.page_bytes == page_bytes)
                            .count();
                        let bytes = FIRST_SLAB
                            .checked_shl(made.min(16) as u32)
                            .unwrap_or(u64::MAX)
                            .min(cap_bytes);
                        let mut pages = (bytes / page_bytes).clamp(MIN_SLAB_PAGES, cap);
                        if let Some(m) = st.max_pages {
                            pages = pages.min(m);
                        }
                        let pages = pages.max(if together { want } else { 1 });
                        assert!(pages <= cap, "{n} KV pages together exceed one slab");
                        let pages = u32::try_from(pages).expect("pages per slab fit u32");
                        st.slabs.push(Slab {
                            buf: ctx.buffer(u64::from(pages) * page_bytes),
                            page_bytes,
                            pages,
                            next: 0,
                            free: Vec::new(),
                        });
                        st.slabs.len() - 1
                    }
                }
            }
        };
        let id = u32::try_from(slab).expect("slab ids fit u32");
        hint = Some(id);
        let s = &mut st.slabs[slab];
        while out.len() < n {
            let Some(index) = s.take() else { break };
            out.push(KvPage {
                ctx: ctx.clone(),
                slab: id,
                index,
                page_bytes,
                buf: s.buf.clone(),
            });
        }
    }
    out
}

fn alloc_page(ctx: &Arc<Ctx>, page_bytes: u64, hint: Option<u32>) -> KvPage {
    alloc_pages(ctx, page_bytes, 1, hint, false)
        .pop()
        .expect("one page")
}

/// One block's keys or values in a slab of a context's page store.
pub(crate) struct KvPage {
    ctx: Arc<Ctx>,
    slab: u32,
    index: u32,
    page_bytes: u64,
    /// The slab's buffer.
    buf: wgpu::Buffer,
}

impl KvPage {
    /// Its first byte in the slab.
    pub(crate) fn offset(&self) -> u64 {
        u64::from(self.index) * self.page_bytes
    }

    /// Its first word in the slab (slabs are at most 256 MiB).
    pub(crate) fn word(&self) -> u32 {
        u32::try_from(self.offset() / 4).expect("a slab word index fits u32")
    }

    /// Whether it is a page of `page_bytes` in `ctx`'s store.
    fn fits(&self, ctx: &Arc<Ctx>, page_bytes: u64) -> bool {
        Arc::ptr_eq(&self.ctx, ctx) && self.page_bytes == page_bytes
    }

    /// Records a copy of this page's bytes into `to` (a page of the same size).
    fn copy_to(&self, to: &KvPage) {
        debug_assert_eq!(self.page_bytes, to.page_bytes);
        if self.slab != to.slab {
            self.ctx.copy(
                &self.buf,
                self.offset(),
                &to.buf,
                to.offset(),
                self.page_bytes,
            );
            return;
        }
        // A transfer cannot copy within one buffer: a kernel with the slab as its only binding.
        let words = usize::try_from(self.page_bytes / 4).expect("page words fit usize");
        let p = P {
            src_word: self.word() as usize,
            dst_word: to.word() as usize,
            words,
            ..P::default()
        };
        self.ctx.dispatch(
            ATT("kv_copy"),
            p.params().bytes(),
            &[self.buf.as_entire_binding()],
            grid(words.div_ceil(256)),
        );
    }
}

impl std::fmt::Debug for KvPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "KvPage[slab {} page {} of {} bytes on {:?}]",
            self.slab, self.index, self.page_bytes, self.ctx
        )
    }
}

impl Drop for KvPage {
    fn drop(&mut self) {
        self.ctx.kv.free(self.slab, self.index);
    }
}

impl DeviceBuffer for KvPage {
    /// Waits for everything recorded so far (the page's last writer included).
    fn read(&self, bytes: usize) -> Vec<u8> {
        let whole = (bytes as u64).next_multiple_of(4);
        assert!(
            whole <= self.page_bytes,
            "reading {bytes} bytes of a {}-byte KV page",
            self.page_bytes
        );
        let mut out = self.ctx.read(&self.buf, self.offset(), whole);
        out.truncate(bytes);
        out
    }

    /// A page next to this one and a recorded copy: the rows as of now, whatever is written
    /// to either page later.
    fn duplicate(&self) -> Box<dyn DeviceBuffer> {
        let d = alloc_page(&self.ctx, self.page_bytes, Some(self.slab));
        self.copy_to(&d);
        Box::new(d)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// The shader's `Params` (shared by every entry point of `attention.wgsl`), field by field.
#[derive(Clone, Copy, Default)]
pub(crate) struct P {
    pub rows: usize,
    pub hq: usize,
    pub hkv: usize,
    pub d: usize,
    pub group: usize,
    pub scale: f32,
    pub keys: usize,
    pub causal: usize,
    pub kind: usize,
    pub width: usize,
    pub row_bytes: usize,
    pub tiles: usize,
    pub c_lo: usize,
    pub c_hi: usize,
    pub split: usize,
    pub carry_in: usize,
    pub carry_out: usize,
    pub chunks: usize,
    pub src_row: usize,
    pub dst_word: usize,
    pub dst_row: usize,
    pub phase: usize,
    pub src_word: usize,
    pub words: usize,
}

impl P {
    pub(crate) fn params(self) -> Params {
        Params::new()
            .u(self.rows)
            .u(self.hq)
            .u(self.hkv)
            .u(self.d)
            .u(self.group)
            .f(self.scale)
            .u(self.keys)
            .u(self.causal)
            .u(self.kind)
            .u(self.width)
            .u(self.row_bytes)
            .u(self.tiles)
            .u(self.c_lo)
            .u(self.c_hi)
            .u(self.split)
            .u(self.carry_in)
            .u(self.carry_out)
            .u(self.chunks)
            .u(self.src_row)
            .u(self.dst_word)
            .u(self.dst_row)
            .u(self.phase)
            .u(self.src_word)
            .u(self.words)
    }
}

/// Bytes of one page of `kv`'s rows.
fn page_bytes(kv: &KvCache) -> u64 {
    (BLOCK_TOKENS * kv.kv_type().row_bytes(kv.kv_width())) as u64
}

/// `d`'s page if it is one of `ctx`'s, of `page_bytes`.
fn our_page<'a>(ctx: &Arc<Ctx>, d: &'a KvData, page_bytes: u64) -> Option<&'a KvPage> {
    match d {
        KvData::Device { buf, .. } => buf
            .as_any()
            .downcast_ref::<KvPage>()
            .filter(|p| p.fits(ctx, page_bytes)),
        _ => None,
    }
}

/// Records a write of `bytes` (host layout, at most a page) at the start of `page`.
fn upload(ctx: &Ctx, page: &KvPage, bytes: &[u8]) {
    let mut words = bytes.to_vec();
    words.resize(bytes.len().next_multiple_of(4), 0);
    ctx.write(&page.buf, page.offset(), &words);
}

/// `d` as a page of `ctx` (moved in, rows kept, if it is host memory or another backend's or
/// context's buffer); returns the page's slab.
fn make_resident(ctx: &Arc<Ctx>, d: &mut KvData, page_bytes: u64, hint: Option<u32>) -> u32 {
    if let Some(p) = our_page(ctx, d, page_bytes) {
        return p.slab;
    }
    let page = alloc_page(ctx, page_bytes, hint);
    if !d.is_empty() {
        upload(ctx, &page, &d.to_bytes());
    }
    let slab = page.slab;
    *d = KvData::Device {
        ty: d.kv_type(),
        units: d.units(),
        buf: Box::new(page),
    };
    slab
}

/// The slab of the cache's last page, if it is one of ours (where its next page should go).
fn last_slab(ctx: &Arc<Ctx>, kv: &KvCache) -> Option<u32> {
    let pb = page_bytes(kv);
    let (tk, _) = kv.tail();
    our_page(ctx, tk, pb)
        .or_else(|| {
            kv.blocks()
                .last()
                .and_then(|b| our_page(ctx, b.values(), pb))
        })
        .map(|p| p.slab)
}

/// Moves every full block of `kv` that is not in `ctx`'s pages (made on the host, restored
/// from a file, written by another backend or context) into new pages, in place: a new
/// `Arc<KvBlock>`, since other sequences may share the old one.
pub(crate) fn resident_blocks(ctx: &Arc<Ctx>, kv: &mut KvCache) {
    let pb = page_bytes(kv);
    let mut hint = None;
    for b in kv.blocks_mut() {
        if let (Some(k), Some(_)) = (our_page(ctx, b.keys(), pb), our_page(ctx, b.values(), pb)) {
            hint = Some(k.slab);
            continue;
        }
        let (mut k, mut v) = (b.keys().clone(), b.values().clone());
        for d in [&mut k, &mut v] {
            hint = Some(make_resident(ctx, d, pb, hint));
        }
        *b = Arc::new(KvBlock::new(k, v));
    }
}

/// Appends rows `0..t` of `k`, `v` (`[t, kv_width]` f32) to `kv`, converted on the device to
/// its type; the tail moves into a page first if it is not one.
pub(crate) fn append(ctx: &Arc<Ctx>, kv: &mut KvCache, k: &GBuf, v: &GBuf, t: usize) {
    let (ty, w) = (kv.kv_type(), kv.kv_width());
    let pb = page_bytes(kv);
    let per_row = KvData::units_per_row(ty, w);
    let mut hint = last_slab(ctx, kv);
    kv.append_with(t, |tk, tv, rows| {
        for (d, src) in [(tk, k), (tv, v)] {
            hint = Some(make_resident(ctx, d, pb, hint));
            let KvData::Device { units, buf, .. } = d else {
                unreachable!("made resident above")
            };
            let page = buf.as_any().downcast_ref::<KvPage>().expect("a KV page");
            store_rows(
                ctx,
                page,
                ty,
                w,
                src,
                rows.start,
                rows.len(),
                *units / per_row,
            );
            *units += rows.len() * per_row;
        }
    });
}

/// Records the conversion of rows `r0..r0 + n` of `src` (`f32`, `w` wide) into rows
/// `row0..row0 + n` of `page`, stored as `ty`.
fn store_rows(
    ctx: &Arc<Ctx>,
    page: &KvPage,
    ty: KvType,
    w: usize,
    src: &GBuf,
    r0: usize,
    n: usize,
    row0: usize,
) {
    if n == 0 {
        return;
    }
    assert!(row0 + n <= BLOCK_TOKENS, "KV rows past a page");
    assert!(src.len >= (r0 + n) * w, "KV rows past their source");
    let row_bytes = ty.row_bytes(w);
    let p = P {
        rows: n,
        kind: kind(ty),
        width: w,
        row_bytes,
        src_row: r0,
        dst_word: page.word() as usize,
        dst_row: row0,
        ..P::default()
    };
    let blocks = n * (w / 32);
    // Q8_0: the blocks' (f16 scale, 1/d) first.
    let scales = ctx.alloc(if ty == KvType::Q8_0 { 2 * blocks } else { 1 });
    let binds = [page.buf.as_entire_binding(), scales.bind(), src.bind()];
    if ty == KvType::Q8_0 {
        let p0 = P { phase: 0, ..p };
        ctx.dispatch(
            ATT("kv_store"),
            p0.params().bytes(),
            &binds,
            grid(blocks.div_ceil(256)),
        );
    }
    let start = row0 * row_bytes;
    let words = (start + n * row_bytes).div_ceil(4) - start / 4;
    let p1 = P { phase: 1, ..p };
    ctx.dispatch(
        ATT("kv_store"),
        p1.params().bytes(),
        &binds,
        grid(words.div_ceil(256)),
    );
}

/// Moves `kv`'s full blocks (host rows) into pages of `ctx`, block `i` in the `i % n`-th of
/// `n` fresh slabs of 16 pages: a store as fragmented as it gets (tests of [`layout`]).
#[cfg(test)]
pub(crate) fn scatter_blocks(ctx: &Arc<Ctx>, kv: &mut KvCache, n: usize) {
    ctx.kv.limit_slab_pages(MIN_SLAB_PAGES);
    let pb = page_bytes(kv);
    let slabs: Vec<u32> = (0..n)
        .map(|_| alloc_pages(ctx, pb, MIN_SLAB_PAGES as usize, None, true)[0].slab)
        .collect();
    for (i, b) in kv.blocks_mut().iter_mut().enumerate() {
        let (mut k, mut v) = (b.keys().clone(), b.values().clone());
        for d in [&mut k, &mut v] {
            assert!(d.is_host());
            make_resident(ctx, d, pb, Some(slabs[i % n]));
        }
        *b = Arc::new(KvBlock::new(k, v));
    }
}

/// Where one page is: an index into the slab list of a [`Layout`] and its first word there.
pub(crate) type PageAt = (usize, u32);

/// A sequence's key and value pages as attention reads them: the buffers, and per page
/// (position `64·i ..`) its keys' and values' place.
pub(crate) struct Layout {
    pub slabs: Vec<wgpu::Buffer>,
    pub pages: Vec<[PageAt; 2]>,
}

/// The pages of `kv` (every row in `ctx`'s pages: after [`resident_blocks`] and [`append`]),
/// with every chunk of [`CHUNK_BLOCKS`] blocks in at most `slots` slabs: a chunk spread over
/// more is first copied into one slab (new blocks in `kv`; its other holders keep theirs).
pub(crate) fn layout(ctx: &Arc<Ctx>, kv: &mut KvCache, slots: usize) -> Layout {
    assert!(
        slots >= 2,
        "attention binds keys and values: two slabs at least"
    );
    let pb = page_bytes(kv);
    let n_blocks = kv.blocks().len();
    let (tk, _) = kv.tail();
    let n_pages = n_blocks + usize::from(!tk.is_empty());
    for c0 in (0..n_pages).step_by(CHUNK_BLOCKS) {
        let c1 = (c0 + CHUNK_BLOCKS).min(n_pages);
        let mut slabs: Vec<u32> = Vec::new();
        for i in c0..c1 {
            for p in page_pair(ctx, kv, i, pb) {
                if !slabs.contains(&p.slab) {
                    slabs.push(p.slab);
                }
            }
        }
        if slabs.len() > slots {
            gather_chunk(ctx, kv, c0..c1, pb);
        }
    }
    let mut ids: HashMap<u32, usize> = HashMap::new();
    let mut out = Layout {
        slabs: Vec::new(),
        pages: Vec::with_capacity(n_pages),
    };
    for i in 0..n_pages {
        let [k, v] = page_pair(ctx, kv, i, pb);
        let mut at = |p: &KvPage| {
            let idx = *ids.entry(p.slab).or_insert_with(|| {
                out.slabs.push(p.buf.clone());
                out.slabs.len() - 1
            });
            (idx, p.word())
        };
        let pair = [at(k), at(v)];
        out.pages.push(pair);
    }
    out
}

/// Page pair `i` of `kv` (block `i`, or the tail past the blocks).
fn page_pair<'a>(ctx: &Arc<Ctx>, kv: &'a KvCache, i: usize, pb: u64) -> [&'a KvPage; 2] {
    let (k, v) = match kv.blocks().get(i) {
        Some(b) => (b.keys(), b.values()),
        None => kv.tail(),
    };
    [k, v].map(|d| our_page(ctx, d, pb).expect("KV rows resident in this context's pages"))
}

/// Copies the pages of blocks `range` (the tail among them if the range reaches past the
/// blocks) into one slab.
fn gather_chunk(ctx: &Arc<Ctx>, kv: &mut KvCache, range: std::ops::Range<usize>, pb: u64) {
    let (ty, w) = (kv.kv_type(), kv.kv_width());
    let n_blocks = kv.blocks().len();
    let fresh = alloc_pages(ctx, pb, 2 * range.len(), None, true);
    let mut fresh = fresh.into_iter();
    let mut moved = |d: &KvData| {
        let KvData::Device { units, .. } = d else {
            unreachable!("resident")
        };
        let from = our_page(ctx, d, pb).expect("resident");
        let to = fresh.next().expect("a page per page");
        from.copy_to(&to);
        KvData::Device {
            ty,
            units: *units,
            buf: Box::new(to),
        }
    };
    let mut tail = None;
    for i in range {
        if i < n_blocks {
            let b = &kv.blocks()[i];
            let nb = KvBlock::new(moved(b.keys()), moved(b.values()));
            kv.blocks_mut()[i] = Arc::new(nb);
        } else {
            let (tk, tv) = kv.tail();
            tail = Some((moved(tk), moved(tv)));
        }
    }
    if let Some((tk, tv)) = tail {
        *kv = KvCache::from_parts(w, ty, kv.blocks().to_vec(), tk, tv);
    }
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};

    use super::*;
    use crate::tests::gpu;
    use crate::{Gpu, Pick};

    /// Values that test every corner of the conversions: zeros of both signs, subnormals of
    /// f32 and of f16, values that round to a tie in F16 and BF16, overflow to infinity,
    /// infinities and NaNs with payloads, and plain noise of several magnitudes.
    fn awkward(n: usize, seed: u32) -> Vec<f32> {
        let special = [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::from_bits(1),
            f32::from_bits(0x8000_0001),
            f32::from_bits(0x007F_FFFF),
            5.96e-8,
            2.98e-8,
            -3.0e-8,
            6.1e-5,
            65504.0,
            65520.0,
            -65519.0,
            1.0e38,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7F80_0001),
            f32::from_bits(0xFFC1_2345),
            1.000_976_6,  // f16 tie (1 + 2^-11)
            1.003_906_3,  // bf16 tie (1 + 2^-8)
            1.011_718_8,  // bf16 tie, odd below (1 + 3·2^-8)
            -2.000_976_6, // f16 tie at 2
            f32::from_bits(0x3F80_8000),
            f32::from_bits(0x3F81_8000),
        ];
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                if i % 5 == 0 {
                    special[(s as usize) % special.len()]
                } else if i % 5 == 1 {
                    // Any bit pattern at all.
                    f32::from_bits(s)
                } else {
                    let scale = [1e-30f32, 1e-6, 1.0, 3.0e3, 1e30][(s >> 7) as usize % 5];
                    ((s >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * scale
                }
            })
            .collect()
    }

    /// Q8_0 blocks (32 values) of every kind of scale: halves that are ties after `x · (1/d)`
    /// (values k + 0.5 times a power-of-two step), all zeros, all subnormal, an infinity or
    /// a NaN among finite values, tiny normal ones (whose `d` is subnormal), huge ones.
    fn q8_blocks(rows: usize, w: usize, seed: u32) -> Vec<f32> {
        let base = awkward(rows * w, seed);
        base.chunks(32)
            .enumerate()
            .flat_map(|(b, blk)| {
                let mut x = blk.to_vec();
                match b % 9 {
                    0 => {
                        // amax 127 · 2^k: d = 2^k, 1/d exact, x·(1/d) = j + 0.5 exactly.
                        let step = 2f32.powi((b % 7) as i32 - 3);
                        for (i, v) in x.iter_mut().enumerate() {
                            *v = (i as f32 - 15.5) * step;
                        }
                        x[31] = 127.0 * step;
                    }
                    1 => x.fill(0.0),
                    2 => {
                        for (i, v) in x.iter_mut().enumerate() {
                            *v = f32::from_bits(i as u32 * 977 + 1);
                        }
                    }
                    3 => {
                        for (i, v) in x.iter_mut().enumerate() {
                            *v = (i as f32 - 16.0) * 1e-39;
                        }
                        x[3] = 1.2e-36;
                    }
                    4 => {
                        for (i, v) in x.iter_mut().enumerate() {
                            *v = ((i * 37 % 17) as f32 - 8.0) * 1e37;
                        }
                    }
                    5 => {
                        for (i, v) in x.iter_mut().enumerate() {
                            *v = (i as f32).sin();
                        }
                    }
                    _ => {
                        // Finite noise (plus the NaN / infinity the awkward values bring).
                        for (i, v) in x.iter_mut().enumerate() {
                            if !v.is_finite() && (b + i) % 3 != 0 {
                                *v = (i as f32 * 0.37).cos() * 3.0;
                            }
                        }
                    }
                }
                x
            })
            .collect()
    }

    /// The stored bytes of keys and values.
    fn stored(kv: &KvCache) -> (Vec<u8>, Vec<u8>) {
        let (k, v) = kv.to_stored();
        (k.to_bytes(), v.to_bytes())
    }

    /// Rows appended on the device, in steps of every length, are stored as exactly the bytes
    /// the host stores for the same rows (`KvData::push_rows`): all four types, widths with
    /// odd 16-bit rows (odd rows share a word) and Q8_0 rows of an odd number of blocks (34-byte
    /// blocks straddle words), every corner value of the conversions. Bit for bit.
    #[test]
    fn device_rows_store_the_host_bytes() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        for ty in KvType::ALL {
            for w in [3usize, 32, 96, 160] {
                if !ty.supports(w) {
                    continue;
                }
                let n = 150;
                let (k, v) = if ty == KvType::Q8_0 {
                    (q8_blocks(n, w, 1), q8_blocks(n, w, 2))
                } else {
                    (awkward(n * w, 1), awkward(n * w, 2))
                };
                let mut host = KvCache::new(w, ty);
                host.append(&k, &v);
                for steps in [
                    vec![150],
                    vec![1; 150],
                    vec![64, 1, 85],
                    vec![7, 63, 65, 15],
                ] {
                    let mut dev = KvCache::new(w, ty);
                    let mut at = 0;
                    for t in steps {
                        let r = at * w..(at + t) * w;
                        let (kb, vb) = (ctx.upload(&k[r.clone()]), ctx.upload(&v[r]));
                        resident_blocks(ctx, &mut dev);
                        append(ctx, &mut dev, &kb, &vb, t);
                        at += t;
                    }
                    assert!(!dev.is_host(), "{ty} w={w}: rows on the device");
                    assert_eq!(dev.len(), n);
                    let (dk, dv) = stored(&dev);
                    let (hk, hv) = stored(&host);
                    for (what, d, h) in [("keys", &dk, &hk), ("values", &dv, &hv)] {
                        if let Some(i) = (0..d.len()).find(|&i| d[i] != h[i]) {
                            let row_bytes = ty.row_bytes(w);
                            let (r, c) = (i / row_bytes, i % row_bytes);
                            let x = if what == "keys" { &k } else { &v };
                            panic!(
                                "{ty} w={w} {what}: byte {i} (row {r}, byte {c}) is {:#04x}, host {:#04x}; row {:?}",
                                d[i],
                                h[i],
                                &x[r * w..(r + 1) * w]
                            );
                        }
                    }
                    assert_eq!(dk.len(), hk.len());
                    assert_eq!(dev, host, "{ty} w={w}");
                }
            }
        }
    }

    /// The device's F16 and BF16 packing over a sweep of bit patterns (every exponent, the
    /// rounding bits in every state) equals `half`'s.
    #[test]
    fn sixteen_bit_packing_matches_half_over_a_sweep() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let w = 4096;
        let n = 64usize;
        let x: Vec<f32> = (0..(n * w) as u32)
            .map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B1) ^ (i << 11) ^ (i & 0x1FFF)))
            .collect();
        for ty in [KvType::F16, KvType::Bf16] {
            let mut dev = KvCache::new(w, ty);
            let xb = ctx.upload(&x);
            append(ctx, &mut dev, &xb, &xb, n);
            let got = dev.to_stored().0.to_bytes();
            let want: Vec<u8> = x
                .iter()
                .flat_map(|&v| match ty {
                    KvType::F16 => f16::from_f32(v).to_le_bytes(),
                    _ => bf16::from_f32(v).to_le_bytes(),
                })
                .collect();
            let bad = (0..x.len()).find(|&i| got[2 * i..2 * i + 2] != want[2 * i..2 * i + 2]);
            assert!(
                bad.is_none(),
                "{ty}: {:?} ({:#010x})",
                bad.map(|i| x[i]),
                bad.map_or(0, |i| x[i].to_bits())
            );
        }
    }

    /// The shader's exact division, multiplication, rounding to an integer and F16 packing
    /// against the host's `/`, `*`, `round() as i32 as i8` and `f16::from_f32`, over random bit
    /// patterns of every exponent and the corner cases: bit for bit.
    #[test]
    fn soft_float_matches_the_host() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let corners = [
            0u32,
            1,
            0x007F_FFFF,
            0x0080_0000,
            0x3F80_0000,
            0x42FE_0000,
            0x3F00_0000,
            0x3FC0_0000,
            0x4020_0000,
            0x7F7F_FFFF,
            0x7F80_0000,
            0x7FC0_0000,
            0x4EFF_FFFF,
            0x4F00_0000,
            0x0000_8000,
            0x3380_0000,
            0x3300_0000,
            0x3F7F_FFFF,
        ];
        let mut s = 0x1234_5678u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        for &a in &corners {
            for &b in &corners {
                pairs.push((a, b));
                pairs.push((a | 0x8000_0000, b));
            }
        }
        for _ in 0..200_000 {
            let (a, b) = (next(), next());
            // Mostly magnitudes near each other (products and quotients in range, ties in
            // rounding to integers), some anywhere.
            let b = if b % 4 == 0 {
                b
            } else {
                (b & 0x80FF_FFFF) | (0x3F00_0000 + (b % 9) * 0x0080_0000)
            };
            let a = if a % 3 == 0 {
                (a & 0x807F_FFFF) | 0x4200_0000
            } else {
                a
            };
            pairs.push((a, b));
        }
        // Halves: k + 0.5 for k up to 2^23.
        for k in 0..2000u32 {
            let x = (k * 4099 % 8_388_608) as f32 + 0.5;
            pairs.push((x.to_bits(), 0x3F80_0000));
            pairs.push(((-x).to_bits(), 0x3F80_0000));
        }
        let src: Vec<f32> = pairs
            .iter()
            .flat_map(|&(a, b)| [f32::from_bits(a), f32::from_bits(b)])
            .collect();
        let n = pairs.len();
        let (out, state, input) = (ctx.alloc(3 * n), ctx.alloc(n), ctx.upload(&src));
        let p = P {
            rows: n,
            ..P::default()
        };
        ctx.dispatch(
            ATT("soft_float_probe"),
            p.params().bytes(),
            &[out.bind(), state.bind(), input.bind()],
            grid(n.div_ceil(256)),
        );
        let got: Vec<u32> = bytemuck::pod_collect_to_vec(&ctx.read(out.buffer(), 0, 12 * n as u64));
        for (i, &(a, b)) in pairs.iter().enumerate() {
            let (x, y) = (f32::from_bits(a), f32::from_bits(b));
            // (∞/∞ is never asked: the shader takes any a / ∞ as 0.)
            let div = if y != 0.0 && y.is_finite() && !x.is_nan() {
                (x.abs() / y.abs()).to_bits()
            } else {
                0
            };
            let prod = x * y;
            let prod = if prod.is_nan() {
                0x7FC0_0000
            } else {
                prod.to_bits()
            };
            let packed = u32::from(x.round() as i32 as i8 as u8)
                | (u32::from(f16::from_f32(x).to_bits()) << 8);
            assert_eq!(got[3 * i], div, "{x:e} / {y:e}");
            assert_eq!(got[3 * i + 1], prod, "{x:e} · {y:e}");
            assert_eq!(got[3 * i + 2], packed, "round / f16 of {x:e} ({a:#010x})");
        }
    }

    /// Pages come back to their slab when dropped and are reused; a duplicate is independent;
    /// a read of a partial page gives the bytes asked for.
    #[test]
    fn pages_are_reused_and_duplicates_independent() {
        let Some(g) = Gpu::open(Pick::Best).ok() else {
            return;
        };
        let ctx = &g.ctx;
        let pb = 64 * 4 * 8;
        let a = alloc_page(ctx, pb, None);
        let (slab, index) = (a.slab, a.index);
        upload(ctx, &a, &[1, 2, 3, 4, 5, 6]);
        assert_eq!(a.read(6), vec![1, 2, 3, 4, 5, 6]);
        let d = a.duplicate();
        upload(ctx, &a, &[9; 8]);
        assert_eq!(
            d.read(6),
            vec![1, 2, 3, 4, 5, 6],
            "a duplicate in the same slab"
        );
        assert_eq!(a.read(3), vec![9; 3]);
        drop(a);
        let b = alloc_page(ctx, pb, None);
        assert_eq!((b.slab, b.index), (slab, index), "the freed page is reused");
        // Another size: another slab.
        let c = alloc_page(ctx, 2 * pb, None);
        assert_ne!(c.slab, b.slab);
        assert_eq!(ctx.kv.slabs(), 2);
        // Pages together land in one slab, a new one when the hinted one lacks room.
        ctx.kv.limit_slab_pages(16);
        let many = alloc_pages(ctx, 3 * pb, 20, None, false);
        assert!(many.iter().filter(|p| p.slab == many[0].slab).count() == 16);
        let together = alloc_pages(ctx, 3 * pb, 14, Some(many[19].slab), true);
        assert!(together.iter().all(|p| p.slab == together[0].slab));
        assert_ne!(
            together[0].slab, many[19].slab,
            "12 pages of room is not 14"
        );
        let near = alloc_pages(ctx, 3 * pb, 12, Some(many[19].slab), true);
        assert!(
            near.iter().all(|p| p.slab == many[19].slab),
            "12 pages of room take 12"
        );
    }
}
