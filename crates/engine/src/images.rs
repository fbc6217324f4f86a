//! Images in a prompt: what a request brings ([`PromptImage`]: an image's patches and where its
//! pad tokens sit), how a rendered prompt's single `<|image_pad|>` per image becomes one pad
//! per merged patch ([`expand_image_pads`]), and what the engine keeps while the prompt runs
//! ([`Spliced`]: the encoded embeddings, every position's mRoPE triple, the decode offset, the
//! prompt-cache key).

use std::sync::Arc;

use qinfer_cache::KeyElem;
use qinfer_model::{EncodeJob, ImagePlacement, Position3, Qwen35, VisionTower, mrope_positions};
use qinfer_tensor::Mat;
use sha2::{Digest, Sha256};

pub use qinfer_vision::{DecodeLimits, PreprocessConfig};

/// How a model's images are read: the processor's settings and the decoder's size limits.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    pub preprocess: PreprocessConfig,
    pub limits: DecodeLimits,
}

/// The processor settings of a Hugging Face model directory: its `preprocessor_config.json`,
/// else Qwen3.5/3.6's.
pub fn preprocess_config_in(dir: &std::path::Path) -> Result<PreprocessConfig, String> {
    let pre = dir.join("preprocessor_config.json");
    if pre.is_file() {
        PreprocessConfig::from_file(&pre).map_err(|e| format!("{}: {e}", pre.display()))
    } else {
        Ok(PreprocessConfig::qwen35())
    }
}

/// The llama.cpp-style `mmproj*.gguf` files in the directory of `model` (a GGUF file): a
/// model there takes its vision tower from the one such file, when there is exactly one.
pub fn mmproj_files_beside(model: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dir = match model.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("mmproj") && n.ends_with(".gguf"))
        })
        .collect()
}

/// The model's vision tower, or the error a request with images gets without one.
fn tower(model: &Qwen35) -> Result<&VisionTower, String> {
    model
        .vision
        .as_ref()
        .ok_or_else(|| "this model has no vision tower: it cannot take images".to_string())
}

/// An image decoded and preprocessed for the tower: its patches and grid.
#[derive(Clone, Debug)]
pub struct ReadImage {
    /// `[t·h·w, C·Tp·p·p]`, in the processor's order.
    pub pixels: Mat,
    /// `(t, h, w)` in patches.
    pub grid: [usize; 3],
}

/// Decodes and preprocesses an image file's bytes (PNG, JPEG, WebP, GIF). The error says what
/// is wrong with the image, for the person who sent it.
pub fn read_image(bytes: &[u8], opts: &ImageOptions) -> Result<ReadImage, String> {
    let img = qinfer_vision::decode(bytes, &opts.limits).map_err(|e| e.to_string())?;
    let p = qinfer_vision::preprocess(&img, &opts.preprocess).map_err(|e| e.to_string())?;
    Ok(ReadImage {
        pixels: p.pixels,
        grid: p.grid,
    })
}

/// The prompt `ids` (one image-pad token per image, as the chat template writes them) with
/// each image's pad repeated once per merged patch, and the images placed there.
pub fn place_images(
    model: &Qwen35,
    ids: &[u32],
    images: Vec<ReadImage>,
) -> Result<(Vec<u32>, Vec<PromptImage>), String> {
    let c = &tower(model)?.config;
    let mut counts = Vec::with_capacity(images.len());
    for img in &images {
        let [t, h, w] = img.grid;
        if img.pixels.cols != c.patch_values()
            || !h.is_multiple_of(c.merge)
            || !w.is_multiple_of(c.merge)
            || t == 0
        {
            return Err(format!(
                "the image processor's settings do not fit the vision tower (patch rows of {} \
                 values, grid {:?}; the tower takes {} values and merges {}×{})",
                img.pixels.cols,
                img.grid,
                c.patch_values(),
                c.merge,
                c.merge
            ));
        }
        counts.push(c.tokens_for(img.grid));
    }
    let (expanded, starts) = expand_image_pads(ids, c.image_token, &counts)?;
    let placed = images
        .into_iter()
        .zip(starts)
        .map(|(img, start)| PromptImage::new(start, img.grid, img.pixels))
        .collect();
    Ok((expanded, placed))
}

/// One image of a prompt, preprocessed.
#[derive(Clone, Debug)]
pub struct PromptImage {
    /// Index in the prompt ids of its first pad token.
    pub start: usize,
    /// `(t, h, w)` in patches.
    pub grid: [usize; 3],
    /// `[t·h·w, C·Tp·p·p]`, in the processor's order.
    pub pixels: Arc<Mat>,
    /// Content hash of the patches and grid: the prompt cache's key for the image.
    pub hash: u64,
}

