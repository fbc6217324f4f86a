//! The one table of GGUF metadata keys qinfer reads and writes (llama.cpp's names). Every other
//! source file names a key through this module; the tidy test
//! (`crates/model/tests/tidy.rs`) checks that no other file spells one.

/// `general.architecture`: `qwen35` or `qwen35moe`.
pub const ARCHITECTURE: &str = "general.architecture";
pub const NAME: &str = "general.name";
/// What a file holds beside a model (`mmproj` for a vision tower); absent in model files.
pub const TYPE: &str = "general.type";
/// llama.cpp's `LLAMA_FTYPE_*` of the file.
pub const FILE_TYPE: &str = "general.file_type";
pub const QUANTIZATION_VERSION: &str = "general.quantization_version";
/// Alignment of tensor data (default 32).
pub const ALIGNMENT: &str = "general.alignment";

/// Split files as llama.cpp's `gguf-split` writes them: 0-based part number, part count, and
/// the total number of tensors over all parts.
pub const SPLIT_NO: &str = "split.no";
pub const SPLIT_COUNT: &str = "split.count";
pub const SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// `gpt2` for byte-level BPE.
pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
/// The pre-tokenizer's name (`qwen35`).
pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
pub const TOKENIZER_TOKENS: &str = "tokenizer.ggml.tokens";
pub const TOKENIZER_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const TOKENIZER_MERGES: &str = "tokenizer.ggml.merges";
pub const TOKENIZER_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
pub const TOKENIZER_EOT_ID: &str = "tokenizer.ggml.eot_token_id";
pub const TOKENIZER_PAD_ID: &str = "tokenizer.ggml.padding_token_id";
pub const TOKENIZER_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
pub const TOKENIZER_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

// A vision tower in llama.cpp's `mmproj` files (`general.architecture` = `clip`).
pub const CLIP_ARCH: &str = "clip";
/// `general.type` of an `mmproj` file.
pub const MMPROJ_TYPE: &str = "mmproj";
pub const CLIP_PROJECTOR_TYPE: &str = "clip.projector_type";
/// `clip.projector_type` of a Qwen3-VL / Qwen3.5 / Qwen3.6 tower.
pub const CLIP_PROJECTOR_QWEN3VL: &str = "qwen3vl_merger";
pub const CLIP_HAS_VISION: &str = "clip.has_vision_encoder";
pub const CLIP_USE_GELU: &str = "clip.use_gelu";
/// One bool per block: whether it feeds Qwen3-VL's deep-stack mergers.
pub const CLIP_DEEPSTACK: &str = "clip.vision.is_deepstack_layers";
pub const CLIP_HIDDEN: &str = "clip.vision.embedding_length";
pub const CLIP_FFN: &str = "clip.vision.feed_forward_length";
pub const CLIP_BLOCKS: &str = "clip.vision.block_count";
pub const CLIP_HEADS: &str = "clip.vision.attention.head_count";
pub const CLIP_LN_EPS: &str = "clip.vision.attention.layer_norm_epsilon";
pub const CLIP_PATCH: &str = "clip.vision.patch_size";
pub const CLIP_IMAGE_SIZE: &str = "clip.vision.image_size";
pub const CLIP_MERGE: &str = "clip.vision.spatial_merge_size";
pub const CLIP_PROJECTION: &str = "clip.vision.projection_dim";
pub const CLIP_IMAGE_MEAN: &str = "clip.vision.image_mean";
pub const CLIP_IMAGE_STD: &str = "clip.vision.image_std";

/// Keys scoped by the architecture: `{arch}.{suffix}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    BlockCount,
    ContextLength,
    EmbeddingLength,
    FeedForwardLength,
    HeadCount,
    HeadCountKv,
    KeyLength,
    ValueLength,
    RmsEpsilon,
    RopeFreqBase,
    RopeDimensionCount,
    RopeDimensionSections,
    RopeScalingType,
    RopeScalingFactor,
    RopeScalingOriginalContext,
    RopeScalingAttnFactor,
    RopeScalingYarnBetaFast,
    RopeScalingYarnBetaSlow,
    SsmConvKernel,
    SsmStateSize,
    SsmGroupCount,
    SsmTimeStepRank,
    SsmInnerSize,
    FullAttentionInterval,
    NextnPredictLayers,
    ExpertCount,
    ExpertUsedCount,
    ExpertFeedForwardLength,
    ExpertSharedFeedForwardLength,
}

impl Arch {
    /// The part after `{arch}.`.
    pub fn suffix(self) -> &'static str {
        use Arch::*;
        match self {
            BlockCount => "block_count",
            ContextLength => "context_length",
            EmbeddingLength => "embedding_length",
            FeedForwardLength => "feed_forward_length",
            HeadCount => "attention.head_count",
            HeadCountKv => "attention.head_count_kv",
            KeyLength => "attention.key_length",
            ValueLength => "attention.value_length",
            RmsEpsilon => "attention.layer_norm_rms_epsilon",
            RopeFreqBase => "rope.freq_base",
            RopeDimensionCount => "rope.dimension_count",
            RopeDimensionSections => "rope.dimension_sections",
            RopeScalingType => "rope.scaling.type",
            RopeScalingFactor => "rope.scaling.factor",
            RopeScalingOriginalContext => "rope.scaling.original_context_length",
            RopeScalingAttnFactor => "rope.scaling.attn_factor",
            RopeScalingYarnBetaFast => "rope.scaling.yarn_beta_fast",
            RopeScalingYarnBetaSlow => "rope.scaling.yarn_beta_slow",
            SsmConvKernel => "ssm.conv_kernel",
            SsmStateSize => "ssm.state_size",
            SsmGroupCount => "ssm.group_count",
            SsmTimeStepRank => "ssm.time_step_rank",
            SsmInnerSize => "ssm.inner_size",
            FullAttentionInterval => "full_attention_interval",
            NextnPredictLayers => "nextn_predict_layers",
            ExpertCount => "expert_count",
            ExpertUsedCount => "expert_used_count",
            ExpertFeedForwardLength => "expert_feed_forward_length",
            ExpertSharedFeedForwardLength => "expert_shared_feed_forward_length",
        }
    }

    /// The whole key for architecture `arch`.
    pub fn key(self, arch: &str) -> String {
        format!("{arch}.{}", self.suffix())
    }
}
