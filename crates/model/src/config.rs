//! The validated model configuration.
//!
//! Built from the raw `config.json` mirror ([`qinfer_formats::hf_config::RawConfig`]) in one
//! place, so every later stage can rely on its invariants: layer kinds are an enum list of the
//! right length, head counts divide, the rotary slice and mRoPE sections agree, the MoE fields
//! exist exactly for MoE models. No library defaults are assumed: a missing field is an error
//! naming it.

use qinfer_backend::VHeadOrder;
use qinfer_formats::gguf::keys::{self, Arch};
use qinfer_formats::hf_config::{RawConfig, RawRope, RawTextConfig};

use crate::error::ConfigError;
use crate::vision::VisionConfig;
use qinfer_cache::{KvType, LayerSpec};

/// Token mixer of a decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Gated DeltaNet (`"linear_attention"`).
    DeltaNet,
    /// Gated softmax attention (`"full_attention"`).
    Attention,
}

/// How stored RMSNorm weights relate to the multiplier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormConvention {
    /// Hugging Face: stored `w`, multiplier `1 + w` (all norms but DeltaNet's gated norm).
    ZeroCentred,
    /// GGUF: the `+1` is already folded in; stored weight is the multiplier.
    Plain,
}

/// Which config layout the file used (decides the tensor prefix to expect first).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigForm {
    /// `text_config` nested inside a multimodal config.
    Multimodal,
    /// Text fields at the top level.
    TextOnly,
    /// GGUF metadata (llama.cpp's converter).
    Gguf,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    /// `Hq`.
    pub n_heads: usize,
    /// `Hkv`.
    pub n_kv_heads: usize,
    /// `D`.
    pub head_dim: usize,
    /// `q_proj` also produces a per-head output gate (`[q_h | gate_h]` per head).
    pub output_gate: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeltaNetConfig {
    /// `Nk`.
    pub n_k_heads: usize,
    /// `Nv`.
    pub n_v_heads: usize,
    /// `Dk`.
    pub k_head_dim: usize,
    /// `Dv`.
    pub v_head_dim: usize,
    /// `K`.
    pub conv_kernel: usize,
    pub v_head_order: VHeadOrder,
}

impl DeltaNetConfig {
    pub fn key_dim(&self) -> usize {
        self.n_k_heads * self.k_head_dim
    }

    pub fn value_dim(&self) -> usize {
        self.n_v_heads * self.v_head_dim
    }

    /// `C`: conv channels, `q ‖ k ‖ v`.
    pub fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeConfig {
    pub theta: f64,
    /// Leading dims of each head that rotate (`head_dim · partial_rotary_factor`).
    pub rotary_dim: usize,
    /// Frequencies taken from the (t, h, w) position streams; sums to `rotary_dim / 2`.
    pub mrope_section: [usize; 3],
    /// Interleaved (`i mod 3`) rather than contiguous assignment of frequencies to streams.
    pub mrope_interleaved: bool,
    /// YaRN context extension, when configured (`rope_type: "yarn"`, or `--rope-scaling yarn`).
    pub yarn: Option<Yarn>,
}

/// YaRN (arXiv 2309.00071) as transformers computes it (`_compute_yarn_parameters`):
/// frequencies blended between interpolated (÷ `factor`) and original by a linear ramp over the
/// dims whose wavelength lies between `beta_fast` and `beta_slow` rotations of the original
/// context, and cos/sin scaled by `attention_factor`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    /// The pretraining context (`original_max_position_embeddings`): the native window.
    pub original_ctx: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    /// What cos and sin are multiplied by.
    pub attention_factor: f64,
    /// Whether the correction range is rounded outwards to whole dims (transformers'
    /// `truncate`, default true).
    pub truncate: bool,
}

/// YaRN parameters as configs spell them; absent ones take transformers' defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct YarnParams {
    pub factor: Option<f64>,
    pub original_ctx: Option<usize>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub attention_factor: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub truncate: Option<bool>,
}

impl Yarn {
    /// Resolves `p` as transformers does: `factor` defaults to `max_positions /
    /// original_ctx`, `original_ctx` to `max_positions`, the betas to 32 and 1, and
    /// `attention_factor` to `0.1·ln(factor) + 1` (or the `mscale` / `mscale_all_dim` ratio of
    /// such terms when both are given). The one validation of YaRN parameters.
    pub fn resolve(p: YarnParams, max_positions: usize) -> Result<Yarn, ConfigError> {
        let original_ctx = p.original_ctx.unwrap_or(max_positions);
        if original_ctx == 0 {
            return Err(ConfigError::Invalid {
                field: "original_max_position_embeddings",
                why: "0".into(),
            });
        }
        let factor = p
            .factor
            .unwrap_or(max_positions as f64 / original_ctx as f64);
        if !(factor.is_finite() && factor >= 1.0) {
            return Err(ConfigError::Invalid {
                field: "rope_parameters.factor",
                why: format!("{factor} is not a finite number of at least 1"),
            });
        }
        let mscale = Yarn::mscale;
        let attention_factor = match (p.attention_factor, p.mscale, p.mscale_all_dim) {
            (Some(a), _, _) => a,
            (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                mscale(factor, m) / mscale(factor, all)
            }
            _ => mscale(factor, 1.0),
        };
        // transformers reads the betas with `or`: 0 means the default too.
        let beta_fast = p.beta_fast.filter(|&b| b != 0.0).unwrap_or(32.0);
        let beta_slow = p.beta_slow.filter(|&b| b != 0.0).unwrap_or(1.0);
        for (v, field) in [
            (attention_factor, "rope_parameters.attention_factor"),
            (beta_fast, "rope_parameters.beta_fast"),
            (beta_slow, "rope_parameters.beta_slow"),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::Invalid {
                    field,
                    why: format!("{v} is not a finite positive number"),
                });
            }
        }
        Ok(Yarn {
            factor,
            original_ctx,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate: p.truncate.unwrap_or(true),
        })
    }

    /// YaRN's attention scale for a context `scale` times longer: `0.1·m·ln(scale) + 1`
    /// (1 when not longer); transformers' `get_mscale`.
    pub fn mscale(scale: f64, m: f64) -> f64 {
        if scale <= 1.0 {
            1.0
        } else {
            0.1 * m * scale.ln() + 1.0
        }
    }

    /// The context YaRN extends to: `factor × original_ctx`.
    pub fn extended_ctx(&self) -> usize {
        (self.factor * self.original_ctx as f64).min(u32::MAX as f64) as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedForwardConfig {
    Dense {
        intermediate: usize,
    },
    Moe {
        n_experts: usize,
        top_k: usize,
        expert_intermediate: usize,
        shared_intermediate: usize,
    },
}

/// Everything the text model needs to know, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// `model_type` of the language model (`qwen3_5_text` or `qwen3_5_moe_text`).
    pub model_type: String,
    pub form: ConfigForm,
    pub hidden: usize,
    pub vocab: usize,
    pub layers: Vec<LayerKind>,
    pub rms_norm_eps: f32,
    pub attention: AttentionConfig,
    pub deltanet: DeltaNetConfig,
    pub rope: RopeConfig,
    pub feed_forward: FeedForwardConfig,
    pub tie_embeddings: bool,
    pub max_positions: usize,
    pub mtp_layers: usize,
    pub norm: NormConvention,
    /// The vision tower's configuration, or why the file's `vision_config` cannot be used
    /// (the model then runs text only); `None`: no `vision_config`.
    pub vision: Option<Result<VisionConfig, String>>,
}

