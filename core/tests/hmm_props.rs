//! Property tests of the HMM's books: random sequences of alloc / map / remap / unmap / free /
//! release / drop_view on the modeled backend (real model sizes) and the host backend (pages,
//! real mappings), checking every invariant after every step and that refused calls change
//! nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use emoe_core::DeviceId;
use emoe_core::backend::host::{HostBackend, HostConfig, page_size};
use emoe_core::backend::modeled::ModeledBackend;
use emoe_core::backend::{DeviceBackend, DeviceInfo};
use emoe_core::hmm::{
    AllocId, Allocation, Hmm, RegionTag, Reservation, ReservationId, Usage, View, ViewId,
};
use proptest::prelude::*;

const DEVICES: u32 = 2;
const GIB: u64 = 1 << 30;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        dev: u32,
        units: u64,
        short: u64,
    },
    Free {
        pick: usize,
    },
    CreateView,
    Reserve {
        view: usize,
        dev: u32,
        slots: Vec<u64>,
    },
    /// `same_dev`: pick the allocation among those on the reservation's device.
    Map {
        res: usize,
        slot: usize,
        alloc: usize,
        same_dev: bool,
    },
    Unmap {
        res: usize,
        slot: usize,
    },
    Release {
        res: usize,
    },
    DropView {
        view: usize,
    },
    ResetPeak {
        dev: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (prop_oneof![15 => 0..DEVICES, 1 => Just(DEVICES)], 1..5u64, 0..3u64).prop_map(|(dev, units, short)| Op::Alloc { dev, units, short }),
        1 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => Just(Op::CreateView),
        3 => (any::<usize>(), 0..DEVICES, slot_sizes())
            .prop_map(|(view, dev, slots)| Op::Reserve { view, dev, slots }),
        6 => (any::<usize>(), any::<usize>(), any::<usize>(), prop::bool::weighted(0.9))
            .prop_map(|(res, slot, alloc, same_dev)| Op::Map { res, slot, alloc, same_dev }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(res, slot)| Op::Unmap { res, slot }),
        1 => any::<usize>().prop_map(|res| Op::Release { res }),
        1 => any::<usize>().prop_map(|view| Op::DropView { view }),
        1 => (0..DEVICES).prop_map(|dev| Op::ResetPeak { dev }),
    ]
}

/// Mostly valid slot lists; sometimes empty or with a zero-sized slot.
fn slot_sizes() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        12 => prop::collection::vec(1..5u64, 1..5),
        1 => Just(vec![]),
        1 => Just(vec![2, 0]),
    ]
}

/// Picks a slot of `r`, or (one time in 16) one past the end.
fn pick_slot(h: &Hmm, r: ReservationId, i: usize) -> usize {
    let n = h.reservation(r).map_or(0, |r| r.slots.len());
    if i.is_multiple_of(16) || n == 0 {
        n
    } else {
        (i / 16) % n
    }
}

/// Picks one of `ids`, or (one time in 16, or when there are none) an id that does not exist.
fn pick<T: Copy>(ids: &[T], i: usize, missing: T) -> T {
    if i.is_multiple_of(16) || ids.is_empty() {
        return missing;
    }
    ids[(i / 16) % ids.len()]
}

/// Everything observable about the HMM, to show a refused call changed nothing.
#[derive(PartialEq, Debug)]
struct Snapshot {
    usage: Vec<Usage>,
    allocs: Vec<Allocation>,
    views: Vec<View>,
    reservations: Vec<Reservation>,
}

fn snapshot(h: &Hmm) -> Snapshot {
    let views: Vec<View> = h.views().cloned().collect();
    let reservations = views
        .iter()
        .flat_map(|v| v.reservations.iter())
        .map(|&r| h.reservation(r).unwrap().clone())
        .collect();
    Snapshot {
        usage: h.devices().iter().map(|d| h.usage(d.id).unwrap()).collect(),
        allocs: h.all_allocations().cloned().collect(),
        views,
        reservations,
    }
}

struct Run {
    h: Hmm,
    /// Bytes per size unit (and per slot unit).
    unit: u64,
    /// Peak last seen per device, to check it never falls except on reset.
    peaks: Vec<u64>,
}

