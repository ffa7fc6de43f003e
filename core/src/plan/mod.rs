//! The scaling planner: from the current deployment and a target config, the list of steps that
//! reach it with the least data movement, with predicted per-device peak memory and time.
//!
//! Pure and synchronous: no I/O, no clocks. TP is fixed; DP and EP change.
//!
//! - Kept devices reuse their non-expert weights and KV cache by zero-copy.
//! - A new device at TP rank `t` gets every non-expert pack of shard `t` by P2P from a device of
//!   the current config holding rank `t` (kept ones preferred), each pack from the holder that has
//!   served the fewest bytes so far; it gets a fresh KV allocation.
//! - Experts follow the target placement ([`experts`]): each move is a P2P copy into a new
//!   allocation plus a remap of the destination's slot; sources are freed after the switchover,
//!   removed devices released after it.

pub mod error;
pub mod experts;
pub mod topology;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::deploy::Placement;
use crate::device::DeviceId;
use crate::model::{ModelSpec, PackKey};
use crate::parallel::ParallelConfig;

pub use error::PlanError;
pub use topology::{LinkKind, Topology};

/// One device of the pool as the HMM sees it now.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct DeviceState {
    pub id: DeviceId,
    pub capacity: u64,
    pub used: u64,
    /// Allocation granularity: every allocation is rounded up to a multiple of it.
    pub granularity: u64,
}

/// How the target expert placement is chosen.
#[derive(Clone, PartialEq, Debug, Default, Serialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum Policy {
    /// Even expert counts, fewest moves.
    #[default]
    Balanced,
    /// Balanced, then up to `replicas` redundant copies of hot experts per layer.
    LoadAware {
        /// Per MoE layer, the load of each expert (e.g. router token counts).
        load: BTreeMap<u32, Vec<f64>>,
        replicas: u32,
    },
}

/// What the planner needs to know about the current state and the target.
#[derive(Clone, Debug)]
pub struct PlanInput<'a> {
    pub model: &'a ModelSpec,
    pub from: ParallelConfig,
    /// The current devices in config order (device `i` has TP rank `from.tp_rank(i)`).
    pub from_devices: &'a [DeviceId],
    pub placement: &'a Placement,
    /// Every device on the node(s).
    pub pool: &'a [DeviceState],
    pub to: ParallelConfig,
    /// The target devices in config order; `None` picks them (see [`plan`]).
    pub to_devices: Option<Vec<DeviceId>>,
    pub policy: Policy,
    pub operation_running: bool,
    /// Tokens of KV cache per device (a new device gets a fresh allocation of this size).
    pub kv_tokens: u64,
    pub topology: &'a Topology,
}

/// What a step does.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum StepKind {
    /// A kept device's non-expert weights and KV cache enter the new instance by zero-copy.
    ZeroCopy { device: DeviceId },
    /// P2P copy of one non-expert pack into a new allocation on `dst`.
    CopyPack {
        pack: PackKey,
        src: DeviceId,
        dst: DeviceId,
    },
    /// A fresh KV cache allocation on a new device.
    AllocKv { device: DeviceId },
    /// P2P copy of one expert into a new allocation on `dst` (a replica when `src` keeps it).
    MoveExpert {
        layer: u32,
        expert: u32,
        src: DeviceId,
        dst: DeviceId,
    },
    /// Map the copied expert into slot `slot` of `device`'s expert range for `layer`.
    Remap {
        device: DeviceId,
        layer: u32,
        slot: u32,
    },
    /// Traffic moves to the new instance.
    Switchover,
    /// Free an expert a kept device no longer holds.
    FreeExpert {
        device: DeviceId,
        layer: u32,
        expert: u32,
    },
    /// Free everything on a device that leaves the instance.
    ReleaseDevice { device: DeviceId },
}

/// One step of a plan: `deps` are ids of steps that must finish first.
#[derive(Clone, PartialEq, Eq, Debug, Serialize)]
pub struct Step {
    pub id: usize,
    pub kind: StepKind,
    pub bytes: u64,
    pub deps: Vec<usize>,
}

