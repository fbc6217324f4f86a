//! The demo model built into the binary, so `qinfer run` works on a fresh machine with no
//! download.
//!
//! It is a small trained model (`tools/train_demo.py`): the exact Qwen3.5 structure (3 Gated
//! DeltaNet layers + 1 gated attention layer, hidden 256, tied embeddings) with an MTP head
//! trained jointly with the trunk, the real vocabulary (248,320 rows), tokenizer and chat
//! template, trained for under an hour on a CPU on the Python documentation and standard
//! library that Debian ships. It writes English sentences about Python (not always true
//! ones), and its MTP head makes speculative decoding pay. It is stored as a Q8_0 GGUF
//! (written by `qinfer quantize`, draft vocabulary included), gzip-compressed: every
//! vocabulary row the training text never used is one shared vector, so the file compresses
//! to the size of the rows it did use. It loads through the same GGUF loader as a file.
//!
//! [`random_model`] builds models of any dense shape with seeded random weights, for
//! benchmarks of real shapes without a download.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use qinfer_formats::gguf::GgufFile;
use qinfer_formats::hf_config::RawConfig;
use qinfer_formats::safetensors::{Checkpoint, StDType, TensorEntry};
use qinfer_model::loader::Loader;
use qinfer_model::names::{
    self, Global, LayerTensor, Naming, Prefix, VisionBlockTensor, VisionTensor,
};
use qinfer_model::{ModelConfig, NormConvention, Qwen35, VisionConfig, VisionTower};
use qinfer_tensor::{ByteView, DType};

use crate::sampler::SplitMix64;

/// Name shown for the demo model.
pub const DEMO_NAME: &str =
    "qinfer-demo (small Qwen3.5-structured model with an MTP head, trained on the Python docs)";

/// The demo model: `qinfer quantize --type q8_0` of `tools/train_demo.py`'s output, gzipped.
const DEMO_GGUF_GZ: &[u8] = include_bytes!("../../../assets/demo/qinfer-demo-q8_0.gguf.gz");

/// `config.json` of a tiny random model with the demo's old shape (tests of the loader and
/// the engine that need a model, not a trained one).
pub const RANDOM_CONFIG: &str = r#"{
  "architectures": ["Qwen3_5ForCausalLM"],
  "model_type": "qwen3_5_text",
  "hidden_size": 64,
  "num_hidden_layers": 4,
  "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"],
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 32,
  "attn_output_gate": true,
  "linear_num_key_heads": 2,
  "linear_num_value_heads": 4,
  "linear_key_head_dim": 16,
  "linear_value_head_dim": 16,
  "linear_conv_kernel_dim": 4,
  "intermediate_size": 128,
  "hidden_act": "silu",
  "vocab_size": 248320,
  "rms_norm_eps": 1e-6,
  "max_position_embeddings": 32768,
  "rope_parameters": {"rope_type": "default", "rope_theta": 10000000, "partial_rotary_factor": 0.25,
                      "mrope_section": [2, 1, 1], "mrope_interleaved": true},
  "tie_word_embeddings": true
}"#;

/// Loads the demo model (decompressed from the binary: a few hundred milliseconds).
pub fn demo_model() -> Qwen35 {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(DEMO_GGUF_GZ)
        .read_to_end(&mut bytes)
        .expect("the built-in demo model is a valid gzip stream");
    let file = GgufFile::from_view("<built-in demo>", ByteView::from_vec(bytes))
        .expect("the built-in demo model is a valid GGUF file");
    Qwen35::from_gguf(&file).expect("the built-in demo model loads")
}

/// A model of any dense Qwen3.5 `config.json` with the demo's seeded random BF16 weights
/// (benchmarks of real shapes without a download).
pub fn random_model(config_json: &str) -> Result<Qwen35, String> {
    let raw = RawConfig::from_json(config_json).map_err(|e| e.to_string())?;
    let config = ModelConfig::from_hf(&raw).map_err(|e| e.to_string())?;
    if !matches!(
        config.feed_forward,
        qinfer_model::FeedForwardConfig::Dense { .. }
    ) {
        return Err("random_model builds dense models only".into());
    }
    let checkpoint = demo_checkpoint(&config);
    Qwen35::from_checkpoint(config, &checkpoint).map_err(|e| e.to_string())
}

/// The vision tower the demo bundle carries (`ModelBundle::demo`): random, untrained, small
/// (2 blocks of width 64, patch 16, merge 2, a 16×16 position table), with the real
/// vocabulary's image tokens. It makes the image path of every interface work with the demo —
/// images are accepted, placed and cached as with a real model — though what it "sees" means
/// nothing.
pub const DEMO_VISION_CONFIG: &str = r#"{
  "image_token_id": 248056,
  "video_token_id": 248057,
  "vision_start_token_id": 248053,
  "vision_end_token_id": 248054,
  "vision_config": {
    "model_type": "qwen3_5_vision",
    "depth": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 4,
    "in_channels": 3,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "out_hidden_size": OUT_HIDDEN,
    "num_position_embeddings": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "rope_parameters": {"rope_type": "axial", "rope_theta": 10000.0}
  }
}"#;

