//! GGUF container: fixtures written by gguf-py (tools/make_gguf_container_fixtures.py) read
//! exactly, the writer round-trips them, every error class is named, and mutated files never
//! panic.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use qinfer_formats::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value};
use qinfer_tensor::{ByteView, DType};

/// Records the largest single allocation request, to prove hostile lengths allocate nothing big.
struct PeakAlloc;
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only records sizes.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        PEAK.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf-container")
}

/// The fixtures: JSON description and the file to open.
const FIXTURES: [(&str, &str); 5] = [
    ("all-types", "all-types.gguf"),
    ("align64", "align64.gguf"),
    ("split", "split-00001-of-00002.gguf"),
    ("hand-packed", "hand-packed.gguf"),
    ("version2", "version2.gguf"),
];

fn expected(stem: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join(format!("{stem}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A typed JSON node (`{"type": "u8", "value": 5}`) as the Value it describes.
fn json_value(node: &serde_json::Value) -> Value {
    let v = &node["value"];
    let int = || {
        v.as_i64()
            .map(i128::from)
            .or(v.as_u64().map(i128::from))
            .unwrap()
    };
    match node["type"].as_str().unwrap() {
        "u8" => Value::U8(int() as u8),
        "i8" => Value::I8(int() as i8),
        "u16" => Value::U16(int() as u16),
        "i16" => Value::I16(int() as i16),
        "u32" => Value::U32(int() as u32),
        "i32" => Value::I32(int() as i32),
        "u64" => Value::U64(int() as u64),
        "i64" => Value::I64(int() as i64),
        "f32" => Value::F32(v.as_f64().unwrap() as f32),
        "f64" => Value::F64(v.as_f64().unwrap()),
        "bool" => Value::Bool(v.as_bool().unwrap()),
        "string" => Value::String(v.as_str().unwrap().to_string()),
        "array" => Value::Array(v.as_array().unwrap().iter().map(json_value).collect()),
        other => panic!("unknown JSON type {other}"),
    }
}

/// Checks that `file` holds exactly what `want` describes.
fn check_against_json(file: &GgufFile, want: &serde_json::Value, what: &str) {
    assert_eq!(
        u64::from(file.version),
        want["version"].as_u64().unwrap(),
        "{what}"
    );
    assert_eq!(
        file.alignment as u64,
        want["alignment"].as_u64().unwrap(),
        "{what}"
    );
    let meta: Vec<(String, Value)> = want["metadata"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["key"].as_str().unwrap().to_string(),
                json_value(&m["value"]),
            )
        })
        .collect();
    assert_eq!(file.metadata, meta, "{what}: metadata");
    let tensors = want["tensors"].as_array().unwrap();
    assert_eq!(file.tensors.len(), tensors.len(), "{what}");
    for (t, w) in file.tensors.iter().zip(tensors) {
        let dims: Vec<usize> = serde_json::from_value(w["dims"].clone()).unwrap();
        assert_eq!(t.name, w["name"].as_str().unwrap(), "{what}");
        assert_eq!(t.dims, dims, "{what}: {}", t.name);
        assert_eq!(t.shape(), dims.iter().rev().copied().collect::<Vec<_>>());
        assert_eq!(u64::from(t.ggml_type), w["ggml_type"].as_u64().unwrap());
        assert_eq!(t.type_name(), w["type_name"].as_str().unwrap());
        assert_eq!(t.dtype, DType::from_ggml_id(t.ggml_type));
        assert_eq!(
            t.file.file_name().unwrap().to_str().unwrap(),
            w["file"].as_str().unwrap()
        );
        let hex: String = t
            .data
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            w["data_hex"].as_str().unwrap(),
            "{what}: {} data",
            t.name
        );
    }
    let files: Vec<&str> = want["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let got: Vec<&str> = file
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap())
        .collect();
    assert_eq!(got, files, "{what}");
}

#[test]
fn reads_python_fixtures_exactly() {
    for (stem, file) in FIXTURES {
        let gguf = GgufFile::open(fixtures().join(file)).unwrap();
        check_against_json(&gguf, &expected(stem), stem);
    }
    // Any part of a split model opens the whole model.
    let gguf = GgufFile::open(fixtures().join("split-00002-of-00002.gguf")).unwrap();
    check_against_json(&gguf, &expected("split"), "split from part 2");
}