impl PromptImage {
    pub fn new(start: usize, grid: [usize; 3], pixels: Mat) -> Self {
        let mut h = Sha256::new();
        for g in grid {
            h.update((g as u64).to_le_bytes());
        }
        for v in &pixels.data {
            h.update(v.to_le_bytes());
        }
        let digest = h.finalize();
        let hash = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        PromptImage {
            start,
            grid,
            pixels: Arc::new(pixels),
            hash,
        }
    }
}

/// `ids` with the `i`-th lone `pad` token (one per image, as the chat template writes it)
/// repeated `counts[i]` times, and the index of each image's first pad in the result.
///
/// # Errors
/// When the prompt has another number of pad tokens than images.
pub fn expand_image_pads(
    ids: &[u32],
    pad: u32,
    counts: &[usize],
) -> Result<(Vec<u32>, Vec<usize>), String> {
    let found = ids.iter().filter(|&&t| t == pad).count();
    if found != counts.len() {
        return Err(format!(
            "the prompt has {found} image placeholders for {} images",
            counts.len()
        ));
    }
    let extra: usize = counts.iter().sum::<usize>().saturating_sub(found);
    let mut out = Vec::with_capacity(ids.len() + extra);
    let mut starts = Vec::with_capacity(counts.len());
    let mut next = counts.iter();
    for &t in ids {
        if t == pad {
            let n = *next.next().expect("counted above");
            starts.push(out.len());
            out.extend(std::iter::repeat_n(pad, n));
        } else {
            out.push(t);
        }
    }
    Ok((out, starts))
}

/// The prompt-cache key elements of `images` placed in a prompt for `model`: `(index, key)`
/// of every image token, ascending.
pub fn image_keys(model: &Qwen35, images: &[PromptImage]) -> Result<Vec<(usize, KeyElem)>, String> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let c = &tower(model)?.config;
    let mut out = Vec::new();
    for img in images {
        let n = c.tokens_for(img.grid);
        for k in 0..n {
            out.push((
                img.start + k,
                KeyElem::Image {
                    hash: img.hash,
                    index: u32::try_from(k).unwrap_or(u32::MAX),
                },
            ));
        }
    }
    Ok(out)
}

/// The key of `tokens` with image positions overlaid.
pub fn overlay_key(tokens: &[u32], images: &[(usize, KeyElem)]) -> Vec<KeyElem> {
    let mut key: Vec<KeyElem> = tokens.iter().map(|&t| KeyElem::Token(t)).collect();
    for &(i, k) in images {
        if let Some(e) = key.get_mut(i) {
            *e = k;
        }
    }
    key
}

/// A running prompt's images: embeddings, positions, key.
#[derive(Debug)]
pub(crate) struct Spliced {
    /// `(index, key)` of every image token, ascending ([`image_keys`]).
    keys: Vec<(usize, KeyElem)>,
    /// `[keys.len(), H]`: the embedding of each.
    rows: Mat,
    /// The mRoPE position of every prompt index.
    pub(crate) positions: Vec<Position3>,
    /// Positions after the prompt are `index + delta`.
    pub(crate) delta: i64,
    /// Images still going through the tower, in prompt order: the first row of `rows` each
    /// fills, its token count, and the job.
    encoding: std::collections::VecDeque<(usize, usize, EncodeJob)>,
}

impl Spliced {
    /// Checks that every image's pad tokens are where the request says and computes the
    /// prompt's positions and key; [`Spliced::begin`] and [`Spliced::advance`] then make the
    /// embeddings.
    pub(crate) fn prepare(
        model: &Qwen35,
        prompt: &[u32],
        images: &[PromptImage],
    ) -> Result<Self, String> {
        let vc = &tower(model)?.config;
        let mut placements = Vec::with_capacity(images.len());
        let mut last_end = 0;
        for (i, img) in images.iter().enumerate() {
            let n = vc.tokens_for(img.grid);
            let end = img.start.checked_add(n).filter(|&e| e <= prompt.len());
            let Some(end) = end else {
                return Err(format!("image {} does not fit the prompt", i + 1));
            };
            if prompt[img.start..end].iter().any(|&t| t != vc.image_token) || last_end > img.start {
                return Err(format!(
                    "image {} needs {n} image tokens at prompt index {}",
                    i + 1,
                    img.start
                ));
            }
            last_end = end;
            placements.push(ImagePlacement {
                start: img.start,
                grid: img.grid,
            });
        }
        let (positions, delta) = mrope_positions(prompt.len(), &placements, vc.merge)
            .ok_or("the images' positions do not fit the prompt")?;
        let keys = image_keys(model, images)?;
        let rows = Mat::zeros(keys.len(), model.config.hidden);
        Ok(Spliced {
            keys,
            rows,
            positions,
            delta,
            encoding: Default::default(),
        })
    }

