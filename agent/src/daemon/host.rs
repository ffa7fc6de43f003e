//! Hosting a daemon: the socket, the serving node behind it, background traffic, an orderly stop,
//! and an embedded agent on a private socket (what `emoe` with no arguments runs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use emoe_core::plan::Topology;
use emoe_core::traffic::{TrafficSpec, prompt_ids};

use super::client::{AgentAddr, check_private_dir};
use super::proto;
use super::{Access, AgentService, Daemon, NodeFacts};
use crate::bandwidth::measure_memcpy;
use crate::cluster::NodeOptions;
use crate::exit::{self, CliError};
use crate::serve::{ServeOptions, Submit};

/// The socket file we bound: removed when dropped (on every path out of a start or a stop),
/// unless something else has replaced it meanwhile.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The directory `path` lives in (`.` for a bare name).
fn socket_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Check that `path` can become our socket, changing nothing: its directory is a directory (for
/// the default socket also private and ours, see [`check_private_dir`]) or absent, and `path`
/// is absent or a stale socket of ours that nobody answers on. Anything else is refused: a
/// regular file, a link or a directory is never deleted.
pub fn check_socket(path: &Path, default: bool) -> Result<(), CliError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let dir = socket_dir(path);
    if default {
        check_private_dir(dir).map_err(|e| CliError::usage(anyhow::anyhow!(e)))?;
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(CliError::usage(anyhow::anyhow!(
                "socket {}: {} is not a directory",
                path.display(),
                dir.display()
            )));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CliError::usage(anyhow::anyhow!(
                "socket {}: cannot inspect {}: {e}",
                path.display(),
                dir.display()
            )));
        }
    }
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CliError::usage(anyhow::anyhow!(
                "socket {}: cannot inspect it: {e}",
                path.display()
            )));
        }
    };
    let t = m.file_type();
    let not_replacing = |what: &str| {
        Err(CliError::usage(anyhow::anyhow!(
            "socket {}: {what}; not replacing it (give a path that does not exist, or a stale \
             socket of an agent of yours)",
            path.display()
        )))
    };
    if t.is_dir() {
        return not_replacing("is a directory (give the socket's file path, e.g. DIR/agent.sock)");
    }
    if t.is_symlink() {
        return not_replacing("is a symbolic link");
    }
    if !t.is_socket() {
        return not_replacing("exists and is not a socket");
    }
    let me = rustix::process::getuid().as_raw();
    if m.uid() != me {
        return not_replacing(&format!("is a socket of uid {}, not of uid {me}", m.uid()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(CliError::new(
            exit::REFUSED,
            anyhow::anyhow!("an agent already listens on {}", path.display()),
        ));
    }
    Ok(())
}

/// Bind the Unix socket (mode 0600) after [`check_socket`]. A missing directory is created
/// 0700 (with `mkdir`'s mode, so it is never open to others); an existing one is left as it
/// is. The default socket's directory is created only as its last component. A stale socket
/// of ours is replaced.
pub fn bind(
    path: &Path,
    default: bool,
) -> Result<(std::os::unix::net::UnixListener, SocketFile), CliError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    check_socket(path, default)?;
    let dir = socket_dir(path);
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(!default)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                CliError::usage(anyhow::anyhow!("cannot create {}: {e}", dir.display()))
            })?;
        if default {
            // Another user may have created it between the check and the mkdir.
            check_private_dir(dir).map_err(|e| CliError::usage(anyhow::anyhow!(e)))?;
        }
    }
    if std::fs::symlink_metadata(path).is_ok() {
        // A stale socket of ours (checked above).
        std::fs::remove_file(path).map_err(|e| {
            CliError::failed(anyhow::anyhow!(
                "cannot remove the stale socket {}: {e}",
                path.display()
            ))
        })?;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        CliError::usage(anyhow::anyhow!("cannot listen on {}: {e}", path.display()))
    })?;
    let m = std::fs::symlink_metadata(path)
        .map_err(|e| CliError::failed(anyhow::anyhow!("socket {}: {e}", path.display())))?;
    let file = SocketFile {
        path: path.to_path_buf(),
        id: (m.dev(), m.ino()),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
        CliError::failed(anyhow::anyhow!(
            "cannot make the socket {} private (mode 0600): {e}",
            path.display()
        ))
    })?;
    Ok((l, file))
}

