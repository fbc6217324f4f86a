//! The Qwen3.5 / Qwen3.6 text model: dense (0.8B…27B) and MoE (35B-A3B…397B-A17B).
//!
//! ```text
//! x = embed[ids]                                          [T, H]
//! for each layer:
//!     x = x + Mixer(RMSNorm(x))     Mixer = GatedDeltaNet | GatedAttention (by layer kind)
//!     x = x + FFN(RMSNorm(x))       FFN = SwiGLU MLP | MoE
//! logits = RMSNorm(x) · lm_headᵀ                          [T, V]   (lm_head = embed if tied)
//! ```
//!
//! The model holds weights only. Everything a sequence accumulates lives in
//! [`SequenceState`], passed `&mut` into [`Qwen35::forward`]; positions come from it too.

use std::path::Path;

use qinfer_cache::{KvType, LayerSpec, LayerState, SequenceState};
use qinfer_cpu::ops;
use qinfer_formats::hf_config::RawConfig;
use qinfer_formats::safetensors::Checkpoint;
use qinfer_tensor::{DType, Mat, Weight};

use crate::config::{FeedForwardConfig, LayerKind, ModelConfig};
use crate::error::{ForwardError, LoadError};
pub use crate::layers::gated_deltanet::DeltaNetPath;
use crate::layers::{
    attention::Attention,
    gated_deltanet::GatedDeltaNet,
    mlp::Mlp,
    moe::Moe,
    norm::RmsNorm,
    rope::{Rope, text_position},
};
use crate::loader::{Loader, TensorId, TensorSource};
use crate::names::{self, Global, LayerTensor, Naming};

/// Token mixer of one layer.
#[derive(Clone, Debug)]
pub enum Mixer {
    DeltaNet(GatedDeltaNet),
    Attention(Attention),
}

/// Feed-forward block of one layer.
#[derive(Clone, Debug)]
pub enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

impl FeedForward {
    fn forward(&self, x: &Mat) -> Mat {
        match self {
            FeedForward::Dense(m) => m.forward(x),
            FeedForward::Moe(m) => m.forward(x),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub input_norm: RmsNorm,
    pub mixer: Mixer,
    pub post_attention_norm: RmsNorm,
    pub feed_forward: FeedForward,
}

/// Most positions [`Qwen35::forward`] and [`Qwen35::prefill`] take through the layers at once:
/// a longer step runs in pieces of this many, each piece's activations (about 120 KB per
/// position for Qwen3.5-0.8B) freed before the next, so prefill memory stays flat however long
/// the prompt. A multiple of the delta rule's chunk length; big enough that every matmul of a
/// piece is a GEMM whose weights are read once per 256 positions (prefill speed per token is
/// the same as with 512-position pieces).
pub const MAX_PIECE_TOKENS: usize = 256;
const _: () = assert!(MAX_PIECE_TOKENS.is_multiple_of(crate::layers::gated_deltanet::CHUNK));

/// Which positions get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every position of the step: `[T, V]`.
    All,
    /// Only the last: `[1, V]` (generation).
    Last,
}

/// One sequence's part of a [`Qwen35::forward_batch`] step.
#[derive(Debug)]
pub struct BatchItem<'a> {
    /// The tokens this step runs for the sequence (`T ≥ 1`).
    pub tokens: &'a [u32],
    pub state: &'a mut SequenceState,
    /// Whether the logits of the last position are needed.
    pub logits: bool,
}

/// Named intermediate tensors, reported to a trace callback (for layer-by-layer comparison
/// against a reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracePoint {
    /// Token embeddings, `[T, H]`.
    Embeddings,
    /// Residual stream after layer `l`, `[T, H]`.
    LayerOutput(usize),
    /// After the final norm, `[T, H]` (only the rows that get logits).
    FinalNorm,
}

/// Tensors in the checkpoint that the text model does not use (yet).
#[derive(Clone, Debug, Default)]
pub struct ExtraTensors {
    /// `mtp.*`: the multi-token-prediction head.
    pub mtp: Vec<String>,
    /// `model.visual.*`: the vision tower.
    pub vision: Vec<String>,
    /// Anything else.
    pub unknown: Vec<String>,
}

/// A loaded model.
#[derive(Clone, Debug)]
pub struct Qwen35 {
    pub config: ModelConfig,
    /// `[V, H]`.
    pub embed: Weight,
    pub layers: Vec<Layer>,
    pub final_norm: RmsNorm,
    /// `[V, H]`; shares the embedding's bytes when tied.
    pub lm_head: Weight,
    pub extras: ExtraTensors,
    rope: Rope,
    deltanet_path: DeltaNetPath,
    kv_type: KvType,
}

