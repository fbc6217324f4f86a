//! The GPU backend: every op of the device seam ([`qinfer_backend::Backend`]) as a WGSL
//! compute shader run through wgpu — Vulkan on Linux and Windows, Metal on macOS, DX12.
//!
//! * Weights are uploaded once, at [`Backend::prepare`], in their storage format (the GGML
//!   block bytes as they are in the file; no dequantized copy), split by rows into buffers a
//!   binding can see (`matmul.rs`). The kernels decode the blocks as they read them.
//! * Activations ([`qinfer_backend::Act`]) are device buffers (`context.rs` `GBuf`); they
//!   reach the host only through [`Backend::download`] (logits, hidden rows, router logits).
//! * Sequence state — KV rows in the cache's [`qinfer_cache::KvType`], DeltaNet conv and
//!   recurrent state, what a kept step records — lives in device buffers
//!   ([`qinfer_cache::DeviceBuffer`]: `kv.rs`, `state.rs`), read back only for files and
//!   snapshots to host memory.
//! * Every op is recorded into one command stream; a step submits once, when its logits are
//!   read back (`context.rs`).
//!
//! Every kernel is tested against the CPU backend on Mesa's software Vulkan driver
//! (lavapipe), which runs the same shaders on the CPU; a test skips with a message only where
//! no adapter can be created at all.
//!
//! Architecture invariant: this crate holds kernels and device memory only; it knows no
//! model, file or token.

mod attention;
mod backend;
mod context;
mod deltanet;
mod kv;
mod matmul;
mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use context::Ctx;

pub use matmul::supports_dtype;

/// What kind of device an adapter is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterKind {
    Discrete,
    Integrated,
    Virtual,
    /// A software rasteriser (Mesa's lavapipe / llvmpipe, WARP).
    Software,
    Other,
}

impl AdapterKind {
    pub fn name(self) -> &'static str {
        match self {
            AdapterKind::Discrete => "discrete",
            AdapterKind::Integrated => "integrated",
            AdapterKind::Virtual => "virtual",
            AdapterKind::Software => "software",
            AdapterKind::Other => "other",
        }
    }

    /// Whether `--device auto` takes it: a real GPU, not a software driver.
    pub fn is_hardware(self) -> bool {
        matches!(
            self,
            AdapterKind::Discrete | AdapterKind::Integrated | AdapterKind::Virtual
        )
    }

    fn rank(self) -> u8 {
        match self {
            AdapterKind::Discrete => 0,
            AdapterKind::Integrated => 1,
            AdapterKind::Virtual => 2,
            AdapterKind::Other => 3,
            AdapterKind::Software => 4,
        }
    }
}

/// One adapter as `qinfer inspect --devices` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Its index in [`adapters`] (what `--device gpu:N` names).
    pub index: usize,
    pub name: String,
    pub kind: AdapterKind,
    /// `Vulkan`, `Metal`, `Dx12`.
    pub api: String,
    pub driver: String,
    /// The largest buffer one binding may see, bytes.
    pub max_binding_bytes: u64,
    /// The largest buffer, bytes.
    pub max_buffer_bytes: u64,
    /// Device-local memory, bytes, where the API reports it (Vulkan); `None` elsewhere.
    pub memory_bytes: Option<u64>,
    /// Optional features of interest the adapter has (`shader-f16`, `subgroup`, ...).
    pub features: Vec<&'static str>,
}

/// Why no GPU backend could be made.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "no GPU adapter found (wgpu saw no Vulkan, Metal or DX12 device; on Linux install the Vulkan loader and a driver, e.g. `mesa-vulkan-drivers libvulkan1`)"
    )]
    NoAdapter,
    #[error("no GPU adapter {0}: there are {1} (`qinfer inspect --devices` lists them)")]
    NoSuchAdapter(usize, usize),
    #[error("GPU adapter {0}: {1}")]
    Device(String, String),
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn kind_of(t: wgpu::DeviceType) -> AdapterKind {
    match t {
        wgpu::DeviceType::DiscreteGpu => AdapterKind::Discrete,
        wgpu::DeviceType::IntegratedGpu => AdapterKind::Integrated,
        wgpu::DeviceType::VirtualGpu => AdapterKind::Virtual,
        wgpu::DeviceType::Cpu => AdapterKind::Software,
        wgpu::DeviceType::Other => AdapterKind::Other,
    }
}

