//! The one error type of this crate. Every message is written for the person who sent the
//! image or wrote the config: the server returns them as 400 responses.

/// Why an image or a preprocessor config was refused.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// The bytes start like no image format at all.
    #[error("the data is not a recognised image (expected PNG, JPEG, WebP or GIF)")]
    NotAnImage,
    /// A real image format, but not one of the four this crate decodes.
    #[error("{format} images are not supported (expected PNG, JPEG, WebP or GIF)")]
    UnsupportedFormat { format: String },
    /// The header announces more pixels than the caller's [`crate::DecodeLimits`] allow;
    /// nothing was allocated for them.
    #[error("the image is too large: {width}x{height} pixels, {limit}")]
    TooLarge {
        width: u64,
        height: u64,
        limit: String,
    },
    /// The data ends before the image does.
    #[error("the {format} image is truncated (the data ends before the image does)")]
    Truncated { format: &'static str },
    /// The data is damaged or uses a feature the decoder does not support.
    #[error("the {format} image could not be decoded: {detail}")]
    Malformed {
        format: &'static str,
        detail: String,
    },
    /// A side of zero pixels.
    #[error("the image has no pixels ({width}x{height})")]
    Empty { width: usize, height: usize },
    /// One side more than 200 times the other, which the Qwen2-VL processor refuses.
    #[error(
        "the image is {width}x{height} pixels: its aspect ratio is over 200:1, which the model's image processor does not accept"
    )]
    AspectRatio { width: usize, height: usize },
    /// A computed size does not fit the integer types (only for absurd settings or sizes).
    #[error("image size arithmetic overflows: {0}")]
    SizeOverflow(String),
    /// A preprocessor setting is missing or makes no sense.
    #[error("preprocessor config: `{field}` {problem}")]
    Config {
        field: &'static str,
        problem: String,
    },
}

impl VisionError {
    pub(crate) fn config(field: &'static str, problem: impl Into<String>) -> Self {
        VisionError::Config {
            field,
            problem: problem.into(),
        }
    }
}
