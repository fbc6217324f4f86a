//! Image bytes to the vision tower's input, exactly as Hugging Face transformers' Qwen2-VL image
//! processor (`Qwen2VLImageProcessorPil`, the one Qwen3.5/3.6 use) computes it.
//!
//! The pipeline, one module per step:
//!
//! 1. [`decode`] (`decode.rs`): PNG, JPEG, WebP or GIF bytes to RGB8, as `load_image` (EXIF
//!    orientation, PIL's `convert("RGB")`) and the processor's `convert_to_rgb` leave them;
//!    size limits checked on the header before anything is allocated.
//! 2. [`smart_resize`] and [`resize_bicubic`] (`resize.rs`): the target size (sides multiples
//!    of patch·merge, area within bounds) and Pillow's fixed-point bicubic resize, byte-exact.
//! 3. [`preprocess`] (`preprocess.rs`): rescale and normalise with transformers' float
//!    operations, repeat the still frame over time, and lay the patches out block-major.
//!
//! Exactness is the design goal: an image reaches the model as the same `f32` numbers the
//! reference implementation would feed it, so a model test can compare against transformers
//! end to end. The goldens and how they were made: `tests/fixtures/vision-preprocess/`.
//!
//! **Invariant:** this crate knows no model. Everything model-specific comes in a
//! [`PreprocessConfig`] (from a `preprocessor_config.json`, or [`PreprocessConfig::qwen35`]).

mod config;
mod decode;
mod error;
mod preprocess;
mod resize;
mod rgb;

pub use config::PreprocessConfig;
pub use decode::{DecodeLimits, decode};
pub use error::VisionError;
pub use preprocess::{Patches, preprocess};
pub use resize::{resize_bicubic, smart_resize};
pub use rgb::RgbImage;