    /// Starts the tower on the images with a position at or after `from` (the positions a
    /// state resumed at `from` still has to compute: the rows of the others stay unused); the
    /// patch embedding runs now, the blocks in [`Spliced::advance`].
    pub(crate) fn begin(
        &mut self,
        model: &Qwen35,
        images: &[PromptImage],
        from: usize,
    ) -> Result<(), String> {
        let c = &tower(model)?.config;
        let mut row = 0;
        for img in images {
            let tokens = c.tokens_for(img.grid);
            if img.start + tokens > from {
                let job = model
                    .begin_image(&img.pixels, img.grid)
                    .map_err(|e| e.to_string())?;
                self.encoding.push_back((row, tokens, job));
            }
            row += tokens;
        }
        Ok(())
    }

    /// Whether images are still going through the tower (the prompt waits for them).
    pub(crate) fn encoding(&self) -> bool {
        !self.encoding.is_empty()
    }

    /// One step of the tower (a block, or an image's merger) for the first image not encoded
    /// yet; a finished image's rows go where its tokens are.
    pub(crate) fn advance(&mut self, model: &Qwen35) -> Result<(), String> {
        let Some((row, tokens, job)) = self.encoding.front_mut() else {
            return Ok(());
        };
        let Some(m) = model.advance_image(job) else {
            return Ok(());
        };
        let (row, tokens) = (*row, *tokens);
        self.encoding.pop_front();
        if m.rows != tokens || m.cols != self.rows.cols {
            return Err(format!(
                "the vision tower made [{}, {}] rows for an image of {tokens} tokens",
                m.rows, m.cols
            ));
        }
        let cols = self.rows.cols;
        self.rows.data[row * cols..(row + tokens) * cols].copy_from_slice(&m.data);
        Ok(())
    }

    /// The prompt as the chat template wrote it: each image's run of pad tokens back to one
    /// (what tokenizing the rendered text gives, so the prompt cache can remember it).
    pub(crate) fn collapse(&self, prompt: &[u32]) -> Vec<u32> {
        let key = self.key(prompt);
        prompt
            .iter()
            .zip(&key)
            .filter(|(_, k)| match k {
                KeyElem::Image { index, .. } => *index == 0,
                KeyElem::Token(_) => true,
            })
            .map(|(&t, _)| t)
            .collect()
    }

    /// The prompt-cache key of the first `tokens.len()` prompt positions.
    pub(crate) fn key(&self, tokens: &[u32]) -> Vec<KeyElem> {
        overlay_key(tokens, &self.keys)
    }

    /// The image rows inside prompt indices `range`: their indices relative to its start and
    /// their embeddings.
    pub(crate) fn slice(&self, range: std::ops::Range<usize>) -> (Vec<usize>, Mat) {
        let lo = self.keys.partition_point(|&(p, _)| p < range.start);
        let hi = self.keys.partition_point(|&(p, _)| p < range.end);
        let at = self.keys[lo..hi]
            .iter()
            .map(|(p, _)| p - range.start)
            .collect();
        (at, self.rows.rows_range(lo, hi))
    }

    /// The mRoPE positions of `n` tokens fed after `fed` positions.
    pub(crate) fn after(&self, fed: usize, n: usize) -> Vec<Position3> {
        (fed..fed + n)
            .map(|i| {
                let p = u32::try_from((i as i64 + self.delta).max(0)).unwrap_or(u32::MAX);
                [p, p, p]
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_expand_per_image() {
        let (ids, starts) = expand_image_pads(&[1, 9, 2, 9, 3], 9, &[2, 3]).unwrap();
        assert_eq!(ids, vec![1, 9, 9, 2, 9, 9, 9, 3]);
        assert_eq!(starts, vec![1, 4]);
        assert!(expand_image_pads(&[1, 9], 9, &[2, 3]).is_err());
    }

    #[test]
    fn the_same_pixels_hash_alike_and_others_not() {
        let a = PromptImage::new(0, [1, 2, 2], Mat::zeros(4, 3));
        let b = PromptImage::new(5, [1, 2, 2], Mat::zeros(4, 3));
        let mut m = Mat::zeros(4, 3);
        m.data[7] = 1.0;
        let c = PromptImage::new(0, [1, 2, 2], m);
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }
}
