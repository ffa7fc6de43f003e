//! The node's memory state as data: one JSON object for scripts, a table for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytesize::ByteSize;
use serde::Serialize;

use emoe_core::DeviceId;
use emoe_core::deploy::LoadStats;
use emoe_core::hmm::{Hmm, RegionKind};

use crate::cluster::Node;

/// `emoe-agent inspect --json`.
#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    pub backend: String,
    /// True on the modeled backend: sizes are accounted, no bytes exist.
    pub modeled: bool,
    pub model: String,
    /// Family, attention kind, routing rule and dtype of the model served.
    pub model_summary: emoe_core::model::ModelSummary,
    pub config: String,
    /// The checkpoint directory the weights came from, when any.
    pub checkpoint: Option<String>,
    /// The dtypes its files store, per tensor count (absent without a checkpoint).
    pub checkpoint_dtypes: Option<emoe_core::checkpoint::StoredDtypes>,
    /// What the engine computes from: every weight widened per use to f32 from this dtype.
    pub served_dtype: &'static str,
    pub load: LoadStats,
    pub devices: Vec<DeviceReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    pub id: DeviceId,
    pub name: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub peak_bytes: u64,
    pub granularity_bytes: u64,
    /// TP and DP rank in the loaded config; absent for devices the config does not use.
    pub tp_rank: Option<u32>,
    pub dp_rank: Option<u32>,
    /// Physical allocations in the device's linear memory, by offset.
    pub regions: Vec<RegionReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RegionReport {
    pub kind: RegionKind,
    pub layer: Option<u32>,
    pub expert: Option<u32>,
    pub offset: u64,
    pub size: u64,
    /// Names of the views that map this allocation (zero-copy sharing shows as several).
    pub views: Vec<String>,
    pub alloc: String,
}

impl InspectReport {
    pub fn of(node: &Node) -> Self {
        let hmm = &node.hmm;
        let d = &node.deployment;
        let ranks: BTreeMap<DeviceId, (u32, u32)> = d
            .devices
            .iter()
            .map(|r| (r.device, (r.tp_rank, r.dp_rank)))
            .collect();
        let devices = hmm
            .devices()
            .iter()
            .map(|info| {
                let usage = hmm.usage(info.id).unwrap_or_default();
                let rank = ranks.get(&info.id);
                DeviceReport {
                    id: info.id,
                    name: info.name.clone(),
                    capacity_bytes: usage.capacity,
                    used_bytes: usage.used,
                    free_bytes: usage.free,
                    peak_bytes: usage.peak,
                    granularity_bytes: info.granularity,
                    tp_rank: rank.map(|r| r.0),
                    dp_rank: rank.map(|r| r.1),
                    regions: regions(hmm, info.id),
                }
            })
            .collect();
        Self {
            backend: node.backend_kind().to_string(),
            modeled: !hmm.backend().holds_bytes(),
            model: d.model.name.clone(),
            model_summary: emoe_core::model::ModelSummary::of(&d.model),
            config: d.config.to_string(),
            checkpoint: node
                .checkpoint
                .as_ref()
                .map(|c| c.dir().display().to_string()),
            checkpoint_dtypes: node.checkpoint.as_ref().map(|c| c.stored_dtypes()),
            served_dtype: d.model.dtype.name(),
            load: d.stats,
            devices,
        }
    }

    /// A table for people: one line per device, bytes by region kind.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let label = if self.modeled {
            " (modeled: no bytes)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "{} on {} backend{label}, config {}",
            self.model, self.backend, self.config
        );
        if let Some(c) = &self.checkpoint {
            let _ = writeln!(s, "checkpoint {c}");
        }
        let m = &self.model_summary;
        let _ = writeln!(
            s,
            "{}: {}; {} dense + {} MoE layers; routing {}",
            m.family, m.attention_detail, m.dense_layers, m.moe_layers, m.routing
        );
        let stored = self
            .checkpoint_dtypes
            .as_ref()
            .map_or_else(String::new, |d| {
                let t: Vec<String> = d.tensors.iter().map(|(k, n)| format!("{n} {k}")).collect();
                let narrowed = if d.narrowed_exactly > 0 {
                    format!(
                        "; {} F32 hold bf16 values and are served as bf16",
                        d.narrowed_exactly
                    )
                } else {
                    String::new()
                };
                format!(" (stored: {} tensors{narrowed})", t.join(" + "))
            });
        let _ = writeln!(s, "weights {} computed in f32{stored}", self.served_dtype);
        let _ = writeln!(
            s,
            "loaded: {} from disk, {} device-to-device, {} allocated",
            ByteSize(self.load.disk_bytes).display().iec(),
            ByteSize(self.load.p2p_bytes).display().iec(),
            ByteSize(self.load.allocated_bytes).display().iec()
        );
        let _ = writeln!(
            s,
            "{:<7} {:>5} {:>11} {:>11} {:>11} {:>11} {:>11} {:>8}",
            "device", "rank", "capacity", "used", "peak", "non-expert", "experts", "kv"
        );
        for d in &self.devices {
            let mut by_kind = BTreeMap::new();
            let mut experts = 0;
            for r in &d.regions {
                *by_kind.entry(r.kind).or_insert(0u64) += r.size;
                experts += u32::from(r.kind == RegionKind::Expert);
            }
            let b = |k| {
                ByteSize(*by_kind.get(&k).unwrap_or(&0))
                    .display()
                    .iec()
                    .to_string()
            };
            let rank = match (d.dp_rank, d.tp_rank) {
                (Some(dp), Some(tp)) => format!("{dp}.{tp}"),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "{:<7} {:>5} {:>11} {:>11} {:>11} {:>11} {:>11} {:>8}",
                d.id.to_string(),
                rank,
                ByteSize(d.capacity_bytes).display().iec().to_string(),
                ByteSize(d.used_bytes).display().iec().to_string(),
                ByteSize(d.peak_bytes).display().iec().to_string(),
                b(RegionKind::NonExpert),
                format!("{experts}×"),
                b(RegionKind::Kv),
            );
        }
        s
    }
}

fn regions(hmm: &Hmm, dev: DeviceId) -> Vec<RegionReport> {
    hmm.allocations(dev)
        .map(|a| RegionReport {
            kind: a.tag.kind,
            layer: a.tag.layer,
            expert: a.tag.expert,
            offset: a.offset(),
            size: a.size,
            views: hmm
                .views_of(a.id)
                .into_iter()
                .filter_map(|v| hmm.view(v).map(|v| v.name.clone()))
                .collect(),
            alloc: a.id.to_string(),
        })
        .collect()
}
