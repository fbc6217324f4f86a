//! The vision tower of the multimodal checkpoints (`Qwen3_5VisionModel`): image patches in,
//! one language-model embedding per merged 2×2 group of patches out — and the mRoPE positions
//! of a prompt whose image-pad tokens those embeddings replace.
//!
//! The encoder, per image (spec §9.1):
//! * patch embedding: a `Conv3d` whose kernel equals its stride, i.e. one matmul of each
//!   patch's `C·Tp·p·p` values against the kernel seen as `[hidden, C·Tp·p·p]`, plus bias;
//! * a learned `side × side` position table resampled to the image's patch grid (bilinear,
//!   `align_corners`), added: four table rows per patch, weighted;
//! * `depth` pre-norm blocks: LayerNorm → qkv (bias) → 2-D axial RoPE (rows' angles then
//!   columns', over the whole head) → bidirectional attention within each frame → proj (bias);
//!   LayerNorm → fc1 (bias) → GELU → fc2 (bias);
//! * the merger: LayerNorm per patch, each 2×2 neighbourhood's rows joined into one (the
//!   processor emits patches neighbourhood by neighbourhood), fc1 (bias) → exact GELU → fc2
//!   (bias) to the language model's width.
//!
//! Every op runs on the model's backend; the image's patch values arrive by
//! [`qinfer_backend::Backend::upload`] and its embeddings leave by `download`.

use qinfer_backend::{AttentionShape, Backend, Gelu};
use qinfer_formats::hf_config::RawConfig;
use qinfer_tensor::{Mat, Weight};

use qinfer_formats::gguf::keys;

use crate::config::{Metadata, positive, within};
use crate::error::{ConfigError, LoadError};
use crate::layers::rope::Position3;
use crate::loader::{Loader, TensorId};
use crate::names::{Naming, VisionBlockTensor, VisionTensor};

/// LayerNorm epsilon of every norm of the tower in Hugging Face checkpoints (fixed in the
/// reference, not configured; `mmproj` files state theirs).
const HF_LN_EPS: f32 = 1e-6;

/// The rotary base of the tower when a file does not state it (llama.cpp's `mmproj` files
/// never do; the reference's default).
pub(crate) const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// The vision tower's hyper-parameters and the prompt tokens that stand for images, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub in_channels: usize,
    pub patch: usize,
    pub temporal_patch: usize,
    pub merge: usize,
    /// Width of the merger's output: the language model's hidden size.
    pub out_hidden: usize,
    /// Side of the square learned position table (`√num_position_embeddings`).
    pub pos_side: usize,
    pub act: Gelu,
    pub rope_theta: f64,
    pub ln_eps: f32,
    /// `<|image_pad|>`: one per merged patch in the prompt.
    pub image_token: u32,
    pub vision_start_token: Option<u32>,
    pub vision_end_token: Option<u32>,
}

