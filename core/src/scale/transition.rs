//! A scaling transition on the HMM: the new instance's view built beside the old one.
//!
//! [`Transition::prepare`] checks the plan against the deployment and the free memory, then
//! creates the target view: kept devices map their non-expert weights, KV cache and kept experts
//! into it (zero-copy), and every byte that must move gets a fresh allocation and a [`CopyJob`].
//! Jobs only read and write device memory, so they take `&Hmm` and may run on many threads while
//! the old instance keeps serving; [`Transition::commit`] then remaps the copied experts into
//! their slots and yields the new [`Deployment`]. Until then [`Transition::rollback`] undoes
//! everything and the old deployment never changed. After the switchover,
//! [`Deployment::unload`] of the old deployment frees exactly what the new one no longer maps.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use super::error::ScaleError;
use crate::checkpoint::Checkpoint;
use crate::deploy::{DeployOptions, Deployment, DeviceRegions, ExpertSlots, LoadStats, Placement};
use crate::device::DeviceId;
use crate::hmm::{AllocId, Hmm, RegionTag, ReservationId, ViewId};
use crate::model::{ModelSpec, Pack, PackKey};
use crate::parallel::ParallelConfig;
use crate::plan::{Plan, StepKind};

/// Where moved bytes come from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Device to device from a holder (the paper's HCCL P2P).
    #[default]
    P2p,
    /// Read again from the checkpoint on disk (the "without P2P" ablation).
    Disk,
}

/// How a device's expert range changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpertMode {
    /// Kept experts stay mapped; only incoming ones are allocated, then remapped into their slot
    /// (vpage-remap: the peak is the final footprint).
    #[default]
    Remap,
    /// Every expert of a changed layer gets a new allocation and a copy, the old ones are freed
    /// after the switchover (realloc-and-copy: the expert memory doubles at the peak).
    Realloc,
}

/// Knobs of a transition (the defaults are ElasticMoE; the others are ablations and baselines).
#[derive(Clone, Debug)]
pub struct TransitionOptions {
    /// Kept devices map their non-expert weights and KV cache into the new view. Off, they get
    /// fresh allocations filled by local copies.
    pub zero_copy: bool,
    pub source: Source,
    pub experts: ExpertMode,
    /// Build the target as a fresh load beside the old instance: every allocation new, every
    /// byte read from the checkpoint, nothing shared (the colocated, extravagant and horizontal
    /// baselines, run in the same executor). Overrides the three options above.
    pub cold: bool,
    /// Check every copied allocation against the checksum taken at load.
    pub verify: bool,
    /// Name of the new view (the target config is appended).
    pub view_name: String,
}

impl Default for TransitionOptions {
    fn default() -> Self {
        Self {
            zero_copy: true,
            source: Source::P2p,
            experts: ExpertMode::Remap,
            cold: false,
            verify: true,
            view_name: DeployOptions::default().view_name,
        }
    }
}

/// Where a copy job reads from.
#[derive(Clone, Debug)]
pub enum JobSource {
    /// An allocation of the old deployment (on `src_device`).
    Alloc(AllocId),
    /// The checkpoint, this pack.
    Disk(Box<Pack>),
}

/// One copy into a fresh allocation of the new instance.
#[derive(Clone, Debug)]
pub struct CopyJob {
    /// The plan step this job carries out (`None` for ablation and realloc copies the plan does
    /// not list).
    pub step: Option<usize>,
    pub what: PackKey,
    /// TP rank of the content (0 for experts): with `what`, the checksum key.
    pub rank: u32,
    /// `None` when reading from disk.
    pub src_device: Option<DeviceId>,
    pub src: JobSource,
    pub dst_device: DeviceId,
    pub dst: AllocId,
    pub bytes: u64,
}

impl CopyJob {
    /// The link the copy uses: `(source device or disk, destination)`.
    pub fn link(&self) -> (Option<DeviceId>, DeviceId) {
        (self.src_device, self.dst_device)
    }

    /// Whether the bytes cross from one device to another.
    pub fn is_p2p(&self) -> bool {
        self.src_device.is_some_and(|s| s != self.dst_device)
    }
}

