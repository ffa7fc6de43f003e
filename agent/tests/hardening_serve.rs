//! Hardening of scaling while serving: a step that cannot fit is refused before anything
//! changes, a failed cold restart serves again, cancel is carried out or refused for every
//! strategy, a panic in an operation leaves the node usable, horizontal scaling honours its
//! target and no device is booked twice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use emoe_agent::scale::{Event as ScaleEvent, Phase};
use emoe_agent::serve::{
    FaultHook, InstanceState, ServeError, ServeEvent, ServeOptions, Server, Submit,
};
use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::checkpoint::{self, Checkpoint};
use emoe_core::deploy::{DeployOptions, Deployment};
use emoe_core::hmm::Hmm;
use emoe_core::model;
use emoe_core::plan::{Policy, Topology};
use emoe_core::scale::Strategy;
use emoe_core::{DeviceId, ParallelConfig};

fn cfg(s: &str) -> ParallelConfig {
    s.parse().unwrap()
}

fn topo() -> Topology {
    Topology::uniform(1e10, 1e10)
}

/// A server of `config` on `n` host devices of `capacity` bytes.
fn server(
    dir: &std::path::Path,
    config: &str,
    n: u32,
    capacity: u64,
    fault: Option<FaultHook>,
) -> Server {
    let spec = model::preset("micro-moe").unwrap().spec();
    let path = checkpoint::ensure_generated(&spec, 9, dir).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    let b = HostBackend::new(HostConfig {
        node: 0,
        devices: n,
        capacity,
        granularity: 64 << 10,
    })
    .unwrap();
    let mut hmm = Hmm::new(Arc::new(b));
    let cfg = cfg(config);
    let devices: Vec<DeviceId> = (0..cfg.devices()).map(|i| DeviceId::new(0, i)).collect();
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
    Server::start(hmm, d, Some(c), opts).unwrap()
}

/// Two granules over what dp2tp2ep4 holds on a device (36 of 64 KiB): dp1tp2ep2 (48) cannot
/// fit, even with dp2tp2ep4 unloaded.
const TIGHT: u64 = 40 * (64 << 10);
const ROOMY: u64 = 64 << 20;

/// Stops an operation at a named point until the test lets it go.
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

fn active_configs(s: &Server) -> Vec<(u64, String)> {
    s.instances()
        .into_iter()
        .filter(|i| i.state == InstanceState::Active)
        .map(|i| (i.id, i.config.to_string()))
        .collect()
}

/// The node still serves: a request submitted now finishes.
fn serves(s: &Server) {
    s.submit(Submit {
        prompt: vec![1, 2, 3],
        output_tokens: 3,
        ..Default::default()
    })
    .unwrap();
    assert!(s.wait_idle(Duration::from_secs(60)), "the request finished");
}

fn events_of(s: &Server) -> Vec<ScaleEvent> {
    s.take_events()
        .into_iter()
        .filter_map(|e| match e {
            ServeEvent::Scale { event, .. } => Some(event),
            _ => None,
        })
        .collect()
}

#[test]
fn a_cold_restart_that_cannot_fit_is_refused_before_anything_is_unloaded() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "dp2tp2ep4", 8, TIGHT, None);
    let before = active_configs(&s);
    let e = s
        .check_target(Strategy::ColdRestart, cfg("dp1tp2ep2"), &topo())
        .unwrap_err();
    assert!(e.is_rule(), "{e}");
    assert!(e.to_string().contains("not enough memory"), "{e}");
    let e = s
        .scale_with(
            Strategy::ColdRestart,
            cfg("dp1tp2ep2"),
            &topo(),
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert!(e.to_string().contains("not enough memory on device"), "{e}");
    assert_eq!(active_configs(&s), before, "the instance was not touched");
    serves(&s);
    // One that fits still runs (and the node is not wedged by the refusal).
    s.scale_with(
        Strategy::ColdRestart,
        cfg("dp2tp2ep4"),
        &topo(),
        &AtomicBool::new(false),
    )
    .unwrap();
    serves(&s);
    s.shutdown();
}

