//! The HMM over the host backend, on real pages: zero copy through views (in this process and in
//! a second one), remaps, unmaps that keep the reservation, and the accounting rules.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use emoe_core::DeviceId;
use emoe_core::backend::fdpass::{recv_fds, send_fds};
use emoe_core::backend::host::{HostBackend, HostConfig, page_size};
use emoe_core::backend::{DeviceBackend, SharedHandle};
use emoe_core::hmm::{Hmm, HmmError, RegionTag};

const D0: DeviceId = DeviceId::new(0, 0);
const D1: DeviceId = DeviceId::new(0, 1);
const CHILD_ENV: &str = "EMOE_CHILD_SOCK";
const CHILD_TEST: &str = "child_maps_the_parents_memfd";

fn page() -> u64 {
    page_size()
}

fn host(devices: u32, pages: u64) -> HostBackend {
    HostBackend::new(HostConfig {
        node: 0,
        devices,
        capacity: pages * page(),
        granularity: page(),
    })
    .unwrap()
}

fn hmm(devices: u32, pages: u64) -> Hmm {
    Hmm::new(Arc::new(host(devices, pages)))
}

fn pattern(seed: u8, n: u64) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The `/proc/self/maps` line whose range covers `[base, base + size)`: `(start, end, perms)`.
fn maps_line_covering(base: u64, size: u64) -> Option<(u64, u64, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (s, e) = f.next()?.split_once('-')?;
        let (s, e) = (
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
        );
        (s <= base && base + size <= e).then(|| (s, e, f.next().unwrap_or("").to_string()))
    })
}

#[test]
fn write_through_one_view_reads_through_another() {
    let mut h = hmm(1, 64);
    let n = 3 * page();
    let a = h.alloc(D0, n, RegionTag::non_expert(Some(0))).unwrap();
    let v1 = h.create_view("instance-old");
    let v2 = h.create_view("instance-new");
    let r1 = h.reserve(v1, D0, &[n]).unwrap();
    let r2 = h.reserve(v2, D0, &[page(), n]).unwrap();
    h.map(r1, 0, a).unwrap();
    h.map(r2, 1, a).unwrap();
    let kv = h.alloc(D0, page(), RegionTag::kv(None)).unwrap();
    h.map(r2, 0, kv).unwrap();
    let used = h.usage(D0).unwrap().used;

    let data = pattern(5, n);
    h.write_view_mut(r1, 0, &data).unwrap();
    let through_v2 = h.view_range(r2, page(), n as usize).unwrap();
    assert_eq!(through_v2, &data[..]);
    let p1 = h.view_bytes(r1).unwrap().as_ptr();
    assert_ne!(
        p1,
        through_v2.as_ptr(),
        "two views, two addresses, one set of pages"
    );
    // The allocation's own bytes are the same pages too, and nothing new was allocated.
    assert_eq!(h.checksum(a).unwrap(), xxhash_rust::xxh3::xxh3_64(&data));
    assert_eq!(h.usage(D0).unwrap().used, used);
    h.write_mut(a, 7, b"direct").unwrap();
    let mut out = [0u8; 6];
    h.read_view(r2, page() + 7, &mut out).unwrap();
    assert_eq!(&out, b"direct");
    assert_eq!(h.views_of(a), vec![v1, v2]);
}

