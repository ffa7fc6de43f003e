//! Sixteen concurrent watchers of a real agent see the same final state after a scale; an
//! oversized request is refused and changes nothing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emoe_agent::daemon::apply_delta;
use emoe_agent::daemon::client::{AgentAddr, connect};
use emoe_agent::daemon::proto::{self, watch_update::Body};

#[test]
fn sixteen_watchers_see_the_same_final_state() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_emoe-agent"))
        .args([
            "serve",
            "--socket",
            sock.to_str().unwrap(),
            "--model",
            "micro-moe",
            "--hbm",
            "256MiB",
            "--config",
            "dp2tp2ep4",
            "--tick",
            "50ms",
            "--traffic",
            "5",
        ])
        .env("EMOE_CACHE_DIR", dir.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = AgentAddr::Unix(sock.clone());
    let finals = rt.block_on(async {
        let end = Instant::now() + Duration::from_secs(120);
        let mut c = loop {
            if let Ok(mut c) = connect(&addr).await
                && c.get_snapshot(proto::GetSnapshotRequest {}).await.is_ok()
            {
                break c;
            }
            assert!(Instant::now() < end, "the agent did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let mut watchers = Vec::new();
        for _ in 0..16 {
            let mut wc = connect(&addr).await.unwrap();
            let mut stream = wc
                .watch(proto::WatchRequest::default())
                .await
                .unwrap()
                .into_inner();
            watchers.push(tokio::spawn(async move {
                let mut state: Option<proto::Snapshot> = None;
                loop {
                    let u = stream.message().await.unwrap().expect("the stream goes on");
                    match &u.body {
                        Some(Body::Snapshot(s)) => state = Some(s.clone()),
                        Some(Body::Delta(d)) => apply_delta(state.as_mut().unwrap(), u.seq, d),
                        None => {}
                    }
                    let s = state.as_ref().unwrap();
                    let done = s.operations.iter().any(|o| o.phase == "done");
                    let active = s
                        .instances
                        .iter()
                        .filter(|i| i.state == "active")
                        .map(|i| i.config.clone())
                        .collect::<Vec<_>>();
                    if done && active == ["dp3tp2ep6"] {
                        return (active, s.operations.clone());
                    }
                }
            }));
        }
        // An oversized request is refused and changes nothing.
        let before = c
            .get_snapshot(proto::GetSnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        let err = c
            .scale(proto::ScaleRequest {
                to: "x".repeat(2 << 20),
                strategy: String::new(),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err.code(),
                tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            ),
            "{err}"
        );
        let after = c
            .get_snapshot(proto::GetSnapshotRequest {})
            .await
            .unwrap()
            .into_inner();
        // What a refused call could change: the instances' configs, states and devices (the
        // requests they run come and go with the traffic meanwhile).
        let shape = |s: &proto::Snapshot| {
            s.instances
                .iter()
                .map(|i| (i.id, i.config.clone(), i.state.clone(), i.devices.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(shape(&before), shape(&after));
        assert!(after.operations.is_empty(), "no operation started");
        c.scale(proto::ScaleRequest {
            to: "dp3tp2ep6".into(),
            strategy: String::new(),
        })
        .await
        .unwrap();
        let mut finals = Vec::new();
        for w in watchers {
            finals.push(
                tokio::time::timeout(Duration::from_secs(60), w)
                    .await
                    .expect("every watcher sees the end")
                    .unwrap(),
            );
        }
        finals
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(finals.len(), 16);
    for f in &finals {
        assert_eq!(f, &finals[0], "the same final state");
    }
}
