//! The prefix cache: state of every recent prompt, shared by every sequence that starts the
//! same way.
//!
//! For a transformer, prefix caching is reusing KV blocks. A hybrid model also has Gated
//! DeltaNet layers whose fixed-size recurrent state summarises *all* tokens so far and cannot
//! be cut back to a shorter prefix; it can only be restored from a snapshot taken at exactly
//! the right position. So the cache holds two things:
//!
//! * **KV blocks** of [`BLOCK_TOKENS`] tokens, in a radix tree whose edges are whole blocks of
//!   key elements. A node is one block; every sequence with that prefix shares its `Arc`ed KV
//!   block (counted once in the budget).
//! * **DeltaNet snapshots**, at a block boundary (on a block node: chunk boundaries during
//!   prefill) or mid-block (on a *tail* node: a partial block's key, its KV rows and the
//!   snapshot, e.g. the end of a prompt or of a generated answer).
//!
//! [`PrefixCache::lookup`] walks the tree along the prompt and resumes from the deepest
//! snapshot whose key the prompt extends (at least one prompt token is always left to
//! compute, since its logits are needed); the KV blocks before it come along. It also reports
//! how far the prompt matched anything cached and, when cached tokens will be recomputed,
//! why ([`Miss`]). [`PrefixCache::insert`] adds the blocks of a state and, optionally, a
//! snapshot at its end.
//!
//! Memory: a byte budget over KV blocks, tails and snapshots. When it is exceeded the least
//! recently used *leaf* goes first (whole suffixes, deepest first): a node another node
//! depends on is never evicted before it. Sequences in flight hold their own `Arc`s, so
//! eviction never changes a running sequence; it only means a later prompt recomputes more.
//!
//! Keys are [`KeyElem`]s rather than bare token ids so that images are part of the key: an
//! image's positions carry the image's content hash, and two prompts match only if their
//! images are the same pixels.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::persist::{Reader, Writer};
use crate::{
    BLOCK_TOKENS, DeltaNetState, KvBlock, KvCache, KvData, KvType, LayerSpec, LayerState,
    SequenceState,
};

/// One position of a cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyElem {
    /// A text token id.
    Token(u32),
    /// Position `index` of an image's tokens, the image known by a hash of its content: two
    /// prompts match here only if their images are the same pixels.
    Image { hash: u64, index: u32 },
}

/// The key of a text-only prompt.
pub fn token_key(tokens: &[u32]) -> Vec<KeyElem> {
    tokens.iter().map(|&t| KeyElem::Token(t)).collect()
}

/// Limits of a cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most bytes of KV blocks, tails and snapshots held.
    pub budget_bytes: usize,
}

/// Counters since the cache was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub lookups: u64,
    /// Lookups that resumed past position 0.
    pub hits: u64,
    /// Lookups with a [`Miss`]: the prompt departs from cached tokens, nothing matched, or
    /// the nearest snapshot is short of the match.
    pub misses: u64,
    /// Sum of prompt lengths looked up.
    pub prompt_tokens: u64,
    /// Sum of prompt tokens served from the cache.
    pub cached_tokens: u64,
    /// Prompt tokens actually computed (reported by the caller, [`PrefixCache::record_processed`]).
    pub processed_tokens: u64,
    pub snapshots_inserted: u64,
    pub evicted_nodes: u64,
    /// Bytes held now (KV blocks, tails and snapshots, each counted once).
    pub bytes: usize,
    /// Nodes held now (blocks and tails).
    pub nodes: usize,
    /// DeltaNet snapshots held now.
    pub snapshots: usize,
}

/// Why a prompt is not served from the cache to its end: set when the prompt departs from
/// cached tokens (even if it resumes exactly there: the history changed), when nothing
/// matched, or when the nearest snapshot is short of the match. An append-only continuation
/// of cached tokens has none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Miss {
    /// Nothing cached starts like this prompt.
    Cold,
    /// The prompt differs from cached tokens at this position (its first differing token).
    Diverged { at: usize },
    /// Tokens are cached up to `matched`, but the nearest snapshot is earlier (never taken
    /// there, or evicted).
    NoSnapshot { matched: usize },
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Cold => write!(f, "no cached prefix"),
            Miss::Diverged { at } => write!(f, "first differing token at position {at}"),
            Miss::NoSnapshot { matched } => {
                write!(f, "cached up to position {matched}, no snapshot there")
            }
        }
    }
}

