//! Getting and managing GGUF models (issue 23) against a local stand-in for the Hugging Face
//! Hub (loopback only): `qinfer pull REPO:TAG` fetches exactly that quant (all parts of a
//! split one) and the vision projector, resumes an interrupted download, verifies SHA-256,
//! names the available tags for a wrong one, picks a quant that fits when none is named, and
//! refuses when the disk is too small; `qinfer list` / `rm` round-trip; `REPO:TAG` runs; `qinfer
//! ps` reads a running server.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;

use common::hub::{self, Hub, HubFile};

const SHA: &str = "89abcdef0123456789abcdef0123456789abcdef";
const REPO: &str = "Org/Tiny-GGUF";

fn fixture(rel: &str) -> Vec<u8> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf");
    std::fs::read(root.join(rel)).unwrap()
}

/// The repo's files: real tiny GGUF fixtures under quant names, a split one, two projectors.
fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("README.md".into(), b"# Tiny GGUF".to_vec()),
        ("tiny-Q8_0.gguf".into(), fixture("tiny-dense-q8_0.gguf")),
        (
            "tiny-Q4_K_M.gguf".into(),
            fixture("llama/tiny-dense-q4_k_m.gguf"),
        ),
        (
            "F32/tiny-dense-f32-00001-of-00002.gguf".into(),
            fixture("split/tiny-dense-f32-00001-of-00002.gguf"),
        ),
        (
            "F32/tiny-dense-f32-00002-of-00002.gguf".into(),
            fixture("split/tiny-dense-f32-00002-of-00002.gguf"),
        ),
        ("mmproj-BF16.gguf".into(), vec![7u8; 1000]),
        ("mmproj-F16.gguf".into(), vec![9u8; 1000]),
    ]
}

fn start_hub(cut_first: usize) -> Hub {
    start_repo_hub(REPO, files(), "tiny-Q8_0.gguf", cut_first)
}

/// A hub serving `repo` with `files` (all through LFS); the first `cut_first` full downloads
/// of `cut_file` stop halfway.
fn start_repo_hub(
    repo: &'static str,
    files: Vec<(String, Vec<u8>)>,
    cut_file: &str,
    cut_first: usize,
) -> Hub {
    let files = files
        .into_iter()
        .map(|(n, b)| HubFile::lfs(&n, b))
        .collect();
    hub::start(repo, SHA, files, cut_file, cut_first)
}

