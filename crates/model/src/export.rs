//! Writing a model as a llama.cpp-compatible GGUF file (`qinfer quantize`).
//!
//! The output uses llama.cpp's `qwen35` / `qwen35moe` architecture names, metadata keys and
//! tensor layout, so llama.cpp runs qinfer's files and qinfer runs llama.cpp's: norms carry the
//! folded `+1`, `ssm_a = −exp(A_log)`, Gated DeltaNet value heads are tiled, the conv weight is
//! `[C, K]`, experts are separate `[E, I, H]` gate/up and `[E, H, I]` down stacks. The source is
//! any [`TensorSource`] (a safetensors checkpoint or another GGUF); tensors are produced,
//! quantized and written one at a time, so memory holds at most one tensor.
//!
//! Type policy (what `--type` means per tensor):
//! * always F32: 1-D tensors (norms, `ssm_a`, `ssm_dt`), `ssm_conv1d`, the MoE router and the
//!   shared-expert gate (tiny, and precision-critical);
//! * `F32` `F16` `BF16` `Q8_0` `Q4_0` `Q5_0` `Q6_K`: every other tensor in that type;
//! * `Q4_K_M` / `Q5_K_M`: Q4_K / Q5_K, with `output` in Q6_K, `attn_v` and `ffn_down` in Q6_K
//!   on the layers that matter most (the first and last eighth and every third in between),
//!   `attn_qkv` (Gated DeltaNet input) at least Q5_K, and `ssm_alpha`/`ssm_beta` in Q8_0;
//! * `Q3_K_M`: Q3_K, with `output` in Q6_K, `attn_v` in Q4_K (Q5_K on the layers that matter
//!   most), `ffn_down` in Q3_K (Q4_K on those layers), `attn_qkv` in Q4_K, `ssm_alpha`/`ssm_beta`
//!   in Q8_0;
//! * `Q2_K`: Q2_K, with `output` in Q6_K, `attn_v` in Q4_K, `ffn_down` in Q3_K (Q4_K on the
//!   layers that matter most), `attn_qkv` in Q3_K, `ssm_alpha`/`ssm_beta` in Q8_0;
//! * rows that are not a whole number of blocks fall back as llama.cpp does: Q4_K → Q5_0,
//!   Q5_K → Q5_1, Q6_K → Q8_0, Q2_K / Q3_K → IQ4_NL, 32-blocks → F16.
//!
//! * the MTP head (when the source has it; written as block `n_layers` with llama.cpp's `nextn`
//!   names, `block_count = n_layers + 1`, `nextn_predict_layers = 1`): its matrices stay at the
//!   file's type if that is Q8_0 or better, else Q8_0 — low-bit MTP heads ruin draft acceptance.
//!
//! The vision tower of a multimodal checkpoint goes to a second file, as llama.cpp splits it: an
//! `mmproj` GGUF (`general.architecture` `clip`, `clip.projector_type` `qwen3vl_merger`,
//! [`GgufExport::create_mmproj`]) with llama.cpp's converter's layout — the `Conv3d` patch kernel
//! `[h, C, 2, p, p]` split along its temporal axis into one `[h, C, p, p]` kernel per frame,
//! every other tensor as is. Its types follow llama.cpp's `mmproj` files rather than `--type`:
//! a vision tower is small beside the language model and sensitive to rounding, so llama.cpp
//! never quantizes it below F16. With `F32` everything stays F32 (tensor data then identical to
//! `convert_hf_to_gguf.py --mmproj --outtype f32`); with any other type the weight matrices and
//! patch kernels are F16 and the norms, biases and position table F32 (`--outtype f16`).

use std::collections::BTreeMap;
use std::path::Path;

use qinfer_backend::{Gelu, VHeadOrder};
use qinfer_formats::gguf::keys::{self, Arch};
use qinfer_formats::gguf::{GgufWriter, Value};
use qinfer_tensor::DType;

use crate::config::{FeedForwardConfig, LayerKind, ModelConfig};
use crate::error::LoadError;
use crate::loader::{Loader, TensorId, TensorSource};
use crate::names::{self, Global, LayerTensor, MtpTensor, Naming, VisionBlockTensor, VisionTensor};
use crate::vision::{DEFAULT_ROPE_THETA, VisionConfig};

/// Why a model could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Gguf(#[from] qinfer_formats::gguf::GgufError),
    #[error("{tensor}: {source}")]
    Quantize {
        tensor: String,
        source: qinfer_quant::QuantError,
    },
    #[error("{0}")]
    Unsupported(String),
}

/// A whole-file type, as llama.cpp names them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q6_K,
    Q5_K_M,
    Q4_K_M,
    Q5_0,
    Q4_0,
    Q3_K_M,
    Q2_K,
}

impl FileType {
    pub const ALL: [FileType; 11] = [
        FileType::F32,
        FileType::F16,
        FileType::BF16,
        FileType::Q8_0,
        FileType::Q6_K,
        FileType::Q5_K_M,
        FileType::Q4_K_M,
        FileType::Q5_0,
        FileType::Q4_0,
        FileType::Q3_K_M,
        FileType::Q2_K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q8_0 => "Q8_0",
            FileType::Q6_K => "Q6_K",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_0 => "Q5_0",
            FileType::Q4_0 => "Q4_0",
            FileType::Q3_K_M => "Q3_K_M",
            FileType::Q2_K => "Q2_K",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }

    /// `general.file_type` (llama.cpp's `LLAMA_FTYPE_*`).
    pub fn llama_ftype(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q2_K => 10,
            FileType::Q3_K_M => 12,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::BF16 => 32,
        }
    }

    /// The type of the `mmproj` file written beside a file of this type: F32 stays F32, every
    /// other type gives F16 (llama.cpp's default for vision towers; see the module docs).
    pub fn mmproj(self) -> FileType {
        match self {
            FileType::F32 => FileType::F32,
            _ => FileType::F16,
        }
    }

    /// Approximate bits per weight of the big matrices (for size estimates).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            FileType::F32 => 32.0,
            FileType::F16 | FileType::BF16 => 16.0,
            FileType::Q8_0 => 8.5,
            FileType::Q6_K => 6.5625,
            FileType::Q5_K_M => 5.7,
            FileType::Q4_K_M => 4.9,
            FileType::Q5_0 => 5.5,
            FileType::Q4_0 => 4.5,
            FileType::Q3_K_M => 3.9,
            FileType::Q2_K => 3.0,
        }
    }
}

