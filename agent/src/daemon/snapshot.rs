//! The node's state as API messages, and what changed between two of them.

use emoe_core::hmm::RegionKind;

use super::{Daemon, proto};
use crate::serve::InstanceState;

fn kind_name(k: RegionKind) -> &'static str {
    match k {
        RegionKind::NonExpert => "non_expert",
        RegionKind::Expert => "expert",
        RegionKind::Kv => "kv",
    }
}

fn state_name(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Active => "active",
        InstanceState::Standby => "standby",
        InstanceState::Draining => "draining",
    }
}

impl Daemon {
    /// The whole state now.
    pub fn snapshot(&self) -> proto::Snapshot {
        let server = &self.server;
        let ts = server.now();
        let devices = server.with_hmm(|hmm| {
            // Regions change only when the HMM's books do: rebuild them then, reuse otherwise.
            let mut cache = self.devices_cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.0 != Some(hmm.generation()) {
                let views = hmm.views_by_alloc();
                let devs = hmm
                    .devices()
                    .iter()
                    .map(|info| {
                        let u = hmm.usage(info.id).unwrap_or_default();
                        let regions = hmm
                            .allocations(info.id)
                            .map(|a| proto::Region {
                                alloc: a.id.0,
                                kind: kind_name(a.tag.kind).into(),
                                layer: a.tag.layer,
                                expert: a.tag.expert,
                                offset: a.offset(),
                                size: a.size,
                                views: views
                                    .get(&a.id)
                                    .map(|v| v.iter().map(|x| x.0).collect())
                                    .unwrap_or_default(),
                            })
                            .collect();
                        proto::Device {
                            id: info.id.to_string(),
                            name: info.name.clone(),
                            capacity: u.capacity,
                            used: u.used,
                            peak: u.peak,
                            granularity: info.granularity,
                            regions,
                            telemetry: None,
                        }
                    })
                    .collect();
                *cache = (Some(hmm.generation()), devs);
            }
            let mut devs = cache.1.clone();
            for (d, info) in devs.iter_mut().zip(hmm.devices()) {
                d.telemetry =
                    hmm.backend()
                        .telemetry(info.id)
                        .ok()
                        .flatten()
                        .map(|t| proto::Telemetry {
                            utilization_percent: t.utilization_pct.map(|v| v as f32),
                            temperature_c: t.temperature_c.map(|v| v as f32),
                            power_w: t.power_mw.map(|v| v as f32 / 1000.0),
                            health: t.health.map(|h| format!("{h:?}").to_lowercase()),
                        });
            }
            devs
        });
        let running = server.running_by_instance();
        let instance_rates: std::collections::BTreeMap<u64, f64> = {
            let st = self.lock();
            st.instance_tokens
                .iter()
                .map(|(id, q)| {
                    let n: u64 = q.iter().filter(|(t, _)| *t >= ts - 10.0).map(|x| x.1).sum();
                    (*id, n as f64 / ts.clamp(1e-9, 10.0))
                })
                .collect()
        };
        let instances = server
            .instances()
            .into_iter()
            .map(|i| proto::Instance {
                id: i.id,
                config: i.config.to_string(),
                state: state_name(i.state).into(),
                devices: i.devices.iter().map(ToString::to_string).collect(),
                running: running.get(&i.id).copied().unwrap_or(0) as u64,
                tokens_per_s: instance_rates.get(&i.id).copied().unwrap_or(0.0),
            })
            .collect();
        let active = server.active();
        let load = server.expert_load();
        // Empty while a cold restart has no active instance.
        let placement = active
            .iter()
            .flat_map(|a| a.placement.layers.iter())
            .map(|(l, experts)| proto::LayerPlacement {
                layer: *l,
                experts: experts
                    .iter()
                    .enumerate()
                    .map(|(x, holders)| proto::ExpertHolders {
                        expert: x as u32,
                        devices: holders.iter().map(ToString::to_string).collect(),
                        load: load.get(l).and_then(|v| v.get(x)).copied().unwrap_or(0),
                    })
                    .collect(),
            })
            .collect();
        let (queued, running) = server.queue();
        let http_in_flight = server.http_in_flight();
        let node = self.node();
        // A bounded copy taken under the lock; the statistics are computed outside it.
        let (metrics, finished) = {
            let st = self.lock();
            (st.metrics.metrics(), st.finished)
        };
        let window = (ts - 10.0).max(0.0);
        let recent = metrics.summary(Some((window, ts.max(window + 1e-9))));
        let all = metrics.summary(None);
        drop(metrics);
        let st = self.lock();
        let (recent_http, recent_synthetic) = st
            .finished_sources
            .iter()
            .filter(|(t, _)| *t >= window)
            .fold(
                (0u64, 0u64),
                |(h, s), (_, http)| if *http { (h + 1, s) } else { (h, s + 1) },
            );
        let serving = proto::Serving {
            queued: queued as u64,
            running: running as u64,
            finished,
            tokens_per_s: recent.tokens_per_s,
            requests_per_s: recent.requests_per_s,
            ttft_p50_s: all.ttft.as_ref().map_or(0.0, |s| s.p50),
            ttft_p99_s: all.ttft.as_ref().map_or(0.0, |s| s.p99),
            tpot_p50_s: all.tpot.as_ref().map_or(0.0, |s| s.p50),
            tpot_p99_s: all.tpot.as_ref().map_or(0.0, |s| s.p99),
            slo_attainment: all.slo_attainment,
            http_running: http_in_flight,
            http_finished: st.http_finished,
            http_requests_per_s: recent_http as f64 / ts.clamp(1e-9, 10.0),
            synthetic_requests_per_s: recent_synthetic as f64 / ts.clamp(1e-9, 10.0),
            http_refused: self.http_refused.load(std::sync::atomic::Ordering::Relaxed),
        };
        proto::Snapshot {
            seq: st.seq,
            ts,
            node: Some(node),
            devices,
            instances,
            placement,
            operations: st.ops.values().map(|o| o.info.clone()).collect(),
            serving: Some(serving),
            events: st.events.iter().cloned().collect(),
            migrations: st.migrations.clone(),
            incarnation: self.incarnation.clone(),
            autoscaler: Some(st.autoscaler.clone()),
        }
    }

