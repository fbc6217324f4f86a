//! The official `openai` and `anthropic` Python SDKs against the server.
//!
//! `.ci/run` installs the pinned SDKs (`tools/sdk/requirements.txt`) into `.ci/venv` and sets
//! `QINFER_SDK_PYTHON` to its interpreter. With the variable set, this test runs
//! `tools/sdk/check_sdks.py` against a server on a random port and fails on any error,
//! including a broken venv. Without it (a developer with no Python), it skips and says so.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{MODEL, TestServer, gpu_bundle};

#[test]
fn official_python_sdks_complete_a_streaming_chat_and_a_tool_call() {
    let Some(python) = sdk_python() else { return };
    check(
        &python,
        TestServer::start(|c| c.api_key = Some("sdk-test-key".into())),
        5,
    );
}

/// The same SDK check against a server whose model runs on the GPU backend, with one seeded
/// structured-output answer instead of five (each is up to 200 tokens, and lavapipe, the
/// software driver CI has, runs the demo's 248,320-row LM head in ~0.5 s a token).
#[test]
fn official_python_sdks_work_against_a_model_on_the_gpu() {
    let Some(python) = sdk_python() else { return };
    let Some(bundle) = gpu_bundle() else { return };
    check(
        &python,
        TestServer::start_with(bundle, |c| c.api_key = Some("sdk-test-key".into())),
        1,
    );
}

fn sdk_python() -> Option<std::ffi::OsString> {
    let Some(python) = std::env::var_os("QINFER_SDK_PYTHON") else {
        let mut err = std::io::stderr().lock();
        let _ = std::io::Write::write_all(
            &mut err,
            b"SKIPPED: QINFER_SDK_PYTHON is not set (.ci/run sets it after installing the \
              pinned openai and anthropic SDKs into .ci/venv)\n",
        );
        return None;
    };
    Some(python)
}

/// Runs the check script against `server`, `seeds` seeded structured-output answers.
fn check(python: &std::ffi::OsStr, server: TestServer, seeds: usize) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/sdk/check_sdks.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(format!("http://{}", server.addr))
        .arg(MODEL)
        .arg("sdk-test-key")
        .arg(seeds.to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SDK check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("openai ok")
            && stdout.contains("anthropic ok")
            && stdout.contains("images ok"),
        "{stdout}"
    );
}
