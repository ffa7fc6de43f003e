//! `emoe-agent bench`: measurements that print JSON and compare side by side in one run.
//!
//! - `bench scale`: one scaling step by each strategy (ElasticMoE and the paper's baselines), on
//!   a fresh node per run, reporting the median latency, bytes moved and HMM-measured peak.
//! - `bench plan`: the planner's own speed on a large model (e.g. DeepSeek-V3 on the modeled
//!   backend).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;

use emoe_core::DeviceId;
use emoe_core::ParallelConfig;
use emoe_core::backend::BackendKind;
use emoe_core::deploy::{DeployOptions, Deployment};
use emoe_core::plan::{self, Plan, PlanInput, Policy, Topology};
use emoe_core::scale::{self, Strategy, TransitionOptions, pool_state};

use super::{NodeArgs, parse_size};
use crate::bandwidth::{measure_backend_copy, measure_memcpy, topology_for};
use crate::cluster::{DEFAULT_VIRTUAL_DEVICES, Node, NodeOptions, build_backend};
use crate::exit::{self, CliError};
use crate::plot::{Marker, Series, write_svg};
use crate::scale::{ExecOptions, PhaseTimes, run_elastic};
use crate::scenario::{TimedStep, drive, step_report};
use crate::serve::ServeOptions;
use emoe_core::metrics::Metrics;
use emoe_core::traffic::{RequestSpec, TrafficSpec};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Without a subcommand: the paper's experiments side by side (the flags below).
    #[command(subcommand)]
    pub what: Option<BenchCommand>,
    #[command(flatten)]
    pub paper: super::paper::PaperArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Scale from `--from` to `--to` with each strategy and compare latency, bytes and peak.
    Scale(ScaleArgs),
    /// Time the planner (no execution of the plan beyond one accounting-only run).
    Plan(PlanBenchArgs),
    /// The cumulative ablation: ElasticMoE, then without zero-copy, without P2P (disk), without
    /// pre-initialization, each while serving.
    Ablation(super::ablation::AblationArgs),
    /// The paper's experiments in one run: scale-up and scale-down latency per strategy,
    /// throughput while serving per strategy, the ablation; JSON and tables.
    Paper(super::paper::PaperArgs),
    /// The agent's update stream: updates/s and agent CPU with many watchers, and idle.
    Watch(super::bench_watch::WatchBenchArgs),
    /// A long run of the agent (traffic, a watcher, a scale every --scale-every): its memory at
    /// the start and the end, requests served, operations run.
    Soak(super::bench_soak::SoakArgs),
    /// Streaming clients of the OpenAI-compatible API through a scale up and back down, beside
    /// a control run without scaling: TTFT and inter-token latency per phase, and a verdict.
    Http(super::bench_http::HttpBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Target parallel config (TP must stay the same).
    #[arg(long)]
    pub to: ParallelConfig,
    /// Comma-separated strategies: elastic, cold-restart, colocated, extravagant, horizontal,
    /// or `all`. Strategies that need more devices than `--devices` get a larger node (host and
    /// modeled) and say so in `devices_used`.
    #[arg(long, default_value = "elastic,cold-restart", value_parser = parse_strategies)]
    pub strategies: StrategyList,
    /// Runs per strategy; latency is the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Copies in flight at once per link (source device → destination device).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub copies_per_link: u32,
    /// Threads that run copy jobs (default: the machine's parallelism; never more than the
    /// backend's copy queues, one stream per GPU or NPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub copy_workers: Option<u32>,
    /// Serve traffic while scaling: Poisson requests/s (e.g. `4`), or a TOML file whose
    /// `[traffic]` table gives the traffic. Adds throughput before/during/after and downtime.
    #[arg(long, value_name = "RATE|FILE")]
    pub traffic: Option<String>,
    /// With --traffic: when the scaling step starts.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub at: Duration,
    /// With --traffic RATE: how long requests arrive.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// With --traffic: half-width of the before/after windows; the during window spans the
    /// slowest strategy's transition (at least this long).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// With --traffic: most requests per decode step of a replica.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch: u32,
    /// With --traffic: draw throughput and SLO attainment over time per strategy (SVG).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Skip pre-initialization: no pre-allocated pool filled with the step's allocations and no
    /// standby runtime before the command (the `-pre-init` row of the ablation).
    #[arg(long)]
    pub no_pre_init: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlanBenchArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Target parallel config (TP must stay the same).
    #[arg(long)]
    pub to: ParallelConfig,
    /// Planner runs; the time reported is the median.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub runs: u32,
    /// Device-to-device bandwidth for the time model (bytes/s); default as in `plan`.
    #[arg(long, value_parser = parse_size)]
    pub intra_bw: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Strategies in the order given, each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrategyList(pub Vec<Strategy>);

fn parse_strategies(s: &str) -> Result<StrategyList, String> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(StrategyList(Strategy::ALL.to_vec()));
    }
    let mut v = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let x: Strategy = part.parse()?;
        if !v.contains(&x) {
            v.push(x);
        }
    }
    if v.is_empty() {
        return Err("give at least one strategy, e.g. elastic,cold-restart".into());
    }
    Ok(StrategyList(v))
}