/// What a lookup found.
#[derive(Debug)]
pub struct Lookup {
    /// The state at position `cached` (fresh when `cached == 0`).
    pub state: SequenceState,
    /// Prompt tokens already in `state`.
    pub cached: usize,
    /// Length of the longest prefix of the prompt found in the cache (≥ `cached`).
    pub matched: usize,
    /// Why the prompt is not served to its end ([`Miss`]).
    pub miss: Option<Miss>,
}

enum KvPiece {
    Block(Arc<KvBlock>),
    Tail { k: KvData, v: KvData },
}

impl KvPiece {
    fn bytes(&self) -> usize {
        match self {
            KvPiece::Block(b) => b.bytes(),
            KvPiece::Tail { k, v } => k.bytes() + v.bytes(),
        }
    }
}

struct Node {
    parent: usize,
    /// A full block ([`BLOCK_TOKENS`] elements), or for a tail node fewer.
    key: Vec<KeyElem>,
    is_tail: bool,
    /// Full-block children by their key.
    children: HashMap<Vec<KeyElem>, usize>,
    /// Tail children.
    tails: Vec<usize>,
    /// One piece per attention layer: its rows for this node's positions.
    kv: Vec<KvPiece>,
    /// The DeltaNet layers' state after this node's last position (required on tails).
    recurrent: Option<Vec<DeltaNetState>>,
    last_used: u64,
}

impl Node {
    fn bytes(&self) -> usize {
        self.kv.iter().map(KvPiece::bytes).sum::<usize>()
            + self.recurrent.as_ref().map_or(0, |r| recurrent_bytes(r))
    }

    fn is_leaf(&self) -> bool {
        self.children.is_empty() && self.tails.is_empty()
    }
}

fn recurrent_bytes(r: &[DeltaNetState]) -> usize {
    r.iter()
        .map(|d| (d.conv.len() + d.recurrent.len()) * 4)
        .sum()
}

const ROOT: usize = 0;

/// A radix tree of KV blocks and DeltaNet snapshots for one model's layer layout.
pub struct PrefixCache {
    specs: Vec<LayerSpec>,
    config: CacheConfig,
    nodes: Vec<Option<Node>>,
    free: Vec<usize>,
    clock: u64,
    stats: CacheStats,
}

impl fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixCache")
            .field("config", &self.config)
            .field("stats", &self.stats)
            .finish()
    }
}

impl PrefixCache {
    /// An empty cache for states of the layout `specs`.
    pub fn new(specs: Vec<LayerSpec>, config: CacheConfig) -> Self {
        let root = Node {
            parent: ROOT,
            key: Vec::new(),
            is_tail: false,
            children: HashMap::new(),
            tails: Vec::new(),
            kv: Vec::new(),
            recurrent: None,
            last_used: 0,
        };
        PrefixCache {
            specs,
            config,
            nodes: vec![Some(root)],
            free: Vec::new(),
            clock: 0,
            stats: CacheStats::default(),
        }
    }

    pub fn specs(&self) -> &[LayerSpec] {
        &self.specs
    }

    pub fn config(&self) -> CacheConfig {
        self.config
    }

    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Counts `n` prompt tokens computed by the caller (after a lookup).
    pub fn record_processed(&mut self, n: usize) {
        self.stats.processed_tokens += n as u64;
    }

    fn node(&self, id: usize) -> &Node {
        self.nodes[id].as_ref().expect("live node")
    }

    fn node_mut(&mut self, id: usize) -> &mut Node {
        self.nodes[id].as_mut().expect("live node")
    }

