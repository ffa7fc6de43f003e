//! Running a scenario headless: an embedded node serving generated traffic, scaling at the given
//! times, measured (`emoe-agent run SCENARIO.toml`).
//!
//! Events stream as they happen; the run ends with a report holding, per scaling step, its
//! latency, downtime (the longest gap between decode steps during the step), the HMM-measured
//! peak, and throughput before, during and after; plus SLO attainment over the run.
//!
//! Windows around a step that starts at `s` and is released at `e`, with half-width `W` (the
//! scenario's `window`, default 5 s as in the paper): before `[s − W, s)`, during `[s, e + W)`,
//! after `[e + W, e + 3W)`.

mod spec;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use emoe_core::ParallelConfig;
use emoe_core::metrics::{Metrics, RequestTiming, Slo, Summary};
use emoe_core::plan::{Policy, Topology};
use emoe_core::traffic::{RequestSpec, prompt_ids};

pub use spec::{Scenario, ScenarioError};

use crate::bandwidth::measure_memcpy;
use crate::cluster::{ModelSource, Node, NodeOptions};
use crate::exit::{self, CliError};
use crate::serve::{ScaleReport, ServeEvent, ServeOptions, Server, Submit};

/// Throughput in the three windows of a step: generated tokens/s and finished requests/s.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Throughput {
    pub before: f64,
    pub during: f64,
    pub after: f64,
    pub requests_before: f64,
    pub requests_during: f64,
    pub requests_after: f64,
}

/// One scaling step of the report.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub at_s: f64,
    pub from: ParallelConfig,
    pub to: ParallelConfig,
    pub latency_s: f64,
    pub release_s: f64,
    pub downtime_s: f64,
    pub peak_bytes: u64,
    pub bytes_moved: u64,
    pub moved_requests: usize,
    pub drained_requests: usize,
    /// Tokens per second.
    pub throughput: Throughput,
}

/// The end of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub requests: usize,
    pub finished: usize,
    pub duration_s: f64,
    pub steps: Vec<StepReport>,
    /// Share of finished requests under both SLO limits (`None` without an `[slo]` table).
    pub slo_attainment: Option<f64>,
    pub summary: Summary,
    /// Scaling steps that failed, with the reason.
    pub failed_steps: Vec<String>,
    /// Throughput and SLO attainment over time (for `--plot`).
    #[serde(skip)]
    pub series: Vec<emoe_core::metrics::Point>,
}

/// A scaling step's outcome: its scheduled time and report, or why it failed.
type StepResult = Result<(f64, ScaleReport), String>;

fn node_options(s: &Scenario) -> Result<NodeOptions, CliError> {
    let backend = s.cluster.backend.parse().map_err(CliError::usage)?;
    let hbm = match &s.cluster.hbm {
        Some(h) => {
            Some(crate::cli::parse_size(h).map_err(|e| CliError::usage(anyhow::anyhow!(e)))?)
        }
        None => None,
    };
    let model: ModelSource = s
        .model
        .name
        .parse()
        .map_err(|e: String| CliError::usage(anyhow::anyhow!(e)))?;
    Ok(NodeOptions {
        backend,
        node: 0,
        devices: Some(s.cluster.devices),
        logical_per_gpu: 1,
        hbm,
        granularity: None,
        model,
        config: s.serve.config,
        first_device: 0,
        seed: s.model.seed,
        kv_tokens: s.model.kv_tokens,
        cache_dir: None,
    })
}

