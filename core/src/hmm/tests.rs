//! Unit tests of the HMM's books over the modeled backend (no bytes), plus one host case for the
//! tail left by a larger predecessor on remap.

use std::sync::Arc;

use super::*;
use crate::backend::host::{HostBackend, HostConfig};
use crate::backend::modeled::ModeledBackend;

const MIB: u64 = 1 << 20;
const G: u64 = 2 * MIB;

fn modeled(devices: u32, capacity: u64) -> Hmm {
    let infos = (0..devices)
        .map(|i| DeviceInfo {
            id: DeviceId::new(0, i),
            name: "modeled".into(),
            capacity,
            granularity: G,
        })
        .collect();
    Hmm::new(Arc::new(ModeledBackend::try_new(infos).unwrap()))
}

const D0: DeviceId = DeviceId::new(0, 0);
const D1: DeviceId = DeviceId::new(0, 1);

#[test]
fn accounting_rounds_up_and_tracks_peak() {
    let mut h = modeled(1, 64 * G);
    let a = h.alloc(D0, 3 * MIB, RegionTag::expert(0, 1)).unwrap();
    let al = h.allocation(a).unwrap();
    assert_eq!((al.len, al.size, al.offset()), (3 * MIB, 4 * MIB, 0));
    let b = h.alloc(D0, 1, RegionTag::kv(None)).unwrap();
    assert_eq!(h.allocation(b).unwrap().offset(), 4 * MIB);
    let u = h.usage(D0).unwrap();
    assert_eq!(
        (u.used, u.free, u.peak),
        (6 * MIB, 128 * MIB - 6 * MIB, 6 * MIB)
    );
    h.free(a).unwrap();
    assert_eq!(h.usage(D0).unwrap().peak, 6 * MIB);
    h.reset_peak(D0).unwrap();
    assert_eq!(h.usage(D0).unwrap().peak, 2 * MIB);
    assert_eq!(h.round_up(D0, G + 1).unwrap(), 2 * G);
    assert_eq!(h.check_fits(D0, 1).unwrap(), G);
    assert!(matches!(
        h.usage(DeviceId::new(9, 9)),
        Err(HmmError::UnknownDevice(_))
    ));
}

#[test]
fn out_of_memory_is_named_and_changes_nothing() {
    let mut h = modeled(1, 4 * G);
    h.alloc(D0, 3 * G, RegionTag::non_expert(None)).unwrap();
    let before = h.usage(D0).unwrap();
    let e = h.alloc(D0, 2 * G, RegionTag::non_expert(None)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "not enough memory on device 0/0: need {} bytes, have {} free",
            2 * G,
            G
        )
    );
    assert_eq!(h.usage(D0).unwrap(), before);
    assert_eq!(h.allocations(D0).count(), 1);
    assert!(matches!(
        h.alloc(D0, 0, RegionTag::kv(None)),
        Err(HmmError::ZeroSize { .. })
    ));
    assert!(matches!(
        h.alloc(D0, u64::MAX, RegionTag::kv(None)),
        Err(HmmError::TooLarge { .. })
    ));
}

#[test]
fn fragmented_device_allocates_in_extents() {
    let mut h = modeled(1, 6 * G);
    let tag = RegionTag::kv(None);
    let ids: Vec<_> = (0..6).map(|_| h.alloc(D0, G, tag).unwrap()).collect();
    h.free(ids[1]).unwrap();
    h.free(ids[3]).unwrap();
    h.free(ids[5]).unwrap();
    let big = h.alloc(D0, 3 * G, tag).unwrap();
    let a = h.allocation(big).unwrap();
    assert_eq!(a.extents, vec![(G, G), (3 * G, G), (5 * G, G)]);
    assert_eq!(h.usage(D0).unwrap().free, 0);
    let offsets: Vec<_> = h.allocations(D0).map(|a| a.offset()).collect();
    assert_eq!(offsets, vec![0, G, 2 * G, 4 * G]);
}

#[test]
fn remap_moves_refcounts_and_free_waits_for_unmap() {
    let mut h = modeled(2, 64 * G);
    let v = h.create_view("instance-a");
    let r = h.reserve(v, D0, &[G, G, 2 * G]).unwrap();
    let res = h.reservation(r).unwrap();
    assert_eq!(res.range.size, 4 * G);
    assert_eq!(res.slot_addr(2), Some(res.range.base + 2 * G));
    let a = h.alloc(D0, G, RegionTag::expert(0, 0)).unwrap();
    let b = h.alloc(D0, G, RegionTag::expert(0, 1)).unwrap();
    assert_eq!(h.map(r, 2, a).unwrap(), None);
    assert_eq!(
        h.map(r, 2, a).unwrap(),
        Some(a),
        "mapping the same again is a no-op"
    );
    assert_eq!(h.allocation(a).unwrap().mappings, 1);
    assert_eq!(h.map(r, 2, b).unwrap(), Some(a));
    assert_eq!(h.allocation(a).unwrap().mappings, 0);
    assert_eq!(h.allocation(b).unwrap().mappings, 1);
    let e = h.free(b).unwrap_err();
    assert!(matches!(e, HmmError::InUse { mappings: 1, .. }), "{e}");
    assert_eq!(h.views_of(b), vec![v]);
    assert_eq!(h.unmap(r, 2).unwrap(), b);
    assert!(matches!(h.unmap(r, 2), Err(HmmError::SlotUnmapped { .. })));
    h.free(b).unwrap();
    assert!(h.views_of(b).is_empty());
}