    /// The state to resume `key` from: the deepest snapshot whose key `key` extends, short
    /// of `key`'s last element.
    pub fn lookup(&mut self, key: &[KeyElem]) -> Lookup {
        self.clock += 1;
        let now = self.clock;
        // Walk whole blocks.
        let mut path = vec![ROOT];
        let mut pos = 0;
        while pos + BLOCK_TOKENS <= key.len() {
            let here = *path.last().expect("path starts at the root");
            match self.node(here).children.get(&key[pos..pos + BLOCK_TOKENS]) {
                Some(&child) => {
                    path.push(child);
                    pos += BLOCK_TOKENS;
                }
                None => break,
            }
        }
        // The deepest usable snapshot: (position, index into path, tail node).
        let limit = key.len().saturating_sub(1);
        let mut best: (usize, usize, Option<usize>) = (0, 0, None);
        for (d, &id) in path.iter().enumerate() {
            let depth = d * BLOCK_TOKENS;
            let n = self.node(id);
            if n.recurrent.is_some() && depth <= limit && depth > best.0 {
                best = (depth, d, None);
            }
            for &t in &n.tails {
                let end = depth + self.node(t).key.len();
                if end <= limit && end > best.0 && key[depth..].starts_with(&self.node(t).key) {
                    best = (end, d, Some(t));
                }
            }
        }
        // How far the prompt matches anything cached, and whether the cache goes on
        // differently there.
        let last = self.node(*path.last().expect("non-empty path"));
        let rest = &key[pos..];
        let continuations = last
            .children
            .keys()
            .map(|k| k.as_slice())
            .chain(last.tails.iter().map(|&t| self.node(t).key.as_slice()));
        let (mut lcp, mut diverges) = (0, false);
        for c in continuations {
            let n = c.iter().zip(rest).take_while(|(a, b)| a == b).count();
            let differs = n < c.len() && n < rest.len();
            if n > lcp {
                (lcp, diverges) = (n, differs);
            } else if n == lcp {
                diverges |= differs;
            }
        }
        let matched = pos + lcp;
        let cached = best.0;
        let miss = if diverges {
            Some(Miss::Diverged { at: matched })
        } else if matched == 0 {
            Some(Miss::Cold)
        } else if cached < matched.min(limit) {
            Some(Miss::NoSnapshot { matched })
        } else {
            None
        };
        // Touch what was used.
        for &id in &path[..=best.1] {
            self.node_mut(id).last_used = now;
        }
        if let Some(t) = best.2 {
            self.node_mut(t).last_used = now;
        }
        let state = self.assemble(&path[1..=best.1], best.2, cached);
        self.stats.lookups += 1;
        self.stats.prompt_tokens += key.len() as u64;
        self.stats.cached_tokens += cached as u64;
        if cached > 0 {
            self.stats.hits += 1;
        }
        if miss.is_some() {
            self.stats.misses += 1;
        }
        Lookup {
            state,
            cached,
            matched,
            miss,
        }
    }

    /// The state made of the KV blocks of `blocks` (in order), then `tail`'s rows, with the
    /// DeltaNet state of the last of them.
    fn assemble(&self, blocks: &[usize], tail: Option<usize>, pos: usize) -> SequenceState {
        if pos == 0 {
            return SequenceState::new(&self.specs);
        }
        let end = tail.or(blocks.last().copied()).expect("a node at pos > 0");
        let recurrent = self
            .node(end)
            .recurrent
            .as_ref()
            .expect("lookups resume only at snapshots");
        let (mut ai, mut di) = (0, 0);
        let layers = self
            .specs
            .iter()
            .map(|spec| match *spec {
                LayerSpec::Attention { kv_width, kv_type } => {
                    let full = blocks
                        .iter()
                        .map(|&b| match &self.node(b).kv[ai] {
                            KvPiece::Block(block) => Arc::clone(block),
                            KvPiece::Tail { .. } => unreachable!("block nodes hold blocks"),
                        })
                        .collect();
                    let (k, v) = match tail.map(|t| &self.node(t).kv[ai]) {
                        Some(KvPiece::Tail { k, v }) => (k.clone(), v.clone()),
                        _ => (KvData::empty(kv_type), KvData::empty(kv_type)),
                    };
                    ai += 1;
                    LayerState::Attention(KvCache::from_parts(kv_width, kv_type, full, k, v))
                }
                LayerSpec::DeltaNet { .. } => {
                    di += 1;
                    LayerState::DeltaNet(recurrent[di - 1].clone())
                }
            })
            .collect();
        SequenceState::from_layers(layers, pos)
    }

