//! `qinfer pull REPO`: download a model from the Hugging Face Hub into the standard cache
//! layout (the same place `hf download` puts it, so both tools share files).
//!
//! * Files are listed with `GET {endpoint}/api/models/{repo}/revision/{rev}`.
//! * Each file's identity comes from a `HEAD` of `{endpoint}/{repo}/resolve/{sha}/{path}`
//!   without following redirects: `X-Linked-Etag` (the SHA-256 of a large LFS file) or `ETag`.
//! * Bytes go to `blobs/{etag}.incomplete`, resumed with an HTTP `Range` if present, then are
//!   checked (size always; SHA-256 for LFS files) and renamed to `blobs/{etag}`.
//! * `snapshots/{sha}/{path}` links to the blob; `refs/{rev}` records the commit.
//!
//! `HF_ENDPOINT` overrides the hub address (mirrors, and the tests' local server); `HF_TOKEN`
//! is sent to it for gated models.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use qinfer_formats::hf_cache;
use qinfer_formats::safetensors::{self, Checkpoint};
use qinfer_model::export::{FileType, GgufExport};
use qinfer_model::loader::Loader;
use qinfer_model::names::Naming;
use sha2::{Digest, Sha256};

/// Files a model needs; others (PyTorch `.bin`, GGUF copies, ONNX…) are skipped unless
/// `--all` is given.
fn wanted(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    [
        ".json",
        ".jinja",
        ".safetensors",
        ".txt",
        ".model",
        ".tiktoken",
    ]
    .iter()
    .any(|ext| name.ends_with(ext))
        && !path.starts_with('.')
}

/// Options of one pull.
#[derive(Debug)]
pub struct PullOptions<'a> {
    pub repo: &'a str,
    /// A GGUF quant tag (`REPO:TAG`): that file (all parts of a split one) and the repo's
    /// vision projector, nothing else.
    pub tag: Option<&'a str>,
    pub revision: &'a str,
    pub cache: PathBuf,
    pub endpoint: String,
    pub token: Option<String>,
    pub all_files: bool,
    pub show_progress: bool,
}

impl<'a> PullOptions<'a> {
    /// Options from the environment (`HF_ENDPOINT`, `HF_TOKEN`, the HF cache variables) for
    /// `REPO` or `REPO:TAG`.
    pub fn from_env(model: &'a str, revision: &'a str, all_files: bool) -> Self {
        let (repo, tag) = hf_cache::split_tag(model);
        PullOptions {
            repo,
            tag,
            revision,
            cache: hf_cache::hub_cache_dir(),
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            token: std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty()),
            all_files,
            show_progress: true,
        }
    }

    /// A progress bar of `len` bytes (hidden unless progress is shown).
    fn bar(&self, len: u64) -> ProgressBar {
        if !self.show_progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:40!} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12} {eta:>4}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    }
}

/// One repo at one commit on the hub: its file list, and each file fetched into the cache.
struct Remote<'o> {
    o: &'o PullOptions<'o>,
    agent: ureq::Agent,
    sha: String,
    /// The repo's files, with their sizes where the hub gives them.
    listed: Vec<(String, Option<u64>)>,
    /// `models--ORG--NAME`.
    folder: PathBuf,
    /// `snapshots/{sha}`.
    snapshot: PathBuf,
}

