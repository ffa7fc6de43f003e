//! `emoe-agent bench soak`: a long run of the agent — background traffic, a client polling
//! snapshots, a watcher, and a scale every `--scale-every` alternating between two configs —
//! with the agent process's resident memory at the start and the end. The agent runs as its
//! own process so its memory is measured alone; the run is bounded by `--duration`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use emoe_core::ParallelConfig;

use crate::daemon::client::{AgentAddr, connect};
use crate::daemon::proto::{self, watch_update::Body};
use crate::exit::CliError;

/// The longest soak: a day.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Args)]
pub struct SoakArgs {
    /// How long to run (at most 24h), e.g. `10m`.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Scale this often, alternating between --config and --to (at least 1s).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub scale_every: Duration,
    /// The config the agent starts with.
    #[arg(long, default_value = "dp2tp2ep4")]
    pub config: ParallelConfig,
    /// The other config of each scale (TP as --config).
    #[arg(long, default_value = "dp3tp2ep6")]
    pub to: ParallelConfig,
    /// Poisson requests/s served.
    #[arg(long, default_value_t = 20.0, value_parser = super::parse_rate)]
    pub traffic: f64,
    /// The agent's snapshot period.
    #[arg(long, default_value = "100ms", value_parser = super::parse_tick)]
    pub tick: Duration,
    #[arg(long, default_value = "micro-moe")]
    pub model: String,
    /// Memory per device.
    #[arg(long, default_value = "256MiB")]
    pub hbm: String,
}

#[derive(Debug, Serialize)]
struct Report {
    duration_s: f64,
    /// The agent's resident memory once it serves, and at the end. It includes the virtual
    /// devices' memory the node touched (shared memory on the host backend), which follows the
    /// config: compare `anon_*`, the agent's own heap, for growth.
    rss_start_bytes: u64,
    rss_end_bytes: u64,
    rss_max_bytes: u64,
    anon_start_bytes: u64,
    anon_end_bytes: u64,
    /// Ten samples over the run, to see whether memory levels off: `[t_s, rss, anon]`.
    samples: Vec<[u64; 3]>,
    /// Inference requests the agent finished.
    requests_served: u64,
    /// API calls answered: snapshots read and scale calls.
    api_calls: u64,
    /// Watch updates received by the one watcher.
    updates_watched: u64,
    operations_run: u64,
    operations_failed: u64,
    /// Operations the agent still holds at the end (bounded, however many ran).
    operations_kept: u64,
}

/// Resident memory of `pid` in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = s
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check(a: &SoakArgs) -> Result<(), CliError> {
    let bad = |m: String| Err(CliError::usage(anyhow::anyhow!(m)));
    if a.duration.is_zero() || a.duration > MAX_DURATION {
        return bad(format!(
            "--duration {}: must be more than 0 and at most 24h",
            humantime::format_duration(a.duration)
        ));
    }
    if a.scale_every < Duration::from_secs(1) || a.scale_every > MAX_DURATION {
        return bad(format!(
            "--scale-every {}: must be from 1s to 24h",
            humantime::format_duration(a.scale_every)
        ));
    }
    if !(a.traffic.is_finite() && a.traffic > 0.0 && a.traffic <= 10_000.0) {
        return bad(format!(
            "--traffic {}: must be more than 0 and at most 10000 requests/s",
            a.traffic
        ));
    }
    if a.config.tp() != a.to.tp() {
        return bad(format!(
            "--to {}: TP is fixed, --config {} has TP {}",
            a.to,
            a.config,
            a.config.tp()
        ));
    }
    Ok(())
}

pub fn run(a: &SoakArgs) -> Result<(), CliError> {
    check(a)?;
    let dir = tempfile::Builder::new()
        .prefix("emoe-soak-")
        .tempdir()
        .map_err(CliError::failed)?;
    let sock = dir.path().join("agent.sock");
    let exe = std::env::current_exe().map_err(CliError::failed)?;
    let child = Command::new(exe)
        .args(["serve", "--socket"])
        .arg(&sock)
        .args([
            "--model",
            &a.model,
            "--hbm",
            &a.hbm,
            "--tick",
            &humantime::format_duration(a.tick).to_string(),
        ])
        .args(["--config", &a.config.to_string()])
        .args(["--traffic", &a.traffic.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(CliError::failed)?;
    let mut p = Proc(child);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::failed)?;
    let report = rt.block_on(soak(a, &sock, &mut p))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(CliError::failed)?
    );
    Ok(())
}

