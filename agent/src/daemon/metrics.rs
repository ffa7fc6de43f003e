//! Prometheus text exposition of the node (`--metrics ADDR`, path `/metrics`).

use std::fmt::Write;

use super::{Daemon, proto};

/// The metrics of `snap` in the Prometheus text format (version 0.0.4); `started` operations
/// since the agent started (`snap` holds only the recent ones).
pub fn render(snap: &proto::Snapshot, started: u64) -> String {
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        "emoe_device_memory_capacity_bytes",
        "gauge",
        "Device memory the HMM manages.",
    );
    family(
        "emoe_device_memory_used_bytes",
        "gauge",
        "Device memory allocated.",
    );
    family(
        "emoe_device_memory_peak_bytes",
        "gauge",
        "Highest allocation since the last reset.",
    );
    let mut lines = Vec::new();
    for d in &snap.devices {
        lines.push(format!(
            "emoe_device_memory_capacity_bytes{{device=\"{}\"}} {}",
            d.id, d.capacity
        ));
        lines.push(format!(
            "emoe_device_memory_used_bytes{{device=\"{}\"}} {}",
            d.id, d.used
        ));
        lines.push(format!(
            "emoe_device_memory_peak_bytes{{device=\"{}\"}} {}",
            d.id, d.peak
        ));
    }
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for op in &snap.operations {
        *counts
            .entry((op.kind.clone(), op.phase.clone()))
            .or_default() += 1;
    }
    family("emoe_operations", "gauge", "Operations by kind and phase.");
    for ((k, p), n) in &counts {
        lines.push(format!("emoe_operations{{kind=\"{k}\",phase=\"{p}\"}} {n}"));
    }
    // One series per kind, never per operation: a daemon that scales every few seconds must
    // not grow its exposition (and a scraper's storage) with every operation it ran.
    family(
        "emoe_operation_latency_seconds",
        "gauge",
        "Command to switchover of the latest finished operation of each kind.",
    );
    let mut latest: std::collections::BTreeMap<&str, &proto::Operation> = Default::default();
    for op in snap.operations.iter().filter(|o| o.phase == "done") {
        let e = latest.entry(op.kind.as_str()).or_insert(op);
        if op.id > e.id {
            *e = op;
        }
    }
    for (k, op) in &latest {
        lines.push(format!(
            "emoe_operation_latency_seconds{{kind=\"{k}\"}} {}",
            op.latency_s
        ));
    }
    family(
        "emoe_operations_started_total",
        "counter",
        "Operations started since the agent started.",
    );
    lines.push(format!("emoe_operations_started_total {started}"));
    if let Some(s) = &snap.serving {
        family(
            "emoe_requests_queued",
            "gauge",
            "Requests waiting for a replica.",
        );
        lines.push(format!("emoe_requests_queued {}", s.queued));
        family("emoe_requests_running", "gauge", "Requests in flight.");
        lines.push(format!("emoe_requests_running {}", s.running));
        family(
            "emoe_requests_finished_total",
            "counter",
            "Requests finished.",
        );
        lines.push(format!("emoe_requests_finished_total {}", s.finished));
        family(
            "emoe_throughput_tokens_per_second",
            "gauge",
            "Generated tokens/s over the last 10 s.",
        );
        lines.push(format!(
            "emoe_throughput_tokens_per_second {}",
            s.tokens_per_s
        ));
        family(
            "emoe_throughput_requests_per_second",
            "gauge",
            "Finished requests/s over the last 10 s.",
        );
        lines.push(format!(
            "emoe_throughput_requests_per_second {}",
            s.requests_per_s
        ));
        family(
            "emoe_ttft_seconds",
            "gauge",
            "Time to first token, quantiles over the run.",
        );
        lines.push(format!(
            "emoe_ttft_seconds{{quantile=\"0.5\"}} {}",
            s.ttft_p50_s
        ));
        lines.push(format!(
            "emoe_ttft_seconds{{quantile=\"0.99\"}} {}",
            s.ttft_p99_s
        ));
        family(
            "emoe_tpot_seconds",
            "gauge",
            "Time per output token, quantiles over the run.",
        );
        lines.push(format!(
            "emoe_tpot_seconds{{quantile=\"0.5\"}} {}",
            s.tpot_p50_s
        ));
        lines.push(format!(
            "emoe_tpot_seconds{{quantile=\"0.99\"}} {}",
            s.tpot_p99_s
        ));
        if let Some(a) = s.slo_attainment {
            family(
                "emoe_slo_attainment_ratio",
                "gauge",
                "Share of finished requests under both SLO limits.",
            );
            lines.push(format!("emoe_slo_attainment_ratio {a}"));
        }
    }
    // Families first (HELP/TYPE), then samples: the exposition format allows either order per
    // family as long as a family's samples follow its TYPE; keep them grouped by family.
    let mut out = String::new();
    for block in o.split("# HELP ").filter(|b| !b.is_empty()) {
        let name = block.split_whitespace().next().unwrap_or("");
        out.push_str("# HELP ");
        out.push_str(block);
        for l in lines
            .iter()
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
        {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

impl Daemon {
    /// The metrics now.
    pub fn metrics_text(&self) -> String {
        let (mut snap, started) = {
            let st = self.lock();
            let mut snap = st.last.clone();
            snap.operations = st.ops.values().map(|o| o.info.clone()).collect();
            (snap, st.next_op - 1)
        };
        snap.events.clear();
        render(&snap, started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_make_one_series_per_kind_not_per_operation() {
        let snap = proto::Snapshot {
            operations: (1..=500)
                .map(|id| proto::Operation {
                    id,
                    kind: if id % 2 == 0 { "scale" } else { "rebalance" }.into(),
                    to: format!("dp{id}tp1ep{id}"),
                    phase: "done".into(),
                    latency_s: id as f64,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let text = render(&snap, 500);
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("emoe_operation_latency_seconds"))
            .collect();
        assert_eq!(
            series,
            [
                "emoe_operation_latency_seconds{kind=\"rebalance\"} 499",
                "emoe_operation_latency_seconds{kind=\"scale\"} 500",
            ]
        );
        assert!(text.contains("emoe_operations_started_total 500"), "{text}");
        assert!(!text.contains("operation=\""), "{text}");
    }
}