impl<'o> Remote<'o> {
    /// Lists the repo (`GET {endpoint}/api/models/{repo}/revision/{rev}`).
    fn open(o: &'o PullOptions<'o>) -> Result<Self> {
        if !hf_cache::is_repo_id(o.repo) {
            bail!(
                "{:?} is not a Hugging Face repo id (expected ORG/NAME, e.g. Qwen/Qwen3.6-27B)",
                o.repo
            );
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut r = Remote {
            o,
            agent,
            sha: String::new(),
            listed: Vec::new(),
            folder: hf_cache::repo_folder(&o.cache, o.repo),
            snapshot: PathBuf::new(),
        };
        let api = format!(
            "{}/api/models/{}/revision/{}?blobs=true",
            o.endpoint, o.repo, o.revision
        );
        let mut resp = r.auth(r.agent.get(&api)).call().map_err(|e| r.offline(e))?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => bail!(
                "{} is gated or private: accept its licence on the Hub and set HF_TOKEN",
                o.repo
            ),
            404 => bail!(
                "{} (revision {}) does not exist on {}",
                o.repo,
                o.revision,
                o.endpoint
            ),
            s => bail!("{api}: HTTP {s}"),
        }
        let info: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)
            .with_context(|| format!("{api}: invalid JSON"))?;
        let sha = info["sha"]
            .as_str()
            .context("hub answer has no commit sha")?
            .to_string();
        if sha.is_empty() || !sha.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("hub answer has an invalid commit sha {sha:?}");
        }
        r.listed = info["siblings"]
            .as_array()
            .context("hub answer has no file list")?
            .iter()
            .filter_map(|s| {
                let name = s["rfilename"].as_str()?.to_string();
                Some((
                    name,
                    s["lfs"]["size"].as_u64().or_else(|| s["size"].as_u64()),
                ))
            })
            .collect();
        r.snapshot = r.folder.join("snapshots").join(&sha);
        r.sha = sha;
        std::fs::create_dir_all(r.folder.join("blobs"))?;
        Ok(r)
    }

    fn names(&self) -> Vec<String> {
        self.listed.iter().map(|(n, _)| n.clone()).collect()
    }

    fn size_of(&self, name: &str) -> Option<u64> {
        self.listed
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| *s)
    }

    fn offline(&self, e: ureq::Error) -> anyhow::Error {
        let o = self.o;
        anyhow::anyhow!(
            "cannot reach {} ({e}).\nqinfer pull needs network access to the Hugging Face Hub. On an offline \
             machine, download {} elsewhere (`hf download {}`) and copy its cache folder {} into {}, or put \
             the model files in a directory and pass that directory as MODEL.",
            o.endpoint,
            o.repo,
            o.repo,
            hf_cache::repo_folder(Path::new(""), o.repo).display(),
            o.cache.display()
        )
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.o.token {
            Some(t) => req.header("Authorization", format!("Bearer {t}")),
            None => req,
        }
    }

    /// Fetches `path` into the cache (unless its blob is there): its identity from a `HEAD`
    /// of `resolve/{sha}/{path}`, bytes appended to `blobs/{etag}.incomplete` (resumed),
    /// checked, renamed, linked from the snapshot. Progress goes to `bar` (bytes).
    fn fetch(&self, path: &str, bar: &ProgressBar) -> Result<()> {
        if path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            bail!("hub listed an unsafe file path {path:?}");
        }
        let o = self.o;
        let url = format!("{}/{}/resolve/{}/{}", o.endpoint, o.repo, self.sha, path);
        let head = self
            .auth(self.agent.head(&url))
            .call()
            .map_err(|e| self.offline(e))?;
        let header = |k: &str| {
            head.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = head.status().as_u16();
        if !(200..400).contains(&status) {
            bail!("{url}: HTTP {status}");
        }
        let etag = header("x-linked-etag")
            .or_else(|| header("etag"))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()))
            .with_context(|| format!("{url}: no usable ETag"))?;
        let size: Option<u64> = header("x-linked-size")
            .or_else(|| header("content-length"))
            .and_then(|s| s.parse().ok());
        let location = match (status, header("location")) {
            (300..=399, Some(loc)) if loc.starts_with('/') => format!("{}{loc}", o.endpoint),
            (300..=399, Some(loc)) => loc,
            _ => url.clone(),
        };
        let blob = self.folder.join("blobs").join(&etag);
        if blob.is_file() {
            bar.inc(size.unwrap_or(0));
        } else {
            download(&self.agent, &location, &blob, size, path, o, bar)?;
            verify(&blob.with_extension("incomplete"), &etag, size, path)?;
            std::fs::rename(blob.with_extension("incomplete"), &blob)?;
        }
        link(&self.snapshot.join(path), &blob)
    }

    /// `refs/{rev}` → the commit, for a revision named by branch or tag.
    fn record_ref(&self) -> Result<()> {
        let rev = self.o.revision;
        if !rev.chars().all(|c| c.is_ascii_hexdigit()) || rev.len() != self.sha.len() {
            let refs = self.folder.join("refs");
            std::fs::create_dir_all(&refs)?;
            std::fs::write(refs.join(rev.replace('/', "--")), &self.sha)?;
        }
        Ok(())
    }
}

