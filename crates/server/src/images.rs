//! Images in requests: OpenAI `image_url` / `input_image` parts and Anthropic `image` blocks,
//! as `data:` URLs, base64 or `http(s)` URLs (fetched with a size limit and a timeout, unless
//! the server was started with `--no-image-urls`), read and preprocessed off the async runtime
//! and placed at the prompt's image tokens.
//!
//! Every problem with an image is the client's: a 400 naming the field (`messages[1].content
//! [0].image_url`) and what is wrong (not an image, truncated, too many pixels, too many images,
//! an URL that cannot be fetched).

use std::time::Duration;

use base64::Engine as _;
use qinfer_engine::images::{PromptImage, ReadImage, place_images, read_image};
use serde_json::{Map, Value};

use crate::AppState;
use crate::error::ApiError;
use crate::json::{Fields, type_name};

/// Most images one request may carry.
pub const MAX_IMAGES: usize = 64;
/// Most bytes fetched for one image URL.
pub const MAX_FETCH_BYTES: u64 = 20 * 1024 * 1024;
/// How long fetching one image URL may take, in all.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Where an image's bytes are.
#[derive(Clone, Debug)]
pub enum Source {
    Bytes(Vec<u8>),
    Url(String),
}

/// An image of a request, not yet read: its bytes or URL and the field that gave it.
#[derive(Clone, Debug)]
pub struct Pending {
    pub path: String,
    pub source: Source,
}

/// The template's content item standing for an image.
pub(crate) fn template_item() -> Value {
    serde_json::json!({"type": "image"})
}

fn invalid(path: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(path, format!("`{path}`: {why}"))
}

/// A `data:` URL's bytes, or the URL itself for `http(s)`.
fn from_url(url: &str, path: &str) -> Result<Source, ApiError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((meta, data)) = rest.split_once(',') else {
            return Err(invalid(path, "a data URL needs a `,` before its data"));
        };
        if !meta.ends_with(";base64") {
            return Err(invalid(path, "only base64 data URLs are accepted"));
        }
        return decode_base64(data, path).map(Source::Bytes);
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(Source::Url(url.to_string()));
    }
    Err(invalid(
        path,
        "expected a `data:` URL or an http(s) URL to an image",
    ))
}

fn decode_base64(data: &str, path: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| invalid(path, format!("the base64 data is invalid: {e}")))
}

/// An OpenAI content part of type `image_url` (`{"image_url": {"url": …}}` or
/// `{"image_url": "…"}`) or `input_image` (Responses: `{"image_url": "…"}`).
pub(crate) fn openai_part(pf: &Fields<'_>) -> Result<Pending, ApiError> {
    let path = pf.at("image_url");
    let url = match pf.get("image_url") {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => {
            let f = Fields::new(o, &path);
            f.required_str("url")?
        }
        Some(v) => {
            return Err(invalid(
                &path,
                format!(
                    "must be an object with `url` or a string, not {}",
                    type_name(v)
                ),
            ));
        }
        None => return Err(pf.missing("image_url")),
    };
    Ok(Pending {
        source: from_url(url, &path)?,
        path,
    })
}

/// An Anthropic `image` block: `source` `{"type": "base64", "media_type", "data"}` or
/// `{"type": "url", "url"}`.
pub(crate) fn anthropic_block(bf: &Fields<'_>) -> Result<Pending, ApiError> {
    let path = bf.at("source");
    let source = bf.object("source")?.ok_or_else(|| bf.missing("source"))?;
    let sf = Fields::new(source, &path);
    let source = match sf.required_str("type")? {
        "base64" => Source::Bytes(decode_base64(sf.required_str("data")?, &sf.at("data"))?),
        "url" => from_url(sf.required_str("url")?, &sf.at("url"))?,
        other => {
            return Err(invalid(
                &sf.at("type"),
                format!("is `{other}`; expected base64 or url"),
            ));
        }
    };
    Ok(Pending { path, source })
}