const EXPECTED: &str =
    "qwen3_5 / qwen3_5_moe (multimodal, with text_config) or qwen3_5_text / qwen3_5_moe_text";

impl ModelConfig {
    /// Validates a Hugging Face `config.json`.
    pub fn from_hf(raw: &RawConfig) -> Result<Self, ConfigError> {
        let top_type = raw.top.model_type.as_deref().unwrap_or("");
        let (form, text, moe) = match (top_type, &raw.text_config) {
            ("qwen3_5", Some(t)) => (ConfigForm::Multimodal, t, false),
            ("qwen3_5_moe", Some(t)) => (ConfigForm::Multimodal, t, true),
            ("qwen3_5" | "qwen3_5_moe", None) => return Err(ConfigError::Missing("text_config")),
            ("qwen3_5_text", _) => (ConfigForm::TextOnly, &raw.top, false),
            ("qwen3_5_moe_text", _) => (ConfigForm::TextOnly, &raw.top, true),
            ("", _) => return Err(ConfigError::Missing("model_type")),
            (other, _) => {
                return Err(ConfigError::UnknownModelType {
                    found: other.into(),
                    expected: EXPECTED,
                });
            }
        };
        if form == ConfigForm::Multimodal {
            let want = if moe {
                "qwen3_5_moe_text"
            } else {
                "qwen3_5_text"
            };
            match text.model_type.as_deref() {
                None => {}
                Some(t) if t == want => {}
                Some(t) => {
                    return Err(ConfigError::Invalid {
                        field: "text_config.model_type",
                        why: format!("{t:?} inside a {top_type} config (expected {want:?})"),
                    });
                }
            }
        }
        // Multimodal configs keep `tie_word_embeddings` at the top level; accept either.
        let tie = raw
            .top
            .tie_word_embeddings
            .or(text.tie_word_embeddings)
            .unwrap_or(false);
        let mut c = Self::from_text(text, form, moe, tie)?;
        c.vision = VisionConfig::from_hf(raw, c.hidden, c.vocab)
            .map_err(|e| e.to_string())
            .transpose();
        Ok(c)
    }

    fn from_text(
        t: &RawTextConfig,
        form: ConfigForm,
        moe: bool,
        tie: bool,
    ) -> Result<Self, ConfigError> {
        let hidden = req(t.hidden_size, "hidden_size")?;
        let n_layers = req(t.num_hidden_layers, "num_hidden_layers")?;
        positive(hidden, "hidden_size")?;
        layer_count(n_layers, "num_hidden_layers")?;
        let layers = layer_kinds(t, n_layers)?;

        if let Some(act) = &t.hidden_act
            && act != "silu"
        {
            return Err(ConfigError::Unsupported {
                field: "hidden_act",
                why: format!("{act:?}"),
            });
        }
        if t.attention_bias == Some(true) {
            return Err(ConfigError::Unsupported {
                field: "attention_bias",
                why: "true".into(),
            });
        }

        let attention = AttentionConfig {
            n_heads: req(t.num_attention_heads, "num_attention_heads")?,
            n_kv_heads: req(t.num_key_value_heads, "num_key_value_heads")?,
            head_dim: req(t.head_dim, "head_dim")?,
            output_gate: t.attn_output_gate.unwrap_or(true),
        };
        positive(attention.n_heads, "num_attention_heads")?;
        positive(attention.n_kv_heads, "num_key_value_heads")?;
        positive(attention.head_dim, "head_dim")?;
        if !attention.n_heads.is_multiple_of(attention.n_kv_heads) {
            return Err(ConfigError::Invalid {
                field: "num_key_value_heads",
                why: format!(
                    "{} query heads are not a multiple of {} kv heads",
                    attention.n_heads, attention.n_kv_heads
                ),
            });
        }

        let deltanet = DeltaNetConfig {
            n_k_heads: req(t.linear_num_key_heads, "linear_num_key_heads")?,
            n_v_heads: req(t.linear_num_value_heads, "linear_num_value_heads")?,
            k_head_dim: req(t.linear_key_head_dim, "linear_key_head_dim")?,
            v_head_dim: req(t.linear_value_head_dim, "linear_value_head_dim")?,
            conv_kernel: req(t.linear_conv_kernel_dim, "linear_conv_kernel_dim")?,
            v_head_order: VHeadOrder::Grouped,
        };
        positive(deltanet.n_k_heads, "linear_num_key_heads")?;
        positive(deltanet.n_v_heads, "linear_num_value_heads")?;
        positive(deltanet.k_head_dim, "linear_key_head_dim")?;
        positive(deltanet.v_head_dim, "linear_value_head_dim")?;
        positive(deltanet.conv_kernel, "linear_conv_kernel_dim")?;
        if !deltanet.n_v_heads.is_multiple_of(deltanet.n_k_heads) {
            return Err(ConfigError::Invalid {
                field: "linear_num_value_heads",
                why: format!(
                    "{} value heads are not a multiple of {} key heads",
                    deltanet.n_v_heads, deltanet.n_k_heads
                ),
            });
        }

        let rope = rope(t, attention.head_dim)?;

        let feed_forward = if moe {
            let c = FeedForwardConfig::Moe {
                n_experts: req(t.num_experts, "num_experts")?,
                top_k: req(t.num_experts_per_tok, "num_experts_per_tok")?,
                expert_intermediate: req(t.moe_intermediate_size, "moe_intermediate_size")?,
                shared_intermediate: req(
                    t.shared_expert_intermediate_size,
                    "shared_expert_intermediate_size",
                )?,
            };
            if let FeedForwardConfig::Moe {
                n_experts,
                top_k,
                expert_intermediate,
                ..
            } = c
            {
                positive(n_experts, "num_experts")?;
                positive(expert_intermediate, "moe_intermediate_size")?;
                if top_k == 0 || top_k > n_experts {
                    return Err(ConfigError::Invalid {
                        field: "num_experts_per_tok",
                        why: format!("{top_k} is not in 1..={n_experts}"),
                    });
                }
            }
            if t.mlp_only_layers.as_ref().is_some_and(|l| !l.is_empty()) {
                return Err(ConfigError::Unsupported {
                    field: "mlp_only_layers",
                    why: "dense layers inside a MoE model".into(),
                });
            }
            if t.norm_topk_prob == Some(false) {
                return Err(ConfigError::Unsupported {
                    field: "norm_topk_prob",
                    why: "false (Qwen3.5 MoE always renormalises the top-k weights)".into(),
                });
            }
            c
        } else {
            let intermediate = req(t.intermediate_size, "intermediate_size")?;
            positive(intermediate, "intermediate_size")?;
            FeedForwardConfig::Dense { intermediate }
        };

        let vocab = req(t.vocab_size, "vocab_size")?;
        positive(vocab, "vocab_size")?;
        let eps = req(t.rms_norm_eps, "rms_norm_eps")?;
        let model_type = if moe {
            "qwen3_5_moe_text"
        } else {
            "qwen3_5_text"
        }
        .to_string();
        let c = ModelConfig {
            model_type,
            form,
            hidden,
            vocab,
            layers,
            rms_norm_eps: eps as f32,
            attention,
            deltanet,
            rope,
            feed_forward,
            tie_embeddings: tie,
            max_positions: context_limit(
                req(t.max_position_embeddings, "max_position_embeddings")?,
                rope.yarn,
            ),
            mtp_layers: t.mtp_num_hidden_layers.unwrap_or(0),
            norm: NormConvention::ZeroCentred,
            vision: None,
        };
        c.check()?;
        Ok(c)
    }

