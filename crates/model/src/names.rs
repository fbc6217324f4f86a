//! The one table from tensor roles to checkpoint names.
//!
//! Hugging Face checkpoints name the language model `model.language_model.*` (multimodal
//! classes) or `model.*` (text-only classes); the LM head is `lm_head.weight` in both. MTP and
//! vision tensors are recognised by prefix. GGUF names join this table as a second column.

/// Where the language-model tensors live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// `model.language_model.` (`Qwen3_5ForConditionalGeneration`).
    LanguageModel,
    /// `model.` (`Qwen3_5ForCausalLM`).
    Model,
}

impl Prefix {
    fn as_str(self) -> &'static str {
        match self {
            Prefix::LanguageModel => "model.language_model.",
            Prefix::Model => "model.",
        }
    }

    /// Both prefixes, most specific first (for detection).
    pub const ALL: [Prefix; 2] = [Prefix::LanguageModel, Prefix::Model];
}

/// Whole-model tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    Embed,
    FinalNorm,
    LmHead,
}

/// Per-layer tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerTensor {
    InputNorm,
    PostAttentionNorm,
    // Gated attention.
    AttnQ,
    AttnK,
    AttnV,
    AttnO,
    AttnQNorm,
    AttnKNorm,
    // Gated DeltaNet.
    DeltaNetQkv,
    DeltaNetZ,
    DeltaNetB,
    DeltaNetA,
    DeltaNetConv,
    DeltaNetDtBias,
    DeltaNetALog,
    DeltaNetNorm,
    DeltaNetOut,
    // Dense SwiGLU MLP.
    MlpGate,
    MlpUp,
    MlpDown,
    // MoE.
    MoeRouter,
    /// Stacked `[E, 2I, H]` gate‖up of every expert.
    MoeGateUpExperts,
    /// Stacked `[E, H, I]`.
    MoeDownExperts,
    /// Per-expert form (`experts.{e}.gate_proj`), accepted as an alternative to the stacks.
    MoeExpertGate(usize),
    MoeExpertUp(usize),
    MoeExpertDown(usize),
    SharedExpertGate,
    SharedExpertUp,
    SharedExpertDown,
    /// `[1, H]` sigmoid gate of the shared expert.
    SharedExpertScalarGate,
}

/// Hugging Face name of a whole-model tensor.
pub fn global(prefix: Prefix, t: Global) -> String {
    match t {
        Global::Embed => format!("{}embed_tokens.weight", prefix.as_str()),
        Global::FinalNorm => format!("{}norm.weight", prefix.as_str()),
        Global::LmHead => "lm_head.weight".to_string(),
    }
}

/// Hugging Face name of a tensor of layer `l`.
pub fn layer(prefix: Prefix, l: usize, t: LayerTensor) -> String {
    use LayerTensor::*;
    let suffix = match t {
        InputNorm => "input_layernorm.weight".to_string(),
        PostAttentionNorm => "post_attention_layernorm.weight".to_string(),
        AttnQ => "self_attn.q_proj.weight".to_string(),
        AttnK => "self_attn.k_proj.weight".to_string(),
        AttnV => "self_attn.v_proj.weight".to_string(),
        AttnO => "self_attn.o_proj.weight".to_string(),
        AttnQNorm => "self_attn.q_norm.weight".to_string(),
        AttnKNorm => "self_attn.k_norm.weight".to_string(),
        DeltaNetQkv => "linear_attn.in_proj_qkv.weight".to_string(),
        DeltaNetZ => "linear_attn.in_proj_z.weight".to_string(),
        DeltaNetB => "linear_attn.in_proj_b.weight".to_string(),
        DeltaNetA => "linear_attn.in_proj_a.weight".to_string(),
        DeltaNetConv => "linear_attn.conv1d.weight".to_string(),
        DeltaNetDtBias => "linear_attn.dt_bias".to_string(),
        DeltaNetALog => "linear_attn.A_log".to_string(),
        DeltaNetNorm => "linear_attn.norm.weight".to_string(),
        DeltaNetOut => "linear_attn.out_proj.weight".to_string(),
        MlpGate => "mlp.gate_proj.weight".to_string(),
        MlpUp => "mlp.up_proj.weight".to_string(),
        MlpDown => "mlp.down_proj.weight".to_string(),
        MoeRouter => "mlp.gate.weight".to_string(),
        MoeGateUpExperts => "mlp.experts.gate_up_proj".to_string(),
        MoeDownExperts => "mlp.experts.down_proj".to_string(),
        MoeExpertGate(e) => format!("mlp.experts.{e}.gate_proj.weight"),
        MoeExpertUp(e) => format!("mlp.experts.{e}.up_proj.weight"),
        MoeExpertDown(e) => format!("mlp.experts.{e}.down_proj.weight"),
        SharedExpertGate => "mlp.shared_expert.gate_proj.weight".to_string(),
        SharedExpertUp => "mlp.shared_expert.up_proj.weight".to_string(),
        SharedExpertDown => "mlp.shared_expert.down_proj.weight".to_string(),
        SharedExpertScalarGate => "mlp.shared_expert_gate.weight".to_string(),
    };
    format!("{}layers.{l}.{suffix}", prefix.as_str())
}

/// Groups of tensors that are recognised but not used by the text model yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extra {
    /// Multi-token-prediction head (`mtp.*`).
    Mtp,
    /// Vision tower (`model.visual.*`).
    Vision,
}

/// Classifies a tensor name that the text model does not consume.
pub fn extra(name: &str) -> Option<Extra> {
    if name.starts_with("mtp.") {
        Some(Extra::Mtp)
    } else if name.starts_with("model.visual.") || name.starts_with("visual.") {
        Some(Extra::Vision)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_checkpoint_layout() {
        assert_eq!(
            global(Prefix::LanguageModel, Global::Embed),
            "model.language_model.embed_tokens.weight"
        );
        assert_eq!(global(Prefix::Model, Global::LmHead), "lm_head.weight");
        assert_eq!(
            layer(Prefix::LanguageModel, 3, LayerTensor::AttnQ),
            "model.language_model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            layer(Prefix::Model, 0, LayerTensor::DeltaNetALog),
            "model.layers.0.linear_attn.A_log"
        );
        assert_eq!(
            layer(Prefix::Model, 1, LayerTensor::MoeExpertDown(7)),
            "model.layers.1.mlp.experts.7.down_proj.weight"
        );
        assert_eq!(extra("mtp.fc.weight"), Some(Extra::Mtp));
        assert_eq!(
            extra("model.visual.blocks.0.attn.qkv.weight"),
            Some(Extra::Vision)
        );
        assert_eq!(extra("model.norm.weight"), None);
    }
}