/// A seeded random vision tower of [`DEMO_VISION_CONFIG`] for a model of width `hidden` and
/// `vocab` tokens.
pub fn demo_vision_tower(hidden: usize, vocab: usize) -> Result<VisionTower, String> {
    let json = DEMO_VISION_CONFIG.replace("OUT_HIDDEN", &hidden.to_string());
    let raw = RawConfig::from_json(&json).map_err(|e| e.to_string())?;
    let vc = VisionConfig::from_hf(&raw, hidden, vocab)
        .map_err(|e| e.to_string())?
        .ok_or("no vision_config")?;
    let (h, f, m) = (vc.hidden, vc.intermediate, vc.hidden * vc.merge * vc.merge);
    let scaled = |cols: usize| Init::Scaled(1.0 / (cols as f32).sqrt());
    let mut tensors = vec![
        (
            names::vision(VisionTensor::PatchWeight),
            vec![h, vc.in_channels, vc.temporal_patch, vc.patch, vc.patch],
            scaled(vc.patch_values()),
        ),
        (
            names::vision(VisionTensor::PatchBias),
            vec![h],
            Init::Constant(0.0),
        ),
        (
            names::vision(VisionTensor::PosEmbed),
            vec![vc.pos_side * vc.pos_side, h],
            Init::Scaled(0.02),
        ),
    ];
    let mut vector =
        |t: VisionTensor, n: usize, init: Init| tensors.push((names::vision(t), vec![n], init));
    vector(VisionTensor::MergerNormWeight, h, Init::Constant(1.0));
    vector(VisionTensor::MergerNormBias, h, Init::Constant(0.0));
    vector(VisionTensor::MergerFc1Bias, m, Init::Constant(0.0));
    vector(VisionTensor::MergerFc2Bias, hidden, Init::Constant(0.0));
    for i in 0..vc.depth {
        use VisionBlockTensor as B;
        let b = |t: B| VisionTensor::Block(i, t);
        for (t, n, init) in [
            (B::Norm1Weight, h, Init::Constant(1.0)),
            (B::Norm1Bias, h, Init::Constant(0.0)),
            (B::Norm2Weight, h, Init::Constant(1.0)),
            (B::Norm2Bias, h, Init::Constant(0.0)),
            (B::QkvBias, 3 * h, Init::Constant(0.0)),
            (B::ProjBias, h, Init::Constant(0.0)),
            (B::Fc1Bias, f, Init::Constant(0.0)),
            (B::Fc2Bias, h, Init::Constant(0.0)),
        ] {
            vector(b(t), n, init);
        }
    }
    for i in 0..vc.depth {
        use VisionBlockTensor as B;
        let b = |t: B| names::vision(VisionTensor::Block(i, t));
        for (t, rows, cols) in [
            (B::QkvWeight, 3 * h, h),
            (B::ProjWeight, h, h),
            (B::Fc1Weight, f, h),
            (B::Fc2Weight, h, f),
        ] {
            tensors.push((b(t), vec![rows, cols], scaled(cols)));
        }
    }
    tensors.push((
        names::vision(VisionTensor::MergerFc1Weight),
        vec![m, m],
        scaled(m),
    ));
    tensors.push((
        names::vision(VisionTensor::MergerFc2Weight),
        vec![hidden, m],
        scaled(m),
    ));
    let checkpoint = checkpoint_of(tensors, 0x5649_5349_4F4E_u64);
    let ld = Loader::new(
        &checkpoint,
        Naming::Hf(Prefix::Model),
        NormConvention::Plain,
    );
    VisionTower::load(&ld, vc).map_err(|e| e.to_string())
}