#[test]
fn unsupported_types_are_kept_by_name() {
    let gguf = GgufFile::open(fixtures().join("all-types.gguf")).unwrap();
    let t = gguf.tensor("iq2_xxs.unsupported").unwrap();
    assert_eq!((t.dtype, t.type_name()), (None, "IQ2_XXS"));
    assert_eq!(t.type_label(), "IQ2_XXS (id 16)");
    assert_eq!(t.data.len(), 66, "size known from the GGML table");
    let q = gguf.tensor("q4_k.matrix").unwrap();
    assert_eq!(
        (q.dtype, q.shape(), q.numel()),
        (Some(DType::Q4_K), vec![2, 256], 512)
    );
    assert!(gguf.tensor("missing").is_none());
}

#[test]
fn ggml_type_table_agrees_with_dtype() {
    assert_eq!(GgmlType::all().len(), 42);
    for (i, t) in GgmlType::all().iter().enumerate() {
        assert_eq!(t.id as usize, i);
    }
    for d in DType::ALL {
        let t = GgmlType::from_id(d.ggml_id()).unwrap();
        assert_eq!(t.name, d.to_string());
        assert_eq!(t.block, Some((d.block_size(), d.block_bytes())), "{d}");
        assert_eq!(t.dtype(), Some(d));
    }
    assert!(GgmlType::from_id(42).is_none());
    assert_eq!(
        qinfer_formats::gguf::ggml_type_label(99),
        "unknown type (id 99)"
    );
}

