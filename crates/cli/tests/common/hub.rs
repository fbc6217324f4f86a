//! A local stand-in for the Hugging Face Hub (loopback only), for the `pull` tests: one repo
//! at one commit; the file listing (`/api/models/REPO/revision/main`, sizes and LFS info
//! included); small files answered directly with an `ETag`, LFS files redirected to a blob
//! URL with `X-Linked-Etag` (their SHA-256, or a wrong one to test verification) and
//! `X-Linked-Size`; `Range` requests; and the first full GETs of one file cut off halfway.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// One file of the repo.
pub struct HubFile {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Served through an LFS redirect (its SHA-256 as the ETag).
    pub lfs: bool,
    /// The SHA-256 to advertise instead of the real one.
    pub advertised_sha: Option<String>,
}

impl HubFile {
    pub fn lfs(name: &str, bytes: Vec<u8>) -> Self {
        HubFile {
            name: name.into(),
            bytes,
            lfs: true,
            advertised_sha: None,
        }
    }

    pub fn small(name: &str, bytes: &[u8]) -> Self {
        HubFile {
            name: name.into(),
            bytes: bytes.to_vec(),
            lfs: false,
            advertised_sha: None,
        }
    }
}

pub struct Hub {
    pub port: u16,
    /// Full-body GETs of the cut file still to be cut off.
    pub cut: Arc<AtomicUsize>,
    /// `METHOD PATH RANGE` per request.
    pub log: Arc<Mutex<Vec<String>>>,
    /// File names by index (blob URLs are `/lfs/{index}`).
    pub names: Vec<String>,
}

impl Hub {
    /// The names of the files whose bodies were requested, sorted, each once.
    pub fn fetched(&self) -> Vec<String> {
        let mut got: Vec<String> = self
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| l.strip_prefix("GET /lfs/"))
            .filter_map(|l| l.split_whitespace().next()?.parse::<usize>().ok())
            .map(|i| self.names[i].clone())
            .collect();
        got.sort();
        got.dedup();
        got
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Serves `repo` at commit `sha` with `files`; the first `cut_first` full GETs of the file
/// named `cut_file` deliver half of it and hang up.
pub fn start(
    repo: &'static str,
    sha: &'static str,
    files: Vec<HubFile>,
    cut_file: &str,
    cut_first: usize,
) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicUsize::new(cut_first));
    let log = Arc::new(Mutex::new(Vec::new()));
    let names = files.iter().map(|f| f.name.clone()).collect();
    let (c, l, cut_file) = (cut.clone(), log.clone(), cut_file.to_string());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            serve(stream, repo, sha, &files, &cut_file, &c, &l);
        }
    });
    Hub {
        port,
        cut,
        log,
        names,
    }
}

fn serve(
    mut s: TcpStream,
    repo: &str,
    sha: &str,
    files: &[HubFile],
    cut_file: &str,
    cut: &AtomicUsize,
    log: &Mutex<Vec<String>>,
) {
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
    let path = path.split('?').next().unwrap_or(path).to_string();
    log.lock()
        .unwrap()
        .push(format!("{method} {path} {range:?}"));
    let send = |s: &mut TcpStream, status: &str, headers: &str, body: &[u8], len: usize| {
        let head = format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes());
        if method != "HEAD" {
            let _ = s.write_all(body);
        }
    };
    let resolve = format!("/{repo}/resolve/{sha}/");
    if path == format!("/api/models/{repo}/revision/main") {
        let siblings: Vec<serde_json::Value> = files
            .iter()
            .map(|f| {
                let mut v = serde_json::json!({"rfilename": f.name, "size": f.bytes.len()});
                if f.lfs {
                    v["lfs"] =
                        serde_json::json!({"sha256": sha256_hex(&f.bytes), "size": f.bytes.len()});
                }
                v
            })
            .collect();
        let l = serde_json::json!({"sha": sha, "siblings": siblings}).to_string();
        send(&mut s, "200 OK", "", l.as_bytes(), l.len());
    } else if let Some(name) = path.strip_prefix(&resolve) {
        match files.iter().position(|f| f.name == name) {
            Some(i) if files[i].lfs => {
                let f = &files[i];
                let etag = f
                    .advertised_sha
                    .clone()
                    .unwrap_or_else(|| sha256_hex(&f.bytes));
                let h = format!(
                    "Location: /lfs/{i}\r\nX-Linked-Etag: \"{etag}\"\r\nX-Linked-Size: {}\r\n",
                    f.bytes.len()
                );
                send(&mut s, "302 Found", &h, b"", 0);
            }
            Some(i) => {
                let b = &files[i].bytes;
                send(
                    &mut s,
                    "200 OK",
                    &format!("ETag: \"etag{i}\"\r\n"),
                    b,
                    b.len(),
                );
            }
            None => send(&mut s, "404 Not Found", "", b"", 0),
        }
    } else if let Some(i) = path
        .strip_prefix("/lfs/")
        .and_then(|i| i.parse::<usize>().ok())
        .filter(|&i| i < files.len())
    {
        let f = &files[i];
        let b = &f.bytes;
        match range {
            Some(from) => {
                let h = format!(
                    "Content-Range: bytes {from}-{}/{}\r\n",
                    b.len() - 1,
                    b.len()
                );
                send(
                    &mut s,
                    "206 Partial Content",
                    &h,
                    &b[from..],
                    b.len() - from,
                );
            }
            None if f.name == cut_file && cut.load(Ordering::SeqCst) > 0 => {
                cut.fetch_sub(1, Ordering::SeqCst);
                // Promise the whole file, deliver half, hang up.
                send(&mut s, "200 OK", "", &b[..b.len() / 2], b.len());
            }
            None => send(&mut s, "200 OK", "", b, b.len()),
        }
    } else {
        send(&mut s, "404 Not Found", "", b"", 0);
    }
    let _ = s.flush();
}
