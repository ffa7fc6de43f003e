//! Serving while scaling, on real host memory: every request finishes, answers are bit-identical
//! to a run without scaling, in-flight requests cross the switchover with their KV, and nothing
//! leaks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use emoe_agent::serve::{Finished, ServeOptions, Server, Submit};
use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::checkpoint::{self, Checkpoint};
use emoe_core::deploy::{DeployOptions, Deployment};
use emoe_core::hmm::Hmm;
use emoe_core::model;
use emoe_core::plan::{Policy, Topology};
use emoe_core::{DeviceId, ParallelConfig};

fn server(dir: &std::path::Path, config: &str) -> Server {
    server_on(dir, config, 8)
}

fn server_on(dir: &std::path::Path, config: &str, n: u32) -> Server {
    let spec = model::preset("micro-moe").unwrap().spec();
    let path = checkpoint::ensure_generated(&spec, 9, dir).unwrap();
    let c = Checkpoint::open(&path).unwrap();
    let b = HostBackend::new(HostConfig {
        node: 0,
        devices: n,
        capacity: 64 << 20,
        granularity: 64 << 10,
    })
    .unwrap();
    let mut hmm = Hmm::new(Arc::new(b));
    let cfg: ParallelConfig = config.parse().unwrap();
    let devices: Vec<DeviceId> = (0..cfg.devices()).map(|i| DeviceId::new(0, i)).collect();
    let o = DeployOptions {
        kv_tokens: 1024,
        ..DeployOptions::default()
    };
    let d = Deployment::load(&mut hmm, &spec, cfg, &devices, Some(&c), &o).unwrap();
    let opts = ServeOptions {
        max_batch: 4,
        ..ServeOptions::default()
    };
    Server::start(hmm, d, Some(c), opts).unwrap()
}

fn requests() -> Vec<Submit> {
    (0..24u32)
        .map(|i| Submit {
            prompt: (0..(3 + i % 7))
                .map(|j| (i * 131 + j * 17) % 1024)
                .collect(),
            output_tokens: 4 + i % 5,
            ..Default::default()
        })
        .collect()
}

fn by_id(f: Vec<Finished>) -> BTreeMap<u64, Finished> {
    f.into_iter().map(|f| (f.id, f)).collect()
}

fn reference(dir: &std::path::Path) -> BTreeMap<u64, Vec<u32>> {
    reference_of(dir, requests())
}

fn reference_of(dir: &std::path::Path, reqs: Vec<Submit>) -> BTreeMap<u64, Vec<u32>> {
    let s = server(dir, "dp2tp2ep4");
    for r in reqs {
        s.submit(r).unwrap();
    }
    assert!(s.wait_idle(Duration::from_secs(120)));
    let out = by_id(s.take_finished())
        .into_iter()
        .map(|(k, v)| (k, v.output))
        .collect();
    s.shutdown();
    out
}

fn scaled_run(
    dir: &std::path::Path,
    steps: &[&str],
) -> (BTreeMap<u64, Finished>, Vec<usize>, Server) {
    let s = server(dir, "dp2tp2ep4");
    for r in requests() {
        s.submit(r).unwrap();
    }
    let mut moved = Vec::new();
    for to in steps {
        // Scale while requests are in flight.
        std::thread::sleep(Duration::from_millis(30));
        let topo = Topology::uniform(1e10, 1e10);
        let p = s
            .plan(to.parse().unwrap(), Policy::Balanced, &topo)
            .unwrap();
        let r = s.scale(&p, &AtomicBool::new(false)).unwrap();
        assert_eq!(r.to.to_string(), *to);
        moved.push(r.moved_requests);
    }
    assert!(
        s.wait_idle(Duration::from_secs(120)),
        "every request finishes"
    );
    (by_id(s.take_finished()), moved, s)
}

