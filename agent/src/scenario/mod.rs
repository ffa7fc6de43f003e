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
use emoe_core::plan::Topology;
use emoe_core::scale::Strategy;
use emoe_core::traffic::{RequestSpec, prompt_ids};

pub use spec::{Autoscale, Scenario, ScenarioError};

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
    /// The longest gap between completed decode steps from the step's start to its release.
    pub downtime_s: f64,
    /// The same measure over an equally long window just before the step: the serving
    /// cadence's own gap, to read `downtime_s` against.
    pub gap_before_s: f64,
    pub peak_bytes: u64,
    pub bytes_moved: u64,
    pub moved_requests: usize,
    pub drained_requests: usize,
    /// Generated tokens per second (and requests per second).
    pub throughput: Throughput,
    /// Tokens processed per second, prefill and decode alike, in the same windows: the serving
    /// capacity, free of the prefill/decode mix (a replica that just took new requests prefills
    /// before it generates).
    pub processed: Throughput,
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

/// Sleep `s` seconds (validated times stay far below a Duration's range; clamp anyway so a
/// caller's odd value cannot panic).
fn sleep_s(s: f64) {
    let s = s.clamp(0.0, emoe_core::traffic::MAX_SECONDS);
    std::thread::sleep(Duration::try_from_secs_f64(s).unwrap_or_default());
}

/// Sleep until `server.now()` reaches `t` in short slices; `false` when `over` is set first.
fn sleep_until(server: &Server, t: f64, over: &AtomicBool) -> bool {
    loop {
        if over.load(Ordering::Acquire) {
            return false;
        }
        let wait = t - server.now();
        if wait <= 0.0 {
            return true;
        }
        sleep_s(wait.min(0.1));
    }
}

/// A scaling step to run at a time.
#[derive(Clone, Copy, Debug)]
pub struct TimedStep {
    pub at_s: f64,
    pub to: ParallelConfig,
    pub strategy: Strategy,
}

/// What a driven run collected.
pub struct Driven {
    pub metrics: Metrics,
    /// Tokens processed per decode step (prefill and decode alike): the compute throughput.
    pub processed: Metrics,
    /// Per step: its scheduled time and report, or why it failed.
    pub results: Vec<StepResult>,
    /// Requests the server refused.
    pub refused: Vec<String>,
    pub finished: usize,
    pub duration_s: f64,
}

