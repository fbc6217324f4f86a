//! Per-sequence state, owned outside the model.
//!
//! A hybrid model keeps two kinds of state per sequence:
//!
//! * attention layers: the KV cache, growing by one row per token;
//! * Gated DeltaNet layers: a fixed-size conv window (`[K-1, C]`) and recurrent state
//!   (`[Nv, Dk, Dv]`), overwritten every token.
//!
//! The model *declares* what each layer needs ([`LayerSpec`]); [`SequenceState`] owns the
//! memory and is passed `&mut` into the forward pass. KV rows live in shared, immutable
//! blocks ([`kv`]), so a [`Snapshot`] is the list of block references plus a copy of the
//! partial tail block and of the fixed-size DeltaNet state; restoring puts them back and
//! never recomputes. The [`prefix`] cache stores such pieces keyed by the token blocks they
//! cover, shared by every sequence with the same prefix; [`persist`] writes them to files.
//!
//! Architecture invariant: this crate knows no model; it stores rows in the shapes and the
//! KV type ([`KvType`]) the model declared. The only arithmetic it does is converting each
//! appended KV row to that type, one row at a time.

use std::fmt;

pub mod device;
pub mod kv;
pub mod persist;
pub mod prefix;
mod rows;

pub use device::{DeviceBuffer, StateBuf};
pub use kv::{BLOCK_TOKENS, KvBlock, KvCache, KvData, KvType, UnknownKvType};
pub use prefix::{CacheConfig, CacheStats, KeyElem, Lookup, Miss, PrefixCache};
pub use rows::{KvRows, KvSegment};

/// What one layer keeps per sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    /// KV cache rows of `kv_width = Hkv·D` values each, for keys and for values, stored as
    /// `kv_type` (which must [support](KvType::supports) the width).
    Attention { kv_width: usize, kv_type: KvType },
    /// Conv window `[conv_kernel - 1, conv_channels]` and recurrent state of `recurrent_len`.
    DeltaNet {
        conv_channels: usize,
        conv_kernel: usize,
        recurrent_len: usize,
    },
}

/// Conv window and recurrent state of one Gated DeltaNet layer (host memory or the
/// backend's, [`device`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaNetState {
    /// `[K-1, C]`: the last `K-1` pre-conv inputs, oldest first.
    pub conv: StateBuf,
    /// `[Nv, Dk, Dv]`.
    pub recurrent: StateBuf,
}

impl DeltaNetState {
    /// Host state from its values.
    pub fn from_host(conv: Vec<f32>, recurrent: Vec<f32>) -> Self {
        DeltaNetState {
            conv: StateBuf::Host(conv),
            recurrent: StateBuf::Host(recurrent),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.conv.len() + self.recurrent.len()) * 4
    }
}

/// State of one layer. Equal: the same values, bit for bit, wherever they are held.
#[derive(Clone, Debug, PartialEq)]
pub enum LayerState {
    Attention(KvCache),
    DeltaNet(DeltaNetState),
}

/// Why a state cannot be rewound to a position.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RewindError {
    #[error(
        "cannot rewind to position {to}: the sequence is at {pos} and can return only to \
         positions {kept_from}..={kept_to} of its last step that kept them (keep_states)"
    )]
    NotKept {
        to: usize,
        pos: usize,
        kept_from: usize,
        kept_to: usize,
    },
}

/// What the last step that kept its states (`Span::keep_states`) left to undo it with: each
/// DeltaNet layer's recurrent state before the step, its conv window after every position, and
/// the delta rule's inputs of every position. Rewinding to a position copies the start state
/// back and replays the recurrence over the kept inputs up to it (measured cheaper in time and
/// memory than keeping a whole state per position, docs/PERFORMANCE.md). Buffers keep their
/// capacity from step to step.
#[derive(Clone, Debug, Default)]
struct Kept {
    /// Tokens processed before the step.
    from: usize,
    /// Positions kept (`0`: none).
    len: usize,
    /// Per layer (empty for attention layers).
    layers: Vec<KeptLayer>,
}

/// How [`SequenceState::rewind`] has the model set a DeltaNet layer's state:
/// `(layer, its record of the step, positions to replay, the state to set)`.
pub type Replay<'a> = dyn FnMut(usize, &KeptLayer, usize, &mut DeltaNetState) + 'a;

/// One DeltaNet layer's part of a kept step (filled by the model through its backend, in
/// the backend's memory).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeptLayer {
    /// The recurrent state `[Nv, Dk, Dv]` before the step.
    pub start: StateBuf,
    /// The conv window after each position: `[len, (K−1)·C]`.
    pub conv: StateBuf,
    /// The delta rule's inputs of each position: `q`, `k` `[len, Nk·Dk]`, `v` `[len, Nv·Dv]`,
    /// `g`, `beta` `[len, Nv]`.
    pub q: StateBuf,
    pub k: StateBuf,
    pub v: StateBuf,
    pub g: StateBuf,
    pub beta: StateBuf,
}