/// What a tensor is, for the type policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Stays F32.
    Exact,
    Embed,
    Output,
    AttnV,
    FfnDown,
    DeltaNetQkv,
    DeltaNetGates,
    /// A matrix of the MTP head: Q8_0 or better (low-bit MTP heads ruin draft acceptance).
    Mtp,
    Other,
}

/// llama.cpp's choice of layers that get more bits in the `_M` mixtures.
fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer - eighth) % 3 == 2
}

fn tensor_type(
    ft: FileType,
    kind: Kind,
    layer: Option<usize>,
    n_layers: usize,
    cols: usize,
) -> DType {
    let more = layer.is_some_and(|l| use_more_bits(l, n_layers));
    let want = match (kind, ft) {
        (Kind::Exact, _) => DType::F32,
        (_, FileType::F32) => DType::F32,
        (_, FileType::F16) => DType::F16,
        (_, FileType::BF16) => DType::BF16,
        (_, FileType::Q8_0) => DType::Q8_0,
        (Kind::Mtp, _) => DType::Q8_0,
        (_, FileType::Q5_0) => DType::Q5_0,
        (_, FileType::Q4_0) => DType::Q4_0,
        (_, FileType::Q6_K) => DType::Q6_K,
        (Kind::Output, _) => DType::Q6_K,
        (Kind::DeltaNetGates, _) => DType::Q8_0,
        (Kind::AttnV, FileType::Q3_K_M) if more => DType::Q5_K,
        (Kind::AttnV, FileType::Q3_K_M | FileType::Q2_K) => DType::Q4_K,
        (Kind::FfnDown, FileType::Q3_K_M | FileType::Q2_K) if more => DType::Q4_K,
        (Kind::FfnDown, FileType::Q3_K_M | FileType::Q2_K) => DType::Q3_K,
        (Kind::DeltaNetQkv, FileType::Q3_K_M) => DType::Q4_K,
        (Kind::DeltaNetQkv, FileType::Q2_K) => DType::Q3_K,
        (Kind::AttnV | Kind::FfnDown, _) if more => DType::Q6_K,
        (Kind::DeltaNetQkv, _) => DType::Q5_K,
        (_, FileType::Q5_K_M) => DType::Q5_K,
        (_, FileType::Q4_K_M) => DType::Q4_K,
        (_, FileType::Q3_K_M) => DType::Q3_K,
        (_, FileType::Q2_K) => DType::Q2_K,
    };
    fallback(want, cols)
}

/// The type a row of `cols` values can actually use.
fn fallback(want: DType, cols: usize) -> DType {
    let mut t = want;
    while t.row_bytes(cols).is_none() {
        t = match t {
            DType::Q4_K => DType::Q5_0,
            DType::Q5_K => DType::Q5_1,
            DType::Q6_K => DType::Q8_0,
            DType::Q2_K | DType::Q3_K => DType::IQ4_NL,
            _ => DType::F16,
        };
        if t == DType::F16 && t.row_bytes(cols).is_none() {
            return DType::F32;
        }
    }
    t
}

/// How an output tensor's values come from the source.
#[derive(Clone, Copy, Debug)]
enum Make {
    /// A tensor as is (dequantized).
    Copy(TensorId),
    /// A norm as its effective multiplier.
    Norm(TensorId),
    /// `A = −exp(A_log)`, value heads tiled.
    DeltaNetA(usize),
    /// Rows grouped as `nv` value heads of `d` rows each, starting at row `skip`, tiled.
    TileRows { id: TensorId, skip: usize, d: usize },
    /// Columns grouped as `nv` value heads of `d`, tiled.
    TileCols { id: TensorId, d: usize },
    /// Rows `[start, start+n)` of every expert of a stacked `[E, R, H]` tensor.
    ExpertRows {
        id: TensorId,
        rows: usize,
        start: usize,
        n: usize,
    },
    /// Per-expert tensors stacked.
    StackExperts {
        block: Block,
        role: fn(usize) -> LayerTensor,
    },
    /// Frame `frame` of the vision tower's `[h, C, frames, p, p]` patch kernel, `[h, C, p, p]`.
    PatchFrame { frame: usize, frames: usize },
}

impl Make {
    /// The source tensors it reads, for an output of `shape`.
    fn inputs(self, shape: &[usize]) -> Vec<TensorId> {
        match self {
            Make::Copy(id)
            | Make::Norm(id)
            | Make::TileRows { id, .. }
            | Make::TileCols { id, .. }
            | Make::ExpertRows { id, .. } => vec![id],
            Make::DeltaNetA(l) => vec![TensorId::Layer(l, LayerTensor::DeltaNetALog)],
            Make::StackExperts { block, role } => {
                (0..shape[0]).map(|x| block.id(role(x))).collect()
            }
            Make::PatchFrame { .. } => vec![TensorId::Vision(VisionTensor::PatchWeight)],
        }
    }
}

struct Planned {
    name: String,
    /// Row-major `[.., rows, cols]`.
    shape: Vec<usize>,
    dtype: DType,
    make: Make,
}

/// What was written.
#[derive(Debug, Default)]
pub struct Exported {
    pub tensors: usize,
    pub bytes: u64,
    /// Tensors per storage type.
    pub types: BTreeMap<String, usize>,
    /// Whether the MTP head was in the source and written (as `blk.{n_layers}`).
    pub mtp: bool,
}

