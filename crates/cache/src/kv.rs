//! Attention KV rows in fixed-size token blocks, stored in a chosen precision.
//!
//! A [`KvCache`] is a list of full blocks of [`BLOCK_TOKENS`] rows, each behind an `Arc` and
//! immutable once full, plus a partial tail block owned by the sequence. Cloning a cache (a
//! snapshot, a prefix-cache hit) clones the `Arc`s and copies only the tail, so every sequence
//! that shares a prefix shares the memory of its full blocks. Writing never touches a shared
//! block: appends go to the tail, and truncating into a full block copies the kept rows into a
//! new tail (copy-on-write).
//!
//! The block size equals the chunk of the chunked Gated DeltaNet form, so KV block boundaries
//! and DeltaNet snapshot points coincide.
//!
//! Rows are stored as [`KvType`]: `f32`, BF16, F16 (round to nearest even) or Q8_0 (GGML's
//! 32-value blocks, one per 32 values of a row). Each row is converted on its own when it is
//! appended, so its stored bytes never depend on how many rows came with it: prefill in
//! pieces, batched steps and resumed prompts store exactly what one pass stores.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use crate::device::DeviceBuffer;
use crate::rows::{KvRows, KvSegment};
use half::{bf16, f16};
use qinfer_quant::q8_0::{self, BlockQ8_0};

/// Rows per KV block (= the chunk length of the chunked delta rule).
pub const BLOCK_TOKENS: usize = 64;

/// How KV rows are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvType {
    F32,
    /// Round to nearest even, `f32`'s range.
    Bf16,
    /// Round to nearest even; values past ±65504 become infinite.
    F16,
    /// GGML Q8_0 per row: blocks of 32 values, `d = max|x| / 127` (`f16`), 8-bit quants.
    Q8_0,
}

impl KvType {
    pub const ALL: [KvType; 4] = [KvType::F32, KvType::Bf16, KvType::F16, KvType::Q8_0];

    /// The name on the command line and in files: `f32`, `bf16`, `f16`, `q8_0`.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::Bf16 => "bf16",
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// Whether rows `width` values wide can be stored in this type (Q8_0: whole blocks).
    pub fn supports(self, width: usize) -> bool {
        self != KvType::Q8_0 || width.is_multiple_of(q8_0::BLOCK)
    }

    /// This type if it [`supports`](KvType::supports) `width`, else BF16 (Q8_0 rows must be
    /// whole 32-value blocks; BF16 is the next cheapest and has `f32`'s range).
    pub fn for_width(self, width: usize) -> KvType {
        if self.supports(width) {
            self
        } else {
            KvType::Bf16
        }
    }

    /// Bytes of one stored row of `width` values (which the type must support).
    pub fn row_bytes(self, width: usize) -> usize {
        match self {
            KvType::F32 => width * 4,
            KvType::Bf16 | KvType::F16 => width * 2,
            KvType::Q8_0 => width / q8_0::BLOCK * q8_0::BYTES,
        }
    }

    /// The byte that stands for this type in files.
    pub fn tag(self) -> u8 {
        match self {
            KvType::F32 => 0,
            KvType::Bf16 => 1,
            KvType::F16 => 2,
            KvType::Q8_0 => 3,
        }
    }

    pub fn from_tag(tag: u8) -> Option<KvType> {
        KvType::ALL.into_iter().find(|t| t.tag() == tag)
    }
}

/// The library's default: exact rows, what the transformers goldens are checked with. The
/// command line defaults to F16 (`DEFAULT_KV_TYPE` in `qinfer-cli`; README, "KV cache
/// precision").
impl Default for KvType {
    fn default() -> Self {
        KvType::F32
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A KV type name that is not one of [`KvType::ALL`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown KV cache type {0:?} (expected f32, bf16, f16 or q8_0)")]
pub struct UnknownKvType(pub String);

impl FromStr for KvType {
    type Err = UnknownKvType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| UnknownKvType(s.to_string()))
    }
}

/// Rows of one kind (keys or values) in a [`KvType`]; Q8_0 holds `width / 32` blocks per row.
/// Host memory, or a backend's buffer ([`DeviceBuffer`]) holding `units` stored items of
/// `ty` (the backend appends to it through [`KvCache::append_with`]).
pub enum KvData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    Q8_0(Vec<BlockQ8_0>),
    Device {
        ty: KvType,
        units: usize,
        buf: Box<dyn DeviceBuffer>,
    },
}