impl VisionConfig {
    /// The `vision_config` of a multimodal `config.json` (`None` when there is none), for a
    /// language model of width `text_hidden` and `vocab` tokens.
    pub fn from_hf(
        raw: &RawConfig,
        text_hidden: usize,
        vocab: usize,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(v) = &raw.vision_config else {
            return Ok(None);
        };
        // Present here; positive and within bounds in `checked`.
        let need = |x: Option<usize>, field: &'static str| x.ok_or(ConfigError::Missing(field));
        let depth = need(v.depth, "vision_config.depth")?;
        let hidden = need(v.hidden_size, "vision_config.hidden_size")?;
        let intermediate = need(v.intermediate_size, "vision_config.intermediate_size")?;
        let heads = need(v.num_heads, "vision_config.num_heads")?;
        let in_channels = need(v.in_channels, "vision_config.in_channels")?;
        let patch = need(v.patch_size, "vision_config.patch_size")?;
        let temporal_patch = need(v.temporal_patch_size, "vision_config.temporal_patch_size")?;
        let merge = need(v.spatial_merge_size, "vision_config.spatial_merge_size")?;
        let out_hidden = need(v.out_hidden_size, "vision_config.out_hidden_size")?;
        let n_pos = need(
            v.num_position_embeddings,
            "vision_config.num_position_embeddings",
        )?;
        let invalid = |field: &'static str, why: String| ConfigError::Invalid { field, why };
        let pos_side = n_pos.isqrt();
        if pos_side * pos_side != n_pos {
            return Err(invalid(
                "vision_config.num_position_embeddings",
                format!("{n_pos} is not a square"),
            ));
        }
        let act = match v.hidden_act.as_deref() {
            Some("gelu_pytorch_tanh") => Gelu::Tanh,
            Some("gelu") => Gelu::Erf,
            Some(other) => {
                return Err(ConfigError::Unsupported {
                    field: "vision_config.hidden_act",
                    why: format!("{other:?}"),
                });
            }
            None => return Err(ConfigError::Missing("vision_config.hidden_act")),
        };
        if v.deepstack_visual_indexes
            .as_ref()
            .is_some_and(|d| !d.is_empty())
        {
            return Err(ConfigError::Unsupported {
                field: "vision_config.deepstack_visual_indexes",
                why: "deep-stack features (Qwen3-VL)".into(),
            });
        }
        let rope = v.rope_parameters.as_ref();
        if let Some(t) = rope.and_then(|r| r.rope_type.as_deref())
            && t != "axial"
        {
            return Err(ConfigError::Unsupported {
                field: "vision_config.rope_parameters.rope_type",
                why: format!("{t:?} (the tower's rotary embedding is axial)"),
            });
        }
        let rope_theta = rope
            .and_then(|r| r.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA);
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(invalid(
                "vision_config.rope_parameters.rope_theta",
                format!("{rope_theta} is not a finite number above 1"),
            ));
        }
        let image_token = raw
            .image_token_id
            .ok_or(ConfigError::Missing("image_token_id"))?;
        Ok(Some(
            VisionConfig {
                depth,
                hidden,
                intermediate,
                heads,
                in_channels,
                patch,
                temporal_patch,
                merge,
                out_hidden,
                pos_side,
                act,
                rope_theta,
                ln_eps: HF_LN_EPS,
                image_token,
                vision_start_token: raw.vision_start_token_id,
                vision_end_token: raw.vision_end_token_id,
            }
            .checked(text_hidden, vocab)?,
        ))
    }

    /// The tower of a llama.cpp `mmproj` file (`clip.projector_type` `qwen3vl_merger`), for a
    /// language model of width `text_hidden` and `vocab` tokens whose tokenizer writes images
    /// as `image_token`; `temporal_patch` is the number of per-frame patch kernels the file
    /// holds.
    pub fn from_mmproj(
        md: &dyn Metadata,
        text_hidden: usize,
        vocab: usize,
        image_token: u32,
        temporal_patch: usize,
    ) -> Result<Self, ConfigError> {
        let bad = |key: &str, why: String| ConfigError::InvalidKey {
            key: key.to_string(),
            why,
        };
        let num = |key: &str| -> Result<usize, ConfigError> {
            let v = md
                .u64(key)
                .map_err(|e| bad(key, e))?
                .ok_or_else(|| ConfigError::MissingKey(key.to_string()))?;
            usize::try_from(v).map_err(|_| bad(key, format!("{v} is too large")))
        };
        match md
            .string(keys::ARCHITECTURE)
            .map_err(|e| bad(keys::ARCHITECTURE, e))?
        {
            Some(a) if a == keys::CLIP_ARCH => {}
            other => {
                return Err(bad(
                    keys::ARCHITECTURE,
                    format!("{other:?}: not an mmproj file (`clip`)"),
                ));
            }
        }
        match md
            .string(keys::CLIP_PROJECTOR_TYPE)
            .map_err(|e| bad(keys::CLIP_PROJECTOR_TYPE, e))?
            .as_deref()
        {
            Some(p) if p == keys::CLIP_PROJECTOR_QWEN3VL => {}
            other => {
                return Err(bad(
                    keys::CLIP_PROJECTOR_TYPE,
                    format!(
                        "{other:?}: qinfer reads Qwen3.5/3.6 towers (`{}`)",
                        keys::CLIP_PROJECTOR_QWEN3VL
                    ),
                ));
            }
        }
        let patch = num(keys::CLIP_PATCH)?;
        let image_size = num(keys::CLIP_IMAGE_SIZE)?;
        let ln_eps = md
            .f64(keys::CLIP_LN_EPS)
            .map_err(|e| bad(keys::CLIP_LN_EPS, e))?
            .unwrap_or(HF_LN_EPS as f64) as f32;
        if !(ln_eps.is_finite() && ln_eps > 0.0 && ln_eps < 1.0) {
            return Err(bad(keys::CLIP_LN_EPS, format!("{ln_eps} is not in (0, 1)")));
        }
        if patch == 0 || !image_size.is_multiple_of(patch) {
            return Err(bad(
                keys::CLIP_IMAGE_SIZE,
                format!("{image_size} is not a multiple of the patch size {patch}"),
            ));
        }
        VisionConfig {
            depth: num(keys::CLIP_BLOCKS)?,
            hidden: num(keys::CLIP_HIDDEN)?,
            intermediate: num(keys::CLIP_FFN)?,
            heads: num(keys::CLIP_HEADS)?,
            in_channels: 3,
            patch,
            temporal_patch,
            merge: num(keys::CLIP_MERGE)?,
            out_hidden: num(keys::CLIP_PROJECTION)?,
            pos_side: image_size / patch,
            act: Gelu::Tanh,
            rope_theta: DEFAULT_ROPE_THETA,
            ln_eps,
            image_token,
            vision_start_token: None,
            vision_end_token: None,
        }
        .checked(text_hidden, vocab)
    }

    /// The one validation of a tower's hyper-parameters, whatever their source: every
    /// dimension positive and within [`crate::config::LIMITS`], RGB input, the heads' width
    /// divisible by 4 (2-D rotary embedding), the output as wide as the language model of
    /// width `text_hidden`, the image tokens inside its `vocab`.
    fn checked(self, text_hidden: usize, vocab: usize) -> Result<Self, ConfigError> {
        let invalid = |field: &'static str, why: String| ConfigError::Invalid { field, why };
        for (v, f) in [
            (self.depth, "vision_config.depth"),
            (self.hidden, "vision_config.hidden_size"),
            (self.intermediate, "vision_config.intermediate_size"),
            (self.heads, "vision_config.num_heads"),
            (self.patch, "vision_config.patch_size"),
            (self.temporal_patch, "vision_config.temporal_patch_size"),
            (self.merge, "vision_config.spatial_merge_size"),
            (self.out_hidden, "vision_config.out_hidden_size"),
            (self.in_channels, "vision_config.in_channels"),
            (
                self.pos_side.saturating_mul(self.pos_side),
                "vision_config.num_position_embeddings",
            ),
        ] {
            positive(v, f)?;
            within(v, f)?;
        }
        if self.in_channels != 3 {
            return Err(invalid(
                "vision_config.in_channels",
                format!("{}: images are RGB", self.in_channels),
            ));
        }
        if self.out_hidden != text_hidden {
            return Err(invalid(
                "vision_config.out_hidden_size",
                format!(
                    "{} ≠ the language model's hidden size {text_hidden}: the tower is for \
                     another model",
                    self.out_hidden
                ),
            ));
        }
        for (t, field) in [
            (Some(self.image_token), "image_token_id"),
            (self.vision_start_token, "vision_start_token_id"),
            (self.vision_end_token, "vision_end_token_id"),
        ] {
            if let Some(t) = t
                && t as usize >= vocab
            {
                return Err(invalid(
                    field,
                    format!("{t} is outside the vocabulary of {vocab}"),
                ));
            }
        }
        let (h, n) = (self.hidden, self.heads);
        if !h.is_multiple_of(n) || !(h / n).is_multiple_of(4) {
            return Err(invalid(
                "vision_config.num_heads",
                format!(
                    "hidden size {h} / {n} heads is not a head width divisible by 4 (2-D \
                     rotary embedding)"
                ),
            ));
        }
        Ok(self)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Values per patch: `C · Tp · p · p`.
    pub fn patch_values(&self) -> usize {
        self.in_channels * self.temporal_patch * self.patch * self.patch
    }

    /// Language-model positions an image of patch grid `(t, h, w)` takes.
    pub fn tokens_for(&self, grid: [usize; 3]) -> usize {
        grid[0] * (grid[1] / self.merge) * (grid[2] / self.merge)
    }
}

