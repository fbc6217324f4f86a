//! Parsing one GGUF file from bytes. Every read goes through [`Cursor`], which checks the bytes
//! left first; every count is bounded by the bytes left before anything is allocated from it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use qinfer_tensor::{ByteView, DType};

use super::keys::ALIGNMENT as KEY_ALIGNMENT;
use super::value::{Value, type_id};
use super::{
    DEFAULT_ALIGNMENT, GgmlType, GgufError, GgufFile, MAX_DIMS, TensorInfo, ggml_type_label,
};

/// Arrays nested deeper than this are rejected (the recursion stays shallow on any input).
pub(crate) const MAX_ARRAY_DEPTH: usize = 8;
/// Smallest encoded metadata entry: key length, value type, one byte of value.
const MIN_KV_BYTES: usize = 8 + 4 + 1;
/// Smallest encoded tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;
/// Vectors are pre-sized to at most this many elements; beyond it they grow only as elements are
/// actually read.
const MAX_PREALLOC: usize = 4096;

/// One file's contents.
#[derive(Debug)]
pub(crate) struct Part {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
}

impl Part {
    pub fn into_file(self, path: &Path) -> GgufFile {
        GgufFile {
            version: self.version,
            metadata: self.metadata,
            tensors: self.tensors,
            alignment: self.alignment,
            files: vec![path.to_path_buf()],
        }
    }