impl Qwen35 {
    /// Loads a Hugging Face model directory (`config.json` + safetensors).
    pub fn load_dir(dir: &Path) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::NotADirectory(dir.display().to_string()));
        }
        let config_path = dir.join("config.json");
        let raw = RawConfig::from_file(&config_path)?;
        let config = ModelConfig::from_hf(&raw).map_err(|source| LoadError::Config {
            path: config_path.display().to_string(),
            source,
        })?;
        let checkpoint = Checkpoint::open_dir(dir)?;
        Self::from_checkpoint(config, &checkpoint)
    }

    /// Builds the model from a validated config and an opened safetensors checkpoint.
    pub fn from_checkpoint(
        config: ModelConfig,
        checkpoint: &Checkpoint,
    ) -> Result<Self, LoadError> {
        let prefix = Loader::detect_hf_prefix(checkpoint)?;
        Self::from_source(config, checkpoint, Naming::Hf(prefix))
    }

    /// Builds the model from a validated config and any tensor source named by `naming`.
    pub fn from_source(
        config: ModelConfig,
        source: &dyn TensorSource,
        naming: Naming,
    ) -> Result<Self, LoadError> {
        let ld = Loader::new(source, naming, config.norm);
        let (h, v, eps) = (config.hidden, config.vocab, config.rms_norm_eps);
        let embed = ld.matrix(TensorId::Global(Global::Embed), v, h)?;
        let lm_head = if config.tie_embeddings && !ld.has(TensorId::Global(Global::LmHead)) {
            embed.clone()
        } else {
            ld.matrix(TensorId::Global(Global::LmHead), v, h)?
        };
        let mut layers = Vec::with_capacity(config.n_layers());
        for (l, kind) in config.layers.iter().enumerate() {
            let mixer = match kind {
                LayerKind::DeltaNet => {
                    Mixer::DeltaNet(GatedDeltaNet::load(&ld, l, config.deltanet, h, eps)?)
                }
                LayerKind::Attention => {
                    Mixer::Attention(Attention::load(&ld, l, config.attention, h, eps)?)
                }
            };
            let feed_forward = match config.feed_forward {
                FeedForwardConfig::Dense { intermediate } => FeedForward::Dense(Mlp::load(
                    &ld,
                    l,
                    [
                        LayerTensor::MlpGate,
                        LayerTensor::MlpUp,
                        LayerTensor::MlpDown,
                    ],
                    h,
                    intermediate,
                )?),
                FeedForwardConfig::Moe {
                    n_experts,
                    top_k,
                    expert_intermediate,
                    shared_intermediate,
                } => FeedForward::Moe(Moe::load(
                    &ld,
                    l,
                    h,
                    n_experts,
                    top_k,
                    expert_intermediate,
                    shared_intermediate,
                )?),
            };
            layers.push(Layer {
                input_norm: RmsNorm::load(&ld, TensorId::Layer(l, LayerTensor::InputNorm), h, eps)?,
                mixer,
                post_attention_norm: RmsNorm::load(
                    &ld,
                    TensorId::Layer(l, LayerTensor::PostAttentionNorm),
                    h,
                    eps,
                )?,
                feed_forward,
            });
        }
        let final_norm = RmsNorm::load(&ld, TensorId::Global(Global::FinalNorm), h, eps)?;
        let mut extras = ExtraTensors::default();
        for name in ld.unused() {
            match names::extra_in(naming, &name, config.n_layers()) {
                Some(names::Extra::Mtp) => extras.mtp.push(name),
                Some(names::Extra::Vision) => extras.vision.push(name),
                None => extras.unknown.push(name),
            }
        }
        let rope = Rope::new(&config.rope);
        Ok(Qwen35 {
            config,
            embed,
            layers,
            final_norm,
            lm_head,
            extras,
            rope,
            deltanet_path: DeltaNetPath::Auto,
            kv_type: KvType::default(),
        })
    }

    /// Chooses the form of the delta rule (default [`DeltaNetPath::Auto`]).
    pub fn set_deltanet_path(&mut self, path: DeltaNetPath) {
        self.deltanet_path = path;
    }

    /// Chooses how attention layers store their KV rows (default `f32`). Takes
    /// effect for states made after the call ([`Qwen35::new_state`]).
    pub fn set_kv_type(&mut self, kv_type: KvType) {
        self.kv_type = kv_type;
    }

    /// The KV type asked for; a layer whose rows it cannot store (Q8_0 needs a multiple of
    /// 32 values) uses [`KvType::for_width`] instead, as [`Qwen35::state_specs`] says.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// What each layer keeps per sequence.
    pub fn state_specs(&self) -> Vec<LayerSpec> {
        let c = &self.config;
        c.layers
            .iter()
            .map(|k| match k {
                LayerKind::Attention => {
                    let kv_width = c.attention.n_kv_heads * c.attention.head_dim;
                    LayerSpec::Attention {
                        kv_width,
                        kv_type: self.kv_type.for_width(kv_width),
                    }
                }
                LayerKind::DeltaNet => LayerSpec::DeltaNet {
                    conv_channels: c.deltanet.conv_dim(),
                    conv_kernel: c.deltanet.conv_kernel,
                    recurrent_len: c.deltanet.n_v_heads
                        * c.deltanet.k_head_dim
                        * c.deltanet.v_head_dim,
                },
            })
            .collect()
    }

    /// A fresh, empty sequence for this model.
    pub fn new_state(&self) -> SequenceState {
        SequenceState::new(&self.state_specs())
    }

    /// Runs `tokens` through the model, continuing the sequence in `state`; returns logits
    /// `[T, V]` or `[1, V]`. On error, `state` is unchanged.
    pub fn forward(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        logits: LogitsFor,
    ) -> Result<Mat, ForwardError> {
        self.forward_in_pieces(tokens, state, logits, self.deltanet_path)
    }

    /// [`Qwen35::forward`] for a piece of a prompt: the chunked delta rule even for a single
    /// token (unless the model is set to [`DeltaNetPath::Recurrent`]). Chunks start at the
    /// piece's first token, so a prompt cut into pieces at multiples of the chunk length gives
    /// exactly (bit for bit) the result of one call: that is what lets the prefix cache
    /// resume from a chunk-boundary snapshot without changing any number.
    pub fn prefill(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        logits: LogitsFor,
    ) -> Result<Mat, ForwardError> {
        let path = match self.deltanet_path {
            DeltaNetPath::Auto => DeltaNetPath::Chunked,
            other => other,
        };
        self.forward_in_pieces(tokens, state, logits, path)
    }

    /// [`Qwen35::forward`], reporting named intermediate tensors to `trace`.
    pub fn forward_traced(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        logits: LogitsFor,
        trace: &mut dyn FnMut(TracePoint, &Mat),
    ) -> Result<Mat, ForwardError> {
        self.forward_with(tokens, state, logits, self.deltanet_path, trace)
    }

    /// One pass of `tokens` through the layers in pieces of at most [`MAX_PIECE_TOKENS`],
    /// then the LM head for the positions `logits` asks for. The result is bit for bit that
    /// of one pass over all tokens: every matmul row, the attention of every query and the
    /// chunked delta rule (the pieces start at multiples of its chunk length, and a step of
    /// more than one token takes the chunked form in every piece, even a one-token last
    /// piece) do not depend on how the positions are grouped.
    fn forward_in_pieces(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        logits: LogitsFor,
        path: DeltaNetPath,
    ) -> Result<Mat, ForwardError> {
        if tokens.len() <= MAX_PIECE_TOKENS {
            return self.forward_with(tokens, state, logits, path, &mut |_, _| {});
        }
        self.check_step(tokens, state)?;
        let path = match path {
            DeltaNetPath::Auto => DeltaNetPath::Chunked,
            other => other,
        };
        let vocab = self.config.vocab;
        let mut all = match logits {
            LogitsFor::All => Mat::zeros(tokens.len(), vocab),
            LogitsFor::Last => Mat::zeros(0, vocab),
        };
        let pieces = tokens.len().div_ceil(MAX_PIECE_TOKENS);
        for (i, piece) in tokens.chunks(MAX_PIECE_TOKENS).enumerate() {
            let x = self.layers_pass(piece, state, path, &mut |_, _| {});
            match logits {
                LogitsFor::All => {
                    let at = i * MAX_PIECE_TOKENS * vocab;
                    let l = self.head(x, logits, &mut |_, _| {});
                    all.data[at..at + l.data.len()].copy_from_slice(&l.data);
                }
                LogitsFor::Last if i + 1 == pieces => {
                    return Ok(self.head(x, logits, &mut |_, _| {}));
                }
                LogitsFor::Last => {}
            }
        }
        Ok(all)
    }

    fn forward_with(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        logits: LogitsFor,
        path: DeltaNetPath,
        trace: &mut dyn FnMut(TracePoint, &Mat),
    ) -> Result<Mat, ForwardError> {
        self.check_step(tokens, state)?;
        let x = self.layers_pass(tokens, state, path, trace);
        Ok(self.head(x, logits, trace))
    }

    /// Embeddings and every layer for `tokens` (already checked), advancing `state`; returns
    /// the last layer's output `[T, H]`.
    fn layers_pass(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        path: DeltaNetPath,
        trace: &mut dyn FnMut(TracePoint, &Mat),
    ) -> Mat {
        let c = &self.config;
        let start = state.pos();
        let positions: Vec<_> = (start..start + tokens.len()).map(text_position).collect();

        let mut x = Mat::zeros(tokens.len(), c.hidden); // [T, H]
        for (row, &id) in x.rows_iter_mut().zip(tokens) {
            ops::embedding(&self.embed, id as usize, row);
        }
        trace(TracePoint::Embeddings, &x);
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.apply(&x);
            let mixed = match (&layer.mixer, state.layer_mut(l)) {
                (Mixer::DeltaNet(d), LayerState::DeltaNet(s)) => d.forward(&h, s, path),
                (Mixer::Attention(a), LayerState::Attention(kv)) => {
                    a.forward(&h, &positions, &self.rope, kv)
                }
                _ => unreachable!("state layout comes from this model's state_specs"),
            };
            ops::add_assign(&mut x.data, &mixed.data);
            let h = layer.post_attention_norm.apply(&x);
            let ff = layer.feed_forward.forward(&h);
            ops::add_assign(&mut x.data, &ff.data);
            trace(TracePoint::LayerOutput(l), &x);
        }
        state.advance(tokens.len());
        x
    }

    /// Final norm and LM head over the rows of `x` that `logits` asks for.
    fn head(&self, x: Mat, logits: LogitsFor, trace: &mut dyn FnMut(TracePoint, &Mat)) -> Mat {
        let mut last = match logits {
            LogitsFor::All => x,
            LogitsFor::Last => Mat::from_vec(x.row(x.rows - 1).to_vec(), 1, x.cols),
        };
        self.final_norm.forward(&mut last);
        trace(TracePoint::FinalNorm, &last);
        ops::matmul(&last, &self.lm_head)
    }

    /// Runs one step for many sequences at once: each [`BatchItem`] continues its own
    /// sequence with its own tokens (a prefill chunk or one decode token). Returns, per item in
    /// order, the logits `[V]` of its last position when it asked for them.
    ///
    /// Every matmul that does not mix positions (the Gated DeltaNet input and output
    /// projections, the MLP / MoE, and the LM head over the rows whose logits are needed) runs
    /// once over the stacked rows of all items `[ΣT, H]`, so a weight is streamed from memory
    /// once per step instead of once per sequence. What mixes positions runs per item segment
    /// against that item's state: the DeltaNet conv and delta rule, and the attention layers
    /// whole (their projections included, for now: `layers/attention.rs` is being reworked
    /// for paged KV storage, and its projections are a quarter of the mixer layers).
    /// Since the matmul computes every output row independently of the others, an item's
    /// logits equal [`Qwen35::forward`] of the same tokens on the same state.
    ///
    /// On error, every state is unchanged.
    pub fn forward_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Result<Vec<Option<Vec<f32>>>, ForwardError> {
        let c = &self.config;
        for item in items.iter() {
            self.check_step(item.tokens, item.state)?;
        }
        let total: usize = items.iter().map(|i| i.tokens.len()).sum();
        // Segment of each item in the stacked rows.
        let mut bounds = Vec::with_capacity(items.len());
        let mut at = 0;
        for item in items.iter() {
            bounds.push((at, at + item.tokens.len()));
            at += item.tokens.len();
        }
        let positions: Vec<Vec<_>> = items
            .iter()
            .map(|i| {
                let start = i.state.pos();
                (start..start + i.tokens.len()).map(text_position).collect()
            })
            .collect();

        let mut x = Mat::zeros(total, c.hidden); // [ΣT, H]
        for (row, &id) in x.rows_iter_mut().zip(items.iter().flat_map(|i| i.tokens)) {
            ops::embedding(&self.embed, id as usize, row);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.apply(&x);
            match &layer.mixer {
                Mixer::DeltaNet(d) => {
                    // Projections over all rows; the recurrence per sequence; the output
                    // projection over all rows again.
                    let p = d.project(&h);
                    let width = d.config.value_dim();
                    let mut o = Mat::zeros(total, width); // [ΣT, Nv·Dv]
                    for (n, item) in items.iter_mut().enumerate() {
                        let (a, b) = bounds[n];
                        let LayerState::DeltaNet(s) = item.state.layer_mut(l) else {
                            unreachable!("state layout comes from this model's state_specs")
                        };
                        let seg = d.mix(&p.rows(a, b), s, self.deltanet_path);
                        o.data[a * width..b * width].copy_from_slice(&seg.data);
                    }
                    let mixed = ops::matmul(&o, &d.out);
                    ops::add_assign(&mut x.data, &mixed.data);
                }
                Mixer::Attention(att) => {
                    for (n, item) in items.iter_mut().enumerate() {
                        let (a, b) = bounds[n];
                        let LayerState::Attention(kv) = item.state.layer_mut(l) else {
                            unreachable!("state layout comes from this model's state_specs")
                        };
                        let seg = Mat::from_vec(
                            h.data[a * c.hidden..b * c.hidden].to_vec(),
                            b - a,
                            c.hidden,
                        );
                        let mixed = att.forward(&seg, &positions[n], &self.rope, kv);
                        ops::add_assign(&mut x.data[a * c.hidden..b * c.hidden], &mixed.data);
                    }
                }
            }
            let h = layer.post_attention_norm.apply(&x);
            let ff = layer.feed_forward.forward(&h);
            ops::add_assign(&mut x.data, &ff.data);
        }
        for item in items.iter_mut() {
            item.state.advance(item.tokens.len());
        }
        let wanted: Vec<usize> = (0..items.len()).filter(|&n| items[n].logits).collect();
        let mut out = vec![None; items.len()];
        if wanted.is_empty() {
            return Ok(out);
        }
        let mut last = Mat::zeros(wanted.len(), c.hidden); // [N, H]
        for (r, &n) in wanted.iter().enumerate() {
            last.row_mut(r).copy_from_slice(x.row(bounds[n].1 - 1));
        }
        self.final_norm.forward(&mut last);
        let logits = ops::matmul(&last, &self.lm_head); // [N, V]
        for (r, &n) in wanted.iter().enumerate() {
            out[n] = Some(logits.row(r).to_vec());
        }
        Ok(out)
    }

    /// The checks a step must pass before it touches the state.
    fn check_step(&self, tokens: &[u32], state: &SequenceState) -> Result<(), ForwardError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(ForwardError::Empty);
        }
        if let Some((index, &id)) = tokens
            .iter()
            .enumerate()
            .find(|(_, id)| **id as usize >= c.vocab)
        {
            return Err(ForwardError::TokenOutOfRange {
                id,
                index,
                vocab: c.vocab,
            });
        }
        let start = state.pos();
        if start + tokens.len() > c.max_positions {
            return Err(ForwardError::ContextOverflow {
                used: start,
                needed: tokens.len(),
                limit: c.max_positions,
            });
        }
        if state.layers().len() != self.layers.len() {
            return Err(ForwardError::StateMismatch);
        }
        Ok(())
    }

    /// Number of parameters of the text model (the LM head counted once when tied).
    pub fn parameter_count(&self) -> usize {
        let c = &self.config;
        let mut n = self.embed.rows() * self.embed.cols() + c.hidden;
        if !c.tie_embeddings {
            n += self.lm_head.rows() * self.lm_head.cols();
        }
        let m = |w: &Weight| w.rows() * w.cols();
        let mlp = |x: &Mlp| m(&x.gate) + m(&x.up) + m(&x.down);
        for layer in &self.layers {
            n += layer.input_norm.weight.len() + layer.post_attention_norm.weight.len();
            n += match &layer.mixer {
                Mixer::DeltaNet(d) => {
                    m(&d.qkv)
                        + m(&d.z)
                        + m(&d.b)
                        + m(&d.a)
                        + m(&d.out)
                        + d.conv_taps.len()
                        + d.dt_bias.len()
                        + d.a_neg.len()
                        + d.norm.weight.len()
                }
                Mixer::Attention(a) => {
                    m(&a.q)
                        + m(&a.k)
                        + m(&a.v)
                        + m(&a.o)
                        + a.q_norm.weight.len()
                        + a.k_norm.weight.len()
                }
            };
            n += match &layer.feed_forward {
                FeedForward::Dense(x) => mlp(x),
                FeedForward::Moe(x) => {
                    m(&x.router)
                        + x.experts.iter().map(mlp).sum::<usize>()
                        + mlp(&x.shared)
                        + m(&x.shared_gate)
                }
            };
        }
        n
    }

    /// Storage type of the embedding (a proxy for the checkpoint's dtype).
    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }
}