impl KvData {
    /// No rows, stored as `ty`.
    pub fn empty(ty: KvType) -> Self {
        match ty {
            KvType::F32 => KvData::F32(Vec::new()),
            KvType::Bf16 => KvData::Bf16(Vec::new()),
            KvType::F16 => KvData::F16(Vec::new()),
            KvType::Q8_0 => KvData::Q8_0(Vec::new()),
        }
    }

    pub fn kv_type(&self) -> KvType {
        match self {
            KvData::F32(_) => KvType::F32,
            KvData::Bf16(_) => KvType::Bf16,
            KvData::F16(_) => KvType::F16,
            KvData::Q8_0(_) => KvType::Q8_0,
            KvData::Device { ty, .. } => *ty,
        }
    }

    /// Stored items: values, or Q8_0 blocks.
    pub fn units(&self) -> usize {
        match self {
            KvData::F32(x) => x.len(),
            KvData::Bf16(x) => x.len(),
            KvData::F16(x) => x.len(),
            KvData::Q8_0(x) => x.len(),
            KvData::Device { units, .. } => *units,
        }
    }

    /// Items per row of `width` values.
    pub fn units_per_row(ty: KvType, width: usize) -> usize {
        match ty {
            KvType::Q8_0 => width / q8_0::BLOCK,
            _ => width,
        }
    }

    /// Bytes of one stored item.
    pub fn unit_bytes(ty: KvType) -> usize {
        match ty {
            KvType::F32 => 4,
            KvType::Bf16 | KvType::F16 => 2,
            KvType::Q8_0 => q8_0::BYTES,
        }
    }

    /// Whole rows of `width` values held, or `None` if the data is not whole rows.
    pub fn rows(&self, width: usize) -> Option<usize> {
        let ty = self.kv_type();
        if !ty.supports(width) {
            return None;
        }
        let per = KvData::units_per_row(ty, width);
        (per > 0 && self.units().is_multiple_of(per)).then(|| self.units() / per)
    }

    pub fn is_empty(&self) -> bool {
        self.units() == 0
    }

    /// Bytes stored.
    pub fn bytes(&self) -> usize {
        self.units() * KvData::unit_bytes(self.kv_type())
    }

    /// Whether the rows are in host memory.
    pub fn is_host(&self) -> bool {
        !matches!(self, KvData::Device { .. })
    }