    /// Adds the KV blocks of `state` (which holds exactly the elements of `key`) to the tree
    /// and, when `snapshot` is set, its DeltaNet state at `key`'s end. Then evicts down to the
    /// budget. A state of another layout is ignored (returns `false`).
    pub fn insert(&mut self, key: &[KeyElem], state: &SequenceState, snapshot: bool) -> bool {
        if key.len() != state.pos() || !self.same_layout(state) {
            return false;
        }
        self.clock += 1;
        let now = self.clock;
        let kvs: Vec<&KvCache> = state
            .layers()
            .iter()
            .filter_map(|l| match l {
                LayerState::Attention(kv) => Some(kv),
                LayerState::DeltaNet(_) => None,
            })
            .collect();
        let full = key.len() / BLOCK_TOKENS;
        let mut here = ROOT;
        for i in 0..full {
            let k = &key[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS];
            here = match self.node(here).children.get(k) {
                Some(&child) => child,
                None => {
                    let kv = kvs
                        .iter()
                        .map(|kv| KvPiece::Block(Arc::clone(&kv.blocks()[i])))
                        .collect();
                    let child = self.add(Node {
                        parent: here,
                        key: k.to_vec(),
                        is_tail: false,
                        children: HashMap::new(),
                        tails: Vec::new(),
                        kv,
                        recurrent: None,
                        last_used: now,
                    });
                    self.node_mut(here).children.insert(k.to_vec(), child);
                    child
                }
            };
            self.node_mut(here).last_used = now;
        }
        if snapshot && !key.is_empty() {
            let recurrent: Vec<DeltaNetState> = state
                .layers()
                .iter()
                .filter_map(|l| match l {
                    LayerState::DeltaNet(d) => Some(d.clone()),
                    LayerState::Attention(_) => None,
                })
                .collect();
            let rest = &key[full * BLOCK_TOKENS..];
            if rest.is_empty() {
                if self.node(here).recurrent.is_none() {
                    self.stats.bytes += recurrent_bytes(&recurrent);
                    self.stats.snapshots += 1;
                    self.stats.snapshots_inserted += 1;
                    self.node_mut(here).recurrent = Some(recurrent);
                }
            } else {
                let existing = self
                    .node(here)
                    .tails
                    .iter()
                    .copied()
                    .find(|&t| self.node(t).key == rest);
                match existing {
                    Some(t) => self.node_mut(t).last_used = now,
                    None => {
                        let kv = kvs
                            .iter()
                            .map(|kv| {
                                let (k, v) = kv.tail();
                                KvPiece::Tail {
                                    k: k.clone(),
                                    v: v.clone(),
                                }
                            })
                            .collect();
                        let t = self.add(Node {
                            parent: here,
                            key: rest.to_vec(),
                            is_tail: true,
                            children: HashMap::new(),
                            tails: Vec::new(),
                            kv,
                            recurrent: Some(recurrent),
                            last_used: now,
                        });
                        self.stats.snapshots += 1;
                        self.stats.snapshots_inserted += 1;
                        self.node_mut(here).tails.push(t);
                    }
                }
            }
        }
        self.evict_to(self.config.budget_bytes);
        true
    }

    /// The KV type of each attention layer, in order.
    fn kv_types(&self) -> Vec<KvType> {
        self.specs
            .iter()
            .filter_map(|s| match *s {
                LayerSpec::Attention { kv_type, .. } => Some(kv_type),
                LayerSpec::DeltaNet { .. } => None,
            })
            .collect()
    }

    fn same_layout(&self, state: &SequenceState) -> bool {
        state.layers().len() == self.specs.len()
            && state
                .layers()
                .iter()
                .zip(&self.specs)
                .all(|(l, s)| match (l, *s) {
                    (LayerState::Attention(kv), LayerSpec::Attention { kv_width, kv_type }) => {
                        kv.kv_width() == kv_width && kv.kv_type() == kv_type
                    }
                    (
                        LayerState::DeltaNet(d),
                        LayerSpec::DeltaNet {
                            conv_channels,
                            conv_kernel,
                            recurrent_len,
                        },
                    ) => {
                        d.conv.len() == conv_kernel.saturating_sub(1) * conv_channels
                            && d.recurrent.len() == recurrent_len
                    }
                    _ => false,
                })
    }

    fn add(&mut self, node: Node) -> usize {
        self.stats.bytes += node.bytes();
        self.stats.nodes += 1;
        match self.free.pop() {
            Some(id) => {
                self.nodes[id] = Some(node);
                id
            }
            None => {
                self.nodes.push(Some(node));
                self.nodes.len() - 1
            }
        }
    }

