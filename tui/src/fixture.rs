//! Fixed cluster states for snapshot tests and the render benchmark: a **modeled** cluster
//! (synthetic numbers in the agent's message shapes, no agent behind them), deterministic.

use emoe_agent::daemon::proto;

use crate::model::{Cluster, Link, NodeView, Sample};

/// The shape of a modeled cluster.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub nodes: usize,
    pub devices: usize,
    pub layers: u32,
    pub experts: u32,
    pub capacity: u64,
    /// A scale-up in flight on node 0 (copies half done).
    pub scaling: bool,
}

impl Shape {
    /// Two small nodes (snapshot tests).
    pub const SMALL: Shape = Shape {
        nodes: 2,
        devices: 8,
        layers: 4,
        experts: 16,
        capacity: 1 << 30,
        scaling: false,
    };
    /// 64 nodes × 16 devices, DeepSeek-V3's 61 layers × 256 experts (the render benchmark).
    pub const LARGE: Shape = Shape {
        nodes: 64,
        devices: 16,
        layers: 61,
        experts: 256,
        capacity: 64 << 30,
        scaling: true,
    };
}

/// A deterministic pseudo-random sequence (splitmix64).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn snapshot(shape: &Shape, node: usize) -> proto::Snapshot {
    let mut rng = Mix(node as u64 * 7919 + 1);
    let nid = node as u32;
    // The config uses the first half of the devices (TP 2), the rest are free for scaling.
    let tp = 2u32;
    let used = (shape.devices / 2).max(2) as u32;
    let dp = used / tp;
    let cfg = format!("dp{dp}tp{tp}ep{used}");
    let to = format!("dp{}tp{tp}ep{}", dp + 1, used + tp);
    let dev_id = |i: u32| format!("{nid}/{i}");
    let per_dev = shape.experts / used;
    let expert_size = (shape.capacity / 2) / (shape.layers as u64 * per_dev.max(1) as u64);
    let expert_size = expert_size.max(64 << 10) & !((64 << 10) - 1);
    let ne_size = (shape.capacity / 16 / shape.layers as u64).max(64 << 10) & !((64 << 10) - 1);
    let kv_size = shape.capacity / 8;
    let mut alloc = 0u64;
    let mut devices = Vec::new();
    for i in 0..shape.devices as u32 {
        let mut regions: Vec<proto::Region> = Vec::new();
        let mut off = 0u64;
        // Regions are laid out back to back, each its own allocation.
        let mut add = |kind: &str, layer, expert, size, views: Vec<u64>| {
            alloc += 1;
            regions.push(proto::Region {
                alloc,
                kind: kind.into(),
                layer,
                expert,
                offset: off,
                size,
                views,
            });
            off += size;
        };
        if i < used {
            for l in 0..shape.layers {
                // Shared by the active instance and a standby view.
                let views = if l % 2 == 0 { vec![1, 2] } else { vec![1] };
                add("non_expert", Some(l), None, ne_size, views);
            }
            for l in 0..shape.layers {
                for e in (i * per_dev)..((i + 1) * per_dev) {
                    add("expert", Some(l), Some(e), expert_size, vec![1]);
                }
            }
            add("kv", None, None, kv_size, vec![1]);
        } else if shape.scaling && node == 0 && i < used + tp {
            // A new device receiving its shard and experts.
            for l in 0..shape.layers {
                add("non_expert", Some(l), None, ne_size, vec![3]);
            }
            for e in 0..(per_dev / 2).max(1) {
                add("expert", Some(0), Some(e), expert_size, vec![3]);
            }
        }
        devices.push(proto::Device {
            id: dev_id(i),
            name: format!("modeled-{i}"),
            capacity: shape.capacity,
            used: off,
            peak: off + off / 10,
            granularity: 2 << 20,
            regions,
            telemetry: Some(proto::Telemetry {
                utilization_percent: Some((rng.next() % 100) as f32),
                temperature_c: Some(40.0 + (rng.next() % 30) as f32),
                power_w: Some(300.0),
                health: Some("ok".into()),
            }),
        });
    }
    let mut instances = vec![proto::Instance {
        id: 1,
        config: cfg.clone(),
        state: "active".into(),
        devices: (0..used).map(dev_id).collect(),
        running: 6 + (rng.next() % 6),
        tokens_per_s: 180.0 + (rng.next() % 40) as f64,
    }];
    let placement = (0..shape.layers)
        .map(|l| proto::LayerPlacement {
            layer: l,
            experts: (0..shape.experts)
                .map(|e| proto::ExpertHolders {
                    expert: e,
                    devices: {
                        let mut d = vec![dev_id((e / per_dev.max(1)).min(used - 1))];
                        // One hot expert replicated.
                        if e == 3 {
                            d.push(dev_id(used - 1));
                        }
                        d
                    },
                    load: (rng.next() % 1000) * if e % 7 == 0 { 4 } else { 1 },
                })
                .collect(),
        })
        .collect();
    let mut operations = vec![proto::Operation {
        id: 1,
        kind: "scale".into(),
        from: format!("dp{}tp{tp}ep{}", dp.max(2) - 1, used.max(4) - tp),
        to: cfg.clone(),
        strategy: "elastic".into(),
        phase: "done".into(),
        bytes_done: 3 << 30,
        bytes_total: 3 << 30,
        copies_done: 40,
        copies_total: 40,
        started: 10.0,
        rate_bytes_per_s: 9.5e9,
        latency_s: 0.42,
        error: String::new(),
    }];
    let mut migrations = Vec::new();
    if shape.scaling && node == 0 {
        let total = 40u32;
        for j in 0..total {
            let done = j < total / 2;
            let what = if j < 2 {
                format!("layer {j}")
            } else {
                format!("expert {}/{}", j % shape.layers, j % shape.experts)
            };
            migrations.push(proto::Migration {
                operation: 2,
                job: j,
                what,
                src: dev_id(j % used),
                dst: dev_id(used + j % tp),
                bytes: expert_size,
                done,
                started: 100.0 + j as f64 * 0.01,
                finished: if done { 100.05 + j as f64 * 0.01 } else { 0.0 },
                rate_bytes_per_s: if done { 8.0e9 } else { 0.0 },
            });
        }
        operations.push(proto::Operation {
            id: 2,
            kind: "scale".into(),
            from: cfg.clone(),
            to: to.clone(),
            strategy: "elastic".into(),
            phase: "preparing".into(),
            bytes_done: expert_size * 20,
            bytes_total: expert_size * 40,
            copies_done: 20,
            copies_total: 40,
            started: 100.0,
            rate_bytes_per_s: 8.0e9,
            latency_s: 0.0,
            error: String::new(),
        });
        instances.push(proto::Instance {
            id: 2,
            config: to.clone(),
            state: "standby".into(),
            devices: (0..used + tp).map(dev_id).collect(),
            running: 0,
            tokens_per_s: 0.0,
        });
    }
    let events = (0..12)
        .map(|k| proto::Event {
            ts: 90.0 + k as f64,
            kind: ["serve", "scale", "phase", "copy"][k % 4].into(),
            message: format!("event {k} on node {node}"),
        })
        .collect();
    proto::Snapshot {
        seq: 100,
        ts: 101.0,
        node: Some(proto::Node {
            hostname: format!("node-{node:02}"),
            node_id: nid,
            backend: "modeled".into(),
            model: "deepseek-v3".into(),
            cpus: 64,
            cpu_percent: 12.0 + (rng.next() % 50) as f32,
            memory_total: 512 << 30,
            memory_used: 200 << 30,
            load_1: 3.5,
            load_5: 3.1,
            load_15: 2.9,
            // Node 0 serves the OpenAI-compatible endpoint; the others only synthetic traffic.
            http_addr: if node == 0 {
                "http://127.0.0.1:8000".into()
            } else {
                String::new()
            },
        }),
        devices,
        instances,
        placement,
        operations,
        serving: Some(proto::Serving {
            queued: 3,
            running: 8,
            finished: 5000,
            tokens_per_s: 200.0,
            requests_per_s: 2.5,
            ttft_p50_s: 0.08,
            ttft_p99_s: 0.3,
            tpot_p50_s: 0.02,
            tpot_p99_s: 0.05,
            slo_attainment: Some(0.97),
            http_running: if node == 0 { 5 } else { 0 },
            http_finished: if node == 0 { 3000 } else { 0 },
            http_requests_per_s: if node == 0 { 1.5 } else { 0.0 },
            synthetic_requests_per_s: if node == 0 { 1.0 } else { 2.5 },
            http_refused: if node == 0 { 2 } else { 0 },
        }),
        events,
        migrations,
        incarnation: format!("fixture-{node}"),
        // Node 0 autoscales and decided once (the scale-up in flight when `scaling`); the
        // others run without.
        autoscaler: Some(if node == 0 {
            proto::Autoscaler {
                mode: "slo".into(),
                attainment: Some(0.97),
                threshold: 0.9,
                ttft_slo_s: 0.5,
                tpot_slo_s: 0.1,
                window_s: 30.0,
                min_dp: 1,
                max_dp: 4,
                state: if shape.scaling { "scaling" } else { "cooldown" }.into(),
                last_decision: format!("scale up {cfg} -> {to}: attainment 82% < 90%"),
                last_decision_ts: 89.0,
                cooldown_until: 120.0,
            }
        } else {
            proto::Autoscaler {
                mode: "off".into(),
                ..Default::default()
            }
        }),
    }
}

