//! Safetensors checkpoints: one `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`. Files are memory-mapped; tensors are zero-copy views.
//!
//! File layout: 8-byte little-endian header length `N`, `N` bytes of JSON
//! (`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`),
//! then the data; offsets are relative to the start of the data. Every entry is checked
//! against the file size when the file is opened, so a truncated or inconsistent file fails
//! at load time with the tensor named, not later with a wrong answer.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use qinfer_tensor::{ByteOwner, ByteView, DType};
use serde::Deserialize;

/// Name of a single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Why a checkpoint could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir}: no {SINGLE_FILE} or {INDEX_FILE} found")]
    NotFound { dir: PathBuf },
    #[error("{path}: invalid safetensors file: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{path}: invalid shard index: {why}")]
    InvalidIndex { path: PathBuf, why: String },
}

/// Element type as written in the file. Types qinfer cannot compute with are kept by name so
/// they can be listed, and rejected only when used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StDType {
    Known(DType),
    Other(String),
}

impl StDType {
    fn parse(s: &str) -> Self {
        match s {
            "F32" => StDType::Known(DType::F32),
            "F16" => StDType::Known(DType::F16),
            "BF16" => StDType::Known(DType::BF16),
            other => StDType::Other(other.to_string()),
        }
    }

    /// Bytes per element, when known to this reader (for size validation).
    fn size(&self) -> Option<usize> {
        match self {
            StDType::Known(d) => Some(d.block_bytes()),
            StDType::Other(s) => match s.as_str() {
                "F64" | "I64" | "U64" => Some(8),
                "I32" | "U32" => Some(4),
                "I16" | "U16" => Some(2),
                "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => Some(1),
                _ => None,
            },
        }
    }
}

impl std::fmt::Display for StDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StDType::Known(d) => write!(f, "{d}"),
            StDType::Other(s) => f.write_str(s),
        }
    }
}

/// One tensor of a checkpoint.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub dtype: StDType,
    pub shape: Vec<usize>,
    /// The tensor's bytes (inside the mmap).
    pub data: ByteView,
    /// The file it lives in.
    pub file: PathBuf,
}