#[test]
fn map_rules_are_checked_first() {
    let mut h = modeled(2, 64 * G);
    let v = h.create_view("v");
    let r = h.reserve(v, D0, &[G, G]).unwrap();
    let big = h.alloc(D0, 2 * G, RegionTag::kv(None)).unwrap();
    let other = h.alloc(D1, G, RegionTag::kv(None)).unwrap();
    let e = h.map(r, 0, big).unwrap_err();
    assert!(matches!(e, HmmError::SlotTooSmall { .. }), "{e}");
    let e = h.map(r, 0, other).unwrap_err();
    assert!(
        e.to_string().contains("device 0/1") && e.to_string().contains("r1"),
        "{e}"
    );
    assert!(matches!(
        h.map(r, 2, big),
        Err(HmmError::UnknownSlot { slots: 2, .. })
    ));
    assert!(matches!(
        h.map(ReservationId(99), 0, big),
        Err(HmmError::UnknownReservation(_))
    ));
    assert!(matches!(
        h.map(r, 0, AllocId(99)),
        Err(HmmError::UnknownAlloc(_))
    ));
    assert!(matches!(h.reserve(v, D0, &[]), Err(HmmError::NoSlots)));
    assert!(matches!(
        h.reserve(v, D0, &[G, 0]),
        Err(HmmError::ZeroSize { .. })
    ));
    assert!(matches!(
        h.reserve(ViewId(7), D0, &[G]),
        Err(HmmError::UnknownView(_))
    ));
    assert!(matches!(
        h.reserve(v, D0, &[u64::MAX / 2, u64::MAX / 2]),
        Err(HmmError::TooLarge { .. })
    ));
    assert_eq!(h.view(v).unwrap().reservations, vec![r]);
    assert_eq!(h.allocation(big).unwrap().mappings, 0);
}

#[test]
fn drop_view_releases_refcounts_but_keeps_allocations() {
    let mut h = modeled(1, 64 * G);
    let a = h.alloc(D0, G, RegionTag::non_expert(Some(0))).unwrap();
    let v1 = h.create_view("old");
    let v2 = h.create_view("new");
    let r1 = h.reserve(v1, D0, &[G]).unwrap();
    let r2 = h.reserve(v2, D0, &[G, G]).unwrap();
    h.map(r1, 0, a).unwrap();
    h.map(r2, 1, a).unwrap();
    assert_eq!(h.views_of(a), vec![v1, v2]);
    assert_eq!(h.allocation(a).unwrap().mappings, 2);
    h.drop_view(v1).unwrap();
    assert!(h.reservation(r1).is_none());
    assert!(matches!(
        h.release(r1),
        Err(HmmError::UnknownReservation(_))
    ));
    assert!(h.view(v1).is_none());
    assert!(matches!(h.drop_view(v1), Err(HmmError::UnknownView(_))));
    assert_eq!(h.allocation(a).unwrap().mappings, 1);
    h.release(r2).unwrap();
    assert!(h.view(v2).unwrap().reservations.is_empty());
    h.free(a).unwrap();
    assert_eq!(h.usage(D0).unwrap().used, 0);
    assert_eq!(h.views().count(), 1);
}

#[test]
fn modeled_has_no_bytes_but_copies_validate() {
    let mut h = modeled(2, 64 * G);
    let a = h.alloc(D0, 3 * MIB, RegionTag::expert(1, 2)).unwrap();
    let b = h.alloc(D1, 3 * MIB, RegionTag::expert(1, 2)).unwrap();
    let c = h.alloc(D1, G, RegionTag::expert(1, 3)).unwrap();
    h.copy(a, b).unwrap();
    assert!(matches!(h.copy(a, c), Err(HmmError::SizeMismatch { .. })));
    let e = h.checksum(a).unwrap_err();
    assert!(e.to_string().contains("holds no bytes"), "{e}");
    let v = h.create_view("v");
    let r = h.reserve(v, D0, &[4 * MIB]).unwrap();
    h.map(r, 0, a).unwrap();
    assert!(matches!(
        h.view_bytes(r),
        Err(HmmError::NoHostPointer { .. })
    ));
    assert!(matches!(
        h.read_view(r, 0, &mut [0u8; 4]),
        Err(HmmError::Backend(_))
    ));
}

#[test]
fn remap_to_smaller_allocation_closes_the_tail() {
    let page = crate::backend::host::page_size();
    let backend = HostBackend::new(HostConfig {
        node: 0,
        devices: 1,
        capacity: 64 * page,
        granularity: page,
    })
    .unwrap();
    let mut h = Hmm::new(Arc::new(backend));
    let v = h.create_view("v");
    let r = h.reserve(v, D0, &[2 * page]).unwrap();
    let big = h.alloc(D0, 2 * page, RegionTag::non_expert(None)).unwrap();
    let small = h.alloc(D0, page, RegionTag::kv(None)).unwrap();
    h.write(big, 0, &vec![7u8; 2 * page as usize]).unwrap();
    h.write(small, 0, &vec![9u8; page as usize]).unwrap();
    h.map(r, 0, big).unwrap();
    assert_eq!(h.view_bytes(r).unwrap()[page as usize], 7);
    h.map(r, 0, small).unwrap();
    // The second page is no longer backed: reading it through the view is refused, not a fault.
    let e = h.read_view(r, page, &mut [0u8; 1]).unwrap_err();
    assert!(matches!(e, HmmError::SlotPartlyMapped { .. }), "{e}");
    assert!(matches!(
        h.view_bytes(r),
        Err(HmmError::SlotPartlyMapped { .. })
    ));
    let mut first = [0u8; 4];
    h.read_view(r, 0, &mut first).unwrap();
    assert_eq!(first, [9; 4]);
    let e = h.read(small, page - 2, &mut [0u8; 4]).unwrap_err();
    assert!(matches!(e, HmmError::OutOfBounds { .. }), "{e}");
}