/// Start serving `o` and wrap it in a daemon (the ticker is not started).
pub fn build(
    o: &NodeOptions,
    opts: ServeOptions,
    access: Access,
) -> Result<(Arc<Daemon>, u32), CliError> {
    let (server, vocab) = crate::scenario::start_server(o, opts)?;
    let bw = measure_memcpy();
    let facts = NodeFacts {
        hostname: sysinfo::System::host_name().unwrap_or_else(|| "localhost".into()),
        node_id: o.node,
        backend: server.with_hmm(|h| h.backend().kind().to_string()),
        model: server
            .try_active()
            .map_err(|e| CliError::new(exit::REFUSED, e))?
            .model
            .name
            .clone(),
    };
    let daemon = Daemon::new(server, facts, Topology::uniform(bw, bw), access);
    Ok((daemon, vocab))
}

/// Background Poisson traffic at `rate` requests/s, in ten-minute chunks of arrivals, until the
/// daemon stops.
pub fn spawn_traffic(daemon: &Arc<Daemon>, rate: f64, vocab: u32) -> Result<(), CliError> {
    let chunk = 600.0;
    let spec = move |seed: u64| -> Result<TrafficSpec, CliError> {
        let text = format!(
            "profile = \"poisson\"\nrate = {rate}\nprompt = {{ uniform = {{ min = 8, max = 32 }} }}\noutput = {{ uniform = {{ min = 8, max = 24 }} }}\nseed = {seed}\nduration_s = {chunk}\n"
        );
        let s: TrafficSpec = toml::from_str(&text)
            .map_err(|e| CliError::usage(anyhow::anyhow!("--traffic {rate}: {}", e.message())))?;
        s.validate().map_err(CliError::usage)?;
        Ok(s)
    };
    spec(0)?;
    let d = Arc::clone(daemon);
    std::thread::spawn(move || {
        let mut seed = 0u64;
        while !d.stop.load(Ordering::Acquire) {
            let Ok(Ok(reqs)) = spec(seed).map(|s| s.generate()) else {
                return;
            };
            let t0 = d.server.now();
            for r in reqs {
                // A stop wakes the wait at once.
                loop {
                    if d.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let wait = t0 + r.arrival_s - d.server.now();
                    if wait <= 0.0 {
                        break;
                    }
                    if d.wait_or_stop(Duration::from_secs_f64(wait.min(1.0))) {
                        return;
                    }
                }
                let _ = d.server.submit(Submit {
                    prompt: prompt_ids(seed, r.id, r.prompt_tokens, vocab),
                    output_tokens: r.output_tokens,
                    ..Default::default()
                });
            }
            seed += 1;
        }
    });
    Ok(())
}

/// How long a stop waits for a running operation: the rule is that SIGTERM stops the agent
/// within a second in every state.
pub const OP_GRACE: Duration = Duration::from_millis(500);

/// Stop: watch streams end, and a running operation is cancelled: one before its switchover
/// rolls back (nothing is left mapped), one past it finishes. It gets [`OP_GRACE`]; one that
/// cannot stop by then (a cold restart reloading) is left to the process's exit, which
/// releases all its memory. Then the ticker and the traffic stop (woken from their waits).
pub fn stop(daemon: &Daemon, ticker: std::thread::JoinHandle<()>) {
    daemon.begin_shutdown();
    let end = std::time::Instant::now() + OP_GRACE;
    while Daemon::running_op(&daemon.lock()).is_some() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(id) = Daemon::running_op(&daemon.lock()) {
        eprintln!(
            "emoe-agent: operation {id} did not end within {} ms of the shutdown; stopping \
             without it",
            OP_GRACE.as_millis()
        );
    }
    daemon.request_stop();
    let _ = ticker.join();
}

/// How long a stop waits for open connections after the watch streams ended: a client that
/// does not read must not hold the shutdown.
pub const GRACE: Duration = Duration::from_millis(250);

/// Serve the API on `incoming` until `signal` resolves; then end the watch streams and give
/// the open connections [`GRACE`] to finish.
pub async fn serve_api<I, IO, IE>(
    daemon: Arc<Daemon>,
    incoming: I,
    signal: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    I: tokio_stream::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let api = proto::agent_server::AgentServer::new(AgentService {
        daemon: Arc::clone(&daemon),
    })
    .max_decoding_message_size(1 << 20);
    let server = tonic::transport::Server::builder()
        .add_service(api)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r,
        () = signal => {}
    }
    // The operation starts cancelling while the connections wind down.
    daemon.begin_shutdown();
    let _ = tx.send(());
    tokio::time::timeout(GRACE, server).await.unwrap_or(Ok(()))
}

