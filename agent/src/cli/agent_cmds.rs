//! `emoe-agent serve` (the daemon) and its clients: `status`, `scale`, `cancel`, `watch`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use emoe_core::ParallelConfig;

use super::NodeArgs;
use crate::daemon::client::{AgentAddr, connect, default_socket};
use crate::daemon::proto::{self, watch_update::Body};
use crate::daemon::{AgentService, apply_delta, host};
use crate::exit::{self, CliError};
use crate::serve::ServeOptions;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Unix socket to listen on (default: $XDG_RUNTIME_DIR/emoe/agent.sock, else
    /// $TMPDIR/emoe-$USER/agent.sock); created with permissions 0600.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Serve light synthetic Poisson traffic at this many requests/s.
    #[arg(long)]
    pub traffic: Option<f64>,
    /// Refuse every mutating call (scale, cancel, rebalance).
    #[arg(long)]
    pub readonly: bool,
    /// Listen on TCP instead of the Unix socket: tcp://HOST:PORT. A non-loopback address is
    /// refused unless --allow-remote and --token-file are both given.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub listen: Option<String>,
    /// Allow a non-loopback --listen address (needs --token-file too).
    #[arg(long)]
    pub allow_remote: bool,
    /// Mutating calls need this bearer token (the file's first line).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Most requests in one decode step of a replica.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch: u32,
    /// How often the state is snapshotted and changes published to watchers.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub tick: Duration,
}

#[derive(Debug, Args)]
pub struct AgentFlag {
    /// The agent: unix:PATH, http://HOST:PORT or ssh://[USER@]HOST[:PORT] (default: the
    /// default socket).
    #[arg(long)]
    pub agent: Option<AgentAddr>,
    /// The agent's bearer token for mutating calls (the file's first line).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl AgentFlag {
    fn addr(&self) -> AgentAddr {
        self.agent
            .clone()
            .unwrap_or_else(|| AgentAddr::Unix(default_socket()))
    }

    /// `msg` as a request carrying the token, when one is given.
    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, CliError> {
        let mut r = tonic::Request::new(msg);
        if let Some(f) = &self.token_file {
            let t = read_token(f)?;
            let v = format!("Bearer {t}").parse().map_err(|_| {
                CliError::usage(anyhow::anyhow!(
                    "{}: the token has characters a header cannot carry",
                    f.display()
                ))
            })?;
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    }
}

/// The token in `path`: its first line, trimmed, not empty.
fn read_token(path: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::usage(anyhow::anyhow!(
            "cannot read token file {}: {e}",
            path.display()
        ))
    })?;
    let t = text.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        return Err(CliError::usage(anyhow::anyhow!(
            "token file {} is empty: the token is its first line",
            path.display()
        )));
    }
    Ok(t)
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub agent: AgentFlag,
    /// Print the snapshot as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub agent: AgentFlag,
    /// Target parallel config (TP must stay the same).
    #[arg(long)]
    pub to: ParallelConfig,
    /// elastic (default), cold-restart, colocated, extravagant or horizontal.
    #[arg(long, default_value = "elastic")]
    pub strategy: String,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Stream progress until the operation ends; exit non-zero if it failed.
    #[arg(long)]
    pub wait: bool,
    /// Machine output (the operation id, then with --wait one JSON line per update).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub agent: AgentFlag,
    /// The operation id `scale` printed.
    pub operation: u64,
    /// Print `{"operation": N, "phase": …}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub agent: AgentFlag,
    /// One JSON object per update (the default output).
    #[arg(long)]
    pub ndjson: bool,
    /// Resume after this sequence number.
    #[arg(long)]
    pub resume_from: Option<u64>,
    /// Stop after this many updates.
    #[arg(long)]
    pub count: Option<u64>,
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::failed)
}

/// A gRPC error as an exit code: the caller's mistake 2, a refusal by rule 3, else 1.
fn status_error(addr: &AgentAddr, s: tonic::Status) -> CliError {
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument | Code::NotFound => exit::USAGE,
        Code::FailedPrecondition | Code::PermissionDenied | Code::Unauthenticated => exit::REFUSED,
        _ => exit::FAILED,
    };
    CliError::new(code, anyhow::anyhow!("{addr}: {}", s.message()))
}

fn connect_error(addr: &AgentAddr, e: anyhow::Error) -> CliError {
    CliError::failed(anyhow::anyhow!(
        "cannot reach the agent at {addr}: {e:#} (is `emoe-agent serve` running?)"
    ))
}

