//! The image processor's settings, from a `preprocessor_config.json` or Qwen3.5/3.6's defaults.
//!
//! Parsing is in two stages: the JSON object, then each field read and checked by name, so an
//! error names the field. Only what the Qwen2-VL processor does for Qwen3.5/3.6 is supported:
//! resize (bicubic), rescale and normalise all on; a file that switches one off or asks for
//! another resampling filter is refused rather than silently processed differently.

use std::path::Path;

use serde_json::{Map, Value};

use crate::VisionError;

/// What the preprocessing needs to know; the crate knows no model beyond this.
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessConfig {
    /// Side of a square patch, in pixels.
    pub patch_size: usize,
    /// Frames per patch; a still image is repeated this many times.
    pub temporal_patch_size: usize,
    /// Side of the square of patches the merger joins into one LLM token.
    pub merge_size: usize,
    /// Area bounds for `smart_resize` (`size.shortest_edge` / `size.longest_edge`: despite
    /// the names, pixel counts).
    pub min_pixels: u64,
    pub max_pixels: u64,
    /// Per channel (R, G, B): `x = (v·rescale − mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Applied in `f64` before rounding to `f32`, as transformers does, hence `f64`: the
    /// `f32` nearest 1/255 would give different roundings.
    pub rescale: f64,
}

impl PreprocessConfig {
    /// Qwen3.5/3.6's `preprocessor_config.json` (all sizes): patch 16, 2 frames, 2x2 merge,
    /// 256² to 4096² pixels, mean = std = 0.5, rescale 1/255.
    pub fn qwen35() -> Self {
        PreprocessConfig {
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 65536,
            max_pixels: 16_777_216,
            mean: [0.5; 3],
            std: [0.5; 3],
            rescale: 1.0 / 255.0,
        }
    }

