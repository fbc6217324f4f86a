//! `qinfer run` driven through a real terminal (tmux): a turn is answered, `/nothink` changes
//! the prompt, and Ctrl-C interrupts a long answer without ending the program.

use std::process::Command;
use std::time::{Duration, Instant};

struct Session(String);

impl Session {
    fn start(name: &str, args: &str) -> Session {
        let bin = env!("CARGO_BIN_EXE_qinfer");
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", name])
            .output();
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "220",
                "-y",
                "50",
                &format!("{bin} run {args}"),
            ])
            .status()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(status.success());
        let s = Session(name.to_string());
        s.wait_for(|screen| screen.contains(">>> "), "the first prompt");
        s
    }

    fn screen(&self) -> String {
        let o = Command::new("tmux")
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", &self.0])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", self.0.as_str()];
        args.extend_from_slice(keys);
        assert!(Command::new("tmux").args(&args).status().unwrap().success());
    }

    fn wait_for(&self, ok: impl Fn(&str) -> bool, what: &str) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "timed out waiting for {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

#[test]
fn a_turn_is_answered_and_nothink_changes_the_prompt() {
    let s = Session::start("qinfer-run-turns", "--max-tokens 8 --seed 1 --show-prompt");
    s.keys(&["What is 2 + 2?", "Enter"]);
    let screen = s.wait_for(|x| x.matches("tok/s").count() >= 1, "the first answer");
    assert!(
        screen.contains("DEMO model"),
        "the demo says what it is:\n{screen}"
    );
    assert!(
        screen.contains(r#"<|im_start|>assistant\n<think>\n""#),
        "thinking prompt:\n{screen}"
    );
    s.keys(&["/nothink", "Enter"]);
    s.wait_for(|x| x.contains("thinking off"), "the /nothink confirmation");
    s.keys(&["And 3 + 3?", "Enter"]);
    let screen = s.wait_for(|x| x.matches("tok/s").count() >= 2, "the second answer");
    assert!(
        screen.contains(r#"<|im_start|>assistant\n<think>\n\n</think>\n\n""#),
        "the non-thinking prompt closes the think block:\n{screen}"
    );
    s.keys(&["/exit", "Enter"]);
}

#[test]
fn ctrl_c_interrupts_an_answer_and_the_next_turn_works() {
    let s = Session::start("qinfer-run-ctrlc", "--max-tokens 20000 --seed 2");
    s.keys(&["Write a very long story.", "Enter"]);
    // Let it stream for a moment, then interrupt.
    let before = s.screen();
    s.wait_for(|x| x.len() > before.len() + 40, "streamed output");
    s.keys(&["C-c"]);
    let screen = s.wait_for(|x| x.contains("interrupted;"), "the interruption note");
    assert!(
        screen.matches(">>> ").count() >= 2,
        "back at the prompt:\n{screen}"
    );
    s.keys(&["Another question?", "Enter"]);
    let mark = s.screen().len();
    s.wait_for(|x| x.len() > mark + 40, "the next answer streaming");
    s.keys(&["C-c"]);
    s.wait_for(
        |x| x.matches("interrupted;").count() >= 2,
        "the second interruption",
    );
    s.keys(&["/exit", "Enter"]);
}