    /// The rows as attention reads them, from host memory.
    ///
    /// # Panics
    /// If a device holds them ([`KvCache::make_host`] first).
    pub fn view(&self) -> KvRows<'_> {
        match self {
            KvData::F32(x) => KvRows::F32(x),
            KvData::Bf16(x) => KvRows::Bf16(x),
            KvData::F16(x) => KvRows::F16(x),
            KvData::Q8_0(x) => KvRows::Q8_0(x),
            KvData::Device { .. } => panic!("KV rows on a device have no host view"),
        }
    }

    /// The rows in host memory: borrowed, or read back from a device.
    pub fn to_host(&self) -> Cow<'_, KvData> {
        match self {
            KvData::Device { ty, units, buf } => {
                let bytes = buf.read(units * KvData::unit_bytes(*ty));
                Cow::Owned(KvData::from_bytes(*ty, &bytes).expect("whole stored items"))
            }
            host => Cow::Borrowed(host),
        }
    }

    /// Moves the rows to host memory if a device holds them.
    pub fn make_host(&mut self) {
        if !self.is_host() {
            *self = self.to_host().into_owned();
        }
    }

    /// The stored items in host layout: little-endian values, Q8_0 as 34-byte blocks.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            KvData::F32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            KvData::Bf16(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            KvData::F16(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
            KvData::Q8_0(x) => x.iter().flat_map(|b| b.to_bytes()).collect(),
            KvData::Device { ty, units, buf } => buf.read(units * KvData::unit_bytes(*ty)),
        }
    }

    /// Host rows of `ty` from their [`KvData::to_bytes`] layout; `None` if `bytes` is not
    /// whole items.
    pub fn from_bytes(ty: KvType, bytes: &[u8]) -> Option<KvData> {
        if !bytes.len().is_multiple_of(KvData::unit_bytes(ty)) {
            return None;
        }
        let u16s = || bytes.chunks_exact(2).map(|c| [c[0], c[1]]);
        Some(match ty {
            KvType::F32 => KvData::F32(crate::device::f32s(bytes)),
            KvType::Bf16 => KvData::Bf16(u16s().map(bf16::from_le_bytes).collect()),
            KvType::F16 => KvData::F16(u16s().map(f16::from_le_bytes).collect()),
            KvType::Q8_0 => KvData::Q8_0(
                bytes
                    .chunks_exact(q8_0::BYTES)
                    .map(|c| BlockQ8_0::from_bytes(c.try_into().expect("34 bytes")))
                    .collect(),
            ),
        })
    }

    /// Appends rows of `f32` values, each converted to the stored type on its own (a device
    /// buffer is moved to the host first).
    ///
    /// # Panics
    /// If the type cannot store rows `width` wide or `rows` is not whole rows.
    pub fn push_rows(&mut self, rows: &[f32], width: usize) {
        assert!(
            self.kv_type().supports(width) && width > 0 && rows.len().is_multiple_of(width),
            "kv rows are not whole"
        );
        self.make_host();
        for row in rows.chunks_exact(width) {
            match self {
                KvData::F32(x) => x.extend_from_slice(row),
                KvData::Bf16(x) => x.extend(row.iter().map(|&v| bf16::from_f32(v))),
                KvData::F16(x) => x.extend(row.iter().map(|&v| f16::from_f32(v))),
                KvData::Q8_0(x) => x.extend(row.chunks_exact(q8_0::BLOCK).map(|c| {
                    let c: &[f32; q8_0::BLOCK] = c.try_into().expect("32 values");
                    BlockQ8_0::from_bytes(&q8_0::quantize_block_ref(c))
                })),
                KvData::Device { .. } => unreachable!("moved to the host above"),
            }
        }
    }

    /// Keeps the first `units` items.
    fn truncate(&mut self, keep: usize) {
        match self {
            KvData::F32(x) => x.truncate(keep),
            KvData::Bf16(x) => x.truncate(keep),
            KvData::F16(x) => x.truncate(keep),
            KvData::Q8_0(x) => x.truncate(keep),
            KvData::Device { units, .. } => *units = keep.min(*units),
        }
    }

    /// A copy of the first `units` items (a device copy of a device buffer).
    fn prefix(&self, keep: usize) -> KvData {
        match self {
            KvData::F32(x) => KvData::F32(x[..keep].to_vec()),
            KvData::Bf16(x) => KvData::Bf16(x[..keep].to_vec()),
            KvData::F16(x) => KvData::F16(x[..keep].to_vec()),
            KvData::Q8_0(x) => KvData::Q8_0(x[..keep].to_vec()),
            KvData::Device { ty, units, buf } => KvData::Device {
                ty: *ty,
                units: keep.min(*units),
                buf: buf.duplicate(),
            },
        }
    }

    /// Moves items `units..` out into a new host buffer, leaving the first `units`.
    fn split_off(&mut self, units: usize) -> KvData {
        self.make_host();
        match self {
            KvData::F32(x) => KvData::F32(x.split_off(units)),
            KvData::Bf16(x) => KvData::Bf16(x.split_off(units)),
            KvData::F16(x) => KvData::F16(x.split_off(units)),
            KvData::Q8_0(x) => KvData::Q8_0(x.split_off(units)),
            KvData::Device { .. } => unreachable!("moved to the host above"),
        }
    }

    /// All rows as `f32` (exact for `f32`; the stored values otherwise).
    pub fn to_f32(&self) -> Vec<f32> {
        match &*self.to_host() {
            KvData::F32(x) => x.clone(),
            KvData::Bf16(x) => x.iter().map(|v| v.to_f32()).collect(),
            KvData::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
            KvData::Q8_0(x) => x.iter().flat_map(|b| b.dequantize()).collect(),
            KvData::Device { .. } => unreachable!("read back above"),
        }
    }
}