pub fn run(a: &BenchArgs) -> Result<(), CliError> {
    let Some(what) = &a.what else {
        return super::paper::run(&a.paper);
    };
    match what {
        BenchCommand::Scale(s) => scale_bench(s),
        BenchCommand::Plan(p) => plan_bench(p),
        BenchCommand::Ablation(x) => super::ablation::run(x),
        BenchCommand::Paper(x) => super::paper::run(x),
        BenchCommand::Watch(x) => super::bench_watch::run(x),
        BenchCommand::Soak(x) => super::bench_soak::run(x),
        BenchCommand::Http(x) => super::bench_http::run(x),
    }
}

pub(super) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// One strategy's results over its runs.
#[derive(Debug, Serialize)]
pub(super) struct StrategyReport {
    /// Median over runs, seconds from the command to a ready new instance.
    pub(super) latency_s: f64,
    pub(super) latency_runs_s: Vec<f64>,
    /// Bytes copied device to device, within devices, or read from disk.
    pub(super) bytes_moved: u64,
    /// Highest HMM-measured peak of any device involved.
    pub(super) peak_bytes: u64,
    /// Sum of the per-device peaks over the devices involved.
    pub(super) peak_total_bytes: u64,
    /// Devices holding an instance at some point of the step.
    pub(super) devices_involved: usize,
    /// Devices of the node the strategy ran on.
    pub(super) devices_used: usize,
    /// Elastic only: bytes that had to move ÷ the copy bandwidth measured in this run (host
    /// memcpy on the host backend, the driver's device-to-device copy on cuda and ascend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) floor_s: Option<f64>,
    /// Elastic only: median seconds per phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) phases: Option<PhaseTimes>,
    /// This strategy's median latency ÷ elastic's (when elastic ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) vs_elastic: Option<f64>,
    /// With --traffic: generated tokens/s before, during and after the step (medians of runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) throughput_before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) throughput_during: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) throughput_after: Option<f64>,
    /// With --traffic: tokens processed per second (prefill and decode) in the same windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) processed_before: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) processed_during: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) processed_after: Option<f64>,
    /// With --traffic: the longest gap between completed decode steps during the step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) downtime_s: Option<f64>,
    /// With --traffic: requests that moved to the new instance and that drained (last run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) requests_moved: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) requests_drained: Option<usize>,
}

#[derive(Debug, Serialize)]
pub(super) struct ScaleReport {
    pub(super) model: String,
    pub(super) backend: String,
    pub(super) from: ParallelConfig,
    pub(super) to: ParallelConfig,
    pub(super) runs: u32,
    /// Host memcpy, measured in this run (the host backend's device-to-device path).
    pub(super) memcpy_bytes_per_s: f64,
    /// The backend's own device-to-device copy rate, measured in this run: `floor_s` and the
    /// planner's time model use it. Equal to `memcpy_bytes_per_s` on host and modeled.
    pub(super) copy_bytes_per_s: f64,
    /// What `copy_bytes_per_s` measured.
    pub(super) copy_path: String,
    pub(super) strategies: BTreeMap<String, StrategyReport>,
    /// Strategies that could not run, with the reason.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) skipped: BTreeMap<String, String>,
    /// Labels that qualify the numbers (e.g. logical devices carved from one GPU).
    pub(super) notes: Vec<String>,
}

