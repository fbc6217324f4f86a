//! Helpers of the tests that run `qinfer` as a process.

#![allow(dead_code)]

#[path = "../../../server/tests/common/http.rs"]
pub mod http;
pub mod hub;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// A running `qinfer serve`: the child, its log (after the `listening` line) and its address.
pub type Served = (
    std::process::Child,
    BufReader<std::process::ChildStderr>,
    std::net::SocketAddr,
);

/// Starts `qinfer serve demo` with `args`.
pub fn serve(args: &[&str]) -> Served {
    serve_env(args, &[])
}

/// [`serve`] with environment variables.
pub fn serve_env(args: &[&str], env: &[(&str, &str)]) -> Served {
    serve_startup(args, env).0
}

/// [`serve_env`], and what the server logged up to its `listening` line.
pub fn serve_startup(args: &[&str], env: &[(&str, &str)]) -> (Served, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qinfer"))
        .args(["serve", "demo", "--port", "0", "--threads", "2"])
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let mut startup = String::new();
    let addr = loop {
        line.clear();
        assert!(
            log.read_line(&mut line).unwrap() > 0,
            "serve exited before listening: {startup}"
        );
        startup.push_str(&line);
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    ((child, log, addr), startup)
}