/// Writes `source` (named by `naming`, described by `config`) as a GGUF file of type `ft`.
/// `extra` metadata (tokenizer, chat template) is appended after the model keys.
/// `progress(done, total, name)` is called before each tensor.
pub fn export_gguf(
    path: &Path,
    source: &dyn TensorSource,
    naming: Naming,
    config: &ModelConfig,
    extra: Vec<(String, Value)>,
    ft: FileType,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<Exported, ExportError> {
    let present = |name: &str| source.tensor(name).is_some();
    GgufExport::create(path, &present, naming, config, extra, ft, None)?.write_all(source, progress)
}

/// The image normalisation of a vision tower's inputs: `(mean, std)` per channel (R, G, B).
pub type ImageNorm = ([f32; 3], [f32; 3]);

/// One GGUF file being written: planned and its header written by [`GgufExport::create`],
/// then each tensor produced from a source that holds its inputs, in any order (a checkpoint
/// converted shard by shard as it downloads), the bytes the same whatever the order.
pub struct GgufExport {
    config: ModelConfig,
    naming: Naming,
    plan: Vec<Planned>,
    writer: GgufWriter,
    written: Vec<bool>,
    mtp: bool,
}

impl std::fmt::Debug for GgufExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufExport")
            .field("tensors", &self.plan.len())
            .field("written", &self.written.iter().filter(|w| **w).count())
            .finish()
    }
}

impl GgufExport {
    /// Plans the file for a source whose tensor names are those for which `present` holds
    /// (the names suffice: no data is read), and writes its header at `path`. With `resume`
    /// (the tensors an interrupted run wrote), the file at `path` is continued instead: it must
    /// start with the same header.
    pub fn create(
        path: &Path,
        present: &dyn Fn(&str) -> bool,
        naming: Naming,
        config: &ModelConfig,
        extra: Vec<(String, Value)>,
        ft: FileType,
        resume: Option<&[String]>,
    ) -> Result<Self, ExportError> {
        let has = |id: TensorId| present(&id.name_in(naming));
        let plan = plan(&has, config, ft)?;
        let mtp = plan.iter().any(|t| t.name.contains(".nextn."));
        let metadata = metadata(config, ft, mtp)?
            .into_iter()
            .chain(extra)
            .collect();
        Self::start(path, naming, config, plan, metadata, mtp, resume)
    }

    /// Plans the `mmproj` file of the vision tower (llama.cpp's layout and types, see the
    /// module docs) that goes beside a model file of type `ft`, for a source whose tensor names
    /// are those for which `present` holds, and writes its header at `path` (`resume` as for
    /// [`GgufExport::create`]). `Ok(None)`, with nothing written, when the model has no tower:
    /// no usable `vision_config`, or no patch kernel in the source — what loading the model
    /// would give. `image_norm` is the processor's normalisation, which the file records.
    pub fn create_mmproj(
        path: &Path,
        present: &dyn Fn(&str) -> bool,
        naming: Naming,
        config: &ModelConfig,
        image_norm: ImageNorm,
        ft: FileType,
        resume: Option<&[String]>,
    ) -> Result<Option<Self>, ExportError> {
        let Some(Ok(vision)) = &config.vision else {
            return Ok(None);
        };
        if !present(&TensorId::Vision(VisionTensor::PatchWeight).name_in(naming)) {
            return Ok(None);
        }
        let ft = ft.mmproj();
        let plan = plan_mmproj(vision, ft)?;
        let metadata = mmproj_metadata(vision, ft, image_norm);
        Self::start(path, naming, config, plan, metadata, false, resume).map(Some)
    }

    /// Writes (or, with `resume`, checks) the header of a planned file.
    fn start(
        path: &Path,
        naming: Naming,
        config: &ModelConfig,
        plan: Vec<Planned>,
        metadata: Vec<(String, Value)>,
        mtp: bool,
        resume: Option<&[String]>,
    ) -> Result<Self, ExportError> {
        let mut w = match resume {
            Some(_) => GgufWriter::reopen(path, 32)?,
            None => GgufWriter::create(path, 32)?,
        };
        for (k, v) in metadata {
            w.add_metadata(k, v)?;
        }
        for t in &plan {
            let dims: Vec<usize> = t.shape.iter().rev().copied().collect();
            w.add_tensor(t.name.clone(), &dims, t.dtype)?;
        }
        w.write_header()?;
        let mut written = vec![false; plan.len()];
        for name in resume.unwrap_or_default() {
            w.mark_written(name)?;
            if let Some(i) = plan.iter().position(|t| &t.name == name) {
                written[i] = true;
            }
        }
        Ok(GgufExport {
            config: config.clone(),
            naming,
            plan,
            writer: w,
            written,
            mtp,
        })
    }

    /// Tensors in the file.
    pub fn len(&self) -> usize {
        self.plan.len()
    }

    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }

    /// The file's name of tensor `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.plan[i].name
    }

    pub fn is_written(&self, i: usize) -> bool {
        self.written[i]
    }

    /// The source tensor names tensor `i` is made from.
    pub fn inputs(&self, i: usize) -> Vec<String> {
        self.plan[i]
            .make
            .inputs(&self.plan[i].shape)
            .into_iter()
            .map(|id| id.name_in(self.naming))
            .collect()
    }

    /// Produces tensor `i` from `source` (which must hold its [`GgufExport::inputs`]),
    /// quantizes it and writes it at its place in the file.
    pub fn write(&mut self, i: usize, source: &dyn TensorSource) -> Result<(), ExportError> {
        let t = &self.plan[i];
        let ld = Loader::new(source, self.naming, self.config.norm);
        let values = produce(&ld, &self.config, t)?;
        let cols = *t.shape.last().unwrap_or(&1);
        let bytes = qinfer_cpu::ops::quantize_rows(t.dtype, &values, cols).map_err(|source| {
            ExportError::Quantize {
                tensor: t.name.clone(),
                source,
            }
        })?;
        self.writer.write_tensor(&t.name, &bytes)?;
        self.written[i] = true;
        Ok(())
    }

    /// Produces and writes every tensor from `source` (which holds them all), then completes
    /// the file; `progress(done, total, name)` is called before each tensor.
    pub fn write_all(
        mut self,
        source: &dyn TensorSource,
        progress: &mut dyn FnMut(usize, usize, &str),
    ) -> Result<Exported, ExportError> {
        let n = self.len();
        for i in 0..n {
            progress(i, n, self.name(i));
            self.write(i, source)?;
        }
        progress(n, n, "");
        self.finish()
    }

    /// Makes the tensors written so far durable (before a caller records them as done).
    pub fn sync(&mut self) -> Result<(), ExportError> {
        Ok(self.writer.sync()?)
    }

    /// Completes the file; fails if a tensor is not written.
    pub fn finish(self) -> Result<Exported, ExportError> {
        self.writer.finish()?;
        let mut done = Exported {
            mtp: self.mtp,
            ..Exported::default()
        };
        for t in &self.plan {
            let rows: usize = t.shape[..t.shape.len().saturating_sub(1)].iter().product();
            let cols = *t.shape.last().unwrap_or(&1);
            done.tensors += 1;
            done.bytes += t.dtype.row_bytes(cols).map_or(0, |r| (r * rows) as u64);
            *done.types.entry(t.dtype.to_string()).or_default() += 1;
        }
        Ok(done)
    }
}

