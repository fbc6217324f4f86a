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
//! [`SequenceState`], passed `&mut` into [`Qwen35::step`] inside a [`Span`] with the span's
//! inputs (token ids or embedding rows) and, optionally, explicit mRoPE positions.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use qinfer_backend::{Act, Backend};
use qinfer_cache::{KvType, LayerSpec, LayerState, SequenceState};
use qinfer_formats::hf_config::RawConfig;
use qinfer_formats::safetensors::Checkpoint;
use qinfer_tensor::{DType, Mat, Weight};

use crate::config::{FeedForwardConfig, LayerKind, ModelConfig, YarnParams};
use crate::error::{ConfigError, ForwardError, LoadError};
pub use crate::layers::gated_deltanet::DeltaNetPath;
use crate::layers::{
    attention::Attention,
    gated_deltanet::GatedDeltaNet,
    mlp::Mlp,
    moe::Moe,
    norm::RmsNorm,
    rope::{Position3, Rope, text_position},
};
use crate::loader::{Loader, TensorId, TensorSource};
use crate::mtp::MtpHead;
use crate::names::{self, Global, LayerTensor, MtpTensor, Naming, VisionTensor};
use crate::vision::{EncodeJob, VisionError, VisionTower};

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
    /// Layer `l`'s feed-forward block as `c` configures it (a layer index the loader maps,
    /// as for the MTP block's layer).
    pub(crate) fn load(ld: &Loader<'_>, l: usize, c: &ModelConfig) -> Result<Self, LoadError> {
        let h = c.hidden;
        Ok(match c.feed_forward {
            FeedForwardConfig::Dense { intermediate } => FeedForward::Dense(Mlp::load(
                ld,
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
                ld,
                l,
                h,
                n_experts,
                top_k,
                expert_intermediate,
                shared_intermediate,
            )?),
        })
    }

    /// Every weight matrix of the block.
    pub(crate) fn weights_mut(&mut self) -> Vec<&mut Weight> {
        fn mlp(m: &mut Mlp) -> [&mut Weight; 3] {
            [&mut m.gate, &mut m.up, &mut m.down]
        }
        match self {
            FeedForward::Dense(m) => mlp(m).into(),
            FeedForward::Moe(m) => {
                let mut ws = vec![&mut m.router, &mut m.shared_gate];
                ws.extend(mlp(&mut m.shared));
                for e in &mut m.experts {
                    ws.extend(mlp(e));
                }
                ws
            }
        }
    }

    pub(crate) fn forward(&self, b: &dyn Backend, x: &Act) -> Act {
        match self {
            FeedForward::Dense(m) => m.forward(b, x),
            FeedForward::Moe(m) => m.forward(b, x),
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
/// position for Qwen3.5-0.8B: 61 MB) freed before the next, so prefill memory stays flat however
/// long the prompt. A multiple of the delta rule's chunk length; big enough that every dense
/// matmul of a piece is a GEMM whose weights are read once per 512 positions, and that an MoE
/// layer's routed experts meet 16 tokens each on average (the 35B-A3B: 512 × 8 of 256), not 8
/// (256-position pieces: 35B-A3B-shape Q4_K_M pp512 ×1.07, `tools/bench_ab.sh`).
pub const MAX_PIECE_TOKENS: usize = 512;
const _: () = assert!(MAX_PIECE_TOKENS.is_multiple_of(crate::layers::gated_deltanet::CHUNK));

/// Most positions a span may keep for a rewind ([`Span::keep_states`]): a rewind replays the
/// recurrence over up to this many positions, so the step that keeps them stays short
/// (speculative drafts are a few tokens).
pub const MAX_KEPT_POSITIONS: usize = 16;

/// Which positions of a span return an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Rows {
    /// None.
    #[default]
    None,
    /// Only the last: `[1, ·]` (generation).
    Last,
    /// Every position of the span: `[T, ·]`.
    All,
    /// The last `n` positions (all of them if the span is shorter): `[min(n, T), ·]`.
    Tail(usize),
}

impl Rows {
    /// The positions `0..t` this selects.
    pub(crate) fn range(self, t: usize) -> std::ops::Range<usize> {
        match self {
            Rows::None => t..t,
            Rows::Last => t.saturating_sub(1)..t,
            Rows::All => 0..t,
            Rows::Tail(n) => t.saturating_sub(n)..t,
        }
    }
}

/// What a span feeds the first layer.
#[derive(Clone, Copy, Debug)]
pub enum SpanInput<'a> {
    /// Token ids, looked up in the embedding table.
    Tokens(&'a [u32]),
    /// Embedding rows `[T, H]` supplied by the caller (an image encoder's output): used as
    /// they are, in place of a table lookup.
    Embeddings(&'a Mat),
    /// Token ids whose rows `at` (ascending) take the caller's `rows` (`[at.len(), H]`, in
    /// order) instead of their table rows: a prompt whose image-pad tokens stand for an
    /// image's embeddings.
    Spliced {
        tokens: &'a [u32],
        at: &'a [usize],
        rows: &'a Mat,
    },
}

impl SpanInput<'_> {
    /// Positions the span covers.
    pub fn len(&self) -> usize {
        match self {
            SpanInput::Tokens(t) => t.len(),
            SpanInput::Embeddings(m) => m.rows,
            SpanInput::Spliced { tokens, .. } => tokens.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One sequence's part of a [`Qwen35::step`]: its inputs, where they sit, what it wants back.
#[derive(Debug)]
pub struct Span<'a> {
    pub input: SpanInput<'a>,
    /// The mRoPE position `(t, h, w)` of every input row. `None`: text positions, row `i` at
    /// `state.pos() + i` in all three streams. (The KV cache and the context limit count rows
    /// either way.)
    pub positions: Option<&'a [Position3]>,
    pub state: &'a mut SequenceState,
    /// Rows whose logits `[·, V]` are returned.
    pub logits: Rows,
    /// Rows whose final hidden state `[·, H]` is returned: after the final norm, the vector
    /// the LM head reads (and the MTP head takes with the next token's embedding).
    pub hidden: Rows,
    /// Form of the delta rule (a model set to one form by [`Qwen35::set_deltanet_path`]
    /// overrides it). [`DeltaNetPath::Auto`]: chunked for a span of more than one position
    /// (in every piece of it), recurrent for one. [`DeltaNetPath::Chunked`] is what prompt
    /// prefill uses, so a prompt cut at multiples of the chunk computes what one pass does.
    pub delta_rule: DeltaNetPath,
    /// Keep what it takes to return to any position of the span ([`Qwen35::rewind`]: a
    /// speculative step undone after its rejected positions): each DeltaNet layer's state
    /// before the step, its conv windows and the delta rule's inputs per position. Runs the
    /// delta rule token by token, giving bit for bit what one-token steps give. At most
    /// [`MAX_KEPT_POSITIONS`] positions.
    pub keep_states: bool,
}

impl<'a> Span<'a> {
    /// Text tokens continuing `state`, logits of the last position, nothing else.
    pub fn tokens(tokens: &'a [u32], state: &'a mut SequenceState) -> Self {
        Span {
            input: SpanInput::Tokens(tokens),
            positions: None,
            state,
            logits: Rows::Last,
            hidden: Rows::None,
            delta_rule: DeltaNetPath::Auto,
            keep_states: false,
        }
    }

    /// Caller-supplied embedding rows `[T, H]` continuing `state`, logits of the last
    /// position.
    pub fn embeddings(rows: &'a Mat, state: &'a mut SequenceState) -> Self {
        Span {
            input: SpanInput::Embeddings(rows),
            ..Span::tokens(&[], state)
        }
    }

    pub fn logits(self, logits: Rows) -> Self {
        Span { logits, ..self }
    }

    pub fn hidden(self, hidden: Rows) -> Self {
        Span { hidden, ..self }
    }

    pub fn positions(self, positions: &'a [Position3]) -> Self {
        Span {
            positions: Some(positions),
            ..self
        }
    }

    pub fn delta_rule(self, delta_rule: DeltaNetPath) -> Self {
        Span { delta_rule, ..self }
    }

    pub fn keep_states(self, keep_states: bool) -> Self {
        Span {
            keep_states,
            ..self
        }
    }
}

/// What a [`Qwen35::step`] returns for one span: the rows its [`Span::logits`] and
/// [`Span::hidden`] asked for, in position order (`None` where it asked for none).
#[derive(Clone, Debug, Default)]
pub struct SpanOutput {
    /// `[R, V]`.
    pub logits: Option<Mat>,
    /// `[R, H]`.
    pub hidden: Option<Mat>,
}

/// Named intermediate tensors, reported to a trace callback (for layer-by-layer comparison
/// against a reference). `T` counts the rows of one pass through the layers: every span's
/// rows of a step, stacked, or of one piece of it when a span is longer than
/// [`MAX_PIECE_TOKENS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracePoint {
    /// The first layer's input rows (token embeddings or supplied rows), `[T, H]`.
    Embeddings,
    /// Residual stream after layer `l`, `[T, H]`.
    LayerOutput(usize),
    /// After the final norm, `[R, H]` (only the rows that get logits or hidden states).
    FinalNorm,
}

/// A trace callback ([`Qwen35::step_traced`]): the tensors, copied off the backend.
type TraceFn<'a> = dyn FnMut(TracePoint, &Mat) + 'a;

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
    /// The multi-token-prediction head, when the checkpoint has one ([`crate::mtp`]).
    pub mtp: Option<MtpHead>,
    /// The vision tower, when the checkpoint has one and its config is usable
    /// ([`crate::vision`]).
    pub vision: Option<VisionTower>,
    pub(crate) rope: Rope,
    deltanet_path: DeltaNetPath,
    kv_type: KvType,
    /// Where every op of the forward pass runs ([`Qwen35::with_backend`]).
    backend: Arc<dyn Backend>,
}

impl Qwen35 {
    /// Loads a Hugging Face model directory (`config.json` + safetensors).
    pub fn load_dir(dir: &Path) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::NotADirectory(dir.display().to_string()));
        }
        let config_path = dir.join("config.json");
        let raw = RawConfig::from_file(&config_path)?;
        let config = ModelConfig::from_hf(&raw).map_err(|cause| LoadError::Config {
            path: config_path.display().to_string(),
            cause,
        })?;
        let checkpoint = Checkpoint::open_dir(dir)?;
        let mut model = Self::from_checkpoint(config, &checkpoint)?;
        if let Some(ids) = crate::mtp::draft_vocab_from_dir(dir)? {
            model.set_draft_vocab(&ids)?;
        }
        Ok(model)
    }

    /// Builds the model from a validated config and an opened safetensors checkpoint.
    pub fn from_checkpoint(
        config: ModelConfig,
        checkpoint: &Checkpoint,
    ) -> Result<Self, LoadError> {
        let prefix = Loader::detect_hf_prefix(&|n| checkpoint.tensor(n).is_some())?;
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
            let feed_forward = FeedForward::load(&ld, l, &config)?;
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
        let block = config.n_layers();
        let mtp = if config.mtp_layers > 0
            && ld.has(TensorId::Mtp {
                block,
                t: MtpTensor::Fc,
            }) {
            Some(MtpHead::load(&ld, &config, block)?)
        } else {
            None
        };
        let vision = match &config.vision {
            Some(Ok(vc)) if ld.has(TensorId::Vision(VisionTensor::PatchWeight)) => {
                Some(VisionTower::load(&ld, vc.clone())?)
            }
            _ => None,
        };
        let mut extras = ExtraTensors::default();
        for name in ld.unused() {
            match names::extra_in(naming, &name, config.n_layers()) {
                Some(names::Extra::Mtp) => extras.mtp.push(name),
                Some(names::Extra::Vision) => extras.vision.push(name),
                None => extras.unknown.push(name),
            }
        }
        let rope = Rope::new(&config.rope);
        let model = Qwen35 {
            config,
            embed,
            layers,
            final_norm,
            lm_head,
            extras,
            mtp,
            vision,
            rope,
            deltanet_path: DeltaNetPath::Auto,
            kv_type: KvType::default(),
            backend: Arc::new(qinfer_cpu::Cpu::from_env()),
        };
        let backend = model.backend.clone();
        model.with_backend(backend)
    }

    /// This model running on `backend`: every weight is handed to it once
    /// ([`Backend::prepare`]), and every op of every later step runs there. A model loads
    /// onto the CPU backend as the environment sets it up (`QINFER_ISA`, `QINFER_MATMUL`:
    /// `qinfer_cpu::Cpu::from_env`); this is how another backend, or the CPU backend with
    /// other settings, is chosen.
    pub fn with_backend(mut self, backend: Arc<dyn Backend>) -> Result<Self, LoadError> {
        for w in self.weights_mut() {
            *w = backend.prepare(w.clone())?;
        }
        self.backend = backend;
        Ok(self)
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &dyn Backend {
        &*self.backend
    }

    /// Every weight matrix (the LM head even when it shares the embedding's bytes).
    fn weights_mut(&mut self) -> Vec<&mut Weight> {
        let mut ws = vec![&mut self.embed, &mut self.lm_head];
        if let Some(m) = &mut self.mtp {
            ws.extend(m.weights_mut());
        }
        if let Some(v) = &mut self.vision {
            ws.extend(v.weights_mut());
        }
        for layer in &mut self.layers {
            match &mut layer.mixer {
                Mixer::DeltaNet(d) => {
                    ws.extend([&mut d.qkv, &mut d.z, &mut d.b, &mut d.a, &mut d.out])
                }
                Mixer::Attention(a) => ws.extend([&mut a.q, &mut a.k, &mut a.v, &mut a.o]),
            }
            ws.extend(layer.feed_forward.weights_mut());
        }
        ws
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

    /// Switches YaRN on (`Some`, unset parameters defaulted by
    /// [`ModelConfig::set_rope_scaling`]) or off, whatever the model file said; the context
    /// limit follows. States made before the call hold positions of the old rotation: make new
    /// ones.
    pub fn set_rope_scaling(&mut self, p: Option<YarnParams>) -> Result<(), ConfigError> {
        self.config.set_rope_scaling(p)?;
        self.rope = Rope::new(&self.config.rope);
        Ok(())
    }

    /// The KV type asked for; a layer whose rows it cannot store (Q8_0 needs a multiple of
    /// 32 values) uses [`KvType::for_width`] instead, as [`Qwen35::state_specs`] says.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// What each layer keeps per sequence.
    pub fn state_specs(&self) -> Vec<LayerSpec> {
        self.config.state_specs(self.kv_type)
    }

    /// A fresh, empty sequence for this model.
    /// For an MoE model, the (forwards, distinct experts) its layers have run so far, summed
    /// over layers: `experts / forwards` is the mean number of experts a layer touches per
    /// step. `None` for a dense model.
    pub fn experts_touched(&self) -> Option<(u64, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut total = None;
        for layer in &self.layers {
            if let FeedForward::Moe(m) = &layer.feed_forward {
                let (f, e) = total.unwrap_or((0, 0));
                total = Some((
                    f + m.touched.forwards.load(Relaxed),
                    e + m.touched.experts.load(Relaxed),
                ));
            }
        }
        total
    }

    pub fn new_state(&self) -> SequenceState {
        SequenceState::new(&self.state_specs())
    }

    /// Runs `tokens` through the model, continuing the sequence in `state`; returns logits
    /// `[T, V]` ([`Rows::All`]) or `[1, V]` ([`Rows::Last`]). On error, `state` is unchanged.
    /// A one-span [`Qwen35::step`].
    pub fn forward(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        logits: Rows,
    ) -> Result<Mat, ForwardError> {
        let span = Span::tokens(tokens, state).logits(logits);
        Ok(only_logits(self.step(&mut [span])?, self.config.vocab))
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
        logits: Rows,
    ) -> Result<Mat, ForwardError> {
        let span = Span::tokens(tokens, state)
            .logits(logits)
            .delta_rule(DeltaNetPath::Chunked);
        Ok(only_logits(self.step(&mut [span])?, self.config.vocab))
    }

    /// [`Qwen35::forward`], reporting named intermediate tensors to `trace`.
    pub fn forward_traced(
        &self,
        tokens: &[u32],
        state: &mut SequenceState,
        logits: Rows,
        trace: &mut dyn FnMut(TracePoint, &Mat),
    ) -> Result<Mat, ForwardError> {
        let span = Span::tokens(tokens, state).logits(logits);
        Ok(only_logits(
            self.step_traced(&mut [span], trace)?,
            self.config.vocab,
        ))
    }

    /// One step for any number of sequences: each [`Span`] continues its own sequence with
    /// its own rows (a prompt chunk, one decode token, a speculative draft, image embeddings).
    /// Returns, per span in order, the logits and hidden states it asked for.
    ///
    /// This is the model's only pass through the layers. Everything that does not mix
    /// positions (norms, every projection — DeltaNet, attention, MLP / MoE — and the LM head
    /// over the rows whose outputs are wanted) runs once over the stacked rows of all spans,
    /// so a weight is streamed from memory once per step. What mixes positions runs per span
    /// against that span's state: the DeltaNet conv and delta rule, the KV append and the
    /// attention itself. Since every op computes each row independently of the rows beside it
    /// (the matmul kernels' batch invariance), a span's outputs equal a step of that span
    /// alone, bit for bit.
    ///
    /// A span longer than [`MAX_PIECE_TOKENS`] goes through the layers in pieces of that many
    /// positions (pass `i` takes positions `[i·P, (i+1)·P)` of every span still that long),
    /// each pass's activations freed before the next, so memory stays flat however long the
    /// prompt. The result is bit for bit that of one pass: the pieces start at multiples of
    /// the delta rule's chunk, and a span's form of the delta rule is chosen once for all its
    /// pieces.
    ///
    /// On error, every state is unchanged.
    pub fn step(&self, spans: &mut [Span<'_>]) -> Result<Vec<SpanOutput>, ForwardError> {
        self.step_with(spans, None)
    }

    /// [`Qwen35::step`], reporting named intermediate tensors of every pass to `trace`.
    pub fn step_traced(
        &self,
        spans: &mut [Span<'_>],
        trace: &mut dyn FnMut(TracePoint, &Mat),
    ) -> Result<Vec<SpanOutput>, ForwardError> {
        self.step_with(spans, Some(trace))
    }

    /// The step; `trace` (when given) gets the named tensors, copied off the backend.
    fn step_with(
        &self,
        spans: &mut [Span<'_>],
        mut trace: Option<&mut TraceFn<'_>>,
    ) -> Result<Vec<SpanOutput>, ForwardError> {
        for span in spans.iter() {
            self.check_span(span)?;
        }
        let c = &self.config;
        let plan: Vec<SpanPlan> = spans
            .iter()
            .map(|s| {
                let t = s.input.len();
                SpanPlan {
                    len: t,
                    start: s.state.pos(),
                    path: self.delta_rule_for(s),
                }
            })
            .collect();
        let mut outs: Vec<SpanOutput> = spans
            .iter()
            .zip(&plan)
            .map(|(s, p)| {
                let mat = |rows: Rows, cols| {
                    (rows != Rows::None).then(|| Mat::zeros(rows.range(p.len).len(), cols))
                };
                SpanOutput {
                    // Made by the head, as its rows come (no `[R, V]` zeroed first).
                    logits: None,
                    hidden: mat(s.hidden, c.hidden),
                }
            })
            .collect();
        for (s, p) in spans.iter_mut().zip(&plan) {
            s.state.begin_step(p.len, s.keep_states);
        }
        let longest = plan.iter().map(|p| p.len).max().unwrap_or(0);
        for piece in 0..longest.div_ceil(MAX_PIECE_TOKENS) {
            let lo = piece * MAX_PIECE_TOKENS;
            let parts: Vec<Part> = plan
                .iter()
                .enumerate()
                .filter(|(_, p)| p.len > lo)
                .map(|(span, p)| Part {
                    span,
                    rows: lo..p.len.min(lo + MAX_PIECE_TOKENS),
                })
                .collect();
            self.pass(spans, &plan, &parts, &mut outs, &mut trace);
        }
        for (out, (s, p)) in outs.iter_mut().zip(spans.iter().zip(&plan)) {
            if s.logits != Rows::None && out.logits.is_none() {
                out.logits = Some(Mat::zeros(s.logits.range(p.len).len(), c.vocab));
            }
        }
        Ok(outs)
    }

    /// Embeddings, every layer and the head for the rows `parts` select, stacked; advances
    /// each part's state by its rows and writes the wanted outputs into `outs`.
    fn pass(
        &self,
        spans: &mut [Span<'_>],
        plan: &[SpanPlan],
        parts: &[Part],
        outs: &mut [SpanOutput],
        trace: &mut Option<&mut TraceFn<'_>>,
    ) {
        let be = &*self.backend;
        let mut report = |point: TracePoint, x: &Act| {
            if let Some(f) = trace.as_mut() {
                f(point, &be.download(x.clone()));
            }
        };
        // Each part's rows in the stacked `[ΣT, H]`.
        let mut bounds = Vec::with_capacity(parts.len());
        let mut total = 0;
        for part in parts {
            bounds.push(total..total + part.rows.len());
            total += part.rows.len();
        }
        let mut positions = Vec::with_capacity(total);
        for part in parts {
            match spans[part.span].positions {
                Some(p) => positions.extend_from_slice(&p[part.rows.clone()]),
                None => {
                    let start = plan[part.span].start;
                    positions.extend(part.rows.clone().map(|i| text_position(start + i)));
                }
            }
        }
        let angles = self.rope.angles_of(&positions);
        let mut x = per_part(be, &bounds, |i, _| {
            let part = &parts[i];
            match spans[part.span].input {
                SpanInput::Tokens(ids) => be.embed(&self.embed, &ids[part.rows.clone()]),
                SpanInput::Embeddings(m) => be.upload(m.rows_range(part.rows.start, part.rows.end)),
                SpanInput::Spliced { tokens, at, rows } => {
                    self.spliced_rows(tokens, at, rows, part.rows.clone())
                }
            }
        }); // [ΣT, H]
        report(TracePoint::Embeddings, &x);
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.apply(be, &x);
            let mixed = match &layer.mixer {
                Mixer::DeltaNet(d) => {
                    // Projections over all rows; conv and delta rule per sequence; the output
                    // projection over all rows again.
                    let p = d.project(be, &h);
                    let o = per_part(be, &bounds, |i, rows| {
                        let part = &parts[i];
                        let (s, kept) = spans[part.span]
                            .state
                            .deltanet_mut(l)
                            .expect("state layout checked against this model");
                        let path = plan[part.span].path;
                        match rows {
                            None => d.mix(be, &p, s, kept, path),
                            Some(b) => d.mix(be, &p.rows(be, b.start, b.end), s, kept, path),
                        }
                    }); // [ΣT, Nv·Dv]
                    d.output(be, &o)
                }
                Mixer::Attention(a) => {
                    // Projections over all rows; KV append and attention per sequence; the
                    // gate and output projection over all rows.
                    let p = a.project(be, &h, &angles);
                    let o = per_part(be, &bounds, |i, rows| {
                        let LayerState::Attention(kv) = spans[parts[i].span].state.layer_mut(l)
                        else {
                            unreachable!("state layout checked against this model")
                        };
                        match rows {
                            None => a.attend(be, &p.q, &p.k, &p.v, kv),
                            Some(b) => {
                                let cut = |m: &Act| be.rows(m, b.clone());
                                a.attend(be, &cut(&p.q), &cut(&p.k), &cut(&p.v), kv)
                            }
                        }
                    }); // [ΣT, Hq·D]
                    a.output(be, p.gate, o)
                }
            };
            be.add(&mut x, &mixed);
            let h = layer.post_attention_norm.apply(be, &x);
            let ff = layer.feed_forward.forward(be, &h);
            be.add(&mut x, &ff);
            report(TracePoint::LayerOutput(l), &x);
        }
        for part in parts {
            spans[part.span].state.advance(part.rows.len());
        }
        self.head(spans, plan, parts, &bounds, &x, outs, &mut report);
    }

    /// Final norm over the rows of `x` some span wants, their hidden states copied out, and
    /// one LM-head matmul over the rows that want logits.
    #[allow(clippy::too_many_arguments)]
    fn head(
        &self,
        spans: &[Span<'_>],
        plan: &[SpanPlan],
        parts: &[Part],
        bounds: &[std::ops::Range<usize>],
        x: &Act,
        outs: &mut [SpanOutput],
        report: &mut dyn FnMut(TracePoint, &Act),
    ) {
        let be = &*self.backend;
        // (span, position in the span, row of x, wants logits, wants hidden)
        let mut picks = Vec::new();
        for (part, b) in parts.iter().zip(bounds) {
            let (span, len) = (&spans[part.span], plan[part.span].len);
            let (lr, hr) = (span.logits.range(len), span.hidden.range(len));
            for (i, pos) in part.rows.clone().enumerate() {
                let (lg, hd) = (lr.contains(&pos), hr.contains(&pos));
                if lg || hd {
                    picks.push((part.span, pos, b.start + i, lg, hd));
                }
            }
        }
        if picks.is_empty() {
            return;
        }
        let rows: Vec<usize> = picks.iter().map(|p| p.2).collect();
        let mut normed = be.gather(x, &rows); // [R, H]
        self.final_norm.forward(be, &mut normed);
        report(TracePoint::FinalNorm, &normed);
        let mut for_logits = Vec::new();
        let mut hidden_rows = None;
        for (r, &(n, pos, _, lg, hd)) in picks.iter().enumerate() {
            if hd {
                let host = hidden_rows.get_or_insert_with(|| be.download(normed.clone()));
                let at = pos - spans[n].hidden.range(plan[n].len).start;
                let out = outs[n].hidden.as_mut().expect("allocated for hidden rows");
                out.row_mut(at).copy_from_slice(host.row(r));
            }
            if lg {
                for_logits.push((r, n, pos));
            }
        }
        if for_logits.is_empty() {
            return;
        }
        let rows = if for_logits.len() == picks.len() {
            normed
        } else {
            let r: Vec<usize> = for_logits.iter().map(|f| f.0).collect();
            be.gather(&normed, &r)
        };
        let logits = be.download(be.matmul(&rows, &self.lm_head)); // [R', V]
        // One span's logit rows, all of them in order (a decode step, a whole prompt):
        // handed over as they are.
        let n = for_logits[0].1;
        let want = spans[n].logits.range(plan[n].len);
        let whole = for_logits.len() == want.len()
            && for_logits
                .iter()
                .enumerate()
                .all(|(i, &(_, m, pos))| m == n && pos == want.start + i);
        if whole && outs[n].logits.is_none() {
            outs[n].logits = Some(logits);
            return;
        }
        let vocab = self.config.vocab;
        for (i, &(_, n, pos)) in for_logits.iter().enumerate() {
            let want = spans[n].logits.range(plan[n].len);
            let out = outs[n]
                .logits
                .get_or_insert_with(|| Mat::zeros(want.len(), vocab));
            out.row_mut(pos - want.start).copy_from_slice(logits.row(i));
        }
    }

    /// Returns `state` to position `to` inside the last step that kept its states
    /// ([`Span::keep_states`]): DeltaNet layers replay the kept recurrence from the step's start
    /// over its first `to − start` positions (no projection, conv or attention is run again),
    /// take the conv window kept for that position, and attention layers drop the later KV
    /// rows. The result is bit for bit the state of one-token steps up to `to` (tested).
    pub fn rewind(&self, state: &mut SequenceState, to: usize) -> Result<(), ForwardError> {
        self.check_layout(state)?;
        state.rewind(to, &mut |l, kept, j, layer| match &self.layers[l].mixer {
            Mixer::DeltaNet(d) => d.replay(&*self.backend, kept, j, layer),
            Mixer::Attention(_) => unreachable!("the state's layout is this model's"),
        })?;
        Ok(())
    }

    /// The form of the delta rule a span runs, for all its pieces.
    fn delta_rule_for(&self, span: &Span<'_>) -> DeltaNetPath {
        if span.keep_states {
            // The only form whose per-position states are those of one-token steps.
            return DeltaNetPath::Recurrent;
        }
        let wanted = match self.deltanet_path {
            DeltaNetPath::Auto => span.delta_rule,
            fixed => fixed,
        };
        match wanted {
            DeltaNetPath::Auto if span.input.len() > 1 => DeltaNetPath::Chunked,
            DeltaNetPath::Auto => DeltaNetPath::Recurrent,
            p => p,
        }
    }

    /// The checks a span must pass before any state is touched.
    fn check_span(&self, span: &Span<'_>) -> Result<(), ForwardError> {
        let t = span.input.len();
        if t == 0 {
            return Err(ForwardError::Empty);
        }
        match span.input {
            SpanInput::Tokens(tokens) => self.check_tokens(tokens)?,
            SpanInput::Embeddings(m) => self.check_rows(m)?,
            SpanInput::Spliced { tokens, at, rows } => {
                self.check_tokens(tokens)?;
                self.check_rows(rows)?;
                let ascending = at.windows(2).all(|w| w[0] < w[1]);
                if at.len() != rows.rows || !ascending || at.last().is_some_and(|&r| r >= t) {
                    return Err(ForwardError::Splice {
                        rows: rows.rows,
                        at: at.len(),
                        len: t,
                    });
                }
            }
        }
        if let Some(p) = span.positions
            && p.len() != t
        {
            return Err(ForwardError::PositionCount {
                got: p.len(),
                rows: t,
            });
        }
        if span.keep_states && t > MAX_KEPT_POSITIONS {
            return Err(ForwardError::TooManyKept {
                got: t,
                max: MAX_KEPT_POSITIONS,
            });
        }
        self.check_room(span.state.pos(), t)?;
        self.check_layout(span.state)
    }

    /// Supplied embedding rows must be whole rows of the hidden width.
    fn check_rows(&self, m: &Mat) -> Result<(), ForwardError> {
        if m.cols != self.config.hidden || !m.is_whole() {
            return Err(ForwardError::EmbeddingWidth {
                got: m.cols,
                hidden: self.config.hidden,
            });
        }
        Ok(())
    }

    /// The input rows `range` of a [`SpanInput::Spliced`] span: runs of table rows and of
    /// supplied rows, stacked in order.
    fn spliced_rows(&self, tokens: &[u32], at: &[usize], rows: &Mat, range: Range<usize>) -> Act {
        let be = &*self.backend;
        let mut parts = Vec::new();
        let mut i = range.start;
        let mut j = at.partition_point(|&r| r < range.start);
        while i < range.end {
            if at.get(j) == Some(&i) {
                let first = j;
                while i < range.end && at.get(j) == Some(&i) {
                    i += 1;
                    j += 1;
                }
                parts.push(be.upload(rows.rows_range(first, j)));
            } else {
                let end = at.get(j).map_or(range.end, |&r| r.min(range.end));
                parts.push(be.embed(&self.embed, &tokens[i..end]));
                i = end;
            }
        }
        if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            be.stack(&parts)
        }
    }

    /// Gives the model `tower` (replacing any it has), its weights handed to the model's
    /// backend.
    pub fn attach_vision(&mut self, mut tower: VisionTower) -> Result<(), LoadError> {
        if tower.config.out_hidden != self.config.hidden {
            return Err(LoadError::Shape {
                name: "vision tower output".into(),
                expected: vec![self.config.hidden],
                got: vec![tower.config.out_hidden],
            });
        }
        for w in tower.weights_mut() {
            *w = self.backend.prepare(w.clone())?;
        }
        self.vision = Some(tower);
        Ok(())
    }

    /// The merged embeddings of one image (or video) for [`SpanInput::Spliced`]: `pixels`
    /// `[t·h·w, C·Tp·p·p]` are its patches in the processor's order, `grid` = `(t, h, w)`.
    pub fn encode_image(&self, pixels: &Mat, grid: [usize; 3]) -> Result<Mat, VisionError> {
        let tower = self.vision.as_ref().ok_or(VisionError::NoTower)?;
        tower.encode(&*self.backend, pixels, grid)
    }

    /// [`Qwen35::encode_image`] as a job advanced a block at a time ([`Qwen35::advance_image`]).
    pub fn begin_image(&self, pixels: &Mat, grid: [usize; 3]) -> Result<EncodeJob, VisionError> {
        let tower = self.vision.as_ref().ok_or(VisionError::NoTower)?;
        tower.begin(&*self.backend, pixels, grid)
    }

    /// Runs a job's next block (or its merger, returning the image's rows).
    ///
    /// # Panics
    /// If the model has no vision tower (a job comes from [`Qwen35::begin_image`]).
    pub fn advance_image(&self, job: &mut EncodeJob) -> Option<Mat> {
        let tower = self.vision.as_ref().expect("a job of this model's tower");
        tower.advance(&*self.backend, job)
    }

    /// Whether `t` more positions after `start` fit the context.
    pub(crate) fn check_room(&self, start: usize, t: usize) -> Result<(), ForwardError> {
        let c = &self.config;
        if start.checked_add(t).is_none_or(|end| end > c.max_positions) {
            return Err(ForwardError::ContextOverflow {
                used: start,
                needed: t,
                limit: c.max_positions,
                hint: c.context_hint(),
            });
        }
        Ok(())
    }

    /// Every token id inside the vocabulary.
    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<(), ForwardError> {
        let vocab = self.config.vocab;
        match tokens
            .iter()
            .enumerate()
            .find(|(_, id)| **id as usize >= vocab)
        {
            Some((index, &id)) => Err(ForwardError::TokenOutOfRange { id, index, vocab }),
            None => Ok(()),
        }
    }

    /// Whether `state` has this model's layers, kind by kind.
    fn check_layout(&self, state: &SequenceState) -> Result<(), ForwardError> {
        let layers = state.layers();
        let same_layout = layers.len() == self.layers.len()
            && layers.iter().zip(&self.layers).all(|(s, l)| {
                matches!(
                    (s, &l.mixer),
                    (LayerState::DeltaNet(_), Mixer::DeltaNet(_))
                        | (LayerState::Attention(_), Mixer::Attention(_))
                )
            });
        if !same_layout {
            return Err(ForwardError::StateMismatch);
        }
        Ok(())
    }

    /// Number of parameters of the text model (the LM head counted once when tied).
    pub fn parameter_count(&self) -> usize {
        self.measure(&|w| w.rows() * w.cols(), 1, None)
    }

    /// Bytes of every weight as held: each matrix once (a tied LM head is the embedding's
    /// bytes), norms and the other vectors in `f32`; the MTP head's matrices (and its draft
    /// vocabulary's copy of LM-head rows) included.
    pub fn weight_bytes(&self) -> usize {
        let mtp: usize = self.mtp.as_ref().map_or(0, |m| {
            let mut m = m.clone();
            m.weights_mut().iter().map(|w| w.bytes().len()).sum()
        });
        self.measure(&|w| w.bytes().len(), 4, None) + mtp
    }

    /// The weights summed by `matrix` (each matrix) and `vector` units per vector element
    /// (norms, conv taps, biases). With `experts = Some(e)`, each MoE layer counts its routed
    /// experts as `e` average ones instead of all of them (a decode step's reads).
    pub fn measure(
        &self,
        matrix: &dyn Fn(&Weight) -> usize,
        vector: usize,
        experts: Option<f64>,
    ) -> usize {
        let c = &self.config;
        let m = matrix;
        let mut n = m(&self.embed) + self.final_norm.weight.len() * vector;
        if !c.tie_embeddings {
            n += m(&self.lm_head);
        }
        let mlp = |x: &Mlp| m(&x.gate) + m(&x.up) + m(&x.down);
        for layer in &self.layers {
            n += (layer.input_norm.weight.len() + layer.post_attention_norm.weight.len()) * vector;
            n += match &layer.mixer {
                Mixer::DeltaNet(d) => {
                    m(&d.qkv)
                        + m(&d.z)
                        + m(&d.b)
                        + m(&d.a)
                        + m(&d.out)
                        + (d.conv_taps.len()
                            + d.dt_bias.len()
                            + d.a_neg.len()
                            + d.norm.weight.len())
                            * vector
                }
                Mixer::Attention(a) => {
                    m(&a.q)
                        + m(&a.k)
                        + m(&a.v)
                        + m(&a.o)
                        + (a.q_norm.weight.len() + a.k_norm.weight.len()) * vector
                }
            };
            n += match &layer.feed_forward {
                FeedForward::Dense(x) => mlp(x),
                FeedForward::Moe(x) => {
                    let all: usize = x.experts.iter().map(mlp).sum();
                    let routed = match experts {
                        Some(e) => (all as f64 * e / x.experts.len().max(1) as f64) as usize,
                        None => all,
                    };
                    m(&x.router) + routed + mlp(&x.shared) + m(&x.shared_gate)
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

/// What a step decided for one span before its first pass.
#[derive(Clone, Copy, Debug)]
struct SpanPlan {
    /// Positions in the span.
    len: usize,
    /// The state's position before the step.
    start: usize,
    /// Form of the delta rule, the same in every piece.
    path: DeltaNetPath,
}

/// The rows of one span that one pass takes.
#[derive(Clone, Debug)]
struct Part {
    span: usize,
    rows: std::ops::Range<usize>,
}

/// The rows `f(part, rows)` computes for each part of a pass (`rows`: the part's rows of the
/// stacked `[ΣT, ·]`, `None` when one part holds them all), stacked in part order. A lone part's
/// result is returned as it is, not copied.
pub(crate) fn per_part(
    be: &dyn Backend,
    bounds: &[std::ops::Range<usize>],
    mut f: impl FnMut(usize, Option<&std::ops::Range<usize>>) -> Act,
) -> Act {
    if bounds.len() == 1 {
        return f(0, None);
    }
    let segs: Vec<Act> = bounds
        .iter()
        .enumerate()
        .map(|(i, b)| f(i, Some(b)))
        .collect();
    be.stack(&segs)
}

/// The logits of a one-span step (`[0, V]` if it asked for none).
fn only_logits(mut outs: Vec<SpanOutput>, vocab: usize) -> Mat {
    outs.pop()
        .and_then(|o| o.logits)
        .unwrap_or_else(|| Mat::zeros(0, vocab))
}
