//! `emoe-agent bench http`: what a client of the OpenAI-compatible front door sees of a scaling
//! step. An agent starts in this process (its HTTP front door on a free loopback port) and
//! `--clients` streaming clients drive `/v1/completions`; at 1/3 of `--duration` the agent scales
//! up (DP+1, ElasticMoE) and at 2/3 back down. Then a control run: a fresh agent, the same load,
//! no scaling. Each run is reported per phase, and a verdict compares them.
//!
//! Phases, on the scaled run's clock (seconds from the first request):
//! - **during**: the scaling windows. A window opens when the bench issues the scale call and
//!   closes when that call returns: the new instance serves (the switchover) *and* the old one
//!   has drained and been released. Both windows (up and down) together are "during".
//! - **before**: everything before the first window opens.
//! - **after**: everything after the first window opens that is outside both windows (at DP+1
//!   between the two steps, and back at the start config after the second).
//!
//! The control run is cut at the same offsets, so its phases show the same stretch of an
//! unscaled run.
//!
//! Attribution, for requests in flight across phases: every interval a client waits — the time
//! to first token (request sent → first token) and each inter-token gap (one token → the next) —
//! counts in "during" when it overlaps a scaling window at all (a stall the step caused is never
//! missed), and otherwise in the phase its end falls in. A request counts as ok or failed in the
//! phase it ended in.
//!
//! Each run starts after a warm-up of one unmeasured request per client. Each request streams
//! `--max-tokens` tokens exactly (`ignore_eos`), with `logprobs: 0` so every token comes as its
//! own event; it fails on a status other than 200, an error event, a stream without `[DONE]`, or
//! a usage chunk with a different token count.
//!
//! Verdict: no request failed in either run, and the p99 inter-token gap during scaling is at
//! most 1.5 × the control run's p99 inter-token gap over its whole run (the whole run rather than
//! the control's own "during" stretch, which holds too few gaps for a stable p99).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

use emoe_core::ParallelConfig;
use emoe_core::backend::select::BackendChoice;
use emoe_core::echo::echo;
use emoe_core::scale::Strategy;

use crate::cluster::{ModelSource, NodeOptions};
use crate::daemon::host;
use crate::exit::CliError;
use crate::serve::ServeOptions;

const MIN_DURATION: Duration = Duration::from_secs(1);
const MAX_DURATION: Duration = Duration::from_secs(600);
/// How much worse the p99 inter-token gap during scaling may be than the control's.
pub const ITL_SLACK: f64 = 1.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Each client sends its next request as soon as its last one ended.
    Closed,
    /// Requests arrive at `--rate` per second (exponential gaps), at most `--clients` in flight;
    /// an arrival that finds every client busy waits for one.
    Poisson,
}

#[derive(Debug, Args)]
pub struct HttpBenchArgs {
    /// Concurrent streaming clients (1 to 256).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub clients: u32,
    /// Length of each run (1s to 10m); the control run is as long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How requests arrive.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,
    /// With --mode poisson: requests/s.
    #[arg(long, value_parser = super::parse_rate)]
    pub rate: Option<f64>,
    /// Tokens each request generates (1 to 4096).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_tokens: u32,
    /// Prompt length in tokens (1 to 65536).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub prompt_tokens: u32,
    /// A preset with a tokenizer, or a checkpoint directory with tokenizer.json.
    #[arg(long, default_value = "micro-moe")]
    pub model: ModelSource,
    /// The config each run starts with; the scaled run goes to DP+1 (same TP) and back.
    #[arg(long, default_value = "dp1tp1ep1")]
    pub config: ParallelConfig,
    /// Virtual devices of the host backend.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub devices: u32,
    /// Memory per device.
    #[arg(long, default_value = "256MiB", value_parser = super::parse_hbm)]
    pub hbm: u64,
    /// KV-cache tokens per device.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=emoe_core::deploy::MAX_KV_TOKENS))]
    pub kv_tokens: u64,
    /// Most requests per decode step of a replica.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch: u32,
    /// Where generated checkpoints are cached (default: $EMOE_CACHE_DIR, else the platform's).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The figures of one phase. Latencies in milliseconds; `null` when the phase saw none.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Figures {
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub tokens: u64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
    pub itl_p50_ms: Option<f64>,
    pub itl_p99_ms: Option<f64>,
    /// The longest gap between two tokens of any stream.
    pub max_gap_ms: Option<f64>,
}