/// One run's measurements.
pub(super) struct RunResult {
    pub latency_s: f64,
    pub bytes_moved: u64,
    pub peaks: BTreeMap<DeviceId, u64>,
    pub floor_bytes: Option<u64>,
    pub phases: Option<PhaseTimes>,
    /// With --traffic: what the server measured, and the step's report.
    pub served: Option<(Metrics, Metrics, crate::serve::ScaleReport, f64)>,
}

fn involved(old: &Deployment, new: &[&Deployment]) -> Vec<DeviceId> {
    let mut v: Vec<DeviceId> = old.devices.iter().map(|r| r.device).collect();
    for d in new {
        v.extend(d.devices.iter().map(|r| r.device));
    }
    v.sort();
    v.dedup();
    v
}

fn plan_input<'a>(
    d: &'a Deployment,
    from_devices: &'a [DeviceId],
    pool: &'a [plan::DeviceState],
    to: ParallelConfig,
    kv_tokens: u64,
    topology: &'a Topology,
) -> PlanInput<'a> {
    PlanInput {
        model: &d.model,
        from: d.config,
        from_devices,
        placement: &d.placement,
        pool,
        to,
        to_devices: None,
        policy: Policy::Balanced,
        operation_running: false,
        kv_tokens,
        topology,
    }
}

fn refused(e: impl Into<anyhow::Error>) -> CliError {
    CliError::new(exit::REFUSED, e)
}

/// One run of one strategy on a fresh node. Loading the starting config is not timed.
fn run_once(
    s: Strategy,
    o: &NodeOptions,
    to: ParallelConfig,
    exec: &ExecOptions,
    topology: &Topology,
    pre_init: bool,
) -> Result<RunResult, CliError> {
    if s == Strategy::Horizontal && to.devices() < o.config.devices() {
        return Err(refused(anyhow::anyhow!(
            "horizontal scaling adds a whole replica; it has no scale-down step"
        )));
    }
    let Node {
        mut hmm,
        deployment: old,
        checkpoint,
    } = Node::start(o)?;
    let ids: Vec<DeviceId> = hmm.devices().iter().map(|d| d.id).collect();
    for d in &ids {
        hmm.reset_peak(*d).map_err(CliError::failed)?;
    }
    let from_devices: Vec<DeviceId> = old.devices.iter().map(|r| r.device).collect();
    let options = DeployOptions {
        kv_tokens: o.kv_tokens,
        ..DeployOptions::default()
    };
    if s == Strategy::Elastic && pre_init {
        // Pre-initialization, before the command: the pool holds the step's allocations (the
        // paper's pre-allocated IPC memory pool).
        let pool = pool_state(&hmm);
        let input = plan_input(&old, &from_devices, &pool, to, o.kv_tokens, topology);
        let p = plan::plan(&input).map_err(refused)?;
        scale::prefault(&hmm, &old, &p).map_err(CliError::failed)?;
    }
    let start = Instant::now();
    let (new, keep, devices, bytes_moved, floor_bytes, phases, latency_s) =
        if s == Strategy::Elastic {
            let pool = pool_state(&hmm);
            let input = plan_input(&old, &from_devices, &pool, to, o.kv_tokens, topology);
            let p: Plan = plan::plan(&input).map_err(refused)?;
            let plan_s = start.elapsed().as_secs_f64();
            let cancel = AtomicBool::new(false);
            let devices = involved(&old, &[]);
            let out = run_elastic(
                &mut hmm,
                old,
                &p,
                checkpoint.as_ref(),
                exec,
                &cancel,
                &|_| {},
            )
            .map_err(CliError::failed)?;
            let mut devices = devices;
            devices.extend(out.deployment.devices.iter().map(|r| r.device));
            devices.sort();
            devices.dedup();
            let moved = out.stats.moved_bytes();
            // Ready at the switchover: planning and the phases before release.
            let latency = plan_s + out.times.latency_s();
            (
                out.deployment,
                None,
                devices,
                moved,
                Some(moved),
                Some(out.times),
                latency,
            )
        } else {
            let to_devices: Vec<DeviceId> = {
                let mut t = from_devices.clone();
                t.extend(ids.iter().filter(|d| !from_devices.contains(d)).copied());
                t.truncate(to.devices() as usize);
                t
            };
            let before = involved(&old, &[]);
            let out = scale::run_baseline(
                s,
                &mut hmm,
                old,
                to,
                &to_devices,
                checkpoint.as_ref(),
                &options,
            )
            .map_err(|e| {
                let code = match e.error {
                    scale::ScaleError::NotEnoughDevices { .. }
                    | scale::ScaleError::NotEnoughMemory { .. }
                    | scale::ScaleError::Deploy(emoe_core::deploy::DeployError::OutOfMemory {
                        ..
                    }) => exit::REFUSED,
                    _ => exit::FAILED,
                };
                CliError::new(code, e)
            })?;
            let mut devices = before;
            devices.extend(out.new.devices.iter().map(|r| r.device));
            devices.sort();
            devices.dedup();
            let moved = out.new.stats.disk_bytes + out.new.stats.p2p_bytes;
            // Ready when the new instance is loaded; the old one is released after that.
            let latency = start.elapsed().as_secs_f64();
            let keep = match out.old {
                Some(old) if s != Strategy::Horizontal => {
                    old.unload(&mut hmm).map_err(CliError::failed)?;
                    None
                }
                other => other,
            };
            (out.new, keep, devices, moved, None, None, latency)
        };
    // Correctness is part of the measurement: the new instance holds the checkpoint's bytes.
    let bad = new.verify(&hmm).map_err(CliError::failed)?;
    if !bad.is_empty() {
        return Err(CliError::failed(anyhow::anyhow!(
            "{s}: {} allocations differ from the checkpoint after scaling (first: {:?})",
            bad.len(),
            bad[0]
        )));
    }
    let mut peaks = BTreeMap::new();
    for d in devices {
        peaks.insert(d, hmm.usage(d).map_err(CliError::failed)?.peak);
    }
    drop(keep);
    Ok(RunResult {
        latency_s,
        bytes_moved,
        peaks,
        floor_bytes,
        phases,
        served: None,
    })
}