impl Clone for KvData {
    /// A device buffer is duplicated in the backend's memory.
    fn clone(&self) -> Self {
        match self {
            KvData::F32(x) => KvData::F32(x.clone()),
            KvData::Bf16(x) => KvData::Bf16(x.clone()),
            KvData::F16(x) => KvData::F16(x.clone()),
            KvData::Q8_0(x) => KvData::Q8_0(x.clone()),
            KvData::Device { ty, units, buf } => KvData::Device {
                ty: *ty,
                units: *units,
                buf: buf.duplicate(),
            },
        }
    }
}

/// The same type and stored bytes, wherever they are held.
impl PartialEq for KvData {
    fn eq(&self, other: &Self) -> bool {
        self.kv_type() == other.kv_type()
            && self.units() == other.units()
            && self.to_bytes() == other.to_bytes()
    }
}

impl fmt::Debug for KvData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.is_host() { "host" } else { "device" };
        write!(f, "KvData[{} × {}] ({place})", self.units(), self.kv_type())
    }
}

/// `BLOCK_TOKENS` key rows and value rows of one attention layer, `[BLOCK_TOKENS, kv_width]`
/// each, in one [`KvType`]. Immutable.
#[derive(Debug, PartialEq)]
pub struct KvBlock {
    k: KvData,
    v: KvData,
}

impl KvBlock {
    /// A full block from `[BLOCK_TOKENS, kv_width]` key and value rows of one type.
    ///
    /// # Panics
    /// If `k` and `v` differ in type or length or are not whole rows of a full block.
    pub fn new(k: KvData, v: KvData) -> Self {
        assert!(
            k.kv_type() == v.kv_type()
                && k.units() == v.units()
                && k.units().is_multiple_of(BLOCK_TOKENS),
            "kv block is not BLOCK_TOKENS whole rows"
        );
        KvBlock { k, v }
    }

    pub fn keys(&self) -> &KvData {
        &self.k
    }

    pub fn values(&self) -> &KvData {
        &self.v
    }

    pub fn kv_type(&self) -> KvType {
        self.k.kv_type()
    }

    /// Bytes of data held, as stored.
    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }
}

/// KV rows of one attention layer: shared full blocks + an owned partial tail.
#[derive(Clone, Debug)]
pub struct KvCache {
    kv_width: usize,
    kv_type: KvType,
    blocks: Vec<Arc<KvBlock>>,
    /// `[rows, kv_width]` with `rows < BLOCK_TOKENS`.
    tail_k: KvData,
    tail_v: KvData,
}

impl KvCache {
    /// An empty cache of rows `kv_width = Hkv·D` wide, stored as `kv_type`.
    ///
    /// # Panics
    /// If `kv_type` cannot store rows of `kv_width` ([`KvType::for_width`] picks one that can).
    pub fn new(kv_width: usize, kv_type: KvType) -> Self {
        assert!(
            kv_type.supports(kv_width),
            "{kv_type} KV rows must be a multiple of 32 values, not {kv_width}"
        );
        KvCache {
            kv_width,
            kv_type,
            blocks: Vec::new(),
            tail_k: KvData::empty(kv_type),
            tail_v: KvData::empty(kv_type),
        }
    }

