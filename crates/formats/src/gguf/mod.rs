//! GGUF files (llama.cpp's model container): a reader over a memory map and a streaming writer.
//!
//! Layout (all little-endian; versions 2 and 3 share it):
//!
//! ```text
//! "GGUF"  u32 version  u64 tensor_count  u64 metadata_count
//! metadata_count × { string key, u32 value_type, value }
//! tensor_count   × { string name, u32 n_dims, n_dims × u64 dim, u32 ggml_type, u64 offset }
//! padding to `general.alignment` (default 32)
//! tensor data; each offset is relative to the start of the data and a multiple of the alignment
//! ```
//!
//! A string is a `u64` byte length and UTF-8 bytes; an array is a `u32` element type, a `u64`
//! count and the elements (arrays may nest). Dims are in GGML order: `dims[0]` varies fastest.
//!
//! Everything is validated when the file is opened, against the file size, before anything is
//! allocated from a length the file declares: a truncated or corrupt file fails at load time with
//! the file and the key or tensor named, never with a panic, an out-of-bounds read or a giant
//! allocation. Tensor data stays in the map ([`ByteView`]); tensor types qinfer does not compute
//! with are kept (`dtype: None`) and rejected by whoever uses them, with the type named.
//!
//! Split models (`name-00001-of-00003.gguf`, as llama.cpp's `gguf-split` and gguf-py write
//! them) open as one file: opening any part opens every part, metadata comes from the first,
//! tensors are concatenated in part order.
//!
//! Architecture invariant: this module knows no model. It never interprets keys or tensor names
//! beyond the container's own (`general.alignment`, `split.*`).

mod ggml_type;
pub mod keys;
mod reader;
mod value;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};

use qinfer_tensor::{ByteView, DType};

pub use ggml_type::{GgmlType, ggml_type_label};
use keys::{
    SPLIT_COUNT as KEY_SPLIT_COUNT, SPLIT_NO as KEY_SPLIT_NO,
    SPLIT_TENSORS_COUNT as KEY_SPLIT_TENSORS_COUNT,
};
pub use value::Value;
pub use writer::GgufWriter;

/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Most dimensions a GGML tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Why a GGUF file could not be read or written. Every message names the file; entries are named
/// by key or tensor name.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: truncated file: {what} needs {need} bytes at offset {offset}, but only {left} remain"
    )]
    Truncated {
        path: PathBuf,
        what: String,
        offset: usize,
        need: u128,
        left: usize,
    },
    #[error("{path}: not a GGUF file: magic is \"{found}\" (expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: String },
    #[error("{path}: big-endian GGUF files are not supported (qinfer reads little-endian only)")]
    BigEndian { path: PathBuf },
    #[error("{path}: unsupported GGUF version {version} (supported: 2 and 3)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error("{path}: metadata key {key:?}: unknown value type id {type_id}")]
    UnknownValueType {
        path: PathBuf,
        key: String,
        type_id: u32,
    },
    #[error("{path}: metadata key {key:?}: {why}")]
    BadValue {
        path: PathBuf,
        key: String,
        why: String,
    },
    #[error("{path}: duplicate metadata key {key:?}")]
    DuplicateKey { path: PathBuf, key: String },
    #[error("{path}: duplicate tensor name {name:?}{also}")]
    DuplicateTensor {
        path: PathBuf,
        name: String,
        /// `" (also in OTHER_FILE)"` for split models, else empty.
        also: String,
    },
    #[error("{path}: tensor {name:?}: {why}")]
    BadTensor {
        path: PathBuf,
        name: String,
        why: String,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{path}: part {part} of this {count}-part split model is missing: {missing}")]
    MissingPart {
        path: PathBuf,
        missing: PathBuf,
        part: usize,
        count: usize,
    },
    #[error("{path}: metadata key {key:?} is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key {key:?}: expected {expected}, found {found}")]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{path}: writer: {why}")]
    Writer { path: PathBuf, why: String },
}

/// One tensor: where its bytes are and how to read them.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: `dims[0]` is the fastest-varying (columns). See [`TensorInfo::shape`].
    pub dims: Vec<usize>,
    /// The GGML type id as written in the file.
    pub ggml_type: u32,
    /// The storage type, or `None` when qinfer does not support `ggml_type`.
    pub dtype: Option<DType>,
    /// The tensor's bytes (inside the map). For a type whose size is unknown (an id GGML
    /// removed or never defined), the bytes up to the next tensor or the end of the file.
    pub data: ByteView,
    /// The file (split part) it lives in.
    pub file: PathBuf,
}