/// Run `s`, writing NDJSON events to `out` when `json` (else short human lines to stderr), and
/// return the report (also written to `out` as the last line in JSON mode).
pub fn run(s: &Scenario, json: bool, out: &mut dyn Write) -> Result<Report, CliError> {
    let requests: Vec<RequestSpec> = s.traffic.generate().map_err(CliError::usage)?;
    let node = Node::start(&node_options(s)?)?;
    let Node {
        hmm,
        deployment,
        checkpoint,
    } = node;
    if checkpoint.is_none() {
        return Err(CliError::usage(anyhow::anyhow!(
            "serving computes on the weights: use a backend that holds bytes (host), not {}",
            s.cluster.backend
        )));
    }
    let vocab = deployment.model.vocab_size;
    let server = Arc::new(
        Server::start(
            hmm,
            deployment,
            checkpoint,
            ServeOptions {
                max_batch: s.serve.max_batch,
                ..ServeOptions::default()
            },
        )
        .map_err(|e| CliError::new(exit::REFUSED, e))?,
    );
    let bw = measure_memcpy();
    let topology = Topology::uniform(bw, bw);
    let t0 = server.now();
    let seed = s.traffic.seed;

    // Traffic: submit each request at its arrival time.
    let traffic_done = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let traffic = {
        let (server, done, refused) = (
            Arc::clone(&server),
            Arc::clone(&traffic_done),
            Arc::clone(&refused),
        );
        let requests = requests.clone();
        std::thread::spawn(move || {
            for r in requests {
                let wait = t0 + r.arrival_s - server.now();
                if wait > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(wait));
                }
                let prompt = prompt_ids(seed, r.id, r.prompt_tokens, vocab);
                if let Err(e) = server.submit(Submit {
                    prompt,
                    output_tokens: r.output_tokens,
                }) {
                    refused
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("request {}: {e}", r.id));
                }
            }
            done.store(true, Ordering::Release);
        })
    };

    // Scaling: each step at its time, one after the other.
    let steps_done = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<StepResult>>> = Arc::default();
    let scaler = {
        let (server, done, results) = (
            Arc::clone(&server),
            Arc::clone(&steps_done),
            Arc::clone(&results),
        );
        let steps: Vec<(f64, ParallelConfig)> = s
            .scale
            .iter()
            .map(|st| (st.at.as_secs_f64(), st.to))
            .collect();
        std::thread::spawn(move || {
            for (at, to) in steps {
                let wait = t0 + at - server.now();
                if wait > 0.0 {
                    std::thread::sleep(Duration::from_secs_f64(wait));
                }
                let r = server
                    .plan(to, Policy::Balanced, &topology)
                    .and_then(|p| server.scale(&p, &AtomicBool::new(false)))
                    .map(|rep| (at, rep))
                    .map_err(|e| format!("scale to {to} at {at}s: {e}"));
                results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            }
            done.store(true, Ordering::Release);
        })
    };

    let slo = s.slo.as_ref().map(|x| Slo {
        ttft_s: x.ttft.as_secs_f64(),
        tpot_s: x.tpot.as_secs_f64(),
    });
    let mut metrics = Metrics::new(slo);
    let mut finished = 0usize;
    let rel = |t: f64| (t - t0).max(0.0);
    let emit = |v: serde_json::Value, out: &mut dyn Write| -> Result<(), CliError> {
        if json {
            writeln!(out, "{v}").map_err(CliError::failed)?;
        }
        Ok(())
    };
    let last_arrival = requests.last().map_or(0.0, |r| r.arrival_s);
    let deadline = last_arrival + 600.0;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        for e in server.take_events() {
            match e {
                ServeEvent::Step { ts, tokens, .. } => {
                    let _ = metrics.record_step(rel(ts));
                    if tokens > 0 {
                        let _ = metrics.record_tokens(rel(ts), tokens as u64);
                    }
                }
                ServeEvent::Scale { ts, event } => {
                    let v = json!({"ts": rel(ts), "type": "scale", "event": event});
                    if !json && let Some(p) = v["event"]["phase"].as_str() {
                        eprintln!("emoe-agent: [{:7.2}s] scaling: {p}", rel(ts));
                    }
                    emit(v, out)?;
                }
                ServeEvent::Instance {
                    ts,
                    instance,
                    config,
                    state,
                } => {
                    if !json {
                        eprintln!(
                            "emoe-agent: [{:7.2}s] instance {instance} {config}: {state:?}",
                            rel(ts)
                        );
                    }
                    emit(
                        json!({"ts": rel(ts), "type": "instance", "instance": instance,
                               "config": config, "state": state}),
                        out,
                    )?;
                }
                ServeEvent::Error { ts, message } => {
                    eprintln!("emoe-agent: [{:7.2}s] error: {message}", rel(ts));
                    emit(
                        json!({"ts": rel(ts), "type": "error", "message": message}),
                        out,
                    )?;
                }
            }
        }
        for f in server.take_finished() {
            finished += 1;
            let t = RequestTiming {
                id: f.id,
                arrival_s: rel(f.arrival_s),
                first_token_s: rel(f.first_token_s),
                finish_s: rel(f.finish_s),
                output_tokens: f.output.len() as u32,
            };
            let _ = metrics.record_request(&t);
            emit(
                json!({"ts": t.finish_s, "type": "request", "id": f.id,
                       "ttft_s": t.ttft_s(), "tpot_s": t.tpot_s(),
                       "output_tokens": t.output_tokens, "instances": f.instances}),
                out,
            )?;
        }
        let now = rel(server.now());
        let all_in = traffic_done.load(Ordering::Acquire) && steps_done.load(Ordering::Acquire);
        if all_in && server.pending() == 0 {
            break;
        }
        if now > deadline {
            eprintln!(
                "emoe-agent: stopping: {:.0}s past the last arrival",
                now - last_arrival
            );
            break;
        }
    }
    let _ = traffic.join();
    let _ = scaler.join();
    let duration_s = rel(server.now());

    let w = s.window.map_or(5.0, |d| d.as_secs_f64());
    let mut steps = Vec::new();
    let mut failed_steps: Vec<String> = refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for r in results.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        match r {
            Ok((at, rep)) => {
                let start = rel(rep.started_s);
                let end = start + rep.latency_s + rep.times.release_s;
                let win = |a: f64, b: f64| metrics.summary(Some((a.max(0.0), b)));
                let (before, during, after) = (
                    win(start - w, start),
                    win(start, end + w),
                    win(end + w, end + 3.0 * w),
                );
                steps.push(StepReport {
                    at_s: *at,
                    from: rep.from,
                    to: rep.to,
                    latency_s: rep.latency_s,
                    release_s: rep.times.release_s,
                    downtime_s: metrics.longest_gap_s(Some((start, end))),
                    peak_bytes: rep.peak_bytes,
                    bytes_moved: rep.stats.moved_bytes(),
                    moved_requests: rep.moved_requests,
                    drained_requests: rep.drained_requests,
                    throughput: Throughput {
                        before: before.tokens_per_s,
                        during: during.tokens_per_s,
                        after: after.tokens_per_s,
                        requests_before: before.requests_per_s,
                        requests_during: during.requests_per_s,
                        requests_after: after.requests_per_s,
                    },
                });
            }
            Err(e) => failed_steps.push(e.clone()),
        }
    }
    let summary = metrics.summary(None);
    let bucket = (duration_s / 100.0).max(0.25);
    let series = metrics.series(bucket).unwrap_or_default();
    let report = Report {
        series,
        scenario: s.name.clone(),
        requests: requests.len(),
        finished,
        duration_s,
        steps,
        slo_attainment: summary.slo_attainment,
        summary,
        failed_steps,
    };
    if json {
        let mut v = serde_json::to_value(&report).map_err(CliError::failed)?;
        v["type"] = json!("report");
        v["ts"] = json!(duration_s);
        writeln!(out, "{v}").map_err(CliError::failed)?;
    }
    if let Ok(server) = Arc::try_unwrap(server) {
        server.shutdown();
    }
    Ok(report)
}