/// Downloads (or completes) a repo snapshot; returns its directory, or with a tag the model
/// GGUF file (its first part).
pub fn pull(o: &PullOptions<'_>) -> Result<PathBuf> {
    let r = Remote::open(o)?;
    let listed = r.names();
    let size_of = |name: &str| r.size_of(name);
    let gguf_only = listed.iter().any(|f| hf_cache::is_model_gguf(f))
        && !listed.iter().any(|f| f.ends_with(".safetensors"));
    let tag = match o.tag {
        Some(t) => Some(t.to_string()),
        None if gguf_only && !o.all_files => Some(choose_tag(o.repo, &listed, &size_of)?),
        None => None,
    };
    let files: Vec<String> = match &tag {
        Some(t) => {
            let mut f = hf_cache::select_tag(o.repo, &listed, t)?;
            f.extend(hf_cache::mmproj(&listed));
            f
        }
        None => listed
            .iter()
            .filter(|p| o.all_files || wanted(p))
            .cloned()
            .collect(),
    };
    if files.is_empty() {
        bail!("{} has no model files to download", o.repo);
    }
    if let Some(needed) = files.iter().map(|f| size_of(f)).sum::<Option<u64>>() {
        check_disk(&o.cache, needed)?;
    }
    for path in &files {
        let bar = o.bar(size_of(path).unwrap_or(0));
        bar.set_message(path.clone());
        r.fetch(path, &bar)?;
        bar.finish_and_clear();
    }
    r.record_ref()?;
    Ok(match tag {
        Some(_) => r.snapshot.join(&files[0]),
        None => r.snapshot,
    })
}

/// What an interrupted `pull --quant` had written, beside its `.gguf.partial` file: the
/// commit, the file type and the tensors in the partial file (synced before this was written).
fn journal(sha: &str, ty: FileType, written: Vec<&str>) -> serde_json::Value {
    serde_json::json!({"sha": sha, "file_type": ty.name(), "written": written})
}

/// The tensors a journal records, if it is for this commit and type.
fn journaled(path: &Path, sha: &str, ty: FileType) -> Option<Vec<String>> {
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    if j["sha"] != sha || j["file_type"] != ty.name() {
        return None;
    }
    j["written"]
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(String::from))
        .collect()
}