    /// Evicts least recently used leaves until at most `budget` bytes are held.
    pub fn evict_to(&mut self, budget: usize) {
        while self.stats.bytes > budget {
            let victim = self
                .nodes
                .iter()
                .enumerate()
                .skip(1)
                .filter_map(|(id, n)| n.as_ref().map(|n| (id, n)))
                .filter(|(_, n)| n.is_leaf())
                .min_by_key(|(_, n)| n.last_used)
                .map(|(id, _)| id);
            let Some(id) = victim else { break };
            let node = self.nodes[id].take().expect("live node");
            self.free.push(id);
            let parent = self.node_mut(node.parent);
            if node.is_tail {
                parent.tails.retain(|&t| t != id);
            } else {
                parent.children.remove(&node.key);
            }
            self.stats.bytes -= node.bytes();
            self.stats.nodes -= 1;
            self.stats.snapshots -= usize::from(node.recurrent.is_some());
            self.stats.evicted_nodes += 1;
        }
    }

    /// The whole tree as bytes (parents before children), for [`PrefixCache::load`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let mut order = vec![ROOT];
        let mut index = HashMap::from([(ROOT, 0usize)]);
        let mut i = 0;
        while i < order.len() {
            let n = self.node(order[i]);
            let mut kids: Vec<usize> = n.children.values().copied().collect();
            kids.sort_unstable();
            kids.extend(&n.tails);
            for k in kids {
                index.insert(k, order.len());
                order.push(k);
            }
            i += 1;
        }
        // The KV type of each attention layer first, so a cache written with another type is
        // refused before any row is read.
        let types = self.kv_types();
        w.u64(types.len() as u64);
        for t in types {
            w.u8(t.tag());
        }
        w.u64(order.len() as u64 - 1);
        for &id in &order[1..] {
            let n = self.node(id);
            w.u64(index[&n.parent] as u64);
            w.u8(u8::from(n.is_tail));
            w.u64(n.key.len() as u64);
            for e in &n.key {
                match e {
                    KeyElem::Token(t) => {
                        w.u8(0);
                        w.u32(*t);
                    }
                    KeyElem::Image { hash, index } => {
                        w.u8(1);
                        w.u64(*hash);
                        w.u32(*index);
                    }
                }
            }
            for piece in &n.kv {
                let (k, v) = match piece {
                    KvPiece::Block(b) => (b.keys(), b.values()),
                    KvPiece::Tail { k, v } => (k, v),
                };
                w.kv_rows(k);
                w.kv_rows(v);
            }
            match &n.recurrent {
                None => w.u8(0),
                Some(r) => {
                    w.u8(1);
                    for d in r {
                        w.f32s(&d.conv.host());
                        w.f32s(&d.recurrent.host());
                    }
                }
            }
            w.u64(n.last_used);
        }
        w.buf
    }

    /// A cache rebuilt from [`PrefixCache::to_bytes`], checked against `specs` piece by piece;
    /// anything inconsistent is an error (the caller starts empty), never a wrong state.
    pub fn from_bytes(
        specs: Vec<LayerSpec>,
        config: CacheConfig,
        bytes: &[u8],
    ) -> Result<Self, String> {
        let mut c = PrefixCache::new(specs, config);
        let mut r = Reader::new(bytes);
        let types = c.kv_types();
        let n_types = r.len(1)?;
        if n_types != types.len() {
            return Err(format!(
                "{n_types} attention layers, the model has {}",
                types.len()
            ));
        }
        for &want in &types {
            let tag = r.u8()?;
            match KvType::from_tag(tag) {
                Some(t) if t == want => {}
                Some(t) => {
                    return Err(format!(
                        "written with a {t} KV cache, this one stores {want} (--kv-type)"
                    ));
                }
                None => return Err(format!("unknown KV type tag {tag}")),
            }
        }
        let count = r.len(1)?;
        let mut ids = vec![ROOT];
        let widths: Vec<(usize, KvType)> = c
            .specs
            .iter()
            .filter_map(|s| match *s {
                LayerSpec::Attention { kv_width, kv_type } => Some((kv_width, kv_type)),
                LayerSpec::DeltaNet { .. } => None,
            })
            .collect();
        let shapes: Vec<(usize, usize)> = c
            .specs
            .iter()
            .filter_map(|s| match *s {
                LayerSpec::DeltaNet {
                    conv_channels,
                    conv_kernel,
                    recurrent_len,
                } => Some((conv_kernel.saturating_sub(1) * conv_channels, recurrent_len)),
                LayerSpec::Attention { .. } => None,
            })
            .collect();
        for _ in 0..count {
            let parent = r.u64()? as usize;
            let &parent = ids.get(parent).ok_or("parent index out of range")?;
            let is_tail = r.u8()? != 0;
            let n = r.len(5)?;
            let mut key = Vec::with_capacity(n);
            for _ in 0..n {
                key.push(match r.u8()? {
                    0 => KeyElem::Token(r.u32()?),
                    1 => KeyElem::Image {
                        hash: r.u64()?,
                        index: r.u32()?,
                    },
                    t => return Err(format!("unknown key element {t}")),
                });
            }
            let rows = key.len();
            if c.node(parent).is_tail
                || (is_tail && (rows == 0 || rows >= BLOCK_TOKENS))
                || (!is_tail && rows != BLOCK_TOKENS)
            {
                return Err("node shape".into());
            }
            let mut kv = Vec::with_capacity(widths.len());
            for &(w, ty) in &widths {
                let (k, v) = (r.kv_rows(ty)?, r.kv_rows(ty)?);
                if k.rows(w) != Some(rows) || v.rows(w) != Some(rows) {
                    return Err("kv rows do not match the key".into());
                }
                kv.push(if is_tail {
                    KvPiece::Tail { k, v }
                } else {
                    KvPiece::Block(Arc::new(KvBlock::new(k, v)))
                });
            }
            let recurrent = match r.u8()? {
                0 if is_tail => return Err("tail without a snapshot".into()),
                0 => None,
                _ => {
                    let mut states = Vec::with_capacity(shapes.len());
                    for &(conv_len, rec_len) in &shapes {
                        let (conv, recurrent) = (r.f32s()?, r.f32s()?);
                        if conv.len() != conv_len || recurrent.len() != rec_len {
                            return Err("snapshot shape".into());
                        }
                        states.push(DeltaNetState::from_host(conv, recurrent));
                    }
                    Some(states)
                }
            };
            let last_used = r.u64()?;
            c.clock = c.clock.max(last_used);
            let has_snapshot = recurrent.is_some();
            let id = c.add(Node {
                parent,
                key: key.clone(),
                is_tail,
                children: HashMap::new(),
                tails: Vec::new(),
                kv,
                recurrent,
                last_used,
            });
            c.stats.snapshots += usize::from(has_snapshot);
            if is_tail {
                c.node_mut(parent).tails.push(id);
            } else if c.node_mut(parent).children.insert(key, id).is_some() {
                return Err("duplicate block".into());
            }
            ids.push(id);
        }
        if !r.is_empty() {
            return Err("trailing bytes".into());
        }
        c.evict_to(c.config.budget_bytes);
        Ok(c)
    }

    /// Whether a snapshot is stored exactly at `key`'s end.
    pub fn has_snapshot(&self, key: &[KeyElem]) -> bool {
        let mut here = ROOT;
        let full = key.len() / BLOCK_TOKENS;
        for i in 0..full {
            match self
                .node(here)
                .children
                .get(&key[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS])
            {
                Some(&c) => here = c,
                None => return false,
            }
        }
        let rest = &key[full * BLOCK_TOKENS..];
        if rest.is_empty() {
            return self.node(here).recurrent.is_some();
        }
        self.node(here)
            .tails
            .iter()
            .any(|&t| self.node(t).key == rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: [LayerSpec; 2] = [
        LayerSpec::DeltaNet {
            conv_channels: 2,
            conv_kernel: 3,
            recurrent_len: 4,
        },
        LayerSpec::Attention {
            kv_width: 2,
            kv_type: KvType::F32,
        },
    ];

    /// A stand-in "model": each token adds itself to the recurrent state and appends a KV row
    /// derived from it, so any state is a function of the tokens it has seen.
    fn feed(s: &mut SequenceState, tokens: &[u32]) {
        for &t in tokens {
            let x = t as f32;
            if let LayerState::DeltaNet(d) = s.layer_mut(0) {
                for (i, r) in d.recurrent.host_mut().iter_mut().enumerate() {
                    *r = *r * 0.5 + x + i as f32;
                }
            }
            if let LayerState::Attention(kv) = s.layer_mut(1) {
                kv.append(&[x, -x], &[x * 2.0, 1.0]);
            }
            s.advance(1);
        }
    }

    fn state_of(tokens: &[u32]) -> SequenceState {
        let mut s = SequenceState::new(&SPECS);
        feed(&mut s, tokens);
        s
    }

    fn cache(budget: usize) -> PrefixCache {
        PrefixCache::new(
            SPECS.to_vec(),
            CacheConfig {
                budget_bytes: budget,
            },
        )
    }

    fn same(a: &SequenceState, b: &SequenceState) -> bool {
        a.layers() == b.layers() && a.pos() == b.pos()
    }

    fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
        range.collect()
    }

    #[test]
    fn resumes_from_the_deepest_snapshot_the_prompt_extends() {
        let mut c = cache(usize::MAX);
        let conv = toks(0..150);
        let empty = c.lookup(&token_key(&conv));
        assert_eq!(
            (empty.cached, empty.matched, empty.miss),
            (0, 0, Some(Miss::Cold))
        );
        // Snapshots at a chunk boundary (128) and at the "prompt end" (150).
        c.insert(&token_key(&conv[..128]), &state_of(&conv[..128]), true);
        c.insert(&token_key(&conv), &state_of(&conv), true);
        let mut next = conv.clone();
        next.extend(500..520);
        let hit = c.lookup(&token_key(&next));
        assert_eq!(
            (hit.cached, hit.matched, hit.miss.clone()),
            (150, 150, None)
        );
        let mut resumed = hit.state;
        feed(&mut resumed, &next[150..]);
        assert!(same(&resumed, &state_of(&next)), "resumed state is exact");

        // Diverging at 140: back to the chunk snapshot at 128.
        let mut other = conv[..140].to_vec();
        other.extend(900..950);
        let part = c.lookup(&token_key(&other));
        assert_eq!(
            (part.cached, part.matched, part.miss),
            (128, 140, Some(Miss::Diverged { at: 140 }))
        );
        // The same prompt again: the end snapshot would leave nothing to compute.
        let again = c.lookup(&token_key(&conv));
        assert_eq!((again.cached, again.matched), (128, 150));
        assert_eq!(again.miss, Some(Miss::NoSnapshot { matched: 150 }));
        let s = c.stats();
        assert_eq!((s.lookups, s.hits, s.misses), (4, 3, 3));
        assert_eq!(s.cached_tokens, 150 + 128 + 128);
    }

    #[test]
    fn sequences_with_a_common_prefix_share_its_blocks() {
        let mut c = cache(usize::MAX);
        let system = toks(0..200);
        c.insert(&token_key(&system[..192]), &state_of(&system[..192]), true);
        let one_byte_budget = c.stats().bytes;
        let mut a = system.clone();
        a.extend(1000..1010);
        let la = c.lookup(&token_key(&a));
        let mut b = system.clone();
        b.extend(2000..2030);
        let lb = c.lookup(&token_key(&b));
        assert_eq!((la.cached, lb.cached), (192, 192));
        let (LayerState::Attention(ka), LayerState::Attention(kb)) =
            (&la.state.layers()[1], &lb.state.layers()[1])
        else {
            panic!("attention layer")
        };
        for (x, y) in ka.blocks().iter().zip(kb.blocks()) {
            assert!(Arc::ptr_eq(x, y));
        }
        assert_eq!(c.stats().bytes, one_byte_budget, "lookups copy nothing");
        // Inserting both conversations adds only their own blocks and snapshots.
        let (mut sa, mut sb) = (la.state, lb.state);
        feed(&mut sa, &a[192..]);
        feed(&mut sb, &b[192..]);
        c.insert(&token_key(&a), &sa, true);
        c.insert(&token_key(&b), &sb, true);
        assert_eq!(c.stats().nodes, 3 + 2, "three shared blocks, two tails");
        assert_eq!(
            crate::unique_bytes([&sa, &sb]),
            sa.bytes() + sb.bytes() - 3 * 64 * 4 * 4
        );
    }

    #[test]
    fn eviction_drops_least_recently_used_suffixes_first() {
        let mut c = cache(usize::MAX);
        let a = toks(0..130);
        let mut b = toks(0..64);
        b.extend(5000..5070);
        c.insert(&token_key(&a), &state_of(&a), true);
        c.insert(&token_key(&b), &state_of(&b), true);
        c.lookup(&token_key(&[a.clone(), vec![1]].concat())); // a is now the most recent
        let before = c.stats();
        assert_eq!(before.nodes, 5);
        // Make room for a's path only (its two blocks + tail + the shared first block).
        let keep = c.stats().bytes - 64 * 16 - 6 * 16 - 16 * 2; // b's block and tail
        c.evict_to(keep);
        assert_eq!(
            c.lookup(&token_key(&[a.clone(), vec![1]].concat())).cached,
            130
        );
        let lb = c.lookup(&token_key(&[b.clone(), vec![1]].concat()));
        assert_eq!((lb.cached, lb.matched), (0, 64));
        assert_eq!(
            lb.miss,
            Some(Miss::Diverged { at: 64 }),
            "a's block goes on differently"
        );
        // A budget of nothing empties the cache; lookups just miss.
        c.evict_to(0);
        assert_eq!(c.stats().nodes, 0);
        assert_eq!(c.stats().bytes, 0);
        assert_eq!(c.lookup(&token_key(&a)).cached, 0);
    }

    #[test]
    fn the_tree_round_trips_through_bytes() {
        let mut c = cache(usize::MAX);
        let a = toks(0..130);
        c.insert(&token_key(&a[..128]), &state_of(&a[..128]), true);
        c.insert(&token_key(&a), &state_of(&a), true);
        let mut b = toks(0..64);
        b.extend(7000..7010);
        c.insert(&token_key(&b), &state_of(&b), true);
        let bytes = c.to_bytes();
        let mut back = PrefixCache::from_bytes(SPECS.to_vec(), c.config(), &bytes).unwrap();
        assert_eq!(back.stats().bytes, c.stats().bytes);
        assert_eq!(back.stats().nodes, c.stats().nodes);
        assert_eq!(back.stats().snapshots, 3);
        for key in [&a[..128], &a[..], &b[..]] {
            assert!(back.has_snapshot(&token_key(key)));
            let mut longer = key.to_vec();
            longer.push(1);
            let l = back.lookup(&token_key(&longer));
            assert_eq!(l.cached, key.len());
            assert!(same(&l.state, &state_of(key)));
        }
        for cut in [0, 7, bytes.len() / 2, bytes.len() - 1] {
            assert!(PrefixCache::from_bytes(SPECS.to_vec(), c.config(), &bytes[..cut]).is_err());
        }
        let other = [
            LayerSpec::Attention {
                kv_width: 3,
                kv_type: KvType::F32,
            },
            SPECS[0],
        ];
        assert!(PrefixCache::from_bytes(other.to_vec(), c.config(), &bytes).is_err());
    }

    /// Per KV type: the tree's bytes are the stored bytes, it round-trips through
    /// [`PrefixCache::to_bytes`] with its rows' bytes unchanged, and a cache of another type
    /// refuses the bytes, naming both types.
    #[test]
    fn every_kv_type_round_trips_and_another_type_is_refused() {
        let w = 64;
        let specs = |kv_type| {
            vec![
                SPECS[0],
                LayerSpec::Attention {
                    kv_width: w,
                    kv_type,
                },
            ]
        };
        let config = CacheConfig {
            budget_bytes: usize::MAX,
        };
        for ty in KvType::ALL {
            let mut s = SequenceState::new(&specs(ty));
            let tokens = toks(0..100);
            for &t in &tokens {
                let row: Vec<f32> = (0..w).map(|j| (t as f32 - j as f32) * 0.11).collect();
                if let LayerState::Attention(kv) = s.layer_mut(1) {
                    kv.append(&row, &row);
                }
                s.advance(1);
            }
            let mut c = PrefixCache::new(specs(ty), config);
            assert!(c.insert(&token_key(&tokens), &s, true));
            // One block node + one tail node: all of the state's KV rows, plus a DeltaNet
            // snapshot on the tail.
            assert_eq!(c.stats().bytes, s.bytes());
            let bytes = c.to_bytes();
            let mut back = PrefixCache::from_bytes(specs(ty), config, &bytes).unwrap();
            assert_eq!(back.stats().bytes, c.stats().bytes, "{ty}");
            let l = back.lookup(&token_key(&[tokens.clone(), vec![1]].concat()));
            assert_eq!(l.cached, 100);
            let (LayerState::Attention(a), LayerState::Attention(b)) =
                (&s.layers()[1], &l.state.layers()[1])
            else {
                panic!("attention layer")
            };
            assert_eq!(a.to_stored(), b.to_stored(), "{ty}");
            // A state of another type is not inserted; bytes of another type do not load.
            let other = KvType::ALL.into_iter().find(|&o| o != ty).unwrap();
            assert!(c.insert(&[], &SequenceState::new(&specs(ty)), false));
            assert!(!c.insert(&[], &SequenceState::new(&specs(other)), false));
            let err = PrefixCache::from_bytes(specs(other), config, &bytes).unwrap_err();
            assert!(
                err.contains(ty.name()) && err.contains(other.name()),
                "{err}"
            );
        }
    }
}
