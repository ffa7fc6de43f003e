//! A deployment: a model placed on devices under a parallel config and loaded into the HMM.
//!
//! Loading follows the paper's disk-copy rule: each byte of the checkpoint is read at most once.
//! The first device of each TP rank reads its non-expert shard from disk; the other DP replicas
//! get it by device-to-device copy. Each expert is read once and copied to any replica. Every
//! weight allocation is checksummed at load so later moves can be verified.

mod attach;
mod placement;

use std::collections::BTreeMap;

use serde::Serialize;

pub use attach::{AllocEntry, DeviceEntry, Manifest};
pub use placement::Placement;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::device::DeviceId;
use crate::hmm::{AllocId, Hmm, HmmError, RegionTag, ReservationId, ViewId};
use crate::model::{ModelSpec, Pack, PackKey, PackedTensor, Split};
use crate::parallel::ParallelConfig;

/// Most KV-cache tokens per device a node takes (flags and scenarios): far past any
/// accelerator's memory, small enough that tokens × per-token bytes cannot overflow.
pub const MAX_KV_TOKENS: u64 = 1 << 24;

/// Knobs of a load.
#[derive(Clone, Debug)]
pub struct DeployOptions {
    /// KV-cache tokens per device.
    pub kv_tokens: u64,
    /// Expert slots reserved beyond the most a device can hold at the smallest EP (= TP), for
    /// redundant replicas of hot experts.
    pub spare_expert_slots: u32,
    /// Name of the HMM view the load maps everything into.
    pub view_name: String,
}

impl Default for DeployOptions {
    fn default() -> Self {
        Self {
            kv_tokens: 16_384,
            spare_expert_slots: 2,
            view_name: "hmm".into(),
        }
    }
}

/// Why a deployment could not be loaded. Nothing was left allocated.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("config {config} needs {need} devices, {got} were given")]
    DeviceCount {
        config: ParallelConfig,
        need: u32,
        got: usize,
    },
    #[error("device {0} is listed twice")]
    DuplicateDevice(DeviceId),
    #[error("unknown device {device} (this backend has {available})")]
    UnknownDevice { device: DeviceId, available: String },
    #[error(
        "not enough memory on device {device}: need {need} bytes for {what}, have {free} free of {capacity}"
    )]
    OutOfMemory {
        device: DeviceId,
        what: String,
        need: u64,
        free: u64,
        capacity: u64,
    },
    #[error(
        "the {backend} backend holds real bytes, so loading needs a checkpoint (none was given)"
    )]
    NoWeights { backend: &'static str },
    #[error("the checkpoint is for `{found}`, the deployment is for `{want}`")]
    WrongCheckpoint { want: String, found: String },
    #[error("the instance manifest does not fit: {reason}")]
    Manifest { reason: String },
    #[error(transparent)]
    Hmm(#[from] HmmError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// The regions one device holds for a deployment.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceRegions {
    pub device: DeviceId,
    pub tp_rank: u32,
    pub dp_rank: u32,
    /// One slot per non-expert pack (globals, then layers in order).
    pub non_expert: ReservationId,
    pub non_expert_allocs: Vec<(PackKey, AllocId)>,
    pub kv: ReservationId,
    pub kv_alloc: AllocId,
    /// Per MoE layer: the expert reservation and, per slot, the logical expert it maps.
    pub experts: BTreeMap<u32, ExpertSlots>,
}

impl DeviceRegions {
    /// Every weight allocation with the content it holds: `(pack, tp rank, allocation)`, the
    /// key of [`Deployment::checksums`] (experts use rank 0).
    pub fn weights(&self) -> impl Iterator<Item = (PackKey, u32, AllocId)> + '_ {
        let non_expert = self
            .non_expert_allocs
            .iter()
            .map(|&(k, a)| (k, self.tp_rank, a));
        let experts = self.experts.iter().flat_map(|(&layer, s)| {
            s.slots
                .iter()
                .flatten()
                .map(move |&(expert, a)| (PackKey::Expert { layer, expert }, 0, a))
        });
        non_expert.chain(experts)
    }
}

/// One device's contiguous expert range for one MoE layer.
#[derive(Clone, Debug, Serialize)]
pub struct ExpertSlots {
    pub reservation: ReservationId,
    pub slots: Vec<Option<(u32, AllocId)>>,
}

/// What a load moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LoadStats {
    /// Bytes read from the checkpoint.
    pub disk_bytes: u64,
    /// Bytes copied device to device (DP replicas of non-expert shards, expert replicas).
    pub p2p_bytes: u64,
    /// Bytes allocated (granule-rounded), all devices.
    pub allocated_bytes: u64,
}