/// `qinfer pull REPO --quant TYPE [--keep]`: converts a safetensors checkpoint into a GGUF of
/// `ty` in the cache (`NAME-TYPE.gguf` in the snapshot, so `REPO:TYPE` names it) — the same
/// bytes `qinfer quantize` writes from the whole checkpoint — while it downloads: shard by
/// shard, each tensor converted as soon as the shards holding its inputs are there, each shard
/// removed once every tensor it feeds is written (unless `keep`), so the disk holds the GGUF
/// and a shard or two, not the whole checkpoint. The tensors written are journaled after each
/// shard: an interrupted pull resumes without fetching the shards already converted. One
/// progress bar counts every shard's bytes twice: downloaded, then converted. Returns the
/// GGUF's path.
pub fn pull_quantized(o: &PullOptions<'_>, ty: FileType, keep: bool) -> Result<PathBuf> {
    if o.tag.is_some() {
        bail!(
            "--quant converts a safetensors checkpoint; {}:TAG already names a GGUF",
            o.repo
        );
    }
    let r = Remote::open(o)?;
    let name = o.repo.rsplit('/').next().unwrap_or(o.repo);
    let out = r.snapshot.join(format!("{name}-{}.gguf", ty.name()));
    if out.is_file() {
        return Ok(out);
    }
    let mut shards: Vec<String> = r
        .names()
        .into_iter()
        .filter(|f| f.ends_with(".safetensors") && !f.contains('/'))
        .collect();
    shards.sort();
    if shards.is_empty() {
        bail!("{} has no safetensors checkpoint to quantize", o.repo);
    }
    let small: Vec<String> = r
        .names()
        .into_iter()
        .filter(|f| wanted(f) && !f.ends_with(".safetensors"))
        .collect();

    // Disk: the GGUF (estimated from the checkpoint's 16-bit weights) and, at once, the two
    // largest shards — or all of them with --keep.
    let sizes: Option<Vec<u64>> = shards.iter().map(|s| r.size_of(s)).collect();
    let total: u64 = sizes.as_ref().map_or(0, |s| s.iter().sum());
    if let Some(mut sizes) = sizes {
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        let held: u64 = if keep {
            total
        } else {
            sizes.iter().take(2).sum()
        };
        let gguf = (total as f64 * ty.bits_per_weight() / 16.0 * 1.05) as u64;
        let small_bytes: u64 = small.iter().filter_map(|f| r.size_of(f)).sum();
        check_disk(&o.cache, small_bytes + held + gguf)?;
    }
    for f in &small {
        r.fetch(f, &ProgressBar::hidden())?;
    }
    let snapshot = r.snapshot.clone();
    let bar = o.bar(2 * total);

    // Where each tensor lives: the shard index, or the one shard's own header.
    let index = snapshot.join(safetensors::INDEX_FILE);
    // A shard downloaded (and counted on the bar) before the loop below.
    let mut fetched: Option<&str> = None;
    let weight_map: BTreeMap<String, String> = if index.is_file() {
        safetensors::read_index(&index)?
    } else if let [only] = shards.as_slice() {
        bar.set_message(format!("downloading {only}"));
        r.fetch(only, &bar)?;
        fetched = Some(only);
        let mut ck = Checkpoint::default();
        ck.add_file(&snapshot.join(only))?;
        ck.tensors
            .keys()
            .map(|n| (n.clone(), only.clone()))
            .collect()
    } else {
        bail!(
            "{} has {} safetensors files but no {}",
            o.repo,
            shards.len(),
            safetensors::INDEX_FILE
        );
    };
    if let Some(s) = weight_map.values().find(|s| !shards.contains(s)) {
        bail!(
            "{}: names a shard {s} the repo does not have",
            index.display()
        );
    }

    let (config, extra) = crate::quantize::checkpoint_metadata(&snapshot)?;
    let present = |n: &str| weight_map.contains_key(n);
    let naming = Naming::Hf(Loader::detect_hf_prefix(&present)?);
    let partial = out.with_extension("gguf.partial");
    let journal_path = out.with_extension("gguf.partial.json");
    let resume = journaled(&journal_path, &r.sha, ty).filter(|_| partial.is_file());
    let create = |resume: Option<&[String]>| {
        GgufExport::create(
            &partial,
            &present,
            naming,
            &config,
            extra.clone(),
            ty,
            resume,
        )
    };
    let mut export = match resume.as_deref().map(|w| create(Some(w))) {
        Some(Ok(e)) => e,
        // A partial file with another header (written by another qinfer): start over.
        Some(Err(_)) | None => create(None)?,
    };
    let needs: Vec<BTreeSet<&str>> = (0..export.len())
        .map(|i| {
            export
                .inputs(i)
                .iter()
                .filter_map(|n| weight_map.get(n).map(String::as_str))
                .collect()
        })
        .collect();
    let pending = |export: &GgufExport, shard: &str| {
        (0..export.len()).any(|i| !export.is_written(i) && needs[i].contains(shard))
    };
    let mut held: BTreeSet<&str> = BTreeSet::new();
    for shard in &shards {
        let size = r.size_of(shard).unwrap_or(0);
        if !pending(&export, shard) {
            bar.inc(2 * size);
            continue;
        }
        bar.set_message(format!("downloading {shard}"));
        if fetched == Some(shard.as_str()) {
            // Counted when it was downloaded.
        } else if snapshot.join(shard).is_file() {
            bar.inc(size);
        } else {
            r.fetch(shard, &bar)?;
        }
        held.insert(shard);
        let mut ck = Checkpoint::default();
        for h in &held {
            ck.add_file(&snapshot.join(h))?;
        }
        ck.check_index(&index, &weight_map)?;
        for i in 0..export.len() {
            if !export.is_written(i) && needs[i].iter().all(|s| held.contains(s)) {
                bar.set_message(format!("converting {}", export.name(i)));
                export
                    .write(i, &ck)
                    .with_context(|| format!("converting {}", o.repo))?;
            }
        }
        drop(ck);
        export.sync()?;
        let written = (0..export.len())
            .filter(|&i| export.is_written(i))
            .map(|i| export.name(i))
            .collect();
        let tmp = journal_path.with_extension("json.tmp");
        std::fs::write(&tmp, journal(&r.sha, ty, written).to_string())?;
        std::fs::rename(&tmp, &journal_path)?;
        bar.inc(size);
        for h in held.clone() {
            if !pending(&export, h) {
                held.remove(h);
                if !keep {
                    crate::models::remove_files(&r.folder, &snapshot, &[h.to_string()])?;
                }
            }
        }
    }
    bar.finish_and_clear();
    export
        .finish()
        .with_context(|| format!("cannot write {}", out.display()))?;
    std::fs::rename(&partial, &out)?;
    let _ = std::fs::remove_file(&journal_path);
    r.record_ref()?;
    Ok(out)
}