impl Run {
    fn new(backend: Arc<dyn DeviceBackend>, unit: u64) -> Self {
        // Two instances from the start, so reservations and maps happen early in each case.
        let mut h = Hmm::new(backend);
        h.create_view("old");
        h.create_view("new");
        Self {
            h,
            unit,
            peaks: vec![0; DEVICES as usize],
        }
    }

    fn reservation_ids(&self) -> Vec<ReservationId> {
        self.h
            .views()
            .flat_map(|v| v.reservations.clone())
            .collect()
    }

    /// Applies one op; returns whether it succeeded.
    fn apply(&mut self, op: &Op) -> bool {
        let res: Vec<ReservationId> = self.reservation_ids();
        let h = &mut self.h;
        let allocs: Vec<AllocId> = h.all_allocations().map(|a| a.id).collect();
        let views: Vec<ViewId> = h.views().map(|v| v.id).collect();
        let gone = (AllocId(u64::MAX), ViewId(u64::MAX), ReservationId(u64::MAX));
        match op {
            Op::Alloc { dev, units, short } => {
                let len = units * self.unit - short.min(&(self.unit - 1));
                let r = h.alloc(DeviceId::new(0, *dev), len, RegionTag::kv(None));
                if let Ok(id) = r
                    && h.backend().holds_bytes()
                {
                    h.write(id, 0, &id.0.to_le_bytes()).unwrap();
                }
                r.is_ok()
            }
            Op::Free { pick: i } => h.free(pick(&allocs, *i, gone.0)).is_ok(),
            Op::CreateView => {
                h.create_view(format!("view-{}", views.len()));
                true
            }
            Op::Reserve { view, dev, slots } => {
                let sizes: Vec<u64> = slots.iter().map(|s| s * self.unit).collect();
                h.reserve(pick(&views, *view, gone.1), DeviceId::new(0, *dev), &sizes)
                    .is_ok()
            }
            Op::Map {
                res: r,
                slot,
                alloc,
                same_dev,
            } => {
                let r = pick(&res, *r, gone.2);
                let candidates: Vec<AllocId> = match h.reservation(r) {
                    Some(rv) if *same_dev => h.allocations(rv.device).map(|a| a.id).collect(),
                    _ => allocs,
                };
                let slot = pick_slot(h, r, *slot);
                h.map(r, slot, pick(&candidates, *alloc, gone.0)).is_ok()
            }
            Op::Unmap { res: r, slot } => {
                // Mostly a mapped slot; sometimes any slot (often empty) or a missing one.
                let mapped: Vec<(ReservationId, usize)> = res
                    .iter()
                    .filter_map(|&id| h.reservation(id))
                    .flat_map(|rv| {
                        let id = rv.id;
                        rv.slots
                            .iter()
                            .enumerate()
                            .filter(|s| s.1.mapped.is_some())
                            .map(move |(i, _)| (id, i))
                    })
                    .collect();
                let (r, slot) = match mapped.get(slot % (mapped.len() + 1)) {
                    Some(&(r, i)) if slot % 4 != 0 => (r, i),
                    _ => {
                        let r = pick(&res, *r, gone.2);
                        (r, pick_slot(h, r, *slot))
                    }
                };
                h.unmap(r, slot).is_ok()
            }
            Op::Release { res: r } => h.release(pick(&res, *r, gone.2)).is_ok(),
            Op::DropView { view } => h.drop_view(pick(&views, *view, gone.1)).is_ok(),
            Op::ResetPeak { dev } => {
                h.reset_peak(DeviceId::new(0, *dev)).unwrap();
                self.peaks[*dev as usize] = 0;
                true
            }
        }
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        let h = &self.h;
        let mut refs: BTreeMap<AllocId, u32> = BTreeMap::new();
        prop_assert_eq!(h.reservations().count(), self.reservation_ids().len());
        for r in self.reservation_ids() {
            let r = h.reservation(r).unwrap();
            prop_assert!(h.view(r.view).unwrap().reservations.contains(&r.id));
            let mut next = 0;
            for (i, s) in r.slots.iter().enumerate() {
                prop_assert_eq!(s.offset, next, "slots are back to back");
                next += s.size;
                let Some(a) = s.mapped else { continue };
                *refs.entry(a).or_default() += 1;
                let al = h.allocation(a).unwrap();
                prop_assert_eq!(al.device, r.device);
                prop_assert!(al.size <= s.size);
                if h.backend().holds_bytes() {
                    // The slot shows this allocation's own bytes: the mapping is real.
                    let mut tag = [0u8; 8];
                    h.read_view(r.id, s.offset, &mut tag).unwrap();
                    prop_assert_eq!(u64::from_le_bytes(tag), a.0, "slot {} of {}", i, r.id);
                }
            }
            prop_assert_eq!(next, r.range.size);
        }
        for (d, info) in h.devices().iter().enumerate() {
            let u = h.usage(info.id).unwrap();
            let mine: Vec<&Allocation> = h.allocations(info.id).collect();
            let sum: u64 = mine.iter().map(|a| a.size).sum();
            prop_assert_eq!(u.used, sum);
            prop_assert_eq!(u.free, u.capacity - u.used);
            prop_assert!(u.peak >= u.used && u.peak >= self.peaks[d]);
            self.peaks[d] = u.peak;
            check_extents(info, &mine)?;
            for a in &mine {
                prop_assert_eq!(
                    a.mappings,
                    refs.get(&a.id).copied().unwrap_or(0),
                    "{}",
                    a.id
                );
                prop_assert!(a.len <= a.size && a.size - a.len < info.granularity);
            }
        }
        Ok(())
    }
}