/// A model resident in the HMM under one parallel config.
#[derive(Clone, Debug)]
pub struct Deployment {
    pub model: ModelSpec,
    pub config: ParallelConfig,
    pub placement: Placement,
    pub view: ViewId,
    pub devices: Vec<DeviceRegions>,
    /// Expected checksum of each pack's content, taken at load: `(pack, tp rank)`; experts use
    /// rank 0. Empty on backends that hold no bytes.
    pub checksums: BTreeMap<(PackKey, u32), u64>,
    pub stats: LoadStats,
}

impl Deployment {
    /// Load `model` onto `devices` under `config`. `checkpoint` supplies the bytes; it is
    /// required when the backend holds bytes and ignored (no disk read) when it does not.
    /// All capacity is checked before anything is allocated; on any error nothing remains.
    pub fn load(
        hmm: &mut Hmm,
        model: &ModelSpec,
        config: ParallelConfig,
        devices: &[DeviceId],
        checkpoint: Option<&Checkpoint>,
        options: &DeployOptions,
    ) -> Result<Self, DeployError> {
        check_devices(hmm, config, devices)?;
        let holds_bytes = hmm.backend().holds_bytes();
        let checkpoint = match (holds_bytes, checkpoint) {
            (false, _) => None,
            (true, None) => {
                return Err(DeployError::NoWeights {
                    backend: hmm.backend().kind().as_str(),
                });
            }
            (true, Some(c)) => {
                // Same shapes; the name may differ (a directory's name vs a preset's).
                let same = ModelSpec {
                    name: model.name.clone(),
                    ..c.spec().clone()
                };
                if &same != model {
                    return Err(DeployError::WrongCheckpoint {
                        want: model.name.clone(),
                        found: c.spec().name.clone(),
                    });
                }
                Some(c)
            }
        };
        let placement = Placement::contiguous(model, devices);
        let packs: Vec<Vec<Pack>> = (0..config.tp())
            .map(|r| model.non_expert_packs(config.tp(), r))
            .collect();
        let expert_bytes = model.expert_bytes();
        let kv_bytes = options.kv_tokens
            * model.kv_bytes_per_token_per_layer(config.tp())
            * u64::from(model.num_layers);
        let slots = model.num_routed_experts.div_ceil(config.tp()) + options.spare_expert_slots;

        // Refuse before touching anything.
        for (i, &dev) in devices.iter().enumerate() {
            let rank = config.tp_rank(i as u32) as usize;
            let mut need = 0;
            for p in &packs[rank] {
                need += hmm.round_up(dev, p.bytes)?;
            }
            let experts: usize = placement
                .layers
                .keys()
                .map(|&l| placement.experts_on(l, dev).len())
                .sum();
            need += experts as u64 * hmm.round_up(dev, expert_bytes)?;
            need += hmm.round_up(dev, kv_bytes)?;
            let u = hmm.usage(dev)?;
            if need > u.free {
                return Err(DeployError::OutOfMemory {
                    device: dev,
                    what: format!("{} under {config}", model.name),
                    need,
                    free: u.free,
                    capacity: u.capacity,
                });
            }
        }

        let view = hmm.create_view(&options.view_name);
        let mut loader = Loader {
            hmm,
            view,
            allocs: Vec::new(),
            stats: LoadStats::default(),
            checksums: BTreeMap::new(),
        };
        match loader.run(
            model, config, devices, &placement, &packs, checkpoint, slots, kv_bytes,
        ) {
            Ok(regions) => {
                let Loader {
                    stats, checksums, ..
                } = loader;
                Ok(Self {
                    model: model.clone(),
                    config,
                    placement,
                    view,
                    devices: regions,
                    checksums,
                    stats,
                })
            }
            Err(e) => {
                loader.rollback();
                Err(e)
            }
        }
    }

    /// Every weight allocation whose checksum differs from the one taken at load, as
    /// `(device, allocation, pack)`. Empty when all match (and on byteless backends).
    pub fn verify(&self, hmm: &Hmm) -> Result<Vec<(DeviceId, AllocId, PackKey)>, DeployError> {
        let mut bad = Vec::new();
        if self.checksums.is_empty() {
            return Ok(bad);
        }
        for d in &self.devices {
            for (key, rank, alloc) in d.weights() {
                let want = self.checksums.get(&(key, rank)).copied();
                if want != Some(hmm.checksum(alloc)?) {
                    bad.push((d.device, alloc, key));
                }
            }
        }
        Ok(bad)
    }

