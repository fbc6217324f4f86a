//! Image bytes to RGB8, as transformers sees an image it was given as bytes (a file, a URL or a
//! base64 data URL).
//!
//! That path is `transformers.image_utils.load_image` — PIL opens the bytes, applies the EXIF
//! orientation (`ImageOps.exif_transpose`) and calls `convert("RGB")` — followed by the image
//! processor's own `convert_to_rgb`. The result is *not* "RGBA composited onto white":
//!
//! * An alpha channel (RGBA, grey+alpha, a palette with per-entry alphas) is simply dropped by
//!   `convert("RGB")`; the hidden colours show.
//! * A single-colour transparency (a PNG `tRNS` naming one palette entry, one grey level or one
//!   RGB colour; a GIF's transparent index) survives `convert("RGB")` as an RGB *key colour* in
//!   `info["transparency"]`, and the processor's `convert_to_rgb` then composites onto white:
//!   every pixel of that colour becomes white, whichever palette entry it came from.
//! * PIL keeps the high byte of 16-bit colour samples, but opens 16-bit greyscale as `I;16`,
//!   which `convert("RGB")` clips at 255.
//! * A GIF is its first frame; where that frame does not cover the screen PIL shows palette
//!   entry 0 (or the transparent index, hence white).
//!
//! The pixel decoders are the `image` crate's; the header facts PIL acts on (the key colour, the
//! GIF palette) are read here from the few header bytes that carry them. PNG, WebP (lossless
//! and lossy) and GIF decode bit-exactly as PIL does; JPEG differs by a few levels (zune-jpeg,
//! not libjpeg-turbo: another IDCT and chroma upsampling), see
//! `tests/fixtures/vision-preprocess/README.md`. A JPEG without its end marker is refused as
//! truncated, as PIL refuses it (zune-jpeg would fill in the rest).
//!
//! Size limits are checked on the header's dimensions, before any pixel buffer exists.
//!
//! Not modelled: a `tRNS` key on 1-bit or 16-bit greyscale or 16-bit RGB PNGs (the key is
//! ignored), CMYK JPEGs (converted as zune-jpeg does). Modelled from Pillow's source but not in
//! the fixtures: a GIF first frame smaller than the screen (PIL shows palette entry 0 around
//! it, or white with a transparent index). An unreadable EXIF block means no rotation.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits};

use crate::{RgbImage, VisionError};

/// How large an image [`decode`] accepts, checked against the header before decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// Width · height.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 16384 pixels a side and 50 megapixels in all (a 48 MP photo passes; its RGBA decode
    /// buffer is 200 MB).
    fn default() -> Self {
        DecodeLimits {
            max_width: 16384,
            max_height: 16384,
            max_pixels: 50_000_000,
        }
    }
}

/// Decodes a PNG, JPEG, WebP or GIF (first frame) to the RGB8 image transformers' Qwen2-VL
/// processor resizes (see the module docs for what that means for alpha and transparency).
/// The format is sniffed from the bytes.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, VisionError> {
    let format = image::guess_format(bytes).map_err(|_| VisionError::NotAnImage)?;
    let name = match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::WebP => "WebP",
        ImageFormat::Gif => "GIF",
        other => {
            return Err(VisionError::UnsupportedFormat {
                format: other
                    .extensions_str()
                    .first()
                    .map_or_else(|| format!("{other:?}"), |ext| ext.to_ascii_uppercase()),
            });
        }
    };
    let quirks = match format {
        ImageFormat::Png => png_quirks(bytes),
        ImageFormat::Gif => gif_quirks(bytes),
        _ => Quirks::default(),
    };

    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // zune-jpeg would fill in the missing part; PIL refuses a truncated file.
        return Err(VisionError::Truncated { format: name });
    }

    // The decoder reads only the header here (its allocations capped all along); the sizes
    // are checked before any pixel is decoded.
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut memory_only = Limits::default();
    memory_only.max_alloc = decoder_limits(limits).max_alloc;
    reader.limits(memory_only);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_error(e, name, None))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height, limits)?;
    let dims = Some((width, height));
    decoder
        .set_limits(decoder_limits(limits))
        .map_err(|e| decode_error(e, name, dims))?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| decode_error(e, name, dims))?;
    img.apply_orientation(orientation);
    Ok(to_rgb(img, &quirks))
}

fn decoder_limits(limits: &DecodeLimits) -> Limits {
    let mut l = Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    // The output (up to 8 bytes a pixel for 16-bit RGBA) plus the decoders' working memory.
    l.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    l
}

fn check_size(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), VisionError> {
    let too_large = |limit: String| VisionError::TooLarge {
        width: width.into(),
        height: height.into(),
        limit,
    };
    if width == 0 || height == 0 {
        return Err(VisionError::Empty {
            width: width as usize,
            height: height as usize,
        });
    }
    if width > limits.max_width {
        return Err(too_large(format!(
            "over the limit of {} pixels wide",
            limits.max_width
        )));
    }
    if height > limits.max_height {
        return Err(too_large(format!(
            "over the limit of {} pixels high",
            limits.max_height
        )));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(too_large(format!(
            "over the limit of {} pixels",
            limits.max_pixels
        )));
    }
    Ok(())
}