fn check_extents(info: &DeviceInfo, allocs: &[&Allocation]) -> Result<(), TestCaseError> {
    let mut all: Vec<(u64, u64)> = Vec::new();
    for a in allocs {
        prop_assert_eq!(a.extents.iter().map(|e| e.1).sum::<u64>(), a.size);
        for &(off, len) in &a.extents {
            prop_assert!(len > 0 && off % info.granularity == 0 && len % info.granularity == 0);
            prop_assert!(off + len <= info.capacity);
        }
        all.extend(&a.extents);
    }
    all.sort_unstable();
    for w in all.windows(2) {
        prop_assert!(w[0].0 + w[0].1 <= w[1].0, "extents overlap: {:?}", w);
    }
    Ok(())
}

fn run(backend: Arc<dyn DeviceBackend>, unit: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut run = Run::new(backend, unit);
    for op in ops {
        let before = snapshot(&run.h);
        if !run.apply(op) {
            prop_assert_eq!(&snapshot(&run.h), &before, "refused {:?} changed state", op);
        }
        run.check()?;
    }
    // Tear down: everything can be released and freed, and the devices are empty again.
    let views: Vec<ViewId> = run.h.views().map(|v| v.id).collect();
    for v in views {
        run.h.drop_view(v).unwrap();
    }
    let allocs: Vec<AllocId> = run.h.all_allocations().map(|a| a.id).collect();
    for a in allocs {
        run.h.free(a).unwrap();
    }
    for d in run.h.devices() {
        prop_assert_eq!(run.h.usage(d.id).unwrap().used, 0);
    }
    Ok(())
}

proptest! {
    // Default config (256 cases), so PROPTEST_CASES can run more.
    #[test]
    fn modeled_books_hold_under_random_ops(ops in prop::collection::vec(op(), 1..80)) {
        // Real sizes: GiB experts on 2 MiB granules, 24 GiB per device, so OOM happens.
        let devices = (0..DEVICES)
            .map(|i| DeviceInfo {
                id: DeviceId::new(0, i),
                name: "modeled".into(),
                capacity: 24 * GIB,
                granularity: 2 << 20,
            })
            .collect();
        run(Arc::new(ModeledBackend::try_new(devices).unwrap()), GIB, &ops)?;
    }

    #[test]
    fn host_books_and_mappings_hold_under_random_ops(ops in prop::collection::vec(op(), 1..60)) {
        let backend = HostBackend::new(HostConfig {
            node: 0,
            devices: DEVICES,
            capacity: 24 * page_size(),
            granularity: page_size(),
        })
        .unwrap();
        run(Arc::new(backend), page_size(), &ops)?;
    }
}