    /// Read one byte of every page of every mapped weight slot of the deployment's view, so the
    /// mappings are populated before the instance serves (pre-initialization: the first decode
    /// steps then take no page faults). Returns the pages touched; 0 on backends without host
    /// pointers.
    pub fn touch(&self, hmm: &Hmm) -> Result<u64, DeployError> {
        const PAGE: usize = 4096;
        let mut pages = 0u64;
        let mut sink = 0u8;
        let mut ranges: Vec<(crate::hmm::ReservationId, u64, u64)> = Vec::new();
        for d in &self.devices {
            // Weights only: the KV cache may be written by the old instance meanwhile, and its
            // pages fault in a block at a time anyway.
            for res in
                std::iter::once(d.non_expert).chain(d.experts.values().map(|s| s.reservation))
            {
                let Some(r) = hmm.reservation(res) else {
                    continue;
                };
                for s in r.slots.iter().filter(|s| s.mapped.is_some()) {
                    let len = s
                        .mapped
                        .and_then(|a| hmm.allocation(a))
                        .map_or(0, |a| a.len);
                    ranges.push((res, s.offset, len));
                }
            }
        }
        for (res, offset, len) in ranges {
            let Ok(bytes) = hmm.view_range(res, offset, len as usize) else {
                return Ok(0);
            };
            for p in bytes.iter().step_by(PAGE) {
                sink ^= std::hint::black_box(*p);
                pages += 1;
            }
        }
        std::hint::black_box(sink);
        Ok(pages)
    }

    /// Unmap the deployment's view and free its allocations.
    pub fn unload(self, hmm: &mut Hmm) -> Result<(), DeployError> {
        hmm.drop_view(self.view)?;
        for d in &self.devices {
            let all = d.weights().map(|(_, _, a)| a).chain([d.kv_alloc]);
            for a in all {
                if hmm.allocation(a).is_some_and(|al| al.mappings == 0) {
                    hmm.free(a)?;
                }
            }
        }
        Ok(())
    }
}

fn check_devices(
    hmm: &Hmm,
    config: ParallelConfig,
    devices: &[DeviceId],
) -> Result<(), DeployError> {
    if devices.len() != config.devices() as usize {
        return Err(DeployError::DeviceCount {
            config,
            need: config.devices(),
            got: devices.len(),
        });
    }
    for (i, d) in devices.iter().enumerate() {
        if devices[..i].contains(d) {
            return Err(DeployError::DuplicateDevice(*d));
        }
        if !hmm.devices().iter().any(|info| info.id == *d) {
            let ids: Vec<String> = hmm.devices().iter().map(|i| i.id.to_string()).collect();
            let available = match (ids.first(), ids.last()) {
                (Some(a), Some(b)) => format!("{} devices, {a} to {b}", ids.len()),
                _ => "no devices".into(),
            };
            return Err(DeployError::UnknownDevice {
                device: *d,
                available,
            });
        }
    }
    Ok(())
}

/// Where content has landed during a load, so later holders copy instead of reading disk.
#[derive(Default)]
struct Held<'p> {
    /// `(pack, tp rank)` → the first allocation holding exactly that content.
    exact: BTreeMap<(PackKey, u32), AllocId>,
    /// `pack` → an allocation holding it at some TP rank, with that rank's layout.
    any_rank: BTreeMap<PackKey, (AllocId, &'p Pack)>,
}

impl<'p> Held<'p> {
    fn record(&mut self, pack: &'p Pack, rank: u32, a: AllocId) {
        self.exact.entry((pack.key, rank)).or_insert(a);
        self.any_rank.entry(pack.key).or_insert((a, pack));
    }
}

/// The state of one load in progress, so a failure can undo exactly what was done.
struct Loader<'h> {
    hmm: &'h mut Hmm,
    view: ViewId,
    allocs: Vec<AllocId>,
    stats: LoadStats,
    checksums: BTreeMap<(PackKey, u32), u64>,
}

