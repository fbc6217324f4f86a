//! Finding a model in the Hugging Face cache layout.
//!
//! `MODEL` arguments may be a path or a Hugging Face repo id (`Qwen/Qwen3.6-27B`). Repo ids are
//! looked up where the Hugging Face tools store them:
//!
//! ```text
//! $HF_HUB_CACHE | $HF_HOME/hub | ~/.cache/huggingface/hub
//!   models--Qwen--Qwen3.6-27B/
//!     refs/main                 (text: the snapshot's commit hash)
//!     snapshots/<hash>/...      (the files, often symlinks into blobs/)
//! ```
//!
//! Nothing here touches the network.

use std::path::{Path, PathBuf};

/// Why a model argument could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}: no such file or directory")]
    NoSuchPath(String),
    #[error(
        "model {repo} is not in the Hugging Face cache (looked for {looked}).\n\
         Download it with `qinfer pull {repo}` (or `hf download {repo}`), or put its files \
         (config.json, *.safetensors, tokenizer.json, tokenizer_config.json) in a directory \
         and pass that directory."
    )]
    NotCached { repo: String, looked: String },
}

/// The hub cache directory, from the environment as the Hugging Face tools read it.
pub fn hub_cache_dir() -> PathBuf {
    hub_cache_dir_from(|k| std::env::var_os(k).map(PathBuf::from))
}

fn hub_cache_dir_from(env: impl Fn(&str) -> Option<PathBuf>) -> PathBuf {
    if let Some(p) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        return p;
    }
    if let Some(home) = env("HF_HOME") {
        return home.join("hub");
    }
    let base = env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface").join("hub")
}

/// Whether `arg` reads as a repo id (`org/name`) rather than a path.
pub fn is_repo_id(arg: &str) -> bool {
    let mut parts = arg.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The cache folder of a repo: `models--org--name`.
pub fn repo_folder(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// Resolves a model argument: an existing path as is; a repo id to its snapshot in `cache`.
pub fn resolve(arg: &str, cache: &Path) -> Result<PathBuf, ResolveError> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if !is_repo_id(arg) {
        return Err(ResolveError::NoSuchPath(arg.to_string()));
    }
    let folder = repo_folder(cache, arg);
    let snapshots = folder.join("snapshots");
    if let Ok(hash) = std::fs::read_to_string(folder.join("refs").join("main")) {
        let snap = snapshots.join(hash.trim());
        if snap.is_dir() {
            return Ok(snap);
        }
    }
    // No usable ref: take the one snapshot if there is exactly one.
    if let Ok(entries) = std::fs::read_dir(&snapshots) {
        let dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        if let [only] = dirs.as_slice() {
            return Ok(only.clone());
        }
    }
    Err(ResolveError::NotCached {
        repo: arg.to_string(),
        looked: snapshots.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_follows_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| PathBuf::from(v))
            }
        };
        assert_eq!(
            hub_cache_dir_from(env(&[("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b")])),
            PathBuf::from("/a")
        );
        assert_eq!(
            hub_cache_dir_from(env(&[("HF_HOME", "/b")])),
            PathBuf::from("/b/hub")
        );
        assert_eq!(
            hub_cache_dir_from(env(&[("HOME", "/h")])),
            PathBuf::from("/h/.cache/huggingface/hub")
        );
    }

    #[test]
    fn repo_ids_and_paths() {
        assert!(is_repo_id("Qwen/Qwen3.6-27B"));
        assert!(!is_repo_id("./models/x"));
        assert!(!is_repo_id("/abs/path"));
        assert!(!is_repo_id("a/b/c"));
        assert!(!is_repo_id("model-dir"));
    }

    #[test]
    fn resolves_snapshots_and_explains_misses() {
        let cache = tempfile::tempdir().unwrap();
        let folder = repo_folder(cache.path(), "Qwen/Tiny");
        let err = resolve("Qwen/Tiny", cache.path()).unwrap_err().to_string();
        assert!(
            err.contains("qinfer pull Qwen/Tiny") && err.contains("snapshots"),
            "{err}"
        );
        std::fs::create_dir_all(folder.join("snapshots/abc123")).unwrap();
        assert_eq!(
            resolve("Qwen/Tiny", cache.path()).unwrap(),
            folder.join("snapshots/abc123")
        );
        std::fs::create_dir_all(folder.join("snapshots/def456")).unwrap();
        assert!(
            resolve("Qwen/Tiny", cache.path()).is_err(),
            "two snapshots and no ref is ambiguous"
        );
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs/main"), "def456\n").unwrap();
        assert_eq!(
            resolve("Qwen/Tiny", cache.path()).unwrap(),
            folder.join("snapshots/def456")
        );
        assert!(
            resolve("no-such-dir", cache.path())
                .unwrap_err()
                .to_string()
                .contains("no such file")
        );
    }
}
