//! Driving a real terminal: a private tmux server with one session, `emoe`, whose screen the
//! tests read and whose keys they send. Used by the console's end-to-end tests.

use std::process::Command;
use std::time::{Duration, Instant};

pub struct Tmux {
    pub socket: String,
}

impl Tmux {
    /// A private server named after this process and `tag`, not started yet.
    pub fn new(tag: &str) -> Self {
        Self {
            socket: format!("emoe-{tag}-{}", std::process::id()),
        }
    }

    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "emoe"])
    }

    /// Start the `emoe` session running the shell command `cmd` in a `w`×`h` terminal.
    pub fn start(&self, cmd: &str, w: u16, h: u16) {
        let (w, h) = (w.to_string(), h.to_string());
        self.run(&["new-session", "-d", "-s", "emoe", "-x", &w, "-y", &h, cmd]);
    }

    /// Send keys (tmux key names: `Enter`, `q`, …) to the session.
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "emoe"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Wait until the screen shows `what`; panics with the screen after `secs`.
    pub fn wait_for(&self, what: &str, secs: u64) -> String {
        self.wait_until(what, secs, |s| s.contains(what))
    }

    /// Wait until `ok(screen)`; panics with `what` and the screen after `secs`.
    pub fn wait_until(&self, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if Instant::now() > end {
                panic!("`{what}` did not appear within {secs} s; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // kill-server leaves the socket file behind (tmux 3.3): remove it too.
        let path = self.run(&["display-message", "-p", "#{socket_path}"]);
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
        let path = path.trim();
        if path.ends_with(&self.socket) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Whether tmux can run here. When it cannot, says so on the real stderr (past the test
/// harness's capture, so the skip is never silent) and, under `EMOE_REQUIRE_TMUX=1` (CI sets it),
/// fails the test instead of skipping it.
pub fn tmux_or_skip(test: &str) -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("EMOE_REQUIRE_TMUX").is_none_or(|v| v != "1"),
            "{test}: tmux is required (EMOE_REQUIRE_TMUX=1) but is not installed"
        );
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "skipped: {test}: tmux is not installed");
    }
    ok
}
