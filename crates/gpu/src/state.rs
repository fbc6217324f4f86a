//! Sequence state ([`StateBuf`]) in device memory.
//!
//! A [`GpuState`] is one long-lived device buffer holding a state buffer's `f32` values in
//! host order (so [`DeviceBuffer::read`] is a plain read-back). The ops that take state
//! `&mut` ([`resident`], [`sized`]) move it onto the device in place the first time they see
//! it — host memory (a fresh [`qinfer_cache::SequenceState`], a state restored from a file or
//! written by a host backend), another backend's buffer, or a buffer of another GPU context —
//! and from then on compute on it there: no op round-trips state through the host.
//!
//! A buffer may be larger than the values it holds (`StateBuf::Device { len }` says how many
//! count): a kept step's buffers are rewritten every step with lengths that vary with the
//! step, and reusing a large enough buffer saves an allocation per layer and step.

use std::ops::Range;
use std::sync::Arc;

use qinfer_cache::{DeviceBuffer, StateBuf};

use crate::context::{Ctx, GBuf};

/// A state buffer's values in device memory, in host order.
pub(crate) struct GpuState {
    ctx: Arc<Ctx>,
    buf: wgpu::Buffer,
}

impl GpuState {
    /// A buffer for `len` values; its contents are undefined.
    fn new(ctx: &Arc<Ctx>, len: usize) -> GpuState {
        let bytes = (len as u64)
            .checked_mul(4)
            .expect("state buffer size overflows");
        GpuState {
            ctx: ctx.clone(),
            buf: ctx.buffer(bytes),
        }
    }

    /// A buffer holding `data`, written in command order.
    fn upload(ctx: &Arc<Ctx>, data: &[f32]) -> GpuState {
        let s = GpuState::new(ctx, data.len());
        ctx.write(&s.buf, 0, bytemuck::cast_slice(data));
        s
    }

    /// Values the buffer can hold.
    fn capacity(&self) -> usize {
        (self.buf.size() / 4) as usize
    }

    /// Whether it lives on `ctx`'s device (a buffer of another context cannot be bound).
    fn on(&self, ctx: &Arc<Ctx>) -> bool {
        Arc::ptr_eq(&self.ctx, ctx)
    }
}

impl std::fmt::Debug for GpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuState[{} bytes on {:?}]", self.buf.size(), self.ctx)
    }
}

impl DeviceBuffer for GpuState {
    /// Waits for everything recorded so far (the state's last writer included).
    fn read(&self, bytes: usize) -> Vec<u8> {
        let whole = (bytes as u64).next_multiple_of(4);
        assert!(
            whole <= self.buf.size(),
            "reading {bytes} bytes of a {}-byte state buffer",
            self.buf.size()
        );
        let mut out = self.ctx.read(&self.buf, 0, whole);
        out.truncate(bytes);
        out
    }

    /// A new buffer and a recorded copy: ordered after every write recorded before it, so
    /// it is the state as of now, whatever runs later on either buffer.
    fn duplicate(&self) -> Box<dyn DeviceBuffer> {
        let size = self.buf.size();
        let d = GpuState {
            ctx: self.ctx.clone(),
            buf: self.ctx.buffer(size),
        };
        self.ctx.copy(&self.buf, 0, &d.buf, 0, size);
        Box::new(d)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

/// This context's buffer of `s`, if it has one.
fn ours<'a>(ctx: &Arc<Ctx>, s: &'a StateBuf) -> Option<&'a GpuState> {
    s.device::<GpuState>().filter(|g| g.on(ctx))
}

/// Makes `s` resident in `ctx`'s memory, in place, values kept: a host buffer (or another
/// backend's or context's) is uploaded once and replaced by a [`GpuState`]. Returns its
/// buffer (a handle: the state may be bound while `s` is borrowed elsewhere).
pub(crate) fn resident(ctx: &Arc<Ctx>, s: &mut StateBuf) -> wgpu::Buffer {
    if let Some(g) = ours(ctx, s) {
        return g.buf.clone();
    }
    let values = s.host();
    let len = values.len();
    let g = GpuState::upload(ctx, &values);
    drop(values);
    let buf = g.buf.clone();
    *s = StateBuf::Device {
        len,
        buf: Box::new(g),
    };
    buf
}

/// Makes `s` a [`GpuState`] of `ctx` holding `len` values whose contents the caller is about
/// to overwrite (undefined until then): its buffer is reused if large enough, else replaced —
/// nothing is uploaded or copied.
pub(crate) fn sized(ctx: &Arc<Ctx>, s: &mut StateBuf, len: usize) -> wgpu::Buffer {
    let buf = match ours(ctx, s) {
        Some(g) if g.capacity() >= len => g.buf.clone(),
        _ => {
            let g = GpuState::new(ctx, len);
            let buf = g.buf.clone();
            *s = StateBuf::Device {
                len,
                buf: Box::new(g),
            };
            return buf;
        }
    };
    if let StateBuf::Device { len: held, .. } = s {
        *held = len;
    }
    buf
}

/// [`qinfer_backend::Backend::write_state`]: `s` becomes the first `len` values of `a` (it
/// takes that length), by a recorded copy on the device.
pub(crate) fn write_state(ctx: &Arc<Ctx>, a: &GBuf, len: usize, s: &mut StateBuf) {
    assert!(
        len <= a.len,
        "write_state: {len} values of a {}-value buffer",
        a.len
    );
    let dst = sized(ctx, s, len);
    ctx.copy(a.buffer(), 0, &dst, 0, len as u64 * 4);
}

