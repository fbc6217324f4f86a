//! Streaming GGUF writer: metadata and tensor declarations are kept in memory (they are small);
//! tensor data goes straight to the file, one tensor at a time, so memory stays bounded by the
//! largest tensor the caller holds.
//!
//! Order of calls: [`GgufWriter::create`] → [`GgufWriter::add_metadata`] /
//! [`GgufWriter::add_tensor`] → [`GgufWriter::write_header`] → [`GgufWriter::write_tensor`] for
//! every tensor → [`GgufWriter::finish`]. The output is GGUF v3 with each tensor padded to the
//! alignment, as gguf-py and ggml write it. Every tensor's offset is fixed by the declarations,
//! so tensors may be written in any order (a checkpoint converted shard by shard as it
//! downloads); the bytes are the same whatever the order. [`GgufWriter::reopen`] continues an
//! interrupted file: its header must be the one declared, and the tensors already in it are
//! named with [`GgufWriter::mark_written`].

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use qinfer_tensor::DType;

use super::keys::ALIGNMENT as KEY_ALIGNMENT;
use super::reader::MAX_ARRAY_DEPTH;
use super::value::{Value, type_id};
use super::{DEFAULT_ALIGNMENT, GgmlType, GgufError, MAX_DIMS, ggml_type_label};

#[derive(Debug)]
struct Planned {
    name: String,
    dims: Vec<usize>,
    ggml_type: u32,
    size: usize,
    offset: usize,
}

/// Writes one GGUF file (see the module docs for the order of calls). A writer dropped before
/// [`GgufWriter::finish`] leaves an incomplete file behind.
#[derive(Debug)]
pub struct GgufWriter {
    path: PathBuf,
    out: BufWriter<File>,
    alignment: usize,
    metadata: Vec<(String, Value)>,
    keys: HashSet<String>,
    tensors: Vec<Planned>,
    /// Declared tensors by name (index into `tensors`).
    names: HashMap<String, usize>,
    /// Offset of the data section, once the header is written.
    data_start: Option<usize>,
    /// Which declared tensors are written.
    written: Vec<bool>,
    /// The file position.
    pos: usize,
    /// Continuing an existing file ([`GgufWriter::reopen`]): the header is checked, not
    /// written.
    reopened: bool,
}

