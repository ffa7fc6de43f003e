//! The daemon's side of hardened scaling, in process through the gRPC service: an impossible
//! target is refused at the call with its rule and records no operation, cancel acts on the live
//! phase for a cold restart too, rebalance during an operation is refused by rule, and a panic in
//! an operation ends it `failed` and the next one runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::{Code, Request};

use emoe_agent::daemon::proto::{self, agent_server::Agent};
use emoe_agent::daemon::{AgentService, Daemon, NodeFacts};
use emoe_agent::serve::{FaultHook, ServeOptions, Server};
use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::checkpoint::{self, Checkpoint};
use emoe_core::deploy::{DeployOptions, Deployment};
use emoe_core::hmm::Hmm;
use emoe_core::model;
use emoe_core::plan::Topology;
use emoe_core::{DeviceId, ParallelConfig};

/// Two granules over what dp2tp2ep4 holds on a device: dp1tp2ep2 can never fit.
const TIGHT: u64 = 40 * (64 << 10);
const ROOMY: u64 = 64 << 20;

fn service(dir: &std::path::Path, capacity: u64, fault: Option<FaultHook>) -> AgentService {
    let spec = model::preset("micro-moe").unwrap().spec();
    let path = checkpoint::ensure_generated(&spec, 9, dir).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    let b = HostBackend::new(HostConfig {
        node: 0,
        devices: 8,
        capacity,
        granularity: 64 << 10,
    })
    .unwrap();
    let mut hmm = Hmm::new(Arc::new(b));
    let cfg: ParallelConfig = "dp2tp2ep4".parse().unwrap();
    let devices: Vec<DeviceId> = (0..4).map(|i| DeviceId::new(0, i)).collect();
    let o = DeployOptions {
        kv_tokens: 1024,
        ..DeployOptions::default()
    };
    let d = Deployment::load(&mut hmm, &spec, cfg, &devices, Some(&c), &o).unwrap();
    let opts = ServeOptions {
        max_batch: 4,
        fault,
        ..ServeOptions::default()
    };
    let server = Arc::new(Server::start(hmm, d, Some(c), opts).unwrap());
    let facts = NodeFacts {
        hostname: "test".into(),
        node_id: 0,
        backend: "host".into(),
        model: "micro-moe".into(),
    };
    AgentService {
        daemon: Daemon::new(
            server,
            facts,
            Topology::uniform(1e10, 1e10),
            emoe_agent::daemon::Access::default(),
        ),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

struct Stall {
    reached: mpsc::Receiver<()>,
    go: mpsc::Sender<()>,
}

fn stall_at(point: &'static str) -> (FaultHook, Stall) {
    let (rtx, reached) = mpsc::channel();
    let (go, grx) = mpsc::channel::<()>();
    let grx = Mutex::new(grx);
    let hook = FaultHook(Arc::new(move |p: &str| {
        if p == point {
            let _ = rtx.send(());
            let _ = grx.lock().unwrap().recv_timeout(Duration::from_secs(120));
        }
        Ok(())
    }));
    (hook, Stall { reached, go })
}

async fn snapshot(s: &AgentService) -> proto::Snapshot {
    s.get_snapshot(Request::new(proto::GetSnapshotRequest {}))
        .await
        .unwrap()
        .into_inner()
}

async fn scale(s: &AgentService, to: &str, strategy: &str) -> Result<u64, tonic::Status> {
    s.scale(Request::new(proto::ScaleRequest {
        to: to.into(),
        strategy: strategy.into(),
    }))
    .await
    .map(|r| r.into_inner().operation)
}

/// Wait (with a deadline) until operation `id` ends; its record.
async fn ended(s: &AgentService, id: u64) -> proto::Operation {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let snap = snapshot(s).await;
        if let Some(o) = snap.operations.iter().find(|o| o.id == id)
            && matches!(o.phase.as_str(), "done" | "failed" | "cancelled")
        {
            return o.clone();
        }
        assert!(Instant::now() < end, "operation {id} did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn active(snap: &proto::Snapshot) -> Vec<String> {
    snap.instances
        .iter()
        .filter(|i| i.state == "active")
        .map(|i| i.config.clone())
        .collect()
}

#[test]
fn an_impossible_target_is_refused_at_the_call_and_records_no_operation() {
    let dir = tempfile::tempdir().unwrap();
    let s = service(dir.path(), TIGHT, None);
    rt().block_on(async {
        for (to, strategy, rule) in [
            ("dp1tp2ep2", "cold-restart", "not enough memory"),
            ("dp8tp2ep16", "elastic", "not enough devices"),
            ("dp8tp2ep16", "cold-restart", "not enough devices"),
            ("dp3tp2ep6", "horizontal", "the target must be dp4tp2ep8"),
            ("dp3tp2ep6", "colocated", "not enough memory"),
        ] {
            let e = scale(&s, to, strategy).await.unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{strategy} {to}: {e:?}");
            assert!(
                e.message().contains(rule),
                "{strategy} {to}: {}",
                e.message()
            );
        }
        let snap = snapshot(&s).await;
        assert!(snap.operations.is_empty(), "{:?}", snap.operations);
        assert_eq!(active(&snap), ["dp2tp2ep4"]);
    });
}

#[test]
fn cancel_acts_on_the_live_phase_of_a_cold_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, stall) = stall_at("preparing");
    let s = service(dir.path(), ROOMY, Some(hook));
    rt().block_on(async {
        let id = scale(&s, "dp3tp2ep6", "cold-restart").await.unwrap();
        stall.reached.recv_timeout(Duration::from_secs(60)).unwrap();
        // No tick has run: the record still says `planned`; the operation is preparing.
        let r = s
            .cancel(Request::new(proto::CancelRequest { operation: id }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.phase, "preparing");
        stall.go.send(()).unwrap();
        let o = ended(&s, id).await;
        assert_eq!(o.phase, "cancelled", "{o:?}");
        assert!(o.error.contains("cancelled"), "{o:?}");
        assert_eq!(active(&snapshot(&s).await), ["dp2tp2ep4"]);
        // A cancel of an ended operation is refused with its phase.
        let e = s
            .cancel(Request::new(proto::CancelRequest { operation: id }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("is cancelled"), "{}", e.message());
    });
}

#[test]
fn cancel_and_rebalance_past_a_cold_restarts_switchover_are_refused_by_rule() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, stall) = stall_at("reload");
    let s = service(dir.path(), ROOMY, Some(hook));
    rt().block_on(async {
        let id = scale(&s, "dp3tp2ep6", "cold-restart").await.unwrap();
        stall.reached.recv_timeout(Duration::from_secs(60)).unwrap();
        let e = s
            .cancel(Request::new(proto::CancelRequest { operation: id }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("is switching"), "{}", e.message());
        // No instance is active now; the rule that applies is one operation at a time.
        let e = s
            .rebalance(Request::new(proto::RebalanceRequest { replicas: 0 }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("already running"), "{}", e.message());
        stall.go.send(()).unwrap();
        let o = ended(&s, id).await;
        assert_eq!(o.phase, "done", "{o:?}");
        assert_eq!(active(&snapshot(&s).await), ["dp3tp2ep6"]);
    });
}

#[test]
fn a_panic_in_an_operation_ends_it_failed_and_the_next_one_runs() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let a = Arc::clone(&armed);
    let hook = FaultHook(Arc::new(move |p: &str| {
        if p == "preparing" && a.swap(false, Ordering::SeqCst) {
            panic!("injected fault");
        }
        Ok(())
    }));
    let s = service(dir.path(), ROOMY, Some(hook));
    rt().block_on(async {
        let id = scale(&s, "dp3tp2ep6", "elastic").await.unwrap();
        let o = ended(&s, id).await;
        assert_eq!(o.phase, "failed", "{o:?}");
        assert!(o.error.contains("injected fault"), "{o:?}");
        let id = scale(&s, "dp3tp2ep6", "elastic").await.unwrap();
        let o = ended(&s, id).await;
        assert_eq!(o.phase, "done", "{o:?}");
        assert_eq!(active(&snapshot(&s).await), ["dp3tp2ep6"]);
    });
}