impl KeptLayer {
    fn bytes(&self) -> usize {
        [
            &self.start,
            &self.conv,
            &self.q,
            &self.k,
            &self.v,
            &self.g,
            &self.beta,
        ]
        .iter()
        .map(|v| v.bytes())
        .sum()
    }
}

/// Why a snapshot cannot be restored into a state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("snapshot is of a different layer layout")]
    Layout,
    #[error("snapshot holds a {found} KV cache, this state stores {expected} (--kv-type)")]
    KvType { found: KvType, expected: KvType },
}

/// Everything a sequence has seen so far.
#[derive(Clone)]
pub struct SequenceState {
    layers: Vec<LayerState>,
    pos: usize,
    kept: Kept,
}

impl fmt::Debug for SequenceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SequenceState")
            .field("layers", &self.layers.len())
            .field("pos", &self.pos)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl SequenceState {
    /// Empty state for layers declared by `specs`.
    pub fn new(specs: &[LayerSpec]) -> Self {
        let layers = specs
            .iter()
            .map(|spec| match *spec {
                LayerSpec::Attention { kv_width, kv_type } => {
                    LayerState::Attention(KvCache::new(kv_width, kv_type))
                }
                LayerSpec::DeltaNet {
                    conv_channels,
                    conv_kernel,
                    recurrent_len,
                } => LayerState::DeltaNet(DeltaNetState {
                    conv: StateBuf::zeros(conv_kernel.saturating_sub(1) * conv_channels),
                    recurrent: StateBuf::zeros(recurrent_len),
                }),
            })
            .collect();
        SequenceState {
            layers,
            pos: 0,
            kept: Kept::default(),
        }
    }

    /// Tokens processed so far (the position of the next token).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Records that `n` more tokens were processed. Called by the model after a forward step.
    pub fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    /// Starts a step of `n` positions: forgets what an earlier step kept and, with `keep`,
    /// copies each DeltaNet layer's recurrent state as the step's start (where it is held:
    /// a device copy of device state). Called by the model before it changes any layer.
    pub fn begin_step(&mut self, n: usize, keep: bool) {
        self.kept.from = self.pos;
        self.kept.len = if keep { n } else { 0 };
        if !keep {
            return;
        }
        let kept = &mut self.kept.layers;
        kept.resize_with(self.layers.len(), KeptLayer::default);
        for (k, layer) in kept.iter_mut().zip(&self.layers) {
            if let LayerState::DeltaNet(d) = layer {
                k.start.clone_from(&d.recurrent);
            }
        }
    }

    /// Layer `i`'s DeltaNet state and, when the current step keeps its states, that layer's
    /// record of the step (the start state is already in it; the model writes the conv windows
    /// and the delta rule's inputs). `None` for an attention layer.
    pub fn deltanet_mut(
        &mut self,
        i: usize,
    ) -> Option<(&mut DeltaNetState, Option<&mut KeptLayer>)> {
        let LayerState::DeltaNet(d) = &mut self.layers[i] else {
            return None;
        };
        let kept = (self.kept.len > 0).then(|| &mut self.kept.layers[i]);
        Some((d, kept))
    }

    /// Positions the state can be rewound to: the step that kept states covered
    /// `from + 1 ..= from + len`, and the sequence is at or after each of them.
    fn rewindable(&self) -> std::ops::RangeInclusive<usize> {
        self.kept.from + 1..=(self.kept.from + self.kept.len).min(self.pos)
    }

    /// Returns the sequence to position `to` inside the last step that kept its states: for
    /// each DeltaNet layer `replay(layer, kept, j, state)`, which must set `state` to the
    /// conv window and recurrent state after the step's first `j` positions (the model, on
    /// its backend, takes the kept window and replays the recurrence from `kept.start`: this
    /// crate computes nothing); attention layers drop the later KV rows. `to == pos()` is a no-op; what was
    /// kept stays, so a later rewind may go further back within the step. Call it through
    /// the model (`Qwen35::rewind`).
    pub fn rewind(&mut self, to: usize, replay: &mut Replay<'_>) -> Result<(), RewindError> {
        if to == self.pos {
            return Ok(());
        }
        let range = self.rewindable();
        if self.kept.len == 0 || !range.contains(&to) {
            return Err(RewindError::NotKept {
                to,
                pos: self.pos,
                kept_from: *range.start(),
                kept_to: *range.end(),
            });
        }
        let j = to - self.kept.from;
        for (l, (layer, kept)) in self.layers.iter_mut().zip(&self.kept.layers).enumerate() {
            match layer {
                LayerState::Attention(kv) => kv.truncate(to),
                LayerState::DeltaNet(d) => replay(l, kept, j, d),
            }
        }
        self.pos = to;
        Ok(())
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut LayerState {
        &mut self.layers[i]
    }

    pub fn layers(&self) -> &[LayerState] {
        &self.layers
    }

    /// Bytes of state reachable from this sequence, as stored (shared KV blocks counted in
    /// full; see [`unique_bytes`] for several sequences together), what a kept step holds
    /// included.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Attention(kv) => kv.bytes(),
                LayerState::DeltaNet(d) => d.bytes(),
            })
            .sum::<usize>()
            + self.kept_bytes()
    }

    /// Bytes held for undoing the last step that kept its states.
    fn kept_bytes(&self) -> usize {
        self.kept.layers.iter().map(KeptLayer::bytes).sum()
    }

    /// A state assembled from parts (prefix cache, files). The caller guarantees that the
    /// parts belong together at `pos`.
    pub fn from_layers(layers: Vec<LayerState>, pos: usize) -> Self {
        SequenceState {
            layers,
            pos,
            kept: Kept::default(),
        }
    }

    /// A snapshot of the current position: references to the full KV blocks, a copy of the
    /// partial tail block and of the DeltaNet state (not the kept per-position states).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot(SequenceState::from_layers(self.layers.clone(), self.pos))
    }

    /// Returns to `snap`, taken from any sequence of the same layer layout (ahead or behind
    /// this one: the snapshot carries its KV blocks).
    pub fn restore(&mut self, snap: &Snapshot) -> Result<(), RestoreError> {
        if snap.0.layers.len() != self.layers.len() {
            return Err(RestoreError::Layout);
        }
        for (a, b) in self.layers.iter().zip(&snap.0.layers) {
            match (a, b) {
                (LayerState::Attention(x), LayerState::Attention(y)) => {
                    if x.kv_width() != y.kv_width() {
                        return Err(RestoreError::Layout);
                    }
                    if x.kv_type() != y.kv_type() {
                        return Err(RestoreError::KvType {
                            found: y.kv_type(),
                            expected: x.kv_type(),
                        });
                    }
                }
                (LayerState::DeltaNet(x), LayerState::DeltaNet(y))
                    if x.conv.len() == y.conv.len() && x.recurrent.len() == y.recurrent.len() => {}
                _ => return Err(RestoreError::Layout),
            }
        }
        self.layers.clone_from(&snap.0.layers);
        self.pos = snap.0.pos;
        self.kept.len = 0;
        Ok(())
    }
}