impl TensorEntry {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Every tensor of a (possibly sharded) checkpoint, by name.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub tensors: BTreeMap<String, TensorEntry>,
    pub files: Vec<PathBuf>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors.index.json` (and its shards) or `dir/model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self, SafetensorsError> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            let mut ck = Checkpoint::default();
            ck.add_file(&single)?;
            return Ok(ck);
        }
        Err(SafetensorsError::NotFound {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens a shard index and every shard it names.
    pub fn open_index(index: &Path) -> Result<Self, SafetensorsError> {
        let weight_map = read_index(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut ck = Checkpoint::default();
        let mut shards: Vec<&String> = weight_map.values().collect();
        shards.sort();
        shards.dedup();
        for shard in shards {
            ck.add_file(&dir.join(shard))?;
        }
        ck.check_index(index, &weight_map)?;
        Ok(ck)
    }

    /// Checks the tensors of the shards opened so far against an index (`weight_map`, read
    /// from `index` by [`read_index`]): each tensor the index lists in an open shard is there.
    pub fn check_index(
        &self,
        index: &Path,
        weight_map: &BTreeMap<String, String>,
    ) -> Result<(), SafetensorsError> {
        let bad = |why: String| SafetensorsError::InvalidIndex {
            path: index.to_path_buf(),
            why,
        };
        let open = |shard: &str| {
            self.files
                .iter()
                .any(|f| f.file_name().is_some_and(|n| n == shard))
        };
        for (name, shard) in weight_map.iter().filter(|(_, s)| open(s)) {
            match self.tensors.get(name) {
                Some(t) if t.file.file_name().is_some_and(|f| f == shard.as_str()) => {}
                Some(t) => {
                    return Err(bad(format!(
                        "tensor {name} is listed in {shard} but found in {}",
                        t.file.display()
                    )));
                }
                None => {
                    return Err(bad(format!(
                        "tensor {name} is listed in {shard} but missing"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Maps one file and adds its tensors.
    pub fn add_file(&mut self, path: &Path) -> Result<(), SafetensorsError> {
        let io = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let map = crate::load::file_bytes(&file).map_err(io)?;
        for (name, entry) in parse(path, map)? {
            if let Some(prev) = self.tensors.get(&name) {
                return Err(SafetensorsError::Invalid {
                    path: path.to_path_buf(),
                    why: format!("tensor {name} also appears in {}", prev.file.display()),
                });
            }
            self.tensors.insert(name, entry);
        }
        self.files.push(path.to_path_buf());
        Ok(())
    }
}

/// A shard index (`model.safetensors.index.json`): where each tensor lives, by name. Shard
/// names must be plain file names (beside the index).
pub fn read_index(index: &Path) -> Result<BTreeMap<String, String>, SafetensorsError> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: BTreeMap<String, String>,
    }
    let bad = |why: String| SafetensorsError::InvalidIndex {
        path: index.to_path_buf(),
        why,
    };
    let text = std::fs::read_to_string(index).map_err(|source| SafetensorsError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(shard) = parsed
        .weight_map
        .values()
        .find(|s| s.is_empty() || s.contains('/') || s.contains('\\') || s.starts_with('.'))
    {
        return Err(bad(format!(
            "shard name {shard:?} is not a plain file name"
        )));
    }
    Ok(parsed.weight_map)
}

#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

fn parse(
    path: &Path,
    map: Arc<dyn ByteOwner>,
) -> Result<Vec<(String, TensorEntry)>, SafetensorsError> {
    let bad = |why: String| SafetensorsError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let bytes: &[u8] = (*map).as_ref();
    if bytes.len() < 8 {
        return Err(bad(format!(
            "file is {} bytes, shorter than the 8-byte header length",
            bytes.len()
        )));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let header_end = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "header length {n} exceeds the file size {} (truncated file?)",
                bytes.len()
            ))
        })?;
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..header_end])
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    let data_len = bytes.len() - header_end;
    let mut out = Vec::with_capacity(header.len());
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let raw: RawEntry = serde_json::from_value(value)
            .map_err(|e| bad(format!("tensor {name}: malformed entry: {e}")))?;
        let [begin, end] = raw.data_offsets;
        if begin > end || end > data_len {
            return Err(bad(format!(
                "tensor {name}: data [{begin}, {end}) lies outside the {data_len} data bytes \
                 (truncated file?)"
            )));
        }
        let dtype = StDType::parse(&raw.dtype);
        let numel = raw.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if let (Some(size), Some(numel)) = (dtype.size(), numel)
            && numel.checked_mul(size) != Some(end - begin)
        {
            return Err(bad(format!(
                "tensor {name}: {dtype} {:?} needs {} bytes but has {}",
                raw.shape,
                numel * size,
                end - begin
            )));
        }
        let data = ByteView::new(map.clone(), header_end + begin, end - begin);
        out.push((
            name,
            TensorEntry {
                dtype,
                shape: raw.shape,
                data,
                file: path.to_path_buf(),
            },
        ));
    }
    Ok(out)
}

/// Writes a single-file checkpoint (used by tests and tools). Tensors are `(name, dtype, shape,
/// little-endian bytes)`.
pub fn write(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            (*name).to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut text = serde_json::to_string(&header).map_err(std::io::Error::other)?;
    text.push_str(&" ".repeat((8 - text.len() % 8) % 8));
    let mut out = Vec::with_capacity(8 + text.len() + offset);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn reads_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(SINGLE_FILE);
        write(
            &p,
            &[
                ("a", "F32", vec![2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
                ("b", "I64", vec![1], vec![0; 8]),
            ],
        )
        .unwrap();
        let ck = Checkpoint::open_dir(dir.path()).unwrap();
        let a = &ck.tensors["a"];
        assert_eq!(
            (a.dtype.clone(), a.shape.clone()),
            (StDType::Known(DType::F32), vec![2, 2])
        );
        assert_eq!(
            a.data.as_bytes(),
            f32_bytes(&[1.0, 2.0, 3.0, 4.0]).as_slice()
        );
        assert_eq!(ck.tensors["b"].dtype, StDType::Other("I64".into()));
    }

    #[test]
    fn rejects_broken_files_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(SINGLE_FILE);
        write(&p, &[("w", "F32", vec![4], f32_bytes(&[1.0; 4]))]).unwrap();
        let full = std::fs::read(&p).unwrap();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (full[..full.len() - 3].to_vec(), "truncated"),
            (full[..5].to_vec(), "shorter than"),
            (
                [&100_000u64.to_le_bytes()[..], &full[8..]].concat(),
                "exceeds the file size",
            ),
            (
                [&full[..8], &vec![b'{'; full.len() - 8][..]].concat(),
                "not valid JSON",
            ),
        ];
        for (bytes, want) in cases {
            std::fs::write(&p, bytes).unwrap();
            let err = Checkpoint::open_dir(dir.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        write(&p, &[("w", "F32", vec![5], f32_bytes(&[1.0; 4]))]).unwrap();
        let err = Checkpoint::open_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tensor w") && err.contains("needs 20 bytes"),
            "{err}"
        );
        std::fs::remove_file(&p).unwrap();
        assert!(
            Checkpoint::open_dir(dir.path())
                .unwrap_err()
                .to_string()
                .contains("no model.safetensors")
        );
    }

    #[test]
    fn sharded_index_must_match_its_shards() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("s1.safetensors"),
            &[("a", "F32", vec![1], f32_bytes(&[1.0]))],
        )
        .unwrap();
        write(
            &dir.path().join("s2.safetensors"),
            &[("b", "F32", vec![1], f32_bytes(&[2.0]))],
        )
        .unwrap();
        let index = dir.path().join(INDEX_FILE);
        std::fs::write(
            &index,
            r#"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#,
        )
        .unwrap();
        let ck = Checkpoint::open_dir(dir.path()).unwrap();
        assert_eq!(ck.tensors.len(), 2);
        std::fs::write(
            &index,
            r#"{"weight_map":{"a":"s1.safetensors","c":"s2.safetensors"}}"#,
        )
        .unwrap();
        let err = Checkpoint::open_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("tensor c is listed in s2.safetensors but missing"),
            "{err}"
        );
        std::fs::write(&index, r#"{"weight_map":{"a":"../s1.safetensors"}}"#).unwrap();
        assert!(
            Checkpoint::open_dir(dir.path())
                .unwrap_err()
                .to_string()
                .contains("plain file name")
        );
    }
}
