//! `qinfer pull` against a local stand-in for the Hugging Face Hub (loopback only): listing,
//! LFS redirects, resuming an interrupted download with `Range`, checksum verification, the
//! cache layout, and the message when the hub cannot be reached.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

struct Hub {
    port: u16,
    /// Full-body GETs of the large file that get cut off halfway before one succeeds.
    cut_first: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Serves one repo `Org/Tiny` with a small `config.json` and a "large" LFS file.
fn start_hub(big: Vec<u8>, advertised_sha: String, cut_first: usize) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicUsize::new(cut_first));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (cut2, req2) = (cut.clone(), requests.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            serve(stream, &big, &advertised_sha, &cut2, &req2);
        }
    });
    Hub {
        port,
        cut_first: cut,
        requests,
    }
}

fn serve(mut s: TcpStream, big: &[u8], big_sha: &str, cut: &AtomicUsize, log: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).is_err() {
        return;
    }
    let mut range: Option<usize> = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range = v.trim().trim_end_matches('-').parse().ok();
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or(path);
    log.lock()
        .unwrap()
        .push(format!("{method} {path} {range:?}"));
    let config = br#"{"model_type":"qwen3_5_text"}"#;
    let listing = format!(
        r#"{{"sha":"{SHA}","siblings":[{{"rfilename":"config.json"}},{{"rfilename":"model.safetensors"}},{{"rfilename":"pytorch_model.bin"}}]}}"#
    );
    let send = |s: &mut TcpStream, status: &str, headers: &str, body: &[u8], body_len: usize| {
        let head = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {body_len}\r\nConnection: close\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes());
        if method != "HEAD" {
            let _ = s.write_all(body);
        }
    };
    match path {
        "/api/models/Org/Tiny/revision/main" => {
            send(&mut s, "200 OK", "", listing.as_bytes(), listing.len())
        }
        p if p == format!("/Org/Tiny/resolve/{SHA}/config.json") => send(
            &mut s,
            "200 OK",
            "ETag: \"cfgetag1\"\r\n",
            config,
            config.len(),
        ),
        p if p == format!("/Org/Tiny/resolve/{SHA}/model.safetensors") => {
            let h = format!(
                "Location: /lfs/big\r\nX-Linked-Etag: \"{big_sha}\"\r\nX-Linked-Size: {}\r\n",
                big.len()
            );
            send(&mut s, "302 Found", &h, b"", 0)
        }
        "/lfs/big" => match range {
            Some(from) => {
                let h = format!(
                    "Content-Range: bytes {from}-{}/{}\r\n",
                    big.len() - 1,
                    big.len()
                );
                send(
                    &mut s,
                    "206 Partial Content",
                    &h,
                    &big[from..],
                    big.len() - from,
                )
            }
            None if cut.load(Ordering::SeqCst) > 0 => {
                cut.fetch_sub(1, Ordering::SeqCst);
                // Promise the whole file, deliver half, hang up.
                send(&mut s, "200 OK", "", &big[..big.len() / 2], big.len())
            }
            None => send(&mut s, "200 OK", "", big, big.len()),
        },
        _ => send(&mut s, "404 Not Found", "", b"", 0),
    }
    let _ = s.flush();
    // Dropping both handles closes the connection (a cut-off body ends here).
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
    assert_eq!(hub.cut_first.load(Ordering::SeqCst), 0);
    let log = hub.requests.lock().unwrap().join("\n");
    assert!(
        log.contains("GET /lfs/big Some("),
        "the second pull should resume with a Range:\n{log}"
    );
    assert!(
        !log.contains("pytorch_model.bin"),
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
