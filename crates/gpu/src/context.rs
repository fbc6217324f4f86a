//! The device, its queue, the shader pipelines and the one command stream every op records
//! into.
//!
//! Ops record compute dispatches into one pending command encoder; nothing is submitted
//! until a result must reach the host ([`Ctx::read`]) or the per-submission parameter arena
//! is full. WebGPU orders everything on the queue, so an op never waits for another: the
//! device runs the dispatches in the order they were recorded, with the barriers wgpu
//! inserts between dispatches that share a buffer.
//!
//! Activations live in [`GBuf`]s drawn from a pool of freed buffers (sizes rounded up to a
//! quarter octave). A buffer returns to the pool when its last [`GBuf`] drops; a dispatch
//! recorded earlier that still reads it runs before any later dispatch that reuses it (queue
//! order), so reuse is safe. Uploads are recorded as copies into the command stream — never
//! `queue.write_buffer` into a pooled buffer, which would run before earlier recorded
//! dispatches that read the buffer's previous owner.
//!
//! Each dispatch's small parameter block (a `uniform` at binding 0 of every kernel) is a
//! 256-byte slot of one parameter buffer, written with `queue.write_buffer` just before the
//! submission that reads it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use wgpu::util::DeviceExt;

/// Bytes of one dispatch's parameter slot (WebGPU's largest `minUniformBufferOffsetAlignment`).
pub(crate) const PARAM_SLOT: usize = 256;
/// Parameter slots per submission.
const PARAM_SLOTS: usize = 4096;
/// Most workgroups in one grid dimension (WebGPU's `maxComputeWorkgroupsPerDimension`).
pub(crate) const MAX_GROUPS: u32 = 65_535;
/// Freed activation bytes the pool keeps for reuse at most.
const POOL_BYTES: u64 = 1 << 30;

/// The shader sources, by file name. Every file is compiled with [`PRELUDE`] in front.
const SHADERS: &[(&str, &str)] = &[
    ("elementwise", include_str!("shaders/elementwise.wgsl")),
    ("norm", include_str!("shaders/norm.wgsl")),
    ("copy", include_str!("shaders/copy.wgsl")),
    ("matmul", include_str!("shaders/matmul.wgsl")),
    ("attention", include_str!("shaders/attention.wgsl")),
    ("deltanet", include_str!("shaders/deltanet.wgsl")),
];

/// Helpers every shader may use: the linear workgroup index of a 2-D grid ([`grid`]).
const PRELUDE: &str = include_str!("shaders/prelude.wgsl");

/// A compute kernel: an entry point of one of the shader files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub file: &'static str,
    pub entry: &'static str,
}

pub(crate) const fn kernel(file: &'static str, entry: &'static str) -> Kernel {
    Kernel { file, entry }
}

/// The workgroup grid for `n` workgroups: `[x, y, 1]` with `x ≤ 65,535` (the shader takes
/// its linear index from the prelude's `wg_index` and returns past `n`).
pub(crate) fn grid(n: usize) -> [u32; 3] {
    let n = n.max(1);
    let x = n.min(MAX_GROUPS as usize);
    let y = n.div_ceil(x);
    assert!(y <= MAX_GROUPS as usize, "grid of {n} workgroups");
    [x as u32, y as u32, 1]
}

/// One activation buffer: `len` `f32` values (the buffer may be larger: pooled sizes).
#[derive(Debug)]
pub(crate) struct GBuf {
    buf: Option<wgpu::Buffer>,
    pub len: usize,
    pool: Arc<Mutex<Pool>>,
}

impl GBuf {
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buf.as_ref().expect("a live buffer")
    }

    /// The whole buffer as a binding.
    pub fn bind(&self) -> wgpu::BindingResource<'_> {
        self.buffer().as_entire_binding()
    }
}

impl Drop for GBuf {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).give(b);
        }
    }
}

#[derive(Debug, Default)]
struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

impl Pool {
    fn take(&mut self, size: u64) -> Option<wgpu::Buffer> {
        let b = self.free.get_mut(&size)?.pop()?;
        self.bytes -= size;
        Some(b)
    }

    fn give(&mut self, b: wgpu::Buffer) {
        let size = b.size();
        if self.bytes + size > POOL_BYTES {
            return;
        }
        self.bytes += size;
        self.free.entry(size).or_default().push(b);
    }
}

/// Rounds a byte size up to its pool class: 4 classes per octave, at least 256 bytes.
fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(256);
    let top = 63 - b.leading_zeros(); // 2^top ≤ b
    let step = 1u64 << top.saturating_sub(2);
    b.div_ceil(step) * step
}

struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    params: Vec<u8>,
    params_buf: wgpu::Buffer,
}

