//! The SLO autoscaler (`serve --autoscale slo`): the ticker evaluates
//! [`emoe_core::autoscale::decide`] on the requests the daemon folded in, and a decision starts
//! an Elastic scale to the same TP with one TP group more or fewer, through the same checks as
//! the gRPC `Scale`. Each decision, and a target that cannot fit, is an `autoscale` event.
//! Requests queued longer than α (they miss the SLO whatever happens next) are counted from the
//! server's queue.

use std::collections::VecDeque;
use std::sync::Arc;

use emoe_core::ParallelConfig;
pub use emoe_core::autoscale::Config;
use emoe_core::autoscale::{Decision, Inputs, Sample, decide, tpot_s};
use emoe_core::scale::Strategy;

use super::ops::Refused;
use super::{Daemon, proto};
use crate::serve::{FinishReason, Finished};

/// Finished requests kept for the window, at most (the oldest go first).
pub const KEEP_SAMPLES: usize = 100_000;

/// The autoscaler's running state, in the daemon's [`State`](super::State).
#[derive(Debug)]
pub(crate) struct Tracker {
    cfg: Config,
    samples: VecDeque<Sample>,
    last_decision: Option<f64>,
    /// The window starts no earlier than this: the end of the last configuration change.
    since: f64,
    busy: bool,
    config: Option<ParallelConfig>,
    /// A target refused as not fitting: `(from, to, retry at)`; its event was logged once.
    refused: Option<(ParallelConfig, ParallelConfig, f64)>,
    /// An evaluation is between its decision and its operation's start (another tick waits).
    evaluating: bool,
}

impl Tracker {
    fn new(cfg: Config, now: f64) -> Self {
        Self {
            cfg,
            samples: VecDeque::new(),
            last_decision: None,
            since: now,
            busy: false,
            config: None,
            refused: None,
            evaluating: false,
        }
    }

    /// Fold a finished request in (from `tick`): aborted ones are not latencies.
    pub(crate) fn record(&mut self, f: &Finished) {
        if f.reason == FinishReason::Aborted {
            return;
        }
        self.samples.push_back(Sample {
            arrival_s: f.arrival_s,
            finish_s: f.finish_s,
            ttft_s: f.first_token_s - f.arrival_s,
            tpot_s: tpot_s(f.first_token_s, f.finish_s, f.output.len() as u32),
        });
        while self.samples.len() > KEEP_SAMPLES {
            self.samples.pop_front();
        }
    }
}

/// A decision in words: "up dp1tp2ep2 → dp2tp2ep4: SLO attainment 0% < 90% over 30 s (…)".
fn describe(d: &Decision, cfg: &Config, from: ParallelConfig, to: ParallelConfig) -> String {
    let dir = if matches!(d, Decision::Up { .. }) {
        "up"
    } else {
        "down"
    };
    format!("{dir} {from} → {to}: {}", d.explain(cfg))
}

impl Daemon {
    /// Devices of the node.
    pub fn devices(&self) -> usize {
        self.server.with_hmm(|h| h.devices().len())
    }

    /// The active instance's config (an error while a cold restart reloads it).
    pub fn active_parallel_config(&self) -> Result<ParallelConfig, String> {
        self.active_config().map_err(|e| e.to_string())
    }

    /// Turn the SLO autoscaler on with `cfg` (checked here; the CLI checks it against the node).
    pub fn enable_autoscale(&self, cfg: Config) -> Result<(), String> {
        cfg.validate().map_err(|e| e.to_string())?;
        let now = self.server.now();
        let mut st = self.lock();
        st.autoscale = Some(Tracker::new(cfg, now));
        st.autoscaler = proto::Autoscaler {
            mode: "slo".into(),
            attainment: None,
            threshold: cfg.threshold,
            ttft_slo_s: cfg.slo.ttft_s,
            tpot_slo_s: cfg.slo.tpot_s,
            window_s: cfg.window_s,
            min_dp: cfg.min_dp,
            max_dp: cfg.max_dp,
            state: "watching".into(),
            ..Default::default()
        };
        Ok(())
    }