/// The file's tensors, for a source that has the tensors for which `has` holds.
fn plan(
    has: &dyn Fn(TensorId) -> bool,
    c: &ModelConfig,
    ft: FileType,
) -> Result<Vec<Planned>, ExportError> {
    let (h, v, n) = (c.hidden, c.vocab, c.n_layers());
    let gg = |id: TensorId| match id {
        TensorId::Global(g) => names::global_in(Naming::Gguf, g),
        TensorId::Layer(l, t) => names::gguf_layer(l, t),
        TensorId::Mtp { block, t } => names::mtp_in(Naming::Gguf, block, t),
        TensorId::Vision(t) => names::vision_in(Naming::Gguf, t),
    };
    let mtp = |t| TensorId::Mtp { block: n, t };
    let mut out = Vec::new();
    let mut add = |id: TensorId, shape: Vec<usize>, kind: Kind, make: Make| {
        let layer = match id {
            TensorId::Layer(l, _) => Some(l),
            TensorId::Global(_) | TensorId::Mtp { .. } | TensorId::Vision(_) => None,
        };
        let kind = match (shape.len(), id, kind) {
            (1, _, _) | (_, _, Kind::Exact) => Kind::Exact,
            (_, TensorId::Mtp { .. }, _) => Kind::Mtp,
            _ => kind,
        };
        let dtype = tensor_type(ft, kind, layer, n, *shape.last().unwrap_or(&1));
        out.push(Planned {
            name: gg(id),
            shape,
            dtype,
            make,
        });
    };
    let g = TensorId::Global;
    add(
        g(Global::Embed),
        vec![v, h],
        Kind::Embed,
        Make::Copy(g(Global::Embed)),
    );
    add(
        g(Global::FinalNorm),
        vec![h],
        Kind::Exact,
        Make::Norm(g(Global::FinalNorm)),
    );
    if !c.tie_embeddings {
        add(
            g(Global::LmHead),
            vec![v, h],
            Kind::Output,
            Make::Copy(g(Global::LmHead)),
        );
    }
    for (l, kind) in c.layers.iter().enumerate() {
        plan_layer(has, c, Block::Main(l), *kind, &mut add)?;
    }
    if c.mtp_layers > 0 && has(mtp(MtpTensor::Fc)) {
        if c.mtp_layers != 1 {
            return Err(ExportError::Unsupported(format!(
                "{} MTP layers: GGUF export handles one",
                c.mtp_layers
            )));
        }
        for t in [MtpTensor::EmbedNorm, MtpTensor::HiddenNorm] {
            add(mtp(t), vec![h], Kind::Exact, Make::Norm(mtp(t)));
        }
        add(
            mtp(MtpTensor::Fc),
            vec![h, 2 * h],
            Kind::Mtp,
            Make::Copy(mtp(MtpTensor::Fc)),
        );
        plan_layer(has, c, Block::Mtp(n), LayerKind::Attention, &mut add)?;
        add(
            mtp(MtpTensor::FinalNorm),
            vec![h],
            Kind::Exact,
            Make::Norm(mtp(MtpTensor::FinalNorm)),
        );
    }
    Ok(out)
}

/// Where a decoder layer's tensors come from: a main layer, or the MTP head's layer (GGUF block
/// `n_layers`).
#[derive(Clone, Copy, Debug)]
enum Block {
    Main(usize),
    Mtp(usize),
}

impl Block {
    /// The GGUF block index.
    fn index(self) -> usize {
        match self {
            Block::Main(l) | Block::Mtp(l) => l,
        }
    }

    fn id(self, t: LayerTensor) -> TensorId {
        match self {
            Block::Main(l) => TensorId::Layer(l, t),
            Block::Mtp(block) => TensorId::Mtp {
                block,
                t: MtpTensor::Layer(t),
            },
        }
    }
}

