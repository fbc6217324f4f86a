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
    #[error("{0} (in the local cache; `qinfer pull REPO:TAG` downloads another)")]
    Tag(#[from] TagError),
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

/// A model argument split into a repo id and a GGUF quant tag: `Org/Name:Q4_K_M` →
/// (`Org/Name`, `Q4_K_M`); anything else is returned whole with no tag.
pub fn split_tag(arg: &str) -> (&str, Option<&str>) {
    match arg.rsplit_once(':') {
        Some((repo, tag)) if is_repo_id(repo) && !tag.is_empty() && !tag.contains('/') => {
            (repo, Some(tag))
        }
        _ => (arg, None),
    }
}

/// Whether a token of a GGUF file name is a quant type: `Q4_K_M`, `IQ4_XS`, `Q8_0`, `TQ1_0`,
/// `F16`, `BF16`, `F32`, `MXFP4`…
fn is_quant_token(t: &str) -> bool {
    let t = t.to_ascii_uppercase();
    let digit_after = |p: &str| {
        t.strip_prefix(p)
            .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    };
    digit_after("Q")
        || digit_after("IQ")
        || digit_after("TQ")
        || ["F16", "BF16", "F32", "F64", "MXFP4"].contains(&t.as_str())
}

/// A GGUF file's name without its directory, `.gguf` and split suffix (`-00001-of-00003`).
fn gguf_stem(path: &str) -> &str {
    let name = path.rsplit('/').next().unwrap_or(path);
    let stem = name
        .strip_suffix(".gguf")
        .or_else(|| name.strip_suffix(".GGUF"))
        .unwrap_or(name);
    match stem.rsplit_once("-of-") {
        Some((head, count)) if count.len() == 5 && count.chars().all(|c| c.is_ascii_digit()) => {
            match head.rsplit_once('-') {
                Some((base, no)) if no.len() == 5 && no.chars().all(|c| c.is_ascii_digit()) => base,
                _ => stem,
            }
        }
        _ => stem,
    }
}

/// The quant tag a GGUF path carries (`Q4_K_M`, `UD-Q4_K_XL`, `BF16`…, upper case): the last
/// quant-type token of its file name (with a preceding `UD`), else of its directories.
pub fn gguf_tag(path: &str) -> Option<String> {
    let from = |s: &str| {
        let tokens: Vec<&str> = s.split(['-', '.']).collect();
        tokens.iter().enumerate().rev().find_map(|(i, t)| {
            is_quant_token(t).then(|| {
                let t = t.to_ascii_uppercase();
                match i.checked_sub(1).map(|j| tokens[j]) {
                    Some(ud) if ud.eq_ignore_ascii_case("UD") => format!("UD-{t}"),
                    _ => t,
                }
            })
        })
    };
    from(gguf_stem(path)).or_else(|| path.rsplit('/').skip(1).find_map(from))
}

/// The file a GGUF path is part of: the parts of one split GGUF share it.
pub fn gguf_group(path: &str) -> String {
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    format!("{dir}/{}", gguf_stem(path))
}

/// Whether `path` is a model GGUF (not a vision projector).
pub fn is_model_gguf(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".gguf") && !lower.rsplit('/').next().unwrap_or("").contains("mmproj")
}

/// Why a quant tag does not name one GGUF in a repo.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TagError {
    #[error("{repo} has no GGUF file tagged {tag}; its tags: {}", available.join(", "))]
    NoMatch {
        repo: String,
        tag: String,
        available: Vec<String>,
    },
    #[error("{tag} matches several GGUF files in {repo}: {}; name one exactly", groups.join(", "))]
    Ambiguous {
        repo: String,
        tag: String,
        groups: Vec<String>,
    },
}

/// The GGUF files of `files` that `tag` names (case-insensitive): every part of one (split)
/// file. Files whose tag equals `tag` win over those that merely contain it as a token.
pub fn select_tag(repo: &str, files: &[String], tag: &str) -> Result<Vec<String>, TagError> {
    let models: Vec<&String> = files.iter().filter(|f| is_model_gguf(f)).collect();
    let exact: Vec<&String> = models
        .iter()
        .copied()
        .filter(|f| gguf_tag(f).is_some_and(|t| t.eq_ignore_ascii_case(tag)))
        .collect();
    let chosen = if exact.is_empty() {
        let needle = tag.to_ascii_lowercase();
        models
            .iter()
            .copied()
            .filter(|f| {
                let lower = f.to_ascii_lowercase();
                lower.match_indices(&needle).any(|(i, m)| {
                    let before = lower[..i].chars().next_back();
                    let after = lower[i + m.len()..].chars().next();
                    before.is_none_or(|c| "/-.".contains(c))
                        && after.is_none_or(|c| "/-.".contains(c))
                })
            })
            .collect()
    } else {
        exact
    };
    let mut groups: Vec<String> = chosen.iter().map(|f| gguf_group(f)).collect();
    groups.sort();
    groups.dedup();
    match groups.len() {
        0 => Err(TagError::NoMatch {
            repo: repo.to_string(),
            tag: tag.to_string(),
            available: tags(files),
        }),
        1 => {
            let mut out: Vec<String> = chosen.into_iter().cloned().collect();
            out.sort();
            Ok(out)
        }
        _ => Err(TagError::Ambiguous {
            repo: repo.to_string(),
            tag: tag.to_string(),
            groups: groups
                .iter()
                .map(|g| g.trim_start_matches('/').to_string())
                .collect(),
        }),
    }
}

