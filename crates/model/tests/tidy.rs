//! Tidy: tensor names are spelled in `crates/model/src/names.rs` only, GGUF metadata keys in
//! `crates/formats/src/gguf/keys.rs` only.
//!
//! Every tensor-name literal of the names table (the ones ending in `.weight` or `.bias`, and
//! GGUF's bare `ssm_a`), and every key of the keys table (whole keys, and the dotted suffixes of
//! architecture-scoped keys — the undotted ones such as `block_count` are also Hugging Face
//! config field names), is looked for, as a whole name, in the string literals of every other
//! source file of the workspace (`crates/*/src`; tests and fixtures may spell names, since they
//! check the tables from outside). Comments do not count.

use std::path::{Path, PathBuf};

/// The string literals of a Rust source file, comments skipped.
fn string_literals(src: &str) -> Vec<String> {
    lex(src).1
}

/// `src` with comments removed and string literals emptied: the code a tidy check may search
/// for a token.
fn code_only(src: &str) -> String {
    lex(src).0
}

/// A small lexer: line and nested block comments, char literals, escapes, raw strings. Returns
/// the code (comments dropped, each string literal as `""`) and the string literals.
fn lex(src: &str) -> (String, Vec<String>) {
    let b = src.as_bytes();
    let mut code = String::new();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 1;
                i += 2;
                while i < b.len() && depth > 0 {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 1;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) =>
            {
                let mut hashes = 0;
                let mut j = i + 1;
                while b.get(j) == Some(&b'#') {
                    hashes += 1;
                    j += 1;
                }
                if b.get(j) != Some(&b'"') {
                    code.push('r');
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"')
                    .chain(std::iter::repeat_n(b'#', hashes))
                    .collect();
                let start = j + 1;
                let end = src[start..]
                    .find(std::str::from_utf8(&close).unwrap())
                    .map_or(b.len(), |e| start + e);
                out.push(src[start..end].to_string());
                code.push_str("\"\"");
                i = end + close.len();
            }
            b'\'' => {
                // A char literal ('"', '\'', 'x') or a lifetime ('a): skip just the literal.
                if b.get(i + 1) == Some(&b'\\') {
                    let end = src[i + 2..].find('\'').map_or(b.len(), |e| i + 2 + e);
                    i = end + 1;
                } else if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else {
                    i += 1;
                }
            }
            b'"' => {
                let mut s = String::new();
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    s.push(b[i] as char);
                    i += 1;
                }
                out.push(s);
                code.push_str("\"\"");
                i += 1;
            }
            c => {
                code.push(c as char);
                i += 1;
            }
        }
    }
    (code, out)
}