/// Maps the `image` crate's error to ours; `dims` once the header has been read.
fn decode_error(e: ImageError, format: &'static str, dims: Option<(u32, u32)>) -> VisionError {
    match e {
        ImageError::Limits(l) => {
            let (width, height) = dims.unwrap_or((0, 0));
            VisionError::TooLarge {
                width: width.into(),
                height: height.into(),
                limit: format!("over the decoder's limits ({l})"),
            }
        }
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            VisionError::Truncated { format }
        }
        other => {
            let detail = other.to_string();
            let lower = detail.to_ascii_lowercase();
            if lower.contains("eof")
                || lower.contains("end of file")
                || lower.contains("no more data")
            {
                VisionError::Truncated { format }
            } else {
                VisionError::Malformed { format, detail }
            }
        }
    }
}

/// The header facts that make PIL + transformers differ from a plain alpha drop.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Quirks {
    /// Pixels of this colour become white (a single-colour transparency, which transformers'
    /// `convert_to_rgb` composites onto white).
    key: Option<[u8; 3]>,
    /// GIF: the colour PIL shows where the decoder left a pixel transparent (the transparent
    /// index, or outside the first frame).
    transparent_as: Option<[u8; 3]>,
    /// 16-bit greyscale PNG: PIL clips samples at 255 instead of keeping the high byte.
    grey16_clips: bool,
}

const WHITE: [u8; 3] = [255, 255, 255];

/// RGB8 the way PIL's `convert("RGB")` makes it, then the key colour whitened.
fn to_rgb(img: DynamicImage, q: &Quirks) -> RgbImage {
    let (width, height) = (img.width() as usize, img.height() as usize);
    let mut data = Vec::with_capacity(width * height * 3);
    // One pixel: its RGB (already 8-bit) and whether the decoder made it fully transparent.
    let mut push = |rgb: [u8; 3], transparent: bool| {
        let rgb = match q.transparent_as {
            Some(fill) if transparent => fill,
            _ => rgb,
        };
        let rgb = if q.key == Some(rgb) { WHITE } else { rgb };
        data.extend_from_slice(&rgb);
    };
    let grey16 = |v: u16| {
        if q.grey16_clips {
            v.min(255) as u8
        } else {
            (v >> 8) as u8
        }
    };
    match img {
        DynamicImage::ImageLuma8(b) => b.pixels().for_each(|p| push([p[0]; 3], false)),
        DynamicImage::ImageLumaA8(b) => b.pixels().for_each(|p| push([p[0]; 3], p[1] == 0)),
        DynamicImage::ImageRgb8(b) => b.pixels().for_each(|p| push(p.0, false)),
        DynamicImage::ImageRgba8(b) => b.pixels().for_each(|p| push([p[0], p[1], p[2]], p[3] == 0)),
        DynamicImage::ImageLuma16(b) => b.pixels().for_each(|p| push([grey16(p[0]); 3], false)),
        DynamicImage::ImageLumaA16(b) => {
            b.pixels().for_each(|p| push([grey16(p[0]); 3], p[1] == 0))
        }
        DynamicImage::ImageRgb16(b) => b
            .pixels()
            .for_each(|p| push(p.0.map(|v| (v >> 8) as u8), false)),
        DynamicImage::ImageRgba16(b) => b
            .pixels()
            .for_each(|p| push([p[0], p[1], p[2]].map(|v| (v >> 8) as u8), p[3] == 0)),
        // Float images come from none of the four decoders; convert as the crate does.
        other => other.to_rgb8().pixels().for_each(|p| push(p.0, false)),
    }
    RgbImage::from_raw(width, height, data).expect("one RGB triple per pixel")
}

