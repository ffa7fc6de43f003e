//! Starting scaling operations: the one path the gRPC `Scale`/`Rebalance` and the autoscaler
//! share (one operation at a time, TP fixed, the target checked before anything is recorded).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use emoe_core::ParallelConfig;
use emoe_core::scale::Strategy;

use super::{Daemon, Op, proto};

/// Why an operation was not started; the gRPC service maps each to its code.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refused {
    /// Another operation runs (`FailedPrecondition`).
    Busy(String),
    /// No active instance now: a cold restart reloads it (`Unavailable`).
    Unavailable(String),
    /// The target breaks a rule of the request (`InvalidArgument`).
    Invalid(String),
    /// The target does not fit the node (`FailedPrecondition`).
    Rule(String),
}

impl Refused {
    pub(crate) fn message(&self) -> &str {
        match self {
            Refused::Busy(m) | Refused::Unavailable(m) | Refused::Invalid(m) | Refused::Rule(m) => {
                m
            }
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

fn already_running(id: u64) -> Refused {
    Refused::Busy(format!(
        "operation {id} is already running: one scaling operation at a time"
    ))
}

impl Daemon {
    /// The active instance's config, or `Unavailable` while a cold restart reloads it.
    pub(crate) fn active_config(&self) -> Result<ParallelConfig, Refused> {
        self.server
            .try_active()
            .map(|a| a.config)
            .map_err(|e| Refused::Unavailable(e.to_string()))
    }

    /// A scale to `to` by `strategy`, after the checks a scale makes first: one operation at a
    /// time (the rule that applies first: a cold restart has no active instance to compare
    /// with while it runs), TP fixed, and the target fits the node (too few devices, too little
    /// memory, a horizontal target that is not two replicas are refused with the rule before
    /// any operation is recorded). Blocks while the target is checked.
    pub(crate) fn begin_scale(
        self: &Arc<Self>,
        kind: &str,
        to: ParallelConfig,
        strategy: Strategy,
    ) -> Result<u64, Refused> {
        if let Some(id) = Daemon::running_op(&self.lock()) {
            return Err(already_running(id));
        }
        let from = self.active_config()?;
        if from.tp() != to.tp() {
            return Err(Refused::Invalid(format!(
                "TP is fixed: target {to} has TP {}, the instance runs TP {}",
                to.tp(),
                from.tp()
            )));
        }
        self.server
            .check_target(strategy, to, &self.topology)
            .map_err(|e| {
                let msg = format!("target {to} ({strategy}): {e}");
                if e.is_rule() {
                    Refused::Rule(msg)
                } else {
                    Refused::Invalid(msg)
                }
            })?;
        self.start_op(kind, to, strategy, move |d, cancel| {
            d.server
                .scale_with(strategy, to, &d.topology, cancel)
                .map_err(|e| e.to_string())
        })
    }

    /// Record operation `kind` and run it on its own thread; returns its id.
    pub(crate) fn start_op(
        self: &Arc<Self>,
        kind: &str,
        to: ParallelConfig,
        strategy: Strategy,
        run: impl FnOnce(&Daemon, &AtomicBool) -> Result<crate::serve::ScaleReport, String>
        + Send
        + 'static,
    ) -> Result<u64, Refused> {
        let from = self.active_config()?;
        let mut st = self.lock();
        if let Some(id) = Daemon::running_op(&st) {
            return Err(already_running(id));
        }
        // The server's own flag too: an operation's record may read `done` a moment before its
        // thread has let go of the node.
        if self.server.is_scaling() {
            return Err(Refused::Busy(
                "an operation is already running: one scaling operation at a time".into(),
            ));
        }
        let id = st.next_op;
        st.next_op += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        let ts = self.server.now();
        st.ops.insert(
            id,
            Op {
                info: proto::Operation {
                    id,
                    kind: kind.into(),
                    from: from.to_string(),
                    to: to.to_string(),
                    strategy: strategy.to_string(),
                    phase: "planned".into(),
                    started: ts,
                    ..Default::default()
                },
                cancel: Arc::clone(&cancel),
            },
        );
        let msg = format!("operation {id}: {kind} {from} → {to} ({strategy})");
        self.log(&mut st, ts, "operation", msg);
        drop(st);
        let daemon = Arc::clone(self);
        // Detached on purpose: one operation runs at a time, so at most one such thread lives
        // (plus one finishing); its record, not its handle, carries the outcome.
        std::thread::spawn(move || {
            // A panic ends the operation `failed` with its message; the record never stays
            // running (which would refuse every later operation).
            let r =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&daemon, &cancel)))
                    .unwrap_or_else(|p| {
                        let why = crate::serve::panic_message(&*p);
                        Err(format!("the operation panicked: {why}"))
                    });
            daemon.tick();
            let mut st = daemon.lock();
            let ts = daemon.server.now();
            let msg = match &r {
                Ok(rep) => format!("operation {id}: done in {:.3} s", rep.latency_s),
                Err(e) => format!("operation {id}: {e}"),
            };
            if let Some(o) = st.ops.get_mut(&id) {
                match &r {
                    Ok(rep) => {
                        o.info.phase = "done".into();
                        o.info.latency_s = rep.latency_s;
                    }
                    Err(e) => {
                        let cancelled = e.contains("cancelled");
                        o.info.phase = if cancelled { "cancelled" } else { "failed" }.into();
                        o.info.error = if e.is_empty() {
                            "the operation failed without a reason".into()
                        } else {
                            e.clone()
                        };
                    }
                }
            }
            daemon.log(&mut st, ts, "operation", msg);
        });
        Ok(id)
    }
}
