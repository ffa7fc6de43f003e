//! Link topology between devices: intra-node or inter-node links with a bandwidth each.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::device::DeviceId;

/// The kind of link between two devices.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// Both devices sit on the same node.
    IntraNode,
    /// The devices sit on different nodes.
    InterNode,
}

/// Bandwidths (bytes/s) between devices. The caller measures them; the planner only reads them.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct Topology {
    /// Bandwidth of every intra-node link without an override.
    pub intra_bw: f64,
    /// Bandwidth of every inter-node link without an override.
    pub inter_bw: f64,
    /// Per-link overrides, keyed `(src, dst)`.
    pub links: BTreeMap<(DeviceId, DeviceId), f64>,
}

impl Topology {
    /// Every intra-node link at `intra_bw`, every inter-node link at `inter_bw` (bytes/s).
    pub fn uniform(intra_bw: f64, inter_bw: f64) -> Self {
        Self {
            intra_bw,
            inter_bw,
            links: BTreeMap::new(),
        }
    }

    /// Override the bandwidth of the directed link `src → dst`.
    #[must_use]
    pub fn with_link(mut self, src: DeviceId, dst: DeviceId, bw: f64) -> Self {
        self.links.insert((src, dst), bw);
        self
    }

    /// Whether `src → dst` stays inside a node.
    pub fn link(&self, src: DeviceId, dst: DeviceId) -> LinkKind {
        if src.node == dst.node {
            LinkKind::IntraNode
        } else {
            LinkKind::InterNode
        }
    }

    /// Bandwidth of `src → dst` in bytes/s.
    pub fn bandwidth(&self, src: DeviceId, dst: DeviceId) -> f64 {
        if let Some(bw) = self.links.get(&(src, dst)) {
            return *bw;
        }
        match self.link(src, dst) {
            LinkKind::IntraNode => self.intra_bw,
            LinkKind::InterNode => self.inter_bw,
        }
    }
}