#[test]
fn answers_are_bit_identical_across_scaling_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path());
    assert_eq!(want.len(), 24);
    let (got, moved, s) = scaled_run(dir.path(), &["dp4tp2ep8", "dp3tp2ep6"]);
    assert_eq!(got.len(), 24);
    for (id, f) in &got {
        assert_eq!(
            &f.output, &want[id],
            "request {id} (instances {:?})",
            f.instances
        );
        assert!(f.first_token_s >= f.arrival_s && f.finish_s >= f.first_token_s);
    }
    assert!(
        moved.iter().sum::<usize>() > 0 || got.values().all(|f| f.instances.len() == 1),
        "moves are counted"
    );
    // Nothing leaked: the HMM holds exactly the final instance's allocations, one view.
    let (hmm, deps) = s.shutdown();
    assert_eq!(deps.len(), 1);
    let d = &deps[0];
    assert_eq!(d.config.to_string(), "dp3tp2ep6");
    let mine: std::collections::BTreeSet<_> = d
        .devices
        .iter()
        .flat_map(|r| r.weights().map(|w| w.2).chain([r.kv_alloc]))
        .collect();
    let held: std::collections::BTreeSet<_> = hmm.all_allocations().map(|a| a.id).collect();
    assert_eq!(held, mine);
    assert_eq!(hmm.views().count(), 1);
    assert!(d.verify(&hmm).unwrap().is_empty());
}

/// Requests long enough (96+ tokens each) that the first ones still decode when the step ends.
fn long_requests() -> Vec<Submit> {
    requests()
        .into_iter()
        .map(|mut r| {
            r.output_tokens += 96;
            r
        })
        .collect()
}

/// Wait (bounded) until some request is decoding, so the step starts with requests in flight.
fn until_decoding(s: &Server) {
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while s.queue().1 == 0 {
        assert!(
            std::time::Instant::now() < end,
            "no request started decoding"
        );
        std::thread::yield_now();
    }
}

#[test]
fn requests_in_flight_move_to_the_new_instance_with_their_kv() {
    let dir = tempfile::tempdir().unwrap();
    let want = reference_of(dir.path(), long_requests());
    let s = server(dir.path(), "dp2tp2ep4");
    let ids: Vec<u64> = long_requests()
        .into_iter()
        .map(|r| s.submit(r).unwrap())
        .collect();
    until_decoding(&s);
    let topo = Topology::uniform(1e10, 1e10);
    let p = s
        .plan("dp4tp2ep8".parse().unwrap(), Policy::Balanced, &topo)
        .unwrap();
    let r = s.scale(&p, &AtomicBool::new(false)).unwrap();
    assert_eq!(
        r.drained_requests, 0,
        "scale-up keeps every replica's devices"
    );
    assert!(
        r.moved_requests > 0,
        "requests were decoding at the switchover, so some must move: {r:?}"
    );
    assert!(s.wait_idle(Duration::from_secs(120)));
    let got = by_id(s.take_finished());
    assert_eq!(got.len(), ids.len());
    let crossed = got.values().filter(|f| f.instances.len() == 2).count();
    assert_eq!(crossed, r.moved_requests);
    for (id, f) in &got {
        assert_eq!(&f.output, &want[id]);
    }
    s.shutdown();
}

