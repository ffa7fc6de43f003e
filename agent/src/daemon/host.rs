//! Hosting a daemon: the socket, the serving node behind it, background traffic, an orderly stop,
//! and an embedded agent on a private socket (what `emoe` with no arguments runs).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use emoe_core::plan::Topology;
use emoe_core::traffic::{TrafficSpec, prompt_ids};

use super::client::AgentAddr;
use super::proto;
use super::{AgentService, Daemon, NodeFacts};
use crate::bandwidth::measure_memcpy;
use crate::cluster::NodeOptions;
use crate::exit::{self, CliError};
use crate::serve::{ServeOptions, Submit};

/// Bind the Unix socket: the parent directory 0700, the socket 0600; a stale socket file is
/// replaced, a live one is refused.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, CliError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::usage(anyhow::anyhow!("cannot create {}: {e}", dir.display()))
        })?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(CliError::new(
                exit::REFUSED,
                anyhow::anyhow!("an agent already listens on {}", path.display()),
            ));
        }
        std::fs::remove_file(path).map_err(CliError::failed)?;
    }
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
        CliError::usage(anyhow::anyhow!("cannot listen on {}: {e}", path.display()))
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(CliError::failed)?;
    Ok(l)
}

/// Start serving `o` and wrap it in a daemon (the ticker is not started).
pub fn build(
    o: &NodeOptions,
    opts: ServeOptions,
    readonly: bool,
    token: Option<String>,
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
    let daemon = Daemon::new(server, facts, Topology::uniform(bw, bw), readonly, token);
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
                // Sleep in short slices so a stop is noticed promptly.
                loop {
                    if d.stop.load(Ordering::Acquire) {
                        return;
                    }
                    let wait = t0 + r.arrival_s - d.server.now();
                    if wait <= 0.0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs_f64(wait.min(0.1)));
                }
                let _ = d.server.submit(Submit {
                    prompt: prompt_ids(seed, r.id, r.prompt_tokens, vocab),
                    output_tokens: r.output_tokens,
                });
            }
            seed += 1;
        }
    });
    Ok(())
}

/// Stop: an operation before its switchover is cancelled and rolls back (nothing is left
/// mapped); one past it finishes. Waits up to a minute for it, then stops the ticker.
pub fn stop(daemon: &Daemon, ticker: std::thread::JoinHandle<()>) {
    for o in daemon.lock().ops.values() {
        o.cancel.store(true, Ordering::Release);
    }
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while Daemon::running_op(&daemon.lock()).is_some() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(id) = Daemon::running_op(&daemon.lock()) {
        eprintln!("emoe-agent: operation {id} did not end within 60 s of the shutdown");
    }
    daemon.stop.store(true, Ordering::Release);
    let _ = ticker.join();
}

/// An agent in this process on a private Unix socket: clients reach it exactly as they reach
/// `emoe-agent serve`.
pub struct Embedded {
    socket: PathBuf,
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

    /// As [`Embedded::start`], on the given socket path.
    pub fn start_at(
        o: &NodeOptions,
        traffic: Option<f64>,
        tick: Duration,
        readonly: bool,
        socket: &Path,
    ) -> Result<Self, CliError> {
        let listener = bind(socket)?;
        let (daemon, vocab) = build(o, ServeOptions::default(), readonly, None)?;
        let ticker = daemon.spawn_ticker(tick);
        if let Some(rate) = traffic {
            spawn_traffic(&daemon, rate, vocab)?;
        }
        listener.set_nonblocking(true).map_err(CliError::failed)?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let svc = AgentService {
            daemon: Arc::clone(&daemon),
        };
        let thread = std::thread::Builder::new()
            .name("emoe-embedded-agent".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(l) = tokio::net::UnixListener::from_std(listener) else {
                        return;
                    };
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(l);
                    let api = proto::agent_server::AgentServer::new(svc)
                        .max_decoding_message_size(1 << 20);
                    let _ = tonic::transport::Server::builder()
                        .add_service(api)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = rx.await;
                        })
                        .await;
                });
            })
            .map_err(CliError::failed)?;
        Ok(Self {
            socket: socket.to_path_buf(),
            daemon,
            shutdown: Some(tx),
            thread: Some(thread),
            ticker: Some(ticker),
            _dir: None,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> AgentAddr {
        AgentAddr::Unix(self.socket.clone())
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
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ModelSource;

    /// A watcher may connect before the ticker's first tick (a loaded machine): the daemon
    /// holds the node's snapshot from the start, never an empty one.
    #[test]
    fn the_daemon_holds_a_full_snapshot_before_its_first_tick() {
        let cache = tempfile::tempdir().unwrap();
        let o = NodeOptions {
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
        };
        // `build` starts no ticker.
        let (daemon, _) = build(&o, ServeOptions::default(), false, None).unwrap();
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