/// Runs `qinfer ARGS` against the hub, with `cache` as the HF cache and the last-use record.
fn qinfer(hub: u16, cache: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_qinfer"));
    c.args(args)
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{hub}"))
        .env("HF_HUB_CACHE", cache.join("hub"))
        .env("XDG_CACHE_HOME", cache.join("xdg"))
        .env("XDG_CONFIG_HOME", cache.join("no-config"))
        .env_remove("HF_TOKEN")
        .env_remove("QINFER_MEMORY_LIMIT")
        .env_remove("QINFER_DISK_FREE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `run`/`serve`/`generate REPO:TAG --pull` download the quant first (as `qinfer pull`), then
/// run it; without `--pull` a model not in the cache is an error naming the command.
#[test]
fn pull_flag_downloads_then_runs() {
    let hub = start_hub(0);
    let cache = tempfile::tempdir().unwrap();
    let tag = format!("{REPO}:Q8_0");
    let args = [
        "generate",
        &tag,
        "--ids",
        "1,2,3",
        "--max-tokens",
        "2",
        "--json",
    ];
    let o = qinfer(hub.port, cache.path(), &args, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        hub.fetched().is_empty(),
        "nothing downloaded without --pull"
    );
    let pulled = || {
        let o = qinfer(
            hub.port,
            cache.path(),
            &[&args[..], &["--pull"]].concat(),
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
        o
    };
    let o = pulled();
    assert_eq!(hub.fetched(), ["mmproj-F16.gguf", "tiny-Q8_0.gguf"]);
    let ids: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ids["ids"].as_array().map(Vec::len), Some(2), "{ids}");
    // Already in the cache: --pull only checks it, and the bytes are not fetched again.
    let before = hub.log.lock().unwrap().len();
    pulled();
    assert!(
        !hub.log.lock().unwrap()[before..]
            .iter()
            .any(|l| l.starts_with("GET /lfs/")),
        "no file downloaded twice"
    );
}

#[test]
fn pull_by_tag_fetches_that_quant_resumes_and_runs() {
    let hub = start_hub(1);
    let cache = tempfile::tempdir().unwrap();
    let tag = format!("{REPO}:q8_0");
    let first = qinfer(hub.port, cache.path(), &["pull", &tag], &[]);
    assert!(!first.status.success());
    assert!(
        text(&first).contains("run the same command again to resume"),
        "{}",
        text(&first)
    );
    let second = qinfer(hub.port, cache.path(), &["pull", &tag], &[]);
    assert!(second.status.success(), "{}", text(&second));
    assert_eq!(hub.cut.load(Ordering::SeqCst), 0);
    assert!(
        hub.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.starts_with("GET /lfs/1 Some(")),
        "resumed with a Range"
    );
    assert_eq!(hub.fetched(), ["mmproj-F16.gguf", "tiny-Q8_0.gguf"]);
    let path = String::from_utf8_lossy(&second.stdout).trim().to_string();
    assert!(
        path.ends_with(&format!("snapshots/{SHA}/tiny-Q8_0.gguf")),
        "{path}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        fixture("tiny-dense-q8_0.gguf")
    );

    // The tag runs, from the cache.
    let run = qinfer(
        hub.port,
        cache.path(),
        &[
            "generate",
            &tag,
            "--ids",
            "1,2,3",
            "--max-tokens",
            "2",
            "--temperature",
            "0",
        ],
        &[],
    );
    assert!(run.status.success(), "{}", text(&run));

    // A split quant: both parts; it loads from its first part.
    let f32 = format!("{REPO}:F32");
    let o = qinfer(hub.port, cache.path(), &["pull", &f32], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        hub.fetched()
            .iter()
            .filter(|f| f.starts_with("F32/"))
            .count()
            == 2
    );
    let run = qinfer(
        hub.port,
        cache.path(),
        &[
            "generate",
            &f32,
            "--ids",
            "1,2",
            "--max-tokens",
            "1",
            "--temperature",
            "0",
        ],
        &[],
    );
    assert!(run.status.success(), "{}", text(&run));
}

#[test]
fn wrong_or_missing_tags_and_small_disks_are_explained() {
    let hub = start_hub(0);
    let cache = tempfile::tempdir().unwrap();
    let o = qinfer(
        hub.port,
        cache.path(),
        &["pull", &format!("{REPO}:Q5_K_M")],
        &[],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("no GGUF file tagged Q5_K_M; its tags: F32, Q4_K_M, Q8_0"),
        "{}",
        text(&o)
    );

    // No tag: the largest quant that fits the memory, said; none fits: the list.
    let q4 = fixture("llama/tiny-dense-q4_k_m.gguf").len();
    let limit = (q4 * 12 / 10).to_string();
    let o = qinfer(
        hub.port,
        cache.path(),
        &["pull", REPO],
        &[("QINFER_MEMORY_LIMIT", &limit)],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("pulling Q4_K_M"), "{}", text(&o));
    assert!(hub.fetched().contains(&"tiny-Q4_K_M.gguf".to_string()));
    let o = qinfer(
        hub.port,
        cache.path(),
        &["pull", REPO],
        &[("QINFER_MEMORY_LIMIT", "10")],
    );
    assert!(!o.status.success());
    assert!(
        text(&o).contains("name a quant with `qinfer pull Org/Tiny-GGUF:TAG`"),
        "{}",
        text(&o)
    );

    // Disk too small: refused before anything is written.
    let o = qinfer(
        hub.port,
        cache.path(),
        &["pull", &format!("{REPO}:Q8_0")],
        &[("QINFER_DISK_FREE", "100")],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("not enough disk space"), "{}", text(&o));
    assert!(!hub.fetched().contains(&"tiny-Q8_0.gguf".to_string()));
}

#[test]
fn list_and_rm_round_trip() {
    let hub = start_hub(0);
    let cache = tempfile::tempdir().unwrap();
    for t in ["Q8_0", "F32"] {
        let o = qinfer(
            hub.port,
            cache.path(),
            &["pull", &format!("{REPO}:{t}")],
            &[],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let _ = qinfer(
        hub.port,
        cache.path(),
        &[
            "generate",
            &format!("{REPO}:Q8_0"),
            "--ids",
            "1",
            "--max-tokens",
            "1",
        ],
        &[],
    );
    let list = text(&qinfer(hub.port, cache.path(), &["list"], &[]));
    let row = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(str::to_string)
    };
    let q8 = row(&format!("{REPO}:Q8_0")).unwrap_or_else(|| panic!("{list}"));
    assert!(q8.contains("gguf") && q8.contains("just now"), "{list}");
    assert!(
        row(&format!("{REPO}:F32")).unwrap().contains("never"),
        "{list}"
    );

    // `show`: the short summary, the projector beside the GGUF found.
    let show = text(&qinfer(
        hub.port,
        cache.path(),
        &["show", &format!("{REPO}:Q8_0")],
        &[],
    ));
    for want in [
        "qwen3_5_text: 8 layers (6 Gated DeltaNet + 2 attention)",
        "GGUF, mostly Q8_0",
        "thinking, tools",
        "vision        yes (mmproj-F16.gguf)",
        "MTP           1 layer(s)",
    ] {
        assert!(show.contains(want), "{want}: {show}");
    }

    let blobs = cache.path().join("hub/models--Org--Tiny-GGUF/blobs");
    let count = || std::fs::read_dir(&blobs).unwrap().count();
    let before = count();
    let o = qinfer(
        hub.port,
        cache.path(),
        &["rm", &format!("{REPO}:Q8_0")],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(count(), before - 1, "its blob is gone, the others stay");
    let list = text(&qinfer(hub.port, cache.path(), &["list"], &[]));
    assert!(!list.contains(":Q8_0") && list.contains(":F32"), "{list}");
    let o = qinfer(hub.port, cache.path(), &["rm", REPO], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&qinfer(hub.port, cache.path(), &["list"], &[])).contains("no models"));
    let o = qinfer(hub.port, cache.path(), &["rm", "Org/Nothing"], &[]);
    assert!(
        !o.status.success() && text(&o).contains("not in"),
        "{}",
        text(&o)
    );
}

#[test]
fn ps_reads_a_running_server() {
    let (mut child, _log, addr) = common::serve(&["--served-model-name", "qwen-local,alias"]);
    let o = Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args(["ps", "--port", &addr.port().to_string()])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("qwen-local") && out.contains("also served as: alias"),
        "{out}"
    );
}

/// `qinfer CMD DIR` on a local model (no hub); its output, which must be a success.
fn local(cmd: &str, dir: &Path) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .arg(cmd)
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
}

