//! The one table from tensor roles to checkpoint names, with a column per naming scheme.
//!
//! Hugging Face checkpoints name the language model `model.language_model.*` (multimodal
//! classes) or `model.*` (text-only classes); the LM head is `lm_head.weight` in both. GGUF
//! files (llama.cpp's converter) use `blk.{l}.*`, `token_embd`, `output_norm`, `output`. MTP and
//! vision tensors are recognised by prefix.

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

/// A naming scheme: a Hugging Face prefix, or GGUF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    Hf(Prefix),
    Gguf,
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
    /// Stacked `[E, I, H]` gate projections (GGUF keeps gate and up apart).
    MoeGateExperts,
    /// Stacked `[E, I, H]` up projections.
    MoeUpExperts,
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
    format!("{}layers.{l}.{}", prefix.as_str(), hf_layer_suffix(t))
}

/// The part of a Hugging Face layer tensor's name after `layers.{l}.`.
fn hf_layer_suffix(t: LayerTensor) -> String {
    use LayerTensor::*;
    match t {
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
        MoeGateExperts => "mlp.experts.gate_proj".to_string(),
        MoeUpExperts => "mlp.experts.up_proj".to_string(),
        MoeExpertGate(e) => format!("mlp.experts.{e}.gate_proj.weight"),
        MoeExpertUp(e) => format!("mlp.experts.{e}.up_proj.weight"),
        MoeExpertDown(e) => format!("mlp.experts.{e}.down_proj.weight"),
        SharedExpertGate => "mlp.shared_expert.gate_proj.weight".to_string(),
        SharedExpertUp => "mlp.shared_expert.up_proj.weight".to_string(),
        SharedExpertDown => "mlp.shared_expert.down_proj.weight".to_string(),
        SharedExpertScalarGate => "mlp.shared_expert_gate.weight".to_string(),
    }
}

/// Tensors of the multi-token-prediction head (one MTP block, as Qwen3.5/3.6 have).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtpTensor {
    /// `[H, 2H]` projection of `[embedding ‖ hidden]`.
    Fc,
    /// Norm of the token embedding.
    EmbedNorm,
    /// Norm of the incoming hidden state.
    HiddenNorm,
    /// Final norm of the block.
    FinalNorm,
    /// A tensor of the block's (full-attention) decoder layer.
    Layer(LayerTensor),
}

/// Name of an MTP tensor under `naming`. GGUF files store the MTP block after the decoder, as
/// `blk.{block}` with `block` = the decoder's layer count; Hugging Face names it `mtp.*`.
pub fn mtp_in(naming: Naming, block: usize, t: MtpTensor) -> String {
    match (naming, t) {
        (Naming::Hf(_), MtpTensor::Fc) => "mtp.fc.weight".to_string(),
        (Naming::Hf(_), MtpTensor::EmbedNorm) => "mtp.pre_fc_norm_embedding.weight".to_string(),
        (Naming::Hf(_), MtpTensor::HiddenNorm) => "mtp.pre_fc_norm_hidden.weight".to_string(),
        (Naming::Hf(_), MtpTensor::FinalNorm) => "mtp.norm.weight".to_string(),
        (Naming::Hf(_), MtpTensor::Layer(t)) => format!("mtp.layers.0.{}", hf_layer_suffix(t)),
        (Naming::Gguf, MtpTensor::Fc) => format!("blk.{block}.nextn.eh_proj.weight"),
        (Naming::Gguf, MtpTensor::EmbedNorm) => format!("blk.{block}.nextn.enorm.weight"),
        (Naming::Gguf, MtpTensor::HiddenNorm) => format!("blk.{block}.nextn.hnorm.weight"),
        (Naming::Gguf, MtpTensor::FinalNorm) => {
            format!("blk.{block}.nextn.shared_head_norm.weight")
        }
        (Naming::Gguf, MtpTensor::Layer(t)) => gguf_layer(block, t),
    }
}

/// Name of a whole-model tensor under `naming`.
pub fn global_in(naming: Naming, t: Global) -> String {
    match naming {
        Naming::Hf(p) => global(p, t),
        Naming::Gguf => match t {
            Global::Embed => "token_embd.weight",
            Global::FinalNorm => "output_norm.weight",
            Global::LmHead => "output.weight",
        }
        .to_string(),
    }
}

/// Name of a tensor of layer `l` under `naming`.
pub fn layer_in(naming: Naming, l: usize, t: LayerTensor) -> String {
    match naming {
        Naming::Hf(p) => layer(p, l, t),
        Naming::Gguf => gguf_layer(l, t),
    }
}