impl GgufWriter {
    /// Creates (truncates) `path`. An `alignment` other than the default 32 must be recorded as
    /// `general.alignment`: add it as metadata where you want it, or [`GgufWriter::write_header`]
    /// appends it (u32).
    pub fn create(path: impl AsRef<Path>, alignment: usize) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        check_alignment(&path, alignment)?;
        let file = File::create(&path).map_err(|source| GgufError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self::new(path, file, alignment, false))
    }

    /// Opens an interrupted file to finish it: declare the same metadata and tensors as when it
    /// was created; [`GgufWriter::write_header`] then checks that the file starts with exactly
    /// that header (an error otherwise) instead of writing it.
    pub fn reopen(path: impl AsRef<Path>, alignment: usize) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        check_alignment(&path, alignment)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| GgufError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self::new(path, file, alignment, true))
    }

    fn new(path: PathBuf, file: File, alignment: usize, reopened: bool) -> Self {
        GgufWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            alignment,
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashMap::new(),
            data_start: None,
            written: Vec::new(),
            pos: 0,
            reopened,
        }
    }

    fn io(&self, source: std::io::Error) -> GgufError {
        GgufError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn usage(&self, why: String) -> GgufError {
        GgufError::Writer {
            path: self.path.clone(),
            why,
        }
    }

    fn before_header(&self, what: &str) -> Result<(), GgufError> {
        match self.data_start {
            None => Ok(()),
            Some(_) => Err(self.usage(format!("{what} after write_header"))),
        }
    }

    /// Appends a metadata entry. Arrays must hold one element type (nested arrays may differ
    /// from each other); an empty array is written with element type u8.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> Result<(), GgufError> {
        let key = key.into();
        self.before_header(&format!("metadata key {key:?} added"))?;
        if key == KEY_ALIGNMENT && value.as_u64() != Some(self.alignment as u64) {
            return Err(self.usage(format!(
                "{KEY_ALIGNMENT} = {value:?} differs from the writer's alignment {}",
                self.alignment
            )));
        }
        check_value(&value, 0).map_err(|why| self.usage(format!("metadata key {key:?}: {why}")))?;
        if !self.keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey {
                path: self.path.clone(),
                key,
            });
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Declares a tensor with `dims` in GGML order (`dims[0]` = columns).
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[usize],
        dtype: DType,
    ) -> Result<(), GgufError> {
        self.add_tensor_raw(name, dims, dtype.ggml_id())
    }

    /// Declares a tensor of any GGML type whose block size is known (to copy tensors qinfer
    /// does not compute with).
    pub fn add_tensor_raw(
        &mut self,
        name: impl Into<String>,
        dims: &[usize],
        ggml_type: u32,
    ) -> Result<(), GgufError> {
        let name = name.into();
        self.before_header(&format!("tensor {name:?} declared"))?;
        let bad = |why: String| GgufError::BadTensor {
            path: self.path.clone(),
            name: name.clone(),
            why,
        };
        if dims.len() > MAX_DIMS {
            return Err(bad(format!(
                "{} dimensions (GGML allows at most {MAX_DIMS})",
                dims.len()
            )));
        }
        let Some((block, block_bytes)) = GgmlType::from_id(ggml_type).and_then(|t| t.block) else {
            return Err(bad(format!(
                "type {} has no known size",
                ggml_type_label(ggml_type)
            )));
        };
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(block) {
            return Err(bad(format!(
                "row length {row} is not a multiple of the {} block size {block}",
                ggml_type_label(ggml_type)
            )));
        }
        let size = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| (n / block).checked_mul(block_bytes))
            .filter(|&s| s <= i64::MAX as usize)
            .ok_or_else(|| bad(format!("dims {dims:?} overflow")))?;
        if self.names.contains_key(&name) {
            return Err(GgufError::DuplicateTensor {
                path: self.path.clone(),
                name,
                also: String::new(),
            });
        }
        self.names.insert(name.clone(), self.tensors.len());
        let offset = match self.tensors.last() {
            None => 0,
            Some(t) => self.padded(t.offset + t.size)?,
        };
        self.tensors.push(Planned {
            name,
            dims: dims.to_vec(),
            ggml_type,
            size,
            offset,
        });
        Ok(())
    }

    fn padded(&self, n: usize) -> Result<usize, GgufError> {
        n.checked_next_multiple_of(self.alignment)
            .ok_or_else(|| self.usage("the file would exceed the address space".into()))
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), GgufError> {
        self.out.write_all(bytes).map_err(|e| self.io(e))?;
        self.pos += bytes.len();
        Ok(())
    }

    fn seek(&mut self, to: usize) -> Result<(), GgufError> {
        if self.pos != to {
            self.out
                .seek(SeekFrom::Start(to as u64))
                .map_err(|e| self.io(e))?;
            self.pos = to;
        }
        Ok(())
    }

    fn pad_to(&mut self, target: usize) -> Result<(), GgufError> {
        const ZEROS: [u8; 64] = [0; 64];
        while self.pos < target {
            let n = (target - self.pos).min(ZEROS.len());
            self.emit(&ZEROS[..n])?;
        }
        Ok(())
    }

    /// Writes the header, metadata and tensor infos, and pads to the data section.
    pub fn write_header(&mut self) -> Result<(), GgufError> {
        self.before_header("write_header called again")?;
        if self.alignment != DEFAULT_ALIGNMENT && !self.keys.contains(KEY_ALIGNMENT) {
            self.add_metadata(KEY_ALIGNMENT, Value::U32(self.alignment as u32))?;
        }
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut head, value);
        }
        for t in &self.tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for &d in &t.dims {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.to_le_bytes());
            head.extend_from_slice(&(t.offset as u64).to_le_bytes());
        }
        if self.reopened {
            let mut have = vec![0u8; head.len()];
            let file = self.out.get_mut();
            let same = file.seek(SeekFrom::Start(0)).is_ok()
                && file.read_exact(&mut have).is_ok()
                && have == head;
            if !same {
                return Err(
                    self.usage("the existing file does not start with the declared header".into())
                );
            }
            let data_start = self.padded(head.len())?;
            self.pos = head.len();
            self.seek(data_start)?;
            self.data_start = Some(data_start);
        } else {
            self.emit(&head)?;
            let data_start = self.padded(self.pos)?;
            self.pad_to(data_start)?;
            self.data_start = Some(data_start);
        }
        self.written = vec![false; self.tensors.len()];
        Ok(())
    }

    /// The declared tensor `name`, once the header is written.
    fn declared(&self, name: &str, what: &str) -> Result<usize, GgufError> {
        if self.data_start.is_none() {
            return Err(self.usage(format!("tensor {name:?} {what} before write_header")));
        }
        self.names
            .get(name)
            .copied()
            .ok_or_else(|| self.usage(format!("tensor {name:?} {what}, but it was not declared")))
    }

    /// Takes `name` as already in a reopened file.
    pub fn mark_written(&mut self, name: &str) -> Result<(), GgufError> {
        let i = self.declared(name, "marked written")?;
        self.written[i] = true;
        Ok(())
    }

    /// Flushes what was written and makes it durable (before recording it elsewhere as done).
    pub fn sync(&mut self) -> Result<(), GgufError> {
        self.out.flush().map_err(|e| self.io(e))?;
        self.out.get_ref().sync_data().map_err(|e| self.io(e))
    }

    /// Writes the data of the declared tensor `name`, `bytes` its exact size, at its offset.
    pub fn write_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), GgufError> {
        let i = self.declared(name, "written")?;
        let t = &self.tensors[i];
        if t.size != bytes.len() {
            return Err(self.usage(format!(
                "tensor {name:?}: {} {:?} is {} bytes, got {}",
                ggml_type_label(t.ggml_type),
                t.dims,
                t.size,
                bytes.len()
            )));
        }
        if self.written[i] {
            return Err(self.usage(format!("tensor {name:?} written twice")));
        }
        let start = self.data_start.unwrap_or(0) + t.offset;
        // Between the previous tensor and this one lies only padding: write its zeros (a
        // plain sequential file); anywhere else, seek (what is skipped reads as zeros until
        // its own tensor is written).
        if start >= self.pos && start - self.pos < self.alignment && !self.reopened {
            self.pad_to(start)?;
        } else {
            self.seek(start)?;
        }
        self.emit(bytes)?;
        self.written[i] = true;
        Ok(())
    }

    /// Pads the last tensor, flushes and closes the file. Fails if a tensor was not written.
    pub fn finish(mut self) -> Result<(), GgufError> {
        if self.data_start.is_none() {
            self.write_header()?;
        }
        if let Some(i) = self.written.iter().position(|w| !w) {
            return Err(self.usage(format!(
                "tensor {:?} was declared but not written",
                self.tensors[i].name
            )));
        }
        let data_start = self.data_start.unwrap_or(0);
        let end = match self.tensors.last() {
            Some(t) => self.padded(data_start + t.offset + t.size)?,
            None => data_start,
        };
        self.out.flush().map_err(|e| self.io(e))?;
        self.out
            .get_ref()
            .set_len(end as u64)
            .map_err(|e| self.io(e))
    }
}

fn check_alignment(path: &Path, alignment: usize) -> Result<(), GgufError> {
    if !alignment.is_power_of_two() || u32::try_from(alignment).is_err() {
        return Err(GgufError::Writer {
            path: path.to_path_buf(),
            why: format!("alignment {alignment} is not a power of two in the u32 range"),
        });
    }
    Ok(())
}

/// Arrays must be homogeneous and not nested deeper than the reader accepts.
fn check_value(value: &Value, depth: usize) -> Result<(), String> {
    let Value::Array(items) = value else {
        return Ok(());
    };
    if depth >= MAX_ARRAY_DEPTH {
        return Err(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}"));
    }
    if let Some(first) = items.first()
        && let Some(other) = items.iter().find(|v| v.type_id() != first.type_id())
    {
        return Err(format!(
            "array mixes {} and {} elements",
            first.type_name(),
            other.type_name()
        ));
    }
    items.iter().try_for_each(|v| check_value(v, depth + 1))
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The value without its type id (array elements are written this way).
fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            let elem = items.first().map_or(type_id::U8, Value::type_id);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
    }
}