#[test]
fn typed_getters_name_key_and_types() {
    let g = GgufFile::open(fixtures().join("all-types.gguf")).unwrap();
    assert_eq!(g.get_u64("test.u8").unwrap(), 200);
    assert_eq!(g.get_u64("test.u64").unwrap(), 18_000_000_000_000_000_000);
    assert_eq!(g.get_u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(g.get_i64("test.i8").unwrap(), -100);
    assert_eq!(g.get_i64("test.i64").unwrap(), -9_000_000_000_000_000_000);
    assert_eq!(g.get_f32("test.f32").unwrap(), 1e-6);
    assert_eq!(g.get_f64("test.f64").unwrap(), 10000000.000001);
    assert_eq!(g.get_f64("test.u16").unwrap(), 60000.0);
    assert!(g.get_bool("test.bool_true").unwrap());
    assert_eq!(g.get_str("test.string").unwrap(), "gpt2");
    assert_eq!(g.get_str("test.string_empty").unwrap(), "");
    assert_eq!(g.get_array("test.array_i32").unwrap().len(), 4);
    assert_eq!(g.get_u64_opt("absent").unwrap(), None);
    assert_eq!(g.get_str_opt("absent").unwrap(), None);
    assert_eq!(g.get("test.i16"), Some(&Value::I16(-30000)));
    let v = g.get("test.array_string").unwrap();
    assert_eq!(v.as_array().unwrap()[2].as_str(), Some("Ġthe"));
    assert_eq!(v.type_name(), "array");

    let cases: Vec<(GgufError, &[&str])> = vec![
        (
            g.get_u64("test.i8").unwrap_err(),
            &[
                "all-types.gguf",
                "\"test.i8\"",
                "non-negative integer",
                "i8 -100",
            ],
        ),
        (
            g.get_u32("test.u64").unwrap_err(),
            &["\"test.u64\"", "u32 range", "u64 18000000000000000000"],
        ),
        (
            g.get_str("test.u8").unwrap_err(),
            &["expected string, found u8 200"],
        ),
        (
            g.get_f32("test.string").unwrap_err(),
            &["expected a number, found string \"gpt2\""],
        ),
        (
            g.get_array("test.bool_true").unwrap_err(),
            &["expected array, found bool true"],
        ),
        (g.get_bool_opt("test.u8").unwrap_err(), &["expected bool"]),
        (
            g.get_u64("qwen35.block_count").unwrap_err(),
            &["\"qwen35.block_count\" is missing"],
        ),
    ];
    for (err, want) in cases {
        let msg = err.to_string();
        for w in want {
            assert!(msg.contains(w), "{msg:?} lacks {w:?}");
        }
    }
}

#[test]
fn value_accessors() {
    assert_eq!(Value::I32(-1).as_u64(), None);
    assert_eq!(Value::I32(7).as_u64(), Some(7));
    assert_eq!(Value::U64(u64::MAX).as_i64(), None);
    assert_eq!(Value::U16(3).as_f64(), Some(3.0));
    assert_eq!(Value::F32(0.5).as_u64(), None);
    assert_eq!(Value::String("x".into()).as_str(), Some("x"));
    assert_eq!(Value::Bool(true).as_u64(), None);
    assert_eq!(Value::Array(vec![]).as_array(), Some(&[][..]));
    assert_eq!(Value::F64(1.0).type_name(), "f64");
}

/// Writes `file`'s metadata and tensors with [`GgufWriter`] to `out` (a split model as one
/// file, without its `split.*` keys).
fn rewrite(file: &GgufFile, out: &Path) {
    let mut w = GgufWriter::create(out, file.alignment).unwrap();
    for (k, v) in &file.metadata {
        if !k.starts_with("split.") {
            w.add_metadata(k.clone(), v.clone()).unwrap();
        }
    }
    for t in &file.tensors {
        w.add_tensor_raw(t.name.clone(), &t.dims, t.ggml_type)
            .unwrap();
    }
    w.write_header().unwrap();
    for t in &file.tensors {
        w.write_tensor(&t.name, t.data.as_bytes()).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn writer_round_trips_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    // Set QINFER_GGUF_WRITE_DIR to keep the outputs, e.g. to read them with gguf-py
    // (tests/fixtures/gguf-container/README.md).
    let keep = std::env::var_os("QINFER_GGUF_WRITE_DIR").map(PathBuf::from);
    for (stem, file) in FIXTURES {
        let src = GgufFile::open(fixtures().join(file)).unwrap();
        let out = keep
            .clone()
            .unwrap_or(dir.path().to_path_buf())
            .join(format!("{stem}.gguf"));
        rewrite(&src, &out);
        let back = GgufFile::open(&out).unwrap();
        let src_meta: Vec<_> = src
            .metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("split."))
            .cloned()
            .collect();
        assert_eq!(back.metadata, src_meta, "{stem}");
        assert_eq!(back.alignment, src.alignment, "{stem}");
        assert_eq!(back.tensors.len(), src.tensors.len(), "{stem}");
        for (a, b) in back.tensors.iter().zip(&src.tensors) {
            assert_eq!(
                (&a.name, &a.dims, a.ggml_type),
                (&b.name, &b.dims, b.ggml_type)
            );
            assert_eq!(a.data.as_bytes(), b.data.as_bytes(), "{stem}: {}", a.name);
        }
        if matches!(stem, "all-types" | "align64") {
            // Same layout choices as gguf-py: the bytes are identical.
            let ours = std::fs::read(&out).unwrap();
            let theirs = std::fs::read(fixtures().join(file)).unwrap();
            assert!(
                ours == theirs,
                "{stem}: writer output differs from gguf-py's"
            );
        }
    }
}

#[test]
fn writer_appends_alignment_and_pads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.gguf");
    let mut w = GgufWriter::create(&p, 128).unwrap();
    w.add_metadata("k", Value::Array(vec![])).unwrap();
    w.add_tensor("x", &[3], DType::F32).unwrap();
    w.add_tensor("y", &[32, 2], DType::Q8_0).unwrap();
    w.write_header().unwrap();
    w.write_tensor("x", &[1; 12]).unwrap();
    w.write_tensor("y", &[2; 68]).unwrap();
    w.finish().unwrap();
    let g = GgufFile::open(&p).unwrap();
    assert_eq!(g.alignment, 128);
    assert_eq!(g.get_u64("general.alignment").unwrap(), 128);
    assert_eq!(g.get("k"), Some(&Value::Array(vec![])));
    assert_eq!(g.tensor("y").unwrap().data.as_bytes(), &[2; 68]);
    assert_eq!(std::fs::metadata(&p).unwrap().len() % 128, 0);
}