    /// One evaluation (from the ticker): update the autoscaler's state, and on a decision start
    /// its scale.
    pub(crate) fn autoscale(self: &Arc<Self>) {
        if self.lock().autoscale.is_none() {
            return;
        }
        let now = self.server.now();
        let (queued, running) = self.server.queue();
        let alpha = self
            .lock()
            .autoscale
            .as_ref()
            .map_or(0.0, |t| t.cfg.slo.ttft_s);
        let over = self.server.queued_before(now - alpha);
        let active = self.server.active().map(|d| d.config);
        let scaling = self.server.is_scaling();
        let mut guard = self.lock();
        let st: &mut super::State = &mut guard;
        let busy = scaling || Daemon::running_op(st).is_some() || active.is_none();
        let Some(t) = st.autoscale.as_mut() else {
            return;
        };
        if t.evaluating {
            return;
        }
        // A configuration change (ours or a client's) ends where the window starts again.
        if (t.busy && !busy) || (active.is_some() && active != t.config) {
            t.since = now;
            t.refused = None;
        }
        t.busy = busy;
        if active.is_some() {
            t.config = active;
        }
        let cfg = t.cfg;
        let (Some(from), false) = (active, busy) else {
            st.autoscaler.state = "scaling".into();
            return;
        };
        while t
            .samples
            .front()
            .is_some_and(|s| s.finish_s < now - cfg.window_s)
        {
            t.samples.pop_front();
        }
        let d = decide(
            &cfg,
            &Inputs {
                now_s: now,
                samples: t.samples.make_contiguous(),
                since_s: t.since,
                dp: from.dp(),
                queued,
                running,
                queued_over_ttft: over,
                last_decision_s: t.last_decision,
            },
        );
        let cooling = t.last_decision.is_some_and(|l| now < l + cfg.cooldown_s);
        st.autoscaler.attainment = d.figures().attainment;
        st.autoscaler.state = if cooling { "cooldown" } else { "watching" }.into();
        let to_dp = match d {
            Decision::Hold { .. } => return,
            Decision::Up { to_dp, .. } | Decision::Down { to_dp, .. } => to_dp,
        };
        let dir = if to_dp > from.dp() { "up" } else { "down" };
        let to = match ParallelConfig::from_dp_tp(to_dp, from.tp()) {
            Ok(to) => to,
            Err(e) => {
                let msg = format!("cannot scale {dir} to DP {to_dp} TP {}: {e}", from.tp());
                self.refused(st, now, from, from, msg);
                return;
            }
        };
        let Some(t) = st.autoscale.as_mut() else {
            return;
        };
        if t.refused
            .is_some_and(|(f, x, retry)| f == from && x == to && now < retry)
        {
            return;
        }
        t.evaluating = true;
        drop(guard);
        let r = self.begin_scale("scale", to, Strategy::Elastic);
        // Events are logged in time order (watchers resume by timestamp): the operation's own
        // event came meanwhile, so the decision's is stamped now.
        let now = self.server.now();
        let mut guard = self.lock();
        let st: &mut super::State = &mut guard;
        let Some(t) = st.autoscale.as_mut() else {
            return;
        };
        t.evaluating = false;
        match r {
            Ok(id) => {
                t.last_decision = Some(now);
                t.refused = None;
                let msg = format!("{} (operation {id})", describe(&d, &cfg, from, to));
                st.autoscaler.state = "scaling".into();
                st.autoscaler.last_decision = msg.clone();
                st.autoscaler.last_decision_ts = now;
                st.autoscaler.cooldown_until = now + cfg.cooldown_s;
                self.log(st, now, "autoscale", msg);
            }
            // Another operation started meanwhile, or a cold restart reloads: next tick.
            Err(Refused::Busy(_) | Refused::Unavailable(_)) => {}
            Err(Refused::Rule(m) | Refused::Invalid(m)) => {
                let prefix = format!("target {to} (elastic): ");
                let m = m.strip_prefix(&prefix).unwrap_or(&m);
                let msg = format!("cannot scale {dir} to {to}: {m}");
                self.refused(st, now, from, to, msg);
            }
        }
    }

    /// A target that cannot fit: one event per `(from, to)`, checked again after a cooldown
    /// (memory may have been freed), never a retry every tick.
    fn refused(
        &self,
        st: &mut super::State,
        now: f64,
        from: ParallelConfig,
        to: ParallelConfig,
        msg: String,
    ) {
        let Some(t) = st.autoscale.as_mut() else {
            return;
        };
        let again = t.refused.is_some_and(|(f, x, _)| f == from && x == to);
        t.refused = Some((from, to, now + t.cfg.cooldown_s.max(1.0)));
        if !again {
            let msg = emoe_core::echo::bound_words(&msg);
            st.autoscaler.last_decision = msg.clone();
            st.autoscaler.last_decision_ts = now;
            self.log(st, now, "autoscale", msg);
        }
    }
}