    fn node(&self) -> proto::Node {
        let mut sys = self.sys.lock().unwrap_or_else(|p| p.into_inner());
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        let load = sysinfo::System::load_average();
        proto::Node {
            hostname: self.facts.hostname.clone(),
            node_id: self.facts.node_id,
            backend: self.facts.backend.clone(),
            model: self.facts.model.clone(),
            cpus: sys.cpus().len() as u32,
            cpu_percent: sys.global_cpu_usage(),
            memory_total: sys.total_memory(),
            memory_used: sys.used_memory(),
            load_1: load.one,
            load_5: load.five,
            load_15: load.fifteen,
            http_addr: self.http_addr.get().cloned().unwrap_or_default(),
        }
    }
}

/// What changed from `a` to `b`, or `None` when nothing a client shows did (the node's CPU and
/// memory figures alone do not make an update).
pub fn delta(a: &proto::Snapshot, b: &proto::Snapshot) -> Option<proto::Delta> {
    let devices: Vec<proto::Device> = b
        .devices
        .iter()
        .filter(|d| !a.devices.contains(d))
        .cloned()
        .collect();
    let replace_instances = a.instances != b.instances;
    let placement = if a.placement != b.placement {
        b.placement.clone()
    } else {
        Vec::new()
    };
    let operations: Vec<proto::Operation> = b
        .operations
        .iter()
        .filter(|o| !a.operations.contains(o))
        .cloned()
        .collect();
    let serving = (a.serving != b.serving).then_some(b.serving).flatten();
    let autoscaler = (a.autoscaler != b.autoscaler)
        .then(|| b.autoscaler.clone())
        .flatten();
    let last_ts = a.events.last().map_or(f64::NEG_INFINITY, |e| e.ts);
    let n_old = a.events.iter().filter(|e| e.ts == last_ts).count();
    let events: Vec<proto::Event> = b
        .events
        .iter()
        .filter(|e| e.ts > last_ts)
        .chain(b.events.iter().filter(|e| e.ts == last_ts).skip(n_old))
        .cloned()
        .collect();
    let migrations: Vec<proto::Migration> = b
        .migrations
        .iter()
        .filter(|m| !a.migrations.contains(m))
        .cloned()
        .collect();
    let changed = !migrations.is_empty()
        || !devices.is_empty()
        || replace_instances
        || !placement.is_empty()
        || !operations.is_empty()
        || serving.is_some()
        || autoscaler.is_some()
        || !events.is_empty();
    changed.then(|| proto::Delta {
        ts: b.ts,
        devices,
        instances: if replace_instances {
            b.instances.clone()
        } else {
            Vec::new()
        },
        placement,
        operations,
        serving,
        events,
        replace_instances,
        migrations,
        autoscaler,
    })
}