/// Whether `hay` holds `name` as a whole name (not inside a longer identifier).
fn holds(hay: &str, name: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    hay.match_indices(name).any(|(at, _)| {
        let before = at.checked_sub(1).map(|p| hay.as_bytes()[p]);
        let after = hay.as_bytes().get(at + name.len()).copied();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The literals of `table` that `keep` selects, spelled in no other source file.
fn spelled_only_in(table: &str, keep: fn(&str) -> bool, at_least: usize) {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let table = crates.join(table);
    let names: Vec<String> = string_literals(&std::fs::read_to_string(&table).unwrap())
        .into_iter()
        .filter(|s| !s.contains('{') && keep(s))
        .collect();
    assert!(
        names.len() >= at_least,
        "{} lost its literals ({} found): is the lexer still right?",
        table.display(),
        names.len()
    );
    let mut files = Vec::new();
    for krate in std::fs::read_dir(&crates).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    let mut found = Vec::new();
    for file in files
        .iter()
        .filter(|f| f.canonicalize().ok() != table.canonicalize().ok())
    {
        for lit in string_literals(&std::fs::read_to_string(file).unwrap()) {
            if let Some(name) = names.iter().find(|n| holds(&lit, n)) {
                found.push(format!("{}: {lit:?} spells {name:?}", file.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "spelled outside {}:\n{}",
        table.display(),
        found.join("\n")
    );
}

#[test]
fn tensor_names_are_spelled_in_names_rs_only() {
    spelled_only_in(
        "model/src/names.rs",
        |s| s.ends_with(".weight") || s.ends_with(".bias") || s == "ssm_a",
        40,
    );
}

#[test]
fn gguf_keys_are_spelled_in_keys_rs_only() {
    spelled_only_in("formats/src/gguf/keys.rs", |s| s.contains('.'), 30);
}

/// The lexer finds what a tidy check needs and nothing in comments.
#[test]
fn the_lexer_skips_comments_and_char_literals() {
    let src = r##"
        // "in.a.comment.weight"
        /* "block" /* nested "x" */ */
        let c = '"'; let d = '\''; fn f<'a>() {}
        let s = "ffn_up.weight"; let r = r#"raw "quoted""#;
        let e = "esc\"aped";
    "##;
    assert_eq!(
        string_literals(src),
        ["ffn_up.weight", "raw \"quoted\"", "esc\"aped"]
    );
    assert!(holds("blk.0.ffn_up.weight", "ffn_up.weight"));
    assert!(!holds("ssm_alpha.weight", "ssm_a"));
    assert!(holds("ssm_a", "ssm_a"));
}

/// Whether `code` reads a field or calls a method `.name` (`.name` not followed by more of
/// an identifier).
fn touches(code: &str, name: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    code.match_indices(name).any(|(at, _)| {
        !code
            .as_bytes()
            .get(at + name.len())
            .copied()
            .is_some_and(word)
    })
}

/// The device seam holds: model code speaks only to its `Backend`. It never reads or writes
/// an activation's numbers (no `.data`, no host or device view of an `Act`) — the file
/// tensor views of `loader.rs` and `gguf.rs` aside — never calls a kernel, and names
/// `qinfer_cpu` only to load onto the CPU backend by default (`qwen35.rs`) and to quantize
/// when writing GGUF files (`export.rs`). The engine names no backend at all.
#[test]
fn model_and_engine_code_speak_only_to_the_backend() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut files = Vec::new();
    rust_files(&crates.join("model/src"), &mut files);
    assert!(files.len() >= 10, "model sources found: {}", files.len());
    for file in &files {
        let name = file.file_name().unwrap().to_str().unwrap();
        let mut code = code_only(&std::fs::read_to_string(file).unwrap());
        if name == "export.rs" {
            // The GGUF writer's row quantizer (load-time work, not the forward pass).
            code = code.replace("qinfer_cpu::ops::quantize_rows", "");
        }
        let mut bad: Vec<&str> = [
            ".host(",
            ".host_mut(",
            ".into_host(",
            "Act::from_host",
            "Act::from_device",
            ".device::<",
            "qinfer_cpu::ops",
            "qinfer_cpu::kernels",
        ]
        .into_iter()
        .filter(|t| code.contains(t))
        .collect();
        if touches(&code, ".data") && !["loader.rs", "gguf.rs"].contains(&name) {
            bad.push(".data");
        }
        let cpu_uses = code.matches("qinfer_cpu").count();
        let cpu_allowed = usize::from(name == "qwen35.rs");
        if cpu_uses > cpu_allowed {
            bad.push("qinfer_cpu");
        }
        if !bad.is_empty() {
            found.push(format!("{}: {bad:?}", file.display()));
        }
    }
    let mut engine = Vec::new();
    rust_files(&crates.join("engine/src"), &mut engine);
    for file in &engine {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        if code.contains("qinfer_cpu") || code.contains("qinfer_backend::reference") {
            found.push(format!("{}: names a backend", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "past the device seam:\n{}",
        found.join("\n")
    );
}

#[test]
fn code_only_drops_comments_and_literals() {
    let src = "let a = x.data; // y.data\n/* z.data */ let s = \"w.data\";";
    let code = code_only(src);
    assert!(touches(&code, ".data"));
    assert_eq!(code.matches(".data").count(), 1);
    assert!(!touches("x.data_len()", ".data"));
}
