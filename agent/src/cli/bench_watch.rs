//! `emoe-agent bench watch`: the agent's update stream under watchers — updates delivered per
//! second and the agent process's CPU — busy (traffic, N watchers) and idle (4 watchers, no
//! traffic). The agent runs as its own process so its CPU is measured alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::daemon::client::{AgentAddr, connect};
use crate::daemon::proto;
use crate::exit::CliError;

#[derive(Debug, Args)]
pub struct WatchBenchArgs {
    /// Watchers while busy.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub watchers: u32,
    /// The agent's snapshot period (10 Hz by default; 10ms to 1m).
    #[arg(long, default_value = "100ms", value_parser = super::parse_tick)]
    pub tick: Duration,
    /// Seconds measured in each phase.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub seconds: u32,
    /// Poisson requests/s served while busy.
    #[arg(long, default_value_t = 2.0, value_parser = super::parse_rate)]
    pub traffic: f64,
    #[arg(long, default_value = "tiny-moe")]
    pub model: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Phase {
    watchers: u32,
    traffic_requests_per_s: f64,
    seconds: f64,
    /// Updates received, all watchers together, per second.
    updates_per_s: f64,
    /// Per watcher.
    updates_per_watcher_per_s: f64,
    /// The agent process's CPU (user + system) as a share of one core.
    agent_cpu_percent: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    tick: String,
    /// The same traffic with no watcher: what serving alone costs the agent.
    baseline: Phase,
    busy: Phase,
    /// Busy CPU minus baseline CPU: what the watchers cost.
    watchers_cpu_percent: f64,
    idle: Phase,
    /// The idle target: under 1 % of one core with 4 watchers.
    idle_under_1_percent: bool,
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

struct AgentProc {
    child: Child,
    sock: PathBuf,
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(
    dir: &Path,
    a: &WatchBenchArgs,
    traffic: Option<f64>,
    name: &str,
) -> Result<AgentProc, CliError> {
    let sock = dir.join(format!("{name}.sock"));
    let exe = std::env::current_exe().map_err(CliError::failed)?;
    let mut args = vec![
        "serve".to_string(),
        "--socket".into(),
        sock.display().to_string(),
        "--model".into(),
        a.model.clone(),
        "--tick".into(),
        humantime::format_duration(a.tick).to_string(),
    ];
    if let Some(t) = traffic {
        args.extend(["--traffic".into(), t.to_string()]);
    }
    let child = Command::new(exe)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(CliError::failed)?;
    let p = AgentProc { child, sock };
    Ok(p)
}

async fn measure(
    p: &mut AgentProc,
    watchers: u32,
    seconds: u32,
    traffic: f64,
) -> Result<Phase, CliError> {
    let addr = AgentAddr::Unix(p.sock.clone());
    // Wait until the agent answers (it loads the model first).
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(mut c) = connect(&addr).await
            && c.get_snapshot(proto::GetSnapshotRequest {}).await.is_ok()
        {
            break;
        }
        if Instant::now() > end || p.child.try_wait().map_err(CliError::failed)?.is_some() {
            return Err(CliError::failed(anyhow::anyhow!("the agent did not start")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut c = connect(&addr).await.map_err(CliError::failed)?;
        let count = Arc::clone(&count);
        let mut stream = c
            .watch(proto::WatchRequest::default())
            .await
            .map_err(|s| CliError::failed(anyhow::anyhow!("{s}")))?
            .into_inner();
        tasks.push(tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Settle, then measure.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = p.child.id();
    let (c0, t0, n0) = (
        cpu_ticks(pid),
        Instant::now(),
        count.load(Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(u64::from(seconds))).await;
    let (c1, dt, n1) = (
        cpu_ticks(pid),
        t0.elapsed().as_secs_f64(),
        count.load(Ordering::Relaxed),
    );
    for t in tasks {
        t.abort();
    }
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let cpu = match (c0, c1) {
        (Some(a), Some(b)) => (b - a) as f64 / hz / dt * 100.0,
        _ => f64::NAN,
    };
    let ups = (n1 - n0) as f64 / dt;
    Ok(Phase {
        watchers,
        traffic_requests_per_s: traffic,
        seconds: dt,
        updates_per_s: ups,
        updates_per_watcher_per_s: ups / f64::from(watchers.max(1)),
        agent_cpu_percent: cpu,
    })
}

pub fn run(a: &WatchBenchArgs) -> Result<(), CliError> {
    let dir = tempfile::tempdir().map_err(CliError::failed)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::failed)?;
    let (baseline, busy, idle) = rt.block_on(async {
        let mut p = start_agent(dir.path(), a, Some(a.traffic), "busy")?;
        let baseline = measure(&mut p, 0, a.seconds, a.traffic).await?;
        let busy = measure(&mut p, a.watchers, a.seconds, a.traffic).await?;
        drop(p);
        let mut p = start_agent(dir.path(), a, None, "idle")?;
        let idle = measure(&mut p, 4, a.seconds, 0.0).await?;
        Ok::<_, CliError>((baseline, busy, idle))
    })?;
    let report = Report {
        tick: humantime::format_duration(a.tick).to_string(),
        watchers_cpu_percent: busy.agent_cpu_percent - baseline.agent_cpu_percent,
        baseline,
        idle_under_1_percent: idle.agent_cpu_percent < 1.0,
        busy,
        idle,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(CliError::failed)?
        );
    } else {
        for (name, p) in [
            ("baseline", &report.baseline),
            ("busy", &report.busy),
            ("idle", &report.idle),
        ] {
            println!(
                "{name}: {} watchers, {:.1} req/s traffic: {:.1} updates/s ({:.1} per watcher), agent CPU {:.2}% of a core",
                p.watchers,
                p.traffic_requests_per_s,
                p.updates_per_s,
                p.updates_per_watcher_per_s,
                p.agent_cpu_percent
            );
        }
    }
    Ok(())
}