async fn soak(a: &SoakArgs, sock: &Path, p: &mut Proc) -> Result<Report, CliError> {
    let addr = AgentAddr::Unix(sock.to_path_buf());
    let pid = p.0.id();
    let end = Instant::now() + Duration::from_secs(300);
    let mut c = loop {
        if let Ok(mut c) = connect(&addr).await
            && c.get_snapshot(proto::GetSnapshotRequest {}).await.is_ok()
        {
            break c;
        }
        if Instant::now() > end || p.0.try_wait().map_err(CliError::failed)?.is_some() {
            return Err(CliError::failed(anyhow::anyhow!(
                "the agent did not start (see its messages above)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rss_start = rss(pid).unwrap_or(0);
    let anon_start = status_kb(pid, "RssAnon:").unwrap_or(0);
    let mut rss_max = rss_start;
    // One watcher that reads everything.
    let updates = Arc::new(AtomicU64::new(0));
    let mut wc = connect(&addr).await.map_err(CliError::failed)?;
    let mut stream = wc
        .watch(proto::WatchRequest::default())
        .await
        .map_err(|s| CliError::failed(anyhow::anyhow!("watch: {}", s.message())))?
        .into_inner();
    let n = Arc::clone(&updates);
    let watcher = tokio::spawn(async move {
        while let Ok(Some(u)) = stream.message().await {
            if matches!(u.body, Some(Body::Snapshot(_)) | Some(Body::Delta(_))) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let t0 = Instant::now();
    let every = (a.duration / 10).max(Duration::from_secs(1));
    let mut next_sample = t0 + every;
    let mut samples = Vec::new();
    let mut next_scale = t0 + a.scale_every;
    let mut target = a.to;
    let (mut calls, mut run, mut failed) = (0u64, 0u64, 0u64);
    let mut pending: Option<u64> = None;
    let mut last = proto::Snapshot::default();
    while t0.elapsed() < a.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let snap = c
            .get_snapshot(proto::GetSnapshotRequest {})
            .await
            .map_err(|s| CliError::failed(anyhow::anyhow!("the agent: {}", s.message())))?
            .into_inner();
        calls += 1;
        if let Some(id) = pending
            && let Some(o) = snap.operations.iter().find(|o| o.id == id)
        {
            match o.phase.as_str() {
                "done" => {
                    pending = None;
                    target = if target == a.to { a.config } else { a.to };
                }
                "failed" | "cancelled" => {
                    pending = None;
                    failed += 1;
                }
                _ => {}
            }
        }
        last = snap;
        if pending.is_none() && Instant::now() >= next_scale {
            next_scale = Instant::now() + a.scale_every;
            match c
                .scale(proto::ScaleRequest {
                    to: target.to_string(),
                    strategy: String::new(),
                })
                .await
            {
                Ok(r) => {
                    pending = Some(r.into_inner().operation);
                    run += 1;
                }
                Err(_) => failed += 1,
            }
            calls += 1;
        }
        if calls % 50 == 0 {
            rss_max = rss_max.max(rss(pid).unwrap_or(0));
        }
        if Instant::now() >= next_sample && samples.len() < 10 {
            next_sample += every;
            let r = rss(pid).unwrap_or(0);
            rss_max = rss_max.max(r);
            samples.push([
                t0.elapsed().as_secs(),
                r,
                status_kb(pid, "RssAnon:").unwrap_or(0),
            ]);
        }
    }
    let rss_end = rss(pid).unwrap_or(0);
    let anon_end = status_kb(pid, "RssAnon:").unwrap_or(0);
    watcher.abort();
    Ok(Report {
        duration_s: t0.elapsed().as_secs_f64(),
        rss_start_bytes: rss_start,
        rss_end_bytes: rss_end,
        rss_max_bytes: rss_max.max(rss_end),
        anon_start_bytes: anon_start,
        anon_end_bytes: anon_end,
        samples,
        requests_served: last.serving.map_or(0, |s| s.finished),
        api_calls: calls,
        updates_watched: updates.load(Ordering::Relaxed),
        operations_run: run,
        operations_failed: failed,
        operations_kept: last.operations.len() as u64,
    })
}