/// The device and everything recorded on it.
pub(crate) struct Ctx {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<Kernel, wgpu::ComputePipeline>>,
    pending: Mutex<Pending>,
    pool: Arc<Mutex<Pool>>,
    pub kv: crate::kv::PageStore,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ctx({})", self.info.name)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ctx {
    pub fn new(adapter: &wgpu::Adapter) -> Result<Ctx, String> {
        let info = adapter.get_info();
        let have = adapter.limits();
        // The adapter's own limits for what bounds tensor sizes, WebGPU's defaults for the rest.
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: have.max_storage_buffer_binding_size,
            max_buffer_size: have.max_buffer_size,
            max_storage_buffers_per_shader_stage: have.max_storage_buffers_per_shader_stage.min(16),
            max_compute_workgroup_storage_size: have.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: have.max_compute_invocations_per_workgroup,
            max_compute_workgroup_size_x: have.max_compute_workgroup_size_x,
            ..wgpu::Limits::default()
        };
        let desc = wgpu::DeviceDescriptor {
            label: Some("qinfer"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| format!("{}: {e}", info.name))?;
        let params_buf = params_buffer(&device);
        Ok(Ctx {
            device,
            queue,
            info,
            limits,
            modules: Mutex::default(),
            pipelines: Mutex::default(),
            pending: Mutex::new(Pending {
                encoder: None,
                params: Vec::new(),
                params_buf,
            }),
            pool: Arc::default(),
            kv: crate::kv::PageStore::default(),
        })
    }