fn gb(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / 1e9)
}

/// A GGUF repo pulled without a tag: the largest quant whose files fit the memory limit
/// (with 10% to spare for the context), said on stderr; an error listing the tags when none
/// fits or sizes are unknown.
fn choose_tag(
    repo: &str,
    files: &[String],
    size_of: &dyn Fn(&str) -> Option<u64>,
) -> Result<String> {
    let mut options: Vec<(String, Option<u64>)> = hf_cache::tags(files)
        .into_iter()
        .map(|t| {
            let size = hf_cache::select_tag(repo, files, &t)
                .ok()
                .and_then(|fs| fs.iter().map(|f| size_of(f)).sum::<Option<u64>>());
            (t, size)
        })
        .collect();
    options.sort_by_key(|(_, s)| std::cmp::Reverse(s.unwrap_or(0)));
    let listing: Vec<String> = options
        .iter()
        .map(|(t, s)| match s {
            Some(s) => format!("{t} ({})", gb(*s)),
            None => t.clone(),
        })
        .collect();
    let limit = qinfer_engine::plan::available_memory();
    if let Some(limit) = limit
        && let Some((tag, Some(size))) = options
            .iter()
            .find(|(_, s)| s.is_some_and(|s| s.saturating_mul(10) / 9 <= limit))
    {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(
            err,
            "{repo} has GGUF quants {}; pulling {tag} ({}), the largest that fits the {} of              memory available (name another with {repo}:TAG)",
            listing.join(", "),
            gb(*size),
            gb(limit)
        );
        return Ok(tag.clone());
    }
    bail!(
        "{repo} is a GGUF repo: name a quant with `qinfer pull {repo}:TAG`; its tags: {}{}",
        listing.join(", "),
        match limit {
            Some(l) => format!(" (none fits the {} of memory available)", gb(l)),
            None => String::new(),
        }
    )
}

/// Fails if the cache's file system has less than `needed` bytes free (the whole download,
/// checked before it starts).
fn check_disk(cache: &Path, needed: u64) -> Result<()> {
    std::fs::create_dir_all(cache)?;
    let free = fs2_free(cache);
    if let Some(free) = free
        && free < needed
    {
        bail!(
            "not enough disk space in {}: the files need {}, {} is free",
            cache.display(),
            gb(needed),
            gb(free)
        );
    }
    Ok(())
}

