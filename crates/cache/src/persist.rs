//! Sequence state in files: session files (`qinfer run --session`) and the prefix cache's
//! disk tier (`--cache-dir`).
//!
//! One container for both, little-endian:
//!
//! ```text
//! magic [8]  "QINFSTAT"
//! version u32 (= FORMAT_VERSION)
//! kind [8]   what the body is ("SESSION\0", "PCACHE\0\0", ...)
//! header     u64 length + UTF-8 JSON (the caller's: model fingerprint, messages, ...)
//! body       u64 length + bytes
//! sha256 [32] of everything above
//! ```
//!
//! A file that is truncated, of another version or kind, or fails its checksum is an error
//! naming the file, never a state with wrong numbers in it. Writes go to a temporary file
//! renamed into place, so a crash never leaves half a file under the real name.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{DeltaNetState, KvCache, KvData, KvType, LayerState, SequenceState};

/// Bumped whenever the layout of a file changes. 2: KV rows carry their type ([`KvType`])
/// and keep their stored bytes.
pub const FORMAT_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"QINFSTAT";

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a qinfer state file")]
    NotOurs { path: String },
    #[error("{path}: format version {found}, this qinfer reads version {FORMAT_VERSION}")]
    Version { path: String, found: u32 },
    #[error("{path}: holds a {found:?} file, expected {expected:?}")]
    Kind {
        path: String,
        found: String,
        expected: String,
    },
    #[error("{path}: corrupt ({what})")]
    Corrupt { path: String, what: String },
}

/// Writes a container file atomically.
pub fn write_file(path: &Path, kind: &[u8; 8], header: &str, body: &[u8]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(body.len() + header.len() + 64);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(kind);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
    bytes.extend_from_slice(body);
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = path.with_extension(format!(
        "{}.tmp{}",
        path.extension().and_then(|e| e.to_str()).unwrap_or(""),
        std::process::id()
    ));
    if let Some(d) = dir {
        std::fs::create_dir_all(d)?;
    }
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Reads a container file of `kind`: its header JSON and body, checksum verified.
pub fn read_file(path: &Path, kind: &[u8; 8]) -> Result<(String, Vec<u8>), PersistError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| PersistError::Io {
        path: name.clone(),
        source,
    })?;
    let corrupt = |what: &str| PersistError::Corrupt {
        path: name.clone(),
        what: what.to_string(),
    };
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(PersistError::NotOurs { path: name });
    }
    if bytes.len() < 8 + 4 + 8 + 32 {
        return Err(corrupt("truncated"));
    }
    let (content, digest) = bytes.split_at(bytes.len() - 32);
    let version = u32::from_le_bytes(content[8..12].try_into().expect("4 bytes"));
    if version != FORMAT_VERSION {
        return Err(PersistError::Version {
            path: name,
            found: version,
        });
    }
    if Sha256::digest(content).as_slice() != digest {
        return Err(corrupt("checksum mismatch"));
    }
    if &content[12..20] != kind {
        return Err(PersistError::Kind {
            path: name,
            found: String::from_utf8_lossy(&content[12..20]).into_owned(),
            expected: String::from_utf8_lossy(kind).into_owned(),
        });
    }
    let mut r = Reader::new(&content[20..]);
    let header = r.bytes().map_err(|e| corrupt(&e))?;
    let header = String::from_utf8(header.to_vec()).map_err(|_| corrupt("header is not UTF-8"))?;
    let body = r.bytes().map_err(|e| corrupt(&e))?.to_vec();
    Ok((header, body))
}