/// What a transition moves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TransitionStats {
    /// Bytes the new instance reuses in place (kept devices' weights, KV and experts).
    pub zero_copy_bytes: u64,
    /// Bytes copied device to device.
    pub p2p_bytes: u64,
    /// Bytes copied within a device (realloc and no-zero-copy modes).
    pub local_bytes: u64,
    /// Bytes read from the checkpoint.
    pub disk_bytes: u64,
    /// Bytes newly allocated (granule-rounded), all devices.
    pub allocated_bytes: u64,
    pub jobs: usize,
}

impl TransitionStats {
    /// Bytes that had to move: P2P, local copies and disk reads.
    pub fn moved_bytes(&self) -> u64 {
        self.p2p_bytes + self.local_bytes + self.disk_bytes
    }
}

/// A prepared transition: the new view exists, the copies are listed, nothing is switched.
#[derive(Debug)]
pub struct Transition {
    model: ModelSpec,
    from: ParallelConfig,
    to: ParallelConfig,
    view: ViewId,
    regions: Vec<DeviceRegions>,
    placement: Placement,
    checksums: BTreeMap<(PackKey, u32), u64>,
    new_allocs: Vec<AllocId>,
    jobs: Vec<CopyJob>,
    done: Vec<AtomicBool>,
    /// Slot maps that wait for their copy: `(reservation, slot, allocation, remap step)`.
    remaps: Vec<(ReservationId, usize, AllocId, Option<usize>)>,
    verify: bool,
    stats: TransitionStats,
}

/// What the old deployment holds, indexed for the lookups a transition makes.
struct OldState<'d> {
    regions: BTreeMap<DeviceId, &'d DeviceRegions>,
}

impl<'d> OldState<'d> {
    fn new(dep: &'d Deployment) -> Self {
        Self {
            regions: dep.devices.iter().map(|r| (r.device, r)).collect(),
        }
    }

    fn pack_alloc(&self, device: DeviceId, key: PackKey) -> Option<AllocId> {
        self.regions
            .get(&device)?
            .non_expert_allocs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, a)| *a)
    }

    fn expert_alloc(&self, device: DeviceId, layer: u32, expert: u32) -> Option<AllocId> {
        self.regions
            .get(&device)?
            .experts
            .get(&layer)?
            .slots
            .iter()
            .flatten()
            .find(|(x, _)| *x == expert)
            .map(|(_, a)| *a)
    }

    fn experts_on(&self, device: DeviceId, layer: u32) -> BTreeSet<u32> {
        self.regions
            .get(&device)
            .and_then(|r| r.experts.get(&layer))
            .map(|s| s.slots.iter().flatten().map(|(x, _)| *x).collect())
            .unwrap_or_default()
    }
}

fn mismatch(reason: impl Into<String>) -> ScaleError {
    ScaleError::PlanMismatch {
        reason: reason.into(),
    }
}

/// The plan's P2P sources and step ids, by destination.
#[derive(Default)]
struct PlanIndex {
    packs: BTreeMap<(DeviceId, PackKey), (DeviceId, usize)>,
    experts: BTreeMap<(DeviceId, u32, u32), (DeviceId, usize)>,
    remaps: BTreeMap<(DeviceId, u32, u32), usize>,
}

impl PlanIndex {
    fn new(plan: &Plan) -> Self {
        let mut ix = Self::default();
        for s in &plan.steps {
            match &s.kind {
                StepKind::CopyPack { pack, src, dst } => {
                    ix.packs.insert((*dst, *pack), (*src, s.id));
                }
                StepKind::MoveExpert {
                    layer,
                    expert,
                    src,
                    dst,
                } => {
                    ix.experts.insert((*dst, *layer, *expert), (*src, s.id));
                }
                StepKind::Remap {
                    device,
                    layer,
                    slot,
                } => {
                    ix.remaps.insert((*device, *layer, *slot), s.id);
                }
                _ => {}
            }
        }
        ix
    }
}