/// Fetches an image URL: at most [`MAX_FETCH_BYTES`], within [`FETCH_TIMEOUT`].
fn fetch(url: &str, path: &str) -> Result<Vec<u8>, ApiError> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .call()
        .map_err(|e| invalid(path, format!("the image could not be fetched: {e}")))?;
    resp.body_mut()
        .with_config()
        .limit(MAX_FETCH_BYTES)
        .read_to_vec()
        .map_err(|e| {
            invalid(
                path,
                format!(
                    "the image could not be read (at most {} MB are fetched): {e}",
                    MAX_FETCH_BYTES >> 20
                ),
            )
        })
}

/// Reads every image of a request (fetching URLs where allowed): patches and grids, in order.
pub(crate) fn read_all(
    state: &AppState,
    pending: Vec<Pending>,
) -> Result<Vec<ReadImage>, ApiError> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let Some(opts) = state.bundle.images.as_ref() else {
        return Err(invalid(
            &pending[0].path,
            "this model has no vision tower and accepts only text",
        ));
    };
    if pending.len() > MAX_IMAGES {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the request carries {} images; at most {MAX_IMAGES} are accepted",
                pending.len()
            ),
        ));
    }
    let merge = state
        .bundle
        .model
        .vision
        .as_ref()
        .map_or(1, |t| t.config.merge * t.config.merge);
    let mut tokens = 0usize;
    let mut out = Vec::with_capacity(pending.len());
    for p in pending {
        let bytes = match p.source {
            Source::Bytes(b) => b,
            Source::Url(url) if state.config.image_urls => fetch(&url, &p.path)?,
            Source::Url(_) => {
                return Err(invalid(
                    &p.path,
                    "image URLs are off on this server (--no-image-urls): send the image \
                     inline as a base64 data URL",
                ));
            }
        };
        let img = read_image(&bytes, opts).map_err(|e| invalid(&p.path, e))?;
        // Images that cannot fit the context are refused as they come, before the next one
        // is read (each holds its patches in memory until the request runs).
        tokens = tokens.saturating_add(img.pixels.rows / merge.max(1));
        if tokens > state.config.ctx {
            return Err(ApiError::context_exceeded(
                "messages",
                format!(
                    "the request's images alone take {tokens} tokens or more, past the context \
                     of {} tokens: send fewer or smaller images",
                    state.config.ctx
                ),
            ));
        }
        out.push(img);
    }
    Ok(out)
}

/// The prompt with each image's pad repeated per merged patch, and the images placed.
pub(crate) fn place(
    state: &AppState,
    ids: Vec<u32>,
    images: Vec<ReadImage>,
) -> Result<(Vec<u32>, Vec<PromptImage>), ApiError> {
    if images.is_empty() {
        return Ok((ids, Vec::new()));
    }
    place_images(&state.bundle.model, &ids, images).map_err(|e| ApiError::invalid("messages", e))
}

/// A template message's content with its images: a plain string when it has none.
pub(crate) fn content_value(items: Vec<Value>, text_only: String) -> Value {
    if items
        .iter()
        .any(|i| i.get("type") == Some(&Value::from("image")))
    {
        Value::Array(items)
    } else {
        Value::String(text_only)
    }
}

/// A text item of a template message's content.
pub(crate) fn text_item(text: &str) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), "text".into());
    m.insert("text".into(), text.into());
    Value::Object(m)
}

/// The template item of an image part kept as its URL (`{"type": "image", "image_url": URL}`),
/// read later by [`pending_in`].
pub(crate) fn url_item(pf: &Fields<'_>) -> Value {
    let url = match pf.get("image_url") {
        Some(Value::Object(o)) => o.get("url").cloned().unwrap_or(Value::Null),
        Some(v) => v.clone(),
        None => Value::Null,
    };
    let mut item = Map::new();
    item.insert("type".into(), "image".into());
    item.insert("image_url".into(), url);
    Value::Object(item)
}

/// The images kept as URLs in template messages ([`url_item`]), in order.
pub(crate) fn pending_in(messages: &[Value]) -> Result<Vec<Pending>, ApiError> {
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(Value::Array(items)) = m.get("content") else {
            continue;
        };
        for (j, item) in items.iter().enumerate() {
            if item.get("type") == Some(&Value::from("image"))
                && let Some(Value::String(url)) = item.get("image_url")
            {
                let path = format!("input (message {i}, part {j})");
                out.push(Pending {
                    source: from_url(url, &path)?,
                    path,
                });
            }
        }
    }
    Ok(out)
}
