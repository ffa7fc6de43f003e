//! Shared helpers for the end-to-end tests: the workspace's real binaries.

#[allow(dead_code)] // only the console's tests drive a terminal
pub mod tmux;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Path to a workspace binary (`emoe`, `emoe-agent`), built once per test process with the same
/// profile as the tests, so the tests always run the current code.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        // `--tests` resolves features as `cargo test` does (dev-dependencies included), so the
        // binaries `cargo test` already built are reused instead of rebuilding their
        // dependencies with another feature set.
        cmd.args(["build", "--workspace", "--bins", "--tests"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build --bins failed");
    });
    // target/<profile>/deps/<test binary> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    dir.join(name)
}