/// One scaling step of the scaled run.
#[derive(Debug, Clone, Serialize)]
struct StepRecord {
    to: String,
    /// Seconds from the run's start when the scale call was issued, and when it returned.
    command_s: f64,
    returned_s: f64,
    /// The command to the switchover (the new instance serving), as the agent measured it.
    switchover_latency_s: Option<f64>,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct RunReport {
    scaled: bool,
    seconds: f64,
    requests_sent: u64,
    steps: Vec<StepRecord>,
    before: Figures,
    during: Figures,
    after: Figures,
    /// The whole run.
    all: Figures,
}

#[derive(Debug, Serialize)]
struct Verdict {
    pass: bool,
    failed_requests: u64,
    during_itl_p99_ms: Option<f64>,
    control_itl_p99_ms: Option<f64>,
    /// `ITL_SLACK` × the control's p99.
    limit_ms: Option<f64>,
    /// Why it did not pass (empty when it did).
    reasons: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    mode: Mode,
    rate: Option<f64>,
    clients: u32,
    duration_s: f64,
    max_tokens: u32,
    prompt_tokens: u32,
    model: String,
    config: String,
    scale_to: String,
    /// The scaling windows (seconds from the start) the phases of both runs are cut by.
    windows_s: Vec<[f64; 2]>,
    scaled: RunReport,
    control: RunReport,
    verdict: Verdict,
}

/// One request as its client saw it, times in seconds from the run's start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stream {
    pub sent: f64,
    /// Arrival of each token.
    pub tokens: Vec<f64>,
    pub end: f64,
    pub ok: bool,
}

/// Where a time falls, given the scaling windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Before,
    During,
    After,
}

/// The scaling windows `[open, close]`, in order.
#[derive(Debug, Clone, Default)]
pub struct Windows(pub Vec<(f64, f64)>);

impl Windows {
    /// The phase of the instant `t`.
    pub fn at(&self, t: f64) -> Phase {
        match self.0.first() {
            None => Phase::Before,
            Some((open, _)) if t < *open => Phase::Before,
            _ if self.0.iter().any(|(o, c)| *o <= t && t <= *c) => Phase::During,
            _ => Phase::After,
        }
    }

    /// The phase of an interval a client waited, `from` → `to`: during when it overlaps a
    /// window, else that of its end.
    pub fn of_gap(&self, from: f64, to: f64) -> Phase {
        if self.0.iter().any(|(o, c)| from <= *c && to >= *o) {
            Phase::During
        } else {
            self.at(to)
        }
    }
}

/// The `q` quantile (0..=1) of `v` by nearest rank; `None` when empty.
pub fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[derive(Default)]
struct Acc {
    ok: u64,
    failed: u64,
    tokens: u64,
    ttft: Vec<f64>,
    itl: Vec<f64>,
}

impl Acc {
    fn figures(mut self) -> Figures {
        let ms = |x: Option<f64>| x.map(|s| (s * 1e6).round() / 1e3);
        Figures {
            requests_ok: self.ok,
            requests_failed: self.failed,
            tokens: self.tokens,
            ttft_p50_ms: ms(quantile(&mut self.ttft, 0.5)),
            ttft_p99_ms: ms(quantile(&mut self.ttft, 0.99)),
            itl_p50_ms: ms(quantile(&mut self.itl, 0.5)),
            itl_p99_ms: ms(quantile(&mut self.itl, 0.99)),
            max_gap_ms: ms(self.itl.iter().copied().reduce(f64::max)),
        }
    }
}

/// The figures of each phase (before, during, after) and of the whole run.
pub fn attribute(streams: &[Stream], w: &Windows) -> [Figures; 4] {
    let mut acc: [Acc; 4] = Default::default();
    let idx = |p: Phase| match p {
        Phase::Before => 0,
        Phase::During => 1,
        Phase::After => 2,
    };
    for s in streams {
        let i = idx(w.at(s.end));
        for a in [i, 3] {
            if s.ok {
                acc[a].ok += 1;
            } else {
                acc[a].failed += 1;
            }
        }
        if let Some(first) = s.tokens.first() {
            let i = idx(w.of_gap(s.sent, *first));
            for a in [i, 3] {
                acc[a].ttft.push(first - s.sent);
            }
        }
        for t in &s.tokens {
            let i = idx(w.at(*t));
            acc[i].tokens += 1;
            acc[3].tokens += 1;
        }
        for g in s.tokens.windows(2) {
            let i = idx(w.of_gap(g[0], g[1]));
            for a in [i, 3] {
                acc[a].itl.push(g[1] - g[0]);
            }
        }
    }
    acc.map(Acc::figures)
}

