//! Loading llama.cpp GGUF files of the `qwen35` / `qwen35moe` architectures through the same
//! model code as safetensors: GGUF metadata becomes a [`ModelConfig`] (plain norms, tiled value
//! heads), and the GGUF file is a [`TensorSource`] read with the GGUF column of the name table.
//! Weights stay in their storage format inside the mmap.

use std::path::Path;

use qinfer_formats::gguf::{GgufFile, Value, keys};

use crate::config::{Metadata, ModelConfig, NormConvention};
use crate::error::LoadError;
use crate::loader::{Loader, TensorSource, TensorView};
use crate::names::{self, Global, Naming, VisionTensor};
use crate::qwen35::Qwen35;
use crate::vision::{VisionConfig, VisionTower};

/// GGUF metadata seen through the model's [`Metadata`] trait.
struct GgufMetadata<'a>(&'a GgufFile);

fn type_error(v: &Value, want: &str) -> String {
    format!("expected {want}, found {}", v.type_name())
}

impl Metadata for GgufMetadata<'_> {
    fn u64(&self, key: &str) -> Result<Option<u64>, String> {
        self.0
            .get(key)
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| type_error(v, "a non-negative integer"))
            })
            .transpose()
    }

    fn f64(&self, key: &str) -> Result<Option<f64>, String> {
        self.0
            .get(key)
            .map(|v| v.as_f64().ok_or_else(|| type_error(v, "a number")))
            .transpose()
    }

    fn string(&self, key: &str) -> Result<Option<String>, String> {
        self.0
            .get(key)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| type_error(v, "a string"))
            })
            .transpose()
    }

    fn u64s(&self, key: &str) -> Result<Option<Vec<u64>>, String> {
        let Some(v) = self.0.get(key) else {
            return Ok(None);
        };
        if let Some(x) = v.as_u64() {
            return Ok(Some(vec![x]));
        }
        let items = v
            .as_array()
            .ok_or_else(|| type_error(v, "an integer or an array of integers"))?;
        items
            .iter()
            .map(|x| {
                x.as_u64()
                    .ok_or_else(|| type_error(x, "an array of non-negative integers"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

impl TensorSource for GgufFile {
    fn tensor(&self, name: &str) -> Option<TensorView> {
        GgufFile::tensor(self, name).map(|t| TensorView {
            dtype: t.dtype.ok_or_else(|| t.type_label()),
            shape: t.shape(),
            data: t.data.clone(),
        })
    }

    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|t| t.name.clone()).collect()
    }
}

impl Qwen35 {
    /// Loads a GGUF file (the first part of a split GGUF loads every part).
    pub fn load_gguf(path: &Path) -> Result<Self, LoadError> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// Builds the model from an opened GGUF file (whose metadata a caller may also read, e.g.
    /// for the tokenizer, without parsing the file twice).
    pub fn from_gguf(file: &GgufFile) -> Result<Self, LoadError> {
        let config = config_from_gguf(file).map_err(|cause| LoadError::Config {
            path: file
                .files
                .first()
                .map_or_else(String::new, |p| p.display().to_string()),
            cause,
        })?;
        let mut model = Self::from_source(config, file, Naming::Gguf)?;
        if let Some(ids) = crate::mtp::draft_vocab_from_gguf(file)? {
            model.set_draft_vocab(&ids)?;
        }
        Ok(model)
    }
}

impl Qwen35 {
    /// Takes the vision tower of a llama.cpp `mmproj` file made for this model (replacing any
    /// it has); `image_token` is the id its tokenizer gives `<|image_pad|>`.
    pub fn load_mmproj(&mut self, file: &GgufFile, image_token: u32) -> Result<(), LoadError> {
        let path = file
            .files
            .first()
            .map_or_else(String::new, |p| p.display().to_string());
        let config_error = |cause| LoadError::Config {
            path: path.clone(),
            cause,
        };
        let second = names::vision_in(Naming::Gguf, VisionTensor::PatchWeightT1);
        let temporal = if GgufFile::tensor(file, &second).is_some() {
            2
        } else {
            1
        };
        let config = VisionConfig::from_mmproj(
            &GgufMetadata(file),
            self.config.hidden,
            self.config.vocab,
            image_token,
            temporal,
        )
        .map_err(config_error)?;
        let ld = Loader::new(file, Naming::Gguf, NormConvention::Plain);
        self.attach_vision(VisionTower::load(&ld, config)?)
    }
}

/// The image normalisation an `mmproj` file states (`(mean, std)` per channel), if it does.
pub fn mmproj_image_norm(file: &GgufFile) -> Option<([f32; 3], [f32; 3])> {
    let three = |key: &str| -> Option<[f32; 3]> {
        let v = file.get(key)?.as_array()?;
        let xs: Vec<f32> = v
            .iter()
            .filter_map(|x| x.as_f64())
            .map(|x| x as f32)
            .collect();
        xs.try_into().ok()
    };
    Some((three(keys::CLIP_IMAGE_MEAN)?, three(keys::CLIP_IMAGE_STD)?))
}

/// The validated config of an opened GGUF file.
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig, crate::ConfigError> {
    let embed = names::global_in(Naming::Gguf, Global::Embed);
    let vocab = GgufFile::tensor(file, &embed)
        .map(|t| t.shape())
        .and_then(|s| s.first().copied())
        .unwrap_or(0);
    let tied = GgufFile::tensor(file, &names::global_in(Naming::Gguf, Global::LmHead)).is_none();
    let blocks = file
        .tensors
        .iter()
        .filter_map(|t| names::gguf_block(&t.name))
        .max()
        .map_or(0, |b| b + 1);
    ModelConfig::from_gguf(&GgufMetadata(file), vocab, tied, blocks)
}