/// Plans one decoder layer's tensors.
fn plan_layer(
    has: &dyn Fn(TensorId) -> bool,
    c: &ModelConfig,
    block: Block,
    kind: LayerKind,
    add: &mut dyn FnMut(TensorId, Vec<usize>, Kind, Make),
) -> Result<(), ExportError> {
    let (h, d, a) = (c.hidden, c.deltanet, c.attention);
    let id = |t| block.id(t);
    use LayerTensor::*;
    add(
        id(InputNorm),
        vec![h],
        Kind::Exact,
        Make::Norm(id(InputNorm)),
    );
    add(
        id(PostAttentionNorm),
        vec![h],
        Kind::Exact,
        Make::Norm(id(PostAttentionNorm)),
    );
    match kind {
        LayerKind::DeltaNet => {
            let (kd, vd, nv, dv) = (d.key_dim(), d.value_dim(), d.n_v_heads, d.v_head_dim);
            add(
                id(DeltaNetQkv),
                vec![d.conv_dim(), h],
                Kind::DeltaNetQkv,
                Make::TileRows {
                    id: id(DeltaNetQkv),
                    skip: 2 * kd,
                    d: dv,
                },
            );
            add(
                id(DeltaNetZ),
                vec![vd, h],
                Kind::Other,
                Make::TileRows {
                    id: id(DeltaNetZ),
                    skip: 0,
                    d: dv,
                },
            );
            add(
                id(DeltaNetB),
                vec![nv, h],
                Kind::DeltaNetGates,
                Make::TileRows {
                    id: id(DeltaNetB),
                    skip: 0,
                    d: 1,
                },
            );
            add(
                id(DeltaNetA),
                vec![nv, h],
                Kind::DeltaNetGates,
                Make::TileRows {
                    id: id(DeltaNetA),
                    skip: 0,
                    d: 1,
                },
            );
            add(
                id(DeltaNetConv),
                vec![d.conv_dim(), d.conv_kernel],
                Kind::Exact,
                Make::TileRows {
                    id: id(DeltaNetConv),
                    skip: 2 * kd,
                    d: dv,
                },
            );
            add(
                id(DeltaNetDtBias),
                vec![nv],
                Kind::Exact,
                Make::TileRows {
                    id: id(DeltaNetDtBias),
                    skip: 0,
                    d: 1,
                },
            );
            add(
                id(DeltaNetALog),
                vec![nv],
                Kind::Exact,
                Make::DeltaNetA(block.index()),
            );
            add(
                id(DeltaNetNorm),
                vec![dv],
                Kind::Exact,
                Make::Copy(id(DeltaNetNorm)),
            );
            add(
                id(DeltaNetOut),
                vec![h, vd],
                Kind::Other,
                Make::TileCols {
                    id: id(DeltaNetOut),
                    d: dv,
                },
            );
        }
        LayerKind::Attention => {
            let q_rows = a.n_heads * a.head_dim * if a.output_gate { 2 } else { 1 };
            let kv = a.n_kv_heads * a.head_dim;
            add(
                id(AttnQ),
                vec![q_rows, h],
                Kind::Other,
                Make::Copy(id(AttnQ)),
            );
            add(id(AttnK), vec![kv, h], Kind::Other, Make::Copy(id(AttnK)));
            add(id(AttnV), vec![kv, h], Kind::AttnV, Make::Copy(id(AttnV)));
            add(
                id(AttnO),
                vec![h, a.n_heads * a.head_dim],
                Kind::Other,
                Make::Copy(id(AttnO)),
            );
            add(
                id(AttnQNorm),
                vec![a.head_dim],
                Kind::Exact,
                Make::Norm(id(AttnQNorm)),
            );
            add(
                id(AttnKNorm),
                vec![a.head_dim],
                Kind::Exact,
                Make::Norm(id(AttnKNorm)),
            );
        }
    }
    match c.feed_forward {
        FeedForwardConfig::Dense { intermediate: i } => {
            add(
                id(MlpGate),
                vec![i, h],
                Kind::Other,
                Make::Copy(id(MlpGate)),
            );
            add(id(MlpUp), vec![i, h], Kind::Other, Make::Copy(id(MlpUp)));
            add(
                id(MlpDown),
                vec![h, i],
                Kind::FfnDown,
                Make::Copy(id(MlpDown)),
            );
        }
        FeedForwardConfig::Moe {
            n_experts: e,
            expert_intermediate: i,
            shared_intermediate: is,
            ..
        } => {
            add(
                id(MoeRouter),
                vec![e, h],
                Kind::Exact,
                Make::Copy(id(MoeRouter)),
            );
            let (gate, up, down) = if has(id(MoeGateUpExperts)) {
                let s = id(MoeGateUpExperts);
                (
                    Make::ExpertRows {
                        id: s,
                        rows: 2 * i,
                        start: 0,
                        n: i,
                    },
                    Make::ExpertRows {
                        id: s,
                        rows: 2 * i,
                        start: i,
                        n: i,
                    },
                    Make::ExpertRows {
                        id: id(MoeDownExperts),
                        rows: h,
                        start: 0,
                        n: h,
                    },
                )
            } else if has(id(MoeGateExperts)) {
                (
                    Make::ExpertRows {
                        id: id(MoeGateExperts),
                        rows: i,
                        start: 0,
                        n: i,
                    },
                    Make::ExpertRows {
                        id: id(MoeUpExperts),
                        rows: i,
                        start: 0,
                        n: i,
                    },
                    Make::ExpertRows {
                        id: id(MoeDownExperts),
                        rows: h,
                        start: 0,
                        n: h,
                    },
                )
            } else {
                (
                    Make::StackExperts {
                        block,
                        role: MoeExpertGate,
                    },
                    Make::StackExperts {
                        block,
                        role: MoeExpertUp,
                    },
                    Make::StackExperts {
                        block,
                        role: MoeExpertDown,
                    },
                )
            };
            add(id(MoeGateExperts), vec![e, i, h], Kind::Other, gate);
            add(id(MoeUpExperts), vec![e, i, h], Kind::Other, up);
            add(id(MoeDownExperts), vec![e, h, i], Kind::FfnDown, down);
            add(
                id(SharedExpertGate),
                vec![is, h],
                Kind::Other,
                Make::Copy(id(SharedExpertGate)),
            );
            add(
                id(SharedExpertUp),
                vec![is, h],
                Kind::Other,
                Make::Copy(id(SharedExpertUp)),
            );
            add(
                id(SharedExpertDown),
                vec![h, is],
                Kind::FfnDown,
                Make::Copy(id(SharedExpertDown)),
            );
            add(
                id(SharedExpertScalarGate),
                vec![1, h],
                Kind::Exact,
                Make::Copy(id(SharedExpertScalarGate)),
            );
        }
    }
    Ok(())
}

