//! Error messages: each cause named once, echoed values cut short, and a client whose agent
//! died during `scale --wait` says so with what it knows of the operation.

mod daemon_support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use daemon_support::{Agent, BIN, cache, rt, run, stderr};
use emoe_agent::daemon::client::{AgentAddr, connect};
use emoe_agent::daemon::proto;

#[test]
fn each_cause_is_named_once() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let under = file.join("x");
    let sock = t.path().join("a.sock");
    let cause = "Not a directory (os error 20)";
    for args in [
        vec![
            "serve",
            "--socket",
            sock.to_str().unwrap(),
            "--model",
            "micro-moe",
            "--cache-dir",
            under.to_str().unwrap(),
        ],
        vec![
            "serve",
            "--socket",
            sock.to_str().unwrap(),
            "--model",
            under.to_str().unwrap(),
        ],
        vec!["status", "--agent", &format!("unix:{}", under.display())],
    ] {
        let out = run(&args, &[]);
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(0), "{err}");
        assert_eq!(err.matches(cause).count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn a_huge_value_is_echoed_cut_short() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("a.sock");
    let a = Agent::on_socket(&s, &[]);
    rt().block_on(async {
        let mut c = connect(&AgentAddr::Unix(s.clone())).await.unwrap();
        let huge = "x".repeat(100_000);
        let e = c
            .plan(proto::PlanRequest { to: huge.clone() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().len() < 1000, "{} bytes", e.message().len());
        assert!(
            e.message().contains("… (100000 characters)"),
            "{}",
            e.message()
        );
        let e = c
            .scale(proto::ScaleRequest {
                to: huge,
                strategy: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().len() < 1000, "{} bytes", e.message().len());
        let snap = c
            .get_snapshot(proto::GetSnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(snap.operations.is_empty(), "nothing started");
    });
    a.terminate();
}

#[test]
fn a_client_whose_agent_died_during_scale_wait_says_so() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("a.sock");
    let sock = s.to_str().unwrap().to_string();
    // A cold restart of tiny-moe runs for a second or more: long enough to kill the agent in it.
    let p = s.clone();
    let mut agent = Agent::spawn(
        &["--socket", &sock, "--model", "tiny-moe", "--tick", "20ms"],
        |_| {},
        || std::os::unix::net::UnixStream::connect(&p).is_ok(),
    );
    let mut cli = Command::new(BIN)
        .args([
            "scale",
            "--to",
            "dp3tp2ep6",
            "--strategy",
            "cold-restart",
            "--yes",
            "--wait",
            "--agent",
            &format!("unix:{sock}"),
        ])
        .env("EMOE_CACHE_DIR", cache())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cli.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("operation 1 started"), "{first}");
    agent.child.kill().unwrap();
    agent.child.wait().unwrap();
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let end = Instant::now() + Duration::from_secs(30);
    let st = loop {
        if let Some(st) = cli.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < end, "the client did not notice");
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = rest.join("\n");
    assert_eq!(st.code(), Some(1), "{text}");
    assert!(
        text.contains("the agent went away during operation 1"),
        "{text}"
    );
    assert!(
        text.contains("last seen ") || text.contains("no progress seen yet"),
        "{text}"
    );
    assert!(text.contains("outcome is unknown"), "{text}");
}