impl Loader<'_> {
    fn alloc(&mut self, dev: DeviceId, bytes: u64, tag: RegionTag) -> Result<AllocId, DeployError> {
        let a = self.hmm.alloc(dev, bytes, tag)?;
        self.allocs.push(a);
        self.stats.allocated_bytes += self.hmm.allocation(a).map_or(0, |al| al.size);
        Ok(a)
    }

    /// Fill `dst` with `pack`, reading each checkpoint byte at most once: a copy from an
    /// allocation that already holds the same content (a DP replica, an expert replica); else
    /// the TP-split tensors from disk and the replicated ones (norms, routers, MLA
    /// down-projections) from another TP rank's pack when one is loaded; else all from disk.
    fn fill(
        &mut self,
        dst: AllocId,
        pack: &Pack,
        rank: u32,
        held: &Held,
        checkpoint: Option<&Checkpoint>,
        buf: &mut Vec<u8>,
    ) -> Result<(), DeployError> {
        let Some(ckpt) = checkpoint else {
            return Ok(());
        };
        if let Some(&src) = held.exact.get(&(pack.key, rank)) {
            self.hmm.copy(src, dst)?;
            self.stats.p2p_bytes += pack.bytes;
            return Ok(());
        }
        buf.clear();
        buf.resize(pack.bytes as usize, 0);
        let other = held.any_rank.get(&pack.key).filter(|_| pack.tp > 1);
        let Some(&(src, src_pack)) = other else {
            ckpt.read_pack(pack, buf)?;
            self.hmm.write(dst, 0, buf)?;
            self.stats.disk_bytes += pack.bytes;
            self.checksums
                .insert((pack.key, rank), xxhash_rust::xxh3::xxh3_64(buf));
            return Ok(());
        };
        let replicated = |t: &PackedTensor| t.spec.split == Split::Replicated;
        ckpt.read_pack_where(pack, buf, |t| !replicated(t))?;
        self.hmm.write(dst, 0, buf)?;
        for t in pack.tensors.iter().filter(|t| replicated(t)) {
            let from = src_pack
                .tensor(&t.spec.name)
                .map(|s| s.offset)
                .unwrap_or_default();
            self.hmm.copy_range(src, from, dst, t.offset, t.len)?;
            // The expected content includes what came device to device.
            let (a, b) = (t.offset as usize, (t.offset + t.len) as usize);
            self.hmm.read(dst, t.offset, &mut buf[a..b])?;
            self.stats.p2p_bytes += t.len;
        }
        let from_disk: u64 = pack
            .tensors
            .iter()
            .filter(|t| !replicated(t))
            .map(|t| t.len)
            .sum();
        self.stats.disk_bytes += from_disk;
        self.checksums
            .insert((pack.key, rank), xxhash_rust::xxh3::xxh3_64(buf));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        model: &ModelSpec,
        config: ParallelConfig,
        devices: &[DeviceId],
        placement: &Placement,
        packs: &[Vec<Pack>],
        checkpoint: Option<&Checkpoint>,
        slots: u32,
        kv_bytes: u64,
    ) -> Result<Vec<DeviceRegions>, DeployError> {
        let mut buf = Vec::new();
        let mut held = Held::default();
        let mut out = Vec::with_capacity(devices.len());
        for (i, &dev) in devices.iter().enumerate() {
            let tp_rank = config.tp_rank(i as u32);
            let my_packs = &packs[tp_rank as usize];
            let sizes: Vec<u64> = my_packs.iter().map(|p| p.bytes).collect();
            let non_expert = self.hmm.reserve(self.view, dev, &sizes)?;
            let mut non_expert_allocs = Vec::with_capacity(my_packs.len());
            for (s, pack) in my_packs.iter().enumerate() {
                let layer = match pack.key {
                    PackKey::Layer { layer } => Some(layer),
                    _ => None,
                };
                let a = self.alloc(dev, pack.bytes, RegionTag::non_expert(layer))?;
                self.fill(a, pack, tp_rank, &held, checkpoint, &mut buf)?;
                held.record(pack, tp_rank, a);
                self.hmm.map(non_expert, s, a)?;
                non_expert_allocs.push((pack.key, a));
            }

            let kv = self.hmm.reserve(self.view, dev, &[kv_bytes])?;
            let kv_alloc = self.alloc(dev, kv_bytes, RegionTag::kv(None))?;
            self.hmm.map(kv, 0, kv_alloc)?;

            let mut experts = BTreeMap::new();
            for &layer in placement.layers.keys() {
                let mine = placement.experts_on(layer, dev);
                let sizes = vec![model.expert_bytes(); slots.max(mine.len() as u32) as usize];
                let res = self.hmm.reserve(self.view, dev, &sizes)?;
                let mut slot_map = vec![None; sizes.len()];
                for (s, &x) in mine.iter().enumerate() {
                    let pack = model.expert_pack(layer, x);
                    let a = self.alloc(dev, pack.bytes, RegionTag::expert(layer, x))?;
                    self.fill(a, &pack, 0, &held, checkpoint, &mut buf)?;
                    held.exact.entry((pack.key, 0)).or_insert(a);
                    self.hmm.map(res, s, a)?;
                    slot_map[s] = Some((x, a));
                }
                experts.insert(
                    layer,
                    ExpertSlots {
                        reservation: res,
                        slots: slot_map,
                    },
                );
            }
            out.push(DeviceRegions {
                device: dev,
                tp_rank,
                dp_rank: config.dp_rank(i as u32),
                non_expert,
                non_expert_allocs,
                kv,
                kv_alloc,
                experts,
            });
        }
        Ok(out)
    }

    fn rollback(self) {
        // Best effort: every step below undoes something this load created.
        let _ = self.hmm.drop_view(self.view);
        for a in self.allocs {
            let _ = self.hmm.free(a);
        }
    }
}
