//! The coding agents users run, unchanged, against `qinfer serve` (issue 16): Claude Code
//! (Anthropic Messages), Codex (OpenAI Responses) and Qwen Code (OpenAI chat), installed from
//! npm at the versions pinned in `tools/agents/package-lock.json` (`.ci/run` installs them
//! into `.ci/agents` and sets `QINFER_AGENTS_DIR`; without it these tests say they skipped).
//!
//! Each agent runs non-interactively in a scratch directory with the setup the README gives,
//! against the demo model. The demo model has random weights and would never call a tool, so
//! the server's answers are scripted (`--test-script-tool-calls`, a hidden test switch): a
//! request that offers the agent's shell tool calls it with a command writing a marker file,
//! and the request carrying the tool's result is answered `Done.`. A test passes when the
//! agent exits cleanly, the marker file was written by the agent executing the call (a tool
//! round trip), and the agent's final answer is `Done.` (a completed turn).

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MARKER: &str = "qinfer-agent-ok";

/// The tools of the three agents that run a shell command, with a call writing `file`.
fn script(file: &str) -> String {
    let cmd = format!("echo {MARKER} > {file}");
    serde_json::json!({
        "Bash": {"command": cmd, "description": "Write the marker file"},
        "exec_command": {"cmd": cmd},
        "run_shell_command": {"command": cmd, "description": "Write the marker file"},
    })
    .to_string()
}

fn agents_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("QINFER_AGENTS_DIR").map(PathBuf::from);
    if dir.is_none() {
        let mut err = std::io::stderr().lock();
        let _ = std::io::Write::write_all(
            &mut err,
            b"SKIPPED: QINFER_AGENTS_DIR is not set (.ci/run sets it after installing the \
              pinned agents from tools/agents into .ci/agents)\n",
        );
    }
    dir
}

/// `qinfer serve demo` with scripted answers; its log collected; killed when dropped.
struct Served {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Served {
    fn start(marker_file: &str) -> Served {
        let script = script(marker_file);
        let (child, mut log, addr) =
            common::serve(&["--ctx", "32768", "--test-script-tool-calls", &script]);
        let text = Arc::new(Mutex::new(String::new()));
        let sink = text.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while log.read_line(&mut line).is_ok_and(|n| n > 0) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Served {
            child,
            addr,
            log: text,
        }
    }

    /// Statuses of the requests to `path`, in order.
    fn statuses(&self, path: &str) -> Vec<u16> {
        let needle = format!("path=\"{path}\" status=");
        self.log
            .lock()
            .unwrap()
            .lines()
            .filter_map(|l| l.split(&needle).nth(1))
            .filter_map(|s| s.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion or for at most `limit`.
fn run(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The agent exited cleanly, executed the scripted call, and answered `Done.`.
fn check(name: &str, out: &Output, dir: &Path, marker_file: &str, served: &Served, path: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = served.log.lock().unwrap().clone();
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{stderr}\nserver:\n{log}",
        out.status
    );
    let marker = std::fs::read_to_string(dir.join(marker_file)).unwrap_or_default();
    assert_eq!(
        marker.trim(),
        MARKER,
        "{name} did not run the tool call:\n{stdout}\n{stderr}\nserver:\n{log}"
    );
    assert!(
        stdout.contains("Done."),
        "{name}: no final answer:\n{stdout}\n{stderr}"
    );
    let ok = served.statuses(path).iter().filter(|&&s| s == 200).count();
    assert!(
        ok >= 2,
        "{name}: a call and the answer to its result:\n{log}"
    );
    assert!(
        served.statuses(path).iter().all(|&s| s < 500),
        "{name}: a server error:\n{log}"
    );
}

/// Claude Code: `ANTHROPIC_BASE_URL` and a key, nothing else. Its default `max_tokens`
/// (32,000) does not fit the 32K context after its ~12K-token system prompt: it retries with
/// the budget our "input length and `max_tokens` exceed context limit" error leaves.
#[test]
fn claude_code_completes_a_turn_and_a_tool_round_trip() {
    let Some(agents) = agents_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start("marker-claude.txt");
    let mut cmd = Command::new(agents.join("node_modules/.bin/claude"));
    cmd.current_dir(dir.path())
        .args(["-p", "Write the marker file.", "--allowedTools", "Bash"])
        .args(["--output-format", "json"])
        .env("HOME", dir.path())
        .env("ANTHROPIC_BASE_URL", format!("http://{}", served.addr))
        .env("ANTHROPIC_API_KEY", "any")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1");
    let out = run(cmd, Duration::from_secs(240));
    check(
        "claude",
        &out,
        dir.path(),
        "marker-claude.txt",
        &served,
        "/v1/messages",
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["result"], "Done.", "{result}");
    assert_eq!(result["num_turns"], 2, "{result}");
    // Turn 2 resumed from the prompt cache, as Claude Code reports it.
    assert!(
        result["usage"]["cache_read_input_tokens"].as_u64().unwrap() > 1000,
        "{result}"
    );
    assert!(
        served.statuses("/v1/messages").contains(&400),
        "the context-limit retry did not happen"
    );
}

/// Codex: a model provider with `wire_api = "responses"` (`/v1/responses`, streamed, with
/// encrypted reasoning sent back and `store: false`).
#[test]
fn codex_completes_a_turn_and_a_tool_round_trip() {
    let Some(agents) = agents_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start("marker-codex.txt");
    let provider = format!(
        "model_providers.qinfer={{ name = \"qinfer\", base_url = \"http://{}/v1\", \
         wire_api = \"responses\", stream_max_retries = 0, request_max_retries = 0 }}",
        served.addr
    );
    let mut cmd = Command::new(agents.join("node_modules/.bin/codex"));
    cmd.current_dir(dir.path())
        .args(["exec", "--skip-git-repo-check"])
        .arg("--dangerously-bypass-approvals-and-sandbox")
        .args(["-c", "model_provider=\"qinfer\"", "-c", &provider])
        .args(["-m", "qinfer-demo", "Write the marker file."])
        .env("CODEX_HOME", dir.path())
        .env("OPENAI_API_KEY", "any");
    let out = run(cmd, Duration::from_secs(240));
    check(
        "codex",
        &out,
        dir.path(),
        "marker-codex.txt",
        &served,
        "/v1/responses",
    );
}

/// Qwen Code: `OPENAI_BASE_URL`, `OPENAI_API_KEY`, `OPENAI_MODEL`; its default output budget
/// (32,000) needs `QWEN_CODE_MAX_OUTPUT_TOKENS` on a context this small.
#[test]
fn qwen_code_completes_a_turn_and_a_tool_round_trip() {
    let Some(agents) = agents_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start("marker-qwen.txt");
    let mut cmd = Command::new(agents.join("node_modules/.bin/qwen"));
    cmd.current_dir(dir.path())
        .args(["-p", "Write the marker file.", "--yolo"])
        .env("HOME", dir.path())
        .env("OPENAI_BASE_URL", format!("http://{}/v1", served.addr))
        .env("OPENAI_API_KEY", "any")
        .env("OPENAI_MODEL", "qinfer-demo")
        .env("QWEN_CODE_MAX_OUTPUT_TOKENS", "4096")
        .env("QWEN_CODE_SUPPRESS_YOLO_WARNING", "1");
    let out = run(cmd, Duration::from_secs(240));
    check(
        "qwen",
        &out,
        dir.path(),
        "marker-qwen.txt",
        &served,
        "/v1/chat/completions",
    );
}
