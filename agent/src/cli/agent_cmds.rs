//! `emoe-agent serve` (the daemon) and its clients: `status`, `scale`, `cancel`, `watch`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use emoe_core::ParallelConfig;

use super::NodeArgs;
use crate::daemon::client::{AgentAddr, connect, default_socket, default_socket_checked};
use crate::daemon::proto::{self, watch_update::Body};
use crate::daemon::{apply_delta, host};
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
    #[arg(long, value_parser = super::parse_rate)]
    pub traffic: Option<f64>,
    /// Refuse every mutating call (scale, cancel, rebalance).
    #[arg(long)]
    pub readonly: bool,
    /// Listen on TCP instead of the Unix socket: tcp://HOST:PORT. A non-loopback address is
    /// refused unless --allow-remote and --token-file are both given.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub listen: Option<String>,
    /// Allow a non-loopback --listen or --metrics address (needs --token-file too); every
    /// call, reads and metrics included, then needs the token.
    #[arg(long)]
    pub allow_remote: bool,
    /// Mutating calls need this bearer token (the file's first line).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464). A non-loopback
    /// address needs --allow-remote and --token-file, like --listen.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Serve the OpenAI-compatible API (completions, chat, models, health, tokenize,
    /// metrics) on tcp://HOST:PORT (port 0: a free one, printed). A non-loopback address needs
    /// --allow-remote and --token-file, like --listen; with a token every /v1 call needs
    /// `Authorization: Bearer TOKEN`.
    #[arg(long, value_name = "tcp://HOST:PORT")]
    pub http: Option<String>,
    /// Most requests waiting for a replica; the next HTTP request gets 429 with Retry-After.
    #[arg(long, default_value_t = crate::serve::DEFAULT_MAX_QUEUE as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_queue: u32,
    /// Most watch streams served at once; the next is refused.
    #[arg(long, default_value_t = crate::daemon::DEFAULT_MAX_WATCHERS as u32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_watchers: u32,
    /// Most requests in one decode step of a replica.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch: u32,
    /// How often the state is snapshotted and changes published to watchers (10ms to 1m).
    #[arg(long, default_value = "250ms", value_parser = super::parse_tick)]
    pub tick: Duration,
    #[command(flatten)]
    pub autoscale: super::autoscale_args::AutoscaleArgs,
}

#[derive(Debug, Args)]
pub struct AgentFlag {
    /// The agent: unix:PATH, http://HOST:PORT or ssh://[USER@]HOST[:PORT] (default: the
    /// default socket).
    #[arg(long)]
    pub agent: Option<AgentAddr>,
    /// The agent's bearer token (the file's first line): for mutating calls, and for every
    /// call to an agent serving with --allow-remote.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

impl AgentFlag {
    /// The agent; the default socket only where its directory is private and ours (a socket
    /// someone else could swap would get our token).
    fn addr(&self) -> Result<AgentAddr, CliError> {
        match &self.agent {
            Some(a) => Ok(a.clone()),
            None => default_socket_checked()
                .map(AgentAddr::Unix)
                .map_err(|e| CliError::usage(anyhow::anyhow!(e))),
        }
    }

    /// `msg` as a request carrying the token, when one is given.
    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, CliError> {
        with_token(msg, self.token_file.as_deref())
    }
}

/// `msg` as a request carrying `Authorization: Bearer TOKEN` from `token_file`, when given.
pub(crate) fn with_token<T>(
    msg: T,
    token_file: Option<&Path>,
) -> Result<tonic::Request<T>, CliError> {
    let mut r = tonic::Request::new(msg);
    if let Some(f) = token_file {
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

/// The largest token file read (a token is one short line).
const MAX_TOKEN_FILE: u64 = 64 << 10;

/// The token in `path`: its first line, trimmed, not empty.
pub fn read_token(path: &Path) -> Result<String, CliError> {
    let text = emoe_core::fsio::read_to_string_capped(path, MAX_TOKEN_FILE)
        .map_err(|e| CliError::usage(anyhow::anyhow!("cannot read token file {e}")))?;
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
    /// Resume after this update: INCARNATION:SEQ, the `incarnation` of the snapshot the
    /// watch began with and the last `seq` seen. Against another start of the agent, or too far
    /// behind, the watch begins with a fresh snapshot.
    #[arg(long, value_name = "INCARNATION:SEQ", value_parser = parse_resume)]
    pub resume_from: Option<(String, u64)>,
    /// Stop after this many updates.
    #[arg(long)]
    pub count: Option<u64>,
}

fn parse_resume(s: &str) -> Result<(String, u64), String> {
    let shown = emoe_core::echo::echo(s);
    let Some((inc, seq)) = s.rsplit_once(':') else {
        return Err(format!(
            "`{shown}`: give INCARNATION:SEQ (the incarnation is in the snapshot a watch begins \
             with): a sequence number alone could be another start's"
        ));
    };
    if inc.is_empty() || !inc.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!(
            "`{shown}`: the incarnation must be letters, digits and `-`"
        ));
    }
    let seq = seq
        .parse::<u64>()
        .map_err(|e| format!("`{shown}`: the sequence number: {e}"))?;
    Ok((inc.to_string(), seq))
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CliError::failed)
}

