//! Attention KV rows in fixed-size token blocks.
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

use std::sync::Arc;

/// Rows per KV block (= the chunk length of the chunked delta rule).
pub const BLOCK_TOKENS: usize = 64;

/// `BLOCK_TOKENS` key rows and value rows of one attention layer, `[BLOCK_TOKENS, kv_width]`
/// each. Immutable.
#[derive(Debug, PartialEq)]
pub struct KvBlock {
    k: Box<[f32]>,
    v: Box<[f32]>,
}

impl KvBlock {
    /// A full block from `[BLOCK_TOKENS, kv_width]` key and value rows.
    ///
    /// # Panics
    /// If `k` and `v` differ in length or are not whole rows of a full block.
    pub fn new(k: Vec<f32>, v: Vec<f32>) -> Self {
        assert!(
            k.len() == v.len() && k.len().is_multiple_of(BLOCK_TOKENS),
            "kv block is not BLOCK_TOKENS whole rows"
        );
        KvBlock {
            k: k.into_boxed_slice(),
            v: v.into_boxed_slice(),
        }
    }

    pub fn keys(&self) -> &[f32] {
        &self.k
    }

    pub fn values(&self) -> &[f32] {
        &self.v
    }

    /// Bytes of `f32` data held.
    pub fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * 4
    }
}

/// KV rows of one attention layer: shared full blocks + an owned partial tail.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    kv_width: usize,
    blocks: Vec<Arc<KvBlock>>,
    /// `[rows, kv_width]` with `rows < BLOCK_TOKENS`.
    tail_k: Vec<f32>,
    tail_v: Vec<f32>,
}

impl KvCache {
    /// An empty cache of rows `kv_width = Hkv·D` wide.
    pub fn new(kv_width: usize) -> Self {
        KvCache {
            kv_width,
            ..KvCache::default()
        }
    }

    /// A cache made of `blocks` (shared) and a partial `tail` (`[rows, kv_width]` keys, values).
    ///
    /// # Panics
    /// If a block or the tail has the wrong shape.
    pub fn from_parts(
        kv_width: usize,
        blocks: Vec<Arc<KvBlock>>,
        tail_k: Vec<f32>,
        tail_v: Vec<f32>,
    ) -> Self {
        let block_len = BLOCK_TOKENS * kv_width;
        assert!(
            blocks.iter().all(|b| b.k.len() == block_len),
            "kv block width"
        );
        assert!(
            tail_k.len() == tail_v.len()
                && tail_k.len() < block_len
                && tail_k.len().is_multiple_of(kv_width.max(1)),
            "kv tail shape"
        );
        KvCache {
            kv_width,
            blocks,
            tail_k,
            tail_v,
        }
    }

    pub fn kv_width(&self) -> usize {
        self.kv_width
    }

    /// Rows stored.
    pub fn len(&self) -> usize {
        self.blocks.len() * BLOCK_TOKENS + self.tail_k.len().checked_div(self.kv_width).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty() && self.tail_k.is_empty()
    }

    /// The full blocks, oldest first.
    pub fn blocks(&self) -> &[Arc<KvBlock>] {
        &self.blocks
    }

    /// The partial tail: `[rows, kv_width]` keys and values.
    pub fn tail(&self) -> (&[f32], &[f32]) {
        (&self.tail_k, &self.tail_v)
    }

    /// Key and value rows in order, one `(k, v)` pair of slices per block (then the tail),
    /// for attention to read without copying.
    pub fn segments(&self) -> impl Iterator<Item = (&[f32], &[f32])> {
        self.blocks
            .iter()
            .map(|b| (&b.k[..], &b.v[..]))
            .chain((!self.tail_k.is_empty()).then_some((&self.tail_k[..], &self.tail_v[..])))
    }

    /// All key rows and all value rows as contiguous copies (tests, serialization).
    pub fn to_contiguous(&self) -> (Vec<f32>, Vec<f32>) {
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for (sk, sv) in self.segments() {
            k.extend_from_slice(sk);
            v.extend_from_slice(sv);
        }
        (k, v)
    }

    /// Appends `[n, kv_width]` key and value rows; the tail becomes a shared block each time
    /// it fills.
    ///
    /// # Panics
    /// If the rows are not whole.
    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        let w = self.kv_width;
        assert!(
            k.len() == v.len() && w > 0 && k.len().is_multiple_of(w),
            "kv rows are not whole"
        );
        let block_len = BLOCK_TOKENS * w;
        let mut at = 0;
        while at < k.len() {
            let take = (block_len - self.tail_k.len()).min(k.len() - at);
            self.tail_k.extend_from_slice(&k[at..at + take]);
            self.tail_v.extend_from_slice(&v[at..at + take]);
            at += take;
            if self.tail_k.len() == block_len {
                let bk = std::mem::replace(&mut self.tail_k, Vec::with_capacity(block_len));
                let bv = std::mem::replace(&mut self.tail_v, Vec::with_capacity(block_len));
                self.blocks.push(Arc::new(KvBlock::new(bk, bv)));
            }
        }
    }

    /// Keeps the first `rows` rows. Cutting into a shared block copies its kept rows into a
    /// new tail; the block itself is never written.
    pub fn truncate(&mut self, rows: usize) {
        if rows >= self.len() {
            return;
        }
        let w = self.kv_width;
        let (full, part) = (rows / BLOCK_TOKENS, rows % BLOCK_TOKENS);
        if full < self.blocks.len() {
            let cut = &self.blocks[full];
            self.tail_k = cut.k[..part * w].to_vec();
            self.tail_v = cut.v[..part * w].to_vec();
            self.blocks.truncate(full);
        } else {
            self.tail_k.truncate(part * w);
            self.tail_v.truncate(part * w);
        }
    }

    /// Bytes of `f32` data reachable from this cache (shared blocks counted in full).
    pub fn bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.bytes()).sum::<usize>()
            + (self.tail_k.len() + self.tail_v.len()) * 4
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
        let mut kv = KvCache::new(w);
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
        assert_eq!(shared.blocks()[1].keys()[36 * w], k[100 * w]);
        kv.truncate(64);
        assert_eq!((kv.blocks().len(), kv.tail().0.len()), (1, 0));
    }
}