#[test]
fn writer_rejects_misuse() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.gguf");
    let msg = |e: GgufError| e.to_string();
    assert!(msg(GgufWriter::create(&p, 48).unwrap_err()).contains("power of two"));

    let mut w = GgufWriter::create(&p, 32).unwrap();
    w.add_metadata("a", Value::U8(1)).unwrap();
    assert!(
        msg(w.add_metadata("a", Value::U8(2)).unwrap_err())
            .contains("duplicate metadata key \"a\"")
    );
    let mixed = Value::Array(vec![Value::U8(1), Value::I8(1)]);
    assert!(msg(w.add_metadata("m", mixed).unwrap_err()).contains("mixes u8 and i8"));
    assert!(
        msg(w
            .add_metadata("general.alignment", Value::U32(64))
            .unwrap_err())
        .contains("differs")
    );
    w.add_tensor("t", &[4], DType::F32).unwrap();
    w.add_tensor("q", &[64], DType::Q4_0).unwrap();
    assert!(
        msg(w.add_tensor("t", &[4], DType::F32).unwrap_err())
            .contains("duplicate tensor name \"t\"")
    );
    assert!(
        msg(w.add_tensor("b", &[33], DType::Q8_0).unwrap_err())
            .contains("not a multiple of the Q8_0 (id 8) block size 32")
    );
    assert!(
        msg(w.add_tensor("d", &[1, 1, 1, 1, 1], DType::F32).unwrap_err()).contains("at most 4")
    );
    assert!(msg(w.add_tensor("o", &[usize::MAX, 2], DType::F32).unwrap_err()).contains("overflow"));
    assert!(
        msg(w.add_tensor_raw("r", &[4], 31).unwrap_err())
            .contains("Q4_0_4_4 (id 31) has no known size")
    );
    assert!(msg(w.write_tensor("t", &[0; 16]).unwrap_err()).contains("before write_header"));
    w.write_header().unwrap();
    assert!(msg(w.add_metadata("late", Value::U8(1)).unwrap_err()).contains("after write_header"));
    assert!(
        msg(w.write_tensor("z", &[0; 4]).unwrap_err())
            .contains("\"z\" written, but it was not declared")
    );
    assert!(msg(w.write_tensor("t", &[0; 15]).unwrap_err()).contains("is 16 bytes, got 15"));
    w.write_tensor("t", &[0; 16]).unwrap();
    assert!(msg(w.write_tensor("t", &[0; 16]).unwrap_err()).contains("\"t\" written twice"));
    assert!(msg(w.finish().unwrap_err()).contains("tensor \"q\" was declared but not written"));
}

/// Declares `x` (F32 [3]), `y` (Q8_0 [32, 2]) and `z` (F32 [40]) and writes the header.
fn three_tensors(w: &mut GgufWriter) {
    w.add_metadata("k", Value::U32(5)).unwrap();
    w.add_tensor("x", &[3], DType::F32).unwrap();
    w.add_tensor("y", &[32, 2], DType::Q8_0).unwrap();
    w.add_tensor("z", &[40], DType::F32).unwrap();
    w.write_header().unwrap();
}