/// A gRPC error as an exit code: the caller's mistake 2, a refusal by rule 3, else 1.
pub(crate) fn status_error(addr: &AgentAddr, s: tonic::Status) -> CliError {
    use tonic::Code;
    let code = match s.code() {
        Code::InvalidArgument | Code::NotFound => exit::USAGE,
        Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted => exit::REFUSED,
        _ => exit::FAILED,
    };
    CliError::new(code, anyhow::anyhow!("{addr}: {}", s.message()))
}

fn connect_error(addr: &AgentAddr, e: anyhow::Error) -> CliError {
    CliError::failed(anyhow::anyhow!(
        "cannot reach the agent at {addr}: {} (is `emoe-agent serve` running?)",
        exit::chain(&e)
    ))
}

/// A `--listen` or `--metrics` address: loopback, or with `--allow-remote` and a token.
fn check_exposure(
    flag: &str,
    value: &str,
    addr: std::net::SocketAddr,
    a: &ServeArgs,
) -> Result<(), CliError> {
    if addr.ip().is_loopback() || (a.allow_remote && a.token_file.is_some()) {
        return Ok(());
    }
    Err(CliError::usage(anyhow::anyhow!(
        "{flag} {value}: a non-loopback address needs both --allow-remote and --token-file"
    )))
}

/// `tcp://HOST:PORT` of `flag`.
fn tcp_addr(flag: &str, value: &str) -> Result<std::net::SocketAddr, CliError> {
    let v = emoe_core::echo::echo(value);
    let hostport = value
        .strip_prefix("tcp://")
        .ok_or_else(|| CliError::usage(anyhow::anyhow!("{flag} {v}: use tcp://HOST:PORT")))?;
    hostport.parse().map_err(|e| {
        CliError::usage(anyhow::anyhow!(
            "{flag} {v}: not an IP address and port ({e})"
        ))
    })
}

/// Bind a TCP listener before anything is loaded, so a busy port fails at once.
fn bind_tcp(
    flag: &str,
    value: &str,
    addr: std::net::SocketAddr,
) -> Result<std::net::TcpListener, CliError> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        CliError::usage(anyhow::anyhow!(
            "{flag} {value}: cannot listen on {addr}: {e}"
        ))
    })?;
    l.set_nonblocking(true).map_err(CliError::failed)?;
    Ok(l)
}

pub fn serve(a: &ServeArgs) -> Result<(), CliError> {
    if a.allow_remote && a.token_file.is_none() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--allow-remote needs --token-file: a remote client must prove who it is"
        )));
    }
    let token = a.token_file.as_deref().map(read_token).transpose()?;
    let tcp = match &a.listen {
        None => None,
        Some(l) => {
            let addr = tcp_addr("--listen", l)?;
            check_exposure("--listen", l, addr, a)?;
            Some((l.as_str(), addr))
        }
    };
    let http = match &a.http {
        None => None,
        Some(h) => {
            let addr = tcp_addr("--http", h)?;
            check_exposure("--http", h, addr, a)?;
            Some((h.as_str(), addr))
        }
    };
    if let Some(m) = a.metrics {
        check_exposure("--metrics", &m.to_string(), m, a)?;
    }
    let default = a.socket.is_none();
    let path = a.socket.clone().unwrap_or_else(default_socket);
    if tcp.is_none() {
        // Refuse a bad socket path before the model loads; it is bound once it has.
        host::check_socket(&path, default)?;
    }
    let tcp = tcp
        .map(|(l, addr)| bind_tcp("--listen", l, addr).map(|t| (t, addr)))
        .transpose()?;
    let metrics = a
        .metrics
        .map(|m| bind_tcp("--metrics", &m.to_string(), m).map(|t| (t, m)))
        .transpose()?;
    let http = http
        .map(|(h, addr)| bind_tcp("--http", h, addr))
        .transpose()?;
    let o = a.node.options();
    let opts = ServeOptions {
        max_batch: a.max_batch as usize,
        max_queue: a.max_queue as usize,
        ..ServeOptions::default()
    };
    let access = crate::daemon::Access {
        readonly: a.readonly,
        token,
        auth_reads: a.allow_remote,
        max_watchers: a.max_watchers as usize,
    };
    let (daemon, vocab) = a.autoscale.build(&o, || host::build(&o, opts, access))?;
    let front = http
        .map(|l| {
            crate::http::Front::load_tokenizer(&daemon)
                .map(|t| (crate::http::Front::new(Arc::clone(&daemon), t), l))
                .map_err(|e| CliError::usage(anyhow::anyhow!("--http: {e}")))
        })
        .transpose()?;
    if let Some((_, l)) = &front
        && let Ok(a) = l.local_addr()
    {
        // Published before any client connects (the node's facts are not in deltas).
        let _ = daemon.http_addr.set(format!("http://{a}"));
    }
    let rt = runtime()?;
    let signal = shutdown(&rt)?;
    // From here on the socket file is removed on every way out (`SocketFile`).
    let unix = match tcp {
        None => Some(host::bind(&path, default)?),
        Some(_) => None,
    };
    let ticker = daemon.spawn_ticker(a.tick);
    if let Some(rate) = a.traffic
        && let Err(e) = host::spawn_traffic(&daemon, rate, vocab)
    {
        host::stop(&daemon, ticker);
        return Err(e);
    }
    if let Some((l, m)) = metrics {
        let d = Arc::clone(&daemon);
        rt.spawn(async move {
            if let Err(e) = host::serve_metrics(d, l).await {
                eprintln!("emoe-agent: metrics on {m}: {e}");
            }
        });
        eprintln!("emoe-agent: metrics on http://{m}/metrics");
    }
    if let Some((front, l)) = front {
        let addr = l.local_addr().map_err(CliError::failed)?;
        let mut closing = daemon.closing.subscribe();
        rt.spawn(async move {
            let stop = async move {
                let _ = closing.wait_for(|c| *c).await;
            };
            if let Err(e) = crate::http::serve(front, l, stop).await {
                eprintln!("emoe-agent: http on {addr}: {e}");
            }
        });
        eprintln!("emoe-agent: OpenAI-compatible API on http://{addr}/v1");
    }
    let d = Arc::clone(&daemon);
    let r = match (unix, tcp) {
        (Some((listener, file)), _) => {
            eprintln!("emoe-agent: serving on unix:{}", file.path().display());
            let r = rt.block_on(async move {
                listener.set_nonblocking(true)?;
                let l = tokio::net::UnixListener::from_std(listener)?;
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                host::serve_api(d, incoming, signal)
                    .await
                    .map_err(anyhow::Error::from)
            });
            host::stop(&daemon, ticker);
            drop(file);
            r
        }
        (None, Some((listener, addr))) => {
            eprintln!("emoe-agent: serving on http://{addr}");
            let r = rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener)?;
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(l);
                host::serve_api(d, incoming, signal)
                    .await
                    .map_err(anyhow::Error::from)
            });
            host::stop(&daemon, ticker);
            r
        }
        (None, None) => unreachable!("either a socket or a TCP address"),
    };
    // Connections still open after the grace period are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_millis(100));
    eprintln!("emoe-agent: stopped");
    r.map_err(CliError::failed)
}

