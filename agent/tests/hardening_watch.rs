//! Watchers and shutdown: watchers are capped, one that does not read is dropped after a
//! bounded backlog, a resume against a restarted agent gets a full snapshot, and SIGTERM stops
//! the agent within a second with watchers attached, with a long tick, or during an operation.

mod daemon_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use daemon_support::{Agent, NODE, rt, run, stderr};
use emoe_agent::daemon::client::{AgentAddr, connect};
use emoe_agent::daemon::proto::{self, agent_client::AgentClient, watch_update::Body};
use tonic::transport::{Channel, Endpoint, Uri};

/// The stop rule is one second; the slack is for a loaded test machine.
const STOP_WITHIN: Duration = Duration::from_millis(1500);

/// A client whose streams accept only 1 KiB before the client reads: a watcher that stops
/// reading fills that at once.
async fn small_window_client(path: &Path) -> AgentClient<Channel> {
    let path = path.to_path_buf();
    let ch = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(p).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .unwrap();
    AgentClient::new(ch)
}

async fn client(sock: &Path) -> AgentClient<Channel> {
    connect(&AgentAddr::Unix(sock.to_path_buf())).await.unwrap()
}

fn sock(t: &tempfile::TempDir) -> PathBuf {
    t.path().join("a.sock")
}