/// Why an image cannot be encoded. The model is unchanged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VisionError {
    #[error("this model has no vision tower")]
    NoTower,
    #[error(
        "image patch grid {grid:?}: height and width must be positive multiples of the merge \
         size {merge}"
    )]
    Grid { grid: [usize; 3], merge: usize },
    #[error("image patches are [{rows}, {cols}], expected [{want_rows}, {want_cols}]")]
    Patches {
        rows: usize,
        cols: usize,
        want_rows: usize,
        want_cols: usize,
    },
}

struct VisionBlock {
    norm1: (Vec<f32>, Vec<f32>),
    norm2: (Vec<f32>, Vec<f32>),
    qkv: (Weight, Vec<f32>),
    proj: (Weight, Vec<f32>),
    fc1: (Weight, Vec<f32>),
    fc2: (Weight, Vec<f32>),
}

impl std::fmt::Debug for VisionBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisionBlock").finish_non_exhaustive()
    }
}

impl Clone for VisionBlock {
    fn clone(&self) -> Self {
        VisionBlock {
            norm1: self.norm1.clone(),
            norm2: self.norm2.clone(),
            qkv: self.qkv.clone(),
            proj: self.proj.clone(),
            fc1: self.fc1.clone(),
            fc2: self.fc2.clone(),
        }
    }
}

