//! The OpenAI-compatible API through the official Python client (`openai`): a real `emoe-agent
//! serve --http` on micro-moe, driven by tests/python/openai_client.py — completions, chat,
//! streaming, log-probabilities, the model list, the error cases, and concurrent streams through
//! a scale up and back down.
//!
//! The interpreter is `$EMOE_PYTHON` (CI makes a venv with `openai` and sets it). Without it, or
//! without `openai` in it, the test says `skipped: …` — unless `EMOE_REQUIRE_OPENAI=1`, when it
//! fails instead.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_emoe-agent");
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/python/openai_client.py"
);

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The interpreter to use, or why there is none.
fn python() -> Result<String, String> {
    let py = std::env::var("EMOE_PYTHON")
        .map_err(|_| "EMOE_PYTHON is not set (a python with the openai package)".to_string())?;
    let out = Command::new(&py)
        .args(["-c", "import openai; print(openai.__version__)"])
        .output()
        .map_err(|e| format!("EMOE_PYTHON={py}: cannot run it: {e}"))?;
    if !out.status.success() {
        // The traceback's last line says why (`No module named 'openai'`).
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "EMOE_PYTHON={py} cannot import openai: {}",
            err.lines().last().unwrap_or("").trim()
        ));
    }
    Ok(py)
}

#[test]
fn the_official_openai_client_through_a_scale_up_and_down() {
    let py = match python() {
        Ok(p) => p,
        Err(why) => {
            assert!(
                std::env::var_os("EMOE_REQUIRE_OPENAI").is_none_or(|v| v != "1"),
                "the openai client is required (EMOE_REQUIRE_OPENAI=1): {why}"
            );
            println!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let cache = std::env::var_os("EMOE_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("cache"));
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--socket")
        .arg(&sock)
        .args([
            "--model",
            "micro-moe",
            "--devices",
            "4",
            "--config",
            "dp1tp1ep1",
        ])
        .args(["--hbm", "256MiB", "--kv-tokens", "2048"])
        .args(["--http", "tcp://127.0.0.1:0"])
        .env("EMOE_CACHE_DIR", &cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn emoe-agent serve");
    // Every line of the agent's stderr, read to its end so the pipe never fills.
    let (tx, rx) = mpsc::channel::<String>();
    let err = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let agent = Killed(child);
    let mut seen = Vec::new();
    let end = Instant::now() + Duration::from_secs(300);
    let base = loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line
                    .strip_prefix("emoe-agent: OpenAI-compatible API on ")
                    .map(str::to_string);
                seen.push(line);
                if let Some(url) = found {
                    break url;
                }
            }
            Err(_) => panic!(
                "the agent printed no HTTP address within 300 s: {}",
                seen.join("\n")
            ),
        }
    };
    assert!(
        base.starts_with("http://127.0.0.1:") && base.ends_with("/v1"),
        "{base}"
    );
    let mut script = Command::new(&py)
        .arg(SCRIPT)
        .args(["--base-url", &base])
        .arg("--agent")
        .arg(format!("unix:{}", sock.display()))
        .args(["--exe", BIN, "--up", "dp2tp1ep2", "--down", "dp1tp1ep1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the python script");
    // Bounded: a hung client must fail the test, not hold it.
    let end = Instant::now() + Duration::from_secs(600);
    while script.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = script.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = script.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let agent_log: Vec<String> = seen.into_iter().chain(rx.try_iter()).collect();
    drop(agent);
    let summary: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "the script printed no JSON summary (exit {:?}):\n{stdout}\n{stderr}\nagent:\n{}",
                out.status.code(),
                agent_log.join("\n")
            )
        });
    let failed: Vec<&serde_json::Value> = summary["checks"]
        .as_array()
        .map(|c| c.iter().filter(|c| c["ok"] != true).collect())
        .unwrap_or_default();
    assert!(
        out.status.success() && summary["ok"] == true && failed.is_empty(),
        "exit {:?}; failed checks: {}\nstderr: {stderr}",
        out.status.code(),
        serde_json::to_string_pretty(&failed).unwrap()
    );
    // The scaling part ran: both steps, and streams were open across each.
    let steps = summary["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{summary}");
    for s in steps {
        assert_eq!(s["rc"], 0, "{s}");
        assert!(s["streams_across"].as_u64().unwrap_or(0) > 0, "{s}");
    }
    assert_eq!(summary["streams_failed"], 0, "{summary}");
    println!("{summary}");
}
