//! The node daemon (`emoe-agent serve`): a serving node behind the gRPC API of
//! `proto/emoe.proto`.
//!
//! A ticker thread turns the server's events into operation progress and an event log, builds
//! a snapshot of the node a few times a second, and publishes what changed as a numbered update;
//! `Watch` sends a full snapshot, then those updates (resuming from a sequence number when the
//! client's is still in the recent ring). Scaling runs on its own thread per operation; with
//! `--autoscale slo` the ticker also evaluates the SLO autoscaler ([`autoscale`]) first.

pub mod autoscale;
pub mod client;
pub mod host;
pub mod metrics;
mod ops;
mod service;
mod snapshot;
mod ssh;

pub use snapshot::{apply as apply_delta, delta as snapshot_delta};

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use emoe_core::metrics::{RequestTiming, Rolling};
use emoe_core::plan::Topology;

pub use service::AgentService;
pub(crate) use service::same_secret;

use crate::scale::{Event as ScaleEvent, Phase};
use crate::serve::{ServeEvent, Server};

/// The generated API types and stubs.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("emoe.v1");
}

/// Updates kept for resuming watchers.
pub const RING: usize = 256;
/// Events kept in snapshots.
pub const EVENTS: usize = 200;
/// Finished requests whose latencies the snapshot's quantiles cover.
pub const KEEP_REQUESTS: usize = 10_000;
/// Seconds of token records kept (the snapshot's rates are over the last 10 s).
pub const KEEP_TOKENS_S: f64 = 15.0;
/// Finished operations kept (older ones are pruned so a long run stays bounded).
pub const KEEP_OPS: usize = 100;
/// Watch streams served at once unless `--max-watchers` says otherwise.
pub const DEFAULT_MAX_WATCHERS: usize = 64;

/// Who may call what, and how many may watch.
#[derive(Clone, Debug)]
pub struct Access {
    /// Refuse every mutating call (`--readonly`).
    pub readonly: bool,
    /// Bearer token mutating calls need (`--token-file`).
    pub token: Option<String>,
    /// Reads need the token too (`--allow-remote`: the API is reachable from other hosts).
    pub auth_reads: bool,
    /// Watch streams served at once; the next one is refused.
    pub max_watchers: usize,
}

impl Default for Access {
    fn default() -> Self {
        Self {
            readonly: false,
            token: None,
            auth_reads: false,
            max_watchers: DEFAULT_MAX_WATCHERS,
        }
    }
}

/// Why an HTTP request's bearer token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bearer {
    Missing,
    Wrong,
}

impl Access {
    /// Whether an HTTP request carries the token as `Authorization: Bearer TOKEN` (any request
    /// does when the agent has none).
    pub fn bearer(&self, headers: &axum::http::HeaderMap) -> Result<(), Bearer> {
        let Some(token) = self.token.as_deref() else {
            return Ok(());
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if same_secret(g, token) => Ok(()),
            Some(_) => Err(Bearer::Wrong),
            None => Err(Bearer::Missing),
        }
    }
}

/// An id of this daemon's start, so that a client resuming a watch against a restarted agent
/// (whose sequence numbers start again) gets a full snapshot: time, pid and a process counter.
fn new_incarnation() -> String {
    static STARTS: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = STARTS.fetch_add(1, Ordering::Relaxed);
    format!("{nanos:x}-{:x}-{n}", std::process::id())
}

/// One scaling operation as clients see it.
pub(crate) struct Op {
    pub info: proto::Operation,
    pub cancel: Arc<AtomicBool>,
}

/// Node facts that do not change.
#[derive(Clone, Debug)]
pub struct NodeFacts {
    pub hostname: String,
    pub node_id: u32,
    pub backend: String,
    pub model: String,
}

