//! A real `emoe-agent serve` on a temporary socket, driven by the CLI clients: state, plans,
//! a scale that streams every phase, refusals with the right exit codes, read-only mode,
//! and a clean shutdown on SIGTERM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Agent {
    child: Child,
    sock: PathBuf,
    cache: PathBuf,
}

impl Agent {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let sock = dir.join("agent.sock");
        let cache = dir.join("cache");
        let mut args = vec![
            "serve",
            "--socket",
            sock.to_str().unwrap(),
            "--model",
            "micro-moe",
            "--hbm",
            "256MiB",
            "--config",
            "dp2tp2ep4",
        ];
        args.extend_from_slice(extra);
        let child = Command::new(common::bin("emoe-agent"))
            .args(&args)
            .env("EMOE_CACHE_DIR", &cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let a = Self { child, sock, cache };
        let end = Instant::now() + Duration::from_secs(120);
        while !a.sock.exists() {
            assert!(Instant::now() < end, "the agent did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        a
    }

    fn addr(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    fn cli(&self, args: &[&str]) -> Output {
        let addr = self.addr();
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--agent", &addr]);
        Command::new(common::bin("emoe-agent"))
            .args(&v)
            .env("EMOE_CACHE_DIR", &self.cache)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn stop(mut self) -> String {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let out = self.child.wait_with_output_timeout();
        assert!(!self.sock.exists(), "the socket is removed on shutdown");
        out
    }
}

trait WaitTimeout {
    fn wait_with_output_timeout(&mut self) -> String;
}

impl WaitTimeout for Child {
    fn wait_with_output_timeout(&mut self) -> String {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                assert!(st.success(), "the agent exited with {st}: {err}");
                return err;
            }
            assert!(Instant::now() < end, "the agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn an_agent_serves_its_state_plans_scales_and_refuses_by_rule() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), &["--traffic", "5"]);
    let mode = std::fs::metadata(&a.sock).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        mode.permissions().mode() & 0o777,
        0o600,
        "the socket is private"
    );

    let s = json(&a.cli(&["status", "--json"]));
    assert_eq!(s["node"]["model"], "micro-moe");
    assert_eq!(s["devices"].as_array().unwrap().len(), 8);
    assert_eq!(s["instances"][0]["config"], "dp2tp2ep4");
    assert_eq!(s["instances"][0]["state"], "active");
    // Each instance carries its own serving figures.
    assert!(s["instances"][0]["running"].as_u64().is_some());
    assert!(s["instances"][0]["tokens_per_s"].as_f64().is_some());
    assert!(!s["placement"].as_array().unwrap().is_empty());
    let regions = s["devices"][0]["regions"].as_array().unwrap();
    assert!(regions.iter().any(|r| r["kind"] == "expert"));

    // The plan, from the agent.
    let p = json(&a.cli(&["plan", "--to", "dp3tp2ep6", "--json"]));
    assert_eq!(p["from"], "dp2tp2ep4");
    assert_eq!(p["devices_added"].as_array().unwrap().len(), 2);
    assert!(p["experts_moved"].as_u64().unwrap() > 0);

    // A scale that streams its phases to the end.
    let out = a.cli(&["scale", "--to", "dp3tp2ep6", "--yes", "--wait", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let phases: Vec<&str> = lines.iter().filter_map(|l| l["phase"].as_str()).collect();
    assert_eq!(phases.last(), Some(&"done"), "{lines:?}");
    let s = json(&a.cli(&["status", "--json"]));
    // Every phase of the operation is in the event stream, in order.
    let phases: Vec<String> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter_map(|m| m.strip_prefix("operation 1: "))
        .map(str::to_string)
        .collect();
    let want = ["preparing", "switching", "releasing", "done"];
    let seen: Vec<&str> = phases
        .iter()
        .map(String::as_str)
        .filter(|p| want.contains(p))
        .collect();
    assert_eq!(seen, want, "{phases:?}");
    let migrations = s["migrations"].as_array().unwrap();
    assert!(!migrations.is_empty(), "the copies of the step are listed");
    assert!(
        migrations
            .iter()
            .all(|m| m["done"] == true && m["bytes"].as_u64().unwrap() > 0)
    );
    assert!(
        migrations
            .iter()
            .any(|m| m["what"].as_str().unwrap().starts_with("expert"))
    );
    let active: Vec<_> = s["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "active")
        .collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["config"], "dp3tp2ep6");

    // Refusals: exit codes and the rule, nothing changed.
    let out = a.cli(&["scale", "--to", "dp3tp4ep12", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = a.cli(&["scale", "--to", "dp2tp4ep8", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("TP is fixed"), "{}", stderr(&out));
    let out = a.cli(&["scale", "--to", "dp4tp2ep8"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--yes is needed without a terminal"
    );
    let out = a.cli(&["cancel", "99"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no operation 99"));
    // A second operation while one runs.
    let first = a.cli(&[
        "scale",
        "--to",
        "dp2tp2ep4",
        "--strategy",
        "cold-restart",
        "--yes",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = a.cli(&["scale", "--to", "dp4tp2ep8", "--yes"]);
    if second.status.code() == Some(3) {
        assert!(
            stderr(&second).contains("already running"),
            "{}",
            stderr(&second)
        );
    }

    // Watch: a snapshot first, then numbered updates.
    let out = a.cli(&["watch", "--count", "2"]);
    let ups: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ups.len(), 2);
    assert!(ups[0]["body"]["Snapshot"].is_object());
    assert!(ups[1]["seq"].as_u64().unwrap() > ups[0]["seq"].as_u64().unwrap());
    let log = a.stop();
    assert!(log.contains("stopped"), "{log}");
}

#[test]
fn a_readonly_agent_refuses_mutations_and_a_second_agent_cannot_take_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let a = Agent::start(dir.path(), &["--readonly"]);
    let out = a.cli(&["scale", "--to", "dp3tp2ep6", "--yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("read-only"));
    assert!(json(&a.cli(&["status", "--json"]))["instances"].is_array());
    let second = Command::new(common::bin("emoe-agent"))
        .args([
            "serve",
            "--socket",
            a.sock.to_str().unwrap(),
            "--model",
            "micro-moe",
        ])
        .env("EMOE_CACHE_DIR", &a.cache)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&second.stderr).contains("already listens"));
    a.stop();
    // No agent: a clear error naming the address.
    let out = Command::new(common::bin("emoe-agent"))
        .args([
            "status",
            "--agent",
            &format!("unix:{}", dir.path().join("none.sock").display()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("none.sock"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tokens_metrics_resume_and_remote_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let a = Agent::start(
        dir.path(),
        &[
            "--token-file",
            token.to_str().unwrap(),
            "--metrics",
            &metrics,
            "--traffic",
            "5",
        ],
    );
    // Mutations need the token; reads do not.
    let out = a.cli(&["scale", "--to", "dp3tp2ep6", "--yes"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs a token"), "{}", stderr(&out));
    let out = a.cli(&[
        "scale",
        "--to",
        "dp3tp2ep6",
        "--yes",
        "--token-file",
        wrong.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("does not match"));
    let out = a.cli(&[
        "scale",
        "--to",
        "dp3tp2ep6",
        "--yes",
        "--wait",
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(json(&a.cli(&["status", "--json"]))["devices"].is_array());

    // Prometheus text.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("emoe_device_memory_used_bytes{device=\"0/0\"}"),
        "{body}"
    );
    assert!(
        body.contains("emoe_operations{kind=\"scale\",phase=\"done\"} 1"),
        "{body}"
    );
    assert!(body.contains("emoe_throughput_tokens_per_second"));

    // Resume after a sequence number: the next updates, not a new snapshot.
    let out = a.cli(&["watch", "--count", "3"]);
    let ups: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seq = ups[1]["seq"].as_u64().unwrap();
    // A resume names the agent's start (the incarnation of the first snapshot) too.
    let inc = ups[0]["body"]["Snapshot"]["incarnation"].as_str().unwrap();
    let out = a.cli(&[
        "watch",
        "--resume-from",
        &format!("{inc}:{seq}"),
        "--count",
        "1",
    ]);
    let next: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(next["seq"].as_u64().unwrap(), seq + 1, "{next}");
    assert!(next["body"]["Delta"].is_object(), "{next}");
    // Too far behind (a sequence never published): a fresh snapshot.
    let out = a.cli(&[
        "watch",
        "--resume-from",
        &format!("{inc}:999999999"),
        "--count",
        "1",
    ]);
    let fresh: serde_json::Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert!(fresh["body"]["Snapshot"].is_object());
    a.stop();

    // A non-loopback TCP address without --allow-remote and a token is refused by rule.
    let out = Command::new(common::bin("emoe-agent"))
        .args([
            "serve",
            "--listen",
            "tcp://0.0.0.0:1",
            "--model",
            "micro-moe",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

#[test]
fn the_watch_benchmark_reports_updates_and_agent_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin("emoe-agent"))
        .args([
            "bench",
            "watch",
            "--model",
            "micro-moe",
            "--seconds",
            "1",
            "--watchers",
            "4",
            "--json",
        ])
        .env("EMOE_CACHE_DIR", dir.path())
        .output()
        .unwrap();
    let r = json(&out);
    assert_eq!(r["busy"]["watchers"], 4);
    assert!(r["busy"]["updates_per_s"].as_f64().unwrap() > 0.0, "{r}");
    // Serving traffic to four watchers costs the agent measurable CPU; the idle verdict is the
    // idle figure against its 1 % target.
    let busy_cpu = r["busy"]["agent_cpu_percent"].as_f64().unwrap();
    assert!(busy_cpu.is_finite() && busy_cpu > 0.0, "{r}");
    let idle_cpu = r["idle"]["agent_cpu_percent"].as_f64().unwrap();
    assert!(idle_cpu.is_finite(), "{r}");
    assert_eq!(
        r["idle_under_1_percent"].as_bool(),
        Some(idle_cpu < 1.0),
        "{r}"
    );
}