    /// Number of decoder layers.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn is_moe(&self) -> bool {
        matches!(self.feed_forward, FeedForwardConfig::Moe { .. })
    }

    /// What each layer keeps per sequence, with KV rows stored as `kv_type` where a layer's
    /// width allows it ([`KvType::for_width`] otherwise).
    pub fn state_specs(&self, kv_type: KvType) -> Vec<LayerSpec> {
        self.layers
            .iter()
            .map(|k| match k {
                LayerKind::Attention => {
                    let kv_width = self.attention.n_kv_heads * self.attention.head_dim;
                    LayerSpec::Attention {
                        kv_width,
                        kv_type: kv_type.for_width(kv_width),
                    }
                }
                LayerKind::DeltaNet => LayerSpec::DeltaNet {
                    conv_channels: self.deltanet.conv_dim(),
                    conv_kernel: self.deltanet.conv_kernel,
                    recurrent_len: self.deltanet.n_v_heads
                        * self.deltanet.k_head_dim
                        * self.deltanet.v_head_dim,
                },
            })
            .collect()
    }

    /// The context the model was pretrained for: YaRN's original context when YaRN is on,
    /// else [`ModelConfig::max_positions`].
    pub fn native_ctx(&self) -> usize {
        self.rope.yarn.map_or(self.max_positions, |y| {
            y.original_ctx.min(self.max_positions)
        })
    }

    /// What a context-overflow message adds: how to extend the window with YaRN when it is
    /// off, nothing when it is on.
    pub fn context_hint(&self) -> &'static str {
        match self.rope.yarn {
            Some(_) => "",
            None => {
                "; the native window extends with YaRN: `--rope-scaling yarn --rope-factor F` \
                 (F × the window; 4 takes Qwen3.6's 262,144 to ~1M)"
            }
        }
    }

    /// Switches YaRN on with `p` (its original context defaulting to the native window) or,
    /// with `None`, off; the context limit follows (`factor ×` the native window, or the
    /// native window).
    pub fn set_rope_scaling(&mut self, p: Option<YarnParams>) -> Result<(), ConfigError> {
        let native = self.native_ctx();
        match p {
            None => {
                self.rope.yarn = None;
                self.max_positions = native;
            }
            Some(p) => {
                let p = YarnParams {
                    original_ctx: p.original_ctx.or(Some(native)),
                    ..p
                };
                let yarn = Yarn::resolve(p, native)?;
                self.rope.yarn = Some(yarn);
                self.max_positions = context_limit(yarn.original_ctx, Some(yarn));
            }
        }
        Ok(())
    }

    /// Parameters one token uses: all of them for a dense model; for an MoE model, all but
    /// the `n_experts − top_k` idle routed experts of every layer.
    pub fn active_parameter_count(&self) -> usize {
        let total = self.parameter_count();
        match self.feed_forward {
            FeedForwardConfig::Moe {
                n_experts,
                top_k,
                expert_intermediate,
                ..
            } => total.saturating_sub(
                n_experts.saturating_sub(top_k)
                    * 3
                    * self.hidden
                    * expert_intermediate
                    * self.layers.len(),
            ),
            FeedForwardConfig::Dense { .. } => total,
        }
    }

    /// Parameters of the text model implied by the shapes (LM head counted once when tied;
    /// MTP and vision excluded).
    pub fn parameter_count(&self) -> usize {
        let (h, v) = (self.hidden, self.vocab);
        let a = self.attention;
        let d = self.deltanet;
        let attention = a.n_heads * a.head_dim * if a.output_gate { 2 } else { 1 } * h
            + 2 * a.n_kv_heads * a.head_dim * h
            + h * a.n_heads * a.head_dim
            + 2 * a.head_dim;
        let deltanet = d.conv_dim() * h
            + d.value_dim() * h
            + 2 * d.n_v_heads * h
            + d.conv_dim() * d.conv_kernel
            + 2 * d.n_v_heads
            + d.v_head_dim
            + h * d.value_dim();
        let ffn = match self.feed_forward {
            FeedForwardConfig::Dense { intermediate } => 3 * h * intermediate,
            FeedForwardConfig::Moe {
                n_experts,
                expert_intermediate,
                shared_intermediate,
                ..
            } => {
                n_experts * h
                    + n_experts * 3 * h * expert_intermediate
                    + 3 * h * shared_intermediate
                    + h
            }
        };
        let layers: usize = self
            .layers
            .iter()
            .map(|k| {
                2 * h
                    + ffn
                    + if *k == LayerKind::Attention {
                        attention
                    } else {
                        deltanet
                    }
            })
            .sum();
        v * h * if self.tie_embeddings { 1 } else { 2 } + h + layers
    }
}

