//! A raw mirror of Hugging Face `config.json` for the Qwen3.5 family: field names exactly as in
//! the file, every field optional, no defaults and no checks. `qinfer-model` turns this into a
//! validated configuration.
//!
//! Two forms exist: multimodal checkpoints nest the language model under `text_config`
//! (`Qwen3_5ForConditionalGeneration`), text-only ones keep those fields at the top level
//! (`qwen3_5_text`). [`RawConfig`] reads both: the top-level text fields are flattened into
//! [`RawConfig::top`].

use std::path::Path;

use serde::Deserialize;

/// Why `config.json` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

/// The whole `config.json`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawConfig {
    pub architectures: Option<Vec<String>>,
    pub text_config: Option<RawTextConfig>,
    pub vision_config: Option<RawVisionConfig>,
    /// The token the chat template writes once per image (`<|image_pad|>`), expanded to one
    /// per merged patch.
    pub image_token_id: Option<u32>,
    pub video_token_id: Option<u32>,
    pub vision_start_token_id: Option<u32>,
    pub vision_end_token_id: Option<u32>,
    /// Top-level fields: the text fields of a text-only config, and `model_type`,
    /// `tie_word_embeddings` of a multimodal one.
    #[serde(flatten)]
    pub top: RawTextConfig,
}

/// Language-model fields (`text_config`, or the top level of a text-only config).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawTextConfig {
    pub model_type: Option<String>,
    pub hidden_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    pub full_attention_interval: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub attention_bias: Option<bool>,
    pub attn_output_gate: Option<bool>,
    pub linear_num_key_heads: Option<usize>,
    pub linear_num_value_heads: Option<usize>,
    pub linear_key_head_dim: Option<usize>,
    pub linear_value_head_dim: Option<usize>,
    pub linear_conv_kernel_dim: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub hidden_act: Option<String>,
    pub vocab_size: Option<usize>,
    pub rms_norm_eps: Option<f64>,
    pub max_position_embeddings: Option<usize>,
    /// The pretraining context of a YaRN config, when kept outside `rope_parameters`.
    pub original_max_position_embeddings: Option<usize>,
    pub rope_parameters: Option<RawRope>,
    /// Older configs keep rope fields at this level instead of in `rope_parameters`.
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub rope_scaling: Option<RawRope>,
    pub tie_word_embeddings: Option<bool>,
    pub mtp_num_hidden_layers: Option<usize>,
    pub num_experts: Option<usize>,
    pub num_experts_per_tok: Option<usize>,
    pub moe_intermediate_size: Option<usize>,
    pub shared_expert_intermediate_size: Option<usize>,
    pub norm_topk_prob: Option<bool>,
    pub mlp_only_layers: Option<Vec<usize>>,
    pub eos_token_id: Option<serde_json::Value>,
}

/// `vision_config` of a multimodal checkpoint (`qwen3_5_vision`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawVisionConfig {
    pub model_type: Option<String>,
    pub depth: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub num_heads: Option<usize>,
    pub in_channels: Option<usize>,
    pub patch_size: Option<usize>,
    pub temporal_patch_size: Option<usize>,
    pub spatial_merge_size: Option<usize>,
    pub out_hidden_size: Option<usize>,
    pub num_position_embeddings: Option<usize>,
    pub hidden_act: Option<String>,
    pub deepstack_visual_indexes: Option<Vec<usize>>,
    pub rope_parameters: Option<RawRope>,
}

/// `rope_parameters` (or legacy `rope_scaling`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RawRope {
    pub rope_type: Option<String>,
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub mrope_section: Option<Vec<usize>>,
    pub mrope_interleaved: Option<bool>,
    pub factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub attention_factor: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub truncate: Option<bool>,
}

impl RawConfig {
    /// Reads and parses `path`.
    pub fn from_file(path: &Path) -> Result<Self, ConfigFileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Io {
            path: p.clone(),
            source,
        })?;
        Self::from_json(&text).map_err(|source| ConfigFileError::Json { path: p, source })
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_forms() {
        let nested = RawConfig::from_json(
            r#"{"architectures":["Qwen3_5ForConditionalGeneration"],"model_type":"qwen3_5",
                "tie_word_embeddings":false,
                "text_config":{"model_type":"qwen3_5_text","hidden_size":64,
                  "rope_parameters":{"rope_type":"default","mrope_section":[2,1,1]}}}"#,
        )
        .unwrap();
        assert_eq!(nested.top.model_type.as_deref(), Some("qwen3_5"));
        let text = nested.text_config.unwrap();
        assert_eq!(text.hidden_size, Some(64));
        assert_eq!(
            text.rope_parameters.unwrap().mrope_section,
            Some(vec![2, 1, 1])
        );

        let flat =
            RawConfig::from_json(r#"{"model_type":"qwen3_5_moe_text","num_experts":8}"#).unwrap();
        assert!(flat.text_config.is_none());
        assert_eq!(flat.top.num_experts, Some(8));
    }

    #[test]
    fn wrong_types_are_errors_with_positions() {
        let err = RawConfig::from_json(r#"{"hidden_size":"big"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