/// Prometheus text at `/metrics` on `l`. With reads protected (`--allow-remote`) a scrape needs
/// `Authorization: Bearer TOKEN`.
pub async fn serve_metrics(daemon: Arc<Daemon>, l: std::net::TcpListener) -> std::io::Result<()> {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    l.set_nonblocking(true)?;
    let l = tokio::net::TcpListener::from_std(l)?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: HeaderMap| {
            let d = Arc::clone(&daemon);
            async move {
                if d.access.auth_reads && d.access.bearer(&headers).is_err() {
                    return (
                        StatusCode::UNAUTHORIZED,
                        [(header::CONTENT_TYPE, "text/plain")],
                        "this agent needs `Authorization: Bearer TOKEN` for metrics\n".to_string(),
                    )
                        .into_response();
                }
                super::metrics::exposition(d).await
            }
        }),
    );
    axum::serve(l, app).await
}

/// An agent in this process on a private Unix socket: clients reach it exactly as they reach
/// `emoe-agent serve`.
pub struct Embedded {
    socket: SocketFile,
    daemon: Arc<Daemon>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    ticker: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl Embedded {
    /// Serve `o` with `traffic` requests/s of light synthetic traffic on a socket in a fresh
    /// private directory; the ticker publishes every `tick`.
    pub fn start(
        o: &NodeOptions,
        traffic: Option<f64>,
        tick: Duration,
        readonly: bool,
    ) -> Result<Self, CliError> {
        let dir = tempfile::Builder::new()
            .prefix("emoe-embedded-")
            .tempdir()
            .map_err(CliError::failed)?;
        let socket = dir.path().join("agent.sock");
        let mut e = Self::start_at(o, traffic, tick, readonly, &socket)?;
        e._dir = Some(dir);
        Ok(e)
    }

    /// As [`Embedded::start`], on the given socket path (checked first, bound once the model
    /// has loaded, so a failed start leaves nothing behind).
    pub fn start_at(
        o: &NodeOptions,
        traffic: Option<f64>,
        tick: Duration,
        readonly: bool,
        socket: &Path,
    ) -> Result<Self, CliError> {
        check_socket(socket, false)?;
        let access = Access {
            readonly,
            ..Access::default()
        };
        let (daemon, vocab) = build(o, ServeOptions::default(), access)?;
        // The front door on a free loopback port, so a new user can `curl` the model they
        // watch; a model without a tokenizer serves without it (and says so in the log).
        let front = match crate::http::Front::load_tokenizer(&daemon) {
            Ok(t) => std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .map(|l| (crate::http::Front::new(Arc::clone(&daemon), t), l))
                .map_err(|e| format!("cannot listen on a loopback port: {e}")),
            Err(e) => Err(e),
        };
        let front = match front {
            Ok((f, l)) => {
                // Published before any client connects (the node's facts are not in deltas).
                if let Ok(a) = l.local_addr() {
                    let _ = daemon.http_addr.set(format!("http://{a}"));
                }
                Some((f, l))
            }
            Err(e) => {
                let mut st = daemon.lock();
                daemon.log(&mut st, 0.0, "error", format!("no HTTP endpoint: {e}"));
                None
            }
        };
        let (listener, file) = bind(socket, false)?;
        listener.set_nonblocking(true).map_err(CliError::failed)?;
        let ticker = daemon.spawn_ticker(tick);
        if let Some(rate) = traffic
            && let Err(e) = spawn_traffic(&daemon, rate, vocab)
        {
            stop(&daemon, ticker);
            return Err(e);
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // The API thread says whether it came up, so a failure there is an error here, not a
        // console waiting on a socket nobody serves.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let d = Arc::clone(&daemon);
        let thread = std::thread::Builder::new()
            .name("emoe-embedded-agent".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("cannot start its runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let l = match tokio::net::UnixListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("cannot listen: {e}")));
                            return;
                        }
                    };
                    if let Some((front, tcp)) = front {
                        let mut closing = d.closing.subscribe();
                        tokio::spawn(async move {
                            let stop = async move {
                                let _ = closing.wait_for(|c| *c).await;
                            };
                            let _ = crate::http::serve(front, tcp, stop).await;
                        });
                    }
                    let _ = ready_tx.send(Ok(()));
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                    let _ = serve_api(d, incoming, async {
                        let _ = rx.await;
                    })
                    .await;
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(CliError::failed)?;
        let up = ready_rx
            .recv()
            .unwrap_or_else(|_| Err("its API thread ended before it started".into()));
        if let Err(e) = up {
            let _ = thread.join();
            stop(&daemon, ticker);
            return Err(CliError::failed(anyhow::anyhow!(
                "the embedded agent did not start: {e}"
            )));
        }
        Ok(Self {
            socket: file,
            daemon,
            shutdown: Some(tx),
            thread: Some(thread),
            ticker: Some(ticker),
            _dir: None,
        })
    }

    /// The OpenAI-compatible endpoint (`http://127.0.0.1:PORT`), once it serves.
    pub fn http_addr(&self) -> Option<String> {
        self.daemon.http_addr.get().cloned()
    }

    /// Where clients connect.
    pub fn addr(&self) -> AgentAddr {
        AgentAddr::Unix(self.socket.path().to_path_buf())
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.ticker.take() {
            stop(&self.daemon, t);
        }
        // The socket file goes with `self.socket`.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ModelSource;

    /// Finished operations beyond the last [`crate::daemon::KEEP_OPS`] are pruned, the running
    /// one never; the request metrics stay bounded however many requests finish.
    #[test]
    fn a_long_run_keeps_bounded_operations_and_metrics() {
        let cache = tempfile::tempdir().unwrap();
        let (daemon, _) = build(&node(&cache), ServeOptions::default(), Access::default()).unwrap();
        {
            let mut st = daemon.lock();
            for id in 1..=250u64 {
                let phase = if id == 3 { "preparing" } else { "done" };
                st.ops.insert(
                    id,
                    super::super::Op {
                        info: proto::Operation {
                            id,
                            phase: phase.into(),
                            ..Default::default()
                        },
                        cancel: Default::default(),
                    },
                );
            }
            for i in 0..200_000u64 {
                let t = i as f64 * 0.001;
                st.metrics
                    .record_request(&emoe_core::metrics::RequestTiming {
                        id: i,
                        arrival_s: t,
                        first_token_s: t,
                        finish_s: t + 0.01,
                        output_tokens: 2,
                    })
                    .unwrap();
                st.metrics.record_tokens(t, 2).unwrap();
            }
        }
        daemon.prune_ops();
        let st = daemon.lock();
        assert_eq!(st.ops.len(), crate::daemon::KEEP_OPS + 1);
        assert!(st.ops.contains_key(&3), "the running operation is kept");
        assert_eq!(
            st.ops.keys().nth(1),
            Some(&151),
            "the newest finished ones are kept"
        );
        assert!(
            st.metrics.stored() <= crate::daemon::KEEP_REQUESTS + 16_000,
            "{} records",
            st.metrics.stored()
        );
        assert_eq!(st.metrics.total_requests(), 200_000);
    }

    fn node(cache: &tempfile::TempDir) -> NodeOptions {
        NodeOptions {
            backend: Default::default(),
            node: 0,
            devices: Some(8),
            logical_per_gpu: 1,
            hbm: Some(256 << 20),
            granularity: None,
            model: ModelSource::Preset("micro-moe".into()),
            config: "dp2tp2ep4".parse().unwrap(),
            first_device: 0,
            seed: 1,
            kv_tokens: 256,
            cache_dir: Some(cache.path().to_path_buf()),
        }
    }

    /// A watcher may connect before the ticker's first tick (a loaded machine): the daemon
    /// holds the node's snapshot from the start, never an empty one.
    #[test]
    fn the_daemon_holds_a_full_snapshot_before_its_first_tick() {
        let cache = tempfile::tempdir().unwrap();
        let o = node(&cache);
        // `build` starts no ticker.
        let (daemon, _) = build(&o, ServeOptions::default(), Access::default()).unwrap();
        let st = daemon.lock();
        assert_eq!(st.last.devices.len(), 8);
        assert!(st.last.devices[..4].iter().all(|d| d.used > 0));
        assert!(
            st.last
                .instances
                .iter()
                .any(|i| i.config == "dp2tp2ep4" && i.state == "active"),
            "{:?}",
            st.last.instances
        );
    }
}