/// SIGTERM or SIGINT. The handlers are installed now (inside `rt`), before the socket is
/// bound: a signal that comes as soon as a client can connect stops the agent in order rather
/// than killing it with the socket left behind.
fn shutdown(
    rt: &tokio::runtime::Runtime,
) -> Result<impl std::future::Future<Output = ()>, CliError> {
    use tokio::signal::unix::{SignalKind, signal};
    let _g = rt.enter();
    let mut term = signal(SignalKind::terminate()).map_err(CliError::failed)?;
    let mut int = signal(SignalKind::interrupt()).map_err(CliError::failed)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

pub fn status(a: &StatusArgs) -> Result<(), CliError> {
    let addr = a.agent.addr()?;
    let snap = runtime()?.block_on(async {
        let mut c = connect(&addr).await.map_err(|e| connect_error(&addr, e))?;
        c.get_snapshot(a.agent.request(proto::GetSnapshotRequest {})?)
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
    let addr = a.agent.addr()?;
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
                c.watch(a.agent.request(proto::WatchRequest::default())?)
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
        let mut last: Option<proto::Operation> = None;
        loop {
            // The agent may die or stop meanwhile: say so, with what is known of the operation.
            let gone = |why: String, last: &Option<proto::Operation>| {
                let known = match last {
                    Some(o) => format!(
                        "last seen {}, {} of {} copies done",
                        o.phase, o.copies_done, o.copies_total
                    ),
                    None => "no progress seen yet".into(),
                };
                CliError::failed(anyhow::anyhow!(
                    "{addr}: the agent went away during operation {op} ({why}); {known}; its \
                     outcome is unknown: check `emoe-agent status` once the agent is back"
                ))
            };
            let u = match stream.message().await {
                Ok(Some(u)) => u,
                Ok(None) => return Err(gone("the watch ended".into(), &last)),
                Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                    return Err(status_error(&addr, s));
                }
                Err(s) => return Err(gone(s.message().to_string(), &last)),
            };
            let ops = match &u.body {
                Some(Body::Snapshot(s)) => s.operations.clone(),
                Some(Body::Delta(d)) => d.operations.clone(),
                None => Vec::new(),
            };
            let Some(o) = ops.into_iter().find(|o| o.id == op) else {
                continue;
            };
            last = Some(o.clone());
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
    let addr = a.agent.addr()?;
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
    let addr = a.agent.addr()?;
    runtime()?.block_on(async {
        let mut c = connect(&addr).await.map_err(|e| connect_error(&addr, e))?;
        let mut stream = c
            .watch(a.agent.request(proto::WatchRequest {
                resume_from: a.resume_from.as_ref().map(|r| r.1),
                incarnation: a.resume_from.as_ref().map(|r| r.0.clone()),
            })?)
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
