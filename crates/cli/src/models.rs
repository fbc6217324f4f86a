//! The local model cache, managed: `qinfer list`, `qinfer rm`, `qinfer ps`, and when each
//! cached model was last used.
//!
//! Models live in the Hugging Face cache layout (`qinfer pull`, `hf download`): one folder per
//! repo, snapshots linking into content-addressed blobs. A GGUF repo is listed per quant tag
//! (all parts of a split file together), a safetensors repo as one entry. Removing a tag
//! removes its files from the snapshot and every blob no remaining file links to; removing a
//! repo removes its folder.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use qinfer_formats::hf_cache;

use crate::inspect::human_count;

/// One cached model: a repo's safetensors checkpoint, or one GGUF quant of it.
#[derive(Debug)]
pub struct Entry {
    /// `ORG/NAME` or `ORG/NAME:TAG`.
    pub name: String,
    pub format: &'static str,
    pub bytes: u64,
    pub last_used: Option<u64>,
}

/// Where `qinfer` records when it last used each cached model.
fn last_used_file() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("qinfer").join("last-used.json")
}

fn read_last_used() -> BTreeMap<String, u64> {
    std::fs::read(last_used_file())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Records that the cached model `name` (`ORG/NAME[:TAG]`) was just loaded. Best effort: a
/// cache that cannot be written only loses the date.
pub fn touch(name: &str) {
    let mut all = read_last_used();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    all.insert(name.to_string(), now);
    let path = last_used_file();
    if let Some(dir) = path.parent()
        && std::fs::create_dir_all(dir).is_ok()
        && let Ok(text) = serde_json::to_vec_pretty(&all)
    {
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(tmp, path);
        }
    }
}

/// The repos in `cache` (`models--ORG--NAME` folders) as repo ids.
fn repos(cache: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("models--")?;
            let (org, repo) = rest.split_once("--")?;
            Some(format!("{org}/{repo}"))
        })
        .collect();
    out.sort();
    out
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Every cached model in `cache`.
pub fn entries(cache: &Path) -> Vec<Entry> {
    let used = read_last_used();
    let mut out = Vec::new();
    for repo in repos(cache) {
        let Ok(snapshot) = hf_cache::resolve(&repo, cache) else {
            continue;
        };
        let files = hf_cache::files_under(&snapshot);
        for tag in hf_cache::tags(&files) {
            let Ok(parts) = hf_cache::select_tag(&repo, &files, &tag) else {
                continue;
            };
            let name = format!("{repo}:{tag}");
            out.push(Entry {
                bytes: parts.iter().map(|p| size(&snapshot.join(p))).sum(),
                last_used: used.get(&name).copied(),
                format: "gguf",
                name,
            });
        }
        if files.iter().any(|f| f.ends_with(".safetensors")) {
            out.push(Entry {
                bytes: files
                    .iter()
                    .filter(|f| !f.to_ascii_lowercase().ends_with(".gguf"))
                    .map(|f| size(&snapshot.join(f)))
                    .sum(),
                last_used: used.get(&repo).copied(),
                format: "safetensors",
                name: repo,
            });
        }
    }
    out
}

fn human_size(b: u64) -> String {
    if b >= 1_000_000_000 {
        format!("{:.1} GB", b as f64 / 1e9)
    } else {
        format!("{:.1} MB", b as f64 / 1e6)
    }
}