/// Tensors written in any order, or some of them and the rest after reopening the file, give
/// the bytes a sequential write gives; a reopened file must have the declared header.
#[test]
fn writer_takes_tensors_in_any_order_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let data: [(&str, Vec<u8>); 3] = [("x", vec![1; 12]), ("y", vec![2; 68]), ("z", vec![3; 160])];
    let write = |name: &str, order: &[usize]| {
        let p = dir.path().join(name);
        let mut w = GgufWriter::create(&p, 32).unwrap();
        three_tensors(&mut w);
        for &i in order {
            w.write_tensor(data[i].0, &data[i].1).unwrap();
        }
        w.finish().unwrap();
        std::fs::read(&p).unwrap()
    };
    let sequential = write("a.gguf", &[0, 1, 2]);
    assert_eq!(write("b.gguf", &[2, 0, 1]), sequential);
    assert_eq!(write("c.gguf", &[1, 2, 0]), sequential);

    // Interrupted after `z`: reopened, `z` marked, the others written.
    let p = dir.path().join("d.gguf");
    let mut w = GgufWriter::create(&p, 32).unwrap();
    three_tensors(&mut w);
    w.write_tensor("z", &data[2].1).unwrap();
    w.sync().unwrap();
    drop(w);
    let mut w = GgufWriter::reopen(&p, 32).unwrap();
    three_tensors(&mut w);
    w.mark_written("z").unwrap();
    w.write_tensor("y", &data[1].1).unwrap();
    w.write_tensor("x", &data[0].1).unwrap();
    w.finish().unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), sequential);

    // A different declaration does not match the file.
    let mut w = GgufWriter::reopen(&p, 32).unwrap();
    w.add_metadata("k", Value::U32(6)).unwrap();
    w.add_tensor("x", &[3], DType::F32).unwrap();
    let e = w.write_header().unwrap_err().to_string();
    assert!(e.contains("does not start with the declared header"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Broken files.

/// A small valid file with distinctive names to patch: metadata `kk.one` (u32), `kk.two`
/// (string), `kk.arr` (array of u32); tensors `tt.one` (F32 [8]) and `tt.two` (Q8_0 [32, 2]).
fn base_file() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("base.gguf");
    let mut w = GgufWriter::create(&p, 32).unwrap();
    w.add_metadata("kk.one", Value::U32(7)).unwrap();
    w.add_metadata("kk.two", Value::String("hello".into()))
        .unwrap();
    w.add_metadata("kk.arr", Value::Array(vec![Value::U32(1), Value::U32(2)]))
        .unwrap();
    w.add_metadata("kk.flag", Value::Bool(true)).unwrap();
    w.add_tensor("tt.one", &[8], DType::F32).unwrap();
    w.add_tensor("tt.two", &[32, 2], DType::Q8_0).unwrap();
    w.write_header().unwrap();
    w.write_tensor("tt.one", &[1; 32]).unwrap();
    w.write_tensor("tt.two", &[2; 68]).unwrap();
    w.finish().unwrap();
    std::fs::read(&p).unwrap()
}

fn find(hay: &[u8], needle: &str) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{needle} not in file"))
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_view("mem.gguf", ByteView::from_vec(bytes))
}

