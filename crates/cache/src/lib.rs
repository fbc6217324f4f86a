//! Per-sequence state, owned outside the model.
//!
//! A hybrid model keeps two kinds of state per sequence:
//!
//! * attention layers: the KV cache, growing by one row per token;
//! * Gated DeltaNet layers: a fixed-size conv window (`[K-1, C]`) and recurrent state
//!   (`[Nv, Dk, Dv]`), overwritten every token.
//!
//! The model *declares* what each layer needs ([`LayerSpec`]); [`SequenceState`] owns the
//! memory and is passed `&mut` into the forward pass. Because KV rows are append-only, a
//! [`Snapshot`] only records KV lengths plus a copy of the small fixed-size DeltaNet state;
//! restoring truncates KV and copies the DeltaNet state back. Prefix caching and speculative
//! rollback build on exactly this.
//!
//! Architecture invariant: this crate computes nothing and knows no model; it stores `f32`
//! rows in the shapes the model declared.

use std::fmt;

/// What one layer keeps per sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSpec {
    /// KV cache rows of `kv_width = Hkv·D` values each, for keys and for values.
    Attention { kv_width: usize },
    /// Conv window `[conv_kernel - 1, conv_channels]` and recurrent state of `recurrent_len`.
    DeltaNet {
        conv_channels: usize,
        conv_kernel: usize,
        recurrent_len: usize,
    },
}

/// KV rows of one attention layer: `[len, kv_width]` each.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    pub kv_width: usize,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

impl KvCache {
    /// Rows stored.
    pub fn len(&self) -> usize {
        self.k.len().checked_div(self.kv_width).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.k.is_empty()
    }

    /// Appends `[n, kv_width]` key and value rows.
    ///
    /// # Panics
    /// If the rows are not whole.
    pub fn append(&mut self, k: &[f32], v: &[f32]) {
        assert!(
            k.len() == v.len() && k.len().is_multiple_of(self.kv_width),
            "kv rows are not whole"
        );
        self.k.extend_from_slice(k);
        self.v.extend_from_slice(v);
    }

    fn truncate(&mut self, rows: usize) {
        self.k.truncate(rows * self.kv_width);
        self.v.truncate(rows * self.kv_width);
    }
}

/// Conv window and recurrent state of one Gated DeltaNet layer.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaNetState {
    /// `[K-1, C]`: the last `K-1` pre-conv inputs, oldest first.
    pub conv: Vec<f32>,
    /// `[Nv, Dk, Dv]`.
    pub recurrent: Vec<f32>,
}

/// State of one layer.
#[derive(Clone, Debug)]
pub enum LayerState {
    Attention(KvCache),
    DeltaNet(DeltaNetState),
}

/// Why a snapshot cannot be restored into a state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("snapshot is of a different layer layout")]
    Layout,
    #[error("snapshot at position {snapshot} is ahead of the state at position {state}")]
    Ahead { snapshot: usize, state: usize },
}

