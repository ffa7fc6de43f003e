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

/// A Prometheus histogram with fixed bounds.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn render(&self, o: &mut String, name: &str, labels: &str) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(o, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
        }
        let _ = writeln!(o, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(o, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(o, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// vLLM's bucket bounds, so its dashboards' queries read these as they read vLLM's.
const TTFT_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E_BOUNDS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// What vLLM's dashboards and autoscalers read, kept as the requests finish.
#[derive(Clone, Debug)]
pub struct VllmStats {
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// Finished requests by reason (`stop`, `length`, `abort`).
    pub finished: std::collections::BTreeMap<&'static str, u64>,
}

impl Default for VllmStats {
    fn default() -> Self {
        Self {
            ttft: Histogram::new(TTFT_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
            e2e: Histogram::new(E2E_BOUNDS),
            prompt_tokens: 0,
            generation_tokens: 0,
            finished: Default::default(),
        }
    }
}

impl VllmStats {
    /// Fold in a finished request (an aborted one counts only as finished and for its tokens).
    pub fn record(&mut self, f: &crate::serve::Finished) {
        use crate::serve::FinishReason;
        let reason = match f.reason {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Aborted => "abort",
        };
        *self.finished.entry(reason).or_default() += 1;
        self.prompt_tokens += u64::from(f.prompt_tokens);
        self.generation_tokens += f.output.len() as u64;
        if f.reason == FinishReason::Aborted || f.output.is_empty() {
            return;
        }
        self.ttft.observe(f.first_token_s - f.arrival_s);
        self.e2e.observe(f.finish_s - f.arrival_s);
        for w in f.token_s.windows(2) {
            self.itl.observe(w[1] - w[0]);
        }
    }

    /// The `vllm:` families, labelled with `model`.
    pub fn render(&self, o: &mut String, model: &str, running: u64, waiting: u64, kv: f64) {
        let m = format!("model_name=\"{}\"", model.replace(['\\', '"', '\n'], "_"));
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{m}}} {v}"
            );
        };
        gauge(
            o,
            "vllm:num_requests_running",
            "Requests in model execution batches.",
            running as f64,
        );
        gauge(
            o,
            "vllm:num_requests_waiting",
            "Requests waiting to be processed.",
            waiting as f64,
        );
        gauge(
            o,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            kv,
        );
        for (name, help, v) in [
            (
                "vllm:prompt_tokens_total",
                "Prefill tokens processed.",
                self.prompt_tokens,
            ),
            (
                "vllm:generation_tokens_total",
                "Generation tokens processed.",
                self.generation_tokens,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{m}}} {v}"
            );
        }
        let name = "vllm:request_success_total";
        let _ = writeln!(o, "# HELP {name} Finished requests.\n# TYPE {name} counter");
        for (r, n) in &self.finished {
            let _ = writeln!(o, "{name}{{{m},finished_reason=\"{r}\"}} {n}");
        }
        for (name, help, h) in [
            (
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &self.ttft,
            ),
            (
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                &self.itl,
            ),
            (
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                &self.e2e,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} histogram");
            h.render(o, name, &m);
        }
    }
}

/// `/metrics` as an HTTP answer (the text is built off the async runtime).
pub async fn exposition(daemon: std::sync::Arc<Daemon>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = tokio::task::spawn_blocking(move || daemon.metrics_text())
        .await
        .unwrap_or_default();
    (
        axum::http::StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

impl Daemon {
    /// The metrics now: the node's `emoe_` families, then the `vllm:` ones.
    pub fn metrics_text(&self) -> String {
        let (mut snap, started, vllm) = {
            let st = self.lock();
            let mut snap = st.last.clone();
            snap.operations = st.ops.values().map(|o| o.info.clone()).collect();
            (snap, st.next_op - 1, st.vllm.clone())
        };
        snap.events.clear();
        let mut out = render(&snap, started);
        let (waiting, running) = self.server.queue();
        vllm.render(
            &mut out,
            &self.facts.model,
            running as u64,
            waiting as u64,
            self.server.kv_usage(),
        );
        out
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