/// Free bytes on the file system holding `path` for an unprivileged user; `QINFER_DISK_FREE`
/// (bytes) overrides it (tests, or to keep headroom).
fn fs2_free(path: &Path) -> Option<u64> {
    if let Some(v) = std::env::var("QINFER_DISK_FREE")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Some(v);
    }
    free_bytes(path)
}

#[cfg(unix)]
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is writable memory of the type statvfs
    // fills; it is read only when the call reports success.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    // The field types differ between platforms (u32 on some, u64 on others).
    #[allow(clippy::unnecessary_cast)]
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

#[cfg(not(unix))]
fn free_bytes(_: &Path) -> Option<u64> {
    None
}

/// Appends to `blob.incomplete` from where it stopped.
fn download(
    agent: &ureq::Agent,
    url: &str,
    blob: &Path,
    size: Option<u64>,
    name: &str,
    o: &PullOptions<'_>,
    bar: &ProgressBar,
) -> Result<()> {
    let part = blob.with_extension("incomplete");
    let mut have = std::fs::metadata(&part).map_or(0, |m| m.len());
    if size.is_some_and(|s| have > s) {
        have = 0;
    }
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    if let Some(t) = &o.token
        && url.starts_with(&o.endpoint)
    {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    let resp = req.call().with_context(|| format!("downloading {name}"))?;
    let status = resp.status().as_u16();
    let mut file = match status {
        206 => OpenOptions::new().append(true).open(&part)?,
        200 => {
            have = 0;
            File::create(&part)?
        }
        416 if size == Some(have) => {
            bar.inc(have);
            return Ok(());
        }
        s => bail!("downloading {name}: HTTP {s}"),
    };
    bar.inc(have);
    let mut got = have;
    let mut reader = resp.into_body().into_reader();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).with_context(|| {
            format!("downloading {name}: connection lost at {got} bytes; run the same command again to resume")
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
        got += n as u64;
        bar.inc(n as u64);
    }
    file.sync_all()?;
    Ok(())
}

/// Size (when known) and, for LFS files whose ETag is a SHA-256, the checksum.
fn verify(part: &Path, etag: &str, size: Option<u64>, name: &str) -> Result<()> {
    let len = std::fs::metadata(part)?.len();
    if let Some(s) = size
        && s != len
    {
        bail!(
            "downloading {name}: got {len} bytes, expected {s}; run the same command again to resume"
        );
    }
    if etag.len() == 64 && etag.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut hasher = Sha256::new();
        let mut f = File::open(part)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let got: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if got != etag.to_ascii_lowercase() {
            std::fs::remove_file(part)?;
            bail!(
                "{name}: SHA-256 mismatch (got {got}, expected {etag}); the partial file was removed, run again"
            );
        }
    }
    Ok(())
}

/// `snapshots/{sha}/{path}` → `blobs/{etag}` (a relative symlink, as the Hugging Face tools
/// make; a copy where symlinks are unavailable).
fn link(dst: &Path, blob: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if dst.exists() || dst.symlink_metadata().is_ok() {
        std::fs::remove_file(dst)?;
    }
    #[cfg(unix)]
    {
        let depth = dst.parent().map_or(0, |p| {
            p.strip_prefix(
                blob.parent()
                    .and_then(Path::parent)
                    .unwrap_or(Path::new("")),
            )
            .map_or(0, |r| r.components().count())
        });
        let rel = PathBuf::from("../".repeat(depth))
            .join("blobs")
            .join(blob.file_name().unwrap_or_default());
        std::os::unix::fs::symlink(rel, dst)?;
    }
    #[cfg(not(unix))]
    std::fs::copy(blob, dst)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_files_are_wanted_and_others_skipped() {
        for p in [
            "config.json",
            "model-00001-of-00015.safetensors",
            "chat_template.jinja",
            "merges.txt",
        ] {
            assert!(wanted(p), "{p}");
        }
        for p in [
            "pytorch_model.bin",
            "model.gguf",
            ".gitattributes",
            "onnx/model.onnx",
        ] {
            assert!(!wanted(p), "{p}");
        }
    }
}