/// The `mmproj` file's tensors for the tower `v`, in a file of type `ft` (F32 or F16).
fn plan_mmproj(v: &VisionConfig, ft: FileType) -> Result<Vec<Planned>, ExportError> {
    // What a `qwen3vl_merger` file cannot state, and its readers (ours and llama.cpp's) assume.
    let unsupported = |why: String| Err(ExportError::Unsupported(format!("mmproj: {why}")));
    if v.act != Gelu::Tanh {
        return unsupported(format!(
            "the tower's GELU is {:?}; the file format implies the tanh approximation",
            v.act
        ));
    }
    if v.rope_theta != DEFAULT_ROPE_THETA {
        return unsupported(format!(
            "the tower's rotary base is {}; the file format implies {DEFAULT_ROPE_THETA}",
            v.rope_theta
        ));
    }
    let frames = [VisionTensor::PatchWeight, VisionTensor::PatchWeightT1];
    if v.temporal_patch > frames.len() {
        return unsupported(format!(
            "{} frames per patch; the file format holds at most {} frame kernels",
            v.temporal_patch,
            frames.len()
        ));
    }
    let matrix = match ft {
        FileType::F32 => DType::F32,
        _ => DType::F16,
    };
    let (h, c, p) = (v.hidden, v.in_channels, v.patch);
    let merged = h * v.merge * v.merge;
    // (source tensor, planned), the source's Hugging Face name giving the order below.
    let mut out: Vec<(VisionTensor, Planned)> = Vec::new();
    let mut add = |source: VisionTensor, t: VisionTensor, shape: Vec<usize>, dtype, make| {
        let name = names::vision_in(Naming::Gguf, t);
        let planned = Planned {
            name,
            shape,
            dtype,
            make,
        };
        out.push((source, planned));
    };
    // A tensor as is: matrices in the file's type, vectors (norms, biases) F32.
    let mut copy = |t: VisionTensor, shape: Vec<usize>| {
        let dtype = if shape.len() > 1 { matrix } else { DType::F32 };
        add(t, t, shape, dtype, Make::Copy(TensorId::Vision(t)));
    };
    for i in 0..v.depth {
        use VisionBlockTensor as B;
        let b = |t: B| VisionTensor::Block(i, t);
        for (w, bias, rows, cols) in [
            (B::QkvWeight, B::QkvBias, 3 * h, h),
            (B::ProjWeight, B::ProjBias, h, h),
            (B::Fc1Weight, B::Fc1Bias, v.intermediate, h),
            (B::Fc2Weight, B::Fc2Bias, h, v.intermediate),
        ] {
            copy(b(w), vec![rows, cols]);
            copy(b(bias), vec![rows]);
        }
        for t in [B::Norm1Weight, B::Norm1Bias, B::Norm2Weight, B::Norm2Bias] {
            copy(b(t), vec![h]);
        }
    }
    copy(VisionTensor::MergerNormWeight, vec![h]);
    copy(VisionTensor::MergerNormBias, vec![h]);
    copy(VisionTensor::MergerFc1Weight, vec![merged, merged]);
    copy(VisionTensor::MergerFc1Bias, vec![merged]);
    copy(VisionTensor::MergerFc2Weight, vec![v.out_hidden, merged]);
    copy(VisionTensor::MergerFc2Bias, vec![v.out_hidden]);
    copy(VisionTensor::PatchBias, vec![h]);
    // The `Conv3d` kernel `[h, C, Tp, p, p]` as one `[h, C, p, p]` kernel per frame.
    for (frame, &t) in frames[..v.temporal_patch].iter().enumerate() {
        let make = Make::PatchFrame {
            frame,
            frames: v.temporal_patch,
        };
        add(VisionTensor::PatchWeight, t, vec![h, c, p, p], matrix, make);
    }
    // llama.cpp keeps position tables F32 whatever the type.
    let pos = VisionTensor::PosEmbed;
    add(
        pos,
        pos,
        vec![v.pos_side * v.pos_side, h],
        DType::F32,
        Make::Copy(TensorId::Vision(pos)),
    );
    // llama.cpp's converter writes the tensors in the checkpoint's (name) order; the sort is
    // stable, so the frame kernels stay in frame order.
    out.sort_by_cached_key(|(source, _)| names::vision(*source));
    Ok(out.into_iter().map(|(_, t)| t).collect())
}

/// GGUF value head `g` holds source (grouped) head `perm(g)`; identity for tiled sources.
fn source_head(c: &ModelConfig, g: usize) -> usize {
    let d = c.deltanet;
    match d.v_head_order {
        VHeadOrder::Tiled => g,
        VHeadOrder::Grouped => {
            let r = d.n_v_heads / d.n_k_heads;
            (g % d.n_k_heads) * r + g / d.n_k_heads
        }
    }
}

fn produce(ld: &Loader<'_>, c: &ModelConfig, t: &Planned) -> Result<Vec<f32>, ExportError> {
    let shapes_for = |id: TensorId, shape: &[usize]| -> Vec<Vec<usize>> {
        let mut v = vec![shape.to_vec()];
        if shape.len() == 2 && shape[0] == 1 {
            v.push(vec![shape[1]]);
        }
        if matches!(id, TensorId::Layer(_, LayerTensor::DeltaNetConv)) {
            // GGUF's `[C, K]` conv taps are Hugging Face's `[C, 1, K]`.
            v.push(vec![shape[0], 1, shape[1]]);
        }
        v
    };
    let fetch = |id: TensorId, shape: &[usize]| -> Result<Vec<f32>, ExportError> {
        let shapes = shapes_for(id, shape);
        let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
        Ok(ld.f32_any(id, &refs)?.0)
    };
    let nv = c.deltanet.n_v_heads;
    Ok(match t.make {
        Make::Copy(id) => fetch(id, &t.shape)?,
        Make::Norm(id) => ld.norm(id, t.shape[0])?,
        Make::DeltaNetA(l) => {
            let a = ld.deltanet_a(l, nv)?;
            (0..nv).map(|g| a[source_head(c, g)]).collect()
        }
        Make::TileRows { id, skip, d } => {
            let src = fetch(id, &t.shape)?;
            let cols: usize = t.shape[1..].iter().product::<usize>().max(1);
            let mut out = src.clone();
            for g in 0..nv {
                let s = source_head(c, g);
                let (dst, from) = ((skip + g * d) * cols, (skip + s * d) * cols);
                out[dst..dst + d * cols].copy_from_slice(&src[from..from + d * cols]);
            }
            out
        }
        Make::TileCols { id, d } => {
            let src = fetch(id, &t.shape)?;
            let cols = t.shape[1];
            let mut out = src.clone();
            for (o, s) in out.chunks_mut(cols).zip(src.chunks(cols)) {
                for g in 0..nv {
                    let from = source_head(c, g) * d;
                    o[g * d..(g + 1) * d].copy_from_slice(&s[from..from + d]);
                }
            }
            out
        }
        Make::ExpertRows { id, rows, start, n } => {
            let (e, cols) = (t.shape[0], t.shape[2]);
            let src = fetch(id, &[e, rows, cols])?;
            let mut out = Vec::with_capacity(e * n * cols);
            for x in 0..e {
                let base = (x * rows + start) * cols;
                out.extend_from_slice(&src[base..base + n * cols]);
            }
            out
        }
        Make::StackExperts { block, role } => {
            let mut out = Vec::new();
            for x in 0..t.shape[0] {
                out.extend(fetch(block.id(role(x)), &t.shape[1..])?);
            }
            out
        }
        Make::PatchFrame { frame, frames } => {
            let [h, ch, p, q] = t.shape[..] else {
                unreachable!("a frame kernel is planned as [h, C, p, p]")
            };
            let id = TensorId::Vision(VisionTensor::PatchWeight);
            let src = fetch(id, &[h, ch, frames, p, q])?;
            // [h, C, Tp, p, p] -> frame `frame`'s [h, C, p, p].
            let pp = p * q;
            let mut out = Vec::with_capacity(h * ch * pp);
            for hc in 0..h * ch {
                let from = (hc * frames + frame) * pp;
                out.extend_from_slice(&src[from..from + pp]);
            }
            out
        }
    })
}