#[test]
fn watchers_are_capped_and_a_slot_frees_when_one_leaves() {
    let t = tempfile::tempdir().unwrap();
    let s = sock(&t);
    let a = Agent::on_socket(&s, &["--max-watchers", "3", "--tick", "50ms"]);
    rt().block_on(async {
        let mut c = client(&s).await;
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                c.watch(proto::WatchRequest::default())
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        let e = c.watch(proto::WatchRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
        assert!(
            e.message()
                .contains("at most 3 watchers at once (--max-watchers 3)"),
            "{e}"
        );
        drop(held.pop());
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            match c.watch(proto::WatchRequest::default()).await {
                Ok(_) => break,
                Err(e) => assert!(Instant::now() < end, "no slot freed: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let out = run(&["watch", "--count", "1", "--agent", &a.addr()], &[]);
    assert!(out.status.success(), "a CLI watcher fits: {}", stderr(&out));
    a.terminate();
}

#[test]
fn a_watcher_that_does_not_read_is_dropped_after_a_bounded_backlog() {
    let t = tempfile::tempdir().unwrap();
    let s = sock(&t);
    let a = Agent::on_socket(
        &s,
        &["--max-watchers", "4", "--tick", "10ms", "--traffic", "50"],
    );
    rt().block_on(async {
        // Four watchers that never read fill every slot.
        let mut idle = Vec::new();
        for _ in 0..4 {
            let mut c = small_window_client(&s).await;
            idle.push((
                c.watch(proto::WatchRequest::default())
                    .await
                    .unwrap()
                    .into_inner(),
                c,
            ));
        }
        // They fall behind and are dropped: a slot frees without any of them leaving.
        let mut c = client(&s).await;
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match c.watch(proto::WatchRequest::default()).await {
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e}");
                    assert!(Instant::now() < end, "no idle watcher was dropped");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // What an idle watcher gets when it reads again: its bounded backlog, then the reason.
        let (mut stream, _c) = idle.remove(0);
        let mut n = 0;
        let err = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => panic!("the stream ended without a reason after {n} updates"),
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("the dropped watcher's stream ends");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
        assert!(
            err.message()
                .contains("fell 32 updates behind and was dropped"),
            "{err}"
        );
        assert!(n <= 40, "a bounded backlog: {n} updates");
    });
    a.terminate();
}

/// The first update of a watch of `sock` resuming after `seq` of `incarnation`.
async fn resume(sock: &Path, incarnation: &str, seq: u64) -> proto::WatchUpdate {
    let mut c = client(sock).await;
    c.watch(proto::WatchRequest {
        resume_from: Some(seq),
        incarnation: Some(incarnation.into()),
    })
    .await
    .unwrap()
    .into_inner()
    .message()
    .await
    .unwrap()
    .unwrap()
}

#[test]
fn a_resume_against_a_restarted_agent_gets_a_full_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let s = sock(&t);
    let args = ["--tick", "20ms", "--traffic", "50"];
    let a = Agent::on_socket(&s, &args);
    let rt = rt();
    let old = rt.block_on(async {
        let mut c = client(&s).await;
        c.get_snapshot(proto::GetSnapshotRequest {})
            .await
            .unwrap()
            .into_inner()
    });
    assert!(!old.incarnation.is_empty());
    a.terminate();
    let b = Agent::on_socket(&s, &args);
    rt.block_on(async {
        let mut c = client(&s).await;
        // Let the new agent publish a few updates, so the old client's position is in its ring.
        let end = Instant::now() + Duration::from_secs(60);
        let now = loop {
            let n = c
                .get_snapshot(proto::GetSnapshotRequest {})
                .await
                .unwrap()
                .into_inner();
            if n.seq >= 3 {
                break n;
            }
            assert!(Instant::now() < end, "the new agent publishes no updates");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_ne!(
            now.incarnation, old.incarnation,
            "a new start, a new incarnation"
        );
        let r = now.seq - 1;
        let u = resume(&s, &old.incarnation, r).await;
        match &u.body {
            Some(Body::Snapshot(snap)) => assert_eq!(snap.incarnation, now.incarnation),
            other => panic!("the old incarnation got {other:?}, not a snapshot"),
        }
        let u = resume(&s, &now.incarnation, r).await;
        assert!(
            matches!(u.body, Some(Body::Delta(_))),
            "the same start resumes: {u:?}"
        );
        assert_eq!(u.seq, r + 1);
    });
    // The CLI: INCARNATION:SEQ, and a bare sequence number is refused.
    let stale = format!("{}:1", old.incarnation);
    let out = run(
        &[
            "watch",
            "--resume-from",
            &stale,
            "--count",
            "1",
            "--agent",
            &b.addr(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let first: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap()).unwrap();
    assert!(first["body"]["Snapshot"].is_object(), "{first}");
    let out = run(
        &[
            "watch",
            "--resume-from",
            "1",
            "--count",
            "1",
            "--agent",
            &b.addr(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("give INCARNATION:SEQ"),
        "{}",
        stderr(&out)
    );
    b.terminate();
}

#[test]
fn sigterm_stops_the_agent_with_watchers_attached() {
    let t = tempfile::tempdir().unwrap();
    let s = sock(&t);
    let a = Agent::on_socket(&s, &["--tick", "20ms", "--traffic", "20"]);
    let rt = rt();
    // One watcher that reads, one that does not.
    let (reader, _idle) = rt.block_on(async {
        let mut c = client(&s).await;
        let mut stream = c
            .watch(proto::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        let reader = tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        });
        let mut i = small_window_client(&s).await;
        let idle = i
            .watch(proto::WatchRequest::default())
            .await
            .unwrap()
            .into_inner();
        (reader, (idle, i))
    });
    let (took, _) = a.terminate();
    assert!(took < STOP_WITHIN, "stopped in {took:?}");
    let end = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), reader).await });
    assert!(end.is_ok(), "the reading watcher's stream ended");
    assert!(!s.exists());
}

#[test]
fn sigterm_stops_an_agent_with_the_longest_tick_and_the_tick_is_bounded() {
    let t = tempfile::tempdir().unwrap();
    let s = sock(&t);
    // The longest tick: the ticker is woken from its wait, not joined after it.
    let a = Agent::on_socket(&s, &["--tick", "1m"]);
    let (took, _) = a.terminate();
    assert!(took < STOP_WITHIN, "stopped in {took:?}");
    for (tick, shown) in [
        ("1h", "--tick <TICK>': `1h` is outside 10ms..=1m"),
        ("5ms", "--tick <TICK>': `5ms` is outside 10ms..=1m"),
    ] {
        let mut args = vec!["serve", "--socket", s.to_str().unwrap(), "--tick", tick];
        args.extend_from_slice(&NODE);
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(shown), "{}", stderr(&out));
        assert!(!s.exists());
    }
}

#[test]
fn sigterm_stops_the_agent_during_an_operation() {
    // A cold restart of tiny-moe takes a second or more and cannot stop half-way; an elastic
    // scale is cancelled and rolls back.
    for strategy in ["cold-restart", "elastic"] {
        let t = tempfile::tempdir().unwrap();
        let s = sock(&t);
        let args = [
            "--socket",
            s.to_str().unwrap(),
            "--model",
            "tiny-moe",
            "--tick",
            "20ms",
        ];
        let p = s.clone();
        let a = Agent::spawn(
            &args,
            |_| {},
            || std::os::unix::net::UnixStream::connect(&p).is_ok(),
        );
        rt().block_on(async {
            let mut c = client(&s).await;
            let mut w = c
                .watch(proto::WatchRequest::default())
                .await
                .unwrap()
                .into_inner();
            c.scale(proto::ScaleRequest {
                to: "dp3tp2ep6".into(),
                strategy: strategy.into(),
            })
            .await
            .unwrap();
            // Until the operation is seen running.
            loop {
                let u = w.message().await.unwrap().unwrap();
                let ops = match u.body {
                    Some(Body::Snapshot(s)) => s.operations,
                    Some(Body::Delta(d)) => d.operations,
                    None => Vec::new(),
                };
                if let Some(o) = ops.first() {
                    assert!(
                        !matches!(o.phase.as_str(), "done" | "failed"),
                        "{strategy}: {o:?}"
                    );
                    break;
                }
            }
        });
        let (took, err) = a.terminate();
        assert!(took < STOP_WITHIN, "{strategy}: stopped in {took:?}: {err}");
        assert!(!s.exists());
    }
}