    /// A cache made of `blocks` (shared) and a partial tail (`[rows, kv_width]` keys, values),
    /// all of `kv_type`.
    ///
    /// # Panics
    /// If a block or the tail has the wrong type or shape.
    pub fn from_parts(
        kv_width: usize,
        kv_type: KvType,
        blocks: Vec<Arc<KvBlock>>,
        tail_k: KvData,
        tail_v: KvData,
    ) -> Self {
        let mut kv = KvCache::new(kv_width, kv_type);
        let block_units = BLOCK_TOKENS * KvData::units_per_row(kv_type, kv_width);
        assert!(
            blocks
                .iter()
                .all(|b| b.kv_type() == kv_type && b.k.units() == block_units),
            "kv block type or width"
        );
        assert!(
            tail_k.kv_type() == kv_type
                && tail_v.kv_type() == kv_type
                && tail_k.units() == tail_v.units()
                && tail_k.units() < block_units
                && tail_k.rows(kv_width).is_some(),
            "kv tail type or shape"
        );
        (kv.blocks, kv.tail_k, kv.tail_v) = (blocks, tail_k, tail_v);
        kv
    }

    /// A cache holding the rows `k`, `v` (`[rows, kv_width]`, stored as their type), cut into
    /// blocks as appending them would; `None` if they are not whole rows of one supported type.
    pub fn from_rows(kv_width: usize, mut k: KvData, mut v: KvData) -> Option<Self> {
        let ty = k.kv_type();
        if ty != v.kv_type()
            || !ty.supports(kv_width)
            || k.rows(kv_width).is_none()
            || k.units() != v.units()
        {
            return None;
        }
        let block_units = BLOCK_TOKENS * KvData::units_per_row(ty, kv_width);
        let full = k.units() / block_units;
        let (tail_k, tail_v) = (
            k.split_off(full * block_units),
            v.split_off(full * block_units),
        );
        let mut blocks = Vec::with_capacity(full);
        for i in (0..full).rev() {
            let (bk, bv) = (k.split_off(i * block_units), v.split_off(i * block_units));
            blocks.push(Arc::new(KvBlock::new(bk, bv)));
        }
        blocks.reverse();
        Some(KvCache::from_parts(kv_width, ty, blocks, tail_k, tail_v))
    }

    pub fn kv_width(&self) -> usize {
        self.kv_width
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Rows stored.
    pub fn len(&self) -> usize {
        self.blocks.len() * BLOCK_TOKENS + self.tail_rows()
    }

    fn tail_rows(&self) -> usize {
        self.tail_k.rows(self.kv_width).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.tail_k.is_empty()
    }

    /// The full blocks, oldest first.
    pub fn blocks(&self) -> &[Arc<KvBlock>] {
        &self.blocks
    }

    /// The partial tail: `[rows, kv_width]` keys and values.
    pub fn tail(&self) -> (&KvData, &KvData) {
        (&self.tail_k, &self.tail_v)
    }

    /// Bytes of the partial tail, as stored.
    pub fn tail_bytes(&self) -> usize {
        self.tail_k.bytes() + self.tail_v.bytes()
    }

    /// Key and value rows in order, one `(k, v)` pair per block (then the tail), for attention
    /// to read in place, in their stored type.
    pub fn segments(&self) -> impl Iterator<Item = KvSegment<'_>> {
        self.blocks
            .iter()
            .map(|b| (b.k.view(), b.v.view()))
            .chain((!self.tail_k.is_empty()).then(|| (self.tail_k.view(), self.tail_v.view())))
    }

    /// All key rows and all value rows as contiguous `f32` (the stored values; tests).
    pub fn to_contiguous(&self) -> (Vec<f32>, Vec<f32>) {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for b in &self.blocks {
            k.extend(b.k.to_f32());
            v.extend(b.v.to_f32());
        }
        k.extend(self.tail_k.to_f32());
        v.extend(self.tail_v.to_f32());
        (k, v)
    }