/// Every tensor the text model needs, with seeded values scaled like a trained model's
/// (matrices ~ 1/√fan-in, norms near their neutral value).
fn demo_checkpoint(c: &ModelConfig) -> Checkpoint {
    let (h, v) = (c.hidden, c.vocab);
    let d = c.deltanet;
    let a = c.attention;
    let i = match c.feed_forward {
        qinfer_model::FeedForwardConfig::Dense { intermediate } => intermediate,
        qinfer_model::FeedForwardConfig::Moe { .. } => unreachable!("the demo model is dense"),
    };
    let mut tensors: Vec<(String, Vec<usize>, Init)> = vec![
        (
            names::global(Prefix::Model, Global::Embed),
            vec![v, h],
            Init::Scaled(1.0),
        ),
        (
            names::global(Prefix::Model, Global::FinalNorm),
            vec![h],
            Init::Scaled(0.1),
        ),
    ];
    for (l, kind) in c.layers.iter().enumerate() {
        let p = |t: LayerTensor| names::layer(Prefix::Model, l, t);
        let m = |_rows: usize, cols: usize| Init::Scaled(1.0 / (cols as f32).sqrt());
        tensors.push((p(LayerTensor::InputNorm), vec![h], Init::Scaled(0.1)));
        tensors.push((
            p(LayerTensor::PostAttentionNorm),
            vec![h],
            Init::Scaled(0.1),
        ));
        for (n, rows, cols) in [
            (LayerTensor::MlpGate, i, h),
            (LayerTensor::MlpUp, i, h),
            (LayerTensor::MlpDown, h, i),
        ] {
            tensors.push((p(n), vec![rows, cols], m(rows, cols)));
        }
        match kind {
            qinfer_model::LayerKind::DeltaNet => {
                let (cd, vd, nv) = (d.conv_dim(), d.value_dim(), d.n_v_heads);
                for (n, rows, cols) in [
                    (LayerTensor::DeltaNetQkv, cd, h),
                    (LayerTensor::DeltaNetZ, vd, h),
                    (LayerTensor::DeltaNetB, nv, h),
                    (LayerTensor::DeltaNetA, nv, h),
                    (LayerTensor::DeltaNetOut, h, vd),
                ] {
                    tensors.push((p(n), vec![rows, cols], m(rows, cols)));
                }
                tensors.push((
                    p(LayerTensor::DeltaNetConv),
                    vec![cd, 1, d.conv_kernel],
                    Init::Scaled(0.5),
                ));
                tensors.push((
                    p(LayerTensor::DeltaNetDtBias),
                    vec![nv],
                    Init::Constant(-2.0),
                ));
                tensors.push((p(LayerTensor::DeltaNetALog), vec![nv], Init::Constant(0.5)));
                tensors.push((
                    p(LayerTensor::DeltaNetNorm),
                    vec![d.v_head_dim],
                    Init::Constant(1.0),
                ));
            }
            qinfer_model::LayerKind::Attention => {
                let (q, kv, o) = (
                    2 * a.n_heads * a.head_dim,
                    a.n_kv_heads * a.head_dim,
                    a.n_heads * a.head_dim,
                );
                for (n, rows, cols) in [
                    (LayerTensor::AttnQ, q, h),
                    (LayerTensor::AttnK, kv, h),
                    (LayerTensor::AttnV, kv, h),
                    (LayerTensor::AttnO, h, o),
                ] {
                    tensors.push((p(n), vec![rows, cols], m(rows, cols)));
                }
                tensors.push((
                    p(LayerTensor::AttnQNorm),
                    vec![a.head_dim],
                    Init::Scaled(0.1),
                ));
                tensors.push((
                    p(LayerTensor::AttnKNorm),
                    vec![a.head_dim],
                    Init::Scaled(0.1),
                ));
            }
        }
    }
    checkpoint_of(tensors, 0x5157_454E_3335_u64)
}

/// A BF16 checkpoint in memory of `(name, shape, init)` tensors, values drawn from `seed`.
fn checkpoint_of(tensors: Vec<(String, Vec<usize>, Init)>, seed: u64) -> Checkpoint {
    let mut rng = SplitMix64(seed);
    let mut map = BTreeMap::new();
    for (name, shape, init) in tensors {
        let n: usize = shape.iter().product();
        let mut bytes = Vec::with_capacity(2 * n);
        for _ in 0..n {
            let x = match init {
                Init::Scaled(s) => s * unit(&mut rng),
                Init::Constant(c) => c,
            };
            bytes.extend_from_slice(&half::bf16::from_f32(x).to_le_bytes());
        }
        let entry = TensorEntry {
            dtype: StDType::Known(DType::BF16),
            shape,
            data: ByteView::from_vec(bytes),
            file: PathBuf::from("<built-in demo>"),
        };
        map.insert(name, entry);
    }
    Checkpoint {
        tensors: map,
        files: vec![PathBuf::from("<built-in demo>")],
    }
}

#[derive(Clone, Copy, Debug)]
enum Init {
    Scaled(f32),
    Constant(f32),
}

/// Uniform with mean 0 and variance 1 (cheap, and enough for random weights).
fn unit(rng: &mut SplitMix64) -> f32 {
    let u = ((rng.next_u64() >> 40) as f32 + 0.5) / (1u64 << 24) as f32;
    (2.0 * u - 1.0) * 3f32.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use qinfer_model::Rows;

    #[test]
    fn demo_model_loads_with_its_mtp_head_and_runs() {
        let a = demo_model();
        assert_eq!(a.config.vocab, 248_320);
        assert!(a.has_mtp());
        let mut s = a.new_state();
        let logits = a.forward(&[248045, 846, 198], &mut s, Rows::Last).unwrap();
        assert_eq!(logits.cols, 248_320);
        assert!(logits.data.iter().all(|v| v.is_finite()));
    }
}