impl TensorInfo {
    /// Row-major shape (the reverse of `dims`): `[rows, cols]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    /// Number of elements (dims were checked not to overflow when the file was opened).
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// The GGML name of the type (`"Q4_K"`, `"IQ2_XXS"`), known even for types qinfer does not
    /// support; `"unknown"` for ids GGML never defined.
    pub fn type_name(&self) -> &'static str {
        GgmlType::from_id(self.ggml_type).map_or("unknown", |t| t.name)
    }

    /// `"IQ2_XXS (id 16)"`: the type as errors should name it.
    pub fn type_label(&self) -> String {
        ggml_type_label(self.ggml_type)
    }
}

/// A GGUF model: metadata and tensors of one file or of every part of a split model.
#[derive(Clone, Debug)]
pub struct GgufFile {
    pub version: u32,
    /// In file order (of the first part, for split models).
    pub metadata: Vec<(String, Value)>,
    /// In file order, parts in order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment of the first part (each part is read with its own).
    pub alignment: usize,
    /// Every file read, parts in order.
    pub files: Vec<PathBuf>,
}

impl GgufFile {
    /// Maps and validates a GGUF file; for a part of a split model, every part.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let first = open_part(path)?;
        let count = match first.metadata_u64(path, KEY_SPLIT_COUNT)? {
            None | Some(0 | 1) => return Ok(first.into_file(path)),
            Some(n) => n,
        };
        open_split(path, first, count)
    }

    /// Parses a GGUF file already in memory (a single file: split parts are not followed).
    /// `path` is only used in messages and [`TensorInfo::file`].
    pub fn from_view(path: impl AsRef<Path>, bytes: ByteView) -> Result<Self, GgufError> {
        let path = path.as_ref();
        Ok(reader::parse(path, &bytes)?.into_file(path))
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn path(&self) -> PathBuf {
        self.files.first().cloned().unwrap_or_default()
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        convert(value)
            .map(Some)
            .ok_or_else(|| GgufError::WrongType {
                path: self.path(),
                key: key.to_string(),
                expected,
                found: describe(value),
            })
    }

    fn required<T>(&self, key: &str, v: Result<Option<T>, GgufError>) -> Result<T, GgufError> {
        v?.ok_or_else(|| GgufError::MissingKey {
            path: self.path(),
            key: key.to_string(),
        })
    }

    /// Any integer type holding a non-negative value, or `None` when absent.
    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.required(key, self.get_u64_opt(key))
    }
    /// Any integer type holding a value in `0..=u32::MAX`.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.typed(key, "an integer in the u32 range", |v| {
            v.as_u64().and_then(|v| u32::try_from(v).ok())
        })
    }
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.required(key, self.get_u32_opt(key))
    }
    /// Any integer type holding a value in the `i64` range.
    pub fn get_i64_opt(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.typed(key, "an integer in the i64 range", Value::as_i64)
    }
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        self.required(key, self.get_i64_opt(key))
    }
    /// A float or an integer, as `f64`.
    pub fn get_f64_opt(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, "a number", Value::as_f64)
    }
    pub fn get_f64(&self, key: &str) -> Result<f64, GgufError> {
        self.required(key, self.get_f64_opt(key))
    }
    /// A float or an integer, as `f32` (an `f64` is rounded).
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.typed(key, "a number", |v| v.as_f64().map(|v| v as f32))
    }
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.required(key, self.get_f32_opt(key))
    }
    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "bool", Value::as_bool)
    }
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.required(key, self.get_bool_opt(key))
    }
    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "string", Value::as_str)
    }
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.required(key, self.get_str_opt(key))
    }
    pub fn get_array_opt(&self, key: &str) -> Result<Option<&[Value]>, GgufError> {
        self.typed(key, "array", Value::as_array)
    }
    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        self.required(key, self.get_array_opt(key))
    }
}

/// A value as a type error shows it: `i32 -1`, `string "abc"`, `array of 3`.
fn describe(value: &Value) -> String {
    match value {
        Value::String(s) if s.len() <= 40 => format!("string {s:?}"),
        Value::String(s) => format!("string of {} bytes", s.len()),
        Value::Array(a) => format!("array of {}", a.len()),
        Value::U8(v) => format!("u8 {v}"),
        Value::I8(v) => format!("i8 {v}"),
        Value::U16(v) => format!("u16 {v}"),
        Value::I16(v) => format!("i16 {v}"),
        Value::U32(v) => format!("u32 {v}"),
        Value::I32(v) => format!("i32 {v}"),
        Value::U64(v) => format!("u64 {v}"),
        Value::I64(v) => format!("i64 {v}"),
        Value::F32(v) => format!("f32 {v}"),
        Value::F64(v) => format!("f64 {v}"),
        Value::Bool(v) => format!("bool {v}"),
    }
}