/// The quant tags of a repo's model GGUF files, sorted, each once.
pub fn tags(files: &[String]) -> Vec<String> {
    let mut t: Vec<String> = files
        .iter()
        .filter(|f| is_model_gguf(f))
        .filter_map(|f| gguf_tag(f))
        .collect();
    t.sort();
    t.dedup();
    t
}

/// The vision projector GGUF of a repo, if it has one (F16 preferred, then BF16, F32).
pub fn mmproj(files: &[String]) -> Option<String> {
    let projs: Vec<&String> = files
        .iter()
        .filter(|f| {
            let l = f.to_ascii_lowercase();
            l.ends_with(".gguf") && l.rsplit('/').next().unwrap_or("").contains("mmproj")
        })
        .collect();
    ["F16", "BF16", "F32"]
        .iter()
        .find_map(|t| {
            projs
                .iter()
                .find(|f| gguf_tag(f).is_some_and(|g| g.eq_ignore_ascii_case(t)))
        })
        .or(projs.first())
        .map(|f| (*f).clone())
}

/// The cache folder of a repo: `models--org--name`.
pub fn repo_folder(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

/// Every file under `dir`, as `/`-separated paths relative to it (links followed).
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.path().is_dir() {
                stack.push((e.path(), rel));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

/// Resolves a model argument: an existing path as is; a repo id to its snapshot in `cache`;
/// `REPO:TAG` to the (first part of the) GGUF file of that quant in the repo's snapshot.
pub fn resolve(arg: &str, cache: &Path) -> Result<PathBuf, ResolveError> {
    let path = Path::new(arg);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if let (repo, Some(tag)) = split_tag(arg) {
        let snapshot = resolve(repo, cache)?;
        let files = select_tag(repo, &files_under(&snapshot), tag)?;
        return Ok(snapshot.join(&files[0]));
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

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn quant_tags_name_one_gguf_or_say_why_not() {
        let files = names(&[
            "README.md",
            "Qwen3.6-27B-Q4_K_M.gguf",
            "Qwen3.6-27B-Q4_K_S.gguf",
            "Qwen3.6-27B-UD-Q4_K_XL.gguf",
            "Qwen3.6-27B-Q8_0.gguf",
            "Q6_K/Qwen3.6-27B-Q6_K-00001-of-00002.gguf",
            "Q6_K/Qwen3.6-27B-Q6_K-00002-of-00002.gguf",
            "BF16/Qwen3.6-27B-BF16-00001-of-00002.gguf",
            "BF16/Qwen3.6-27B-BF16-00002-of-00002.gguf",
            "mmproj-F32.gguf",
            "mmproj-F16.gguf",
        ]);
        let pick = |t| select_tag("Org/M", &files, t);
        assert_eq!(pick("q4_k_m").unwrap(), ["Qwen3.6-27B-Q4_K_M.gguf"]);
        assert_eq!(pick("UD-Q4_K_XL").unwrap(), ["Qwen3.6-27B-UD-Q4_K_XL.gguf"]);
        assert_eq!(pick("Q4_K_XL").unwrap(), ["Qwen3.6-27B-UD-Q4_K_XL.gguf"]);
        assert_eq!(pick("Q6_K").unwrap().len(), 2);
        assert_eq!(
            pick("bf16").unwrap()[0],
            "BF16/Qwen3.6-27B-BF16-00001-of-00002.gguf"
        );
        match pick("Q5_K_M").unwrap_err() {
            TagError::NoMatch { available, .. } => assert_eq!(
                available,
                ["BF16", "Q4_K_M", "Q4_K_S", "Q6_K", "Q8_0", "UD-Q4_K_XL"]
            ),
            e => panic!("{e}"),
        }
        let two = names(&["a-Q4_0.gguf", "b-Q4_0.gguf"]);
        assert!(matches!(
            select_tag("Org/M", &two, "Q4_0"),
            Err(TagError::Ambiguous { .. })
        ));
        assert_eq!(mmproj(&files).as_deref(), Some("mmproj-F16.gguf"));
        assert_eq!(split_tag("Org/M:Q4_K_M"), ("Org/M", Some("Q4_K_M")));
        assert_eq!(split_tag("./dir:x/y"), ("./dir:x/y", None));
        assert_eq!(split_tag("C:model"), ("C:model", None));
    }

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