    /// All key rows and all value rows, as stored, in one buffer each (files).
    pub fn to_stored(&self) -> (KvData, KvData) {
        let concat = |parts: &mut dyn Iterator<Item = &KvData>| {
            let mut out = KvData::empty(self.kv_type);
            for p in parts {
                match (&mut out, &*p.to_host()) {
                    (KvData::F32(d), KvData::F32(s)) => d.extend_from_slice(s),
                    (KvData::Bf16(d), KvData::Bf16(s)) => d.extend_from_slice(s),
                    (KvData::F16(d), KvData::F16(s)) => d.extend_from_slice(s),
                    (KvData::Q8_0(d), KvData::Q8_0(s)) => d.extend_from_slice(s),
                    _ => unreachable!("a cache holds one type"),
                }
            }
            out
        };
        (
            concat(&mut self.blocks.iter().map(|b| &b.k).chain([&self.tail_k])),
            concat(&mut self.blocks.iter().map(|b| &b.v).chain([&self.tail_v])),
        )
    }

    /// Appends `[n, kv_width]` key and value rows, converting each row to the stored type on
    /// its own; the tail becomes a shared block each time it fills.
    ///
    /// # Panics
    /// If the rows are not whole.
    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        let w = self.kv_width;
        assert!(
            k.len() == v.len() && w > 0 && k.len().is_multiple_of(w),
            "kv rows are not whole"
        );
        self.append_with(k.len() / w, |tk, tv, rows| {
            let r = rows.start * w..rows.end * w;
            tk.push_rows(&k[r.clone()], w);
            tv.push_rows(&v[r], w);
        });
    }

    /// Appends `n` rows that a backend writes itself: `write(tail_k, tail_v, rows)` must
    /// append rows `rows` (a piece of `0..n`, pieces in order) of its new keys and values to
    /// the tail, stored as the cache's [`KvType`] — in host memory or in its own buffer
    /// ([`KvData::Device`], which it may put in place of a host tail). The tail becomes a
    /// shared block each time it fills; the next piece starts a new, empty host tail.
    ///
    /// # Panics
    /// If `write` did not append exactly the piece's rows in the cache's type.
    pub fn append_with(
        &mut self,
        n: usize,
        mut write: impl FnMut(&mut KvData, &mut KvData, Range<usize>),
    ) {
        let mut done = 0;
        while done < n {
            let before = self.tail_rows();
            let m = (BLOCK_TOKENS - before).min(n - done);
            write(&mut self.tail_k, &mut self.tail_v, done..done + m);
            let (k, v, w) = (&self.tail_k, &self.tail_v, self.kv_width);
            assert!(
                k.kv_type() == self.kv_type
                    && v.kv_type() == self.kv_type
                    && k.rows(w) == Some(before + m)
                    && v.rows(w) == Some(before + m),
                "append_with: the tail must grow by {m} rows of {}",
                self.kv_type
            );
            done += m;
            if before + m == BLOCK_TOKENS {
                let bk = std::mem::replace(&mut self.tail_k, KvData::empty(self.kv_type));
                let bv = std::mem::replace(&mut self.tail_v, KvData::empty(self.kv_type));
                self.blocks.push(Arc::new(KvBlock::new(bk, bv)));
            }
        }
    }

    /// Whether every row is in host memory.
    pub fn is_host(&self) -> bool {
        self.tail_k.is_host()
            && self.tail_v.is_host()
            && self.blocks.iter().all(|b| b.k.is_host() && b.v.is_host())
    }

    /// Moves every row a device holds to host memory (a host backend reading a cache another
    /// backend wrote). A block read back becomes this cache's own copy: sequences that
    /// shared it keep theirs.
    pub fn make_host(&mut self) {
        self.tail_k.make_host();
        self.tail_v.make_host();
        for b in &mut self.blocks {
            if !(b.k.is_host() && b.v.is_host()) {
                let (k, v) = (b.k.to_host().into_owned(), b.v.to_host().into_owned());
                *b = Arc::new(KvBlock::new(k, v));
            }
        }
    }

    /// The full blocks, mutably (a device backend moving blocks into its memory: it puts a
    /// new `Arc` in place, since other sequences may share the old one).
    pub fn blocks_mut(&mut self) -> &mut [Arc<KvBlock>] {
        &mut self.blocks
    }

    /// Keeps the first `rows` rows. Cutting into a shared block copies its kept rows into a
    /// new tail; the block itself is never written.
    pub fn truncate(&mut self, rows: usize) {
        if rows >= self.len() {
            return;
        }
        let per_row = KvData::units_per_row(self.kv_type, self.kv_width);
        let (full, part) = (rows / BLOCK_TOKENS, rows % BLOCK_TOKENS);
        if full < self.blocks.len() {
            let cut = &self.blocks[full];
            self.tail_k = cut.k.prefix(part * per_row);
            self.tail_v = cut.v.prefix(part * per_row);
            self.blocks.truncate(full);
        } else {
            self.tail_k.truncate(part * per_row);
            self.tail_v.truncate(part * per_row);
        }
    }

    /// Bytes of data reachable from this cache, as stored (shared blocks counted in full).
    pub fn bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.bytes()).sum::<usize>() + self.tail_bytes()
    }
}

