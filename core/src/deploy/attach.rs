//! Attaching a deployment from another process: a [`Manifest`] describes an instance's regions
//! by allocation index; the owner exports the allocations in that order, the other process
//! imports them and rebuilds the same views over the same physical memory (zero copy).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DeployError, Deployment, DeviceRegions, ExpertSlots, LoadStats, Placement};
use crate::device::DeviceId;
use crate::hmm::{AllocId, Hmm, RegionTag};
use crate::model::{ModelSpec, PackKey};
use crate::parallel::ParallelConfig;

/// One allocation of the instance, in export order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AllocEntry {
    pub device: DeviceId,
    /// Bytes asked for (the granule-rounded size follows from the device).
    pub len: u64,
    pub tag: RegionTag,
}

/// One device's regions, by index into [`Manifest::allocs`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeviceEntry {
    pub device: DeviceId,
    pub tp_rank: u32,
    pub dp_rank: u32,
    /// Per non-expert slot: the pack and its allocation.
    pub non_expert: Vec<(PackKey, usize)>,
    pub kv: usize,
    /// Per MoE layer: per slot, the expert and its allocation (`None` for a spare slot).
    pub experts: BTreeMap<u32, Vec<Option<(u32, usize)>>>,
}

/// Everything another process needs to rebuild an instance's views, except the memory itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub model: ModelSpec,
    pub config: ParallelConfig,
    pub placement: Placement,
    pub checksums: Vec<((PackKey, u32), u64)>,
    pub allocs: Vec<AllocEntry>,
    pub devices: Vec<DeviceEntry>,
}

impl Deployment {
    /// The manifest of this deployment and its allocations in manifest order (export them in
    /// that order).
    pub fn manifest(&self, hmm: &Hmm) -> Result<(Manifest, Vec<AllocId>), DeployError> {
        let mut order: Vec<AllocId> = Vec::new();
        let mut allocs = Vec::new();
        let mut index = |a: AllocId, order: &mut Vec<AllocId>| -> Result<usize, DeployError> {
            if let Some(i) = order.iter().position(|x| *x == a) {
                return Ok(i);
            }
            let al = hmm
                .allocation(a)
                .ok_or(crate::hmm::HmmError::UnknownAlloc(a))?;
            allocs.push(AllocEntry {
                device: al.device,
                len: al.len,
                tag: al.tag,
            });
            order.push(a);
            Ok(order.len() - 1)
        };
        let mut devices = Vec::with_capacity(self.devices.len());
        for r in &self.devices {
            let mut non_expert = Vec::new();
            for (k, a) in &r.non_expert_allocs {
                non_expert.push((*k, index(*a, &mut order)?));
            }
            let kv = index(r.kv_alloc, &mut order)?;
            let mut experts = BTreeMap::new();
            for (l, s) in &r.experts {
                let mut slots = Vec::with_capacity(s.slots.len());
                for x in &s.slots {
                    slots.push(match x {
                        Some((e, a)) => Some((*e, index(*a, &mut order)?)),
                        None => None,
                    });
                }
                experts.insert(*l, slots);
            }
            devices.push(DeviceEntry {
                device: r.device,
                tp_rank: r.tp_rank,
                dp_rank: r.dp_rank,
                non_expert,
                kv,
                experts,
            });
        }
        let m = Manifest {
            model: self.model.clone(),
            config: self.config,
            placement: self.placement.clone(),
            checksums: self.checksums.iter().map(|(k, v)| (*k, *v)).collect(),
            allocs,
            devices,
        };
        Ok((m, order))
    }

    /// Rebuild the instance of `m` in `hmm` over `allocs` (imported, in manifest order): a new
    /// view whose reservations map them slot for slot as the owner's do. On error the view is
    /// dropped; the imported allocations stay (the caller frees them).
    pub fn attach(
        hmm: &mut Hmm,
        m: &Manifest,
        allocs: &[AllocId],
        view_name: &str,
    ) -> Result<Self, DeployError> {
        let get = |i: usize| {
            allocs.get(i).copied().ok_or_else(|| DeployError::Manifest {
                reason: format!("allocation index {i} is past the {} imported", allocs.len()),
            })
        };
        let view = hmm.create_view(view_name);
        let build = |hmm: &mut Hmm| -> Result<Vec<DeviceRegions>, DeployError> {
            let mut out = Vec::with_capacity(m.devices.len());
            for d in &m.devices {
                let ne: Vec<AllocId> = d
                    .non_expert
                    .iter()
                    .map(|(_, i)| get(*i))
                    .collect::<Result<_, _>>()?;
                let sizes: Vec<u64> = ne.iter().map(|a| alloc_len(hmm, *a)).collect();
                let non_expert = hmm.reserve(view, d.device, &sizes)?;
                for (s, a) in ne.iter().enumerate() {
                    hmm.map(non_expert, s, *a)?;
                }
                let kv_alloc = get(d.kv)?;
                let kv = hmm.reserve(view, d.device, &[alloc_len(hmm, kv_alloc)])?;
                hmm.map(kv, 0, kv_alloc)?;
                let mut experts = BTreeMap::new();
                for (l, slots) in &d.experts {
                    let sizes = vec![m.model.expert_bytes(); slots.len().max(1)];
                    let res = hmm.reserve(view, d.device, &sizes)?;
                    let mut mapped = Vec::with_capacity(slots.len());
                    for (s, x) in slots.iter().enumerate() {
                        match x {
                            Some((e, i)) => {
                                let a = get(*i)?;
                                hmm.map(res, s, a)?;
                                mapped.push(Some((*e, a)));
                            }
                            None => mapped.push(None),
                        }
                    }
                    experts.insert(
                        *l,
                        ExpertSlots {
                            reservation: res,
                            slots: mapped,
                        },
                    );
                }
                out.push(DeviceRegions {
                    device: d.device,
                    tp_rank: d.tp_rank,
                    dp_rank: d.dp_rank,
                    non_expert,
                    non_expert_allocs: d
                        .non_expert
                        .iter()
                        .zip(&ne)
                        .map(|((k, _), a)| (*k, *a))
                        .collect(),
                    kv,
                    kv_alloc,
                    experts,
                });
            }
            Ok(out)
        };
        match build(hmm) {
            Ok(devices) => Ok(Self {
                model: m.model.clone(),
                config: m.config,
                placement: m.placement.clone(),
                view,
                devices,
                checksums: m.checksums.iter().copied().collect(),
                stats: LoadStats::default(),
            }),
            Err(e) => {
                let _ = hmm.drop_view(view);
                Err(e)
            }
        }
    }
}

fn alloc_len(hmm: &Hmm, a: AllocId) -> u64 {
    hmm.allocation(a).map_or(0, |x| x.len)
}