/// Everything a sequence has seen so far.
#[derive(Clone)]
pub struct SequenceState {
    layers: Vec<LayerState>,
    pos: usize,
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
                LayerSpec::Attention { kv_width } => LayerState::Attention(KvCache {
                    kv_width,
                    ..KvCache::default()
                }),
                LayerSpec::DeltaNet {
                    conv_channels,
                    conv_kernel,
                    recurrent_len,
                } => LayerState::DeltaNet(DeltaNetState {
                    conv: vec![0.0; conv_kernel.saturating_sub(1) * conv_channels],
                    recurrent: vec![0.0; recurrent_len],
                }),
            })
            .collect();
        SequenceState { layers, pos: 0 }
    }

    /// Tokens processed so far (the position of the next token).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Records that `n` more tokens were processed. Called by the model after a forward step.
    pub fn advance(&mut self, n: usize) {
        self.pos += n;
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut LayerState {
        &mut self.layers[i]
    }

    pub fn layers(&self) -> &[LayerState] {
        &self.layers
    }

    /// Bytes of `f32` state held.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerState::Attention(kv) => kv.k.len() + kv.v.len(),
                LayerState::DeltaNet(d) => d.conv.len() + d.recurrent.len(),
            })
            .sum::<usize>()
            * 4
    }

    /// A snapshot of the current position: KV lengths and a copy of the DeltaNet state.
    pub fn snapshot(&self) -> Snapshot {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                LayerState::Attention(kv) => SnapshotLayer::Attention { rows: kv.len() },
                LayerState::DeltaNet(d) => SnapshotLayer::DeltaNet(d.clone()),
            })
            .collect();
        Snapshot {
            layers,
            pos: self.pos,
        }
    }

    /// Rewinds to `snap`, taken earlier from this sequence (or one sharing its prefix).
    /// KV rows past the snapshot are dropped; DeltaNet state is copied back.
    pub fn restore(&mut self, snap: &Snapshot) -> Result<(), RestoreError> {
        if snap.layers.len() != self.layers.len() {
            return Err(RestoreError::Layout);
        }
        if snap.pos > self.pos {
            return Err(RestoreError::Ahead {
                snapshot: snap.pos,
                state: self.pos,
            });
        }
        for (layer, saved) in self.layers.iter().zip(&snap.layers) {
            match (layer, saved) {
                (LayerState::Attention(kv), SnapshotLayer::Attention { rows })
                    if *rows <= kv.len() => {}
                (LayerState::DeltaNet(d), SnapshotLayer::DeltaNet(s))
                    if d.conv.len() == s.conv.len() && d.recurrent.len() == s.recurrent.len() => {}
                _ => return Err(RestoreError::Layout),
            }
        }
        for (layer, saved) in self.layers.iter_mut().zip(&snap.layers) {
            match (layer, saved) {
                (LayerState::Attention(kv), SnapshotLayer::Attention { rows }) => {
                    kv.truncate(*rows)
                }
                (LayerState::DeltaNet(d), SnapshotLayer::DeltaNet(s)) => d.clone_from(s),
                _ => unreachable!("checked above"),
            }
        }
        self.pos = snap.pos;
        Ok(())
    }
}

/// A point in a sequence to return to. Holds the DeltaNet state (fixed size) and only the
/// lengths of the KV caches.
#[derive(Clone, Debug)]
pub struct Snapshot {
    layers: Vec<SnapshotLayer>,
    pos: usize,
}

impl Snapshot {
    /// The position (tokens processed) this snapshot returns to.
    pub fn pos(&self) -> usize {
        self.pos
    }
}

#[derive(Clone, Debug)]
enum SnapshotLayer {
    Attention { rows: usize },
    DeltaNet(DeltaNetState),
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
        LayerSpec::Attention { kv_width: 2 },
    ];

    fn step(s: &mut SequenceState, x: f32) {
        if let LayerState::DeltaNet(d) = s.layer_mut(0) {
            d.recurrent.iter_mut().for_each(|v| *v += x);
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
        let before = format!("{:?}", s.layers());
        step(&mut s, 2.0);
        step(&mut s, 3.0);
        s.restore(&snap).unwrap();
        assert_eq!(s.pos(), 1);
        assert_eq!(format!("{:?}", s.layers()), before);
    }

    #[test]
    fn refuses_snapshots_from_the_future_or_another_layout() {
        let mut s = SequenceState::new(&SPECS);
        step(&mut s, 1.0);
        let ahead = s.snapshot();
        let mut fresh = SequenceState::new(&SPECS);
        assert_eq!(
            fresh.restore(&ahead),
            Err(RestoreError::Ahead {
                snapshot: 1,
                state: 0
            })
        );
        let mut other = SequenceState::new(&SPECS[..1]);
        assert_eq!(other.restore(&ahead), Err(RestoreError::Layout));
    }
}