/// Traffic for a serving bench.
pub(super) struct TrafficCtx {
    pub requests: Vec<RequestSpec>,
    pub seed: u64,
    pub at_s: f64,
    pub opts: ServeOptions,
}

fn traffic_ctx(a: &ScaleArgs) -> Result<TrafficCtx, CliError> {
    let Some(t) = &a.traffic else {
        return Err(CliError::usage(anyhow::anyhow!("no traffic given")));
    };
    traffic_from(t, a.duration, a.at, a.max_batch)
}

/// `--traffic RATE|FILE` with the serving knobs.
pub(super) fn traffic_from(
    t: &str,
    duration: Duration,
    at: Duration,
    max_batch: u32,
) -> Result<TrafficCtx, CliError> {
    let spec: TrafficSpec = match t.trim().parse::<f64>() {
        Ok(rate) => {
            let text = format!(
                "profile = \"poisson\"\nrate = {rate}\nprompt = {{ uniform = {{ min = 8, max = 32 }} }}\noutput = {{ fixed = 16 }}\nseed = 1\nduration_s = {}\n",
                duration.as_secs_f64()
            );
            toml::from_str(&text)
                .map_err(|e| CliError::usage(anyhow::anyhow!("--traffic {t}: {}", e.message())))?
        }
        Err(_) => {
            #[derive(serde::Deserialize)]
            struct File {
                traffic: TrafficSpec,
            }
            let path = PathBuf::from(t);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                CliError::usage(anyhow::anyhow!(
                    "--traffic {t}: neither a rate in requests/s nor a readable file ({e})"
                ))
            })?;
            let f: File = toml::from_str(&text).map_err(|e| {
                CliError::usage(anyhow::anyhow!("{}: {}", path.display(), e.message()))
            })?;
            f.traffic
        }
    };
    let requests = spec.generate().map_err(CliError::usage)?;
    Ok(TrafficCtx {
        requests,
        seed: spec.seed,
        at_s: at.as_secs_f64(),
        opts: ServeOptions {
            max_batch: max_batch as usize,
            ..ServeOptions::default()
        },
    })
}