pub fn serve(a: &ServeArgs) -> Result<(), CliError> {
    if a.tick < Duration::from_millis(10) {
        return Err(CliError::usage(anyhow::anyhow!(
            "--tick must be at least 10ms, got {:?}",
            a.tick
        )));
    }
    let token = a.token_file.as_deref().map(read_token).transpose()?;
    let tcp = match &a.listen {
        None => None,
        Some(l) => {
            let hostport = l.strip_prefix("tcp://").ok_or_else(|| {
                CliError::usage(anyhow::anyhow!("--listen {l}: use tcp://HOST:PORT"))
            })?;
            let addr: std::net::SocketAddr = hostport.parse().map_err(|e| {
                CliError::usage(anyhow::anyhow!(
                    "--listen {l}: not an IP address and port ({e})"
                ))
            })?;
            let allowed = addr.ip().is_loopback() || (a.allow_remote && token.is_some());
            if !allowed {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--listen {l}: a non-loopback address needs both --allow-remote and --token-file"
                )));
            }
            Some(addr)
        }
    };
    let path = a.socket.clone().unwrap_or_else(default_socket);
    let listener = match tcp {
        None => Some(host::bind(&path)?),
        Some(_) => None,
    };
    let o = a.node.options();
    let opts = ServeOptions {
        max_batch: a.max_batch as usize,
        ..ServeOptions::default()
    };
    let (daemon, vocab) = host::build(&o, opts, a.readonly, token)?;
    let ticker = daemon.spawn_ticker(a.tick);
    if let Some(rate) = a.traffic {
        host::spawn_traffic(&daemon, rate, vocab)?;
    }
    let rt = runtime()?;
    if let Some(m) = a.metrics {
        let l = rt
            .block_on(tokio::net::TcpListener::bind(m))
            .map_err(|e| CliError::usage(anyhow::anyhow!("--metrics {m}: cannot listen ({e})")))?;
        let d = Arc::clone(&daemon);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let d = Arc::clone(&d);
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        tokio::task::spawn_blocking(move || d.metrics_text())
                            .await
                            .unwrap_or_default(),
                    )
                }
            }),
        );
        rt.spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        eprintln!("emoe-agent: metrics on http://{m}/metrics");
    }
    let svc = AgentService {
        daemon: Arc::clone(&daemon),
    };
    let api = proto::agent_server::AgentServer::new(svc).max_decoding_message_size(1 << 20);
    let r = match (listener, tcp) {
        (Some(listener), _) => {
            eprintln!("emoe-agent: serving on unix:{}", path.display());
            rt.block_on(async move {
                listener.set_nonblocking(true)?;
                let l = tokio::net::UnixListener::from_std(listener)?;
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                tonic::transport::Server::builder()
                    .add_service(api)
                    .serve_with_incoming_shutdown(incoming, shutdown())
                    .await
                    .map_err(anyhow::Error::from)
            })
        }
        (None, Some(addr)) => {
            eprintln!("emoe-agent: serving on http://{addr}");
            rt.block_on(async move {
                tonic::transport::Server::builder()
                    .add_service(api)
                    .serve_with_shutdown(addr, shutdown())
                    .await
                    .map_err(anyhow::Error::from)
            })
        }
        (None, None) => unreachable!("either a socket or a TCP address"),
    };
    host::stop(&daemon, ticker);
    if tcp.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    eprintln!("emoe-agent: stopped");
    r.map_err(CliError::failed)
}

async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

pub fn status(a: &StatusArgs) -> Result<(), CliError> {
    let addr = a.agent.addr();
    let snap = runtime()?.block_on(async {
        let mut c = connect(&addr).await.map_err(|e| connect_error(&addr, e))?;
        c.get_snapshot(proto::GetSnapshotRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|s| status_error(&addr, s))
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&snap).map_err(CliError::failed)?
        );
        return Ok(());
    }
    let node = snap.node.clone().unwrap_or_default();
    println!(
        "{} (node {}): {} on {}, {} CPUs at {:.0}%, load {:.2}",
        node.hostname,
        node.node_id,
        node.model,
        node.backend,
        node.cpus,
        node.cpu_percent,
        node.load_1
    );
    for i in &snap.instances {
        println!(
            "  instance {} {} {} on {}",
            i.id,
            i.config,
            i.state,
            i.devices.join(" ")
        );
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    for d in &snap.devices {
        println!(
            "  {:>5} {:>7.3} / {:.3} GiB used, {} regions",
            d.id,
            gib(d.used),
            gib(d.capacity),
            d.regions.len()
        );
    }
    if let Some(s) = &snap.serving {
        println!(
            "  serving: {} queued, {} running, {} finished, {:.1} tokens/s",
            s.queued, s.running, s.finished, s.tokens_per_s
        );
    }
    for o in &snap.operations {
        println!(
            "  operation {} {} {} → {}: {}",
            o.id, o.kind, o.from, o.to, o.phase
        );
    }
    Ok(())
}