    /// The largest buffer one binding may see, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    fn pipeline(&self, k: Kernel) -> wgpu::ComputePipeline {
        if let Some(p) = lock(&self.pipelines).get(&k) {
            return p.clone();
        }
        let module = {
            let mut modules = lock(&self.modules);
            modules
                .entry(k.file)
                .or_insert_with(|| {
                    let src = SHADERS
                        .iter()
                        .find(|(n, _)| *n == k.file)
                        .unwrap_or_else(|| panic!("no shader file {}", k.file))
                        .1;
                    self.device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(k.file),
                            source: wgpu::ShaderSource::Wgsl(format!("{PRELUDE}\n{src}").into()),
                        })
                })
                .clone()
        };
        let p = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.entry),
                layout: None,
                module: &module,
                entry_point: Some(k.entry),
                compilation_options: wgpu::PipelineCompilationOptions::default(),
                cache: None,
            });
        lock(&self.pipelines).insert(k, p.clone());
        p
    }

    /// A fresh activation buffer of `len` `f32` values; its contents are undefined.
    pub fn alloc(&self, len: usize) -> GBuf {
        let bytes = (len as u64)
            .checked_mul(4)
            .expect("activation size overflows");
        let size = size_class(bytes);
        let buf = lock(&self.pool).take(size).unwrap_or_else(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        GBuf {
            buf: Some(buf),
            len,
            pool: self.pool.clone(),
        }
    }

    /// A buffer holding `data`, written in command order.
    pub fn upload(&self, data: &[f32]) -> GBuf {
        let g = self.alloc(data.len());
        self.write(g.buffer(), 0, bytemuck::cast_slice(data));
        g
    }

    /// Records a copy of `bytes` (a multiple of 4) into `dst` at `offset`, in command order.
    pub fn write(&self, dst: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        assert!(bytes.len().is_multiple_of(4), "writes are whole words");
        let staging = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytes,
                usage: wgpu::BufferUsages::COPY_SRC,
            });
        let mut p = lock(&self.pending);
        let enc = p.encoder.get_or_insert_with(|| new_encoder(&self.device));
        enc.copy_buffer_to_buffer(&staging, 0, dst, offset, Some(bytes.len() as u64));
    }

    /// Records a copy of `bytes` bytes between buffers, in command order.
    pub fn copy(
        &self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        bytes: u64,
    ) {
        if bytes == 0 {
            return;
        }
        let mut p = lock(&self.pending);
        let enc = p.encoder.get_or_insert_with(|| new_encoder(&self.device));
        enc.copy_buffer_to_buffer(src, src_off, dst, dst_off, Some(bytes));
    }

    /// A long-lived buffer (weights, sequence state) of `bytes` bytes (rounded up to a word),
    /// usable as storage and in copies.
    pub fn buffer(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Records one dispatch of `k` over `groups` workgroups: binding 0 is the parameter block
    /// `params` (at most 256 bytes), bindings 1.. the `bufs` in order.
    pub fn dispatch(
        &self,
        k: Kernel,
        params: &[u8],
        bufs: &[wgpu::BindingResource<'_>],
        groups: [u32; 3],
    ) {
        assert!(
            params.len() <= PARAM_SLOT,
            "{}: parameters too large",
            k.entry
        );
        if groups.contains(&0) {
            return;
        }
        let pipeline = self.pipeline(k);
        let mut p = lock(&self.pending);
        if p.params.len() >= PARAM_SLOT * PARAM_SLOTS {
            self.submit(&mut p);
        }
        let offset = p.params.len();
        p.params.extend_from_slice(params);
        p.params.resize(offset + PARAM_SLOT, 0);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &p.params_buf,
                offset: offset as u64,
                size: wgpu::BufferSize::new(PARAM_SLOT as u64),
            }),
        }];
        for (i, b) in bufs.iter().enumerate() {
            if let wgpu::BindingResource::Buffer(bb) = b {
                let size = bb.size.map_or(bb.buffer.size() - bb.offset, |s| s.get());
                assert!(
                    size <= self.max_binding(),
                    "{}: binding {} is {size} bytes, past the {} bytes one GPU binding may see \
                     (a step too large for this GPU: fewer tokens per step)",
                    k.entry,
                    i + 1,
                    self.max_binding()
                );
            }
            entries.push(wgpu::BindGroupEntry {
                binding: i as u32 + 1,
                resource: b.clone(),
            });
        }
        let bg = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(k.entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let Pending { encoder, .. } = &mut *p;
        let enc = encoder.get_or_insert_with(|| new_encoder(&self.device));
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: None,
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    /// Submits what is recorded.
    fn submit(&self, p: &mut Pending) {
        if !p.params.is_empty() {
            self.queue.write_buffer(&p.params_buf, 0, &p.params);
            p.params.clear();
        }
        if let Some(enc) = p.encoder.take() {
            self.queue.submit([enc.finish()]);
        }
    }

    /// `bytes` bytes of `src` from `offset` (both multiples of 4), after everything recorded.
    pub fn read(&self, src: &wgpu::Buffer, offset: u64, bytes: u64) -> Vec<u8> {
        if bytes == 0 {
            return Vec::new();
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        {
            let mut p = lock(&self.pending);
            let enc = p.encoder.get_or_insert_with(|| new_encoder(&self.device));
            enc.copy_buffer_to_buffer(src, offset, &staging, 0, Some(bytes));
            self.submit(&mut p);
        }
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("the GPU stopped answering");
        rx.recv()
            .expect("map callback")
            .expect("reading a GPU buffer back");
        let out = slice
            .get_mapped_range()
            .expect("a mapped readback buffer")
            .to_vec();
        staging.unmap();
        out
    }

    /// The first `len` values of an activation buffer.
    pub fn read_f32(&self, g: &GBuf, len: usize) -> Vec<f32> {
        let bytes = self.read(g.buffer(), 0, len as u64 * 4);
        bytemuck::pod_collect_to_vec(&bytes)
    }
}

fn new_encoder(device: &wgpu::Device) -> wgpu::CommandEncoder {
    device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
}

fn params_buffer(device: &wgpu::Device) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("params"),
        size: (PARAM_SLOT * PARAM_SLOTS) as u64,
        usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// `a · b`, panicking with `what` on overflow (sizes from shapes).
pub(crate) fn mul(a: usize, b: usize, what: &str) -> usize {
    a.checked_mul(b)
        .unwrap_or_else(|| panic!("{what}: size overflows"))
}

/// Asserts that `len` `f32` values fit one storage binding.
pub(crate) fn fits(ctx: &Ctx, len: usize, what: &str) {
    assert!(
        (len as u64).saturating_mul(4) <= ctx.max_binding(),
        "{what}: {len} values exceed what one GPU binding may see ({} bytes)",
        ctx.max_binding()
    );
}

/// A dispatch's parameter block, built field by field (`u32` and `f32`, each 4 bytes, in the
/// order of the shader's `Params` struct).
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<u8>);

impl Params {
    pub fn new() -> Params {
        Params::default()
    }

    pub fn u(mut self, v: usize) -> Params {
        let v = u32::try_from(v).expect("a shader parameter past u32");
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn f(mut self, v: f32) -> Params {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_and_step_by_quarter_octaves() {
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(256), 256);
        assert_eq!(size_class(257), 320);
        assert_eq!(size_class(1000), 1024);
        assert_eq!(size_class(1025), 1280);
        for b in [3u64, 4097, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let c = size_class(b);
            assert!(c >= b && c < b + b / 4 + 256, "{b} → {c}");
        }
    }

    #[test]
    fn grids_stay_within_the_dimension_limit() {
        assert_eq!(grid(0), [1, 1, 1]);
        assert_eq!(grid(70_000), [65_535, 2, 1]);
    }
}