#[test]
fn show_summarises_a_checkpoint_directory() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-dense-bf16");
    let out = local("show", &dir);
    assert!(
        out.contains("(dense)") && out.contains("safetensors"),
        "{out}"
    );
}

/// `inspect` and `show` give an MoE model's total and active parameters: the active ones leave
/// out the idle routed experts (`(n_experts − top_k) × 3 × hidden × expert_intermediate` per
/// layer, from config.json).
#[test]
fn inspect_and_show_count_active_parameters() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-moe-bf16");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let n = |k: &str| {
        cfg[k]
            .as_u64()
            .or_else(|| cfg["text_config"][k].as_u64())
            .unwrap()
    };
    let idle = (n("num_experts") - n("num_experts_per_tok"))
        * 3
        * n("hidden_size")
        * n("moe_intermediate_size")
        * n("num_hidden_layers");
    let inspect = local("inspect", &dir);
    let line = inspect
        .lines()
        .find(|l| l.starts_with("parameters"))
        .unwrap();
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums[0] - nums[1], idle, "{line}");
    assert!(line.contains("2 of 8 experts"), "{line}");
    let show = local("show", &dir);
    assert!(
        show.contains(&format!("{} active of {}", nums[1], nums[0])),
        "{show}"
    );
}

/// A short name from the user's file (`$XDG_CONFIG_HOME/qinfer/models.json`) pulls and runs
/// like the `REPO:TAG` it names.
#[test]
fn short_names_from_the_users_file() {
    let hub = start_hub(0);
    let cache = tempfile::tempdir().unwrap();
    let config = cache.path().join("config/qinfer");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("models.json"),
        format!(r#"{{"tiny:q8": "{REPO}:Q8_0"}}"#),
    )
    .unwrap();
    let xdg = cache.path().join("config");
    let env = [("XDG_CONFIG_HOME", xdg.to_str().unwrap())];
    let o = qinfer(hub.port, cache.path(), &["pull", "tiny:q8"], &env);
    assert!(o.status.success(), "{}", text(&o));
    assert!(hub.fetched().contains(&"tiny-Q8_0.gguf".to_string()));
    let o = qinfer(hub.port, cache.path(), &["show", "tiny:q8"], &env);
    assert!(
        o.status.success() && text(&o).contains("Q8_0"),
        "{}",
        text(&o)
    );
}

