//! The gRPC service over a [`Daemon`]. Errors use gRPC codes: `InvalidArgument` naming the rule
//! and the value, `FailedPrecondition` while an operation runs, `NotFound`, `PermissionDenied`
//! for mutating calls on a read-only agent.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use emoe_core::ParallelConfig;
use emoe_core::plan::Policy;
use emoe_core::scale::Strategy;

use super::Daemon;
use super::ops::Refused;
use super::proto::agent_server::Agent;
use super::proto::{self, watch_update::Body};

/// The service clients talk to.
#[derive(Clone)]
pub struct AgentService {
    pub daemon: Arc<Daemon>,
}

/// `message`, with the client's `value` in it quoted as [`emoe_core::echo::echo`] quotes it,
/// and the whole bounded: a status message travels in a header, which a 100 KB value would
/// overflow.
pub(crate) fn echo(message: &str, value: &str) -> String {
    let m = if value.chars().count() > emoe_core::echo::ECHO_CHARS {
        message.replace(value, &emoe_core::echo::echo(value))
    } else {
        message.to_string()
    };
    emoe_core::echo::bound_words(&m)
}

fn bad_config(field: &str, s: &str) -> Result<ParallelConfig, Status> {
    s.parse::<ParallelConfig>()
        .map_err(|e| Status::invalid_argument(echo(&format!("{field}: {e}"), s)))
}

/// `a == b` in a time that does not depend on where they differ (a remote client must not
/// learn the token a byte at a time).
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Ends a watcher's count when its stream's task ends, however it ends.
struct WatcherSlot(Arc<Daemon>);

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Updates a watcher may be behind before it is dropped: one that does not read must not make
/// the daemon hold every update for it (a client reconnects and resumes, or gets a snapshot).
pub(crate) const WATCH_BACKLOG: usize = 32;

impl AgentService {
    /// Mutating calls: refused on a read-only agent, and with a token configured they need
    /// `authorization: Bearer TOKEN`.
    fn writable(&self, meta: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        if self.daemon.access.readonly {
            return Err(Status::permission_denied(
                "the agent is read-only (--readonly): mutating calls are refused",
            ));
        }
        self.authorized(meta, "mutating calls")
    }

    /// Reads: with `--allow-remote` (the API reachable from other hosts) they need the token
    /// too.
    fn readable(&self, meta: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        if self.daemon.access.auth_reads {
            return self.authorized(meta, "every call (--allow-remote)");
        }
        Ok(())
    }