#[test]
fn second_process_sees_the_same_pages() {
    let mut h = hmm(1, 64);
    let n = 2 * page();
    let a = h.alloc(D0, n, RegionTag::expert(3, 1)).unwrap();
    let v = h.create_view("parent");
    let r = h.reserve(v, D0, &[n]).unwrap();
    h.map(r, 0, a).unwrap();
    h.write_view_mut(r, 0, &pattern(11, n)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("child.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let exited = child.try_wait().unwrap();
                assert!(
                    exited.is_none() && Instant::now() < deadline,
                    "child never connected"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let SharedHandle::Fd(fd) = h.export(a).unwrap() else {
        panic!("host exports file descriptors")
    };
    send_fds(&stream, &[fd.as_fd()], &n.to_le_bytes()).unwrap();
    drop(fd);

    let mut done = [0u8; 1];
    let got = stream.read_exact(&mut done);
    let out = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && got.is_ok(), "child failed:\n{log}");
    assert!(
        log.contains("1 passed"),
        "the child test did not run:\n{log}"
    );
    // The child wrote its reply through its own mapping; we read it through our view.
    let mut reply = vec![0u8; page() as usize];
    h.read_view(r, page(), &mut reply).unwrap();
    assert_eq!(reply, pattern(99, page()));
    let mut head = vec![0u8; page() as usize];
    h.read_view(r, 0, &mut head).unwrap();
    assert_eq!(head, pattern(11, n)[..page() as usize]);
}

/// Runs only inside the child process started by `second_process_sees_the_same_pages`.
#[test]
fn child_maps_the_parents_memfd() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut size = [0u8; 8];
    let (got, mut fds) = recv_fds(&stream, &mut size, 1).unwrap();
    assert_eq!(got, 8);
    let n = u64::from_le_bytes(size);
    let fd = fds.pop().expect("one descriptor");

    let b = host(1, 64);
    let handle = b.import(D0, SharedHandle::Fd(fd), n).unwrap();
    let range = b.reserve(D0, n).unwrap();
    b.map(range, range.base, handle).unwrap();
    let p = b.host_pointer(range, range.base).unwrap().cast_mut();
    // SAFETY: the whole range is mapped read-write (just mapped above).
    let bytes = unsafe { std::slice::from_raw_parts_mut(p, n as usize) };
    assert_eq!(
        &bytes[..],
        &pattern(11, n)[..],
        "the parent's bytes, seen in place"
    );
    bytes[page() as usize..].copy_from_slice(&pattern(99, page()));
    (&stream).write_all(b"k").unwrap();
}

#[test]
fn slot_remap_swaps_expert_at_same_address() {
    let mut h = hmm(1, 64);
    let e = 2 * page();
    let v = h.create_view("moe-layer-0");
    let r = h.reserve(v, D0, &[e; 4]).unwrap();
    let experts: Vec<_> = (0..4)
        .map(|i| {
            let id = h.alloc(D0, e, RegionTag::expert(0, i)).unwrap();
            h.write(id, 0, &pattern(i as u8 * 40, e)).unwrap();
            id
        })
        .collect();
    for (slot, &id) in experts.iter().enumerate() {
        h.map(r, slot, id).unwrap();
    }
    let b = h.alloc(D0, e, RegionTag::expert(0, 9)).unwrap();
    h.write(b, 0, &pattern(200, e)).unwrap();
    let sums: Vec<_> = [experts[2], b]
        .iter()
        .map(|&x| h.checksum(x).unwrap())
        .collect();

    let addr = h.reservation(r).unwrap().slot_addr(2).unwrap();
    let slot2 = |h: &Hmm| h.view_bytes(r).unwrap()[2 * e as usize..3 * e as usize].to_vec();
    assert_eq!(slot2(&h), pattern(80, e));
    let used = h.usage(D0).unwrap().used;
    assert_eq!(h.map(r, 2, b).unwrap(), Some(experts[2]));
    assert_eq!(h.reservation(r).unwrap().slot_addr(2), Some(addr));
    assert_eq!(slot2(&h), pattern(200, e), "B at the same address");
    assert_eq!(&h.view_bytes(r).unwrap()[..e as usize], &pattern(0, e)[..]);
    // Nothing was copied or allocated: both allocations hold what they held.
    assert_eq!(h.checksum(experts[2]).unwrap(), sums[0]);
    assert_eq!(h.checksum(b).unwrap(), sums[1]);
    assert_eq!(h.usage(D0).unwrap().used, used);
    assert_eq!(h.allocation(experts[2]).unwrap().mappings, 0);
    assert_eq!(h.allocation(b).unwrap().mappings, 1);
    h.free(experts[2]).unwrap();
}

#[test]
fn unmap_keeps_the_reservation() {
    let mut h = hmm(1, 64);
    let v = h.create_view("v");
    let r = h.reserve(v, D0, &[page(); 3]).unwrap();
    let range = h.reservation(r).unwrap().range;
    let fresh = maps_line_covering(range.base, range.size).unwrap();
    assert_eq!(fresh.2, "---p", "a fresh reservation is PROT_NONE");
    let a = h.alloc(D0, page(), RegionTag::kv(Some(1))).unwrap();
    h.write(a, 0, b"kv block").unwrap();
    h.map(r, 1, a).unwrap();
    let mapped = maps_line_covering(range.base + page(), page()).unwrap();
    assert_eq!(mapped.2, "rw-s");
    assert_eq!(h.unmap(r, 1).unwrap(), a);
    let (s, e, perms) = maps_line_covering(range.base, range.size).unwrap();
    assert_eq!(
        perms, "---p",
        "one PROT_NONE mapping again, no hole: {s:#x}-{e:#x}"
    );
    assert!(matches!(
        h.read_view(r, page(), &mut [0u8; 1]),
        Err(HmmError::SlotUnmapped { slot: 1, .. })
    ));
    h.map(r, 2, a).unwrap();
    let mut out = [0u8; 8];
    h.read_view(r, 2 * page(), &mut out).unwrap();
    assert_eq!(&out, b"kv block");
    h.release(r).unwrap();
    assert!(h.reservation(r).is_none());
}

#[test]
fn over_capacity_alloc_fails_and_changes_nothing() {
    let mut h = hmm(1, 8);
    h.alloc(D0, 5 * page(), RegionTag::non_expert(None))
        .unwrap();
    let before = h.usage(D0).unwrap();
    let count = h.allocations(D0).count();
    let need = 3 * page() + 1;
    let e = h.alloc(D0, need, RegionTag::expert(0, 0)).unwrap_err();
    assert!(matches!(e, HmmError::OutOfMemory { .. }));
    assert_eq!(
        e.to_string(),
        format!(
            "not enough memory on device 0/0: need {} bytes, have {} free",
            4 * page(),
            3 * page()
        )
    );
    assert_eq!(h.usage(D0).unwrap(), before);
    assert_eq!(h.allocations(D0).count(), count);
    assert!(matches!(
        h.check_fits(D0, need),
        Err(HmmError::OutOfMemory { .. })
    ));
    h.alloc(D0, 3 * page(), RegionTag::expert(0, 0)).unwrap();
    assert_eq!(h.usage(D0).unwrap().free, 0);
}

#[test]
fn free_while_mapped_is_refused_until_drop_view() {
    let mut h = hmm(1, 16);
    let a = h.alloc(D0, page(), RegionTag::expert(1, 0)).unwrap();
    let v1 = h.create_view("a");
    let v2 = h.create_view("b");
    let r1 = h.reserve(v1, D0, &[page(), page()]).unwrap();
    let r2 = h.reserve(v2, D0, &[page()]).unwrap();
    h.map(r1, 0, a).unwrap();
    h.map(r1, 1, a).unwrap();
    h.map(r2, 0, a).unwrap();
    let e = h.free(a).unwrap_err();
    assert_eq!(
        e.to_string(),
        "allocation a1 is still mapped by 3 slot(s); unmap it or drop its views before freeing"
    );
    h.drop_view(v1).unwrap();
    assert!(matches!(
        h.free(a),
        Err(HmmError::InUse { mappings: 1, .. })
    ));
    h.drop_view(v2).unwrap();
    h.free(a).unwrap();
    let u = h.usage(D0).unwrap();
    assert_eq!((u.used, u.free, u.peak), (0, 16 * page(), page()));
    assert_eq!(h.views().count(), 0);
}

#[test]
fn copies_between_devices_run_concurrently() {
    let mut h = hmm(2, 64);
    let n = 4 * page() - 3; // padding must not change checksums
    let pairs: Vec<_> = (0..4u8)
        .map(|i| {
            let s = h.alloc(D0, n, RegionTag::expert(0, i.into())).unwrap();
            let d = h.alloc(D1, n, RegionTag::expert(0, i.into())).unwrap();
            h.write(s, 0, &pattern(i, n)).unwrap();
            (s, d)
        })
        .collect();
    let h = &h;
    std::thread::scope(|sc| {
        for &(s, d) in &pairs {
            sc.spawn(move || h.copy(s, d).unwrap());
        }
    });
    for (i, &(s, d)) in pairs.iter().enumerate() {
        assert_eq!(h.checksum(s).unwrap(), h.checksum(d).unwrap());
        assert_eq!(
            h.checksum(d).unwrap(),
            xxhash_rust::xxh3::xxh3_64(&pattern(i as u8, n))
        );
    }
    let short = h.allocation(pairs[0].0).unwrap().len;
    assert_eq!(short, n);
    assert_eq!(h.allocation(pairs[0].0).unwrap().size, 4 * page());
}

#[test]
fn remap_to_a_smaller_allocation_closes_the_tail() {
    let mut h = hmm(1, 16);
    let v = h.create_view("v");
    let r = h.reserve(v, D0, &[2 * page()]).unwrap();
    let base = h.reservation(r).unwrap().range.base;
    let big = h.alloc(D0, 2 * page(), RegionTag::expert(0, 0)).unwrap();
    let small = h.alloc(D0, page(), RegionTag::expert(0, 1)).unwrap();
    h.map(r, 0, big).unwrap();
    assert_eq!(maps_line_covering(base + page(), page()).unwrap().2, "rw-s");
    assert_eq!(h.map(r, 0, small).unwrap(), Some(big));
    assert_eq!(maps_line_covering(base, page()).unwrap().2, "rw-s");
    let tail = maps_line_covering(base + page(), page()).unwrap();
    assert_eq!(
        tail.2, "---p",
        "the old allocation's second page is no longer mapped"
    );
    assert!(matches!(
        h.read_view(r, page(), &mut [0u8; 1]),
        Err(HmmError::SlotPartlyMapped { .. })
    ));
}