fn open_part(path: &Path) -> Result<reader::Part, GgufError> {
    let io = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let bytes = crate::load::file_bytes(&file).map_err(io)?;
    let len = (*bytes).as_ref().len();
    let view = ByteView::new(bytes, 0, len);
    reader::parse(path, &view)
}

/// `dir/prefix-00002-of-00003.gguf` → `("dir/prefix", 2, 3)`.
fn split_name(path: &Path) -> Option<(PathBuf, usize, usize)> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, no) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(no) || !digits(count) {
        return None;
    }
    Some((
        path.with_file_name(prefix),
        no.parse().ok()?,
        count.parse().ok()?,
    ))
}

/// The file name of part `no` (1-based) of `count` (`{prefix}-{no:05}-of-{count:05}.gguf`).
pub fn split_path(prefix: &Path, no: usize, count: usize) -> PathBuf {
    let mut name = prefix.file_name().unwrap_or_default().to_os_string();
    name.push(format!("-{no:05}-of-{count:05}.gguf"));
    prefix.with_file_name(name)
}

fn open_split(path: &Path, given: reader::Part, count: u64) -> Result<GgufFile, GgufError> {
    let invalid = |p: &Path, why: String| GgufError::Invalid {
        path: p.to_path_buf(),
        why,
    };
    // gguf-split writes at most 9999 parts (u16 split keys, 5-digit names).
    let count = usize::try_from(count)
        .ok()
        .filter(|&c| c <= 99_999)
        .ok_or_else(|| invalid(path, format!("{KEY_SPLIT_COUNT} = {count} is absurd")))?;
    let Some((prefix, name_no, name_count)) = split_name(path) else {
        return Err(invalid(
            path,
            format!(
                "{KEY_SPLIT_COUNT} = {count} but the file name does not end in \
                 -NNNNN-of-NNNNN.gguf, so the other parts cannot be found"
            ),
        ));
    };
    if name_count != count {
        return Err(invalid(
            path,
            format!("{KEY_SPLIT_COUNT} = {count} but the file name says {name_count} parts"),
        ));
    }
    let mut given = Some((name_no, given));
    let mut parts = Vec::with_capacity(count);
    for no in 1..=count {
        let part_path = split_path(&prefix, no, count);
        let part = match given.take_if(|(n, _)| *n == no) {
            Some((_, part)) => part,
            None if !part_path.is_file() => {
                return Err(GgufError::MissingPart {
                    path: path.to_path_buf(),
                    missing: part_path,
                    part: no,
                    count,
                });
            }
            None => open_part(&part_path)?,
        };
        let part_no = part.metadata_u64(&part_path, KEY_SPLIT_NO)?;
        let part_count = part.metadata_u64(&part_path, KEY_SPLIT_COUNT)?;
        if part_no != Some(no as u64 - 1) || part_count != Some(count as u64) {
            return Err(invalid(
                &part_path,
                format!(
                    "expected {KEY_SPLIT_NO} = {} and {KEY_SPLIT_COUNT} = {count} (part {no} of \
                     {count}), found {part_no:?} and {part_count:?}",
                    no - 1
                ),
            ));
        }
        parts.push((part_path, part));
    }
    let mut parts = parts.into_iter();
    let Some((first_path, first)) = parts.next() else {
        return Err(invalid(path, "split model with no parts".into()));
    };
    let declared = first.metadata_u64(&first_path, KEY_SPLIT_TENSORS_COUNT)?;
    let mut file = first.into_file(&first_path);
    let mut seen: std::collections::HashMap<String, usize> = file
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    for (part_path, part) in parts {
        for t in part.tensors {
            if let Some(&prev) = seen.get(&t.name) {
                return Err(GgufError::DuplicateTensor {
                    path: part_path,
                    also: format!(" (also in {})", file.tensors[prev].file.display()),
                    name: t.name,
                });
            }
            seen.insert(t.name.clone(), file.tensors.len());
            file.tensors.push(t);
        }
        file.files.push(part_path);
    }
    if let Some(declared) = declared
        && declared != file.tensors.len() as u64
    {
        return Err(invalid(
            &file.files[0],
            format!(
                "{KEY_SPLIT_TENSORS_COUNT} = {declared} but the {count} parts hold {} tensors",
                file.tensors.len()
            ),
        ));
    }
    Ok(file)
}