fn ago(t: Option<u64>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(t);
    match s {
        0..60 => "just now".into(),
        60..3600 => format!("{} minutes ago", s / 60),
        3600..86400 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

/// `qinfer list`.
pub fn list(cache: &Path, out: &mut impl Write) -> Result<()> {
    let all = entries(cache);
    if all.is_empty() {
        writeln!(
            out,
            "no models in {} (qinfer pull REPO[:TAG] downloads one)",
            cache.display()
        )?;
        return Ok(());
    }
    let width = all.iter().map(|e| e.name.len()).max().unwrap_or(4).max(4);
    writeln!(
        out,
        "{:width$}  {:11}  {:>9}  LAST USED",
        "NAME", "FORMAT", "SIZE"
    )?;
    for e in &all {
        writeln!(
            out,
            "{:width$}  {:11}  {:>9}  {}",
            e.name,
            e.format,
            human_size(e.bytes),
            ago(e.last_used)
        )?;
    }
    Ok(())
}

/// `qinfer rm REPO[:TAG]`: what it removed, or why it could not.
pub fn rm(model: &str, cache: &Path, out: &mut impl Write) -> Result<()> {
    let (repo, tag) = hf_cache::split_tag(model);
    if !hf_cache::is_repo_id(repo) {
        bail!("{model:?} is not a cached model name (ORG/NAME or ORG/NAME:TAG; see qinfer list)");
    }
    let folder = hf_cache::repo_folder(cache, repo);
    if !folder.is_dir() {
        bail!("{repo} is not in {} (see qinfer list)", cache.display());
    }
    let Some(tag) = tag else {
        let freed: u64 = walk(&folder.join("blobs")).iter().map(|p| size(p)).sum();
        std::fs::remove_dir_all(&folder)
            .with_context(|| format!("removing {}", folder.display()))?;
        writeln!(out, "removed {repo} ({})", human_size(freed))?;
        return Ok(());
    };
    let snapshot = hf_cache::resolve(repo, cache)?;
    let parts = hf_cache::select_tag(repo, &hf_cache::files_under(&snapshot), tag)?;
    let freed = remove_files(&folder, &snapshot, &parts)?;
    writeln!(out, "removed {repo}:{tag} ({})", human_size(freed))?;
    if walk(&folder.join("snapshots")).is_empty() {
        std::fs::remove_dir_all(&folder)?;
    }
    Ok(())
}

/// Removes `files` (paths relative to `snapshot`, a snapshot of the repo in `folder`) and
/// every blob no remaining file of any snapshot links to; returns the bytes freed.
pub fn remove_files(folder: &Path, snapshot: &Path, files: &[String]) -> Result<u64> {
    let blobs_dir = folder.join("blobs");
    let mut freed = 0;
    let mut blobs = Vec::new();
    for p in files {
        let file = snapshot.join(p);
        match std::fs::canonicalize(&file) {
            Ok(target) if target.starts_with(std::fs::canonicalize(&blobs_dir)?) => {
                blobs.push(target)
            }
            // A file written in place (a `pull --quant` GGUF): its own bytes.
            _ => freed += size(&file),
        }
        std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
    }
    let kept: HashSet<PathBuf> = walk(&folder.join("snapshots"))
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    for b in blobs.iter().filter(|b| !kept.contains(*b)) {
        freed += size(b);
        std::fs::remove_file(b).with_context(|| format!("removing {}", b.display()))?;
    }
    remove_empty_dirs(&folder.join("snapshots"));
    Ok(freed)
}

/// Every file under `dir`, as paths.
fn walk(dir: &Path) -> Vec<PathBuf> {
    hf_cache::files_under(dir)
        .iter()
        .map(|rel| dir.join(rel))
        .collect()
}

fn remove_empty_dirs(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_empty_dirs(&e.path());
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// `qinfer ps`: the models a running `qinfer serve` at `addr` has loaded, from its HTTP API.
pub fn ps(addr: &str, api_key: Option<&str>, out: &mut impl Write) -> Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let get = |path: &str| -> Result<serde_json::Value> {
        let mut req = agent.get(format!("http://{addr}{path}"));
        if let Some(k) = api_key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let mut resp = req.call().with_context(|| {
            format!("no qinfer serve answers at {addr} (start one, or pass --host/--port)")
        })?;
        if resp.status() != 200 {
            bail!("{addr}{path}: HTTP {} (an --api-key?)", resp.status());
        }
        Ok(serde_json::from_str(&resp.body_mut().read_to_string()?)?)
    };
    let health = get("/health")?;
    let models = get("/v1/models")?;
    writeln!(out, "NAME  CONTEXT  RUNNING  QUEUED")?;
    let first = models["data"].get(0).cloned().unwrap_or_default();
    writeln!(
        out,
        "{}  {}  {}  {}",
        health["model"].as_str().unwrap_or("?"),
        first["max_model_len"],
        health["running"],
        health["queued"]
    )?;
    let aliases: Vec<&str> = models["data"]
        .as_array()
        .into_iter()
        .flatten()
        .skip(1)
        .filter_map(|m| m["id"].as_str())
        .collect();
    if !aliases.is_empty() {
        writeln!(out, "also served as: {}", aliases.join(", "))?;
    }
    Ok(())
}

/// `qinfer show MODEL`: what `inspect` prints, short — architecture, parameters (active and
/// total for MoE), context, weight format, chat template features, vision, MTP.
pub fn show(arg: &str, path: &Path, out: &mut impl Write) -> Result<()> {
    use qinfer_formats::gguf::{GgufFile, keys};
    use qinfer_model::{FeedForwardConfig, LayerKind, ModelConfig};

    let (config, weights, template, vision): (ModelConfig, String, String, String) =
        if crate::is_gguf(path) {
            let file = GgufFile::open(path)?;
            let config = qinfer_model::gguf::config_from_gguf(&file)?;
            let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
            for t in &file.tensors {
                *by_type.entry(t.type_name().to_string()).or_default() += t.data.len();
            }
            let total: usize = by_type.values().sum();
            let main = by_type
                .iter()
                .max_by_key(|(_, b)| **b)
                .map_or("-".to_string(), |(t, _)| t.clone());
            let template = file
                .get_str_opt(keys::CHAT_TEMPLATE)?
                .unwrap_or_default()
                .to_string();
            let dir = path.parent().unwrap_or(Path::new("."));
            let vision = match hf_cache::mmproj(&hf_cache::files_under(dir)) {
                Some(p) => format!("yes ({p})"),
                None => "no (no mmproj GGUF beside it)".into(),
            };
            (
                config,
                format!("GGUF, mostly {main} ({})", human_size(total as u64)),
                template,
                vision,
            )
        } else {
            let raw = qinfer_formats::hf_config::RawConfig::from_file(&path.join("config.json"))?;
            let config = ModelConfig::from_hf(&raw)?;
            let bytes: u64 = hf_cache::files_under(path)
                .iter()
                .filter(|f| f.ends_with(".safetensors"))
                .map(|f| size(&path.join(f)))
                .sum();
            let template = std::fs::read_to_string(path.join("chat_template.jinja"))
                .or_else(|_| std::fs::read_to_string(path.join("tokenizer_config.json")))
                .unwrap_or_default();
            let vision = if raw.vision_config.is_some() {
                "yes (a vision tower in the checkpoint)".into()
            } else {
                "no".into()
            };
            (
                config,
                format!("safetensors ({})", human_size(bytes)),
                template,
                vision,
            )
        };
    let deltanet = config
        .layers
        .iter()
        .filter(|k| **k == LayerKind::DeltaNet)
        .count();
    let total = config.parameter_count();
    let params = match config.feed_forward {
        FeedForwardConfig::Moe {
            n_experts, top_k, ..
        } => format!(
            "{} active of {} ({top_k} of {n_experts} experts per token)",
            human_count(config.active_parameter_count()),
            human_count(total)
        ),
        FeedForwardConfig::Dense { .. } => format!("{} (dense)", human_count(total)),
    };
    let mut features = Vec::new();
    if template.contains("enable_thinking") || template.contains("<think>") {
        features.push("thinking");
    }
    if template.contains("tools") {
        features.push("tools");
    }
    writeln!(out, "model         {arg} ({})", path.display())?;
    writeln!(
        out,
        "architecture  {}: {} layers ({deltanet} Gated DeltaNet + {} attention), hidden {}",
        config.model_type,
        config.layers.len(),
        config.layers.len() - deltanet,
        config.hidden
    )?;
    writeln!(out, "parameters    {params}")?;
    writeln!(out, "context       {} tokens", config.max_positions)?;
    writeln!(out, "weights       {weights}")?;
    writeln!(
        out,
        "template      {}",
        if features.is_empty() {
            "no chat template features found".to_string()
        } else {
            features.join(", ")
        }
    )?;
    writeln!(out, "vision        {vision}")?;
    writeln!(
        out,
        "MTP           {}",
        match config.mtp_layers {
            0 => "no".to_string(),
            n => format!("{n} layer(s)"),
        }
    )?;
    Ok(())
}

/// Short names of the family, as Ollama users type them: name → (repo, default quant tag).
/// The repos are Qwen's GGUF repos; `$XDG_CONFIG_HOME/qinfer/models.json` (`{"name":
/// "REPO:TAG"}`) adds names or points these elsewhere. A `-TAG` suffix picks another quant:
/// `qwen3.6:27b-q8_0`.
pub const SHORT_NAMES: [(&str, &str, &str); 10] = [
    ("qwen3.6:27b", "Qwen/Qwen3.6-27B-GGUF", "Q4_K_M"),
    ("qwen3.6:35b-a3b", "Qwen/Qwen3.6-35B-A3B-GGUF", "Q4_K_M"),
    ("qwen3.5:0.8b", "Qwen/Qwen3.5-0.8B-GGUF", "Q8_0"),
    ("qwen3.5:2b", "Qwen/Qwen3.5-2B-GGUF", "Q8_0"),
    ("qwen3.5:4b", "Qwen/Qwen3.5-4B-GGUF", "Q4_K_M"),
    ("qwen3.5:9b", "Qwen/Qwen3.5-9B-GGUF", "Q4_K_M"),
    ("qwen3.5:27b", "Qwen/Qwen3.5-27B-GGUF", "Q4_K_M"),
    ("qwen3.5:35b-a3b", "Qwen/Qwen3.5-35B-A3B-GGUF", "Q4_K_M"),
    ("qwen3.5:122b-a10b", "Qwen/Qwen3.5-122B-A10B-GGUF", "Q4_K_M"),
    ("qwen3.5:397b-a17b", "Qwen/Qwen3.5-397B-A17B-GGUF", "Q4_K_M"),
];

fn user_names_file() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"))
        .join("qinfer")
        .join("models.json")
}

/// `REPO:TAG` for a short name (`qwen3.6:27b`, `qwen3.6:27b-q8_0`, or a name from the user's
/// file); `None` for anything else.
pub fn expand_short_name(arg: &str) -> Result<Option<String>> {
    let file = user_names_file();
    let user: BTreeMap<String, String> = match std::fs::read(&file) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("{}: expected {{\"name\": \"REPO:TAG\"}}", file.display()))?,
        Err(_) => BTreeMap::new(),
    };
    let lower = arg.to_ascii_lowercase();
    if let Some(target) = user.get(&lower) {
        return Ok(Some(target.clone()));
    }
    for (name, repo, tag) in SHORT_NAMES {
        if lower == name {
            return Ok(Some(format!("{repo}:{tag}")));
        }
        if let Some(t) = lower.strip_prefix(name).and_then(|r| r.strip_prefix('-'))
            && !t.is_empty()
        {
            return Ok(Some(format!("{repo}:{}", t.to_ascii_uppercase())));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_expand_with_their_default_or_a_chosen_tag() {
        assert_eq!(
            expand_short_name("qwen3.6:27b").unwrap().as_deref(),
            Some("Qwen/Qwen3.6-27B-GGUF:Q4_K_M")
        );
        assert_eq!(
            expand_short_name("Qwen3.6:35B-A3B-q8_0")
                .unwrap()
                .as_deref(),
            Some("Qwen/Qwen3.6-35B-A3B-GGUF:Q8_0")
        );
        assert_eq!(expand_short_name("Qwen/Qwen3.6-27B").unwrap(), None);
        assert_eq!(expand_short_name("./model-dir").unwrap(), None);
    }
}