/// `(what the case does, the patch, words the error must contain)`.
type Case = (&'static str, fn(&mut Vec<u8>), &'static [&'static str]);

#[test]
fn broken_files_fail_with_a_named_reason() {
    let base = base_file();
    assert!(parse(base.clone()).is_ok());
    // Offsets of the fields to patch, found by name: a name is preceded by its u64 length.
    let cases: &[Case] = &[
        (
            "empty file",
            |b| b.clear(),
            &["mem.gguf", "truncated file: the magic"],
        ),
        (
            "wrong magic",
            |b| b[..4].copy_from_slice(b"GGML"),
            &["not a GGUF file", "magic is \"GGML\""],
        ),
        (
            "binary magic",
            |b| b[..4].copy_from_slice(&[0, 0xff, b'G', 1]),
            &["magic is \"\\x00\\xffG\\x01\""],
        ),
        (
            "big-endian",
            |b| b[4..8].copy_from_slice(&3u32.to_be_bytes()),
            &["big-endian"],
        ),
        (
            "version 1",
            |b| put_u32(b, 4, 1),
            &["unsupported GGUF version 1"],
        ),
        (
            "version 4",
            |b| put_u32(b, 4, 4),
            &["unsupported GGUF version 4"],
        ),
        (
            "absurd tensor count",
            |b| put_u64(b, 8, u64::MAX),
            &["18446744073709551615 tensor infos", "truncated"],
        ),
        (
            "absurd metadata count",
            |b| put_u64(b, 16, 1 << 40),
            &["1099511627776 metadata entries"],
        ),
        (
            "unknown value type",
            |b| {
                let at = find(b, "kk.one") + 6;
                put_u32(b, at, 13)
            },
            &["\"kk.one\"", "unknown value type id 13"],
        ),
        (
            "unknown array element type",
            |b| {
                let at = find(b, "kk.arr") + 10;
                put_u32(b, at, 99)
            },
            &["\"kk.arr\"", "unknown value type id 99"],
        ),
        (
            "string past the end",
            |b| {
                let at = find(b, "hello") - 8;
                put_u64(b, at, u64::MAX)
            },
            &[
                "\"kk.two\"",
                "string of 18446744073709551615 bytes",
                "truncated",
            ],
        ),
        (
            "array past the end",
            |b| {
                let at = find(b, "kk.arr") + 14;
                put_u64(b, at, u64::MAX)
            },
            &["\"kk.arr\"", "array of 18446744073709551615 elements"],
        ),
        (
            "key length past the end",
            |b| {
                let at = find(b, "kk.one") - 8;
                put_u64(b, at, 1 << 62)
            },
            &["key of metadata entry #0"],
        ),
        (
            "tensor name past the end",
            |b| {
                let at = find(b, "tt.one") - 8;
                put_u64(b, at, u64::MAX - 3)
            },
            &["name of tensor info #0"],
        ),
        (
            "non-UTF-8 key",
            |b| {
                let at = find(b, "kk.one");
                b[at] = 0xff
            },
            &["metadata entry #0", "not valid UTF-8"],
        ),
        (
            "non-UTF-8 string",
            |b| {
                let at = find(b, "hello");
                b[at] = 0xc3
            },
            &["\"kk.two\"", "not valid UTF-8"],
        ),
        (
            "bool byte 2",
            |b| {
                let at = find(b, "kk.flag") + 11;
                b[at] = 2
            },
            &["\"kk.flag\"", "not 0 or 1"],
        ),
        (
            "duplicate key",
            |b| {
                let at = find(b, "kk.two");
                b[at..at + 6].copy_from_slice(b"kk.one")
            },
            &["duplicate metadata key \"kk.one\""],
        ),
        (
            "duplicate tensor",
            |b| {
                let at = find(b, "tt.two");
                b[at..at + 6].copy_from_slice(b"tt.one")
            },
            &["duplicate tensor name \"tt.one\""],
        ),
        (
            "too many dims",
            |b| {
                let at = find(b, "tt.one") + 6;
                put_u32(b, at, 5)
            },
            &["tensor \"tt.one\"", "5 dimensions", "at most 4"],
        ),
        (
            "dims overflow",
            |b| {
                let at = find(b, "tt.two") + 10;
                put_u64(b, at, 1 << 62);
                put_u64(b, at + 8, 1 << 62)
            },
            &["tensor \"tt.two\"", "overflow"],
        ),
        (
            "dim out of range",
            |b| {
                let at = find(b, "tt.one") + 10;
                put_u64(b, at, u64::MAX)
            },
            &["tensor \"tt.one\"", "out of range"],
        ),
        (
            "row not whole blocks",
            |b| {
                let at = find(b, "tt.two") + 10;
                put_u64(b, at, 33)
            },
            &[
                "tensor \"tt.two\"",
                "row length 33",
                "Q8_0 (id 8) block size 32",
            ],
        ),
        (
            "misaligned offset",
            |b| {
                let at = find(b, "tt.two") + 6 + 4 + 16 + 4;
                put_u64(b, at, 36)
            },
            &[
                "tensor \"tt.two\"",
                "offset 36 is not a multiple of the alignment 32",
            ],
        ),
        (
            "data past the end",
            |b| {
                let at = find(b, "tt.two") + 6 + 4 + 16 + 4;
                put_u64(b, at, 1 << 20)
            },
            &[
                "tensor \"tt.two\"",
                "runs past the end of the file",
                "truncated file?",
            ],
        ),
        (
            "huge offset",
            |b| {
                let at = find(b, "tt.one") + 6 + 4 + 8 + 4;
                put_u64(b, at, u64::MAX - 31)
            },
            &["tensor \"tt.one\"", "runs past the end"],
        ),
        (
            "data truncated",
            |b| b.truncate(b.len() - 40),
            &["tensor \"tt.two\"", "runs past the end"],
        ),
        (
            "bad alignment key",
            |b| {
                // Rename kk.one to an alignment key (same length) holding 7.
                let at = find(b, "kk.one") - 8;
                put_u64(b, at, 17);
                b.splice(at + 8..at + 14, b"general.alignment".iter().copied());
            },
            &["general.alignment is U32(7)", "power of two"],
        ),
    ];
    for (what, patch, want) in cases {
        let mut bytes = base.clone();
        patch(&mut bytes);
        let msg = match parse(bytes) {
            Ok(_) => panic!("{what}: opened"),
            Err(e) => e.to_string(),
        };
        for w in *want {
            assert!(msg.contains(w), "{what}: {msg:?} lacks {w:?}");
        }
    }
}

#[test]
fn every_truncation_fails() {
    let base = base_file();
    // The last tensor is 68 bytes, so the file ends in 28 bytes of padding that may go.
    for len in 0..base.len() - 28 {
        let err = parse(base[..len].to_vec()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{len}: {err}");
    }
    parse(base[..base.len() - 28].to_vec()).unwrap();
}

#[test]
fn nesting_is_bounded() {
    let build = |depth: usize| {
        let mut b = b"GGUF".to_vec();
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(b"deep");
        b.extend_from_slice(&9u32.to_le_bytes());
        for _ in 1..depth {
            b.extend_from_slice(&9u32.to_le_bytes());
            b.extend_from_slice(&1u64.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(42);
        b
    };
    let g = parse(build(8)).unwrap();
    let mut v = g.get("deep").unwrap();
    for _ in 0..8 {
        v = &v.as_array().unwrap()[0];
    }
    assert_eq!(v, &Value::U8(42));
    let err = parse(build(9)).unwrap_err().to_string();
    assert!(
        err.contains("\"deep\"") && err.contains("nested deeper than 8"),
        "{err}"
    );
    // Deep enough to overflow the stack if nothing bounded the recursion.
    assert!(parse(build(100_000)).is_err());
}

#[test]
fn hostile_lengths_allocate_nothing_big() {
    let base = base_file();
    let patches: [fn(&mut Vec<u8>); 5] = [
        |b| put_u64(b, 8, 1 << 31),
        |b| put_u64(b, 16, 1 << 31),
        |b| {
            let at = find(b, "hello") - 8;
            put_u64(b, at, 1 << 33)
        },
        |b| {
            let at = find(b, "kk.arr") + 14;
            put_u64(b, at, 1 << 31)
        },
        |b| {
            let at = find(b, "kk.arr") + 14;
            put_u64(b, at, u64::MAX)
        },
    ];
    for patch in patches {
        let mut bytes = base.clone();
        patch(&mut bytes);
        PEAK.store(0, Ordering::Relaxed);
        assert!(parse(bytes).is_err());
        // Other tests run in parallel, but none allocates anywhere near this much at once.
        assert!(PEAK.load(Ordering::Relaxed) < 64 << 20);
    }
}

#[test]
fn unknown_type_ids_open_and_keep_their_bytes() {
    let mut b = base_file();
    // tt.one becomes type 1000 (never defined); tt.two becomes Q4_0_4_4 (removed, no size).
    let at = find(&b, "tt.one") + 6 + 4 + 8;
    put_u32(&mut b, at, 1000);
    let at = find(&b, "tt.two") + 6 + 4 + 16;
    put_u32(&mut b, at, 31);
    let len = b.len();
    let g = parse(b).unwrap();
    let one = g.tensor("tt.one").unwrap();
    assert_eq!((one.dtype, one.type_name()), (None, "unknown"));
    assert_eq!(one.type_label(), "unknown type (id 1000)");
    assert_eq!(one.data.len(), 32, "up to the next tensor");
    let two = g.tensor("tt.two").unwrap();
    assert_eq!(two.type_label(), "Q4_0_4_4 (id 31)");
    assert_eq!(two.data.len(), 96, "up to the end of the file");
    assert!(len > 96);
}

// ---------------------------------------------------------------------------------------------
// Split models.

fn copy_split(dir: &Path, parts: &[&str]) {
    for p in parts {
        std::fs::copy(fixtures().join(p), dir.join(p)).unwrap();
    }
}

#[test]
fn split_errors_name_the_part() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let msg = |p: PathBuf| GgufFile::open(p).unwrap_err().to_string();

    copy_split(d, &["split-00001-of-00002.gguf"]);
    let err = msg(d.join("split-00001-of-00002.gguf"));
    assert!(
        err.contains("part 2 of this 2-part split model is missing")
            && err.contains("split-00002-of-00002.gguf"),
        "{err}"
    );

    std::fs::copy(
        fixtures().join("split-00001-of-00002.gguf"),
        d.join("model.gguf"),
    )
    .unwrap();
    assert!(msg(d.join("model.gguf")).contains("does not end in -NNNNN-of-NNNNN.gguf"));

    // Part 1 where part 2 should be: its split.no says 0.
    std::fs::copy(
        fixtures().join("split-00001-of-00002.gguf"),
        d.join("split-00002-of-00002.gguf"),
    )
    .unwrap();
    let err = msg(d.join("split-00001-of-00002.gguf"));
    assert!(
        err.contains("split-00002-of-00002.gguf") && err.contains("expected split.no = 1"),
        "{err}"
    );

    // A part that is not a GGUF file.
    std::fs::write(d.join("split-00002-of-00002.gguf"), b"nope").unwrap();
    let err = msg(d.join("split-00001-of-00002.gguf"));
    assert!(
        err.contains("split-00002-of-00002.gguf") && err.contains("magic is \"nope\""),
        "{err}"
    );

    // Tensor count that disagrees with the parts.
    copy_split(d, &["split-00002-of-00002.gguf"]);
    let mut first = std::fs::read(d.join("split-00001-of-00002.gguf")).unwrap();
    let at = find(&first, "split.tensors.count") + 19 + 4;
    put_u32(&mut first, at, 5);
    std::fs::write(d.join("split-00001-of-00002.gguf"), &first).unwrap();
    assert!(
        msg(d.join("split-00002-of-00002.gguf"))
            .contains("split.tensors.count = 5 but the 2 parts hold 3 tensors")
    );

    // The same tensor in two parts.
    let mut second = std::fs::read(fixtures().join("split-00002-of-00002.gguf")).unwrap();
    let at = find(&second, "blk.2.weight");
    second[at + 4] = b'0';
    std::fs::write(d.join("split-00002-of-00002.gguf"), &second).unwrap();
    copy_split(d, &["split-00001-of-00002.gguf"]);
    let err = msg(d.join("split-00001-of-00002.gguf"));
    assert!(
        err.contains("duplicate tensor name \"blk.0.weight\" (also in")
            && err.contains("split-00001-of-00002.gguf"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Fuzz: mutated fixtures must return Ok or Err, never panic.

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    const INTERESTING: [u64; 9] = [0, 1, 31, 32, 255, 1 << 31, 1 << 32, 1 << 63, u64::MAX];
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len());
        match rng.below(7) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = rng.next() as u8,
            2 => b.insert(at, rng.next() as u8),
            3 if !b.is_empty() => {
                let n = rng.below(16).min(b.len() - at);
                b.drain(at..at + n);
            }
            4 => b.truncate(at),
            5 if at + 8 <= b.len() => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
            _ if at + 4 <= b.len() => {
                let v = rng.below(64) as u32;
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
}

#[test]
fn fuzzed_fixtures_never_panic() {
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    seeds.push(base_file());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    for i in 0..20_000 {
        let mut bytes = seeds[i % seeds.len()].clone();
        mutate(&mut rng, &mut bytes);
        match parse(bytes) {
            Ok(g) => {
                ok += 1;
                // Everything the file hands out must be usable.
                let sum: usize = g
                    .tensors
                    .iter()
                    .map(|t| t.data.as_bytes().len() + t.numel() % 7)
                    .sum();
                std::hint::black_box(sum);
                for (k, _) in &g.metadata {
                    let _ = (g.get_u64(k), g.get_str(k), g.get_f32(k), g.get_array(k));
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.to_string().starts_with("mem.gguf: "), "{e}");
            }
        }
    }
    assert!(
        ok > 100 && err > 1000,
        "ok {ok}, err {err}: the mutations should hit both"
    );
}

#[test]
fn open_empty_or_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.gguf");
    std::fs::write(&p, b"").unwrap();
    let err = GgufFile::open(&p).unwrap_err().to_string();
    assert!(
        err.contains("empty.gguf") && err.contains("truncated"),
        "{err}"
    );
    let err = GgufFile::open(dir.path().join("nope.gguf"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.gguf"), "{err}");
}

#[test]
fn fuzzed_split_parts_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["split-00001-of-00002.gguf", "split-00002-of-00002.gguf"];
    let seeds: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(fixtures().join(n)).unwrap())
        .collect();
    let mut rng = Rng(7);
    for i in 0..500 {
        for (n, seed) in names.iter().zip(&seeds) {
            let mut bytes = seed.clone();
            if rng.below(2) == 0 {
                mutate(&mut rng, &mut bytes);
            }
            std::fs::write(dir.path().join(n), bytes).unwrap();
        }
        if let Ok(g) = GgufFile::open(dir.path().join(names[i % 2])) {
            let total: usize = g.tensors.iter().map(|t| t.data.len()).sum();
            std::hint::black_box(total);
        }
    }
}