/// One run of one strategy while serving: a fresh node and server, the traffic, the step at
/// its time; latency, bytes and peak come from the server's report.
pub(super) fn run_served(
    s: Strategy,
    o: &NodeOptions,
    to: ParallelConfig,
    t: &TrafficCtx,
    topology: Topology,
) -> Result<RunResult, CliError> {
    let (server, vocab) = crate::scenario::start_server(o, t.opts.clone())?;
    let step = TimedStep {
        at_s: t.at_s,
        to,
        strategy: s,
    };
    let d = drive(
        &server,
        &t.requests,
        t.seed,
        vocab,
        &[step],
        None,
        None,
        topology,
        false,
        &mut |_| Ok(()),
    )?;
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.shutdown();
    }
    let (at, rep) = match d.results.into_iter().next() {
        Some(Ok(x)) => x,
        Some(Err(e)) => return Err(refused(anyhow::anyhow!(e))),
        None => {
            return Err(CliError::failed(anyhow::anyhow!(
                "{s}: the step did not run"
            )));
        }
    };
    let moved = rep.stats.moved_bytes();
    Ok(RunResult {
        latency_s: rep.latency_s,
        bytes_moved: moved,
        peaks: BTreeMap::from([(DeviceId::new(o.node, 0), rep.peak_bytes)]),
        floor_bytes: (s == Strategy::Elastic).then_some(moved),
        phases: Some(rep.times),
        served: Some((d.metrics, d.processed, rep, at)),
    })
}

fn scale_bench(a: &ScaleArgs) -> Result<(), CliError> {
    let report = scale_report(a)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(CliError::failed)?
        );
    } else {
        print_scale_table(&report);
    }
    Ok(())
}