/// The same rows, stored as the same bytes of the same type, wherever they are held.
impl PartialEq for KvCache {
    fn eq(&self, other: &Self) -> bool {
        self.kv_width == other.kv_width
            && self.kv_type == other.kv_type
            && self.len() == other.len()
            && self.to_stored() == other.to_stored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, w: usize, base: f32) -> Vec<f32> {
        (0..n * w).map(|i| base + i as f32).collect()
    }

    #[test]
    fn appends_fill_blocks_and_truncation_copies_on_write() {
        let w = 2;
        let mut kv = KvCache::new(w, KvType::F32);
        let (k, v) = (rows(150, w, 0.0), rows(150, w, 1000.0));
        kv.append(&k[..10 * w], &v[..10 * w]);
        kv.append(&k[10 * w..], &v[10 * w..]);
        assert_eq!(kv.len(), 150);
        assert_eq!(kv.blocks().len(), 2);
        assert_eq!(kv.to_contiguous(), (k.clone(), v.clone()));

        let shared = kv.clone();
        assert!(Arc::ptr_eq(&shared.blocks()[1], &kv.blocks()[1]));
        kv.truncate(100);
        assert_eq!(kv.len(), 100);
        assert_eq!(kv.blocks().len(), 1);
        assert_eq!(kv.to_contiguous().0, k[..100 * w]);
        // The shared block the cut went through is untouched.
        assert_eq!(shared.to_contiguous(), (k.clone(), v.clone()));
        kv.append(&[-1.0; 2], &[-2.0; 2]);
        assert_eq!(kv.len(), 101);
        assert_eq!(shared.blocks()[1].keys().to_f32()[36 * w], k[100 * w]);
        kv.truncate(64);
        assert_eq!((kv.blocks().len(), kv.tail().0.is_empty()), (1, true));
    }