/// GGUF name of a tensor of layer `l` (llama.cpp's `qwen35` / `qwen35moe` names).
pub fn gguf_layer(l: usize, t: LayerTensor) -> String {
    use LayerTensor::*;
    let suffix = match t {
        InputNorm => "attn_norm.weight".to_string(),
        PostAttentionNorm => "post_attention_norm.weight".to_string(),
        AttnQ => "attn_q.weight".to_string(),
        AttnK => "attn_k.weight".to_string(),
        AttnV => "attn_v.weight".to_string(),
        AttnO => "attn_output.weight".to_string(),
        AttnQNorm => "attn_q_norm.weight".to_string(),
        AttnKNorm => "attn_k_norm.weight".to_string(),
        DeltaNetQkv => "attn_qkv.weight".to_string(),
        DeltaNetZ => "attn_gate.weight".to_string(),
        DeltaNetB => "ssm_beta.weight".to_string(),
        DeltaNetA => "ssm_alpha.weight".to_string(),
        DeltaNetConv => "ssm_conv1d.weight".to_string(),
        DeltaNetDtBias => "ssm_dt.bias".to_string(),
        // GGUF stores `A = −exp(A_log)` under this name (see the loader).
        DeltaNetALog => "ssm_a".to_string(),
        DeltaNetNorm => "ssm_norm.weight".to_string(),
        DeltaNetOut => "ssm_out.weight".to_string(),
        MlpGate => "ffn_gate.weight".to_string(),
        MlpUp => "ffn_up.weight".to_string(),
        MlpDown => "ffn_down.weight".to_string(),
        MoeRouter => "ffn_gate_inp.weight".to_string(),
        MoeGateUpExperts => "ffn_gate_up_exps.weight".to_string(),
        MoeDownExperts => "ffn_down_exps.weight".to_string(),
        MoeGateExperts => "ffn_gate_exps.weight".to_string(),
        MoeUpExperts => "ffn_up_exps.weight".to_string(),
        MoeExpertGate(e) => format!("ffn_gate.{e}.weight"),
        MoeExpertUp(e) => format!("ffn_up.{e}.weight"),
        MoeExpertDown(e) => format!("ffn_down.{e}.weight"),
        SharedExpertGate => "ffn_gate_shexp.weight".to_string(),
        SharedExpertUp => "ffn_up_shexp.weight".to_string(),
        SharedExpertDown => "ffn_down_shexp.weight".to_string(),
        SharedExpertScalarGate => "ffn_gate_inp_shexp.weight".to_string(),
    };
    format!("blk.{l}.{suffix}")
}

/// Tensors of a vision-tower block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisionBlockTensor {
    Norm1Weight,
    Norm1Bias,
    Norm2Weight,
    Norm2Bias,
    QkvWeight,
    QkvBias,
    ProjWeight,
    ProjBias,
    Fc1Weight,
    Fc1Bias,
    Fc2Weight,
    Fc2Bias,
}

/// Tensors of the vision tower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VisionTensor {
    /// The patch embedding's `Conv3d` kernel, `[hidden, C, Tp, p, p]`.
    PatchWeight,
    PatchBias,
    /// The learned position table, `[side², hidden]`.
    PosEmbed,
    Block(usize, VisionBlockTensor),
    MergerNormWeight,
    MergerNormBias,
    MergerFc1Weight,
    MergerFc1Bias,
    MergerFc2Weight,
    MergerFc2Bias,
    /// The second temporal half of the patch kernel, `[hidden, C, p, p]`: llama.cpp's `mmproj`
    /// files store the `Conv3d` kernel as one `Conv2d` kernel per frame (this and
    /// [`VisionTensor::PatchWeight`], which then holds the first frame's).
    PatchWeightT1,
}

/// Name of a vision-tower tensor under `naming` (GGUF: llama.cpp's `mmproj` names).
pub fn vision_in(naming: Naming, t: VisionTensor) -> String {
    match naming {
        Naming::Hf(_) => vision(t),
        Naming::Gguf => mmproj(t),
    }
}

/// llama.cpp `mmproj` name of a vision-tower tensor (`clip.projector_type` `qwen3vl_merger`).
fn mmproj(t: VisionTensor) -> String {
    use VisionBlockTensor as B;
    match t {
        VisionTensor::PatchWeight => "v.patch_embd.weight".to_string(),
        VisionTensor::PatchWeightT1 => "v.patch_embd.weight.1".to_string(),
        VisionTensor::PatchBias => "v.patch_embd.bias".to_string(),
        VisionTensor::PosEmbed => "v.position_embd.weight".to_string(),
        VisionTensor::MergerNormWeight => "v.post_ln.weight".to_string(),
        VisionTensor::MergerNormBias => "v.post_ln.bias".to_string(),
        VisionTensor::MergerFc1Weight => "mm.0.weight".to_string(),
        VisionTensor::MergerFc1Bias => "mm.0.bias".to_string(),
        VisionTensor::MergerFc2Weight => "mm.2.weight".to_string(),
        VisionTensor::MergerFc2Bias => "mm.2.bias".to_string(),
        VisionTensor::Block(i, b) => {
            let part = match b {
                B::Norm1Weight => "ln1.weight",
                B::Norm1Bias => "ln1.bias",
                B::Norm2Weight => "ln2.weight",
                B::Norm2Bias => "ln2.bias",
                B::QkvWeight => "attn_qkv.weight",
                B::QkvBias => "attn_qkv.bias",
                B::ProjWeight => "attn_out.weight",
                B::ProjBias => "attn_out.bias",
                B::Fc1Weight => "ffn_up.weight",
                B::Fc1Bias => "ffn_up.bias",
                B::Fc2Weight => "ffn_down.weight",
                B::Fc2Bias => "ffn_down.bias",
            };
            format!("v.blk.{i}.{part}")
        }
    }
}