/// Typed access to GGUF metadata; errors are messages about the value's type.
pub trait Metadata {
    fn u64(&self, key: &str) -> Result<Option<u64>, String>;
    fn f64(&self, key: &str) -> Result<Option<f64>, String>;
    fn string(&self, key: &str) -> Result<Option<String>, String>;
    /// An array of non-negative integers (or a single integer, as a one-element array).
    fn u64s(&self, key: &str) -> Result<Option<Vec<u64>>, String>;
}

impl ModelConfig {
    /// Validates the metadata of a llama.cpp `qwen35` / `qwen35moe` GGUF file. `vocab` is the
    /// row count of `token_embd`, `tied` whether `output.weight` is absent.
    /// `blocks_in_file`: how many `blk.N` layers have tensors in the file (one more than the
    /// highest `N`).
    pub fn from_gguf(
        md: &dyn Metadata,
        vocab: usize,
        tied: bool,
        blocks_in_file: usize,
    ) -> Result<Self, ConfigError> {
        let bad = |key: &str, why: String| ConfigError::InvalidKey {
            key: key.to_string(),
            why,
        };
        let arch = md
            .string(keys::ARCHITECTURE)
            .map_err(|e| bad(keys::ARCHITECTURE, e))?
            .ok_or_else(|| ConfigError::MissingKey(keys::ARCHITECTURE.into()))?;
        let moe = match arch.as_str() {
            "qwen35" => false,
            "qwen35moe" => true,
            other => {
                return Err(ConfigError::UnknownModelType {
                    found: format!("GGUF architecture {other}"),
                    expected: "GGUF architectures qwen35 / qwen35moe",
                });
            }
        };
        let key = |k: Arch| k.key(&arch);
        let opt = |k: Arch| md.u64(&key(k)).map_err(|e| bad(&key(k), e));
        let get = |k: Arch| {
            opt(k)?
                .map(|v| v as usize)
                .ok_or_else(|| ConfigError::MissingKey(key(k)))
        };
        let getf = |k: Arch| {
            md.f64(&key(k))
                .map_err(|e| bad(&key(k), e))?
                .ok_or_else(|| ConfigError::MissingKey(key(k)))
        };
        // Per-layer arrays (some writers store head counts per layer): the largest entry.
        let get_max = |k: Arch| -> Result<usize, ConfigError> {
            let v = md
                .u64s(&key(k))
                .map_err(|e| bad(&key(k), e))?
                .ok_or_else(|| ConfigError::MissingKey(key(k)))?;
            v.into_iter()
                .max()
                .map(|x| x as usize)
                .ok_or_else(|| bad(&key(k), "empty array".into()))
        };

        let nextn = opt(Arch::NextnPredictLayers)?.unwrap_or(0) as usize;
        let blocks = get(Arch::BlockCount)?;
        let n_layers = blocks
            .checked_sub(nextn)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                bad(
                    &key(Arch::BlockCount),
                    format!("{blocks} blocks cannot hold {nextn} MTP layers and a model"),
                )
            })?;
        if n_layers > blocks_in_file {
            return Err(bad(
                &key(Arch::BlockCount),
                format!(
                    "{blocks} blocks ({n_layers} decoder layers), but the file has tensors for \
                     {blocks_in_file}"
                ),
            ));
        }
        layer_count(n_layers, "num_hidden_layers")?;
        let interval = get(Arch::FullAttentionInterval)?;
        positive(interval, "full_attention_interval")?;
        let layers = (0..n_layers)
            .map(|i| {
                if (i + 1).is_multiple_of(interval) {
                    LayerKind::Attention
                } else {
                    LayerKind::DeltaNet
                }
            })
            .collect();
        let head_dim = get(Arch::KeyLength)?;
        let attention = AttentionConfig {
            n_heads: get_max(Arch::HeadCount)?,
            n_kv_heads: get_max(Arch::HeadCountKv)?,
            head_dim,
            output_gate: true,
        };
        let state = get(Arch::SsmStateSize)?;
        let deltanet = DeltaNetConfig {
            n_k_heads: get(Arch::SsmGroupCount)?,
            n_v_heads: get(Arch::SsmTimeStepRank)?,
            k_head_dim: state,
            v_head_dim: state,
            conv_kernel: get(Arch::SsmConvKernel)?,
            v_head_order: VHeadOrder::Tiled,
        };
        let rotary_dim = get(Arch::RopeDimensionCount)?;
        let sections = md
            .u64s(&key(Arch::RopeDimensionSections))
            .map_err(|e| bad(&key(Arch::RopeDimensionSections), e))?
            .ok_or_else(|| ConfigError::MissingKey(key(Arch::RopeDimensionSections)))?;
        let mrope_section: [usize; 3] = match sections.as_slice() {
            [a, b, c, ..] => [*a as usize, *b as usize, *c as usize],
            _ => {
                return Err(bad(
                    &key(Arch::RopeDimensionSections),
                    format!("{sections:?} has fewer than 3 entries"),
                ));
            }
        };
        let feed_forward = if moe {
            FeedForwardConfig::Moe {
                n_experts: get(Arch::ExpertCount)?,
                top_k: get(Arch::ExpertUsedCount)?,
                expert_intermediate: get(Arch::ExpertFeedForwardLength)?,
                shared_intermediate: get(Arch::ExpertSharedFeedForwardLength)?,
            }
        } else {
            FeedForwardConfig::Dense {
                intermediate: get_max(Arch::FeedForwardLength)?,
            }
        };
        // llama.cpp's rope scaling keys; its `attn_factor` multiplies YaRN's own
        // `0.1·ln(factor) + 1`, which transformers' `attention_factor` replaces.
        let optf = |k: Arch| md.f64(&key(k)).map_err(|e| bad(&key(k), e));
        let scaling = md
            .string(&key(Arch::RopeScalingType))
            .map_err(|e| bad(&key(Arch::RopeScalingType), e))?;
        let yarn = match scaling.as_deref() {
            None | Some("none") => None,
            Some("yarn") => {
                let mut y = Yarn::resolve(
                    YarnParams {
                        factor: optf(Arch::RopeScalingFactor)?,
                        original_ctx: opt(Arch::RopeScalingOriginalContext)?.map(|v| v as usize),
                        beta_fast: optf(Arch::RopeScalingYarnBetaFast)?,
                        beta_slow: optf(Arch::RopeScalingYarnBetaSlow)?,
                        ..YarnParams::default()
                    },
                    get(Arch::ContextLength)?,
                )?;
                if let Some(a) = optf(Arch::RopeScalingAttnFactor)? {
                    if !(a.is_finite() && a > 0.0) {
                        return Err(bad(
                            &key(Arch::RopeScalingAttnFactor),
                            format!("{a} is not a finite positive number"),
                        ));
                    }
                    y.attention_factor = a * Yarn::mscale(y.factor, 1.0);
                }
                Some(y)
            }
            Some(other) => {
                return Err(bad(
                    &key(Arch::RopeScalingType),
                    format!("{other:?} is not supported (\"none\" and \"yarn\" are)"),
                ));
            }
        };
        let c = ModelConfig {
            model_type: if moe {
                "qwen3_5_moe_text"
            } else {
                "qwen3_5_text"
            }
            .into(),
            form: ConfigForm::Gguf,
            hidden: get(Arch::EmbeddingLength)?,
            vocab,
            layers,
            rms_norm_eps: getf(Arch::RmsEpsilon)? as f32,
            attention,
            deltanet,
            rope: RopeConfig {
                theta: getf(Arch::RopeFreqBase)?,
                rotary_dim,
                mrope_section,
                mrope_interleaved: true,
                yarn,
            },
            feed_forward,
            tie_embeddings: tied,
            max_positions: context_limit(get(Arch::ContextLength)?, yarn),
            mtp_layers: nextn,
            norm: NormConvention::Plain,
            vision: None,
        };
        c.check()?;
        // After the bounds: the product cannot overflow.
        if let Some(inner) = opt(Arch::SsmInnerSize)?
            && inner != c.deltanet.value_dim() as u64
        {
            return Err(bad(
                &key(Arch::SsmInnerSize),
                format!(
                    "{inner} ≠ time_step_rank × state_size = {}",
                    c.deltanet.value_dim()
                ),
            ));
        }
        Ok(c)
    }

    /// The one validation of hyper-parameters, whatever their source (`config.json` or GGUF
    /// metadata): every dimension positive and within [`LIMITS`] (so that every size computed
    /// from them fits a `usize`), the head groupings, RoPE, the MoE routing, and the float
    /// values finite and in range.
    fn check(&self) -> Result<(), ConfigError> {
        let (a, d) = (self.attention, self.deltanet);
        let moe = match self.feed_forward {
            FeedForwardConfig::Dense { intermediate } => [(intermediate, "intermediate_size")]
                .into_iter()
                .collect::<Vec<_>>(),
            FeedForwardConfig::Moe {
                n_experts,
                expert_intermediate,
                shared_intermediate,
                ..
            } => vec![
                (n_experts, "num_experts"),
                (expert_intermediate, "moe_intermediate_size"),
                (shared_intermediate, "shared_expert_intermediate_size"),
            ],
        };
        for (v, f) in [
            (self.hidden, "hidden_size"),
            (self.vocab, "vocab_size"),
            (self.layers.len(), "num_hidden_layers"),
            (a.n_heads, "num_attention_heads"),
            (a.n_kv_heads, "num_key_value_heads"),
            (a.head_dim, "head_dim"),
            (d.n_k_heads, "linear_num_key_heads"),
            (d.n_v_heads, "linear_num_value_heads"),
            (d.k_head_dim, "linear_key_head_dim"),
            (d.v_head_dim, "linear_value_head_dim"),
            (d.conv_kernel, "linear_conv_kernel_dim"),
            (self.max_positions, "max_position_embeddings"),
        ]
        .into_iter()
        .chain(moe)
        {
            positive(v, f)?;
            within(v, f)?;
        }
        within(self.mtp_layers, "mtp_num_hidden_layers")?;
        let eps = self.rms_norm_eps;
        if !(eps.is_finite() && eps > 0.0 && eps < 1.0) {
            return Err(ConfigError::Invalid {
                field: "rms_norm_eps",
                why: format!("{eps} is not in (0, 1)"),
            });
        }
        let theta = self.rope.theta;
        if !(theta.is_finite() && theta > 1.0) {
            return Err(ConfigError::Invalid {
                field: "rope_theta",
                why: format!("{theta} is not a finite number above 1"),
            });
        }
        if !a.n_heads.is_multiple_of(a.n_kv_heads) {
            return Err(ConfigError::Invalid {
                field: "num_key_value_heads",
                why: "does not divide the query heads".into(),
            });
        }
        if !d.n_v_heads.is_multiple_of(d.n_k_heads) {
            return Err(ConfigError::Invalid {
                field: "linear_num_value_heads",
                why: "not a multiple of the key heads".into(),
            });
        }
        let r = self.rope.rotary_dim;
        if r == 0
            || !r.is_multiple_of(2)
            || r > a.head_dim
            || section_sum(&self.rope.mrope_section) != Some(r / 2)
        {
            return Err(ConfigError::Invalid {
                field: "rope",
                why: format!(
                    "rotary dim {r} and mrope sections {:?} do not fit head dim {}",
                    self.rope.mrope_section, a.head_dim
                ),
            });
        }
        if let FeedForwardConfig::Moe {
            n_experts, top_k, ..
        } = self.feed_forward
            && (top_k == 0 || top_k > n_experts)
        {
            return Err(ConfigError::Invalid {
                field: "num_experts_per_tok",
                why: format!("{top_k} is not in 1..={n_experts}"),
            });
        }
        Ok(())
    }
}