fn usage(m: String) -> CliError {
    CliError::usage(anyhow::anyhow!(m))
}

fn check(a: &HttpBenchArgs) -> Result<ParallelConfig, CliError> {
    if a.duration < MIN_DURATION || a.duration > MAX_DURATION {
        return Err(usage(format!(
            "--duration {}: must be from 1s to 10m",
            humantime::format_duration(a.duration)
        )));
    }
    match (a.mode, a.rate) {
        (Mode::Poisson, None) => {
            return Err(usage("--mode poisson needs --rate (requests/s)".into()));
        }
        (Mode::Poisson, Some(r)) if r <= 0.0 => {
            return Err(usage(format!("--rate {r}: must be more than 0 requests/s")));
        }
        (Mode::Closed, Some(r)) => {
            return Err(usage(format!(
                "--rate {r}: only with --mode poisson (closed clients send back to back)"
            )));
        }
        _ => {}
    }
    let up = ParallelConfig::from_dp_tp(a.config.dp() + 1, a.config.tp())
        .map_err(|e| usage(format!("--config {}: no DP+1 config ({e})", a.config)))?;
    // The step reuses the source's devices: the target's are all it needs.
    if up.devices() > a.devices {
        return Err(usage(format!(
            "--devices {}: scaling {} to {up} needs {} devices",
            a.devices,
            a.config,
            up.devices()
        )));
    }
    Ok(up)
}

fn node_options(a: &HttpBenchArgs) -> NodeOptions {
    NodeOptions {
        backend: BackendChoice::Host,
        node: 0,
        devices: Some(a.devices),
        logical_per_gpu: 1,
        hbm: Some(a.hbm),
        granularity: None,
        model: a.model.clone(),
        config: a.config,
        first_device: 0,
        seed: 0,
        kv_tokens: a.kv_tokens,
        cache_dir: a.cache_dir.clone(),
    }
}

/// A deterministic prompt of request `k` (splitmix64), ids below `vocab`.
fn prompt(k: u64, n: u32, vocab: u32) -> Vec<u32> {
    let mut x = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % u64::from(vocab.max(1))) as u32
        })
        .collect()
}

/// Uniform in (0, 1] from a splitmix64 state.
fn unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64
}

/// What every request shares.
struct Load {
    addr: SocketAddr,
    model: String,
    vocab: u32,
    max_tokens: u32,
    prompt_tokens: u32,
    t0: Instant,
    next: AtomicU64,
    streams: Mutex<Vec<Stream>>,
}

impl Load {
    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64()
    }

    /// One streaming request, recorded.
    async fn request(&self) {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "model": self.model,
            "prompt": prompt(k, self.prompt_tokens, self.vocab),
            "max_tokens": self.max_tokens,
            "stream": true,
            "stream_options": {"include_usage": true},
            "logprobs": 0,
            "ignore_eos": true,
        });
        let sent = Instant::now();
        let mut s = Stream {
            sent: self.secs(sent),
            ..Stream::default()
        };
        let (mut done, mut bad, mut counted) = (false, false, None);
        let r = crate::http::client::stream(self.addr, "/v1/completions", None, &body, |d, at| {
            if d == "[DONE]" {
                done = true;
                return false;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(d) else {
                bad = true;
                return false;
            };
            if v.get("error").is_some() {
                bad = true;
                return false;
            }
            if let Some(u) = v.get("usage").and_then(|u| u.get("completion_tokens")) {
                counted = u.as_u64();
            }
            let n = v["choices"][0]["logprobs"]["tokens"]
                .as_array()
                .map_or(0, Vec::len);
            let t = self.secs(at);
            s.tokens.extend(std::iter::repeat_n(t, n));
            true
        })
        .await;
        s.end = self.secs(Instant::now());
        s.ok = matches!(r, Ok(200))
            && done
            && !bad
            && counted == Some(u64::from(self.max_tokens))
            && s.tokens.len() == self.max_tokens as usize;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(s);
    }
}