pub(crate) struct State {
    pub seq: u64,
    pub ops: BTreeMap<u64, Op>,
    pub next_op: u64,
    pub events: VecDeque<proto::Event>,
    pub ring: VecDeque<proto::WatchUpdate>,
    /// The latest snapshot: taken at start, so a watcher that connects before the first tick
    /// gets the node as it is, not an empty one.
    pub last: proto::Snapshot,
    /// Bounded: the last [`KEEP_REQUESTS`] requests and [`KEEP_TOKENS_S`] of tokens.
    pub metrics: Rolling,
    pub finished: u64,
    /// The copies of the current or last operation.
    pub migrations: Vec<proto::Migration>,
    /// Recent `(ts, tokens)` of each instance's decode steps (the last 10 s).
    pub instance_tokens: BTreeMap<u64, VecDeque<(f64, u64)>>,
    /// `(finish ts, from an HTTP client)` of the requests finished in the last 10 s.
    pub finished_sources: VecDeque<(f64, bool)>,
    /// Requests of HTTP clients finished since the start.
    pub http_finished: u64,
    /// The autoscaler as clients see it (mode "off" unless `--autoscale` is given).
    pub autoscaler: proto::Autoscaler,
    /// The `vllm:` metrics.
    pub vllm: metrics::VllmStats,
    /// The SLO autoscaler's state when `--autoscale slo` is on.
    pub autoscale: Option<autoscale::Tracker>,
}

/// The daemon's shared core: the serving node and what clients see of it.
pub struct Daemon {
    pub(crate) server: Arc<Server>,
    pub(crate) facts: NodeFacts,
    pub(crate) state: Mutex<State>,
    pub(crate) updates: tokio::sync::broadcast::Sender<proto::WatchUpdate>,
    pub(crate) topology: Topology,
    pub(crate) access: Access,
    /// This start's id (see [`new_incarnation`]).
    pub(crate) incarnation: String,
    /// Watch streams being served now.
    pub(crate) watchers: AtomicUsize,
    /// Set on shutdown: every watch stream ends, so a graceful stop need not wait for clients.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    pub(crate) sys: Mutex<sysinfo::System>,
    /// Devices with their regions, as of an HMM generation.
    pub(crate) devices_cache: Mutex<(Option<u64>, Vec<proto::Device>)>,
    pub(crate) stop: AtomicBool,
    /// The OpenAI-compatible endpoint's address once it serves (`--http`).
    pub(crate) http_addr: std::sync::OnceLock<String>,
    /// HTTP requests refused since the start (any 4xx/5xx the front door answered).
    pub(crate) http_refused: AtomicU64,
    /// Wakes the ticker and the traffic thread from their waits when `stop` is set.
    wake: (Mutex<()>, Condvar),
}

impl Daemon {
    pub fn new(
        server: Arc<Server>,
        facts: NodeFacts,
        topology: Topology,
        access: Access,
    ) -> Arc<Self> {
        let (updates, _) = tokio::sync::broadcast::channel(RING);
        let d = Arc::new(Self {
            server,
            facts,
            state: Mutex::new(State {
                seq: 0,
                ops: BTreeMap::new(),
                next_op: 1,
                events: VecDeque::new(),
                ring: VecDeque::new(),
                last: proto::Snapshot::default(),
                metrics: Rolling::new(None, KEEP_TOKENS_S, KEEP_REQUESTS),
                finished: 0,
                migrations: Vec::new(),
                instance_tokens: BTreeMap::new(),
                finished_sources: VecDeque::new(),
                http_finished: 0,
                vllm: metrics::VllmStats::default(),
                autoscaler: proto::Autoscaler {
                    mode: "off".into(),
                    ..Default::default()
                },
                autoscale: None,
            }),
            updates,
            topology,
            access,
            incarnation: new_incarnation(),
            watchers: AtomicUsize::new(0),
            closing: tokio::sync::watch::channel(false).0,
            sys: Mutex::new(sysinfo::System::new()),
            devices_cache: Mutex::new((None, Vec::new())),
            stop: AtomicBool::new(false),
            http_addr: std::sync::OnceLock::new(),
            http_refused: AtomicU64::new(0),
            wake: (Mutex::new(()), Condvar::new()),
        });
        let first = d.snapshot();
        d.lock().last = first;
        d
    }