/// The largest value qinfer accepts for each dimension: far above any model of the family
/// (Qwen3.5-397B-A17B: hidden 4096, 60 layers, 512 experts, 248,320 tokens, 262,144 positions),
/// low enough that every size computed from them (weight shapes, state sizes, parameter counts)
/// fits a 64-bit `usize` without overflow. A file that claims more is refused naming the field
/// before anything is allocated for it.
pub const LIMITS: [(&str, usize); 27] = [
    ("hidden_size", 1 << 16),
    ("vocab_size", 1 << 22),
    ("num_hidden_layers", 1024),
    ("num_attention_heads", 1024),
    ("num_key_value_heads", 1024),
    ("head_dim", 4096),
    ("linear_num_key_heads", 1024),
    ("linear_num_value_heads", 1024),
    ("linear_key_head_dim", 4096),
    ("linear_value_head_dim", 4096),
    ("linear_conv_kernel_dim", 64),
    ("max_position_embeddings", 1 << 24),
    ("intermediate_size", 1 << 20),
    ("num_experts", 1 << 14),
    ("moe_intermediate_size", 1 << 20),
    ("shared_expert_intermediate_size", 1 << 20),
    ("mtp_num_hidden_layers", 64),
    ("vision_config.depth", 1024),
    ("vision_config.hidden_size", 1 << 16),
    ("vision_config.intermediate_size", 1 << 20),
    ("vision_config.num_heads", 1024),
    ("vision_config.in_channels", 16),
    ("vision_config.patch_size", 1024),
    ("vision_config.temporal_patch_size", 64),
    ("vision_config.spatial_merge_size", 64),
    ("vision_config.out_hidden_size", 1 << 16),
    ("vision_config.num_position_embeddings", 1 << 24),
];