/// Apply `d` to `s` (what a client does with each update).
pub fn apply(s: &mut proto::Snapshot, seq: u64, d: &proto::Delta) {
    s.seq = seq;
    s.ts = d.ts;
    for dev in &d.devices {
        match s.devices.iter_mut().find(|x| x.id == dev.id) {
            Some(x) => *x = dev.clone(),
            None => s.devices.push(dev.clone()),
        }
    }
    if d.replace_instances {
        s.instances = d.instances.clone();
    }
    if !d.placement.is_empty() {
        s.placement = d.placement.clone();
    }
    for op in &d.operations {
        match s.operations.iter_mut().find(|x| x.id == op.id) {
            Some(x) => *x = op.clone(),
            None => s.operations.push(op.clone()),
        }
    }
    if let Some(sv) = &d.serving {
        s.serving = Some(*sv);
    }
    if let Some(a) = &d.autoscaler {
        s.autoscaler = Some(a.clone());
    }
    for m in &d.migrations {
        if s.migrations
            .first()
            .is_some_and(|x| x.operation != m.operation)
        {
            s.migrations.clear();
        }
        match s
            .migrations
            .iter_mut()
            .find(|x| (x.operation, x.job) == (m.operation, m.job))
        {
            Some(x) => *x = m.clone(),
            None => s.migrations.push(m.clone()),
        }
    }
    s.events.extend(d.events.iter().cloned());
    let n = s.events.len();
    if n > super::EVENTS {
        s.events.drain(..n - super::EVENTS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(used: u64, phase: &str, events: usize) -> proto::Snapshot {
        proto::Snapshot {
            seq: 0,
            ts: used as f64,
            devices: vec![
                proto::Device {
                    id: "0/0".into(),
                    used,
                    ..Default::default()
                },
                proto::Device {
                    id: "0/1".into(),
                    used: 7,
                    ..Default::default()
                },
            ],
            instances: vec![proto::Instance {
                id: 1,
                config: "dp2tp2ep4".into(),
                state: "active".into(),
                ..Default::default()
            }],
            operations: vec![proto::Operation {
                id: 1,
                phase: phase.into(),
                ..Default::default()
            }],
            events: (0..events)
                .map(|i| proto::Event {
                    ts: i as f64,
                    kind: "k".into(),
                    message: format!("e{i}"),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_delta_applied_gives_the_new_snapshot() {
        let a = snap(1, "preparing", 2);
        let b = snap(5, "done", 4);
        let d = delta(&a, &b).expect("something changed");
        assert_eq!(d.devices.len(), 1, "only the device that changed");
        assert_eq!(d.events.len(), 2, "only the new events");
        assert!(!d.replace_instances);
        let mut c = a.clone();
        apply(&mut c, 9, &d);
        assert_eq!(c.devices, b.devices);
        assert_eq!(c.operations, b.operations);
        assert_eq!(c.events, b.events);
        assert_eq!(c.seq, 9);
        assert!(
            delta(&b, &b.clone()).is_none(),
            "nothing changed, no update"
        );
    }
}