/// Run `bench scale` and return its report.
pub(super) fn scale_report(a: &ScaleArgs) -> Result<ScaleReport, CliError> {
    let from = a.node.config;
    if from.tp() != a.to.tp() {
        return Err(refused(anyhow::anyhow!(
            "TP must stay {}, target {} has {}",
            from.tp(),
            a.to,
            a.to.tp()
        )));
    }
    let base = a.node.options();
    let given = base.devices;
    let memcpy_bw = measure_memcpy();
    // The backend once before the runs: its kind, its device count, and (vendor backends) its
    // own copy rate, which host memcpy says nothing about.
    let (kind, backend_devices, bw, copy_path) = {
        let probe = build_backend(&base)?;
        let kind = probe.kind();
        let n = probe.devices().len();
        match kind {
            BackendKind::Host => (kind, n, memcpy_bw, "host memcpy".to_string()),
            BackendKind::Modeled => (
                kind,
                n,
                memcpy_bw,
                "host memcpy (modeled backend: no bytes move)".to_string(),
            ),
            BackendKind::Ascend | BackendKind::Cuda => {
                let first = base.first_device.min(n.saturating_sub(1) as u32);
                let src = DeviceId::new(base.node, first);
                let dst = DeviceId::new(base.node, (first + 1).min(n.saturating_sub(1) as u32));
                let bw =
                    measure_backend_copy(probe.as_ref(), src, dst).map_err(CliError::failed)?;
                (
                    kind,
                    n,
                    bw,
                    format!("{kind} device-to-device copy {src} → {dst}"),
                )
            }
        }
    };
    let defaults = ExecOptions::default();
    let exec = ExecOptions {
        copies_per_link: a.copies_per_link as usize,
        workers: a.copy_workers.map_or(defaults.workers, |w| w as usize),
        transition: TransitionOptions {
            // Checksums are checked once per run after the step, not inside the timed copies.
            verify: false,
            ..defaults.transition
        },
    };
    let mut report = ScaleReport {
        model: String::new(),
        backend: String::new(),
        from,
        to: a.to,
        runs: a.runs,
        memcpy_bytes_per_s: memcpy_bw,
        copy_bytes_per_s: bw,
        copy_path,
        strategies: BTreeMap::new(),
        skipped: BTreeMap::new(),
        notes: Vec::new(),
    };
    let traffic = match &a.traffic {
        Some(_) => {
            let mut t = traffic_ctx(a)?;
            t.opts.pre_init = !a.no_pre_init;
            Some(t)
        }
        None => None,
    };
    let mut elastic_latency = None;
    let mut served: Vec<(Strategy, Vec<RunResult>)> = Vec::new();
    for &s in &a.strategies.0 {
        let need = s.devices_needed(from, a.to) as u32 + base.first_device;
        let mut o = base.clone();
        let virtual_backend = matches!(kind, BackendKind::Host | BackendKind::Modeled);
        if virtual_backend {
            o.devices = Some(given.unwrap_or(DEFAULT_VIRTUAL_DEVICES).max(need));
        }
        let mut runs = Vec::new();
        let mut skipped = None;
        for r in 0..a.runs {
            eprintln!("emoe-agent: bench {s} run {}/{}", r + 1, a.runs);
            let topology = Topology::uniform(bw, bw);
            let r = match &traffic {
                Some(t) => {
                    // Horizontal adds one replica of `from` (scale-up only); the server takes
                    // two of them as its target.
                    let to = match s {
                        Strategy::Horizontal if a.to.devices() >= from.devices() => {
                            ParallelConfig::from_dp_tp(from.dp().saturating_mul(2), from.tp())
                                .unwrap_or(a.to)
                        }
                        _ => a.to,
                    };
                    run_served(s, &o, to, t, topology)
                }
                None => run_once(s, &o, a.to, &exec, &topology, !a.no_pre_init),
            };
            match r {
                Ok(x) => runs.push(x),
                Err(e) if e.code == exit::REFUSED && runs.is_empty() => {
                    skipped = Some(format!("{e}"));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if report.model.is_empty() {
            // Cheap: the checkpoint is cached after the first run.
            report.model = match &o.model {
                crate::cluster::ModelSource::Preset(n) => n.clone(),
                crate::cluster::ModelSource::Dir(d) => d.display().to_string(),
            };
        }
        if let Some(why) = skipped {
            eprintln!("emoe-agent: {s} skipped: {why}");
            report.skipped.insert(s.to_string(), why);
            continue;
        }
        let lat: Vec<f64> = runs.iter().map(|r| r.latency_s).collect();
        let latency_s = median(&lat);
        let last = runs.last().expect("at least one run");
        let phases = (s == Strategy::Elastic || traffic.is_some()).then(|| {
            let m = |f: fn(&PhaseTimes) -> f64| {
                median(
                    &runs
                        .iter()
                        .filter_map(|r| r.phases.as_ref().map(f))
                        .collect::<Vec<_>>(),
                )
            };
            PhaseTimes {
                prepare_s: m(|p| p.prepare_s),
                copy_s: m(|p| p.copy_s),
                commit_s: m(|p| p.commit_s),
                release_s: m(|p| p.release_s),
            }
        });
        if s == Strategy::Elastic {
            elastic_latency = Some(latency_s);
        }
        report.strategies.insert(
            s.to_string(),
            StrategyReport {
                latency_s,
                latency_runs_s: lat,
                bytes_moved: last.bytes_moved,
                peak_bytes: last.peaks.values().copied().max().unwrap_or(0),
                peak_total_bytes: last.peaks.values().sum(),
                devices_involved: last.peaks.len(),
                devices_used: if virtual_backend {
                    o.devices.unwrap_or(0) as usize
                } else {
                    backend_devices
                },
                floor_s: last.floor_bytes.map(|b| b as f64 / bw),
                phases,
                vs_elastic: None,
                throughput_before: None,
                throughput_during: None,
                throughput_after: None,
                processed_before: None,
                processed_during: None,
                processed_after: None,
                downtime_s: None,
                requests_moved: None,
                requests_drained: None,
            },
        );
        served.push((s, runs));
    }
    if traffic.is_some() {
        add_traffic_figures(&mut report, &served, a)?;
    }
    if let Some(e) = elastic_latency {
        for r in report.strategies.values_mut() {
            r.vs_elastic = Some(r.latency_s / e);
        }
    }
    let kind = kind.to_string();
    report.backend = kind.clone();
    if kind == "cuda" && base.logical_per_gpu > 1 {
        report.notes.push(format!(
            "{} logical devices carved from each GPU: copies between them are on-device copies, not peer-to-peer links",
            base.logical_per_gpu
        ));
    }
    report.notes.push(if a.no_pre_init {
        "no pre-initialization: elastic allocates and faults its pages on the scaling path".into()
    } else {
        "elastic is pre-initialized: its allocations wait in the pre-allocated pool (filled before the command, as ElasticMoE's IPC allocator) and its runtime in the standby cache; --no-pre-init turns that off".into()
    });
    if kind == "host" {
        report.notes.push(
            "host backend: devices are memfd-backed host memory; P2P is memcpy; disk reads follow posix_fadvise(DONTNEED)"
                .into(),
        );
    }
    if report.strategies.is_empty() {
        return Err(refused(anyhow::anyhow!(
            "no strategy could run: {}",
            report
                .skipped
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    Ok(report)
}

/// Throughput before/during/after and downtime per strategy, with the during window spanning
/// the slowest strategy's transition (as the paper does), medians over runs; and the plot.
fn add_traffic_figures(
    report: &mut ScaleReport,
    served: &[(Strategy, Vec<RunResult>)],
    a: &ScaleArgs,
) -> Result<(), CliError> {
    let w = a.window.as_secs_f64();
    let transition = |r: &RunResult| {
        r.served
            .as_ref()
            .map_or(0.0, |(_, _, rep, _)| rep.latency_s + rep.times.release_s)
    };
    let slowest = served
        .iter()
        .map(|(_, runs)| median(&runs.iter().map(transition).collect::<Vec<_>>()))
        .fold(0.0, f64::max);
    for (s, runs) in served {
        let steps: Vec<_> = runs
            .iter()
            .filter_map(|r| r.served.as_ref())
            .map(|(m, p, rep, at)| step_report(m, p, *at, rep, w, Some(slowest)))
            .collect();
        let Some(entry) = report.strategies.get_mut(s.as_str()) else {
            continue;
        };
        let med = |f: fn(&crate::scenario::StepReport) -> f64| {
            median(&steps.iter().map(f).collect::<Vec<_>>())
        };
        entry.throughput_before = Some(med(|x| x.throughput.before));
        entry.throughput_during = Some(med(|x| x.throughput.during));
        entry.throughput_after = Some(med(|x| x.throughput.after));
        entry.downtime_s = Some(med(|x| x.downtime_s));
        entry.processed_before = Some(med(|x| x.processed.before));
        entry.processed_during = Some(med(|x| x.processed.during));
        entry.processed_after = Some(med(|x| x.processed.after));
        entry.peak_bytes = steps.iter().map(|x| x.peak_bytes).max().unwrap_or(0);
        entry.peak_total_bytes = 0;
        entry.devices_involved = 0;
        if let Some(last) = steps.last() {
            entry.requests_moved = Some(last.moved_requests);
            entry.requests_drained = Some(last.drained_requests);
        }
    }
    report.notes.push(format!(
        "throughput: generated tokens/s; before = [step − {w}s, step), during = [step, step + {slowest:.2}s, the slowest transition, at least {w}s), after = the {}s that follow; downtime = the longest gap between completed decode steps from the step to its release",
        2.0 * w
    ));
    if let Some(path) = &a.plot {
        let bucket = 0.25;
        let mut data = Vec::new();
        for (s, runs) in served {
            if let Some((m, _, _, _)) = runs.first().and_then(|r| r.served.as_ref()) {
                data.push((s.as_str(), m.series(bucket).unwrap_or_default()));
            }
        }
        let series: Vec<Series> = data
            .iter()
            .map(|(l, p)| Series {
                label: l,
                points: p,
            })
            .collect();
        let label = format!("{} → {}", report.from, report.to);
        let markers = [Marker {
            t_s: a.at.as_secs_f64(),
            label: &label,
        }];
        let title = format!("{}: scaling while serving, by strategy", report.model);
        write_svg(path, &title, &series, &markers).map_err(CliError::failed)?;
        eprintln!("emoe-agent: wrote {}", path.display());
    }
    Ok(())
}

pub(super) fn print_scale_table(r: &ScaleReport) {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!(
        "{} {} → {} on {} ({} runs each; {} {:.1} GB/s)",
        r.model,
        r.from,
        r.to,
        r.backend,
        r.runs,
        r.copy_path,
        r.copy_bytes_per_s / 1e9
    );
    println!(
        "{:<13} {:>10} {:>9} {:>11} {:>11} {:>8} {:>9}",
        "strategy", "latency s", "×elastic", "moved MiB", "peak MiB", "devices", "floor s"
    );
    for (name, s) in &r.strategies {
        println!(
            "{:<13} {:>10.3} {:>9} {:>11.1} {:>11.1} {:>8} {:>9}",
            name,
            s.latency_s,
            s.vs_elastic.map_or("-".into(), |v| format!("{v:.2}")),
            mib(s.bytes_moved),
            mib(s.peak_bytes),
            if s.devices_involved == 0 {
                "-".to_string()
            } else {
                s.devices_involved.to_string()
            },
            s.floor_s.map_or("-".into(), |v| format!("{v:.3}")),
        );
    }
    if r.strategies.values().any(|s| s.throughput_before.is_some()) {
        println!(
            "{:<13} {:>12} {:>12} {:>12} {:>11} {:>7} {:>8}",
            "while serving",
            "before tok/s",
            "during tok/s",
            "after tok/s",
            "downtime s",
            "moved",
            "drained"
        );
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        for (name, s) in &r.strategies {
            println!(
                "{:<13} {:>12} {:>12} {:>12} {:>11} {:>7} {:>8}",
                name,
                f(s.throughput_before),
                f(s.throughput_during),
                f(s.throughput_after),
                s.downtime_s.map_or("-".into(), |v| format!("{v:.3}")),
                s.requests_moved.map_or("-".into(), |v| v.to_string()),
                s.requests_drained.map_or("-".into(), |v| v.to_string()),
            );
        }
    }
    for (name, why) in &r.skipped {
        println!("{name:<13} skipped: {why}");
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}

#[derive(Debug, Serialize)]
struct PlanBenchReport {
    model: String,
    backend: String,
    from: ParallelConfig,
    to: ParallelConfig,
    runs: u32,
    plan_ms_median: f64,
    plan_ms_min: f64,
    plan_ms_max: f64,
    steps: usize,
    experts_moved: u64,
    p2p_bytes: u64,
    predicted_seconds: f64,
    /// One execution of the plan on the node's backend (accounting only on modeled).
    execute_ms: f64,
}

fn plan_bench(a: &PlanBenchArgs) -> Result<(), CliError> {
    let mut o = a.node.options();
    let need = a.node.config.devices().max(a.to.devices()) + o.first_device;
    if o.devices.is_none() {
        o.devices = Some(need.max(DEFAULT_VIRTUAL_DEVICES));
    }
    let Node {
        mut hmm,
        deployment: d,
        checkpoint,
    } = Node::start(&o)?;
    let (topology, _) = topology_for(hmm.backend().kind(), a.intra_bw.map(|b| b as f64), None);
    let pool = pool_state(&hmm);
    let from_devices: Vec<DeviceId> = d.devices.iter().map(|r| r.device).collect();
    let input = plan_input(&d, &from_devices, &pool, a.to, o.kv_tokens, &topology);
    let mut times = Vec::with_capacity(a.runs as usize);
    let mut last = None;
    for _ in 0..a.runs {
        let t = Instant::now();
        let p = plan::plan(&input).map_err(refused)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        last = Some(p);
    }
    let p = last.expect("runs ≥ 1");
    let t = Instant::now();
    let new = scale::execute(
        &mut hmm,
        &d,
        &p,
        checkpoint.as_ref(),
        &TransitionOptions::default(),
    )
    .map_err(CliError::failed)?;
    d.unload(&mut hmm).map_err(CliError::failed)?;
    let execute_ms = t.elapsed().as_secs_f64() * 1e3;
    let report = PlanBenchReport {
        model: new.model.name.clone(),
        backend: hmm.backend().kind().to_string(),
        from: p.from,
        to: p.to,
        runs: a.runs,
        plan_ms_median: median(&times),
        plan_ms_min: times.iter().copied().fold(f64::INFINITY, f64::min),
        plan_ms_max: times.iter().copied().fold(0.0, f64::max),
        steps: p.steps.len(),
        experts_moved: p.experts_moved,
        p2p_bytes: p.p2p_bytes,
        predicted_seconds: p.predicted_seconds,
        execute_ms,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(CliError::failed)?
        );
    } else {
        println!(
            "{} {} → {} on {}: plan {:.2} ms median of {} (min {:.2}, max {:.2}); {} steps, {} experts moved; one execution {:.1} ms",
            report.model,
            report.from,
            report.to,
            report.backend,
            report.plan_ms_median,
            report.runs,
            report.plan_ms_min,
            report.plan_ms_max,
            report.steps,
            report.experts_moved,
            report.execute_ms
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_lists() {
        let l = parse_strategies("elastic, cold-restart,elastic").unwrap();
        assert_eq!(l.0, vec![Strategy::Elastic, Strategy::ColdRestart]);
        assert_eq!(parse_strategies("all").unwrap().0.len(), 5);
        let e = parse_strategies("elastic,warp").unwrap_err();
        assert!(e.contains("`warp`") && e.contains("cold-restart"), "{e}");
        assert!(parse_strategies(" , ").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