/// `pull --quant` converts while it downloads: the first shard is converted and removed before
/// the second has arrived; a pull cut off in the second shard resumes from its journal without
/// fetching the first again; the result is exactly what `qinfer quantize` writes from the same
/// checkpoint, in the cache where `REPO:TYPE` names it, with no shard left.
#[test]
fn pull_quant_streams_resumes_and_equals_quantize() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-dense-bf16");
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let (first, second) = (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    let hub = start_repo_hub("Org/Tiny-BF16", files, second, 1);
    let cache = tempfile::tempdir().unwrap();
    let o = qinfer(
        hub.port,
        cache.path(),
        &["pull", "Org/Tiny-BF16", "--quant", "q8_0"],
        &[],
    );
    assert!(
        !o.status.success() && text(&o).contains("connection lost"),
        "{}",
        text(&o)
    );
    let snapshot = cache
        .path()
        .join(format!("hub/models--Org--Tiny-BF16/snapshots/{SHA}"));
    let on_disk = qinfer_formats::hf_cache::files_under(&snapshot);
    assert!(
        !on_disk.contains(&first.to_string())
            && on_disk.contains(&"Tiny-BF16-Q8_0.gguf.partial".to_string())
            && !on_disk.contains(&"Tiny-BF16-Q8_0.gguf".to_string()),
        "the first shard converted and removed, the GGUF unfinished: {on_disk:?}"
    );
    let journal =
        std::fs::read_to_string(snapshot.join("Tiny-BF16-Q8_0.gguf.partial.json")).unwrap();
    assert!(journal.contains("blk.0.attn_qkv.weight"), "{journal}");
    let first_blob = cache.path().join(format!(
        "hub/models--Org--Tiny-BF16/blobs/{}",
        hub::sha256_hex(&std::fs::read(dir.join(first)).unwrap())
    ));
    assert!(!first_blob.exists(), "the first shard's blob is removed");

    let o = qinfer(
        hub.port,
        cache.path(),
        &["pull", "Org/Tiny-BF16", "--quant", "q8_0"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let first_gets = hub
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            l.strip_prefix("GET /lfs/")
                .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
                .is_some_and(|i| hub.names[i] == first)
        })
        .count();
    assert_eq!(first_gets, 1, "the first shard is downloaded once");
    let pulled = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(
        pulled.ends_with("Tiny-BF16-Q8_0.gguf"),
        "{}",
        pulled.display()
    );
    let reference = cache.path().join("reference.gguf");
    let q = qinfer(
        hub.port,
        cache.path(),
        &[
            "quantize",
            dir.to_str().unwrap(),
            reference.to_str().unwrap(),
            "--type",
            "Q8_0",
        ],
        &[],
    );
    assert!(q.status.success(), "{}", text(&q));
    assert!(
        std::fs::read(&pulled).unwrap() == std::fs::read(&reference).unwrap(),
        "the same bytes"
    );
    let left = qinfer_formats::hf_cache::files_under(&snapshot);
    assert!(
        !left
            .iter()
            .any(|f| f.ends_with(".safetensors") || f.contains(".partial")),
        "the shards and the partial file are gone: {left:?}"
    );
    assert!(left.contains(&"config.json".to_string()));
    let list = text(&qinfer(hub.port, cache.path(), &["list"], &[]));
    assert!(
        list.contains("Org/Tiny-BF16:Q8_0") && !list.contains("safetensors"),
        "{list}"
    );
    let run = qinfer(
        hub.port,
        cache.path(),
        &[
            "generate",
            "Org/Tiny-BF16:Q8_0",
            "--ids",
            "1,2",
            "--max-tokens",
            "1",
        ],
        &[],
    );
    assert!(run.status.success(), "{}", text(&run));
    let o = qinfer(
        hub.port,
        cache.path(),
        &["pull", "Org/Tiny-BF16", "--quant", "Q4_K_M"],
        &[("QINFER_DISK_FREE", "1000")],
    );
    assert!(
        !o.status.success() && text(&o).contains("not enough disk space"),
        "{}",
        text(&o)
    );
}