/// Hugging Face name of a vision-tower tensor (`model.visual.*`).
pub fn vision(t: VisionTensor) -> String {
    use VisionBlockTensor as B;
    let suffix = match t {
        VisionTensor::PatchWeight | VisionTensor::PatchWeightT1 => {
            "patch_embed.proj.weight".to_string()
        }
        VisionTensor::PatchBias => "patch_embed.proj.bias".to_string(),
        VisionTensor::PosEmbed => "pos_embed.weight".to_string(),
        VisionTensor::MergerNormWeight => "merger.norm.weight".to_string(),
        VisionTensor::MergerNormBias => "merger.norm.bias".to_string(),
        VisionTensor::MergerFc1Weight => "merger.linear_fc1.weight".to_string(),
        VisionTensor::MergerFc1Bias => "merger.linear_fc1.bias".to_string(),
        VisionTensor::MergerFc2Weight => "merger.linear_fc2.weight".to_string(),
        VisionTensor::MergerFc2Bias => "merger.linear_fc2.bias".to_string(),
        VisionTensor::Block(i, b) => {
            let part = match b {
                B::Norm1Weight => "norm1.weight",
                B::Norm1Bias => "norm1.bias",
                B::Norm2Weight => "norm2.weight",
                B::Norm2Bias => "norm2.bias",
                B::QkvWeight => "attn.qkv.weight",
                B::QkvBias => "attn.qkv.bias",
                B::ProjWeight => "attn.proj.weight",
                B::ProjBias => "attn.proj.bias",
                B::Fc1Weight => "mlp.linear_fc1.weight",
                B::Fc1Bias => "mlp.linear_fc1.bias",
                B::Fc2Weight => "mlp.linear_fc2.weight",
                B::Fc2Bias => "mlp.linear_fc2.bias",
            };
            format!("blocks.{i}.{part}")
        }
    };
    format!("model.visual.{suffix}")
}

/// Groups of tensors that are recognised but not used by the text model yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extra {
    /// Multi-token-prediction head (`mtp.*`).
    Mtp,
    /// Vision tower (`model.visual.*`).
    Vision,
}

/// Classifies a tensor the text model does not consume, knowing the decoder has `n_layers`
/// layers (GGUF files store the MTP block as `blk.{n_layers}`).
pub fn extra_in(naming: Naming, name: &str, n_layers: usize) -> Option<Extra> {
    if naming == Naming::Gguf
        && let Some(l) = gguf_block(name)
        && l >= n_layers
    {
        return Some(Extra::Mtp);
    }
    extra(name)
}

/// The block index `N` of a GGUF tensor named `blk.N.…`.
pub fn gguf_block(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Classifies a tensor name that the text model does not consume.
pub fn extra(name: &str) -> Option<Extra> {
    if name.starts_with("mtp.") || name.contains(".nextn.") {
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
        for t in [
            MtpTensor::Fc,
            MtpTensor::EmbedNorm,
            MtpTensor::HiddenNorm,
            MtpTensor::FinalNorm,
            MtpTensor::Layer(LayerTensor::AttnQ),
        ] {
            let hf = mtp_in(Naming::Hf(Prefix::Model), 64, t);
            let gguf = mtp_in(Naming::Gguf, 64, t);
            assert_eq!(extra(&hf), Some(Extra::Mtp), "{hf}");
            assert_eq!(
                extra_in(Naming::Gguf, &gguf, 64),
                Some(Extra::Mtp),
                "{gguf}"
            );
        }
        assert_eq!(
            mtp_in(
                Naming::Hf(Prefix::Model),
                64,
                MtpTensor::Layer(LayerTensor::AttnQ)
            ),
            "mtp.layers.0.self_attn.q_proj.weight"
        );
        assert_eq!(
            mtp_in(Naming::Gguf, 64, MtpTensor::HiddenNorm),
            "blk.64.nextn.hnorm.weight"
        );
        assert_eq!(
            extra("model.visual.blocks.0.attn.qkv.weight"),
            Some(Extra::Vision)
        );
        assert_eq!(extra("model.norm.weight"), None);
        let qkv = vision(VisionTensor::Block(3, VisionBlockTensor::QkvBias));
        assert_eq!(qkv, "model.visual.blocks.3.attn.qkv.bias");
        assert_eq!(extra(&qkv), Some(Extra::Vision));
        assert_eq!(global_in(Naming::Gguf, Global::Embed), "token_embd.weight");
        assert_eq!(
            layer_in(Naming::Gguf, 3, LayerTensor::AttnQNorm),
            "blk.3.attn_q_norm.weight"
        );
        assert_eq!(
            layer_in(Naming::Gguf, 0, LayerTensor::DeltaNetALog),
            "blk.0.ssm_a"
        );
        assert_eq!(extra("blk.8.nextn.eh_proj.weight"), Some(Extra::Mtp));
    }
}
