//! Host backend tests on real pages.

use super::*;

const G: u64 = 64 * 1024;

fn backend(devices: u32) -> HostBackend {
    HostBackend::new(HostConfig {
        node: 0,
        devices,
        capacity: 64 * G,
        granularity: G,
    })
    .unwrap()
}

fn bytes_at(b: &HostBackend, r: VirtRange, addr: u64, n: usize) -> Vec<u8> {
    let p = b.host_pointer(r, addr).unwrap();
    // SAFETY: test reads of a mapped range.
    unsafe { std::slice::from_raw_parts(p, n) }.to_vec()
}

#[test]
fn rejects_bad_granularity_by_value() {
    for g in [3 * G, 1024, 0] {
        let e = HostBackend::new(HostConfig {
            node: 0,
            devices: 1,
            capacity: 64 * G,
            granularity: g,
        })
        .err()
        .unwrap();
        assert!(e.to_string().contains(&format!("{g} bytes")), "{e}");
    }
}

#[test]
fn map_unmap_remap_through_real_pages() {
    let b = backend(2);
    assert_eq!(b.devices()[1].name, "host-virtual");
    let d0 = DeviceId::new(0, 0);
    let a = b.alloc_physical(d0, G).unwrap();
    let c = b.alloc_physical(d0, G).unwrap();
    b.write(a, 10, b"alpha").unwrap();
    b.write(c, 10, b"gamma").unwrap();
    let r = b.reserve(d0, 3 * G).unwrap();
    assert_eq!(r.base % G, 0, "reservations are granule-aligned");
    b.map(r, r.base + G, a).unwrap();
    assert_eq!(bytes_at(&b, r, r.base + G + 10, 5), b"alpha");
    b.map(r, r.base + G, c).unwrap();
    assert_eq!(bytes_at(&b, r, r.base + G + 10, 5), b"gamma");
    b.unmap(r, r.base + G, G).unwrap();
    b.map(r, r.base + 2 * G, a).unwrap();
    assert_eq!(bytes_at(&b, r, r.base + 2 * G + 10, 5), b"alpha");
    assert!(b.host_pointer(r, r.base + 3 * G).is_none());
    b.unmap(r, r.base, 3 * G).unwrap();
    b.release(r).unwrap();
    b.free_physical(a).unwrap();
    b.free_physical(c).unwrap();
}

#[test]
fn validation_refuses_before_touching_memory() {
    let b = backend(2);
    let d0 = DeviceId::new(0, 0);
    let d1 = DeviceId::new(0, 1);
    assert!(matches!(
        b.alloc_physical(d0, G / 2),
        Err(BackendError::Misaligned { .. })
    ));
    assert!(matches!(
        b.alloc_physical(d0, 0),
        Err(BackendError::ZeroSize { .. })
    ));
    let a = b.alloc_physical(d0, 2 * G).unwrap();
    let other = b.alloc_physical(d1, G).unwrap();
    let r = b.reserve(d0, 2 * G).unwrap();
    assert!(b.map(r, r.base + G, a).is_err(), "runs past the end");
    assert!(b.map(r, r.base + 4096, other).is_err(), "misaligned");
    let e = b.map(r, r.base, other).unwrap_err();
    assert!(e.to_string().contains("device 0/1"), "{e}");
    let forged = VirtRange {
        base: r.base + G,
        ..r
    };
    assert!(b.map(forged, forged.base, a).is_err());
    assert!(b.unmap(r, r.base, 3 * G).is_err());
    b.release(r).unwrap();
    assert!(b.map(r, r.base, a).is_err(), "released");
}

#[test]
fn copies_across_devices_and_within_one_allocation() {
    let b = backend(2);
    let a = b.alloc_physical(DeviceId::new(0, 0), G).unwrap();
    let c = b.alloc_physical(DeviceId::new(0, 1), G).unwrap();
    let pattern: Vec<u8> = (0..G).map(|i| (i % 251) as u8).collect();
    b.write(a, 0, &pattern).unwrap();
    b.copy(a, 0, c, 0, G).unwrap();
    assert_eq!(
        b.checksum(c, 0, G).unwrap(),
        xxhash_rust::xxh3::xxh3_64(&pattern)
    );
    // Overlapping move inside one allocation behaves like memmove.
    b.copy(a, 0, a, 1, 100).unwrap();
    let mut out = [0u8; 101];
    b.read(a, 0, &mut out).unwrap();
    assert_eq!(out[0], pattern[0]);
    assert_eq!(&out[1..], &pattern[..100]);
    assert!(matches!(
        b.copy(a, 1, c, 0, G),
        Err(BackendError::OutOfBounds { .. })
    ));
    assert!(b.read(a, G, &mut [0u8; 1]).is_err());
}

#[test]
fn export_import_shares_the_pages() {
    let b = backend(1);
    let d0 = DeviceId::new(0, 0);
    let a = b.alloc_physical(d0, G).unwrap();
    let shared = b.export(a).unwrap();
    let imported = b.import(d0, shared, G).unwrap();
    b.write(a, 5, b"same pages").unwrap();
    let mut out = [0u8; 10];
    b.read(imported, 5, &mut out).unwrap();
    assert_eq!(&out, b"same pages");
    let SharedHandle::Fd(fd) = b.export(a).unwrap() else {
        unreachable!()
    };
    let e = b.import(d0, SharedHandle::Fd(fd), 2 * G).unwrap_err();
    assert!(matches!(e, BackendError::OutOfBounds { .. }), "{e}");
    assert!(b.import(d0, SharedHandle::Token(1), G).is_err());
    // Freeing the original leaves the imported copy's pages alive.
    b.free_physical(a).unwrap();
    b.read(imported, 5, &mut out).unwrap();
    assert_eq!(&out, b"same pages");
}

#[test]
fn memfd_is_named_after_device_and_handle() {
    let b = backend(1);
    let a = b.alloc_physical(DeviceId::new(0, 0), G).unwrap();
    let SharedHandle::Fd(fd) = b.export(a).unwrap() else {
        unreachable!()
    };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let link = std::fs::read_link(format!("/proc/self/fd/{raw}")).unwrap();
    let name = link.to_string_lossy().into_owned();
    assert!(name.contains(&format!("emoe-0/0-a{}", a.0)), "{name}");
}
