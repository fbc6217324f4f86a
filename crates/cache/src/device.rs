//! Sequence state a backend keeps in its own memory.
//!
//! Every buffer of sequence state — a DeltaNet layer's conv window and recurrent state
//! ([`StateBuf`]), what a kept step records, and KV rows ([`KvData`](crate::KvData)) — is
//! either host memory or a [`DeviceBuffer`] of the backend that wrote it. This crate keeps the
//! structure (blocks, sharing, positions, snapshots) and never computes on a device buffer: it
//! only duplicates one (a snapshot) or reads it back in host layout (files, another backend).
//! A backend's ops take state `&mut` and may move it into their memory in place the first time
//! they see it (a state made by [`SequenceState::new`](crate::SequenceState::new), restored
//! from a file, or written by another backend is host memory); a host backend moves device
//! state to the host the same way. So any state works with any backend, and a sequence's
//! state stays where its backend computes.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;

/// A buffer in a backend's memory.
pub trait DeviceBuffer: Any + Send + Sync + fmt::Debug {
    /// Its first `bytes` bytes in host layout: the stored values little-endian, as the host
    /// variant holding them would lay them out (`f32`; for KV rows their
    /// [`KvType`](crate::KvType)'s encoding, Q8_0 as GGML's 34-byte blocks).
    fn read(&self, bytes: usize) -> Vec<u8>;
    /// An independent copy in the backend's memory (snapshots, copy-on-write).
    fn duplicate(&self) -> Box<dyn DeviceBuffer>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A fixed-size `f32` buffer of sequence state: host memory or a backend's buffer holding
/// `len` values.
pub enum StateBuf {
    Host(Vec<f32>),
    Device {
        len: usize,
        buf: Box<dyn DeviceBuffer>,
    },
}

impl StateBuf {
    /// `len` zeros, in host memory.
    pub fn zeros(len: usize) -> StateBuf {
        StateBuf::Host(vec![0.0; len])
    }

    /// Values held.
    pub fn len(&self) -> usize {
        match self {
            StateBuf::Host(v) => v.len(),
            StateBuf::Device { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (a host buffer's capacity: kept-step buffers keep theirs between steps).
    pub fn bytes(&self) -> usize {
        match self {
            StateBuf::Host(v) => v.capacity() * 4,
            StateBuf::Device { len, .. } => len * 4,
        }
    }

    /// The values on the host: borrowed from host memory, read back from a device.
    pub fn host(&self) -> Cow<'_, [f32]> {
        match self {
            StateBuf::Host(v) => Cow::Borrowed(v),
            StateBuf::Device { len, buf } => Cow::Owned(f32s(&buf.read(len * 4))),
        }
    }

    /// The values in host memory, moved there first if a device held them (host backends).
    pub fn host_mut(&mut self) -> &mut Vec<f32> {
        if let StateBuf::Device { .. } = self {
            *self = StateBuf::Host(self.host().into_owned());
        }
        match self {
            StateBuf::Host(v) => v,
            StateBuf::Device { .. } => unreachable!("moved to the host above"),
        }
    }

    /// The device buffer, if it is a `T` (its backend).
    pub fn device<T: DeviceBuffer>(&self) -> Option<&T> {
        match self {
            StateBuf::Host(_) => None,
            StateBuf::Device { buf, .. } => buf.as_any().downcast_ref(),
        }
    }

    /// The device buffer mutably, if it is a `T` (its backend).
    pub fn device_mut<T: DeviceBuffer>(&mut self) -> Option<&mut T> {
        match self {
            StateBuf::Host(_) => None,
            StateBuf::Device { buf, .. } => buf.as_any_mut().downcast_mut(),
        }
    }

    /// Whether the values are in host memory.
    pub fn is_host(&self) -> bool {
        matches!(self, StateBuf::Host(_))
    }
}

impl Default for StateBuf {
    fn default() -> Self {
        StateBuf::Host(Vec::new())
    }
}

impl Clone for StateBuf {
    fn clone(&self) -> Self {
        match self {
            StateBuf::Host(v) => StateBuf::Host(v.clone()),
            StateBuf::Device { len, buf } => StateBuf::Device {
                len: *len,
                buf: buf.duplicate(),
            },
        }
    }

    /// Reuses a host buffer's capacity (a kept step's start state, every step).
    fn clone_from(&mut self, source: &Self) {
        match (&mut *self, source) {
            (StateBuf::Host(a), StateBuf::Host(b)) => a.clone_from(b),
            _ => *self = source.clone(),
        }
    }
}

/// Equal values, bit for bit, wherever they are held.
impl PartialEq for StateBuf {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (self.host(), other.host());
        a.len() == b.len()
            && a.iter()
                .zip(b.iter())
                .all(|(x, y)| x.to_bits() == y.to_bits())
    }
}

impl fmt::Debug for StateBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.is_host() { "host" } else { "device" };
        write!(f, "StateBuf[{}] ({place})", self.len())
    }
}

/// Little-endian `f32`s.
pub(crate) fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}
