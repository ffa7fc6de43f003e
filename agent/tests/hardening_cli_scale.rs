//! `emoe-agent scale` against a real `emoe-agent serve`: a target the node can never hold is
//! refused with exit 3 and its rule before anything is unloaded or any operation recorded, and
//! the node serves on.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Agent {
    child: Child,
    addr: String,
    cache: std::path::PathBuf,
}

impl Agent {
    /// micro-moe dp2tp2ep4 on 12 MiB devices: it fits (11.6 MiB a device), dp1tp2ep2
    /// (12.4 MiB) never does.
    fn start(dir: &Path) -> Self {
        let sock = dir.join("a.sock");
        let cache = dir.join("cache");
        let child = Command::new(env!("CARGO_BIN_EXE_emoe-agent"))
            .args(["serve", "--socket", sock.to_str().unwrap()])
            .args([
                "--model",
                "micro-moe",
                "--hbm",
                "12MiB",
                "--config",
                "dp2tp2ep4",
            ])
            .args(["--traffic", "5", "--tick", "50ms"])
            .env("EMOE_CACHE_DIR", &cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let a = Self {
            child,
            addr: format!("unix:{}", sock.display()),
            cache,
        };
        let end = Instant::now() + Duration::from_secs(120);
        while !a.cli(&["status", "--json"]).status.success() {
            assert!(Instant::now() < end, "the agent did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        a
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_emoe-agent"))
            .args(args)
            .args(["--agent", &self.addr])
            .env("EMOE_CACHE_DIR", &self.cache)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_target_that_can_never_fit_is_refused_with_exit_3_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path());
    for (args, rule) in [
        (
            ["--strategy", "cold-restart", "--to", "dp1tp2ep2"],
            "not enough memory on device",
        ),
        (
            ["--strategy", "elastic", "--to", "dp8tp2ep16"],
            "not enough devices",
        ),
        (
            ["--strategy", "horizontal", "--to", "dp3tp2ep6"],
            "the target must be dp4tp2ep8",
        ),
    ] {
        let mut v = vec!["scale", "--yes", "--wait"];
        v.extend(args);
        let out = a.cli(&v);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(rule), "{args:?}: {}", stderr(&out));
    }
    let s = a.status();
    assert_eq!(s["operations"].as_array().unwrap().len(), 0, "{s}");
    let active: Vec<&str> = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "active")
        .map(|i| i["config"].as_str().unwrap())
        .collect();
    assert_eq!(active, ["dp2tp2ep4"]);
    // Not wedged: a cold restart that fits runs to the end.
    let out = a.cli(&[
        "scale",
        "--yes",
        "--wait",
        "--strategy",
        "cold-restart",
        "--to",
        "dp2tp2ep4",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}