/// Check that `plan` was made for `dep`: same config, kept/added/removed devices consistent,
/// every target holder either holds the expert now or receives it from a current holder.
fn check_plan(
    dep: &Deployment,
    plan: &Plan,
    old: &OldState,
    ix: &PlanIndex,
) -> Result<(), ScaleError> {
    if plan.from != dep.config {
        return Err(mismatch(format!(
            "the plan starts from {}, the deployment runs {}",
            plan.from, dep.config
        )));
    }
    if plan.devices.len() != plan.to.devices() as usize {
        return Err(mismatch(format!(
            "target {} needs {} devices, the plan lists {}",
            plan.to,
            plan.to.devices(),
            plan.devices.len()
        )));
    }
    let current: BTreeSet<DeviceId> = dep.devices.iter().map(|r| r.device).collect();
    for d in &plan.devices_removed {
        if !current.contains(d) {
            return Err(mismatch(format!(
                "removes {d}, which the deployment does not use"
            )));
        }
    }
    for (i, d) in plan.devices.iter().enumerate() {
        let added = plan.devices_added.contains(d);
        if added == current.contains(d) {
            return Err(mismatch(format!(
                "{d} is {} the deployment but {} by the plan",
                if current.contains(d) { "in" } else { "not in" },
                if added { "added" } else { "kept" }
            )));
        }
        if let Some(r) = old.regions.get(d)
            && r.tp_rank != plan.to.tp_rank(i as u32)
        {
            return Err(mismatch(format!(
                "{d} holds TP rank {} but the plan gives it rank {}",
                r.tp_rank,
                plan.to.tp_rank(i as u32)
            )));
        }
    }
    let kept = plan.devices.len() - plan.devices_added.len();
    if kept + plan.devices_removed.len() != current.len() {
        return Err(mismatch(format!(
            "{kept} kept and {} removed devices do not add up to the {} in use",
            plan.devices_removed.len(),
            current.len()
        )));
    }
    for (l, experts) in &plan.target_placement.layers {
        if !dep.model.is_moe_layer(*l) {
            return Err(mismatch(format!("layer {l} is not a MoE layer")));
        }
        for (x, holders) in experts.iter().enumerate() {
            let x = x as u32;
            for h in holders {
                if !plan.devices.contains(h) {
                    return Err(mismatch(format!(
                        "expert {x} of layer {l} is placed on {h}, not a target device"
                    )));
                }
                if old.expert_alloc(*h, *l, x).is_some() {
                    continue;
                }
                match ix.experts.get(&(*h, *l, x)) {
                    Some((src, _)) if old.expert_alloc(*src, *l, x).is_some() => {}
                    Some((src, _)) => {
                        return Err(mismatch(format!(
                            "expert {x} of layer {l} moves from {src}, which does not hold it"
                        )));
                    }
                    None => {
                        return Err(mismatch(format!(
                            "expert {x} of layer {l} is placed on {h} but no step moves it there"
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// A new allocation the transition will make, before it is made.
struct Want {
    device: DeviceId,
    len: u64,
    tag: RegionTag,
    /// `None`: a fresh, zeroed KV allocation.
    fill: Option<(PackKey, u32, Option<usize>, JobFrom)>,
}

#[derive(Clone, Copy)]
enum JobFrom {
    Device(DeviceId, AllocId),
    Disk,
}

/// How each slot of the new view gets filled.
enum SlotPlan {
    Map(AllocId),
    New(usize),
}

/// One target device's slots: device, TP rank, DP rank, non-expert packs, KV, experts.
type Layout = (
    DeviceId,
    u32,
    u32,
    Vec<(PackKey, u64, SlotPlan)>,
    SlotPlan,
    BTreeMap<u32, Vec<(u32, SlotPlan, Option<usize>)>>,
);

/// Everything a transition decides before it touches the HMM.
struct Decided {
    wants: Vec<Want>,
    layouts: Vec<Layout>,
    stats: TransitionStats,
    base_slots: usize,
    packs: Vec<Vec<Pack>>,
    holds_bytes: bool,
}

/// Check `plan` against `dep`, decide every slot and check capacity per device: what
/// [`Transition::prepare`] does before its first allocation, with no side effect.
fn decide(
    hmm: &Hmm,
    dep: &Deployment,
    plan: &Plan,
    checkpoint: Option<&Checkpoint>,
    options: &TransitionOptions,
) -> Result<Decided, ScaleError> {
    let old = OldState::new(dep);
    let ix = PlanIndex::new(plan);
    check_plan(dep, plan, &old, &ix)?;
    let model = &dep.model;
    let to = plan.to;
    let tp = to.tp();
    let holds_bytes = hmm.backend().holds_bytes();
    let cold = options.cold;
    let disk = options.source == Source::Disk || cold;
    if disk && holds_bytes && checkpoint.is_none() {
        return Err(ScaleError::NoCheckpoint {
            what: PackKey::Globals,
        });
    }
    let from_dev = |src: DeviceId, a: AllocId| {
        if disk {
            JobFrom::Disk
        } else {
            JobFrom::Device(src, a)
        }
    };
    let kv_len = dep
        .devices
        .first()
        .and_then(|r| hmm.allocation(r.kv_alloc))
        .map_or(0, |a| a.len);
    let base_slots = dep
        .devices
        .first()
        .and_then(|r| r.experts.values().next())
        .map_or(0, |s| s.slots.len());
    let expert_bytes = model.expert_bytes();
    let packs: Vec<Vec<Pack>> = (0..tp).map(|r| model.non_expert_packs(tp, r)).collect();

    // Decide every slot before touching the HMM.
    let mut wants: Vec<Want> = Vec::new();
    let mut stats = TransitionStats::default();
    let mut layouts = Vec::with_capacity(plan.devices.len());
    for (i, &dev) in plan.devices.iter().enumerate() {
        let rank = to.tp_rank(i as u32);
        // A cold build sees every device as new and reads every byte from disk.
        let mine = old.regions.get(&dev).filter(|_| !cold);
        let mut non_expert = Vec::new();
        for p in &packs[rank as usize] {
            if cold {
                wants.push(Want {
                    device: dev,
                    len: p.bytes,
                    tag: RegionTag::non_expert(layer_of(p.key)),
                    fill: Some((p.key, rank, None, JobFrom::Disk)),
                });
                non_expert.push((p.key, p.bytes, SlotPlan::New(wants.len() - 1)));
                continue;
            }
            let slot = match mine.and_then(|_| old.pack_alloc(dev, p.key)) {
                Some(a) if options.zero_copy => {
                    stats.zero_copy_bytes += p.bytes;
                    SlotPlan::Map(a)
                }
                Some(a) => {
                    wants.push(Want {
                        device: dev,
                        len: p.bytes,
                        tag: RegionTag::non_expert(layer_of(p.key)),
                        fill: Some((p.key, rank, None, JobFrom::Device(dev, a))),
                    });
                    SlotPlan::New(wants.len() - 1)
                }
                None => {
                    let (src, step) = ix.packs.get(&(dev, p.key)).copied().ok_or_else(|| {
                        mismatch(format!("no step copies {:?} to new device {dev}", p.key))
                    })?;
                    let a = old.pack_alloc(src, p.key).ok_or_else(|| {
                        mismatch(format!(
                            "{:?} is copied from {src}, which does not hold it",
                            p.key
                        ))
                    })?;
                    wants.push(Want {
                        device: dev,
                        len: p.bytes,
                        tag: RegionTag::non_expert(layer_of(p.key)),
                        fill: Some((p.key, rank, Some(step), from_dev(src, a))),
                    });
                    SlotPlan::New(wants.len() - 1)
                }
            };
            non_expert.push((p.key, p.bytes, slot));
        }
        let kv = match mine {
            Some(r) if options.zero_copy => {
                stats.zero_copy_bytes += kv_len;
                SlotPlan::Map(r.kv_alloc)
            }
            _ => {
                wants.push(Want {
                    device: dev,
                    len: kv_len,
                    tag: RegionTag::kv(None),
                    fill: None,
                });
                SlotPlan::New(wants.len() - 1)
            }
        };
        let mut experts = BTreeMap::new();
        for &l in plan.target_placement.layers.keys() {
            let target = plan.target_placement.experts_on(l, dev);
            let now = old.experts_on(dev, l);
            let changed = target.iter().copied().collect::<BTreeSet<_>>() != now;
            let realloc = options.experts == ExpertMode::Realloc && changed;
            let mut slots = Vec::with_capacity(target.len());
            for (s, &x) in target.iter().enumerate() {
                let key = PackKey::Expert {
                    layer: l,
                    expert: x,
                };
                let remap = ix.remaps.get(&(dev, l, s as u32)).copied();
                if cold {
                    wants.push(Want {
                        device: dev,
                        len: expert_bytes,
                        tag: RegionTag::expert(l, x),
                        fill: Some((key, 0, None, JobFrom::Disk)),
                    });
                    slots.push((x, SlotPlan::New(wants.len() - 1), remap));
                    continue;
                }
                let slot = match old.expert_alloc(dev, l, x) {
                    Some(a) if !realloc => {
                        stats.zero_copy_bytes += expert_bytes;
                        SlotPlan::Map(a)
                    }
                    Some(a) => {
                        wants.push(Want {
                            device: dev,
                            len: expert_bytes,
                            tag: RegionTag::expert(l, x),
                            fill: Some((key, 0, remap, JobFrom::Device(dev, a))),
                        });
                        SlotPlan::New(wants.len() - 1)
                    }
                    None => {
                        // check_plan made sure the move and its source exist.
                        let (src, step) = ix.experts[&(dev, l, x)];
                        let a = old.expert_alloc(src, l, x).ok_or_else(|| {
                            mismatch(format!("expert {x} of layer {l} has no source"))
                        })?;
                        wants.push(Want {
                            device: dev,
                            len: expert_bytes,
                            tag: RegionTag::expert(l, x),
                            fill: Some((key, 0, Some(step), from_dev(src, a))),
                        });
                        SlotPlan::New(wants.len() - 1)
                    }
                };
                slots.push((x, slot, remap));
            }
            experts.insert(l, slots);
        }
        layouts.push((dev, rank, to.dp_rank(i as u32), non_expert, kv, experts));
    }

    // Capacity, per device, before the first allocation.
    let mut need: BTreeMap<DeviceId, u64> = BTreeMap::new();
    for w in &wants {
        let r = hmm.round_up(w.device, w.len)?;
        *need.entry(w.device).or_default() += r;
    }
    for (dev, n) in &need {
        let free = hmm.usage(*dev)?.free;
        if *n > free {
            return Err(ScaleError::NotEnoughMemory {
                device: *dev,
                need: *n,
                have: free,
            });
        }
        stats.allocated_bytes += n;
    }
    Ok(Decided {
        wants,
        layouts,
        stats,
        base_slots,
        packs,
        holds_bytes,
    })
}

impl Transition {
    /// Whether [`prepare`](Self::prepare) would pass its checks (the plan, the free memory of
    /// every device) now, without touching the HMM: a refusal before anything starts.
    pub fn check(
        hmm: &Hmm,
        dep: &Deployment,
        plan: &Plan,
        checkpoint: Option<&Checkpoint>,
        options: &TransitionOptions,
    ) -> Result<(), ScaleError> {
        decide(hmm, dep, plan, checkpoint, options).map(|_| ())
    }

    /// Check `plan` against `dep` and the free memory, then build the target view. On any error
    /// nothing is left behind.
    pub fn prepare(
        hmm: &mut Hmm,
        dep: &Deployment,
        plan: &Plan,
        checkpoint: Option<&Checkpoint>,
        options: &TransitionOptions,
    ) -> Result<Self, ScaleError> {
        let Decided {
            wants,
            layouts,
            stats,
            base_slots,
            packs,
            holds_bytes,
        } = decide(hmm, dep, plan, checkpoint, options)?;
        let model = &dep.model;
        let to = plan.to;
        let view = hmm.create_view(format!("{}@{}", options.view_name, to));
        let mut t = Transition {
            model: model.clone(),
            from: dep.config,
            to,
            view,
            regions: Vec::new(),
            placement: plan.target_placement.clone(),
            checksums: dep.checksums.clone(),
            new_allocs: Vec::new(),
            jobs: Vec::new(),
            done: Vec::new(),
            remaps: Vec::new(),
            verify: options.verify && holds_bytes,
            stats,
        };
        match t.build(hmm, model, &wants, layouts, base_slots, &packs) {
            Ok(()) => Ok(t),
            Err(e) => {
                let _ = t.rollback(hmm);
                Err(e)
            }
        }
    }

    fn build(
        &mut self,
        hmm: &mut Hmm,
        model: &ModelSpec,
        wants: &[Want],
        layouts: Vec<Layout>,
        base_slots: usize,
        packs: &[Vec<Pack>],
    ) -> Result<(), ScaleError> {
        let mut made = Vec::with_capacity(wants.len());
        for w in wants {
            let a = hmm.alloc(w.device, w.len, w.tag)?;
            self.new_allocs.push(a);
            made.push(a);
            let Some((what, rank, step, from)) = w.fill else {
                continue;
            };
            let (src_device, src) = match from {
                JobFrom::Device(d, a) => (Some(d), JobSource::Alloc(a)),
                JobFrom::Disk => {
                    let pack = match what {
                        PackKey::Expert { layer, expert } => model.expert_pack(layer, expert),
                        k => packs[rank as usize]
                            .iter()
                            .find(|p| p.key == k)
                            .cloned()
                            .ok_or_else(|| mismatch(format!("no pack {k:?} at rank {rank}")))?,
                    };
                    (None, JobSource::Disk(Box::new(pack)))
                }
            };
            let job = CopyJob {
                step,
                what,
                rank,
                src_device,
                src,
                dst_device: w.device,
                dst: a,
                bytes: w.len,
            };
            match job.src_device {
                None => self.stats.disk_bytes += w.len,
                Some(_) if job.is_p2p() => self.stats.p2p_bytes += w.len,
                Some(_) => self.stats.local_bytes += w.len,
            }
            self.jobs.push(job);
            self.done.push(AtomicBool::new(false));
        }
        self.stats.jobs = self.jobs.len();
        let alloc_of = |s: &SlotPlan| match s {
            SlotPlan::Map(a) => *a,
            SlotPlan::New(i) => made[*i],
        };
        for (dev, tp_rank, dp_rank, non_expert, kv, experts) in layouts {
            let sizes: Vec<u64> = non_expert.iter().map(|(_, b, _)| *b).collect();
            let ne_res = hmm.reserve(self.view, dev, &sizes)?;
            let mut non_expert_allocs = Vec::with_capacity(non_expert.len());
            for (s, (key, _, slot)) in non_expert.iter().enumerate() {
                let a = alloc_of(slot);
                self.map_or_defer(hmm, ne_res, s, slot, a, None)?;
                non_expert_allocs.push((*key, a));
            }
            let kv_len = hmm.allocation(alloc_of(&kv)).map_or(0, |a| a.len);
            let kv_res = hmm.reserve(self.view, dev, &[kv_len])?;
            let kv_alloc = alloc_of(&kv);
            // A fresh KV allocation has no content to wait for: map it now.
            hmm.map(kv_res, 0, kv_alloc)?;
            let mut ex = BTreeMap::new();
            for (l, slots) in experts {
                let n = base_slots.max(slots.len()).max(1);
                let res = hmm.reserve(self.view, dev, &vec![model.expert_bytes(); n])?;
                let mut slot_map = vec![None; n];
                for (s, (x, slot, remap)) in slots.iter().enumerate() {
                    let a = alloc_of(slot);
                    self.map_or_defer(hmm, res, s, slot, a, *remap)?;
                    slot_map[s] = Some((*x, a));
                }
                ex.insert(
                    l,
                    ExpertSlots {
                        reservation: res,
                        slots: slot_map,
                    },
                );
            }
            self.regions.push(DeviceRegions {
                device: dev,
                tp_rank,
                dp_rank,
                non_expert: ne_res,
                non_expert_allocs,
                kv: kv_res,
                kv_alloc,
                experts: ex,
            });
        }
        Ok(())
    }

    /// Zero-copy slots are mapped now; slots of copied allocations wait for [`commit`].
    fn map_or_defer(
        &mut self,
        hmm: &mut Hmm,
        res: ReservationId,
        slot: usize,
        plan: &SlotPlan,
        alloc: AllocId,
        remap: Option<usize>,
    ) -> Result<(), ScaleError> {
        match plan {
            SlotPlan::Map(_) => {
                hmm.map(res, slot, alloc)?;
            }
            SlotPlan::New(_) => self.remaps.push((res, slot, alloc, remap)),
        }
        Ok(())
    }

    pub fn from(&self) -> ParallelConfig {
        self.from
    }

    pub fn to(&self) -> ParallelConfig {
        self.to
    }

    /// The new instance's view.
    pub fn view(&self) -> ViewId {
        self.view
    }

    pub fn jobs(&self) -> &[CopyJob] {
        &self.jobs
    }

    pub fn stats(&self) -> TransitionStats {
        self.stats
    }

    /// Allocations made for the new instance (freed by a rollback).
    pub fn new_allocations(&self) -> &[AllocId] {
        &self.new_allocs
    }

    /// Copies finished so far.
    pub fn jobs_done(&self) -> usize {
        self.done
            .iter()
            .filter(|d| d.load(Ordering::Acquire))
            .count()
    }

    /// Run copy job `job`: read its source (an old allocation or the checkpoint), write its
    /// fresh allocation, check the checksum. Takes `&Hmm`: jobs may run on several threads, and
    /// beside readers of the old instance. Running a job twice copies the same bytes again.
    pub fn run_job(
        &self,
        hmm: &Hmm,
        job: usize,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<u64, ScaleError> {
        let j = self.jobs.get(job).ok_or(ScaleError::UnknownJob {
            job,
            jobs: self.jobs.len(),
        })?;
        match &j.src {
            JobSource::Alloc(src) => hmm.copy(*src, j.dst)?,
            JobSource::Disk(pack) => {
                if hmm.backend().holds_bytes() {
                    let ckpt = checkpoint.ok_or(ScaleError::NoCheckpoint { what: j.what })?;
                    let mut buf = vec![0u8; pack.bytes as usize];
                    ckpt.read_pack(pack, &mut buf)?;
                    hmm.write(j.dst, 0, &buf)?;
                }
            }
        }
        if self.verify
            && let Some(&expected) = self.checksums.get(&(j.what, j.rank))
        {
            let found = hmm.checksum(j.dst)?;
            if found != expected {
                return Err(ScaleError::ChecksumMismatch {
                    what: j.what,
                    device: j.dst_device,
                    dst: j.dst,
                    expected,
                    found,
                });
            }
        }
        self.done[job].store(true, Ordering::Release);
        Ok(j.bytes)
    }

    /// Run every job in order on this thread.
    pub fn run_all(&self, hmm: &Hmm, checkpoint: Option<&Checkpoint>) -> Result<(), ScaleError> {
        for i in 0..self.jobs.len() {
            self.run_job(hmm, i, checkpoint)?;
        }
        Ok(())
    }

    /// After every copy: remap the copied allocations into their slots and return the new
    /// deployment (the switchover is the caller's). On failure the transition is rolled back.
    pub fn commit(mut self, hmm: &mut Hmm) -> Result<Deployment, ScaleError> {
        let pending = self.jobs.len() - self.jobs_done();
        if pending > 0 {
            let total = self.jobs.len();
            let _ = self.rollback(hmm);
            return Err(ScaleError::CopiesPending { pending, total });
        }
        let remaps = std::mem::take(&mut self.remaps);
        for (res, slot, alloc, _) in remaps {
            if let Err(e) = hmm.map(res, slot, alloc) {
                let _ = self.rollback(hmm);
                return Err(e.into());
            }
        }
        let stats = LoadStats {
            disk_bytes: self.stats.disk_bytes,
            p2p_bytes: self.stats.p2p_bytes,
            allocated_bytes: self.stats.allocated_bytes,
        };
        Ok(Deployment {
            model: self.model,
            config: self.to,
            placement: self.placement,
            view: self.view,
            devices: self.regions,
            checksums: self.checksums,
            stats,
        })
    }

    /// Undo the transition: drop the new view and free every allocation it made. The old
    /// deployment is as it was.
    pub fn rollback(self, hmm: &mut Hmm) -> Result<(), ScaleError> {
        if hmm.view(self.view).is_some() {
            hmm.drop_view(self.view)?;
        }
        for a in &self.new_allocs {
            if hmm.allocation(*a).is_some() {
                hmm.free(*a)?;
            }
        }
        Ok(())
    }
}

fn layer_of(key: PackKey) -> Option<u32> {
    match key {
        PackKey::Layer { layer } => Some(layer),
        _ => None,
    }
}