/// The sum of the mRoPE sections (`None` past `usize`: values come from files).
fn section_sum(sections: &[usize; 3]) -> Option<usize> {
    sections.iter().try_fold(0usize, |a, &b| a.checked_add(b))
}

/// `v` is at most the field's [`LIMITS`] entry.
pub(crate) fn within(v: usize, field: &'static str) -> Result<(), ConfigError> {
    let max = LIMITS
        .iter()
        .find(|(f, _)| *f == field)
        .map_or(usize::MAX, |&(_, m)| m);
    if v > max {
        return Err(ConfigError::Invalid {
            field,
            why: format!("{v} is more than qinfer accepts ({max})"),
        });
    }
    Ok(())
}

/// A layer count, checked before a list of that many layers is built.
fn layer_count(n: usize, field: &'static str) -> Result<(), ConfigError> {
    positive(n, field)?;
    within(n, "num_hidden_layers").map_err(|e| match e {
        ConfigError::Invalid { why, .. } => ConfigError::Invalid { field, why },
        other => other,
    })
}

fn req<T>(v: Option<T>, field: &'static str) -> Result<T, ConfigError> {
    v.ok_or(ConfigError::Missing(field))
}

pub(crate) fn positive(v: usize, field: &'static str) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::Invalid {
            field,
            why: "must be positive".into(),
        });
    }
    Ok(())
}

fn layer_kinds(t: &RawTextConfig, n_layers: usize) -> Result<Vec<LayerKind>, ConfigError> {
    if let Some(types) = &t.layer_types {
        if types.len() != n_layers {
            return Err(ConfigError::Invalid {
                field: "layer_types",
                why: format!("{} entries for {n_layers} layers", types.len()),
            });
        }
        return types
            .iter()
            .map(|s| match s.as_str() {
                "linear_attention" => Ok(LayerKind::DeltaNet),
                "full_attention" => Ok(LayerKind::Attention),
                other => Err(ConfigError::Invalid {
                    field: "layer_types",
                    why: format!(
                        "unknown layer type {other:?} (expected linear_attention or full_attention)"
                    ),
                }),
            })
            .collect();
    }
    let interval = t
        .full_attention_interval
        .ok_or(ConfigError::Missing("layer_types"))?;
    positive(interval, "full_attention_interval")?;
    Ok((0..n_layers)
        .map(|i| {
            if (i + 1).is_multiple_of(interval) {
                LayerKind::Attention
            } else {
                LayerKind::DeltaNet
            }
        })
        .collect())
}

/// The context a model accepts: its configured maximum, or what YaRN extends the pretraining
/// context to if that is more.
fn context_limit(max_positions: usize, yarn: Option<Yarn>) -> usize {
    yarn.map_or(max_positions, |y| max_positions.max(y.extended_ctx()))
}

