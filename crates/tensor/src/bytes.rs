//! A cheap, clonable view into bytes owned elsewhere (an mmap or a load-time buffer).

use std::fmt;
use std::sync::Arc;

/// Anything that owns a byte buffer and can be shared between threads.
pub trait ByteOwner: AsRef<[u8]> + Send + Sync {}
impl<T: AsRef<[u8]> + Send + Sync> ByteOwner for T {}

/// `len` bytes at `offset` inside a shared owner. Cloning copies no data.
#[derive(Clone)]
pub struct ByteView {
    owner: Arc<dyn ByteOwner>,
    offset: usize,
    len: usize,
}

impl ByteView {
    /// A view of `owner[offset..offset + len]`.
    ///
    /// # Panics
    /// If the range is outside the owner; callers validate ranges against file sizes first.
    pub fn new(owner: Arc<dyn ByteOwner>, offset: usize, len: usize) -> Self {
        let total = (*owner).as_ref().len();
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= total),
            "byte view {offset}+{len} outside a buffer of {total} bytes"
        );
        ByteView { owner, offset, len }
    }

    /// A view owning a fresh copy of `bytes`.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        ByteView {
            owner: Arc::new(bytes),
            offset: 0,
            len,
        }
    }

    /// A view owning the little-endian bytes of `values`, guaranteed 4-byte aligned.
    pub fn from_f32(values: Vec<f32>) -> Self {
        let len = values.len() * 4;
        ByteView {
            owner: Arc::new(F32Buffer(values)),
            offset: 0,
            len,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.offset..self.offset + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A sub-view `[start, start + len)` relative to this view.
    ///
    /// # Panics
    /// If the sub-range is outside this view.
    pub fn slice(&self, start: usize, len: usize) -> Self {
        assert!(start + len <= self.len, "sub-view outside its parent view");
        ByteView {
            owner: self.owner.clone(),
            offset: self.offset + start,
            len,
        }
    }
}

impl fmt::Debug for ByteView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteView")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

/// An `f32` buffer seen as bytes (keeps the 4-byte alignment of the allocation).
struct F32Buffer(Vec<f32>);

impl AsRef<[u8]> for F32Buffer {
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice(&self.0)
    }
}