/// A modeled cluster of `shape`; the last node is stale when there are two or more.
pub fn cluster(shape: &Shape) -> Cluster {
    let nodes = (0..shape.nodes)
        .map(|i| {
            let mut n = NodeView::new(format!("unix:/run/emoe/node-{i:02}.sock"));
            let s = snapshot(shape, i);
            n.apply(&proto::WatchUpdate {
                seq: 100,
                body: Some(proto::watch_update::Body::Snapshot(s)),
            });
            // A history for the sparklines: a wave in throughput and latency.
            n.history = (0..60u32)
                .map(|k| {
                    let w = ((k as f64) / 6.0).sin();
                    Sample {
                        ts: k as f64,
                        tokens_per_s: 200.0 + 60.0 * w,
                        requests_per_s: 2.5 + w,
                        ttft_p50_s: 0.08 + 0.03 * w,
                        ttft_p99_s: 0.3,
                        tpot_p50_s: 0.02 + 0.005 * w,
                        tpot_p99_s: 0.05,
                        slo: 0.95 + 0.04 * w,
                        queued: 3,
                        running: 8,
                    }
                })
                .collect();
            if shape.nodes >= 2 && i == shape.nodes - 1 {
                n.link = Link::Stale {
                    error: "transport error".into(),
                    retry_s: 4.0,
                };
            }
            n
        })
        .collect();
    Cluster { nodes }
}