    /// Reads `preprocessor_config.json`.
    pub fn from_file(path: &Path) -> Result<Self, VisionError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            VisionError::config(
                "preprocessor_config.json",
                format!("{}: {e}", path.display()),
            )
        })?;
        Self::from_json(&text)
    }

    /// Parses the text of a `preprocessor_config.json`. Size bounds come from
    /// `size.shortest_edge` / `size.longest_edge`; the legacy top-level `min_pixels` /
    /// `max_pixels` override them, as in transformers.
    pub fn from_json(text: &str) -> Result<Self, VisionError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            VisionError::config(
                "preprocessor_config.json",
                format!("is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(obj) = value else {
            return Err(VisionError::config(
                "preprocessor_config.json",
                "is not a JSON object",
            ));
        };
        for flag in ["do_resize", "do_rescale", "do_normalize", "do_convert_rgb"] {
            if let Some(v) = obj.get(flag) {
                match v.as_bool() {
                    Some(true) => {}
                    Some(false) => return Err(VisionError::config(flag, "false is not supported")),
                    None => return Err(VisionError::config(flag, "must be true or false")),
                }
            }
        }
        if let Some(v) = obj.get("resample")
            && v.as_u64() != Some(3)
        {
            return Err(VisionError::config(
                "resample",
                format!("is {v}; only 3 (bicubic) is supported"),
            ));
        }
        let size = match obj.get("size") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => return Err(VisionError::config("size", "must be an object")),
        };
        let edge =
            |legacy: &'static str, key: &'static str, field: &'static str| match obj.get(legacy) {
                Some(v) if !v.is_null() => uint(v, legacy),
                _ => match size.and_then(|m| m.get(key)) {
                    Some(v) => uint(v, field),
                    None => Err(VisionError::config(field, "is missing")),
                },
            };
        let cfg = PreprocessConfig {
            patch_size: usize_field(&obj, "patch_size")?,
            temporal_patch_size: usize_field(&obj, "temporal_patch_size")?,
            merge_size: usize_field(&obj, "merge_size")?,
            min_pixels: edge("min_pixels", "shortest_edge", "size.shortest_edge")?,
            max_pixels: edge("max_pixels", "longest_edge", "size.longest_edge")?,
            mean: triple(&obj, "image_mean")?,
            std: triple(&obj, "image_std")?,
            rescale: match obj.get("rescale_factor") {
                None => 1.0 / 255.0,
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| VisionError::config("rescale_factor", "must be a number"))?,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants preprocessing relies on (the fields are public).
    pub fn validate(&self) -> Result<(), VisionError> {
        let positive = |v: usize, field| {
            if v == 0 {
                Err(VisionError::config(field, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive(self.patch_size, "patch_size")?;
        positive(self.temporal_patch_size, "temporal_patch_size")?;
        positive(self.merge_size, "merge_size")?;
        if self.patch_size > 1024 || self.merge_size > 64 || self.temporal_patch_size > 64 {
            return Err(VisionError::config(
                "patch_size",
                format!(
                    "patch {} / merge {} / temporal {} is implausibly large",
                    self.patch_size, self.merge_size, self.temporal_patch_size
                ),
            ));
        }
        if self.min_pixels == 0 {
            return Err(VisionError::config(
                "size.shortest_edge",
                "must be at least 1",
            ));
        }
        if self.max_pixels < self.min_pixels {
            return Err(VisionError::config(
                "size.longest_edge",
                format!(
                    "({}) is below size.shortest_edge ({})",
                    self.max_pixels, self.min_pixels
                ),
            ));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return Err(VisionError::config("image_mean", "must be finite numbers"));
        }
        if self.std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(VisionError::config(
                "image_std",
                "must be positive finite numbers",
            ));
        }
        if !self.rescale.is_finite() || self.rescale <= 0.0 {
            return Err(VisionError::config(
                "rescale_factor",
                "must be a positive finite number",
            ));
        }
        Ok(())
    }
}

fn uint(v: &Value, field: &'static str) -> Result<u64, VisionError> {
    v.as_u64().ok_or_else(|| {
        VisionError::config(field, format!("must be a non-negative integer, not {v}"))
    })
}

fn usize_field(obj: &Map<String, Value>, field: &'static str) -> Result<usize, VisionError> {
    let v = obj
        .get(field)
        .ok_or_else(|| VisionError::config(field, "is missing"))?;
    usize::try_from(uint(v, field)?).map_err(|_| VisionError::config(field, "is too large"))
}

/// `[r, g, b]`, or one number for all three (transformers accepts both).
fn triple(obj: &Map<String, Value>, field: &'static str) -> Result<[f32; 3], VisionError> {
    let bad = || VisionError::config(field, "must be a number or a list of 3 numbers");
    // JSON numbers are read as f64 and rounded once to f32, as numpy's float32 array does.
    let num = |v: &Value| v.as_f64().map(|x| x as f32).ok_or_else(bad);
    match obj.get(field) {
        None => Err(VisionError::config(field, "is missing")),
        Some(Value::Array(a)) if a.len() == 3 => Ok([num(&a[0])?, num(&a[1])?, num(&a[2])?]),
        Some(v @ Value::Number(_)) => Ok([num(v)?; 3]),
        Some(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(text: &str) -> &'static str {
        match PreprocessConfig::from_json(text) {
            Err(VisionError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    const OK: &str = r#"{"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
        "size": {"shortest_edge": 65536, "longest_edge": 16777216},
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "rescale_factor": 0.00392156862745098, "resample": 3, "do_resize": true}"#;

    #[test]
    fn official_settings_equal_the_default() {
        assert_eq!(
            PreprocessConfig::from_json(OK).unwrap(),
            PreprocessConfig::qwen35()
        );
    }

    #[test]
    fn legacy_keys_override_size() {
        let text = OK.replace(
            r#""resample": 3"#,
            r#""min_pixels": 100, "max_pixels": 200"#,
        );
        let cfg = PreprocessConfig::from_json(&text).unwrap();
        assert_eq!((cfg.min_pixels, cfg.max_pixels), (100, 200));
    }

    #[test]
    fn nonsense_names_its_field() {
        let cases = [
            (
                OK.replace(r#""patch_size": 16"#, r#""patch_size": 0"#),
                "patch_size",
            ),
            (
                OK.replace(r#""patch_size": 16"#, r#""patch_size": -3"#),
                "patch_size",
            ),
            (OK.replace(r#""merge_size": 2,"#, ""), "merge_size"),
            (OK.replace("65536", "\"big\""), "size.shortest_edge"),
            (OK.replace("16777216", "1"), "size.longest_edge"),
            (
                OK.replace(r#""longest_edge": 16777216"#, r#""x": 1"#),
                "size.longest_edge",
            ),
            (
                OK.replace(r#""image_mean": [0.5, 0.5, 0.5]"#, r#""image_mean": [0.5]"#),
                "image_mean",
            ),
            (
                OK.replace(
                    r#""image_std": [0.5, 0.5, 0.5]"#,
                    r#""image_std": [0.5, 0, 0.5]"#,
                ),
                "image_std",
            ),
            (OK.replace("0.00392156862745098", "0"), "rescale_factor"),
            (
                OK.replace(r#""resample": 3"#, r#""resample": 2"#),
                "resample",
            ),
            (
                OK.replace(r#""do_resize": true"#, r#""do_resize": false"#),
                "do_resize",
            ),
            ("[1, 2]".to_string(), "preprocessor_config.json"),
            ("{".to_string(), "preprocessor_config.json"),
        ];
        for (text, field) in &cases {
            assert_eq!(field_of(text), *field, "{text}");
        }
    }

    #[test]
    fn scalar_mean_is_broadcast() {
        let text = OK.replace(r#""image_mean": [0.5, 0.5, 0.5]"#, r#""image_mean": 0.25"#);
        assert_eq!(PreprocessConfig::from_json(&text).unwrap().mean, [0.25; 3]);
    }
}