/// llama.cpp's metadata for the model.
fn metadata(c: &ModelConfig, ft: FileType, mtp: bool) -> Result<Vec<(String, Value)>, ExportError> {
    let arch = if c.is_moe() { "qwen35moe" } else { "qwen35" };
    let interval = (1..=c.n_layers())
        .find(|&k| {
            c.layers
                .iter()
                .enumerate()
                .all(|(i, kind)| (*kind == LayerKind::Attention) == (i + 1).is_multiple_of(k))
        })
        .ok_or_else(|| {
            ExportError::Unsupported(
                "the layer pattern is not a full-attention interval, which GGUF cannot express"
                    .into(),
            )
        })?;
    let u = |x: usize| Value::U32(x as u32);
    let a = c.attention;
    let d = c.deltanet;
    let k = |s: Arch| s.key(arch);
    let mut md = vec![
        (keys::ARCHITECTURE.into(), Value::String(arch.into())),
        (
            keys::NAME.into(),
            Value::String(format!("qinfer export ({})", ft.name())),
        ),
        (keys::FILE_TYPE.into(), Value::U32(ft.llama_ftype())),
        (keys::QUANTIZATION_VERSION.into(), Value::U32(2)),
        (k(Arch::BlockCount), u(c.n_layers() + usize::from(mtp))),
        (k(Arch::ContextLength), u(c.max_positions)),
        (k(Arch::EmbeddingLength), u(c.hidden)),
        (k(Arch::HeadCount), u(a.n_heads)),
        (k(Arch::HeadCountKv), u(a.n_kv_heads)),
        (k(Arch::KeyLength), u(a.head_dim)),
        (k(Arch::ValueLength), u(a.head_dim)),
        (k(Arch::RmsEpsilon), Value::F32(c.rms_norm_eps)),
        (k(Arch::RopeFreqBase), Value::F32(c.rope.theta as f32)),
        (k(Arch::RopeDimensionCount), u(c.rope.rotary_dim)),
        (
            k(Arch::RopeDimensionSections),
            Value::Array(
                c.rope
                    .mrope_section
                    .iter()
                    .map(|&s| Value::I32(s as i32))
                    .chain([Value::I32(0)])
                    .collect(),
            ),
        ),
        (k(Arch::SsmConvKernel), u(d.conv_kernel)),
        (k(Arch::SsmStateSize), u(d.k_head_dim)),
        (k(Arch::SsmGroupCount), u(d.n_k_heads)),
        (k(Arch::SsmTimeStepRank), u(d.n_v_heads)),
        (k(Arch::SsmInnerSize), u(d.value_dim())),
        (k(Arch::FullAttentionInterval), u(interval)),
    ];
    if mtp {
        md.push((k(Arch::NextnPredictLayers), u(1)));
    }
    if let Some(y) = c.rope.yarn {
        if !y.truncate {
            return Err(ExportError::Unsupported(
                "YaRN with `truncate: false` has no GGUF key".into(),
            ));
        }
        // llama.cpp's `attn_factor` multiplies YaRN's own `0.1·ln(factor) + 1`.
        let own = crate::config::Yarn::mscale(y.factor, 1.0);
        md.extend([
            (k(Arch::RopeScalingType), Value::String("yarn".into())),
            (k(Arch::RopeScalingFactor), Value::F32(y.factor as f32)),
            (k(Arch::RopeScalingOriginalContext), u(y.original_ctx)),
            (
                k(Arch::RopeScalingAttnFactor),
                Value::F32((y.attention_factor / own) as f32),
            ),
            (
                k(Arch::RopeScalingYarnBetaFast),
                Value::F32(y.beta_fast as f32),
            ),
            (
                k(Arch::RopeScalingYarnBetaSlow),
                Value::F32(y.beta_slow as f32),
            ),
        ]);
    }
    if d.k_head_dim != d.v_head_dim {
        return Err(ExportError::Unsupported(
            "GGUF qwen35 assumes equal DeltaNet key and value head dims".into(),
        ));
    }
    match c.feed_forward {
        FeedForwardConfig::Dense { intermediate } => {
            md.push((k(Arch::FeedForwardLength), u(intermediate)))
        }
        FeedForwardConfig::Moe {
            n_experts,
            top_k,
            expert_intermediate,
            shared_intermediate,
        } => {
            md.push((k(Arch::ExpertCount), u(n_experts)));
            md.push((k(Arch::ExpertUsedCount), u(top_k)));
            md.push((k(Arch::ExpertFeedForwardLength), u(expert_intermediate)));
            md.push((
                k(Arch::ExpertSharedFeedForwardLength),
                u(shared_intermediate),
            ));
        }
    }
    Ok(md)
}