/// PNG: the key colour PIL derives from `tRNS`, and whether greyscale is 16-bit.
///
/// PIL keeps a `tRNS` as a key only when it names one colour: for a palette, exactly one
/// entry with alpha 0 and all others 255 (per-entry alphas are dropped with the alpha channel);
/// for grey, its raw level (PIL compares it with the *unscaled* sample value; 1-bit and 16-bit
/// grey keys are not modelled); for 8-bit RGB, the colour.
fn png_quirks(bytes: &[u8]) -> Quirks {
    let mut q = Quirks::default();
    let (mut depth, mut color_type) = (0u8, 0u8);
    let (mut plte, mut trns): (&[u8], Option<&[u8]>) = (&[], None);
    let mut pos = 8; // past the signature
    while let Some(head) = bytes.get(pos..pos + 8) {
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let Some(data) = pos
            .checked_add(8 + len)
            .and_then(|end| bytes.get(pos + 8..end))
        else {
            break;
        };
        match &head[4..8] {
            b"IHDR" if data.len() >= 10 => (depth, color_type) = (data[8], data[9]),
            b"PLTE" => plte = data,
            b"tRNS" => trns = Some(data),
            b"IDAT" | b"IEND" => break,
            _ => {}
        }
        pos += 12 + len;
    }
    q.grey16_clips = color_type == 0 && depth == 16;
    let sample = |t: &[u8], i: usize| -> Option<u8> {
        let v = u16::from_be_bytes([*t.get(2 * i)?, *t.get(2 * i + 1)?]);
        u8::try_from(v).ok()
    };
    q.key = match (color_type, trns) {
        (3, Some(t))
            if t.iter().filter(|&&a| a == 0).count() == 1
                && t.iter().all(|&a| a == 0 || a == 255) =>
        {
            let i = t.iter().position(|&a| a == 0).unwrap_or(0);
            plte.get(3 * i..3 * i + 3).map(|c| [c[0], c[1], c[2]])
        }
        (0, Some(t)) if matches!(depth, 2 | 4 | 8) => sample(t, 0).map(|g| [g; 3]),
        (2, Some(t)) if depth == 8 => match (sample(t, 0), sample(t, 1), sample(t, 2)) {
            (Some(r), Some(g), Some(b)) => Some([r, g, b]),
            _ => None,
        },
        _ => None,
    };
    q
}

/// GIF: the first frame's palette and transparent index, as PIL uses them.
fn gif_quirks(bytes: &[u8]) -> Quirks {
    let mut q = Quirks::default();
    let Some(palette_and_index) = gif_first_frame(bytes) else {
        return q;
    };
    let (palette, transparent) = palette_and_index;
    let colour = |i: u8| -> [u8; 3] {
        match palette {
            Some(p) => p
                .get(3 * i as usize..3 * i as usize + 3)
                .map_or([0; 3], |c| [c[0], c[1], c[2]]),
            None => [i; 3], // no palette: PIL opens the frame as greyscale "L"
        }
    };
    match transparent {
        Some(t) => {
            q.key = Some(colour(t));
            q.transparent_as = Some(WHITE);
        }
        None => q.transparent_as = Some(colour(0)),
    }
    q
}

/// The first frame's palette (local, else global) and its transparent index, if any.
fn gif_first_frame(bytes: &[u8]) -> Option<(Option<&[u8]>, Option<u8>)> {
    let table_len = |flags: u8| 3usize << ((flags & 7) + 1);
    let flags = *bytes.get(10)?;
    let mut pos = 13;
    let mut palette = None;
    if flags & 0x80 != 0 {
        palette = Some(bytes.get(pos..pos + table_len(flags))?);
        pos += table_len(flags);
    }
    let mut transparent = None;
    loop {
        match *bytes.get(pos)? {
            0x21 => {
                let label = *bytes.get(pos + 1)?;
                pos += 2;
                let mut first = true;
                loop {
                    let n = *bytes.get(pos)? as usize;
                    let block = bytes.get(pos + 1..pos + 1 + n)?;
                    pos += 1 + n;
                    if n == 0 {
                        break;
                    }
                    if label == 0xF9 && first && n >= 4 && block[0] & 1 != 0 {
                        // Graphic control extension with a transparent index; as in PIL, a
                        // later one replaces it and one without the flag leaves it.
                        transparent = Some(block[3]);
                    }
                    first = false;
                }
            }
            0x2C => {
                let flags = *bytes.get(pos + 9)?;
                if flags & 0x80 != 0 {
                    let start = pos + 10;
                    palette = Some(bytes.get(start..start + table_len(flags))?);
                }
                return Some((palette, transparent));
            }
            _ => return None,
        }
    }
}

/// Whether a JPEG's markers run through to an end-of-image marker after its scans: segments
/// are skipped by their lengths (so an EXIF thumbnail's own end marker does not count), and
/// entropy-coded data by its byte stuffing (`FF 00`) and restart markers (`FF D0`..`FF D7`).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut pos = 2; // past SOI
    let mut in_scan = false;
    while pos + 1 < bytes.len() {
        if bytes[pos] != 0xFF {
            // Entropy-coded data, or stray bytes between segments (libjpeg skips those too).
            pos += 1;
            continue;
        }
        let marker = bytes[pos + 1];
        match marker {
            0xD9 => return true,
            // Fill bytes, stuffing and restarts inside a scan: not segment boundaries.
            0xFF => pos += 1,
            0x00 | 0xD0..=0xD7 if in_scan => pos += 2,
            0x01 | 0xD0..=0xD7 => pos += 2, // stand-alone markers
            _ => {
                let Some(len) = bytes.get(pos + 2..pos + 4) else {
                    return false;
                };
                pos += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
                in_scan = marker == 0xDA;
            }
        }
    }
    false
}