#[test]
fn a_cold_restart_whose_load_fails_loads_the_old_config_again_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let hook = FaultHook(Arc::new(|p: &str| {
        if p == "reload" {
            Err("injected load failure".into())
        } else {
            Ok(())
        }
    }));
    let s = server(dir.path(), "dp2tp2ep4", 8, ROOMY, Some(hook));
    for i in 0..6 {
        s.submit(Submit {
            prompt: vec![i + 1; 4],
            output_tokens: 8,
            ..Default::default()
        })
        .unwrap();
    }
    let e = s
        .scale_with(
            Strategy::ColdRestart,
            cfg("dp3tp2ep6"),
            &topo(),
            &AtomicBool::new(false),
        )
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("injected load failure"), "{msg}");
    assert!(msg.contains("dp2tp2ep4 was loaded again"), "{msg}");
    let active = active_configs(&s);
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].1, "dp2tp2ep4");
    assert!(
        s.wait_idle(Duration::from_secs(60)),
        "the aborted requests ran again on the restored instance"
    );
    assert_eq!(s.take_finished().len(), 6);
    // The failure's reason comes before its phase.
    let ev = events_of(&s);
    let err = ev.iter().position(
        |e| matches!(e, ScaleEvent::Error { message, .. } if message.contains("injected")),
    );
    let failed = ev.iter().position(|e| {
        matches!(
            e,
            ScaleEvent::Phase {
                phase: Phase::Failed,
                ..
            }
        )
    });
    assert!(err.is_some() && failed.is_some() && err < failed, "{ev:?}");
    s.shutdown();
}

