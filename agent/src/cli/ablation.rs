//! `emoe-agent bench ablation`: the paper's cumulative ablation (Tables 1 and 3) on this system.
//! Each row removes one more component; every row scales the same step while serving the same
//! traffic, on a fresh node per run.
//!
//! | row | what changes |
//! | --- | --- |
//! | `full` | ElasticMoE |
//! | `-zero-copy` | kept devices copy their weights and KV into fresh allocations |
//! | `-p2p` | … and every moved byte is read from the checkpoint on disk (page cache dropped) |
//! | `-pre-init` | … and the target's runtime is built and its pages faulted at the switchover |

use std::time::Duration;

use clap::Args;
use serde::Serialize;

use emoe_core::ParallelConfig;
use emoe_core::plan::Topology;
use emoe_core::scale::{Source, Strategy};

use super::NodeArgs;
use super::bench::{median, run_served, traffic_from};
use crate::bandwidth::measure_memcpy;
use crate::cluster::DEFAULT_VIRTUAL_DEVICES;
use crate::exit::CliError;
use crate::scenario::step_report;

#[derive(Debug, Args)]
pub struct AblationArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Target parallel config (TP must stay the same).
    #[arg(long)]
    pub to: ParallelConfig,
    /// Runs per row; figures are medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Traffic served meanwhile: Poisson requests/s or a TOML file with a `[traffic]` table.
    #[arg(long, default_value = "2", value_name = "RATE|FILE")]
    pub traffic: String,
    /// When the step starts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub at: Duration,
    /// How long Poisson traffic arrives.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Half-width of the throughput windows.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub window: Duration,
    /// Most requests per decode step of a replica.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    row: &'static str,
    latency_s: f64,
    latency_runs_s: Vec<f64>,
    downtime_s: f64,
    peak_bytes: u64,
    bytes_moved: u64,
    disk_bytes: u64,
    /// Seconds initializing the runtime and faulting the new view before the switchover.
    init_s: f64,
    throughput_before: f64,
    throughput_during: f64,
    throughput_after: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    from: ParallelConfig,
    to: ParallelConfig,
    runs: u32,
    rows: Vec<Row>,
    notes: Vec<String>,
}

pub fn run(a: &AblationArgs) -> Result<(), CliError> {
    let report = report(a)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(CliError::failed)?
        );
    } else {
        print(&report);
    }
    Ok(())
}

/// Run the ablation and return its report.
pub(super) fn report(a: &AblationArgs) -> Result<Report, CliError> {
    let mut o = a.node.options();
    o.devices = Some(
        o.devices
            .unwrap_or(DEFAULT_VIRTUAL_DEVICES)
            .max(a.node.config.devices().max(a.to.devices()) + o.first_device),
    );
    let bw = measure_memcpy();
    let base = traffic_from(&a.traffic, a.duration, a.at, a.max_batch)?;
    let w = a.window.as_secs_f64();
    let mut rows = Vec::new();
    for (i, name) in ["full", "-zero-copy", "-p2p", "-pre-init"]
        .into_iter()
        .enumerate()
    {
        let mut t = traffic_from(&a.traffic, a.duration, a.at, a.max_batch)?;
        t.requests = base.requests.clone();
        let tr = &mut t.opts.exec.transition;
        tr.verify = false;
        if i >= 1 {
            tr.zero_copy = false;
        }
        if i >= 2 {
            tr.source = Source::Disk;
        }
        if i >= 3 {
            t.opts.pre_init = false;
        }
        let mut runs = Vec::new();
        for r in 0..a.runs {
            eprintln!("emoe-agent: ablation {name} run {}/{}", r + 1, a.runs);
            runs.push(run_served(
                Strategy::Elastic,
                &o,
                a.to,
                &t,
                Topology::uniform(bw, bw),
            )?);
        }
        let steps: Vec<_> = runs
            .iter()
            .filter_map(|r| r.served.as_ref())
            .map(|(m, p, rep, at)| (step_report(m, p, *at, rep, w, None), rep.clone()))
            .collect();
        let med = |f: &dyn Fn(&(crate::scenario::StepReport, crate::serve::ScaleReport)) -> f64| {
            median(&steps.iter().map(f).collect::<Vec<_>>())
        };
        let lat: Vec<f64> = runs.iter().map(|r| r.latency_s).collect();
        rows.push(Row {
            row: name,
            latency_s: median(&lat),
            latency_runs_s: lat,
            downtime_s: med(&|s| s.0.downtime_s),
            peak_bytes: steps.iter().map(|s| s.0.peak_bytes).max().unwrap_or(0),
            bytes_moved: steps.last().map_or(0, |s| s.0.bytes_moved),
            disk_bytes: steps.last().map_or(0, |s| s.1.stats.disk_bytes),
            init_s: med(&|s| s.1.init_s),
            throughput_before: med(&|s| s.0.throughput.before),
            throughput_during: med(&|s| s.0.throughput.during),
            throughput_after: med(&|s| s.0.throughput.after),
        });
    }
    let report = Report {
        from: a.node.config,
        to: a.to,
        runs: a.runs,
        rows,
        notes: vec![
            "rows are cumulative: each removes one more component".into(),
            "-pre-init on this system: the runtime (compute layout) is built at the switchover and the new view's pages fault on the first decode steps; the paper's pre-initialization also saves process start and graph capture, which an in-process engine does not have".into(),
        ],
    };
    Ok(report)
}

/// The rows as a table.
pub(super) fn print(report: &Report) {
    {
        println!(
            "ablation {} → {} ({} runs each, while serving)",
            report.from, report.to, report.runs
        );
        println!(
            "{:<11} {:>10} {:>11} {:>10} {:>10} {:>9} {:>8} {:>8} {:>8}",
            "row",
            "latency s",
            "downtime s",
            "peak MiB",
            "moved MiB",
            "init ms",
            "before",
            "during",
            "after"
        );
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        for r in &report.rows {
            println!(
                "{:<11} {:>10.3} {:>11.3} {:>10.1} {:>10.1} {:>9.1} {:>8.1} {:>8.1} {:>8.1}",
                r.row,
                r.latency_s,
                r.downtime_s,
                mib(r.peak_bytes),
                mib(r.bytes_moved),
                r.init_s * 1e3,
                r.throughput_before,
                r.throughput_during,
                r.throughput_after
            );
        }
        for n in &report.notes {
            println!("note: {n}");
        }
    }
}
