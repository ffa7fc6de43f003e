//! Running `emoe-agent` as a script would: its own cache directory, JSON on stdout.

use std::process::{Command, Output};

use serde_json::Value;

pub fn agent(args: &[&str], cache: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_emoe-agent"))
        .args(args)
        .env("EMOE_CACHE_DIR", cache)
        .output()
        .expect("run emoe-agent")
}

/// Stdout as one JSON object, after checking the command succeeded.
#[allow(dead_code)] // not every test file reads JSON
pub fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}