#[test]
fn a_failed_step_reports_its_reason_before_its_failed_phase() {
    let dir = tempfile::tempdir().unwrap();
    let hook = FaultHook(Arc::new(|p: &str| {
        if p == "copies" {
            Err("the disk is on fire".into())
        } else {
            Ok(())
        }
    }));
    let s = server(dir.path(), "dp2tp2ep4", 8, ROOMY, Some(hook));
    let held = s.with_hmm(|h| h.all_allocations().count());
    let e = s
        .scale_with(
            Strategy::Elastic,
            cfg("dp3tp2ep6"),
            &topo(),
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert!(e.to_string().contains("the disk is on fire"), "{e}");
    let ev = events_of(&s);
    let err = ev.iter().position(
        |e| matches!(e, ScaleEvent::Error { message, .. } if message.contains("on fire")),
    );
    let failed = ev.iter().position(|e| {
        matches!(
            e,
            ScaleEvent::Phase {
                phase: Phase::Failed,
                ..
            }
        )
    });
    assert!(err.is_some() && failed.is_some() && err < failed, "{ev:?}");
    assert_eq!(
        s.with_hmm(|h| h.all_allocations().count()),
        held,
        "rolled back"
    );
    assert_eq!(active_configs(&s)[0].1, "dp2tp2ep4");
    serves(&s);
    s.shutdown();
}

#[test]
fn a_cancel_before_the_switchover_is_carried_out_for_every_strategy() {
    let dir = tempfile::tempdir().unwrap();
    for strategy in Strategy::ALL {
        let (hook, stall) = stall_at("preparing");
        // Extravagant needs 4 old + 6 new devices.
        let s = Arc::new(server(dir.path(), "dp2tp2ep4", 10, ROOMY, Some(hook)));
        let before = active_configs(&s);
        let to = if strategy == Strategy::Horizontal {
            cfg("dp4tp2ep8")
        } else {
            cfg("dp3tp2ep6")
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let op = {
            let (s, c) = (Arc::clone(&s), Arc::clone(&cancel));
            std::thread::spawn(move || s.scale_with(strategy, to, &topo(), &c))
        };
        stall.reached.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(
            s.cancel_operation(&cancel),
            Ok(Phase::Preparing),
            "{strategy}"
        );
        stall.go.send(()).unwrap();
        let e = op.join().unwrap().unwrap_err();
        assert!(e.is_cancelled(), "{strategy}: {e}");
        assert_eq!(active_configs(&s), before, "{strategy}: nothing changed");
        assert!(!s.is_scaling());
        serves(&s);
        // A cancel after the end is refused with the phase it ended in.
        assert_eq!(s.cancel_operation(&cancel), Err(Phase::Cancelled));
        drop(stall);
        Arc::try_unwrap(s).ok().unwrap().shutdown();
    }
}

#[test]
fn a_cancel_past_the_point_of_no_return_is_refused_and_the_step_completes() {
    let dir = tempfile::tempdir().unwrap();
    for (strategy, point) in [
        (Strategy::Elastic, "switching"),
        (Strategy::ColdRestart, "reload"),
    ] {
        let (hook, stall) = stall_at(point);
        let s = Arc::new(server(dir.path(), "dp2tp2ep4", 8, ROOMY, Some(hook)));
        let cancel = Arc::new(AtomicBool::new(false));
        let op = {
            let (s, c) = (Arc::clone(&s), Arc::clone(&cancel));
            std::thread::spawn(move || s.scale_with(strategy, cfg("dp3tp2ep6"), &topo(), &c))
        };
        stall.reached.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(
            s.cancel_operation(&cancel),
            Err(Phase::Switching),
            "{strategy}"
        );
        stall.go.send(()).unwrap();
        op.join().unwrap().unwrap();
        assert_eq!(active_configs(&s)[0].1, "dp3tp2ep6", "{strategy}");
        assert_eq!(s.cancel_operation(&cancel), Err(Phase::Done));
        Arc::try_unwrap(s).ok().unwrap().shutdown();
    }
}

#[test]
fn a_panic_in_an_operation_fails_it_and_the_next_one_runs() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let a = Arc::clone(&armed);
    let hook = FaultHook(Arc::new(move |p: &str| {
        if p == "preparing" && a.swap(false, Ordering::SeqCst) {
            panic!("injected fault");
        }
        Ok(())
    }));
    let s = server(dir.path(), "dp2tp2ep4", 8, ROOMY, Some(hook));
    let e = s
        .scale_with(
            Strategy::Elastic,
            cfg("dp3tp2ep6"),
            &topo(),
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert!(matches!(e, ServeError::Panicked(_)), "{e}");
    assert!(e.to_string().contains("injected fault"), "{e}");
    assert!(!s.is_scaling(), "the one-at-a-time flag was cleared");
    let ev = events_of(&s);
    assert!(
        ev.iter().any(|e| matches!(
            e,
            ScaleEvent::Phase {
                phase: Phase::Failed,
                ..
            }
        )),
        "{ev:?}"
    );
    assert!(!armed.load(Ordering::SeqCst));
    s.scale_with(
        Strategy::Elastic,
        cfg("dp3tp2ep6"),
        &topo(),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(active_configs(&s)[0].1, "dp3tp2ep6");
    serves(&s);
    s.shutdown();
}

#[test]
fn a_target_that_cannot_fit_is_refused_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "dp2tp2ep4", 6, TIGHT, None);
    for (strategy, to, rule) in [
        (Strategy::Elastic, "dp4tp2ep8", "not enough devices"),
        (Strategy::Extravagant, "dp2tp2ep4", "not enough devices"),
        (Strategy::Horizontal, "dp4tp2ep8", "not enough devices"),
        (Strategy::ColdRestart, "dp4tp2ep8", "not enough devices"),
        (Strategy::Colocated, "dp3tp2ep6", "not enough memory"),
        (Strategy::ColdRestart, "dp1tp2ep2", "not enough memory"),
    ] {
        let e = s.check_target(strategy, cfg(to), &topo()).unwrap_err();
        assert!(e.is_rule(), "{strategy} {to}: {e}");
        assert!(e.to_string().contains(rule), "{strategy} {to}: {e}");
    }
    assert!(
        s.check_target(Strategy::Elastic, cfg("dp3tp2ep6"), &topo())
            .is_ok()
    );
    assert!(
        s.take_events()
            .iter()
            .all(|e| !matches!(e, ServeEvent::Scale { .. }))
    );
    s.shutdown();
}

#[test]
fn horizontal_honours_its_target_and_no_device_is_booked_twice() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "dp1tp2ep2", 8, ROOMY, None);
    let no = AtomicBool::new(false);
    let e = s
        .scale_with(Strategy::Horizontal, cfg("dp3tp2ep6"), &topo(), &no)
        .unwrap_err();
    assert!(
        e.to_string().contains("the target must be dp2tp2ep4"),
        "{e}"
    );
    assert!(e.is_rule());
    s.scale_with(Strategy::Horizontal, cfg("dp2tp2ep4"), &topo(), &no)
        .unwrap();
    assert_eq!(active_configs(&s).len(), 2, "two replicas serve");
    let replica: Vec<DeviceId> = s
        .instances()
        .into_iter()
        .find(|i| i.state == InstanceState::Active && i.devices[0] != DeviceId::new(0, 0))
        .unwrap()
        .devices;
    let p = s.plan(cfg("dp2tp2ep4"), Policy::Balanced, &topo()).unwrap();
    assert!(
        p.devices.iter().all(|d| !replica.contains(d)),
        "the plan takes {:?}, the replica holds {replica:?}",
        p.devices
    );
    s.scale_with(Strategy::Elastic, cfg("dp2tp2ep4"), &topo(), &no)
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in s.instances().into_iter().filter(|i| i.id != 0) {
        for d in i.devices {
            assert!(seen.insert(d), "device {d} is in two instances");
        }
    }
    serves(&s);
    s.shutdown();
}

#[test]
fn worker_threads_of_released_instances_do_not_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "dp2tp2ep4", 8, ROOMY, None);
    let no = AtomicBool::new(false);
    for i in 0..8 {
        let to = if i % 2 == 0 { "dp3tp2ep6" } else { "dp2tp2ep4" };
        s.scale_with(Strategy::Elastic, cfg(to), &topo(), &no)
            .unwrap();
    }
    // The live instance's 2 workers and at most the last released one's 3.
    assert!(s.worker_threads() <= 5, "{} handles", s.worker_threads());
    serves(&s);
    s.shutdown();
}