    /// The serving node.
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The links the planner assumes.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// This start's id: snapshots carry it, and a watch resumes only within it.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// Stop the background threads: they are woken from their waits at once.
    pub(crate) fn request_stop(&self) {
        let _g = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        self.stop.store(true, Ordering::Release);
        self.wake.1.notify_all();
    }

    /// Wait `d` or until a stop is requested; true when stopping.
    pub(crate) fn wait_or_stop(&self, d: Duration) -> bool {
        let g = self.wake.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .wake
            .1
            .wait_timeout_while(g, d, |_| !self.stop.load(Ordering::Acquire))
            .unwrap_or_else(|p| p.into_inner());
        self.stop.load(Ordering::Acquire)
    }

    /// On shutdown: end every watch stream (and refuse new ones), and cancel the operations.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
        for o in self.lock().ops.values() {
            o.cancel.store(true, Ordering::Release);
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append to the event log.
    pub(crate) fn log(&self, st: &mut State, ts: f64, kind: &str, message: String) {
        st.events.push_back(proto::Event {
            ts,
            kind: kind.into(),
            message,
        });
        while st.events.len() > EVENTS {
            st.events.pop_front();
        }
    }

    /// The operation running now, if any.
    pub(crate) fn running_op(st: &State) -> Option<u64> {
        st.ops
            .values()
            .find(|o| !matches!(o.info.phase.as_str(), "done" | "failed" | "cancelled"))
            .map(|o| o.info.id)
    }

    /// Fold the server's events and finished requests in, then publish a numbered update when
    /// anything a client sees changed.
    pub fn tick(&self) {
        let events = self.server.take_events();
        let finished = self.server.take_finished();
        {
            let mut st = self.lock();
            let op = Self::running_op(&st);
            for e in events {
                match e {
                    ServeEvent::Step {
                        ts,
                        tokens,
                        instance,
                        ..
                    } => {
                        let q = st.instance_tokens.entry(instance).or_default();
                        q.push_back((ts, tokens as u64));
                        while q.front().is_some_and(|(t, _)| *t < ts - 10.0) {
                            q.pop_front();
                        }
                        if tokens > 0 {
                            let _ = st.metrics.record_tokens(ts, tokens as u64);
                        }
                    }
                    ServeEvent::Scale { ts, event } => {
                        let Some(id) = op else { continue };
                        if !st.ops.contains_key(&id) {
                            continue;
                        }
                        match event {
                            ScaleEvent::Phase { phase, .. } => {
                                let Some(o) = st.ops.get_mut(&id) else {
                                    continue;
                                };
                                o.info.phase = phase_name(phase).into();
                                let msg = format!("operation {id}: {}", o.info.phase);
                                self.log(&mut st, ts, "operation", msg);
                            }
                            ScaleEvent::CopyDone {
                                job,
                                jobs_done,
                                jobs,
                                bytes_done,
                                bytes,
                                ..
                            } => {
                                if let Some(m) = st
                                    .migrations
                                    .iter_mut()
                                    .find(|m| m.operation == id && m.job == job as u32)
                                {
                                    m.done = true;
                                    m.finished = ts;
                                    m.rate_bytes_per_s =
                                        m.bytes as f64 / (ts - m.started).max(1e-6);
                                }
                                let Some(o) = st.ops.get_mut(&id) else {
                                    continue;
                                };
                                o.info.copies_done = jobs_done as u32;
                                o.info.copies_total = jobs as u32;
                                o.info.bytes_done = bytes_done;
                                o.info.bytes_total = bytes;
                                let dt = (ts - o.info.started).max(1e-6);
                                o.info.rate_bytes_per_s = bytes_done as f64 / dt;
                            }
                            ScaleEvent::CopyStarted {
                                job,
                                what,
                                src,
                                dst,
                                bytes,
                                ..
                            } => {
                                if st.migrations.first().is_some_and(|m| m.operation != id) {
                                    st.migrations.clear();
                                }
                                st.migrations.push(proto::Migration {
                                    operation: id,
                                    job: job as u32,
                                    what: pack_name(what),
                                    src: src.map_or("disk".into(), |d| d.to_string()),
                                    dst: dst.to_string(),
                                    bytes,
                                    done: false,
                                    started: ts,
                                    finished: 0.0,
                                    rate_bytes_per_s: 0.0,
                                });
                            }
                            ScaleEvent::Error { message, .. } => {
                                if let Some(o) = st.ops.get_mut(&id) {
                                    o.info.error = message.clone();
                                }
                                self.log(&mut st, ts, "error", message);
                            }
                        }
                    }
                    ServeEvent::Instance {
                        ts,
                        instance,
                        config,
                        state,
                    } => {
                        let msg = format!("instance {instance} {config}: {state:?}");
                        self.log(&mut st, ts, "instance", msg);
                    }
                    ServeEvent::Error { ts, message } => self.log(&mut st, ts, "error", message),
                }
            }
            for f in finished {
                if let Some(a) = st.autoscale.as_mut() {
                    a.record(&f);
                }
                st.finished += 1;
                let http = f.source == crate::serve::Source::Http;
                st.http_finished += u64::from(http);
                st.finished_sources.push_back((f.finish_s, http));
                st.vllm.record(&f);
                let _ = st.metrics.record_request(&RequestTiming {
                    id: f.id,
                    arrival_s: f.arrival_s,
                    first_token_s: f.first_token_s,
                    finish_s: f.finish_s,
                    output_tokens: f.output.len() as u32,
                });
            }
        }
        self.prune_ops();
        {
            // Instances that ended (every scale makes new ones) take their rate records along.
            let now = self.server.now();
            let mut st = self.lock();
            st.instance_tokens
                .retain(|_, q| q.back().is_some_and(|(t, _)| *t >= now - 10.0));
            while st
                .finished_sources
                .front()
                .is_some_and(|(t, _)| *t < now - 10.0)
            {
                st.finished_sources.pop_front();
            }
        }
        let snap = self.snapshot();
        let mut st = self.lock();
        let update = snapshot::delta(&st.last, &snap);
        st.last = snap;
        if let Some(delta) = update {
            st.seq += 1;
            let u = proto::WatchUpdate {
                seq: st.seq,
                body: Some(proto::watch_update::Body::Delta(delta)),
            };
            st.last.seq = st.seq;
            st.ring.push_back(u.clone());
            while st.ring.len() > RING {
                st.ring.pop_front();
            }
            drop(st);
            let _ = self.updates.send(u);
        }
    }

    /// Keep the last [`KEEP_OPS`] finished operations (and any running one): a daemon that
    /// scales every few seconds for weeks must not grow with every operation it ran.
    pub(crate) fn prune_ops(&self) {
        let mut st = self.lock();
        let finished: Vec<u64> = st
            .ops
            .values()
            .filter(|o| matches!(o.info.phase.as_str(), "done" | "failed" | "cancelled"))
            .map(|o| o.info.id)
            .collect();
        for id in finished
            .iter()
            .take(finished.len().saturating_sub(KEEP_OPS))
        {
            st.ops.remove(id);
        }
    }

    /// Tick every `period` on a thread of its own until a stop is requested (which wakes it).
    /// Each tick first evaluates the autoscaler (on what the previous tick folded in), so its
    /// decision is in the update the tick publishes.
    pub fn spawn_ticker(self: &Arc<Self>, period: Duration) -> std::thread::JoinHandle<()> {
        let d = Arc::clone(self);
        std::thread::spawn(move || {
            while !d.stop.load(Ordering::Acquire) {
                d.autoscale();
                d.tick();
                if d.wait_or_stop(period) {
                    break;
                }
            }
        })
    }
}

fn pack_name(k: emoe_core::model::PackKey) -> String {
    use emoe_core::model::PackKey;
    match k {
        PackKey::Globals => "globals".into(),
        PackKey::Layer { layer } => format!("layer {layer}"),
        PackKey::Expert { layer, expert } => format!("expert {layer}/{expert}"),
    }
}

pub(crate) fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Planned => "planned",
        Phase::Preparing => "preparing",
        Phase::Switching => "switching",
        Phase::Releasing => "releasing",
        Phase::Done => "done",
        Phase::Failed => "failed",
        Phase::Cancelled => "cancelled",
    }
}