/// Bytes held by several sequences together, each shared KV block counted once.
pub fn unique_bytes<'a>(states: impl IntoIterator<Item = &'a SequenceState>) -> usize {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for s in states {
        for l in &s.layers {
            match l {
                LayerState::Attention(kv) => {
                    for b in kv.blocks() {
                        if seen.insert(std::sync::Arc::as_ptr(b)) {
                            total += b.bytes();
                        }
                    }
                    total += kv.tail_bytes();
                }
                LayerState::DeltaNet(d) => total += d.bytes(),
            }
        }
        total += s.kept_bytes();
    }
    total
}

/// A point in a sequence to return to: the state at that point, its full KV blocks shared
/// (not copied) with the sequence it came from.
#[derive(Clone, Debug)]
pub struct Snapshot(SequenceState);

impl Snapshot {
    /// The position (tokens processed) this snapshot returns to.
    pub fn pos(&self) -> usize {
        self.0.pos
    }

    /// The state this snapshot returns to.
    pub fn state(&self) -> &SequenceState {
        &self.0
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

    fn step(s: &mut SequenceState, x: f32) {
        if let LayerState::DeltaNet(d) = s.layer_mut(0) {
            d.recurrent.host_mut().iter_mut().for_each(|v| *v += x);
        }
        if let LayerState::Attention(kv) = s.layer_mut(1) {
            kv.append(&[x, x], &[-x, -x]);
        }
        s.advance(1);
    }

    #[test]
    fn restore_rewinds_kv_and_recurrent_state() {
        let mut s = SequenceState::new(&SPECS);
        assert_eq!(s.bytes(), (2 * 2 + 4) * 4);
        step(&mut s, 1.0);
        let snap = s.snapshot();
        let before = s.layers().to_vec();
        step(&mut s, 2.0);
        step(&mut s, 3.0);
        assert_ne!(s.layers(), before);
        s.restore(&snap).unwrap();
        assert_eq!(s.pos(), 1);
        assert_eq!(s.layers(), before);
    }

    #[test]
    fn snapshots_restore_into_any_state_of_the_same_layout() {
        let mut s = SequenceState::new(&SPECS);
        for i in 0..70 {
            step(&mut s, i as f32);
        }
        let ahead = s.snapshot();
        let mut fresh = SequenceState::new(&SPECS);
        fresh.restore(&ahead).unwrap();
        assert_eq!(fresh.pos(), 70);
        assert_eq!(fresh.layers(), s.layers());
        // The full block is shared, the tail and DeltaNet state are not.
        // s: one 64-row block + 6 tail rows (k and v, width 2) + conv 4 + recurrent 4 values.
        assert_eq!(s.bytes(), (64 * 4 + 6 * 4 + 4 + 4) * 4);
        assert_eq!(unique_bytes([&s, &fresh]), s.bytes() + (6 * 4 + 4 + 4) * 4);
        let mut other = SequenceState::new(&SPECS[..1]);
        assert_eq!(other.restore(&ahead), Err(RestoreError::Layout));
    }
}