/// Drive the load until `end` (requests in flight then finish).
async fn drive(load: Arc<Load>, a: &HttpBenchArgs, end: Instant) {
    let mut tasks = Vec::new();
    match a.mode {
        Mode::Closed => {
            for _ in 0..a.clients {
                let l = Arc::clone(&load);
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        l.request().await;
                    }
                }));
            }
        }
        Mode::Poisson => {
            let rate = a.rate.unwrap_or(1.0);
            let free = Arc::new(tokio::sync::Semaphore::new(a.clients as usize));
            let mut rng = 0x2545_F491_4F6C_DD1D_u64;
            let mut next = Instant::now();
            loop {
                next += Duration::from_secs_f64((-unit(&mut rng).ln() / rate).min(3600.0));
                if next >= end {
                    break;
                }
                tokio::time::sleep_until(next.into()).await;
                let Ok(permit) = Arc::clone(&free).acquire_owned().await else {
                    break;
                };
                let l = Arc::clone(&load);
                tasks.push(tokio::spawn(async move {
                    l.request().await;
                    drop(permit);
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One step: the scale call on a blocking thread, its window recorded.
async fn step(daemon: &Arc<crate::daemon::Daemon>, t0: Instant, to: ParallelConfig) -> StepRecord {
    let d = Arc::clone(daemon);
    let command = Instant::now();
    let r = tokio::task::spawn_blocking(move || {
        d.server
            .scale_with(Strategy::Elastic, to, &d.topology, &AtomicBool::new(false))
    })
    .await;
    let returned = Instant::now();
    let (lat, error) = match r {
        Ok(Ok(rep)) => (Some(rep.latency_s), None),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(e) => (None, Some(format!("the scale call panicked: {e}"))),
    };
    StepRecord {
        to: to.to_string(),
        command_s: command.saturating_duration_since(t0).as_secs_f64(),
        returned_s: returned.saturating_duration_since(t0).as_secs_f64(),
        switchover_latency_s: lat,
        error,
    }
}

/// What one run recorded.
struct Ran {
    streams: Vec<Stream>,
    steps: Vec<StepRecord>,
    seconds: f64,
    sent: u64,
}

/// One run on a fresh agent: the load for `--duration`, with the two steps when `up` is given.
fn one_run(
    a: &HttpBenchArgs,
    rt: &tokio::runtime::Runtime,
    up: Option<ParallelConfig>,
) -> Result<Ran, CliError> {
    let opts = ServeOptions {
        max_batch: a.max_batch as usize,
        ..ServeOptions::default()
    };
    let (daemon, vocab) = host::build(&node_options(a), opts, crate::daemon::Access::default())?;
    let tokenizer =
        crate::http::Front::load_tokenizer(&daemon).map_err(|e| usage(format!("--model: {e}")))?;
    let max = daemon.server.max_request_tokens();
    let need = u64::from(a.prompt_tokens) + u64::from(a.max_tokens);
    if need > max {
        return Err(usage(format!(
            "--prompt-tokens {} + --max-tokens {} = {need} tokens: one replica's context holds \
             {max} (raise --kv-tokens)",
            a.prompt_tokens, a.max_tokens
        )));
    }
    let vocab = vocab.min(tokenizer.vocab_size());
    let front = crate::http::Front::new(Arc::clone(&daemon), tokenizer);
    let listener = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| CliError::failed(anyhow::anyhow!("cannot listen on a loopback port: {e}")))?;
    let addr = listener.local_addr().map_err(CliError::failed)?;
    let ticker = daemon.spawn_ticker(Duration::from_millis(100));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(crate::http::serve(front, listener, async move {
        let _ = stop_rx.await;
    }));
    let new_load = || {
        Arc::new(Load {
            addr,
            model: daemon.facts.model.clone(),
            vocab,
            max_tokens: a.max_tokens,
            prompt_tokens: a.prompt_tokens,
            t0: Instant::now(),
            next: AtomicU64::new(0),
            streams: Mutex::new(Vec::new()),
        })
    };
    // A warm-up, not measured: one request per client, so neither run pays for first touches
    // (page faults of the weights, the first decode steps) inside its figures.
    let warm = new_load();
    rt.block_on(async {
        let tasks: Vec<_> = (0..a.clients)
            .map(|_| {
                let w = Arc::clone(&warm);
                tokio::spawn(async move { w.request().await })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    });
    let load = new_load();
    let t0 = load.t0;
    let end = t0 + a.duration;
    let scaling = async {
        let mut steps = Vec::new();
        if let Some(up) = up {
            tokio::time::sleep_until((t0 + a.duration / 3).into()).await;
            steps.push(step(&daemon, t0, up).await);
            tokio::time::sleep_until((t0 + a.duration * 2 / 3).into()).await;
            if steps[0].error.is_none() {
                steps.push(step(&daemon, t0, a.config).await);
            }
        }
        steps
    };
    let ((), steps) =
        rt.block_on(async { tokio::join!(drive(Arc::clone(&load), a, end), scaling) });
    let seconds = t0.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    let _ = rt.block_on(server);
    host::stop(&daemon, ticker);
    let sent = load.next.load(Ordering::Relaxed);
    let streams = std::mem::take(&mut *load.streams.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Ran {
        streams,
        steps,
        seconds,
        sent,
    })
}

fn run_report(scaled: bool, r: Ran, w: &Windows) -> RunReport {
    let [before, during, after, all] = attribute(&r.streams, w);
    RunReport {
        scaled,
        seconds: r.seconds,
        requests_sent: r.sent,
        steps: r.steps,
        before,
        during,
        after,
        all,
    }
}

fn verdict(scaled: &RunReport, control: &RunReport) -> Verdict {
    let failed = scaled.all.requests_failed + control.all.requests_failed;
    let during = scaled.during.itl_p99_ms;
    let ctl = control.all.itl_p99_ms;
    let limit = ctl.map(|c| c * ITL_SLACK);
    let mut reasons = Vec::new();
    if failed > 0 {
        reasons.push(format!("{failed} requests failed"));
    }
    for s in &scaled.steps {
        if let Some(e) = &s.error {
            reasons.push(format!("the step to {} failed: {}", s.to, echo(e)));
        }
    }
    if scaled.steps.len() < 2 {
        reasons.push("the run did not scale up and back down".into());
    }
    match (during, limit) {
        (Some(d), Some(l)) if d > l => reasons.push(format!(
            "p99 inter-token gap during scaling {d:.3} ms > {l:.3} ms ({ITL_SLACK} × the \
             control's {:.3} ms)",
            ctl.unwrap_or_default()
        )),
        (Some(_), Some(_)) => {}
        (None, _) => reasons.push("no token gap overlapped a scaling window".into()),
        (_, None) => reasons.push("the control run streamed no token gap".into()),
    }
    Verdict {
        pass: reasons.is_empty(),
        failed_requests: failed,
        during_itl_p99_ms: during,
        control_itl_p99_ms: ctl,
        limit_ms: limit,
        reasons,
    }
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v:.2}"))
}

fn print_table(r: &Report) {
    println!(
        "{:<18} {:>6} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "run/phase",
        "ok",
        "failed",
        "tokens",
        "ttft p50",
        "ttft p99",
        "itl p50",
        "itl p99",
        "max gap"
    );
    for (run, rep) in [("scaled", &r.scaled), ("control", &r.control)] {
        for (phase, f) in [
            ("before", &rep.before),
            ("during", &rep.during),
            ("after", &rep.after),
            ("all", &rep.all),
        ] {
            println!(
                "{:<18} {:>6} {:>6} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
                format!("{run}/{phase}"),
                f.requests_ok,
                f.requests_failed,
                f.tokens,
                opt(f.ttft_p50_ms),
                opt(f.ttft_p99_ms),
                opt(f.itl_p50_ms),
                opt(f.itl_p99_ms),
                opt(f.max_gap_ms)
            );
        }
    }
    println!("(latencies in ms; during = the scale call to its return, both steps)");
    for s in &r.scaled.steps {
        println!(
            "step to {}: {:.3}s..{:.3}s, switchover {}",
            s.to,
            s.command_s,
            s.returned_s,
            s.switchover_latency_s
                .map_or_else(|| "-".into(), |l| format!("{:.1} ms", l * 1e3))
        );
    }
    if r.verdict.pass {
        println!("verdict: pass");
    } else {
        println!("verdict: FAIL: {}", r.verdict.reasons.join("; "));
    }
}

pub fn run(a: &HttpBenchArgs) -> Result<(), CliError> {
    let up = check(a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::failed)?;
    let scaled = one_run(a, &rt, Some(up))?;
    let w = Windows(
        scaled
            .steps
            .iter()
            .map(|s| (s.command_s, s.returned_s))
            .collect(),
    );
    let scaled = run_report(true, scaled, &w);
    let control = run_report(false, one_run(a, &rt, None)?, &w);
    let verdict = verdict(&scaled, &control);
    let model = match &a.model {
        ModelSource::Preset(p) => p.clone(),
        ModelSource::Dir(d) => d.display().to_string(),
    };
    let report = Report {
        mode: a.mode,
        rate: a.rate,
        clients: a.clients,
        duration_s: a.duration.as_secs_f64(),
        max_tokens: a.max_tokens,
        prompt_tokens: a.prompt_tokens,
        model: echo(&model),
        config: a.config.to_string(),
        scale_to: up.to_string(),
        windows_s: w.0.iter().map(|(o, c)| [*o, *c]).collect(),
        scaled,
        control,
        verdict,
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(CliError::failed)?
        );
    } else {
        print_table(&report);
    }
    if report.verdict.pass {
        Ok(())
    } else {
        Err(CliError::failed(anyhow::anyhow!(
            "bench http: the verdict failed: {}",
            report.verdict.reasons.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), Some(50.0));
        assert_eq!(quantile(&mut v, 0.99), Some(99.0));
        assert_eq!(quantile(&mut v, 1.0), Some(100.0));
        assert_eq!(quantile(&mut v, 0.0), Some(1.0));
        assert_eq!(quantile(&mut [7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&mut [], 0.5), None);
    }

    #[test]
    fn phases_of_instants_and_gaps() {
        let w = Windows(vec![(10.0, 11.0), (20.0, 21.0)]);
        assert_eq!(w.at(9.9), Phase::Before);
        assert_eq!(w.at(10.0), Phase::During);
        assert_eq!(w.at(15.0), Phase::After);
        assert_eq!(w.at(20.5), Phase::During);
        assert_eq!(w.at(30.0), Phase::After);
        // A gap that spans the window's opening, or the whole window, is during.
        assert_eq!(w.of_gap(9.0, 10.5), Phase::During);
        assert_eq!(w.of_gap(9.0, 12.0), Phase::During);
        assert_eq!(w.of_gap(10.9, 11.5), Phase::During);
        // Otherwise the gap's end decides.
        assert_eq!(w.of_gap(8.0, 9.0), Phase::Before);
        assert_eq!(w.of_gap(11.5, 12.0), Phase::After);
        assert_eq!(Windows::default().of_gap(1.0, 2.0), Phase::Before);
    }

    #[test]
    fn a_stream_across_phases_is_split_by_its_gaps() {
        let w = Windows(vec![(10.0, 11.0)]);
        let across = Stream {
            sent: 8.0,
            tokens: vec![9.0, 9.5, 10.8, 12.0, 12.1],
            end: 12.1,
            ok: true,
        };
        let failed = Stream {
            sent: 1.0,
            tokens: vec![],
            end: 2.0,
            ok: false,
        };
        let [before, during, after, all] = attribute(&[across, failed], &w);
        assert_eq!((before.requests_ok, before.requests_failed), (0, 1));
        assert_eq!((after.requests_ok, after.requests_failed), (1, 0));
        assert_eq!((all.requests_ok, all.requests_failed), (1, 1));
        // TTFT 8 → 9 is before; gaps 9 → 9.5 before, 9.5 → 10.8 and 10.8 → 12 during (they
        // overlap the window), 12 → 12.1 after.
        assert_eq!(before.ttft_p50_ms, Some(1000.0));
        assert_eq!(before.itl_p99_ms, Some(500.0));
        assert_eq!(during.itl_p50_ms, Some(1200.0));
        assert_eq!(during.max_gap_ms, Some(1300.0));
        assert_eq!(after.itl_p99_ms, Some(100.0));
        assert_eq!(all.max_gap_ms, Some(1300.0));
        assert_eq!(
            (before.tokens, during.tokens, after.tokens, all.tokens),
            (2, 1, 2, 5)
        );
        assert_eq!(during.requests_ok + during.requests_failed, 0);
        assert_eq!(during.ttft_p50_ms, None);
    }
}
