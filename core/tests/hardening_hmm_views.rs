//! Soundness of the in-place reads (`view_bytes`, `view_range`): the bytes a `&[u8]` borrowed
//! from `&Hmm` covers can change only through `&mut Hmm`. Before, `hmm.backend().unmap(..)`
//! through `&Hmm` unmapped them under a live slice (a segfault), and `write`/`copy` through
//! `&Hmm` rewrote them (stale reads). The compile-time half (no `unmap` through `&Hmm`, no
//! `write_view_mut` under a slice) is the `compile_fail` doc tests of `emoe_core::hmm`.

use std::sync::Arc;

use emoe_core::DeviceId;
use emoe_core::backend::DeviceBackend;
use emoe_core::backend::host::{HostBackend, HostConfig, page_size};
use emoe_core::hmm::{Hmm, HmmError, RegionTag};

const D0: DeviceId = DeviceId::new(0, 0);

fn backend() -> Arc<HostBackend> {
    Arc::new(
        HostBackend::new(HostConfig {
            node: 0,
            devices: 1,
            capacity: 64 * page_size(),
            granularity: page_size(),
        })
        .unwrap(),
    )
}

/// One view of one weight allocation (two pages of 1s), mapped.
fn mapped_weight(h: &mut Hmm) -> (emoe_core::hmm::ReservationId, emoe_core::hmm::AllocId) {
    let n = 2 * page_size();
    let a = h.alloc(D0, n, RegionTag::non_expert(Some(0))).unwrap();
    h.write(a, 0, &vec![1u8; n as usize]).unwrap();
    let v = h.create_view("v");
    let r = h.reserve(v, D0, &[n]).unwrap();
    h.map(r, 0, a).unwrap();
    (r, a)
}

#[test]
fn writes_through_shared_hmm_never_reach_a_lent_weight() {
    let mut h = Hmm::new(backend());
    let (r, a) = mapped_weight(&mut h);
    let bytes = h.view_bytes(r).unwrap();
    assert_eq!(bytes[0], 1);
    // Each of these would have changed `bytes` under the borrow: all are refused.
    let e = h.write(a, 0, &[9]).unwrap_err();
    assert!(matches!(e, HmmError::MappedReadOnly { .. }), "{e}");
    assert!(e.to_string().contains("write_mut"), "{e}");
    let e = h.write_view(r, 0, &[9]).unwrap_err();
    assert!(matches!(e, HmmError::MappedReadOnly { .. }), "{e}");
    assert_eq!(bytes[0], 1, "the lent bytes are unchanged");
}

#[test]
fn copies_through_shared_hmm_never_reach_a_lent_weight() {
    let mut h = Hmm::new(backend());
    let (r, a) = mapped_weight(&mut h);
    let n = h.allocation(a).unwrap().len;
    let other = h.alloc(D0, n, RegionTag::expert(0, 1)).unwrap();
    h.write(other, 0, &vec![5u8; n as usize]).unwrap();
    let bytes = h.view_range(r, 0, 4).unwrap();
    let e = h.copy(other, a).unwrap_err();
    assert!(matches!(e, HmmError::MappedReadOnly { .. }), "{e}");
    let e = h.copy_range(other, 0, a, 0, 4).unwrap_err();
    assert!(matches!(e, HmmError::MappedReadOnly { .. }), "{e}");
    assert_eq!(bytes, &[1, 1, 1, 1]);
    // Into an unmapped allocation a copy through `&Hmm` is fine: nothing can be lent from it.
    let spare = h.alloc(D0, n, RegionTag::expert(0, 2)).unwrap();
    h.copy(other, spare).unwrap();
}

#[test]
fn the_sanctioned_writers_need_mut_and_the_view_then_reads_the_new_bytes() {
    let mut h = Hmm::new(backend());
    let (r, a) = mapped_weight(&mut h);
    assert_eq!(h.view_bytes(r).unwrap()[..3], [1, 1, 1]);
    h.write_view_mut(r, 0, b"new").unwrap();
    assert_eq!(&h.view_bytes(r).unwrap()[..3], b"new");
    h.write_mut(a, 1, b"X").unwrap();
    assert_eq!(h.view_range(r, 0, 3).unwrap(), b"nXw");
}

#[test]
fn nothing_is_lent_while_someone_else_holds_the_backend() {
    let b = backend();
    let mut h = Hmm::new(b.clone());
    let (r, _) = mapped_weight(&mut h);
    // The other `Arc` could unmap the range under a slice: no slice while it exists.
    let e = h.view_bytes(r).unwrap_err();
    assert!(matches!(e, HmmError::BackendShared { .. }), "{e}");
    assert!(matches!(
        h.view_range(r, 0, 1),
        Err(HmmError::BackendShared { .. })
    ));
    // Copy-out reads stay available.
    let mut out = [0u8; 2];
    h.read_view(r, 0, &mut out).unwrap();
    assert_eq!(out, [1, 1]);
    let weak = Arc::downgrade(&b);
    drop(b);
    assert!(
        matches!(h.view_bytes(r), Err(HmmError::BackendShared { .. })),
        "a Weak can be upgraded, so it counts too"
    );
    drop(weak);
    assert_eq!(h.view_bytes(r).unwrap()[0], 1);
}

#[test]
fn kv_is_written_through_shared_hmm_and_never_lent() {
    let mut h = Hmm::new(backend());
    let kv = h.alloc(D0, page_size(), RegionTag::kv(Some(0))).unwrap();
    let v = h.create_view("v");
    let r = h.reserve(v, D0, &[page_size()]).unwrap();
    h.map(r, 0, kv).unwrap();
    let shared: &Hmm = &h;
    shared.write_view(r, 0, b"kv").unwrap();
    let e = shared.view_range(r, 0, 2).unwrap_err();
    assert!(matches!(e, HmmError::KvNotLent { slot: 0, .. }), "{e}");
    assert!(e.to_string().contains("read_view"), "{e}");
    let mut out = [0u8; 2];
    shared.read_view(r, 0, &mut out).unwrap();
    assert_eq!(&out, b"kv");
}

#[test]
fn exported_weights_are_never_written_again() {
    let mut h = Hmm::new(backend());
    let n = page_size();
    let a = h.alloc(D0, n, RegionTag::expert(0, 0)).unwrap();
    h.write(a, 0, b"before").unwrap();
    let _fd = h.export(a).unwrap();
    // A peer may read these pages in place: not even `&mut Hmm` writes them.
    let e = h.write(a, 0, b"after").unwrap_err();
    assert!(matches!(e, HmmError::SharedReadOnly { .. }), "{e}");
    let e = h.write_mut(a, 0, b"after").unwrap_err();
    assert!(matches!(e, HmmError::SharedReadOnly { .. }), "{e}");
    let mut out = [0u8; 6];
    h.read(a, 0, &mut out).unwrap();
    assert_eq!(&out, b"before");
    // Exported KV stays writable (never lent as `&[u8]`).
    let kv = h.alloc(D0, n, RegionTag::kv(None)).unwrap();
    let _kvfd = h.export(kv).unwrap();
    h.write(kv, 0, b"ok").unwrap();
}

#[test]
fn the_backend_facts_stay_reachable_through_shared_hmm() {
    let h = Hmm::new(backend());
    let b = h.backend();
    assert_eq!(b.kind(), emoe_core::backend::BackendKind::Host);
    assert!(b.holds_bytes());
    assert_eq!(b.devices().len(), 1);
    assert_eq!(b.pooled_bytes(), 0);
    let direct: &dyn DeviceBackend = &*backend();
    assert_eq!(direct.kind(), b.kind());
}