    /// Rows of order 1 with a spread of magnitudes and signs, `w` wide.
    fn noise(n: usize, w: usize, seed: u32) -> Vec<f32> {
        (0..n * w)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x as f32 / (1u32 << 24) as f32 - 0.5) * 4.0 * if i % 7 == 0 { 8.0 } else { 1.0 }
            })
            .collect()
    }

    /// The worst |stored - x| allowed for each type, per row: half an ulp of the format at
    /// the value (BF16: 2^-8 relative, F16: 2^-11 relative), and for Q8_0 half a quantization
    /// step of the value's 32-block (`d/2`, with `d = amax/127` rounded to `f16`).
    fn within_bound(ty: KvType, x: &[f32], stored: &[f32]) -> bool {
        x.chunks(32).zip(stored.chunks(32)).all(|(xb, sb)| {
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            xb.iter().zip(sb).all(|(&a, &b)| {
                let err = (a - b).abs();
                match ty {
                    KvType::F32 => err == 0.0,
                    KvType::Bf16 => err <= a.abs() * 2f32.powi(-8),
                    // Plus half the smallest subnormal step for values under 2^-14.
                    KvType::F16 => err <= a.abs() * 2f32.powi(-11) + 2f32.powi(-25),
                    // `d` itself is rounded to f16 (2^-11 relative), which moves the grid by
                    // up to 127 · d · 2^-11 at the extremes.
                    KvType::Q8_0 => err <= amax / 127.0 * (0.5 + 127.0 * 2f32.powi(-11)) + 1e-6,
                }
            })
        })
    }

    /// For every type: rows appended in any grouping store the same bytes, `bytes()` counts
    /// exactly what is stored, truncation copies on write, and the stored values are within
    /// the type's rounding bound.
    #[test]
    fn every_type_stores_rows_independently_of_their_grouping() {
        let w = 64;
        for ty in KvType::ALL {
            let (k, v) = (noise(150, w, 1), noise(150, w, 2));
            let mut once = KvCache::new(w, ty);
            once.append(&k, &v);
            for split in [1, 7, 64, 100] {
                let mut pieces = KvCache::new(w, ty);
                for (kc, vc) in k.chunks(split * w).zip(v.chunks(split * w)) {
                    pieces.append(kc, vc);
                }
                assert_eq!(
                    pieces.to_stored(),
                    once.to_stored(),
                    "{ty} in pieces of {split}"
                );
            }
            assert_eq!(once.kv_type(), ty);
            assert_eq!(once.bytes(), 150 * 2 * ty.row_bytes(w), "{ty}");
            assert_eq!(
                once.blocks()[0].bytes(),
                64 * 2 * ty.row_bytes(w),
                "{ty} block"
            );
            let (sk, sv) = once.to_contiguous();
            assert!(
                within_bound(ty, &k, &sk) && within_bound(ty, &v, &sv),
                "{ty}"
            );

            // Copy-on-write truncation into a shared block keeps the stored bytes.
            let shared = once.clone();
            let mut cut = once.clone();
            cut.truncate(100);
            assert_eq!(cut.len(), 100);
            assert_eq!(cut.bytes(), 100 * 2 * ty.row_bytes(w));
            assert_eq!(cut.to_contiguous().0, sk[..100 * w]);
            assert_eq!(shared.to_stored(), once.to_stored());
            cut.append(&k[100 * w..], &v[100 * w..]);
            assert_eq!(cut.to_stored(), once.to_stored(), "{ty} regrown");

            // Rebuilt from its stored rows: the same cache.
            let (dk, dv) = once.to_stored();
            let back = KvCache::from_rows(w, dk, dv).unwrap();
            assert_eq!(back.to_stored(), once.to_stored());
            assert_eq!(back.blocks().len(), 2);
            assert_eq!(back.bytes(), once.bytes());
        }
    }

    #[test]
    fn the_bound_check_fails_for_a_coarser_rounding() {
        // The tolerance above is tight enough to tell the types apart.
        let x = noise(1, 64, 3);
        let mut kv = KvCache::new(64, KvType::Bf16);
        kv.append(&x, &x);
        assert!(!within_bound(KvType::F16, &x, &kv.to_contiguous().0));
    }

    #[test]
    fn types_parse_print_and_fit_widths() {
        for ty in KvType::ALL {
            assert_eq!(ty.name().parse::<KvType>(), Ok(ty));
            assert_eq!(ty.to_string(), ty.name());
            assert_eq!(KvType::from_tag(ty.tag()), Some(ty));
        }
        let err = "q8".parse::<KvType>().unwrap_err().to_string();
        assert!(err.contains("\"q8\"") && err.contains("q8_0"), "{err}");
        assert_eq!(KvType::Q8_0.for_width(64), KvType::Q8_0);
        assert_eq!(KvType::Q8_0.for_width(48), KvType::Bf16);
        assert_eq!(KvType::F16.for_width(2), KvType::F16);
        assert_eq!(KvType::Q8_0.row_bytes(64), 68);
        assert!(
            KvCache::from_rows(48, KvData::Q8_0(Vec::new()), KvData::Q8_0(Vec::new())).is_none()
        );
    }
}