/// A scaling plan: data the console previews, the CLI prints and the executor runs.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct Plan {
    pub from: ParallelConfig,
    pub to: ParallelConfig,
    pub devices: Vec<DeviceId>,
    pub devices_added: Vec<DeviceId>,
    pub devices_removed: Vec<DeviceId>,
    pub zero_copy_bytes: u64,
    pub p2p_bytes: u64,
    pub experts_moved: u64,
    /// Used now plus everything allocated before the switchover, granule-rounded.
    pub predicted_peak_bytes: BTreeMap<DeviceId, u64>,
    /// Max over links of bytes/bandwidth (copies serial per link, parallel across links).
    pub predicted_seconds: f64,
    pub target_placement: Placement,
    pub steps: Vec<Step>,
}

impl Plan {
    /// Whether the plan does nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

fn push(steps: &mut Vec<Step>, kind: StepKind, bytes: u64, deps: Vec<usize>) -> usize {
    let id = steps.len();
    steps.push(Step {
        id,
        kind,
        bytes,
        deps,
    });
    id
}

fn overflow(what: &'static str) -> PlanError {
    PlanError::Overflow { what }
}

fn round_up(bytes: u64, granule: u64) -> Result<u64, PlanError> {
    bytes
        .checked_next_multiple_of(granule.max(1))
        .ok_or(overflow("a granule-rounded size"))
}

/// Check the input and resolve the target devices. Nothing is computed before this passes.
fn validate(input: &PlanInput<'_>) -> Result<Vec<DeviceId>, PlanError> {
    if input.operation_running {
        return Err(PlanError::OperationRunning);
    }
    let (from, to) = (input.from, input.to);
    if from.tp() != to.tp() {
        return Err(PlanError::TpChanged {
            from: from.tp(),
            to: to.tp(),
        });
    }
    if input.from_devices.len() != from.devices() as usize {
        return Err(PlanError::FromDeviceCount {
            config: from,
            need: from.devices(),
            got: input.from_devices.len(),
        });
    }
    if let Some(t) = &input.to_devices
        && t.len() != to.devices() as usize
    {
        return Err(PlanError::ToDeviceCount {
            config: to,
            need: to.devices(),
            got: t.len(),
        });
    }
    let lists = [Some(input.from_devices), input.to_devices.as_deref()];
    for list in lists.into_iter().flatten() {
        let mut seen = BTreeSet::new();
        for d in list {
            if !seen.insert(*d) {
                return Err(PlanError::DuplicateDevice { device: *d });
            }
        }
    }
    let pool: BTreeSet<DeviceId> = input.pool.iter().map(|s| s.id).collect();
    for list in lists.into_iter().flatten() {
        if let Some(d) = list.iter().find(|d| !pool.contains(d)) {
            return Err(PlanError::UnknownDevice { device: *d });
        }
    }
    let to_devices = match &input.to_devices {
        Some(t) => t.clone(),
        None if to.devices() >= from.devices() => {
            let need = to.devices() - from.devices();
            let free: Vec<DeviceId> = pool
                .iter()
                .filter(|d| !input.from_devices.contains(d))
                .copied()
                .collect();
            if (free.len() as u64) < u64::from(need) {
                return Err(PlanError::NotEnoughDevices {
                    need,
                    free: u32::try_from(free.len()).unwrap_or(u32::MAX),
                });
            }
            let mut t = input.from_devices.to_vec();
            t.extend(free.into_iter().take(need as usize));
            t
        }
        None => input.from_devices[..to.devices() as usize].to_vec(),
    };
    for (j, d) in input.from_devices.iter().enumerate() {
        if let Some(i) = to_devices.iter().position(|x| x == d) {
            let (a, b) = (from.tp_rank(j as u32), to.tp_rank(i as u32));
            if a != b {
                return Err(PlanError::TpRankChanged {
                    device: *d,
                    from: a,
                    to: b,
                });
            }
        }
    }
    let e = input.model.num_routed_experts as usize;
    for l in input.model.moe_layers() {
        let bad = |reason: String| PlanError::InvalidPlacement { reason };
        let experts = input
            .placement
            .layers
            .get(&l)
            .ok_or_else(|| bad(format!("MoE layer {l} is missing")))?;
        if experts.len() != e {
            return Err(bad(format!(
                "layer {l} lists {} experts, the model has {e}",
                experts.len()
            )));
        }
        for (x, holders) in experts.iter().enumerate() {
            if holders.is_empty() {
                return Err(bad(format!("expert {x} of layer {l} has no holder")));
            }
            if let Some(h) = holders.iter().find(|h| !input.from_devices.contains(h)) {
                return Err(bad(format!(
                    "expert {x} of layer {l} is on {h}, not a current device"
                )));
            }
        }
    }
    if let Policy::LoadAware { load, .. } = &input.policy {
        for (l, v) in load {
            if input.model.is_moe_layer(*l) && v.len() != e {
                return Err(PlanError::LoadLength {
                    layer: *l,
                    expected: input.model.num_routed_experts,
                    got: v.len(),
                });
            }
        }
    }
    Ok(to_devices)
}

/// The target expert placement of every MoE layer.
fn target_placement(
    input: &PlanInput<'_>,
    to_devices: &[DeviceId],
    is_new: impl Fn(DeviceId) -> bool + Copy,
) -> Placement {
    let e = input.model.num_routed_experts as usize;
    let n = to_devices.len().max(1);
    let layers = input
        .placement
        .layers
        .iter()
        .filter(|(l, _)| input.model.is_moe_layer(**l))
        .map(|(l, current)| {
            let mut t = experts::balanced_layer(current, to_devices, is_new);
            if let Policy::LoadAware { load, replicas } = &input.policy
                && let Some(w) = load.get(l)
            {
                let room = (e + *replicas as usize).div_ceil(n);
                experts::add_replicas(&mut t, current, to_devices, w, *replicas, room);
            }
            (*l, t)
        })
        .collect();
    Placement { layers }
}

/// Plan scaling from `input.from` to `input.to`.
///
/// Without explicit `to_devices`, scale-up keeps `from_devices` and appends the lowest free
/// devices of the pool; scale-down keeps the first `to.devices()` of `from_devices`. The same
/// config on the same devices under [`Policy::Balanced`] gives an empty plan.
pub fn plan(input: &PlanInput<'_>) -> Result<Plan, PlanError> {
    let to_devices = validate(input)?;
    let states: BTreeMap<DeviceId, DeviceState> = input.pool.iter().map(|s| (s.id, *s)).collect();
    let from_set: BTreeSet<DeviceId> = input.from_devices.iter().copied().collect();
    let to_set: BTreeSet<DeviceId> = to_devices.iter().copied().collect();
    let added: Vec<DeviceId> = to_devices
        .iter()
        .filter(|d| !from_set.contains(d))
        .copied()
        .collect();
    let removed: Vec<DeviceId> = input
        .from_devices
        .iter()
        .filter(|d| !to_set.contains(d))
        .copied()
        .collect();
    let mut peak: BTreeMap<DeviceId, u64> = from_set
        .union(&to_set)
        .map(|d| (*d, states.get(d).map_or(0, |s| s.used)))
        .collect();
    if input.from == input.to
        && to_devices == input.from_devices
        && input.policy == Policy::Balanced
    {
        return Ok(Plan {
            from: input.from,
            to: input.to,
            devices: to_devices,
            devices_added: Vec::new(),
            devices_removed: Vec::new(),
            zero_copy_bytes: 0,
            p2p_bytes: 0,
            experts_moved: 0,
            predicted_peak_bytes: peak,
            predicted_seconds: 0.0,
            target_placement: input.placement.clone(),
            steps: Vec::new(),
        });
    }

    let model = input.model;
    let (from, to) = (input.from, input.to);
    let tp = to.tp();
    let packs: Vec<Vec<(PackKey, u64)>> = (0..tp)
        .map(|t| {
            model
                .non_expert_packs(tp, t)
                .into_iter()
                .map(|p| (p.key, p.bytes))
                .collect()
        })
        .collect();
    let kv_bytes = input
        .kv_tokens
        .checked_mul(model.kv_bytes_per_token_per_layer(tp))
        .and_then(|b| b.checked_mul(u64::from(model.num_layers)))
        .ok_or(overflow("KV bytes"))?;
    let expert_bytes = model.expert_bytes();
    let is_new = |d: DeviceId| !from_set.contains(&d);
    let target = target_placement(input, &to_devices, is_new);

    let mut steps: Vec<Step> = Vec::new();
    // Bytes pending per device before switchover and per link.
    let mut alloc: BTreeMap<DeviceId, u64> = BTreeMap::new();
    let mut link: BTreeMap<(DeviceId, DeviceId), u64> = BTreeMap::new();
    let add_alloc = |alloc: &mut BTreeMap<DeviceId, u64>, d: DeviceId, bytes: u64| {
        let g = states.get(&d).map_or(1, |s| s.granularity);
        let r = round_up(bytes, g)?;
        let slot = alloc.entry(d).or_default();
        *slot = slot.checked_add(r).ok_or(overflow("allocated bytes"))?;
        Ok::<(), PlanError>(())
    };
    let add_link = |link: &mut BTreeMap<(DeviceId, DeviceId), u64>, s, d, bytes: u64| {
        let slot = link.entry((s, d)).or_default();
        *slot = slot.saturating_add(bytes);
    };

    // 1. Zero-copy on kept devices.
    let mut zero_copy_bytes = 0u64;
    for (i, d) in to_devices.iter().enumerate() {
        if is_new(*d) {
            continue;
        }
        let t = to.tp_rank(i as u32) as usize;
        let bytes = packs[t]
            .iter()
            .map(|p| p.1)
            .sum::<u64>()
            .saturating_add(kv_bytes);
        zero_copy_bytes = zero_copy_bytes.saturating_add(bytes);
        push(
            &mut steps,
            StepKind::ZeroCopy { device: *d },
            bytes,
            Vec::new(),
        );
    }

    // 2. Non-expert shards and KV on new devices.
    let mut served: BTreeMap<DeviceId, u64> = BTreeMap::new();
    let mut p2p_bytes = 0u64;
    for (i, d) in to_devices.iter().enumerate() {
        if !is_new(*d) {
            continue;
        }
        let t = to.tp_rank(i as u32);
        let holders: Vec<DeviceId> = input
            .from_devices
            .iter()
            .enumerate()
            .filter(|(j, _)| from.tp_rank(*j as u32) == t)
            .map(|(_, h)| *h)
            .collect();
        let kept: Vec<DeviceId> = holders
            .iter()
            .filter(|h| to_set.contains(h))
            .copied()
            .collect();
        let sources = if kept.is_empty() { holders } else { kept };
        for (key, bytes) in &packs[t as usize] {
            let Some(src) = sources
                .iter()
                .min_by_key(|s| (served.get(s).copied().unwrap_or(0), **s))
                .copied()
            else {
                continue;
            };
            *served.entry(src).or_default() += bytes;
            add_alloc(&mut alloc, *d, *bytes)?;
            add_link(&mut link, src, *d, *bytes);
            p2p_bytes = p2p_bytes.saturating_add(*bytes);
            push(
                &mut steps,
                StepKind::CopyPack {
                    pack: *key,
                    src,
                    dst: *d,
                },
                *bytes,
                Vec::new(),
            );
        }
        add_alloc(&mut alloc, *d, kv_bytes)?;
        push(
            &mut steps,
            StepKind::AllocKv { device: *d },
            kv_bytes,
            Vec::new(),
        );
    }

    // 3. Experts.
    let mut experts_moved = 0u64;
    let mut frees: Vec<(DeviceId, u32, u32)> = Vec::new();
    for (l, experts) in &target.layers {
        let Some(current) = input.placement.layers.get(l) else {
            continue;
        };
        let mut slots: BTreeMap<DeviceId, Vec<u32>> = BTreeMap::new();
        for (x, holders) in experts.iter().enumerate() {
            for h in holders {
                slots.entry(*h).or_default().push(x as u32);
            }
        }
        for (x, holders) in experts.iter().enumerate() {
            let cur = current.get(x).map_or(&[][..], Vec::as_slice);
            for dst in holders.iter().filter(|h| !cur.contains(h)) {
                let Some(src) = cur
                    .iter()
                    .min_by_key(|s| (link.get(&(**s, *dst)).copied().unwrap_or(0), **s))
                    .copied()
                else {
                    continue;
                };
                add_alloc(&mut alloc, *dst, expert_bytes)?;
                add_link(&mut link, src, *dst, expert_bytes);
                p2p_bytes = p2p_bytes.saturating_add(expert_bytes);
                experts_moved += 1;
                let m = push(
                    &mut steps,
                    StepKind::MoveExpert {
                        layer: *l,
                        expert: x as u32,
                        src,
                        dst: *dst,
                    },
                    expert_bytes,
                    Vec::new(),
                );
                let slot = slots
                    .get(dst)
                    .and_then(|v| v.iter().position(|e| *e == x as u32))
                    .unwrap_or(0) as u32;
                push(
                    &mut steps,
                    StepKind::Remap {
                        device: *dst,
                        layer: *l,
                        slot,
                    },
                    0,
                    vec![m],
                );
            }
            for h in cur
                .iter()
                .filter(|h| !holders.contains(h) && to_set.contains(h))
            {
                frees.push((*h, *l, x as u32));
            }
        }
    }

    // 4. Switchover, then frees and releases.
    let before: Vec<usize> = (0..steps.len()).collect();
    let sw = push(&mut steps, StepKind::Switchover, 0, before);
    for (device, layer, expert) in frees {
        push(
            &mut steps,
            StepKind::FreeExpert {
                device,
                layer,
                expert,
            },
            expert_bytes,
            vec![sw],
        );
    }
    for d in &removed {
        let used = states.get(d).map_or(0, |s| s.used);
        push(
            &mut steps,
            StepKind::ReleaseDevice { device: *d },
            used,
            vec![sw],
        );
    }

    // 5. Memory and time.
    for (d, bytes) in &alloc {
        let used = states.get(d).map_or(0, |s| s.used);
        let cap = states.get(d).map_or(0, |s| s.capacity);
        let need = used.checked_add(*bytes).ok_or(overflow("peak bytes"))?;
        if need > cap {
            return Err(PlanError::NotEnoughMemory {
                device: *d,
                need: *bytes,
                have: cap.saturating_sub(used),
                peak: need,
                capacity: cap,
            });
        }
        peak.insert(*d, need);
    }
    let mut seconds = 0.0f64;
    for ((s, d), bytes) in &link {
        let bw = input.topology.bandwidth(*s, *d);
        if !(bw.is_finite() && bw > 0.0) {
            return Err(PlanError::InvalidBandwidth {
                src: *s,
                dst: *d,
                bandwidth: bw,
            });
        }
        seconds = seconds.max(*bytes as f64 / bw);
    }

    Ok(Plan {
        from,
        to,
        devices: to_devices,
        devices_added: added,
        devices_removed: removed,
        zero_copy_bytes,
        p2p_bytes,
        experts_moved,
        predicted_peak_bytes: peak,
        predicted_seconds: seconds,
        target_placement: target,
        steps,
    })
}

/// Run the load-aware policy at fixed degrees: the current config and devices, up to `replicas`
/// redundant copies of hot experts per layer.
pub fn rebalance(
    input: &PlanInput<'_>,
    load: BTreeMap<u32, Vec<f64>>,
    replicas: u32,
) -> Result<Plan, PlanError> {
    let mut i = input.clone();
    i.to = input.from;
    i.to_devices = Some(input.from_devices.to_vec());
    i.policy = Policy::LoadAware { load, replicas };
    plan(&i)
}