/// The patch embedding's kernel as the file stores it.
#[derive(Clone, Debug)]
enum PatchKernel {
    /// `[hidden, C·Tp·p·p]`: the `Conv3d` kernel (Hugging Face).
    Fused(Weight),
    /// One `[hidden, C·p·p]` kernel per frame (llama.cpp `mmproj`): the embedding is the sum
    /// of each frame's values against its kernel.
    Frames(Vec<Weight>),
}

/// The loaded tower.
#[derive(Clone, Debug)]
pub struct VisionTower {
    pub config: VisionConfig,
    patch: PatchKernel,
    patch_bias: Vec<f32>,
    /// `[side², hidden]`.
    pos: Weight,
    blocks: Vec<VisionBlock>,
    merger_norm: (Vec<f32>, Vec<f32>),
    /// `[4·hidden, 4·hidden]`.
    merger_fc1: (Weight, Vec<f32>),
    /// `[out_hidden, 4·hidden]`.
    merger_fc2: (Weight, Vec<f32>),
    /// `θ^(−2j / (D/2))` for `j < D/4`, `f32` as the reference computes them.
    inv_freq: Vec<f32>,
}

impl VisionTower {
    /// Loads the tower's tensors (`loader`'s naming) for `config`.
    pub fn load(ld: &Loader<'_>, config: VisionConfig) -> Result<Self, LoadError> {
        let c = &config;
        let h = c.hidden;
        let merged = h * c.merge * c.merge;
        let id = TensorId::Vision;
        let linear = |w: VisionTensor, b: VisionTensor, rows: usize, cols: usize| {
            Ok::<_, LoadError>((ld.matrix(id(w), rows, cols)?, ld.f32s(id(b), &[&[rows]])?))
        };
        let norm = |w: VisionTensor, b: VisionTensor, n: usize| {
            Ok::<_, LoadError>((ld.f32s(id(w), &[&[n]])?, ld.f32s(id(b), &[&[n]])?))
        };
        let patch = match ld.naming() {
            Naming::Hf(_) => PatchKernel::Fused(ld.matrix_shaped(
                id(VisionTensor::PatchWeight),
                h,
                c.patch_values(),
                &[h, c.in_channels, c.temporal_patch, c.patch, c.patch],
            )?),
            Naming::Gguf => {
                let frame = c.in_channels * c.patch * c.patch;
                let shape = [h, c.in_channels, c.patch, c.patch];
                let kernels = [VisionTensor::PatchWeight, VisionTensor::PatchWeightT1];
                if c.temporal_patch > kernels.len() {
                    return Err(LoadError::Shape {
                        name: ld.name(id(VisionTensor::PatchWeight)),
                        expected: vec![kernels.len()],
                        got: vec![c.temporal_patch],
                    });
                }
                PatchKernel::Frames(
                    kernels[..c.temporal_patch]
                        .iter()
                        .map(|&k| ld.matrix_shaped(id(k), h, frame, &shape))
                        .collect::<Result<_, _>>()?,
                )
            }
        };
        let patch_bias = ld.f32s(id(VisionTensor::PatchBias), &[&[h]])?;
        let pos = ld.matrix(id(VisionTensor::PosEmbed), c.pos_side * c.pos_side, h)?;
        let mut blocks = Vec::with_capacity(c.depth);
        for i in 0..c.depth {
            use VisionBlockTensor as B;
            let t = |b: B| VisionTensor::Block(i, b);
            blocks.push(VisionBlock {
                norm1: norm(t(B::Norm1Weight), t(B::Norm1Bias), h)?,
                norm2: norm(t(B::Norm2Weight), t(B::Norm2Bias), h)?,
                qkv: linear(t(B::QkvWeight), t(B::QkvBias), 3 * h, h)?,
                proj: linear(t(B::ProjWeight), t(B::ProjBias), h, h)?,
                fc1: linear(t(B::Fc1Weight), t(B::Fc1Bias), c.intermediate, h)?,
                fc2: linear(t(B::Fc2Weight), t(B::Fc2Bias), h, c.intermediate)?,
            });
        }
        let merger_norm = norm(
            VisionTensor::MergerNormWeight,
            VisionTensor::MergerNormBias,
            h,
        )?;
        let merger_fc1 = linear(
            VisionTensor::MergerFc1Weight,
            VisionTensor::MergerFc1Bias,
            merged,
            merged,
        )?;
        let merger_fc2 = linear(
            VisionTensor::MergerFc2Weight,
            VisionTensor::MergerFc2Bias,
            c.out_hidden,
            merged,
        )?;
        let quarter = c.head_dim() / 4;
        let half = (c.head_dim() / 2) as f32;
        let inv_freq = (0..quarter)
            .map(|j| 1.0 / (c.rope_theta as f32).powf((2 * j) as f32 / half))
            .collect();
        Ok(VisionTower {
            config,
            patch,
            patch_bias,
            pos,
            blocks,
            merger_norm,
            merger_fc1,
            merger_fc2,
            inv_freq,
        })
    }