fn rope(t: &RawTextConfig, head_dim: usize) -> Result<RopeConfig, ConfigError> {
    let p = t.rope_parameters.as_ref();
    let scaling = t.rope_scaling.as_ref();
    let ty =
        |r: Option<&RawRope>| r.and_then(|r| r.rope_type.clone().or_else(|| r.legacy_type.clone()));
    let yarn = match (ty(p).as_deref(), ty(scaling).as_deref()) {
        (None | Some("default"), None | Some("default")) => None,
        (Some("yarn"), _) | (None | Some("default"), Some("yarn")) => {
            // transformers merges a legacy `rope_scaling` into `rope_parameters`.
            let get =
                |f: fn(&RawRope) -> Option<f64>| p.and_then(f).or_else(|| scaling.and_then(f));
            let max = req(t.max_position_embeddings, "max_position_embeddings")?;
            Some(Yarn::resolve(
                YarnParams {
                    factor: get(|r| r.factor),
                    original_ctx: t.original_max_position_embeddings.or_else(|| {
                        p.and_then(|r| r.original_max_position_embeddings)
                            .or_else(|| scaling.and_then(|r| r.original_max_position_embeddings))
                    }),
                    beta_fast: get(|r| r.beta_fast),
                    beta_slow: get(|r| r.beta_slow),
                    attention_factor: get(|r| r.attention_factor),
                    mscale: get(|r| r.mscale),
                    mscale_all_dim: get(|r| r.mscale_all_dim),
                    truncate: p
                        .and_then(|r| r.truncate)
                        .or_else(|| scaling.and_then(|r| r.truncate)),
                },
                max,
            )?)
        }
        (a, b) => {
            return Err(ConfigError::Unsupported {
                field: "rope_parameters.rope_type",
                why: format!(
                    "{:?} (\"default\" and \"yarn\" are implemented)",
                    a.filter(|t| *t != "default").or(b).unwrap_or_default()
                ),
            });
        }
    };
    let theta = p
        .and_then(|p| p.rope_theta)
        .or(t.rope_theta)
        .ok_or(ConfigError::Missing("rope_parameters.rope_theta"))?;
    if theta.is_nan() || theta <= 1.0 {
        return Err(ConfigError::Invalid {
            field: "rope_parameters.rope_theta",
            why: format!("{theta}"),
        });
    }
    let factor = p
        .and_then(|p| p.partial_rotary_factor)
        .or(t.partial_rotary_factor)
        .ok_or(ConfigError::Missing(
            "rope_parameters.partial_rotary_factor",
        ))?;
    let rotary = head_dim as f64 * factor;
    let rotary_dim = rotary as usize;
    if rotary_dim as f64 != rotary
        || rotary_dim == 0
        || !rotary_dim.is_multiple_of(2)
        || rotary_dim > head_dim
    {
        return Err(ConfigError::Invalid {
            field: "partial_rotary_factor",
            why: format!(
                "head_dim {head_dim} × {factor} is not an even number of dims within the head"
            ),
        });
    }
    let section = p
        .and_then(|p| p.mrope_section.clone())
        .ok_or(ConfigError::Missing("rope_parameters.mrope_section"))?;
    let mrope_section: [usize; 3] =
        section
            .as_slice()
            .try_into()
            .map_err(|_| ConfigError::Invalid {
                field: "rope_parameters.mrope_section",
                why: format!("{section:?} does not have 3 entries"),
            })?;
    if section_sum(&mrope_section) != Some(rotary_dim / 2) {
        return Err(ConfigError::Invalid {
            field: "rope_parameters.mrope_section",
            why: format!(
                "{section:?} does not sum to rotary_dim / 2 = {}",
                rotary_dim / 2
            ),
        });
    }
    Ok(RopeConfig {
        theta,
        rotary_dim,
        mrope_section,
        // transformers always interleaves (it never reads this key); follow it when absent.
        mrope_interleaved: p.and_then(|p| p.mrope_interleaved).unwrap_or(true),
        yarn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"{"model_type":"qwen3_5_text","hidden_size":64,"num_hidden_layers":4,
        "full_attention_interval":4,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":32,
        "linear_num_key_heads":2,"linear_num_value_heads":4,"linear_key_head_dim":16,
        "linear_value_head_dim":16,"linear_conv_kernel_dim":4,"intermediate_size":128,
        "vocab_size":320,"rms_norm_eps":1e-6,"max_position_embeddings":4096,"hidden_act":"silu",
        "rope_parameters":{"rope_type":"default","rope_theta":1e7,"partial_rotary_factor":0.25,
        "mrope_section":[2,1,1],"mrope_interleaved":true}}"#;

    fn parse(text: &str) -> Result<ModelConfig, ConfigError> {
        ModelConfig::from_hf(&RawConfig::from_json(text).unwrap())
    }

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(TEXT).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn derives_layer_kinds_from_the_interval() {
        let c = parse(TEXT).unwrap();
        assert_eq!(
            c.layers,
            [
                LayerKind::DeltaNet,
                LayerKind::DeltaNet,
                LayerKind::DeltaNet,
                LayerKind::Attention
            ]
        );
        assert_eq!(c.rope.rotary_dim, 8);
        assert_eq!(c.deltanet.conv_dim(), 2 * 32 + 64);
    }

    /// Each broken config names the field at fault.
    #[test]
    fn inconsistent_configs_name_the_field() {
        let cases = [
            (
                with("model_type", "\"llama\""),
                "unknown model type \"llama\"",
            ),
            (with("hidden_size", "null"), "`hidden_size` is missing"),
            (
                with("layer_types", "[\"linear_attention\"]"),
                "`layer_types`: 1 entries for 4 layers",
            ),
            (
                with("layer_types", "[\"a\",\"b\",\"c\",\"d\"]"),
                "unknown layer type \"a\"",
            ),
            (with("num_key_value_heads", "3"), "`num_key_value_heads`"),
            (
                with("linear_num_value_heads", "3"),
                "`linear_num_value_heads`",
            ),
            (
                with(
                    "rope_parameters",
                    r#"{"rope_theta":1e7,"partial_rotary_factor":0.25,"mrope_section":[2,2,1]}"#,
                ),
                "does not sum to rotary_dim / 2 = 4",
            ),
            (
                with(
                    "rope_parameters",
                    r#"{"rope_type":"longrope","rope_theta":1e7,"partial_rotary_factor":0.25,"mrope_section":[2,1,1]}"#,
                ),
                "\"longrope\" (\"default\" and \"yarn\" are implemented) is not supported",
            ),
            (
                with(
                    "rope_parameters",
                    r#"{"rope_type":"yarn","factor":0.5,"rope_theta":1e7,"partial_rotary_factor":0.25,"mrope_section":[2,1,1]}"#,
                ),
                "`rope_parameters.factor`: 0.5 is not a finite number of at least 1",
            ),
            (
                with("partial_rotary_factor", "0.3").replace("\"partial_rotary_factor\":0.25,", ""),
                "partial_rotary_factor",
            ),
            (with("hidden_act", "\"gelu\""), "`hidden_act`"),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }

    /// YaRN as transformers reads it: from `rope_parameters`, from a legacy `rope_scaling`
    /// block, with the defaults it applies (betas 32 / 1, attention factor `0.1·ln f + 1`,
    /// original context = `max_position_embeddings`) and an explicit `attention_factor` or the
    /// `mscale` ratio; the context limit becomes `factor ×` the original.
    #[test]
    fn yarn_configs_resolve_like_transformers() {
        let rope = |extra: &str| {
            format!(
                r#"{{"rope_type":"yarn","rope_theta":1e7,"partial_rotary_factor":0.25,"mrope_section":[2,1,1]{extra}}}"#
            )
        };
        let c = parse(&with("rope_parameters", &rope(r#","factor":4"#))).unwrap();
        let y = c.rope.yarn.unwrap();
        assert_eq!(
            (y.factor, y.original_ctx, y.beta_fast, y.beta_slow),
            (4.0, 4096, 32.0, 1.0)
        );
        assert!((y.attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
        assert_eq!((c.max_positions, c.native_ctx()), (16384, 4096));
        let c = parse(&with(
            "rope_parameters",
            &rope(r#","factor":2,"original_max_position_embeddings":1024,"beta_fast":16,"attention_factor":1.5,"truncate":false"#),
        ))
        .unwrap();
        let y = c.rope.yarn.unwrap();
        assert_eq!(
            (y.original_ctx, y.beta_fast, y.attention_factor, y.truncate),
            (1024, 16.0, 1.5, false)
        );
        assert_eq!((c.max_positions, c.native_ctx()), (4096, 1024));
        let y = parse(&with(
            "rope_parameters",
            &rope(r#","factor":4,"mscale":1,"mscale_all_dim":1"#),
        ))
        .unwrap()
        .rope
        .yarn
        .unwrap();
        assert_eq!(y.attention_factor, 1.0);
        let legacy = with(
            "rope_scaling",
            r#"{"type":"yarn","factor":4,"original_max_position_embeddings":2048}"#,
        );
        let y = parse(&legacy).unwrap().rope.yarn.unwrap();
        assert_eq!((y.factor, y.original_ctx), (4.0, 2048));
    }

    /// Hardening: dimensions that would overflow what is computed from them (`num_attention_heads
    /// = 4 + 2⁵⁹` passed the shape checks and panicked in attention; `linear_key_head_dim = 16 +
    /// 2⁶²` overflowed a capacity) and out-of-range floats are refused naming the field.
    #[test]
    fn config_dimensions_cannot_wrap_around() {
        let huge = |base: u64, shift: u32| (base + (1u64 << shift)).to_string();
        let cases = [
            (
                with("num_attention_heads", &huge(4, 59)),
                "`num_attention_heads`",
            ),
            (
                with("linear_key_head_dim", &huge(16, 62)),
                "`linear_key_head_dim`",
            ),
            (
                with("num_hidden_layers", &huge(0, 31)),
                "`num_hidden_layers`",
            ),
            (with("hidden_size", &huge(0, 40)), "`hidden_size`"),
            (with("vocab_size", &huge(0, 40)), "`vocab_size`"),
            (
                with("intermediate_size", &huge(0, 40)),
                "`intermediate_size`",
            ),
            (
                with("max_position_embeddings", &huge(0, 40)),
                "`max_position_embeddings`",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(want) && err.contains("more than qinfer accepts"),
                "want {want:?} in {err:?}"
            );
        }
        for eps in ["-1", "0", "1"] {
            let err = parse(&with("rms_norm_eps", eps)).unwrap_err().to_string();
            assert!(err.contains("`rms_norm_eps`"), "{eps}: {err}");
        }
        let err = parse(&with("max_position_embeddings", "0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`max_position_embeddings`"), "{err}");
    }

    #[test]
    fn multimodal_form_reads_text_config_and_top_level_tie() {
        let nested = format!(
            r#"{{"model_type":"qwen3_5","tie_word_embeddings":true,"text_config":{TEXT}}}"#
        );
        let c = parse(&nested).unwrap();
        assert_eq!(c.form, ConfigForm::Multimodal);
        assert!(c.tie_embeddings);
        let mismatched = nested.replace("qwen3_5_text", "qwen3_5_moe_text");
        assert!(
            parse(&mismatched)
                .unwrap_err()
                .to_string()
                .contains("text_config.model_type")
        );
        assert!(
            parse(r#"{"model_type":"qwen3_5"}"#)
                .unwrap_err()
                .to_string()
                .contains("text_config")
        );
    }

    /// The Qwen3.6-27B text config (architecture spec §1.2) has 26,895,998,464 parameters
    /// (spec §13.1, matching the checkpoint's index total); Qwen3.5-35B-A3B ≈ 34.66 B.
    #[test]
    fn parameter_counts_of_real_configs() {
        let qwen36_27b = r#"{"model_type":"qwen3_5","tie_word_embeddings":false,"text_config":{
            "model_type":"qwen3_5_text","hidden_size":5120,"num_hidden_layers":64,"full_attention_interval":4,
            "num_attention_heads":24,"num_key_value_heads":4,"head_dim":256,"attn_output_gate":true,
            "linear_num_key_heads":16,"linear_num_value_heads":48,"linear_key_head_dim":128,
            "linear_value_head_dim":128,"linear_conv_kernel_dim":4,"intermediate_size":17408,
            "vocab_size":248320,"rms_norm_eps":1e-6,"max_position_embeddings":262144,"hidden_act":"silu",
            "rope_parameters":{"rope_type":"default","rope_theta":10000000,"partial_rotary_factor":0.25,
            "mrope_section":[11,11,10],"mrope_interleaved":true}}}"#;
        let c = parse(qwen36_27b).unwrap();
        assert_eq!(c.parameter_count(), 26_895_998_464);
        let mut moe: serde_json::Value = serde_json::from_str(qwen36_27b).unwrap();
        moe["model_type"] = "qwen3_5_moe".into();
        let t = &mut moe["text_config"];
        t["model_type"] = "qwen3_5_moe_text".into();
        for (k, v) in [
            ("hidden_size", 2048),
            ("num_hidden_layers", 40),
            ("num_attention_heads", 16),
            ("num_key_value_heads", 2),
            ("linear_num_value_heads", 32),
            ("num_experts", 256),
            ("num_experts_per_tok", 8),
            ("moe_intermediate_size", 512),
            ("shared_expert_intermediate_size", 512),
        ] {
            t[k] = v.into();
        }
        let n = parse(&moe.to_string()).unwrap().parameter_count() as f64;
        assert!((n / 1e9 - 34.66).abs() < 0.01, "{n}");
    }

    #[test]
    fn moe_needs_its_fields() {
        let moe = with("model_type", "\"qwen3_5_moe_text\"");
        assert!(parse(&moe).unwrap_err().to_string().contains("num_experts"));
        let mut v: serde_json::Value = serde_json::from_str(&moe).unwrap();
        v["num_experts"] = 8.into();
        v["num_experts_per_tok"] = 9.into();
        v["moe_intermediate_size"] = 32.into();
        v["shared_expert_intermediate_size"] = 32.into();
        assert!(
            parse(&v.to_string())
                .unwrap_err()
                .to_string()
                .contains("not in 1..=8")
        );
        v["num_experts_per_tok"] = 2.into();
        assert!(parse(&v.to_string()).unwrap().is_moe());
    }
}