/// The compute-capable adapters wgpu finds, best first (discrete, integrated, virtual,
/// other, software), each with its index.
fn raw_adapters() -> Vec<wgpu::Adapter> {
    let mut all: Vec<wgpu::Adapter> =
        pollster::block_on(instance().enumerate_adapters(wgpu::Backends::PRIMARY))
            .into_iter()
            .filter(|a| {
                a.get_downlevel_capabilities()
                    .flags
                    .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
            })
            .collect();
    all.sort_by_key(|a| kind_of(a.get_info().device_type).rank());
    all
}

/// Every adapter, best first.
pub fn adapters() -> Vec<AdapterSummary> {
    raw_adapters()
        .iter()
        .enumerate()
        .map(|(index, a)| summarize(index, a))
        .collect()
}

/// Adapter `a`, of index `index` in [`raw_adapters`], as `inspect --devices` shows it.
fn summarize(index: usize, a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let limits = a.limits();
    let f = a.features();
    let mut features = Vec::new();
    for (flag, name) in [
        (wgpu::Features::SHADER_F16, "shader-f16"),
        (wgpu::Features::SUBGROUP, "subgroup"),
        (wgpu::Features::TIMESTAMP_QUERY, "timestamp-query"),
        (
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
            "cooperative-matrix",
        ),
    ] {
        if f.contains(flag) {
            features.push(name);
        }
    }
    AdapterSummary {
        index,
        name: info.name.clone(),
        kind: kind_of(info.device_type),
        api: format!("{:?}", info.backend),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        max_binding_bytes: limits.max_storage_buffer_binding_size,
        max_buffer_bytes: limits.max_buffer_size,
        memory_bytes: device_memory(a),
        features,
    }
}

/// The adapter's device-local memory, as the Vulkan driver reports its heaps (the sum of the
/// heaps flagged device-local); `None` on other APIs.
#[cfg(any(target_os = "linux", target_os = "windows", target_os = "android"))]
fn device_memory(a: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: the hal adapter is only read (its physical device's memory properties), while
    // `a` is alive, and no wgpu-hal object is created or destroyed through it.
    let hal = unsafe { a.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let instance = hal.shared_instance().raw_instance();
    // SAFETY: a valid physical device of this instance (wgpu enumerated it).
    let props =
        unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
    let heaps = &props.memory_heaps[..props.memory_heap_count as usize];
    // VK_MEMORY_HEAP_DEVICE_LOCAL_BIT = 0x1.
    let bytes: u64 = heaps
        .iter()
        .filter(|h| h.flags.as_raw() & 1 != 0)
        .map(|h| h.size)
        .sum();
    (bytes > 0).then_some(bytes)
}

#[cfg(not(any(target_os = "linux", target_os = "windows", target_os = "android")))]
fn device_memory(_: &wgpu::Adapter) -> Option<u64> {
    None
}

/// Which adapter [`Gpu::open`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The best adapter there is, a software one included.
    Best,
    /// The best hardware adapter (`--device auto`); none: [`GpuError::NoAdapter`].
    Hardware,
    /// The adapter of this index in [`adapters`].
    Index(usize),
}

/// The GPU backend on one adapter.
pub struct Gpu {
    ctx: Arc<Ctx>,
    summary: AdapterSummary,
    /// Small host slices the ops take by reference (norm weights, biases, conv taps), kept on
    /// the device: the same slice (address, length and contents) is uploaded once.
    consts: Mutex<HashMap<(usize, usize), Constant>>,
    /// Weights already uploaded, by their bytes' address (a tied LM head is the embedding).
    weights: Mutex<HashMap<(usize, usize, qinfer_tensor::DType), Weak<matmul::GpuWeight>>>,
    /// Bytes of weights uploaded so far, and who hears of each upload.
    uploaded: Mutex<(u64, UploadHook)>,
}

/// Told the bytes of each weight as it reaches the device (a progress bar).
pub type UploadHook = Box<dyn Fn(u64) + Send + Sync>;

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.summary.name)
    }
}