    /// Every weight matrix, for the backend to prepare.
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Weight> {
        let mut ws: Vec<&mut Weight> = match &mut self.patch {
            PatchKernel::Fused(w) => vec![w],
            PatchKernel::Frames(ws) => ws.iter_mut().collect(),
        };
        ws.extend([
            &mut self.pos,
            &mut self.merger_fc1.0,
            &mut self.merger_fc2.0,
        ]);
        for b in &mut self.blocks {
            ws.extend([&mut b.qkv.0, &mut b.proj.0, &mut b.fc1.0, &mut b.fc2.0]);
        }
        ws
    }

    /// The `(row, column)` of every patch of one frame in the processor's order: 2×2 (merge ×
    /// merge) neighbourhoods row by row, each neighbourhood's patches row by row.
    fn patch_coords(&self, h: usize, w: usize) -> Vec<(usize, usize)> {
        let m = self.config.merge;
        let mut out = Vec::with_capacity(h * w);
        for br in 0..h / m {
            for bc in 0..w / m {
                for ir in 0..m {
                    for ic in 0..m {
                        out.push((br * m + ir, bc * m + ic));
                    }
                }
            }
        }
        out
    }

    /// Bilinear (`align_corners`) taps of the position table along one axis of `size` patches,
    /// for index `i`: two table indices and their weights, in `f32` as the reference computes.
    fn axis_taps(&self, i: usize, size: usize) -> [(usize, f32); 2] {
        let side = self.config.pos_side;
        let src = i as f32 * (side - 1) as f32 / (size.max(2) - 1) as f32;
        let floor = src.floor();
        let f = floor as usize;
        let clamp = |x: usize| x.min(side - 1);
        let d0 = (src - floor).abs();
        let d1 = (src - floor - 1.0).abs();
        [
            (clamp(f), (1.0 - d0).max(0.0)),
            (clamp(f + 1), (1.0 - d1).max(0.0)),
        ]
    }