pub fn scale(a: &ScaleArgs) -> Result<(), CliError> {
    let addr = a.agent.addr();
    if !a.yes {
        if !std::io::stdin().is_terminal() {
            return Err(CliError::usage(anyhow::anyhow!(
                "scale changes the node: pass --yes to confirm when stdin is not a terminal"
            )));
        }
        eprint!(
            "scale the agent at {addr} to {} with {}? [y/N] ",
            a.to, a.strategy
        );
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            return Err(CliError::new(
                exit::REFUSED,
                anyhow::anyhow!("not confirmed; nothing changed"),
            ));
        }
    }
    runtime()?.block_on(async {
        let mut c = connect(&addr).await.map_err(|e| connect_error(&addr, e))?;
        // Watch from before the request so no phase is missed.
        let mut stream = if a.wait {
            Some(
                c.watch(proto::WatchRequest { resume_from: None })
                    .await
                    .map_err(|s| status_error(&addr, s))?
                    .into_inner(),
            )
        } else {
            None
        };
        let op = c
            .scale(a.agent.request(proto::ScaleRequest {
                to: a.to.to_string(),
                strategy: a.strategy.clone(),
            })?)
            .await
            .map_err(|s| status_error(&addr, s))?
            .into_inner()
            .operation;
        if a.json {
            println!("{}", serde_json::json!({"operation": op}));
        } else {
            eprintln!("emoe-agent: operation {op} started");
        }
        let Some(stream) = stream.as_mut() else {
            return Ok(());
        };
        let mut seen = String::new();
        loop {
            let u = stream
                .message()
                .await
                .map_err(|s| status_error(&addr, s))?
                .ok_or_else(|| CliError::failed(anyhow::anyhow!("{addr}: the watch ended")))?;
            let ops = match &u.body {
                Some(Body::Snapshot(s)) => s.operations.clone(),
                Some(Body::Delta(d)) => d.operations.clone(),
                None => Vec::new(),
            };
            let Some(o) = ops.into_iter().find(|o| o.id == op) else {
                continue;
            };
            if o.phase != seen {
                seen = o.phase.clone();
                if a.json {
                    println!("{}", serde_json::to_string(&o).map_err(CliError::failed)?);
                } else {
                    eprintln!(
                        "emoe-agent: operation {op}: {} ({} of {} copies, {} of {} bytes)",
                        o.phase, o.copies_done, o.copies_total, o.bytes_done, o.bytes_total
                    );
                }
            }
            match o.phase.as_str() {
                "done" => return Ok(()),
                "failed" | "cancelled" => {
                    return Err(CliError::failed(anyhow::anyhow!(
                        "operation {op} {}: {}",
                        o.phase,
                        o.error
                    )));
                }
                _ => {}
            }
        }
    })
}

pub fn cancel(a: &CancelArgs) -> Result<(), CliError> {
    let addr = a.agent.addr();
    let r = runtime()?.block_on(async {
        let mut c = connect(&addr).await.map_err(|e| connect_error(&addr, e))?;
        c.cancel(a.agent.request(proto::CancelRequest {
            operation: a.operation,
        })?)
        .await
        .map_err(|s| status_error(&addr, s))
    })?;
    let phase = r.into_inner().phase;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"operation": a.operation, "phase": phase})
        );
    } else {
        eprintln!(
            "emoe-agent: cancelling operation {} (was {phase})",
            a.operation
        );
    }
    Ok(())
}

pub fn watch(a: &WatchArgs) -> Result<(), CliError> {
    let addr = a.agent.addr();
    runtime()?.block_on(async {
        let mut c = connect(&addr).await.map_err(|e| connect_error(&addr, e))?;
        let mut stream = c
            .watch(proto::WatchRequest {
                resume_from: a.resume_from,
            })
            .await
            .map_err(|s| status_error(&addr, s))?
            .into_inner();
        let mut n = 0u64;
        let mut state: Option<proto::Snapshot> = None;
        while let Some(u) = stream.message().await.map_err(|s| status_error(&addr, s))? {
            match &u.body {
                Some(Body::Snapshot(s)) => state = Some(s.clone()),
                Some(Body::Delta(d)) => {
                    if let Some(s) = state.as_mut() {
                        apply_delta(s, u.seq, d);
                    }
                }
                None => {}
            }
            println!("{}", serde_json::to_string(&u).map_err(CliError::failed)?);
            n += 1;
            if a.count.is_some_and(|c| n >= c) {
                break;
            }
        }
        Ok(())
    })
}
