//! What the console knows of each node: the link to its agent, the last state it streamed, and
//! a short history of serving figures for the sparklines. Pure data, updated by messages.

use std::collections::VecDeque;

use emoe_agent::daemon::apply_delta;
use emoe_agent::daemon::proto::{self, watch_update::Body};

/// Samples kept per node for the serving charts.
pub const HISTORY: usize = 240;

/// The state of the connection to one agent.
#[derive(Clone, Debug, PartialEq)]
pub enum Link {
    Connecting,
    Live,
    /// Away: the last error and when the next attempt is (seconds from the last failure).
    Stale {
        error: String,
        retry_s: f64,
    },
}

/// One serving sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub ts: f64,
    pub tokens_per_s: f64,
    pub requests_per_s: f64,
    pub ttft_p50_s: f64,
    pub ttft_p99_s: f64,
    pub tpot_p50_s: f64,
    pub tpot_p99_s: f64,
    /// In [0, 1]; NaN when no SLO is set.
    pub slo: f64,
    pub queued: u64,
    pub running: u64,
}

impl Sample {
    fn of(ts: f64, s: &proto::Serving) -> Self {
        Self {
            ts,
            tokens_per_s: s.tokens_per_s,
            requests_per_s: s.requests_per_s,
            ttft_p50_s: s.ttft_p50_s,
            ttft_p99_s: s.ttft_p99_s,
            tpot_p50_s: s.tpot_p50_s,
            tpot_p99_s: s.tpot_p99_s,
            slo: s.slo_attainment.unwrap_or(f64::NAN),
            queued: s.queued,
            running: s.running,
        }
    }
}

/// One node as the console sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// What the operator gave (`unix:…`, `http://…`, `ssh://…`, or "embedded").
    pub addr: String,
    /// A label the operator gave (inventory `name`), shown instead of the hostname.
    pub label: Option<String>,
    pub link: Link,
    pub snap: Option<proto::Snapshot>,
    pub history: VecDeque<Sample>,
    /// Updates received (snapshots and deltas).
    pub updates: u64,
}

impl NodeView {
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            label: None,
            link: Link::Connecting,
            snap: None,
            history: VecDeque::new(),
            updates: 0,
        }
    }

    /// The node's name: the operator's label, else its hostname once known, else the address.
    pub fn name(&self) -> &str {
        if let Some(l) = &self.label {
            return l;
        }
        self.snap
            .as_ref()
            .and_then(|s| s.node.as_ref())
            .map(|n| n.hostname.as_str())
            .filter(|h| !h.is_empty())
            .unwrap_or(&self.addr)
    }

    pub fn stale(&self) -> bool {
        !matches!(self.link, Link::Live)
    }

    /// The active instance, if any.
    pub fn active(&self) -> Option<&proto::Instance> {
        self.snap
            .as_ref()?
            .instances
            .iter()
            .find(|i| i.state == "active")
    }

    /// The operation still running (not done, failed or cancelled).
    pub fn running_op(&self) -> Option<&proto::Operation> {
        self.snap
            .as_ref()?
            .operations
            .iter()
            .rev()
            .find(|o| !matches!(o.phase.as_str(), "done" | "failed" | "cancelled"))
    }

    /// Apply one streamed update. A delta without a base snapshot is ignored (the agent sends a
    /// snapshot first on every connection).
    pub fn apply(&mut self, u: &proto::WatchUpdate) {
        match &u.body {
            Some(Body::Snapshot(s)) => {
                let mut s = s.clone();
                s.seq = u.seq;
                self.snap = Some(s);
            }
            Some(Body::Delta(d)) => {
                let Some(s) = self.snap.as_mut() else { return };
                apply_delta(s, u.seq, d);
            }
            None => return,
        }
        self.updates += 1;
        self.link = Link::Live;
        if let Some(s) = &self.snap
            && let Some(sv) = &s.serving
        {
            let sample = Sample::of(s.ts, sv);
            if self.history.back().map(|b| b.ts) != Some(s.ts) {
                if self.history.len() == HISTORY {
                    self.history.pop_front();
                }
                self.history.push_back(sample);
            }
        }
    }
}

/// Every node the console watches.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub nodes: Vec<NodeView>,
}

impl Cluster {
    pub fn devices(&self) -> usize {
        self.nodes
            .iter()
            .filter_map(|n| n.snap.as_ref())
            .map(|s| s.devices.len())
            .sum()
    }
}

/// `layer`/`expert` of a migration's `what` ("expert 3/17"), or the layer of a non-expert pack
/// ("layer 3").
pub fn migration_target(what: &str) -> (Option<u32>, Option<u32>) {
    if let Some(rest) = what.strip_prefix("expert ") {
        let mut it = rest.split('/');
        let l = it.next().and_then(|x| x.parse().ok());
        let e = it.next().and_then(|x| x.parse().ok());
        return (l, e);
    }
    if let Some(rest) = what.strip_prefix("layer ") {
        return (rest.parse().ok(), None);
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_targets() {
        assert_eq!(migration_target("expert 3/17"), (Some(3), Some(17)));
        assert_eq!(migration_target("layer 2"), (Some(2), None));
        assert_eq!(migration_target("globals"), (None, None));
    }

    #[test]
    fn deltas_apply_over_the_snapshot_and_feed_history() {
        let mut n = NodeView::new("unix:/x");
        let d = proto::WatchUpdate {
            seq: 1,
            body: Some(Body::Delta(proto::Delta::default())),
        };
        n.apply(&d);
        assert!(n.snap.is_none(), "a delta before a snapshot is ignored");
        let s = proto::Snapshot {
            serving: Some(proto::Serving {
                tokens_per_s: 10.0,
                ..Default::default()
            }),
            ts: 1.0,
            ..Default::default()
        };
        n.apply(&proto::WatchUpdate {
            seq: 5,
            body: Some(Body::Snapshot(s)),
        });
        assert_eq!(n.link, Link::Live);
        let d = proto::Delta {
            ts: 2.0,
            serving: Some(proto::Serving {
                tokens_per_s: 20.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        n.apply(&proto::WatchUpdate {
            seq: 6,
            body: Some(Body::Delta(d)),
        });
        assert_eq!(n.snap.as_ref().unwrap().seq, 6);
        let tps: Vec<f64> = n.history.iter().map(|s| s.tokens_per_s).collect();
        assert_eq!(tps, vec![10.0, 20.0]);
    }
}