#[test]
fn bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "dp1tp2ep2");
    let e = s
        .submit(Submit {
            prompt: vec![],
            output_tokens: 3,
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("prompt is empty"));
    let e = s
        .submit(Submit {
            prompt: vec![1],
            output_tokens: 100_000,
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("can never run"), "{e}");
    s.shutdown();
}

#[test]
fn every_strategy_scales_while_serving_and_answers_do_not_change() {
    use emoe_core::scale::Strategy;
    let dir = tempfile::tempdir().unwrap();
    let want = reference(dir.path());
    for strategy in Strategy::ALL {
        // Extravagant needs 4 old + 6 new devices.
        let s = server_on(dir.path(), "dp2tp2ep4", 10);
        for r in requests() {
            s.submit(r).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        let topo = Topology::uniform(1e10, 1e10);
        // Horizontal adds one replica of dp2tp2ep4: its target is two of them.
        let to: ParallelConfig = if strategy == Strategy::Horizontal {
            "dp4tp2ep8"
        } else {
            "dp3tp2ep6"
        }
        .parse()
        .unwrap();
        let r = s
            .scale_with(strategy, to, &topo, &AtomicBool::new(false))
            .unwrap_or_else(|e| panic!("{strategy}: {e}"));
        assert!(r.latency_s > 0.0);
        assert!(
            s.wait_idle(Duration::from_secs(120)),
            "{strategy}: all finish"
        );
        let got = by_id(s.take_finished());
        assert_eq!(got.len(), 24, "{strategy}");
        for (id, f) in &got {
            assert_eq!(&f.output, &want[id], "{strategy}: request {id}");
        }
        match strategy {
            Strategy::Elastic => assert_eq!(r.stats.disk_bytes, 0),
            _ => assert!(r.stats.disk_bytes > 0, "{strategy} reads the checkpoint"),
        }
        let (hmm, deps) = s.shutdown();
        let expect = if strategy == Strategy::Horizontal {
            2
        } else {
            1
        };
        assert_eq!(deps.len(), expect, "{strategy}: instances left");
        for d in &deps {
            assert!(d.verify(&hmm).unwrap().is_empty(), "{strategy}");
        }
        let held = hmm.all_allocations().count();
        let mine: usize = deps
            .iter()
            .map(|d| {
                d.devices
                    .iter()
                    .map(|r| r.weights().count() + 1)
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(held, mine, "{strategy}: nothing leaked");
    }
}

#[test]
fn standby_runtimes_are_pre_initialized_and_kept_in_an_lru() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), "dp2tp2ep4");
    let topo = Topology::uniform(1e10, 1e10);
    let up: ParallelConfig = "dp4tp2ep8".parse().unwrap();
    let p = s.plan(up, Policy::Balanced, &topo).unwrap();
    let r = s.scale(&p, &AtomicBool::new(false)).unwrap();
    assert!(!r.standby_hit, "nothing was pre-initialized");
    // The released dp2 runtime is kept; stepping back finds it.
    assert_eq!(
        s.standby(),
        vec!["dp2tp2ep4".parse::<ParallelConfig>().unwrap()]
    );
    let p = s
        .plan("dp2tp2ep4".parse().unwrap(), Policy::Balanced, &topo)
        .unwrap();
    let r = s.scale(&p, &AtomicBool::new(false)).unwrap();
    assert!(r.standby_hit);
    // Pre-initialize a target ahead of its step.
    s.pre_initialize("dp3tp2ep6".parse().unwrap()).unwrap();
    let p = s
        .plan("dp3tp2ep6".parse().unwrap(), Policy::Balanced, &topo)
        .unwrap();
    assert!(s.scale(&p, &AtomicBool::new(false)).unwrap().standby_hit);
    // The cache is bounded.
    for c in ["dp1tp2ep2", "dp4tp2ep8", "dp2tp2ep4", "dp1tp1ep1"] {
        let _ = s.pre_initialize(c.parse().unwrap());
    }
    assert!(s.standby().len() <= 4);
    s.shutdown();
}

#[test]
fn while_a_cold_restart_reloads_there_is_no_active_instance_and_nothing_panics() {
    use emoe_core::scale::Strategy;
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(server(dir.path(), "dp2tp2ep4"));
    for r in requests() {
        s.submit(r).unwrap();
    }
    // A reader asks for the active instance, plans and pre-initializes throughout the restart:
    // it sees the old instance, then none (refusals, not panics), then the new one.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, done) = (Arc::clone(&s), Arc::clone(&done));
        std::thread::spawn(move || {
            let topo = Topology::uniform(1e10, 1e10);
            let (mut seen_none, mut refusals) = (false, 0);
            while !done.load(Ordering::Acquire) {
                if s.active().is_none() {
                    seen_none = true;
                    let to: ParallelConfig = "dp4tp2ep8".parse().unwrap();
                    if s.plan(to, Policy::Balanced, &topo).is_err() {
                        refusals += 1;
                    }
                }
                std::thread::yield_now();
            }
            (seen_none, refusals)
        })
    };
    let topo = Topology::uniform(1e10, 1e10);
    let to: ParallelConfig = "dp3tp2ep6".parse().unwrap();
    s.scale_with(Strategy::ColdRestart, to, &topo, &AtomicBool::new(false))
        .unwrap();
    done.store(true, Ordering::Release);
    let (seen_none, refusals) = reader.join().expect("the reader did not panic");
    if seen_none {
        assert!(refusals > 0, "a plan without an active instance is refused");
    }
    assert_eq!(s.active().unwrap().config, to);
    assert!(s.wait_idle(Duration::from_secs(120)));
    assert_eq!(s.take_finished().len(), 24);
}