/// Appends little-endian values to a byte buffer.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    pub fn f32s(&mut self, v: &[f32]) {
        self.u64(v.len() as u64);
        for x in v {
            self.buf.extend_from_slice(&x.to_le_bytes());
        }
    }

    /// KV rows as stored: their type's tag, the item count (values, or Q8_0 blocks), then the
    /// items little-endian (Q8_0: GGML's 34-byte blocks).
    pub fn kv_rows(&mut self, d: &KvData) {
        self.u8(d.kv_type().tag());
        self.u64(d.units() as u64);
        self.buf.extend_from_slice(&d.to_bytes());
    }

    /// A sequence state: position, then each layer.
    pub fn state(&mut self, s: &SequenceState) {
        self.u64(s.pos() as u64);
        self.u64(s.layers().len() as u64);
        for l in s.layers() {
            match l {
                LayerState::Attention(kv) => {
                    self.u8(0);
                    self.u64(kv.kv_width() as u64);
                    let (k, v) = kv.to_stored();
                    self.kv_rows(&k);
                    self.kv_rows(&v);
                }
                LayerState::DeltaNet(d) => {
                    self.u8(1);
                    self.f32s(&d.conv.host());
                    self.f32s(&d.recurrent.host());
                }
            }
        }
    }
}

/// Reads what [`Writer`] wrote; every read is bounds-checked (errors, never panics).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err(format!("needs {n} more bytes, {} left", self.buf.len()));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    /// A length that must fit in what is left, at `unit` bytes per item.
    pub fn len(&mut self, unit: usize) -> Result<usize, String> {
        let n = self.u64()?;
        if n > (self.buf.len() / unit.max(1)) as u64 {
            return Err(format!("length {n} overruns the file"));
        }
        Ok(n as usize)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len(1)?;
        self.take(n)
    }

    pub fn f32s(&mut self) -> Result<Vec<f32>, String> {
        let n = self.len(4)?;
        Ok(self
            .take(n * 4)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }

    /// KV rows written by [`Writer::kv_rows`], which must be of type `want`.
    pub fn kv_rows(&mut self, want: KvType) -> Result<KvData, String> {
        let tag = self.u8()?;
        let ty = KvType::from_tag(tag).ok_or_else(|| format!("unknown KV type tag {tag}"))?;
        if ty != want {
            return Err(format!(
                "written with a {ty} KV cache, this one stores {want} (--kv-type)"
            ));
        }
        self.any_kv_rows(ty)
    }

    fn any_kv_rows(&mut self, ty: KvType) -> Result<KvData, String> {
        let unit = KvData::unit_bytes(ty);
        let n = self.len(unit)?;
        Ok(KvData::from_bytes(ty, self.take(n * unit)?).expect("whole items"))
    }

    /// A sequence state written by [`Writer::state`], KV rows in the type they were written
    /// in ([`SequenceState::restore`] refuses them for a state of another type).
    pub fn state(&mut self) -> Result<SequenceState, String> {
        let pos = self.u64()? as usize;
        let n = self.len(1)?;
        let mut layers = Vec::with_capacity(n);
        for _ in 0..n {
            layers.push(match self.u8()? {
                0 => {
                    let w = self.u64()? as usize;
                    let tag = self.u8()?;
                    let ty = KvType::from_tag(tag)
                        .ok_or_else(|| format!("unknown KV type tag {tag}"))?;
                    let k = self.any_kv_rows(ty)?;
                    let v = self.kv_rows(ty)?;
                    if k.rows(w) != Some(pos) || v.rows(w) != Some(pos) {
                        return Err("attention rows do not match the position".into());
                    }
                    let kv = KvCache::from_rows(w, k, v)
                        .ok_or("attention rows do not match their type")?;
                    LayerState::Attention(kv)
                }
                1 => LayerState::DeltaNet(DeltaNetState::from_host(self.f32s()?, self.f32s()?)),
                other => return Err(format!("unknown layer kind {other}")),
            });
        }
        Ok(SequenceState::from_layers(layers, pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LayerSpec;

    fn sample() -> SequenceState {
        let specs = [
            LayerSpec::DeltaNet {
                conv_channels: 2,
                conv_kernel: 3,
                recurrent_len: 4,
            },
            LayerSpec::Attention {
                kv_width: 2,
                kv_type: KvType::F32,
            },
        ];
        let mut s = SequenceState::new(&specs);
        for i in 0..70 {
            if let LayerState::Attention(kv) = s.layer_mut(1) {
                kv.append(&[i as f32, 1.0], &[2.0, -(i as f32)]);
            }
            if let LayerState::DeltaNet(d) = s.layer_mut(0) {
                d.recurrent.host_mut()[i % 4] += 0.25;
            }
            s.advance(1);
        }
        s
    }

    #[test]
    fn states_round_trip_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        let s = sample();
        let mut w = Writer::default();
        w.state(&s);
        write_file(&path, b"SESSION\0", "{\"a\":1}", &w.buf).unwrap();
        let (header, body) = read_file(&path, b"SESSION\0").unwrap();
        assert_eq!(header, "{\"a\":1}");
        let back = Reader::new(&body).state().unwrap();
        assert_eq!(back.layers(), s.layers());
        assert_eq!(back.pos(), 70);

        assert!(matches!(
            read_file(&path, b"PCACHE\0\0"),
            Err(PersistError::Kind { .. })
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_file(&path, b"SESSION\0").unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        std::fs::write(&path, &bytes[..30]).unwrap();
        assert!(read_file(&path, b"SESSION\0").is_err());
        std::fs::write(&path, b"hello").unwrap();
        assert!(matches!(
            read_file(&path, b"SESSION\0"),
            Err(PersistError::NotOurs { .. })
        ));
        // A body cut short is an error from the reader, not a panic.
        assert!(Reader::new(&w.buf[..w.buf.len() - 3]).state().is_err());
    }

    /// Per KV type: a state written and read back keeps its stored bytes (no `f32` round
    /// trip), and a state of another type is refused with the types named.
    #[test]
    fn every_kv_type_round_trips_and_another_type_is_refused() {
        let w = 64;
        let specs = |kv_type| {
            [
                LayerSpec::Attention {
                    kv_width: w,
                    kv_type,
                },
                LayerSpec::DeltaNet {
                    conv_channels: 2,
                    conv_kernel: 3,
                    recurrent_len: 4,
                },
            ]
        };
        for ty in KvType::ALL {
            let mut s = SequenceState::new(&specs(ty));
            for i in 0..70 {
                let row: Vec<f32> = (0..w).map(|j| (i * w + j) as f32 * 0.37 - 9.0).collect();
                if let LayerState::Attention(kv) = s.layer_mut(0) {
                    kv.append(&row, &row.iter().map(|x| -x).collect::<Vec<_>>());
                }
                s.advance(1);
            }
            let mut wr = Writer::default();
            wr.state(&s);
            let back = Reader::new(&wr.buf).state().unwrap();
            let (LayerState::Attention(a), LayerState::Attention(b)) =
                (&s.layers()[0], &back.layers()[0])
            else {
                panic!("attention layer")
            };
            assert_eq!(a.to_stored(), b.to_stored(), "{ty}");
            assert_eq!(b.blocks().len(), 1, "{ty}: rows cut into blocks again");
            assert_eq!(back.bytes(), s.bytes(), "{ty}");
            let mut fresh = SequenceState::new(&specs(ty));
            fresh.restore(&back.snapshot()).unwrap();
            for other in KvType::ALL.into_iter().filter(|&o| o != ty) {
                let mut wrong = SequenceState::new(&specs(other));
                let err = wrong.restore(&back.snapshot()).unwrap_err();
                assert_eq!(
                    err,
                    crate::RestoreError::KvType {
                        found: ty,
                        expected: other
                    }
                );
                assert!(err.to_string().contains(ty.name()), "{err}");
            }
            // A body whose value rows carry another type tag is an error.
            let mut bad = Writer::default();
            bad.kv_rows(&KvData::empty(ty));
            let other = KvType::ALL.into_iter().find(|&o| o != ty).unwrap();
            let err = Reader::new(&bad.buf).kv_rows(other).unwrap_err();
            assert!(
                err.contains(ty.name()) && err.contains(other.name()),
                "{err}"
            );
        }
    }
}
