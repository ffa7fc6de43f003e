//! The SLO autoscaler on a real daemon (micro-moe on the host backend, synthetic traffic): an
//! impossible SLO scales up one TP group, an easy one at low load scales back down to min-dp,
//! a target that cannot fit is one event, not a retry every tick — each decision an
//! `autoscale` event with its figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use emoe_agent::cluster::{ModelSource, NodeOptions};
use emoe_agent::daemon::autoscale::Config;
use emoe_agent::daemon::proto;
use emoe_agent::daemon::{Access, Daemon, host};
use emoe_agent::serve::ServeOptions;
use emoe_core::metrics::Slo;

fn node(cache: &tempfile::TempDir, config: &str, devices: u32) -> NodeOptions {
    NodeOptions {
        backend: Default::default(),
        node: 0,
        devices: Some(devices),
        logical_per_gpu: 1,
        hbm: Some(256 << 20),
        granularity: None,
        model: ModelSource::Preset("micro-moe".into()),
        config: config.parse().unwrap(),
        first_device: 0,
        seed: 1,
        kv_tokens: 256,
        cache_dir: Some(cache.path().to_path_buf()),
    }
}

fn cfg(ttft_s: f64, tpot_s: f64, max_dp: u32) -> Config {
    Config {
        slo: Slo { ttft_s, tpot_s },
        threshold: 0.9,
        window_s: 2.0,
        cooldown_s: 0.5,
        margin: 0.05,
        min_dp: 1,
        max_dp,
        min_requests: 4,
    }
}

/// A daemon with the autoscaler on, its ticker and traffic at `rate` requests/s.
struct Running {
    daemon: Arc<Daemon>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(o: &NodeOptions, c: Config, rate: f64) -> Self {
        let (daemon, vocab) =
            host::build(o, ServeOptions::default(), Access::default()).expect("build");
        daemon.enable_autoscale(c).expect("autoscale");
        let ticker = Some(daemon.spawn_ticker(Duration::from_millis(50)));
        host::spawn_traffic(&daemon, rate, vocab).expect("traffic");
        Self { daemon, ticker }
    }

    /// Poll the snapshot until `f` holds (a deadline, no fixed sleeps).
    fn until(&self, what: &str, f: impl Fn(&proto::Snapshot) -> bool) -> proto::Snapshot {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            let s = self.daemon.snapshot();
            if f(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}; events: {:#?}\nautoscaler: {:?}",
                s.events,
                s.autoscaler
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            host::stop(&self.daemon, t);
        }
    }
}

fn autoscale_events(s: &proto::Snapshot) -> Vec<String> {
    s.events
        .iter()
        .filter(|e| e.kind == "autoscale")
        .map(|e| e.message.clone())
        .collect()
}

fn active(s: &proto::Snapshot) -> Vec<String> {
    s.instances
        .iter()
        .filter(|i| i.state == "active")
        .map(|i| i.config.clone())
        .collect()
}

#[test]
fn an_impossible_slo_scales_up_one_group() {
    let cache = tempfile::tempdir().unwrap();
    let r = Running::start(&node(&cache, "dp1tp2ep2", 8), cfg(1e-3, 0.2, 2), 20.0);
    let s = r.until("a dp2 instance after an up decision", |s| {
        active(s) == ["dp2tp2ep4"] && !autoscale_events(s).is_empty()
    });
    let ev = autoscale_events(&s);
    assert!(
        ev[0].starts_with("up dp1tp2ep2 → dp2tp2ep4: SLO attainment ")
            && ev[0].contains("< 90% over")
            && ev[0].contains("TTFT ≤ 1 ms, TPOT ≤ 200 ms;")
            && ev[0].contains("requests"),
        "{ev:?}"
    );
    let a = s.autoscaler.clone().unwrap();
    assert_eq!(a.mode, "slo");
    assert_eq!((a.min_dp, a.max_dp), (1, 2));
    assert_eq!(a.last_decision, ev[0]);
    assert!(a.last_decision_ts > 0.0 && a.cooldown_until >= a.last_decision_ts);
    // At max-dp it holds: the operation ends and the state returns to watching, one decision.
    let s = r.until("the autoscaler watching again at max-dp", |s| {
        s.autoscaler.as_ref().is_some_and(|a| a.state == "watching")
            && s.operations.iter().all(|o| o.phase == "done")
    });
    assert_eq!(autoscale_events(&s).len(), 1, "{:?}", autoscale_events(&s));
    assert!(s.autoscaler.unwrap().attainment.is_some_and(|v| v < 0.9));
}

#[test]
fn an_easy_slo_at_low_load_scales_down_to_min_dp() {
    let cache = tempfile::tempdir().unwrap();
    let r = Running::start(&node(&cache, "dp2tp2ep4", 8), cfg(60.0, 10.0, 2), 10.0);
    let s = r.until("a dp1 instance after a down decision", |s| {
        active(s) == ["dp1tp2ep2"] && !autoscale_events(s).is_empty()
    });
    let ev = autoscale_events(&s);
    assert!(
        ev[0].starts_with("down dp2tp2ep4 → dp1tp2ep2: SLO attainment ")
            && ev[0].contains("p90 TTFT")
            && ev[0].contains("×2.00")
            && ev[0].contains("TTFT ≤ 60 s, TPOT ≤ 10 s;"),
        "{ev:?}"
    );
    let op = s
        .operations
        .iter()
        .find(|o| o.to == "dp1tp2ep2")
        .expect("the scale operation");
    assert_eq!(
        (op.kind.as_str(), op.strategy.as_str()),
        ("scale", "elastic")
    );
    assert!(s.autoscaler.unwrap().attainment.is_some_and(|v| v >= 0.95));
}

#[test]
fn a_target_that_cannot_fit_is_one_event() {
    let cache = tempfile::tempdir().unwrap();
    // Two devices hold one TP-2 group; max-dp 2 (unchecked here: the CLI would refuse it).
    let r = Running::start(&node(&cache, "dp1tp2ep2", 2), cfg(1e-3, 0.2, 2), 20.0);
    let s = r.until("the refusal event", |s| !autoscale_events(s).is_empty());
    let ev = autoscale_events(&s);
    assert!(
        ev[0].starts_with("cannot scale up to dp2tp2ep4: "),
        "{ev:?}"
    );
    let t0 = s.ts;
    // Several cooldowns later: still the one event, no operation.
    let s = r.until("four cooldowns to pass", |s| s.ts > t0 + 2.0);
    assert_eq!(autoscale_events(&s), ev);
    assert!(s.operations.is_empty(), "{:?}", s.operations);
    assert_eq!(active(&s), ["dp1tp2ep2"]);
}