/// [`qinfer_backend::Backend::read_state`]: rows `rows` of `s` seen as `[rows.len(), cols]`,
/// copied into a new activation on the device (a host or foreign `s` is read there and the
/// rows uploaded: `s` is borrowed, so it cannot be moved in).
pub(crate) fn read_state(ctx: &Arc<Ctx>, s: &StateBuf, rows: Range<usize>, cols: usize) -> GBuf {
    let (start, end) = (
        rows.start
            .checked_mul(cols)
            .expect("read_state: size overflows"),
        rows.end
            .checked_mul(cols)
            .expect("read_state: size overflows"),
    );
    assert!(
        start <= end && end <= s.len(),
        "read_state: rows {rows:?} of {cols} past a state of {} values",
        s.len()
    );
    match ours(ctx, s) {
        Some(g) => {
            let out = ctx.alloc(end - start);
            ctx.copy(
                &g.buf,
                start as u64 * 4,
                out.buffer(),
                0,
                (end - start) as u64 * 4,
            );
            out
        }
        None => ctx.upload(&s.host()[start..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::gpu;
    use crate::{Gpu, Pick};

    /// Another backend's device buffer: bytes in host layout.
    #[derive(Debug, Clone)]
    struct Foreign(Vec<u8>);

    impl DeviceBuffer for Foreign {
        fn read(&self, bytes: usize) -> Vec<u8> {
            self.0[..bytes].to_vec()
        }
        fn duplicate(&self) -> Box<dyn DeviceBuffer> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    /// Writes resize the state (growing replaces the buffer, shrinking reuses it) and rows read
    /// back are the values written; all copies, so bit for bit.
    #[test]
    fn write_then_read_rows_round_trips() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let mut s = StateBuf::Host(vec![7.0; 5]);
        let a = values(12, 0.3);
        write_state(ctx, &ctx.upload(&a), 12, &mut s);
        assert!(s.device::<GpuState>().is_some());
        assert_eq!(s.len(), 12);
        assert_eq!(s.host().as_ref(), &a[..]);
        let rows = read_state(ctx, &s, 1..3, 4);
        assert_eq!(rows.len, 8);
        assert_eq!(ctx.read_f32(&rows, 8), &a[4..12]);
        let empty = read_state(ctx, &s, 2..2, 4);
        assert_eq!(empty.len, 0);

        // Shorter: the same buffer, the new length.
        let before = s.device::<GpuState>().map(|g| g.buf.clone());
        let b = values(9, 0.7);
        write_state(ctx, &ctx.upload(&b), 6, &mut s);
        assert_eq!(s.len(), 6);
        assert_eq!(before, s.device::<GpuState>().map(|g| g.buf.clone()));
        assert_eq!(s.host().as_ref(), &b[..6]);
        // Empty.
        write_state(ctx, &ctx.upload(&b), 0, &mut s);
        assert!(s.is_empty() && s.host().is_empty());
    }

    /// Host and foreign state is read where it is, and moved in (values kept) by `resident`.
    #[test]
    fn host_and_foreign_state_move_in() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let a = values(10, 0.9);
        let host = StateBuf::Host(a.clone());
        assert_eq!(ctx.read_f32(&read_state(ctx, &host, 1..2, 5), 5), &a[5..]);
        let bytes: Vec<u8> = a.iter().flat_map(|x| x.to_le_bytes()).collect();
        for mut s in [
            host,
            StateBuf::Device {
                len: 10,
                buf: Box::new(Foreign(bytes)),
            },
        ] {
            assert_eq!(ctx.read_f32(&read_state(ctx, &s, 0..2, 5), 10), a);
            let buf = resident(ctx, &mut s);
            assert!(s.device::<GpuState>().is_some() && s.len() == 10);
            assert_eq!(s.host().as_ref(), &a[..]);
            // Once resident, it stays in the same buffer.
            assert_eq!(resident(ctx, &mut s), buf);
        }
        // A buffer of another context is moved onto this one.
        let Some(other) = Gpu::open(Pick::Best).ok() else {
            return;
        };
        let mut s = StateBuf::Host(a.clone());
        resident(&other.ctx, &mut s);
        resident(ctx, &mut s);
        assert!(s.device::<GpuState>().is_some_and(|g| g.on(ctx)));
        assert_eq!(s.host().as_ref(), &a[..]);
    }

    /// A duplicate is the state when it was made, whatever is written to either afterwards.
    #[test]
    fn duplicates_are_independent() {
        let Some(g) = gpu() else { return };
        let ctx = &g.ctx;
        let (a, b) = (values(8, 0.4), values(8, 0.8));
        let mut s = StateBuf::Host(a.clone());
        resident(ctx, &mut s);
        let mut d = s.clone();
        assert!(d.device::<GpuState>().is_some());
        write_state(ctx, &ctx.upload(&b), 8, &mut s);
        assert_eq!(d.host().as_ref(), &a[..]);
        assert_eq!(s.host().as_ref(), &b[..]);
        write_state(ctx, &ctx.upload(&b[..4]), 4, &mut d);
        assert_eq!(d.host().as_ref(), &b[..4]);
        assert_eq!(s.host().as_ref(), &b[..]);
        // Odd byte counts read whole words and hand back the bytes asked for.
        let g = s.device::<GpuState>().expect("a GPU state");
        assert_eq!(
            g.read(6),
            b[0].to_le_bytes()
                .iter()
                .chain(&b[1].to_le_bytes()[..2])
                .copied()
                .collect::<Vec<_>>()
        );
    }
}