/// Serve `requests` on `server` (arrivals relative to now), run `steps` at their times, and
/// collect metrics until every request finished. `sink` gets every event as JSON (with `ts`
/// and `type`); `human` also logs phase and instance changes to stderr.
#[allow(clippy::too_many_arguments)]
pub fn drive(
    server: &Arc<Server>,
    requests: &[RequestSpec],
    seed: u64,
    vocab: u32,
    steps: &[TimedStep],
    autoscale: Option<&Autoscale>,
    slo: Option<Slo>,
    topology: Topology,
    human: bool,
    sink: &mut dyn FnMut(serde_json::Value) -> Result<(), CliError>,
) -> Result<Driven, CliError> {
    // Standby runtimes for every target, pre-initialized before the run (the paper's PreInit).
    for st in steps {
        let _ = server.pre_initialize(st.to);
    }
    if let Some(a) = autoscale
        && let Some(cfg) = server.active().map(|d| d.config)
    {
        for dp in a.min_dp..=a.max_dp {
            if let Ok(c) = ParallelConfig::from_dp_tp(dp, cfg.tp())
                && c != cfg
            {
                let _ = server.pre_initialize(c);
            }
        }
    }
    let t0 = server.now();

    // Traffic: submit each request at its arrival time.
    let traffic_done = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let traffic = {
        let (server, done, refused) = (
            Arc::clone(server),
            Arc::clone(&traffic_done),
            Arc::clone(&refused),
        );
        let requests = requests.to_vec();
        std::thread::spawn(move || {
            for r in requests {
                let wait = t0 + r.arrival_s - server.now();
                if wait > 0.0 {
                    sleep_s(wait);
                }
                let prompt = prompt_ids(seed, r.id, r.prompt_tokens, vocab);
                if let Err(e) = server.submit(Submit {
                    prompt,
                    output_tokens: r.output_tokens,
                    ..Default::default()
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

    let auto_topology = topology.clone();
    // Set when the run ends (drained, or its deadline): waiting threads stop waiting.
    let run_over = Arc::new(AtomicBool::new(false));
    // Scaling: each step at its time, one after the other.
    let steps_done = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<Vec<StepResult>>> = Arc::default();
    let scaler = {
        let (server, done, results, over) = (
            Arc::clone(server),
            Arc::clone(&steps_done),
            Arc::clone(&results),
            Arc::clone(&run_over),
        );
        let steps = steps.to_vec();
        std::thread::spawn(move || {
            for st in steps {
                // In slices, so a run that ends first is not held up by a later step.
                if !sleep_until(&server, t0 + st.at_s, &over) {
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Err(format!(
                            "{} to {} at {}s: not run, the run ended first",
                            st.strategy, st.to, st.at_s
                        )));
                    continue;
                }
                let r = server
                    .scale_with(st.strategy, st.to, &topology, &AtomicBool::new(false))
                    .map(|rep| (st.at_s, rep))
                    .map_err(|e| format!("{} to {} at {}s: {e}", st.strategy, st.to, st.at_s));
                results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            }
            done.store(true, Ordering::Release);
        })
    };

    // Autoscaling: one TP group at a time on load, until the run drains.
    let autoscaler = autoscale.cloned().map(|a| {
        let (server, over, results, traffic_done) = (
            Arc::clone(server),
            Arc::clone(&run_over),
            Arc::clone(&results),
            Arc::clone(&traffic_done),
        );
        std::thread::spawn(move || {
            let mut last_step = f64::NEG_INFINITY;
            while !over.load(Ordering::Acquire) {
                if !sleep_until(&server, server.now() + a.interval.as_secs_f64(), &over) {
                    break;
                }
                let now = server.now() - t0;
                if now - last_step < a.cooldown.as_secs_f64() {
                    continue;
                }
                // No active instance while a cold restart reloads: decide next time.
                let Some(cfg) = server.active().map(|d| d.config) else {
                    continue;
                };
                let load = server.pending() as f64 / f64::from(cfg.dp().max(1));
                let dp = if load > a.up_queue && cfg.dp() < a.max_dp {
                    cfg.dp() + 1
                } else if load < a.down_queue
                    && cfg.dp() > a.min_dp
                    && !(traffic_done.load(Ordering::Acquire) && server.pending() == 0)
                {
                    cfg.dp() - 1
                } else {
                    continue;
                };
                let Ok(to) = ParallelConfig::from_dp_tp(dp, cfg.tp()) else {
                    continue;
                };
                let r = server
                    .scale_with(
                        Strategy::Elastic,
                        to,
                        &auto_topology,
                        &AtomicBool::new(false),
                    )
                    .map(|rep| (now, rep))
                    .map_err(|e| format!("autoscale to {to} at {now:.1}s: {e}"));
                if matches!(&r, Err(e) if e.contains("already running")) {
                    continue;
                }
                last_step = server.now() - t0;
                results.lock().unwrap_or_else(|p| p.into_inner()).push(r);
            }
        })
    });

    let mut metrics = Metrics::new(slo);
    let mut processed = Metrics::new(None);
    let mut finished = 0usize;
    let rel = |t: f64| (t - t0).max(0.0);
    let last_arrival = requests.last().map_or(0.0, |r| r.arrival_s);
    let deadline = last_arrival + 600.0;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        for e in server.take_events() {
            match e {
                ServeEvent::Step {
                    ts, tokens, batch, ..
                } => {
                    let _ = processed.record_tokens(rel(ts), batch as u64);
                    let _ = metrics.record_step(rel(ts));
                    if tokens > 0 {
                        let _ = metrics.record_tokens(rel(ts), tokens as u64);
                    }
                }
                ServeEvent::Scale { ts, event } => {
                    let v = json!({"ts": rel(ts), "type": "scale", "event": event});
                    if human && let Some(p) = v["event"]["phase"].as_str() {
                        eprintln!("emoe-agent: [{:7.2}s] scaling: {p}", rel(ts));
                    }
                    sink(v)?;
                }
                ServeEvent::Instance {
                    ts,
                    instance,
                    config,
                    state,
                } => {
                    if human {
                        eprintln!(
                            "emoe-agent: [{:7.2}s] instance {instance} {config}: {state:?}",
                            rel(ts)
                        );
                    }
                    sink(
                        json!({"ts": rel(ts), "type": "instance", "instance": instance,
                                "config": config, "state": state}),
                    )?;
                }
                ServeEvent::Error { ts, message } => {
                    eprintln!("emoe-agent: [{:7.2}s] error: {message}", rel(ts));
                    sink(json!({"ts": rel(ts), "type": "error", "message": message}))?;
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
            sink(json!({"ts": t.finish_s, "type": "request", "id": f.id,
                        "ttft_s": t.ttft_s(), "tpot_s": t.tpot_s(),
                        "output_tokens": t.output_tokens, "instances": f.instances}))?;
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
    run_over.store(true, Ordering::Release);
    let _ = traffic.join();
    let _ = scaler.join();
    if let Some(a) = autoscaler {
        let _ = a.join();
    }
    let duration_s = rel(server.now());
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    // Timed and load-driven steps, in the order they started.
    results.sort_by(|a, b| {
        let at = |r: &StepResult| r.as_ref().map_or(f64::INFINITY, |x| x.1.started_s);
        at(a).total_cmp(&at(b))
    });
    let refused = std::mem::take(&mut *refused.lock().unwrap_or_else(|p| p.into_inner()));
    // Reports carry server times; make them relative like the metrics.
    let results = results
        .into_iter()
        .map(|r| {
            r.map(|(at, mut rep)| {
                rep.started_s = rel(rep.started_s);
                (at, rep)
            })
        })
        .collect();
    Ok(Driven {
        metrics,
        processed,
        results,
        refused,
        finished,
        duration_s,
    })
}

/// The report of one step: its own downtime (longest gap between decode steps from its start to
/// its release) and throughput in windows of half-width `w`; `during_s`, when given, fixes the
/// length of the during window (the bench uses the slowest strategy's transition, as the paper
/// does), else it runs to `w` past the step's release.
pub fn step_report(
    metrics: &Metrics,
    processed: &Metrics,
    at: f64,
    rep: &ScaleReport,
    w: f64,
    during_s: Option<f64>,
) -> StepReport {
    let start = rep.started_s;
    let end = start + rep.latency_s + rep.times.release_s;
    let during_end = during_s.map_or(end + w, |d| start + d.max(w));
    let windows = |m: &Metrics| {
        let win = |a: f64, b: f64| m.summary(Some((a.max(0.0), b)));
        let (b, d, a) = (
            win(start - w, start),
            win(start, during_end),
            win(during_end, during_end + 2.0 * w),
        );
        Throughput {
            before: b.tokens_per_s,
            during: d.tokens_per_s,
            after: a.tokens_per_s,
            requests_before: b.requests_per_s,
            requests_during: d.requests_per_s,
            requests_after: a.requests_per_s,
        }
    };
    StepReport {
        at_s: at,
        from: rep.from,
        to: rep.to,
        latency_s: rep.latency_s,
        release_s: rep.times.release_s,
        downtime_s: metrics.longest_gap_s(Some((start, end))),
        gap_before_s: metrics.longest_gap_s(Some(((2.0 * start - end).max(0.0), start))),
        peak_bytes: rep.peak_bytes,
        bytes_moved: rep.stats.moved_bytes(),
        moved_requests: rep.moved_requests,
        drained_requests: rep.drained_requests,
        throughput: windows(metrics),
        processed: windows(processed),
    }
}

/// Start a server on a fresh node: the HMM, the model loaded under its initial config.
pub fn start_server(o: &NodeOptions, opts: ServeOptions) -> Result<(Arc<Server>, u32), CliError> {
    let Node {
        hmm,
        deployment,
        checkpoint,
    } = Node::start(o)?;
    if checkpoint.is_none() {
        return Err(CliError::usage(anyhow::anyhow!(
            "serving computes on the weights: use a backend that holds bytes (host), not {}",
            hmm.backend().kind()
        )));
    }
    let vocab = deployment.model.vocab_size;
    let server = Server::start(hmm, deployment, checkpoint, opts)
        .map_err(|e| CliError::new(exit::REFUSED, e))?;
    Ok((Arc::new(server), vocab))
}

/// Run `s`, writing NDJSON events to `out` when `json` (else short human lines to stderr), and
/// return the report (also written to `out` as the last line in JSON mode).
pub fn run(s: &Scenario, json: bool, out: &mut dyn Write) -> Result<Report, CliError> {
    let requests: Vec<RequestSpec> = s.traffic.generate().map_err(CliError::usage)?;
    let opts = ServeOptions {
        max_batch: s.serve.max_batch,
        ..ServeOptions::default()
    };
    let (server, vocab) = start_server(&node_options(s)?, opts)?;
    // A target this node could never hold is refused before the run starts.
    let mut targets: Vec<(String, ParallelConfig)> = s
        .scale
        .iter()
        .enumerate()
        .map(|(i, st)| (format!("[[scale]] step {} (at {:?})", i + 1, st.at), st.to))
        .collect();
    if let Some(a) = &s.autoscale {
        for dp in [a.min_dp, a.max_dp] {
            let c = ParallelConfig::from_dp_tp(dp, s.serve.config.tp())
                .map_err(|e| CliError::usage(anyhow::anyhow!("autoscale: {e}")))?;
            targets.push((format!("autoscale at DP {dp}"), c));
        }
    }
    for (what, to) in targets {
        if let Err(e) = server.check_can_ever_hold(to) {
            if let Ok(server) = Arc::try_unwrap(server) {
                server.shutdown();
            }
            return Err(CliError::new(
                exit::REFUSED,
                anyhow::anyhow!("scenario {what} to {to} can never run on this node: {e}"),
            ));
        }
    }
    let bw = measure_memcpy();
    let steps: Vec<TimedStep> = s
        .scale
        .iter()
        .map(|st| TimedStep {
            at_s: st.at.as_secs_f64(),
            to: st.to,
            strategy: Strategy::Elastic,
        })
        .collect();
    let slo = s.slo.as_ref().map(|x| Slo {
        ttft_s: x.ttft.as_secs_f64(),
        tpot_s: x.tpot.as_secs_f64(),
    });
    let mut sink = |v: serde_json::Value| -> Result<(), CliError> {
        if json {
            writeln!(out, "{v}").map_err(CliError::failed)?;
        }
        Ok(())
    };
    let d = drive(
        &server,
        &requests,
        s.traffic.seed,
        vocab,
        &steps,
        s.autoscale.as_ref(),
        slo,
        Topology::uniform(bw, bw),
        !json,
        &mut sink,
    )?;
    let w = s.window.map_or(5.0, |d| d.as_secs_f64());
    let mut steps = Vec::new();
    let mut failed_steps = d.refused.clone();
    for r in &d.results {
        match r {
            Ok((at, rep)) => steps.push(step_report(&d.metrics, &d.processed, *at, rep, w, None)),
            Err(e) => failed_steps.push(e.clone()),
        }
    }
    let summary = d.metrics.summary(None);
    let bucket = (d.duration_s / 100.0).max(0.25);
    let series = d.metrics.series(bucket).unwrap_or_default();
    let report = Report {
        series,
        scenario: s.name.clone(),
        requests: requests.len(),
        finished: d.finished,
        duration_s: d.duration_s,
        steps,
        slo_attainment: summary.slo_attainment,
        summary,
        failed_steps,
    };
    if json {
        let mut v = serde_json::to_value(&report).map_err(CliError::failed)?;
        v["type"] = json!("report");
        v["ts"] = json!(d.duration_s);
        writeln!(out, "{v}").map_err(CliError::failed)?;
    }
    if let Ok(server) = Arc::try_unwrap(server) {
        server.shutdown();
    }
    Ok(report)
}