    /// The merged embeddings `[t·(h/m)·(w/m), out_hidden]` of one image or video whose patches
    /// `pixels` (`[t·h·w, C·Tp·p·p]`, in the processor's order) form the grid `(t, h, w)`.
    pub fn encode(
        &self,
        be: &dyn Backend,
        pixels: &Mat,
        grid: [usize; 3],
    ) -> Result<Mat, VisionError> {
        let mut job = self.begin(be, pixels, grid)?;
        loop {
            if let Some(rows) = self.advance(be, &mut job) {
                return Ok(rows);
            }
        }
    }

    /// [`VisionTower::encode`] as a job a caller advances a block at a time
    /// ([`VisionTower::advance`]), so that a long encode can share time with other work: the
    /// patch embedding and the position table now.
    pub fn begin(
        &self,
        be: &dyn Backend,
        pixels: &Mat,
        grid: [usize; 3],
    ) -> Result<EncodeJob, VisionError> {
        let c = &self.config;
        let [t, gh, gw] = grid;
        let m = c.merge;
        if t == 0 || gh == 0 || gw == 0 || !gh.is_multiple_of(m) || !gw.is_multiple_of(m) {
            return Err(VisionError::Grid { grid, merge: m });
        }
        let frame = gh.checked_mul(gw);
        let n = frame.and_then(|f| f.checked_mul(t));
        if n != Some(pixels.rows) || pixels.cols != c.patch_values() || !pixels.is_whole() {
            return Err(VisionError::Patches {
                rows: pixels.rows,
                cols: pixels.cols,
                want_rows: n.unwrap_or(usize::MAX),
                want_cols: c.patch_values(),
            });
        }
        let (n, frame) = (pixels.rows, gh * gw);
        let coords = self.patch_coords(gh, gw);

        // Patch embedding and the resampled position table.
        let mut x = match &self.patch {
            PatchKernel::Fused(w) => be.matmul(&be.upload(pixels.clone()), w),
            PatchKernel::Frames(ws) => {
                // Frame `t`'s values of every channel: columns `(c·Tp + t)·p²` onwards.
                let p2 = c.patch * c.patch;
                let mut sum: Option<qinfer_backend::Act> = None;
                for (t, w) in ws.iter().enumerate() {
                    let mut frame = Mat::zeros(n, c.in_channels * p2);
                    for (dst, src) in frame.rows_iter_mut().zip(pixels.rows_iter()) {
                        for ch in 0..c.in_channels {
                            let from = (ch * c.temporal_patch + t) * p2;
                            dst[ch * p2..(ch + 1) * p2].copy_from_slice(&src[from..from + p2]);
                        }
                    }
                    let y = be.matmul(&be.upload(frame), w);
                    match &mut sum {
                        None => sum = Some(y),
                        Some(s) => be.add(s, &y),
                    }
                }
                sum.expect("at least one frame kernel")
            }
        };
        be.add_bias(&mut x, &self.patch_bias);
        let mut taps: [(Vec<u32>, Vec<f32>); 4] = Default::default();
        for i in 0..n {
            let (r, col) = coords[i % frame];
            let (th, tw) = (self.axis_taps(r, gh), self.axis_taps(col, gw));
            for (k, ((hi, hw), (wi, ww))) in [
                (th[0], tw[0]),
                (th[0], tw[1]),
                (th[1], tw[0]),
                (th[1], tw[1]),
            ]
            .into_iter()
            .enumerate()
            {
                taps[k].0.push((hi * c.pos_side + wi) as u32);
                taps[k].1.push(hw * ww);
            }
        }
        let all: Vec<usize> = (0..n).collect();
        let mut pos = be.zeros(n, c.hidden);
        for (ids, weights) in &taps {
            be.scatter_add(&mut pos, &be.embed(&self.pos, ids), &all, weights);
        }
        be.add(&mut x, &pos);

        // Axial rotary angles: the row's frequencies, then the column's.
        let quarter = self.inv_freq.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n * 2 * quarter), Vec::new());
        sin.reserve(n * 2 * quarter);
        for i in 0..n {
            let (r, col) = coords[i % frame];
            for p in [r, col] {
                for &f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok(EncodeJob {
            x,
            cos,
            sin,
            frames: t,
            frame,
            next_block: 0,
        })
    }

    /// Runs the job's next block, or (after the last) the merger, whose rows
    /// `[t·(h/m)·(w/m), out_hidden]` it returns: then the job is done.
    pub fn advance(&self, be: &dyn Backend, job: &mut EncodeJob) -> Option<Mat> {
        let c = &self.config;
        let d = c.head_dim();
        let shape = AttentionShape {
            n_heads: c.heads,
            n_kv_heads: c.heads,
            head_dim: d,
            scale: (d as f32).powf(-0.5),
        };
        let (t, frame, m) = (job.frames, job.frame, c.merge);
        let (cos, sin) = (&job.cos, &job.sin);
        let x = &mut job.x;
        if let Some(b) = self.blocks.get(job.next_block) {
            job.next_block += 1;
            let mut h = x.clone();
            be.layer_norm(&mut h, &b.norm1.0, &b.norm1.1, c.ln_eps);
            let mut qkv = be.matmul(&h, &b.qkv.0);
            be.add_bias(&mut qkv, &b.qkv.1);
            let mut q = be.cols(&qkv, 0, c.hidden);
            let mut k = be.cols(&qkv, c.hidden, c.hidden);
            let v = be.cols(&qkv, 2 * c.hidden, c.hidden);
            be.rope(&mut q, d, cos, sin);
            be.rope(&mut k, d, cos, sin);
            // Each frame attends within itself.
            let frames: Vec<_> = (0..t)
                .map(|f| {
                    let r = f * frame..(f + 1) * frame;
                    be.attend_all(
                        &be.rows(&q, r.clone()),
                        &be.rows(&k, r.clone()),
                        &be.rows(&v, r),
                        shape,
                    )
                })
                .collect();
            let o = if t == 1 {
                frames.into_iter().next().expect("one frame")
            } else {
                be.stack(&frames)
            };
            let mut o = be.matmul(&o, &b.proj.0);
            be.add_bias(&mut o, &b.proj.1);
            be.add(x, &o);
            let mut h = x.clone();
            be.layer_norm(&mut h, &b.norm2.0, &b.norm2.1, c.ln_eps);
            let mut f = be.matmul(&h, &b.fc1.0);
            be.add_bias(&mut f, &b.fc1.1);
            be.gelu(&mut f, c.act);
            let mut f = be.matmul(&f, &b.fc2.0);
            be.add_bias(&mut f, &b.fc2.1);
            be.add(x, &f);
            return None;
        }
        let n = x.rows();
        let mut x = std::mem::replace(x, be.zeros(0, c.hidden));
        be.layer_norm(&mut x, &self.merger_norm.0, &self.merger_norm.1, c.ln_eps);
        let x = be.reshape(x, n / (m * m), c.hidden * m * m);
        let mut y = be.matmul(&x, &self.merger_fc1.0);
        be.add_bias(&mut y, &self.merger_fc1.1);
        be.gelu(&mut y, Gelu::Erf);
        let mut y = be.matmul(&y, &self.merger_fc2.0);
        be.add_bias(&mut y, &self.merger_fc2.1);
        Some(be.download(y))
    }
}