    /// With a token configured, `authorization: Bearer TOKEN` must carry it.
    fn authorized(&self, meta: &tonic::metadata::MetadataMap, what: &str) -> Result<(), Status> {
        if let Some(token) = &self.daemon.access.token {
            let given = meta
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            match given {
                None => {
                    return Err(Status::unauthenticated(format!(
                        "this agent needs a token for {what}: pass --token-file"
                    )));
                }
                Some(t) if !same_secret(t, token) => {
                    return Err(Status::unauthenticated(
                        "the token does not match the agent's",
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for AgentService {
    async fn get_snapshot(
        &self,
        req: Request<proto::GetSnapshotRequest>,
    ) -> Result<Response<proto::Snapshot>, Status> {
        self.readable(req.metadata())?;
        let d = Arc::clone(&self.daemon);
        let snap = tokio::task::spawn_blocking(move || {
            let mut s = d.snapshot();
            s.seq = d.lock().seq;
            s
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(snap))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.readable(req.metadata())?;
        let req = req.into_inner();
        let d = Arc::clone(&self.daemon);
        let mut closing = d.closing.subscribe();
        if *closing.borrow_and_update() {
            return Err(Status::unavailable("the agent is shutting down"));
        }
        let max = d.access.max_watchers;
        if d.watchers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Status::resource_exhausted(format!(
                "at most {max} watchers at once (--max-watchers {max}): try again later"
            )));
        }
        let slot = WatcherSlot(Arc::clone(&d));
        // A resume is only valid within the same start of the agent: a restarted one numbers
        // its updates from 1 again, and its deltas do not apply to the old state.
        let resume = req
            .resume_from
            .filter(|_| req.incarnation.as_deref() == Some(d.incarnation.as_str()));
        // Subscribe first so nothing published meanwhile is missed.
        let mut rx = d.updates.subscribe();
        let first: Vec<proto::WatchUpdate> = {
            let st = d.lock();
            let from_ring = resume.and_then(|r| {
                let oldest = st.ring.front().map(|u| u.seq)?;
                (r + 1 >= oldest && r <= st.seq)
                    .then(|| st.ring.iter().filter(|u| u.seq > r).cloned().collect())
            });
            match from_ring {
                Some(v) => v,
                None => {
                    let mut snap = st.last.clone();
                    snap.seq = st.seq;
                    snap.events = st.events.iter().cloned().collect();
                    snap.operations = st.ops.values().map(|o| o.info.clone()).collect();
                    vec![proto::WatchUpdate {
                        seq: st.seq,
                        body: Some(Body::Snapshot(snap)),
                    }]
                }
            }
        };
        let mut last = first.last().map_or(resume.unwrap_or(0), |u| u.seq);
        // The backlog, plus room for the first updates and the message that drops the watcher.
        let (tx, out) = tokio::sync::mpsc::channel(WATCH_BACKLOG + first.len() + 1);
        tokio::spawn(async move {
            let _slot = slot;
            // Queue without waiting: a full queue means the client stopped reading.
            let push = |u: proto::WatchUpdate| -> bool {
                if tx.capacity() <= 1 {
                    let _ = tx.try_send(Err(Status::resource_exhausted(format!(
                        "this watcher fell {WATCH_BACKLOG} updates behind and was dropped: \
                         reconnect to resume"
                    ))));
                    return false;
                }
                tx.try_send(Ok(u)).is_ok()
            };
            for u in first {
                if !push(u) {
                    return;
                }
            }
            loop {
                let r = tokio::select! {
                    biased;
                    _ = closing.changed() => return,
                    // The client left: free its slot now, not at the next update.
                    () = tx.closed() => return,
                    r = rx.recv() => r,
                };
                match r {
                    Ok(u) if u.seq <= last => continue,
                    Ok(u) => {
                        last = u.seq;
                        if !push(u) {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Too far behind: a fresh snapshot, then on from there.
                        let snap = {
                            let st = d.lock();
                            let mut s = st.last.clone();
                            s.seq = st.seq;
                            s.events = st.events.iter().cloned().collect();
                            s.operations = st.ops.values().map(|o| o.info.clone()).collect();
                            s
                        };
                        last = snap.seq;
                        let u = proto::WatchUpdate {
                            seq: snap.seq,
                            body: Some(Body::Snapshot(snap)),
                        };
                        if !push(u) {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn plan(
        &self,
        req: Request<proto::PlanRequest>,
    ) -> Result<Response<proto::PlanReply>, Status> {
        self.readable(req.metadata())?;
        let to = bad_config("to", &req.into_inner().to)?;
        let d = Arc::clone(&self.daemon);
        let p =
            tokio::task::spawn_blocking(move || d.server.plan(to, Policy::Balanced, &d.topology))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(proto::PlanReply {
            from: p.from.to_string(),
            to: p.to.to_string(),
            devices_added: p.devices_added.iter().map(ToString::to_string).collect(),
            devices_removed: p.devices_removed.iter().map(ToString::to_string).collect(),
            zero_copy_bytes: p.zero_copy_bytes,
            p2p_bytes: p.p2p_bytes,
            experts_moved: p.experts_moved,
            predicted_seconds: p.predicted_seconds,
            predicted_peak_bytes: p
                .predicted_peak_bytes
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            steps: p.steps.len() as u32,
        }))
    }

    async fn scale(
        &self,
        req: Request<proto::ScaleRequest>,
    ) -> Result<Response<proto::ScaleReply>, Status> {
        self.writable(req.metadata())?;
        let r = req.into_inner();
        let to = bad_config("to", &r.to)?;
        let strategy = if r.strategy.is_empty() {
            Strategy::Elastic
        } else {
            r.strategy
                .parse::<Strategy>()
                .map_err(|e| Status::invalid_argument(format!("strategy: {e}")))?
        };
        // The checks (one operation at a time, TP fixed, the target fits) refuse an impossible
        // target now, with its rule, rather than as a failed operation.
        let d = Arc::clone(&self.daemon);
        let id = tokio::task::spawn_blocking(move || d.begin_scale("scale", to, strategy))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(status)?;
        Ok(Response::new(proto::ScaleReply { operation: id }))
    }

    async fn cancel(
        &self,
        req: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::CancelReply>, Status> {
        self.writable(req.metadata())?;
        let id = req.into_inner().operation;
        let st = self.daemon.lock();
        let op = st
            .ops
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("no operation {id}")))?;
        let refuse = |p: &str| {
            Status::failed_precondition(format!(
                "operation {id} is {p}: only an operation before its switchover can be cancelled"
            ))
        };
        if matches!(op.info.phase.as_str(), "done" | "failed" | "cancelled") {
            return Err(refuse(&op.info.phase));
        }
        // The live phase, from the operation itself (the record's lags by up to a tick): the
        // cancel is carried out before the point of no return or refused past it.
        match self.daemon.server.cancel_operation(&op.cancel) {
            Ok(p) => Ok(Response::new(proto::CancelReply {
                phase: super::phase_name(p).into(),
            })),
            Err(p) => Err(refuse(super::phase_name(p))),
        }
    }

    async fn rebalance(
        &self,
        req: Request<proto::RebalanceRequest>,
    ) -> Result<Response<proto::ScaleReply>, Status> {
        self.writable(req.metadata())?;
        let replicas = req.into_inner().replicas;
        if replicas > 64 {
            return Err(Status::invalid_argument(format!(
                "replicas: at most 64 redundant experts per layer, got {replicas}"
            )));
        }
        // One operation at a time comes first: during a cold restart there is no active
        // instance to rebalance, and that is the operation's doing, not the node's state.
        if let Some(id) = Daemon::running_op(&self.daemon.lock()) {
            return Err(Status::failed_precondition(format!(
                "operation {id} is already running: one scaling operation at a time"
            )));
        }
        let to = self.daemon.active_config().map_err(status)?;
        let id = self
            .daemon
            .start_op("rebalance", to, Strategy::Elastic, move |d, cancel| {
                let load = d
                    .server
                    .expert_load()
                    .into_iter()
                    .map(|(l, v)| (l, v.into_iter().map(|x| x as f64).collect()))
                    .collect();
                let policy = Policy::LoadAware { load, replicas };
                let p = d
                    .server
                    .plan(to, policy, &d.topology)
                    .map_err(|e| e.to_string())?;
                d.server.scale(&p, cancel).map_err(|e| e.to_string())
            })
            .map_err(status)?;
        Ok(Response::new(proto::ScaleReply { operation: id }))
    }
}

/// A refused start as its gRPC status.
fn status(r: Refused) -> Status {
    match r {
        Refused::Busy(m) | Refused::Rule(m) => Status::failed_precondition(m),
        Refused::Unavailable(m) => Status::unavailable(m),
        Refused::Invalid(m) => Status::invalid_argument(m),
    }
}
