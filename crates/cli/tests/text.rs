//! The text commands against their references: `tokenize` (the Python `tokenizers` corpus),
//! `render` (transformers' rendering of the chat-template matrix), and `generate --prompt`.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn qinfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args(args)
        .output()
        .expect("qinfer runs")
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn tokenize_prints_the_reference_ids() {
    let corpus: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/tokenizer/corpus.json")).unwrap(),
    )
    .unwrap();
    let entries = corpus["entries"].as_array().unwrap();
    // A handful of varied entries through the binary (the full corpus runs in the engine tests).
    for entry in entries
        .iter()
        .filter(|e| !e["text"].as_str().unwrap().is_empty())
        .step_by(15)
    {
        let text = entry["text"].as_str().unwrap();
        let got: serde_json::Value =
            serde_json::from_str(&ok(&qinfer(&["tokenize", "demo", text]))).unwrap();
        assert_eq!(got, entry["ids"], "{text:?}");
    }
}

#[test]
fn render_prints_what_transformers_renders() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/chat-templates/cases.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for case in cases.as_array().unwrap() {
        let expected = case["expected"].as_str();
        if case["template"] != "qwen3.6"
            || case["add_generation_prompt"] != true
            || expected.is_none()
        {
            continue;
        }
        let messages = dir.path().join("messages.json");
        std::fs::write(&messages, case["messages"].to_string()).unwrap();
        let mut args = vec![
            "render".to_string(),
            "demo".into(),
            "--messages".into(),
            messages.display().to_string(),
        ];
        if !case["tools"].is_null() {
            let tools = dir.path().join("tools.json");
            std::fs::write(&tools, case["tools"].to_string()).unwrap();
            args.extend(["--tools".into(), tools.display().to_string()]);
        }
        args.extend(["--kwargs".into(), case["kwargs"].to_string()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(
            ok(&qinfer(&argv)),
            expected.unwrap(),
            "case {}",
            case["name"]
        );
        checked += 1;
        if checked == 12 {
            break;
        }
    }
    assert_eq!(checked, 12, "enough qwen3.6 generation-prompt cases");
}

#[test]
fn generate_chat_json_has_ids_text_reasoning_and_tool_calls() {
    let run = || {
        let o = qinfer(&[
            "generate",
            "demo",
            "--prompt",
            "Hello",
            "--chat",
            "--max-tokens",
            "12",
            "--reasoning-budget",
            "4",
            "--json",
        ]);
        serde_json::from_str::<serde_json::Value>(&ok(&o)).unwrap()
    };
    let a = run();
    for key in ["ids", "text", "reasoning", "tool_calls"] {
        assert!(a.get(key).is_some(), "missing {key}: {a}");
    }
    assert_eq!(a, run(), "greedy by default: the same output twice");
    assert!(!a["reasoning"].as_str().unwrap().is_empty());
    assert_eq!(a["ids"].as_array().unwrap().len(), 12);
}

#[test]
fn text_command_errors_are_clear() {
    let cases: [(&[&str], &str); 3] = [
        (&["tokenize", "/nonexistent", "x"], "no such file"),
        (
            &["render", "demo", "--messages", "/nonexistent.json"],
            "cannot read",
        ),
        (
            &[
                "generate",
                "demo",
                "--prompt",
                "x",
                "--max-tokens",
                "2",
                "--top-p",
                "0",
            ],
            "top_p",
        ),
    ];
    for (args, want) in cases {
        let o = qinfer(args);
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(want) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}