/// A host slice's values and its device copy.
type Constant = (Vec<f32>, wgpu::Buffer);

/// Entries of the constant cache past which it starts afresh.
const MAX_CONSTS: usize = 16_384;

impl Gpu {
    /// A backend on the adapter `pick` names.
    pub fn open(pick: Pick) -> Result<Gpu, GpuError> {
        // One enumeration: the index picked and the adapter opened are the same one.
        let raw = raw_adapters();
        let index = match pick {
            Pick::Best => {
                if raw.is_empty() {
                    return Err(GpuError::NoAdapter);
                }
                0
            }
            Pick::Hardware => raw
                .iter()
                .position(|a| kind_of(a.get_info().device_type).is_hardware())
                .ok_or(GpuError::NoAdapter)?,
            Pick::Index(i) => {
                if i >= raw.len() {
                    return Err(GpuError::NoSuchAdapter(i, raw.len()));
                }
                i
            }
        };
        let summary = summarize(index, &raw[index]);
        let ctx = Ctx::new(&raw[index]).map_err(|e| GpuError::Device(summary.name.clone(), e))?;
        Ok(Gpu {
            ctx: Arc::new(ctx),
            summary,
            consts: Mutex::default(),
            weights: Mutex::default(),
            uploaded: Mutex::new((0, Box::new(|_| ()))),
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.summary
    }

    /// Calls `hook` with the bytes of every weight uploaded from now on (a progress bar).
    pub fn on_upload(&self, hook: UploadHook) {
        self.uploaded.lock().unwrap_or_else(|e| e.into_inner()).1 = hook;
    }

    /// Bytes of weights this backend holds in device memory (each uploaded once).
    pub fn weight_bytes(&self) -> u64 {
        self.uploaded.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The device's read bandwidth, GB/s: the best of 5 timings of 10 passes of a kernel that
    /// reads a buffer of up to 1 GiB (the largest one binding may see), coalesced.
    pub fn read_bandwidth_gb_s(&self) -> f64 {
        use crate::context::{Params, grid, kernel};
        let threads = 256 * 1024usize;
        let bytes = self.ctx.max_binding().min(1 << 30);
        // Each thread reads `per` vec4s.
        let per = (bytes as usize / (16 * threads)).max(1);
        let len = threads * per * 4;
        let src = self.ctx.alloc(len);
        let out = self.ctx.alloc(threads);
        let p = Params::new().u(threads).u(per).f(0.0).u(0);
        let k = kernel("elementwise", "read_probe");
        // Passes per timing: one submission and readback (tens of µs) must not count against a
        // pass that takes a fraction of a millisecond on a fast GPU.
        const PASSES: usize = 10;
        let run = |passes: usize| {
            for _ in 0..passes {
                self.ctx
                    .dispatch(k, p.bytes(), &[out.bind(), src.bind()], grid(threads / 256));
            }
            self.ctx.read(out.buffer(), 0, 4);
        };
        run(1); // pipeline compile, first touch
        let best = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                run(PASSES);
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        (len * 4 * PASSES) as f64 / best / 1e9
    }

    /// `data` in a device buffer, uploaded once per distinct slice.
    fn constant(&self, data: &[f32]) -> wgpu::Buffer {
        let key = (data.as_ptr() as usize, data.len());
        let mut consts = self.consts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((held, buf)) = consts.get(&key)
            && held.as_slice() == data
        {
            return buf.clone();
        }
        if consts.len() >= MAX_CONSTS {
            consts.clear();
        }
        let buf = self.ctx.buffer(data.len() as u64 * 4);
        // A fresh buffer no recorded command reads yet: a queue write is in order.
        self.ctx
            .queue
            .write_buffer(&buf, 0, bytemuck::cast_slice(data));
        consts.insert(key, (data.to_vec(), buf.clone()));
        buf
    }
}

#[cfg(test)]
mod tests;
