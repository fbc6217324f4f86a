//! The ops. Each file holds one family; all take `f32` activations.

mod attention;
mod conv;
mod delta_rule;
mod elementwise;
mod encoder;
mod matmul;
mod norm;
mod rope;

pub use attention::{AttentionShape, KvRows, KvSegment, causal_attention, causal_attention_blocks};
pub use conv::{causal_conv1d_silu, causal_conv1d_silu_keep, conv_taps};
pub use delta_rule::{
    DeltaRuleInputs, DeltaRuleShape, VHeadOrder, gated_delta_rule_chunked,
    gated_delta_rule_recurrent,
};
pub use elementwise::{add_assign, sigmoid, silu, softmax, softplus, swiglu};
pub use encoder::{add_bias, full_attention, gelu, layer_norm};
pub(crate) use matmul::dot;
pub use matmul::{
    embedding, matmul, matmul_jobs, matmul_many, matmul_ref, quantize_rows, weight_dtype_supported,
};
pub use norm::{gated_rms_norm, l2_norm, rms_norm};
pub use rope::rope_neox;