    /// An integer key of the container itself (`general.alignment`, `split.*`).
    pub fn metadata_u64(&self, path: &Path, key: &str) -> Result<Option<u64>, GgufError> {
        let Some((_, value)) = self.metadata.iter().find(|(k, _)| k == key) else {
            return Ok(None);
        };
        value
            .as_u64()
            .map(Some)
            .ok_or_else(|| GgufError::WrongType {
                path: path.to_path_buf(),
                key: key.to_string(),
                expected: "a non-negative integer",
                found: value.type_name().to_string(),
            })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn truncated(&self, what: &str, need: u128) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos,
            need,
            left: self.left(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.left() {
            return Err(self.truncated(what, n as u128));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, GgufError> {
        self.array(what).map(u16::from_le_bytes)
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Fails unless `count` items of at least `min_bytes` each fit in the bytes left.
    fn check_count(&self, count: u64, min_bytes: usize, what: &str) -> Result<usize, GgufError> {
        let need = u128::from(count) * min_bytes as u128;
        if need > self.left() as u128 {
            return Err(self.truncated(what, need));
        }
        // `count <= left`, so it fits in usize.
        Ok(count as usize)
    }

    /// A length-prefixed UTF-8 string; `what` names what it is for.
    fn string(&mut self, what: &str) -> Result<Result<String, String>, GgufError> {
        let len = self.u64(what)?;
        let len = self.check_count(len, 1, &format!("{what}: string of {len} bytes"))?;
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("string is not valid UTF-8 ({})", e.utf8_error())))
    }
}

fn value_min_bytes(ty: u32) -> Option<usize> {
    Some(match ty {
        type_id::U8 | type_id::I8 | type_id::BOOL => 1,
        type_id::U16 | type_id::I16 => 2,
        type_id::U32 | type_id::I32 | type_id::F32 => 4,
        type_id::U64 | type_id::I64 | type_id::F64 | type_id::STRING => 8,
        type_id::ARRAY => 4 + 8,
        _ => return None,
    })
}

fn read_value(c: &mut Cursor, ty: u32, key: &str, depth: usize) -> Result<Value, GgufError> {
    let what = || format!("metadata key {key:?}");
    let bad = |why: String| GgufError::BadValue {
        path: c.path.to_path_buf(),
        key: key.to_string(),
        why,
    };
    Ok(match ty {
        type_id::U8 => Value::U8(c.u8(&what())?),
        type_id::I8 => Value::I8(c.u8(&what())? as i8),
        type_id::U16 => Value::U16(c.u16(&what())?),
        type_id::I16 => Value::I16(c.u16(&what())? as i16),
        type_id::U32 => Value::U32(c.u32(&what())?),
        type_id::I32 => Value::I32(c.u32(&what())? as i32),
        type_id::U64 => Value::U64(c.u64(&what())?),
        type_id::I64 => Value::I64(c.u64(&what())? as i64),
        type_id::F32 => Value::F32(f32::from_bits(c.u32(&what())?)),
        type_id::F64 => Value::F64(f64::from_bits(c.u64(&what())?)),
        type_id::BOOL => match c.u8(&what())? {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            b => return Err(bad(format!("bool byte is {b}, not 0 or 1"))),
        },
        type_id::STRING => Value::String(c.string(&what())?.map_err(bad)?),
        type_id::ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(bad(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
            }
            let elem = c.u32(&what())?;
            let count = c.u64(&what())?;
            let min = value_min_bytes(elem).ok_or_else(|| GgufError::UnknownValueType {
                path: c.path.to_path_buf(),
                key: key.to_string(),
                type_id: elem,
            })?;
            let count = c.check_count(
                count,
                min,
                &format!("metadata key {key:?}: array of {count} elements"),
            )?;
            let mut out = Vec::with_capacity(count.min(MAX_PREALLOC));
            for _ in 0..count {
                out.push(read_value(c, elem, key, depth + 1)?);
            }
            Value::Array(out)
        }
        other => {
            return Err(GgufError::UnknownValueType {
                path: c.path.to_path_buf(),
                key: key.to_string(),
                type_id: other,
            });
        }
    })
}

struct RawTensor {
    name: String,
    dims: Vec<usize>,
    ggml_type: u32,
    offset: u64,
    /// Byte size, when the type's block geometry is known.
    size: Option<usize>,
}

pub(crate) fn parse(path: &Path, view: &ByteView) -> Result<Part, GgufError> {
    let bytes = view.as_bytes();
    let mut c = Cursor {
        bytes,
        pos: 0,
        path,
    };
    let invalid = |why: String| GgufError::Invalid {
        path: path.to_path_buf(),
        why,
    };

    let magic: [u8; 4] = c.array("the magic")?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            found: magic.escape_ascii().to_string(),
        });
    }
    let version = c.u32("the version")?;
    if version != 0 && version & 0xffff == 0 {
        // A small version number written big-endian reads as a multiple of 2^16.
        return Err(GgufError::BigEndian {
            path: path.to_path_buf(),
        });
    }
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let n_tensors = c.u64("the tensor count")?;
    let n_kv = c.u64("the metadata count")?;
    let n_kv = c.check_count(
        n_kv,
        MIN_KV_BYTES,
        &format!("the header's {n_kv} metadata entries"),
    )?;

    let mut metadata = Vec::with_capacity(n_kv.min(MAX_PREALLOC));
    let mut keys = HashSet::with_capacity(n_kv.min(MAX_PREALLOC));
    for i in 0..n_kv {
        let key = c
            .string(&format!("the key of metadata entry #{i}"))?
            .map_err(|why| invalid(format!("metadata entry #{i}: key {why}")))?;
        let ty = c.u32(&format!("metadata key {key:?}"))?;
        let value = read_value(&mut c, ty, &key, 0)?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey {
                path: path.to_path_buf(),
                key,
            });
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => v
            .as_u64()
            .and_then(|a| usize::try_from(a).ok())
            .filter(|a| a.is_power_of_two())
            .ok_or_else(|| {
                invalid(format!(
                    "{KEY_ALIGNMENT} is {v:?}; it must be a power of two (default {DEFAULT_ALIGNMENT})"
                ))
            })?,
    };

    let n_tensors = c.check_count(
        n_tensors,
        MIN_TENSOR_INFO_BYTES,
        &format!("the header's {n_tensors} tensor infos"),
    )?;
    let mut raw = Vec::with_capacity(n_tensors.min(MAX_PREALLOC));
    let mut names = HashSet::with_capacity(n_tensors.min(MAX_PREALLOC));
    for i in 0..n_tensors {
        let name = c
            .string(&format!("the name of tensor info #{i}"))?
            .map_err(|why| invalid(format!("tensor info #{i}: name {why}")))?;
        let what = format!("tensor {name:?}");
        let bad = |why: String| GgufError::BadTensor {
            path: path.to_path_buf(),
            name: name.clone(),
            why,
        };
        let n_dims = c.u32(&what)?;
        if n_dims as usize > MAX_DIMS {
            return Err(bad(format!(
                "{n_dims} dimensions (GGML allows at most {MAX_DIMS})"
            )));
        }
        let mut dims64 = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims64.push(c.u64(&what)?);
        }
        let ggml_type = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let dims: Vec<usize> = dims64
            .iter()
            .map(|&d| usize::try_from(d).ok().filter(|&d| d <= i64::MAX as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad(format!("dims {dims64:?} are out of range")))?;
        let numel = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= i64::MAX as usize)
            .ok_or_else(|| bad(format!("dims {dims:?} overflow the element count")))?;
        let size = match GgmlType::from_id(ggml_type).and_then(|t| t.block) {
            None => None,
            Some((block, block_bytes)) => {
                let row = dims.first().copied().unwrap_or(1);
                if !row.is_multiple_of(block) {
                    return Err(bad(format!(
                        "row length {row} (dims {dims:?}) is not a multiple of the {} block \
                         size {block}",
                        ggml_type_label(ggml_type)
                    )));
                }
                Some(
                    (numel / block)
                        .checked_mul(block_bytes)
                        .ok_or_else(|| bad(format!("dims {dims:?} overflow the byte size")))?,
                )
            }
        };
        if !names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor {
                path: path.to_path_buf(),
                name,
                also: String::new(),
            });
        }
        raw.push(RawTensor {
            name,
            dims,
            ggml_type,
            offset,
            size,
        });
    }

    // Data starts at the next multiple of the alignment (a file with no tensors may end first).
    let data_start = c
        .pos
        .checked_next_multiple_of(alignment)
        .unwrap_or(usize::MAX);
    let mut tensors = Vec::with_capacity(raw.len());
    let mut offsets: Vec<u64> = raw.iter().map(|t| t.offset).collect();
    offsets.sort_unstable();
    for t in &raw {
        let bad = |why: String| GgufError::BadTensor {
            path: path.to_path_buf(),
            name: t.name.clone(),
            why,
        };
        if !t.offset.is_multiple_of(alignment as u64) {
            return Err(bad(format!(
                "data offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        let start = usize::try_from(t.offset)
            .ok()
            .and_then(|o| o.checked_add(data_start))
            .filter(|&s| s <= bytes.len());
        let len = match (start, t.size) {
            (Some(start), Some(size)) => Some(start)
                .filter(|&s| size <= bytes.len() - s)
                .map(|_| size),
            // Unknown size: up to the next tensor's data, or the end of the file.
            (Some(start), None) => {
                let next = offsets.iter().find(|&&o| o > t.offset);
                let end = next
                    .and_then(|&o| usize::try_from(o).ok())
                    .and_then(|o| o.checked_add(data_start))
                    .map_or(bytes.len(), |e| e.min(bytes.len()));
                Some(end - start)
            }
            (None, _) => None,
        };
        let (Some(start), Some(len)) = (start, len) else {
            let begin = t.offset as u128 + data_start as u128;
            let range = match t.size {
                Some(s) => format!("data [{begin}, {})", begin + s as u128),
                None => format!("data at {begin}"),
            };
            return Err(bad(format!(
                "{range} runs past the end of the file ({} bytes; truncated file?)",
                bytes.len()
            )));
        };
        tensors.push(TensorInfo {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
            dtype: DType::from_ggml_id(t.ggml_type),
            data: view.slice(start, len),
            file: PathBuf::from(path),
        });
    }
    Ok(Part {
        version,
        metadata,
        tensors,
        alignment,
    })
}
