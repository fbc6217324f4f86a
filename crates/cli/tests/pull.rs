//! `qinfer pull` against a local stand-in for the Hugging Face Hub (loopback only): listing,
//! LFS redirects, resuming an interrupted download with `Range`, checksum verification, the
//! cache layout, and the message when the hub cannot be reached.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use common::hub::{self, HubFile};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `Org/Tiny`: a small `config.json`, a "large" LFS file advertised with
/// `advertised_sha`, and a `pytorch_model.bin` qinfer does not need.
fn start_hub(big: Vec<u8>, advertised_sha: String, cut_first: usize) -> hub::Hub {
    let mut model = HubFile::lfs("model.safetensors", big);
    model.advertised_sha = Some(advertised_sha);
    let files = vec![
        HubFile::small("config.json", br#"{"model_type":"qwen3_5_text"}"#),
        model,
        HubFile::lfs("pytorch_model.bin", vec![0; 10]),
    ];
    hub::start("Org/Tiny", SHA, files, "model.safetensors", cut_first)
}

fn sha256_hex(b: &[u8]) -> String {
    hub::sha256_hex(b)
}

fn pull(hub_port: u16, cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args(["pull", "Org/Tiny"])
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{hub_port}"))
        .env("HF_HUB_CACHE", cache)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap()
}

fn big_file() -> Vec<u8> {
    (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
fn interrupted_download_resumes_and_lands_in_the_cache_layout() {
    let big = big_file();
    let hub = start_hub(big.clone(), sha256_hex(&big), 1);
    let cache = tempfile::tempdir().unwrap();
    let first = pull(hub.port, cache.path());
    assert!(!first.status.success(), "the cut-off download should fail");
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("run the same command again to resume")
    );
    let second = pull(hub.port, cache.path());
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(hub.cut.load(Ordering::SeqCst), 0);
    let log = hub.log.lock().unwrap().join("\n");
    assert!(
        log.contains("GET /lfs/1 Some("),
        "the second pull should resume with a Range:\n{log}"
    );
    assert!(
        !log.contains("pytorch_model.bin") && !hub.fetched().contains(&"pytorch_model.bin".into()),
        "non-model files are skipped:\n{log}"
    );

    let folder = cache.path().join("models--Org--Tiny");
    let snap = folder.join("snapshots").join(SHA);
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        snap.display().to_string()
    );
    assert_eq!(std::fs::read(snap.join("model.safetensors")).unwrap(), big);
    assert!(
        snap.join("config.json")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_to_string(folder.join("refs/main")).unwrap(),
        SHA
    );
    // A repo id now resolves to the snapshot.
    let resolved = qinfer_formats::hf_cache::resolve("Org/Tiny", cache.path()).unwrap();
    assert_eq!(resolved, snap);
}

#[test]
fn checksum_mismatch_is_an_error_and_discards_the_file() {
    let big = big_file();
    let hub = start_hub(big, sha256_hex(b"something else"), 0);
    let cache = tempfile::tempdir().unwrap();
    let o = pull(hub.port, cache.path());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("SHA-256 mismatch"), "{err}");
    let blobs: Vec<_> = std::fs::read_dir(cache.path().join("models--Org--Tiny/blobs"))
        .unwrap()
        .flatten()
        .collect();
    assert!(
        blobs
            .iter()
            .all(|b| !b.file_name().to_string_lossy().ends_with(".incomplete"))
    );
}

#[test]
fn unreachable_hub_says_what_to_do() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let o = pull(port, cache.path());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot reach") && err.contains("hf download Org/Tiny"),
        "{err}"
    );
}