/// An image part-way through the tower ([`VisionTower::begin`], [`VisionTower::advance`]).
#[derive(Debug)]
pub struct EncodeJob {
    /// The patches' rows after the blocks run so far, on the backend.
    x: qinfer_backend::Act,
    /// The axial rotary angles of every patch.
    cos: Vec<f32>,
    sin: Vec<f32>,
    frames: usize,
    /// Patches per frame (each frame attends within itself).
    frame: usize,
    next_block: usize,
}

impl EncodeJob {
    /// Steps left: the blocks not run yet and the merger.
    pub fn steps_left(&self, tower: &VisionTower) -> usize {
        tower.blocks.len() - self.next_block.min(tower.blocks.len()) + 1
    }
}

/// One image of a prompt: where its pad tokens start and its patch grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImagePlacement {
    /// Index in the prompt of its first pad token.
    pub start: usize,
    /// `(t, h, w)` in patches.
    pub grid: [usize; 3],
}

/// The mRoPE positions of a prompt of `len` tokens whose images (in order, not overlapping,
/// each `tokens_for(grid)` pad tokens from `start`) are `images`, as the reference's
/// `get_rope_index` computes them: text tokens count up in all three streams; an image's
/// tokens starting at position `s` get `(s + ti, s + hi, s + wi)` over its merged grid; the
/// text after it resumes at `s + max(h/m, w/m)`. Also returns the offset of later positions:
/// the position after the prompt minus `len` (the `rope_delta` decode steps add).
///
/// `None` if an image does not fit the prompt or overlaps the one before it.
pub fn mrope_positions(
    len: usize,
    images: &[ImagePlacement],
    merge: usize,
) -> Option<(Vec<Position3>, i64)> {
    let mut out = Vec::with_capacity(len);
    let mut next: u64 = 0;
    let p32 = |v: u64| u32::try_from(v).ok();
    for img in images {
        let [t, h, w] = img.grid;
        let (mh, mw) = (h / merge, w / merge);
        let count = t.checked_mul(mh)?.checked_mul(mw)?;
        if img.start < out.len() || img.start.checked_add(count)? > len {
            return None;
        }
        while out.len() < img.start {
            let p = p32(next)?;
            out.push([p, p, p]);
            next += 1;
        }
        let s = next;
        for ti in 0..t {
            for hi in 0..mh {
                for wi in 0..mw {
                    out.push([
                        p32(s + ti as u64)?,
                        p32(s + hi as u64)?,
                        p32(s + wi as u64)?,
                    ]);
                }
            }
        }
        next = s + mh.max(mw) as u64;
    }
    while out.len() < len {
        let p = p32(next)?;
        out.push([p, p, p]);
        next += 1;
    }
    let delta = i64::try_from(next).ok()? - i64::try_from(len).ok()?;
    Some((out, delta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_only_positions_count_up() {
        let (p, d) = mrope_positions(3, &[], 2).unwrap();
        assert_eq!(p, vec![[0, 0, 0], [1, 1, 1], [2, 2, 2]]);
        assert_eq!(d, 0);
    }

    #[test]
    fn an_image_takes_its_grid_and_the_text_resumes_past_its_longer_side() {
        // 2 text tokens, a 3×2 merged grid (6 pad tokens), 2 text tokens.
        let img = ImagePlacement {
            start: 2,
            grid: [1, 6, 4],
        };
        let (p, d) = mrope_positions(10, &[img], 2).unwrap();
        assert_eq!(&p[..2], &[[0, 0, 0], [1, 1, 1]]);
        assert_eq!(
            &p[2..8],
            &[
                [2, 2, 2],
                [2, 2, 3],
                [2, 3, 2],
                [2, 3, 3],
                [2, 4, 2],
                [2, 4, 3]
            ]
        );
        assert_eq!(&p[8..], &[[5, 5, 5], [6, 6, 6]]);
        assert_eq!(d, 7 - 10);
        assert!(
            mrope_positions(7, &[img], 2).is_none(),
            "image past the end"
        );
        let overlapping = [img, ImagePlacement { start: 4, ..img }];
        assert!(mrope_positions(20, &overlapping, 2).is_none());
    }
}