/// llama.cpp's metadata for an `mmproj` file of type `ft` holding the tower `v`, in the
/// converter's order. The layer-norm epsilon is the tower's own (llama.cpp's converter writes the
/// text model's `rms_norm_eps`, equal to it in every Qwen3.5/3.6 checkpoint).
fn mmproj_metadata(v: &VisionConfig, ft: FileType, (mean, std): ImageNorm) -> Vec<(String, Value)> {
    let u = |x: usize| Value::U32(x as u32);
    let rgb = |x: [f32; 3]| Value::Array(x.map(Value::F32).to_vec());
    let s = |x: &str| Value::String(x.into());
    [
        (keys::ARCHITECTURE, s(keys::CLIP_ARCH)),
        (keys::TYPE, s(keys::MMPROJ_TYPE)),
        (
            keys::NAME,
            Value::String(format!("qinfer export ({}) vision tower", ft.name())),
        ),
        (keys::FILE_TYPE, Value::U32(ft.llama_ftype())),
        (keys::CLIP_HAS_VISION, Value::Bool(true)),
        (keys::CLIP_PROJECTION, u(v.out_hidden)),
        (keys::CLIP_IMAGE_SIZE, u(v.pos_side * v.patch)),
        (keys::CLIP_PATCH, u(v.patch)),
        (keys::CLIP_HIDDEN, u(v.hidden)),
        (keys::CLIP_FFN, u(v.intermediate)),
        (keys::CLIP_BLOCKS, u(v.depth)),
        (keys::CLIP_HEADS, u(v.heads)),
        (keys::CLIP_IMAGE_MEAN, rgb(mean)),
        (keys::CLIP_IMAGE_STD, rgb(std)),
        (keys::CLIP_PROJECTOR_TYPE, s(keys::CLIP_PROJECTOR_QWEN3VL)),
        (keys::CLIP_USE_GELU, Value::Bool(true)),
        (keys::CLIP_MERGE, u(v.merge)),
        (keys::CLIP_LN_EPS, Value::F32(v.ln_eps)),
        // Qwen3.5/3.6 towers have no deep-stack mergers (`VisionConfig::from_hf` refuses them).
        (
            keys::CLIP_DEEPSTACK,
            Value::Array(vec![Value::Bool(false); v.depth]),
        ),
        (keys::QUANTIZATION_VERSION, Value::U32(2)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixture_policy_and_fallbacks() {
        // 64 layers: the first and last eighth and every third layer in between get more bits.
        let more: Vec<usize> = (0..64).filter(|&l| use_more_bits(l, 64)).collect();
        assert_eq!(&more[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 10, 13]);
        assert!(more.contains(&63) && !more.contains(&8));
        // (file type, kind, layer, row length) → storage type; rows of 64 values cannot hold
        // 256-value K blocks and fall back.
        let cases = [
            (FileType::Q4_K_M, Kind::Other, Some(8), 5120, DType::Q4_K),
            (FileType::Q4_K_M, Kind::AttnV, Some(0), 5120, DType::Q6_K),
            (FileType::Q4_K_M, Kind::AttnV, Some(8), 5120, DType::Q4_K),
            (FileType::Q4_K_M, Kind::Output, None, 5120, DType::Q6_K),
            (
                FileType::Q4_K_M,
                Kind::DeltaNetQkv,
                Some(8),
                5120,
                DType::Q5_K,
            ),
            (FileType::Q4_K_M, Kind::Exact, Some(8), 5120, DType::F32),
            (FileType::Q4_K_M, Kind::Other, Some(8), 64, DType::Q5_0),
            (FileType::Q5_K_M, Kind::FfnDown, Some(63), 5120, DType::Q6_K),
            (FileType::Q6_K, Kind::Other, Some(8), 64, DType::Q8_0),
            (FileType::Q8_0, Kind::Embed, None, 5120, DType::Q8_0),
            (FileType::Q3_K_M, Kind::Other, Some(8), 5120, DType::Q3_K),
            (FileType::Q3_K_M, Kind::AttnV, Some(0), 5120, DType::Q5_K),
            (FileType::Q3_K_M, Kind::FfnDown, Some(8), 5120, DType::Q3_K),
            (FileType::Q2_K, Kind::Other, Some(8), 5120, DType::Q2_K),
            (
                FileType::Q2_K,
                Kind::DeltaNetQkv,
                Some(8),
                5120,
                DType::Q3_K,
            ),
            (FileType::Q2_K, Kind::Output, None, 5120, DType::Q6_K),
            (FileType::Q2_K, Kind::Other, Some(8), 64, DType::IQ4_NL),
            // The MTP head never goes below Q8_0, and keeps a better file type.
            (FileType::Q4_K_M, Kind::Mtp, None, 5120, DType::Q8_0),
            (FileType::Q2_K, Kind::Mtp, None, 5120, DType::Q8_0),
            (FileType::Q6_K, Kind::Mtp, None, 5120, DType::Q8_0),
            (FileType::BF16, Kind::Mtp, None, 5120, DType::BF16),
        ];
        for (ft, kind, layer, cols, want) in cases {
            assert_eq!(
                tensor_type(ft, kind, layer, 64, cols),
                want,
                "{ft:?} {kind:?} {layer:?} {cols}"
            );
        }
        assert_eq!(fallback(DType::Q8_0, 48), DType::F16);
        assert_eq!(FileType::from_name("q4_k_m"), Some(FileType::Q4_K_M));
    }

    /// The `mmproj` file's types: all F32 for F32, else F16 matrices and frame kernels with F32
    /// vectors and position table; what its format cannot state is refused.
    #[test]
    fn mmproj_policy() {
        let v = VisionConfig {
            depth: 1,
            hidden: 8,
            intermediate: 16,
            heads: 2,
            in_channels: 3,
            patch: 2,
            temporal_patch: 2,
            merge: 2,
            out_hidden: 4,
            pos_side: 3,
            act: Gelu::Tanh,
            rope_theta: DEFAULT_ROPE_THETA,
            ln_eps: 1e-6,
            image_token: 0,
            vision_start_token: None,
            vision_end_token: None,
        };
        let pos = names::vision_in(Naming::Gguf, VisionTensor::PosEmbed);
        let f32 = plan_mmproj(&v, FileType::F32.mmproj()).unwrap();
        assert!(f32.iter().all(|t| t.dtype == DType::F32));
        let q = plan_mmproj(&v, FileType::Q4_K_M.mmproj()).unwrap();
        assert_eq!(
            q.len(),
            12 + 6 + 4,
            "a block, the merger, patch bias and kernels, pos"
        );
        for t in &q {
            let matrix = t.shape.len() > 1 && t.name != pos;
            let want = if matrix { DType::F16 } else { DType::F32 };
            assert_eq!(t.dtype, want, "{}", t.name);
        }
        for bad in [
            VisionConfig {
                act: Gelu::Erf,
                ..v.clone()
            },
            VisionConfig {
                temporal_patch: 3,
                ..v.clone()
            },
            VisionConfig {
                rope_theta: 1e6,
                ..v.clone()
            },
        ] {
            assert!(plan_mmproj(&bad, FileType::F16).is_err(), "{bad:?}");
        }
    }
}
