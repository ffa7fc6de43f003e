//! The `ascend` backend against a host-memory AscendCL + DCMI stand-in (`tests/shim/`): the HMM
//! round trip, telemetry, sharing and copies run through the real backend code and the real
//! FFI; random HMM operations keep every device mapping true; the library is found through
//! `EMOE_ASCENDCL_LIB`. The rules and their named errors are in `ascend_rules.rs`.

mod shim;

use std::process::Command;
use std::sync::Arc;

use emoe_core::DeviceId;
use emoe_core::backend::ascend::{AscendBackend, AscendOptions};
use emoe_core::backend::{BackendError, BackendKind, DeviceBackend, Health, SharedHandle};
use emoe_core::hmm::{Hmm, HmmError, RegionTag};
use proptest::prelude::*;
use shim::ascend::*;

#[test]
fn hmm_round_trip_through_the_ascend_backend() {
    let backend = Arc::new(open());
    let mut h = Hmm::new(backend.clone());
    assert_eq!(h.devices().len(), 2);

    // Two experts and a non-expert shard on device 0, one expert slot's worth on device 1.
    let e0 = h.alloc(D0, 2 * G, RegionTag::expert(0, 0)).unwrap();
    let e1 = h.alloc(D0, 2 * G, RegionTag::expert(0, 1)).unwrap();
    let dense = h.alloc(D0, G + 5, RegionTag::non_expert(Some(0))).unwrap();
    let used = h.usage(D0).unwrap().used;
    assert_eq!(
        used,
        6 * G,
        "the non-expert shard counts rounded up to the granule"
    );

    let old = h.create_view("instance-old");
    let new = h.create_view("instance-new");
    let r_old = h.reserve(old, D0, &[2 * G, G + 5]).unwrap();
    let r_new = h.reserve(new, D0, &[G + 5, 2 * G]).unwrap();
    h.map(r_old, 0, e0).unwrap();
    h.map(r_old, 1, dense).unwrap();
    h.map(r_new, 0, dense).unwrap();
    h.map(r_new, 1, e0).unwrap();
    assert_eq!(h.usage(D0).unwrap().used, used, "views allocate nothing");

    // Write through the old view, read back through the new view's own mapping.
    let w = pattern(3, 2 * G);
    h.write_view_mut(r_old, 0, &w).unwrap();
    h.write_view_mut(r_old, 2 * G, b"dense!").unwrap();
    let new_base = h.reservation(r_new).unwrap().range.base;
    assert_eq!(read_va(&backend, 0, new_base + 2 * G, w.len()).unwrap(), w);
    assert_eq!(&read_va(&backend, 0, new_base, 6).unwrap(), b"dense!");
    assert_eq!(h.checksum(e0).unwrap(), xxhash_rust::xxh3::xxh3_64(&w));
    let mut out = vec![0u8; 6];
    h.read_view(r_new, 0, &mut out).unwrap();
    assert_eq!(&out, b"dense!");

    // Remap the expert slot of the new view: e1 replaces e0 in place, e0 stays in the old view.
    let w1 = pattern(9, 2 * G);
    h.write(e1, 0, &w1).unwrap();
    assert_eq!(h.map(r_new, 1, e1).unwrap(), Some(e0));
    assert_eq!(
        read_va(&backend, 0, new_base + 2 * G, w1.len()).unwrap(),
        w1
    );
    let old_base = h.reservation(r_old).unwrap().range.base;
    assert_eq!(read_va(&backend, 0, old_base, 16).unwrap(), w[..16]);
    assert_eq!(h.allocation(e0).unwrap().mappings, 1);

    // Peer copy: e1 to device 1, checked by checksum.
    let remote = h.alloc(D1, 2 * G, RegionTag::expert(0, 1)).unwrap();
    h.copy(e1, remote).unwrap();
    assert_eq!(h.checksum(remote).unwrap(), h.checksum(e1).unwrap());
    assert!(backend.driver().peer_enabled(0, 1));

    // Unmap keeps the reservation: the slot's addresses are unmapped, the rest still mapped.
    assert_eq!(h.unmap(r_new, 1).unwrap(), e1);
    let e = read_va(&backend, 0, new_base + 2 * G, 64).unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_PARAM_INVALID");
    assert!(msg.contains("not mapped"), "{msg}");
    assert_eq!(&read_va(&backend, 0, new_base, 6).unwrap(), b"dense!");
    h.map(r_new, 1, e1).unwrap();

    // Freeing is refused while mapped, then everything goes and the account returns to zero.
    assert!(matches!(h.free(e0), Err(HmmError::InUse { .. })));
    h.drop_view(old).unwrap();
    h.drop_view(new).unwrap();
    for a in [e0, e1, dense] {
        h.free(a).unwrap();
    }
    h.free(remote).unwrap();
    let u = h.usage(D0).unwrap();
    assert_eq!((u.used, u.peak), (0, 6 * G));
}

#[test]
fn devices_and_telemetry_come_from_acl_and_dcmi() {
    let b = open();
    assert_eq!(b.kind(), BackendKind::Ascend);
    let devs = b.devices();
    assert_eq!(devs.len(), 2);
    assert_eq!(devs[1].id, D1);
    assert_eq!(devs[0].granularity, G);
    assert_eq!(devs[0].capacity, 4096 * MIB);
    assert!(devs[0].name.contains("Ascend910B-shim"), "{}", devs[0].name);

    let t = b.telemetry(D1).unwrap().unwrap();
    assert_eq!(t.source, "dcmi");
    assert_eq!(t.memory_total, Some(4096 * MIB));
    assert_eq!(t.temperature_c, Some(46));
    assert_eq!(t.power_mw, Some(123_500));
    assert_eq!(
        t.utilization_pct,
        Some(12),
        "whole-NPU query refused: AI Core used"
    );
    assert_eq!(t.memory_utilization_pct, Some(9));
    assert_eq!(t.health, Some(Health::Ok));

    let plain = open_with(AscendOptions {
        no_dcmi: true,
        ..AscendOptions::default()
    });
    let t = plain.telemetry(D0).unwrap().unwrap();
    assert_eq!(t.source, "acl");
    assert_eq!(
        (t.utilization_pct, t.memory_utilization_pct),
        (Some(7), Some(11))
    );
    assert_eq!(t.memory_total, Some(4096 * MIB));
    assert!(matches!(
        plain.telemetry(DeviceId::new(0, 9)),
        Err(BackendError::UnknownDevice(_))
    ));
}

#[test]
fn export_and_import_share_the_same_memory() {
    let b = open();
    let h = b.alloc_physical(D0, G).unwrap();
    b.write(h, 100, b"shared bytes").unwrap();
    let SharedHandle::Token(token) = b.export(h).unwrap() else {
        panic!("ascend exports a token");
    };
    let imported = b.import(D0, SharedHandle::Token(token), G).unwrap();
    let mut out = [0u8; 12];
    b.read(imported, 100, &mut out).unwrap();
    assert_eq!(&out, b"shared bytes");
    b.write(imported, 0, b"back").unwrap();
    let mut out = [0u8; 4];
    b.read(h, 0, &mut out).unwrap();
    assert_eq!(&out, b"back", "zero copy both ways");

    // An imported handle maps like any other, in a reservation of its own.
    let r = b.reserve(D0, G).unwrap();
    b.map(r, r.base, imported).unwrap();
    assert_eq!(&read_va(&b, 0, r.base, 4).unwrap(), b"back");
    b.unmap(r, r.base, G).unwrap();
    b.release(r).unwrap();
    b.free_physical(imported).unwrap();
    b.free_physical(h).unwrap();

    let fd = std::fs::File::open("/dev/null").unwrap();
    let e = b.import(D0, SharedHandle::Fd(fd.into()), G).unwrap_err();
    assert!(matches!(e, BackendError::Unsupported { .. }), "{e}");
}

#[test]
fn copies_bounce_through_the_host_when_the_device_cannot_do_them() {
    let b = open();
    let a = b.alloc_physical(D0, G).unwrap();
    let c = b.alloc_physical(D1, G).unwrap();
    let data = pattern(1, 4099);
    b.write(a, 3, &data).unwrap();
    // Offsets 3 and 7 are not 64-byte aligned: the on-chip copy would be refused.
    b.copy(a, 3, c, 7, data.len() as u64).unwrap();
    assert_eq!(
        b.checksum(c, 7, data.len() as u64).unwrap(),
        xxhash_rust::xxh3::xxh3_64(&data)
    );
    // Same allocation, overlapping-free ranges, aligned: the direct path.
    b.copy(a, 0, a, G / 2, 4096).unwrap();
    assert_eq!(
        b.checksum(a, G / 2, 4096).unwrap(),
        b.checksum(a, 0, 4096).unwrap()
    );
    let e = b.copy(a, G - 10, c, 0, 20).unwrap_err();
    assert!(matches!(e, BackendError::OutOfBounds { .. }), "{e}");
    b.free_physical(a).unwrap();
    b.free_physical(c).unwrap();
    assert!(matches!(
        b.free_physical(a),
        Err(BackendError::UnknownHandle(_))
    ));
}

#[test]
fn concurrent_copies_on_shared_backend() {
    let b = Arc::new(open());
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let b = b.clone();
            std::thread::spawn(move || {
                let dev = DeviceId::new(0, u32::from(t % 2));
                let src = b.alloc_physical(dev, G).unwrap();
                let dst = b
                    .alloc_physical(DeviceId::new(0, u32::from(1 - t % 2)), G)
                    .unwrap();
                let data = pattern(t, G);
                for _ in 0..8 {
                    b.write(src, 0, &data).unwrap();
                    b.copy(src, 0, dst, 0, G).unwrap();
                    assert_eq!(
                        b.checksum(dst, 0, G).unwrap(),
                        xxhash_rust::xxh3::xxh3_64(&data)
                    );
                }
                b.free_physical(src).unwrap();
                b.free_physical(dst).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

// ----- random HMM operations: every mapping is real on the device side -----

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        dev: u32,
        granules: u64,
    },
    Free(usize),
    Reserve {
        dev: u32,
        slots: Vec<u64>,
    },
    Map {
        res: usize,
        slot: usize,
        alloc: usize,
    },
    Unmap {
        res: usize,
        slot: usize,
    },
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2u32, 1..3u64).prop_map(|(dev, granules)| Op::Alloc { dev, granules }),
        1 => any::<usize>().prop_map(Op::Free),
        2 => (0..2u32, prop::collection::vec(1..3u64, 1..4))
            .prop_map(|(dev, slots)| Op::Reserve { dev, slots }),
        6 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(res, slot, alloc)| Op::Map { res, slot, alloc }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(res, slot)| Op::Unmap { res, slot }),
        1 => any::<usize>().prop_map(Op::Release),
    ]
}

fn nth<T: Copy>(v: &[T], i: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[i % v.len()])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random alloc / reserve / map / remap / unmap / release / free through the HMM on the ascend
    /// backend. After every step each mapped slot shows its allocation's tag when read through the
    /// reservation's own device address, each unmapped slot is unmapped in the driver, and the
    /// books balance; at the end everything is given back.
    #[test]
    fn random_hmm_ops_keep_device_mappings_true(ops in prop::collection::vec(op(), 1..40)) {
        let backend = Arc::new(open_with(AscendOptions {
            max_capacity: Some(12 * G),
            no_dcmi: true,
            ..AscendOptions::default()
        }));
        let mut h = Hmm::new(backend.clone());
        let v = h.create_view("v");
        let mut allocs = Vec::new();
        let mut res = Vec::new();
        for op in &ops {
            match op {
                Op::Alloc { dev, granules } => {
                    if let Ok(a) = h.alloc(DeviceId::new(0, *dev), granules * G, RegionTag::kv(None)) {
                        h.write(a, 0, &a.0.to_le_bytes()).unwrap();
                        allocs.push(a);
                    }
                }
                Op::Free(i) => {
                    if let Some(a) = nth(&allocs, *i)
                        && h.free(a).is_ok()
                    {
                        allocs.retain(|&x| x != a);
                    }
                }
                Op::Reserve { dev, slots } => {
                    let sizes: Vec<u64> = slots.iter().map(|s| s * G).collect();
                    res.push(h.reserve(v, DeviceId::new(0, *dev), &sizes).unwrap());
                }
                Op::Map { res: r, slot, alloc } => {
                    if let (Some(r), Some(a)) = (nth(&res, *r), nth(&allocs, *alloc)) {
                        let n = h.reservation(r).unwrap().slots.len();
                        let _ = h.map(r, slot % n, a);
                    }
                }
                Op::Unmap { res: r, slot } => {
                    if let Some(r) = nth(&res, *r) {
                        let n = h.reservation(r).unwrap().slots.len();
                        let _ = h.unmap(r, slot % n);
                    }
                }
                Op::Release(i) => {
                    if let Some(r) = nth(&res, *i) {
                        h.release(r).unwrap();
                        res.retain(|&x| x != r);
                    }
                }
            }
            for &r in &res {
                let rv = h.reservation(r).unwrap();
                let dev = rv.device.index as i32;
                for s in &rv.slots {
                    let va = rv.range.base + s.offset;
                    match s.mapped {
                        Some(a) => {
                            let tag = read_va(&backend, dev, va, 8).unwrap();
                            prop_assert_eq!(u64::from_le_bytes(tag.try_into().unwrap()), a.0);
                        }
                        None => prop_assert!(read_va(&backend, dev, va, 8).is_err()),
                    }
                }
            }
            for d in [D0, D1] {
                let u = h.usage(d).unwrap();
                let sum: u64 = h.allocations(d).map(|a| a.size).sum();
                prop_assert_eq!(u.used, sum);
                prop_assert!(u.used <= 12 * G);
            }
        }
        h.drop_view(v).unwrap();
        for a in allocs {
            h.free(a).unwrap();
        }
        prop_assert_eq!(h.usage(D0).unwrap().used + h.usage(D1).unwrap().used, 0);
    }
}

// ----- the environment variable, in child processes (the environment is process-wide) -----

const EXPECT_ENV: &str = "EMOE_TEST_ASCEND_EXPECT";
const CHILD_TEST: &str = "child_opens_through_the_environment";

fn run_child(lib: &str, expect: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            CHILD_TEST,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EMOE_ASCENDCL_LIB", lib)
        .env("EMOE_DCMI_LIB", lib)
        .env(EXPECT_ENV, expect)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("child checked"),
        "the child test did not run:\n{text}"
    );
}

#[test]
fn environment_variable_points_at_the_library() {
    run_child("/nonexistent/libascendcl.so", "missing");
    run_child(shim::library().to_str().unwrap(), "found");
}

#[test]
#[ignore = "run by environment_variable_points_at_the_library in a child process"]
fn child_opens_through_the_environment() {
    let Ok(expect) = std::env::var(EXPECT_ENV) else {
        println!(
            "skipped: only meaningful as a child of environment_variable_points_at_the_library"
        );
        return;
    };
    let r = AscendBackend::open(&AscendOptions::default());
    match expect.as_str() {
        "missing" => {
            let e = r.unwrap_err();
            let BackendError::LibraryMissing {
                library,
                searched,
                env_var,
                ..
            } = &e
            else {
                panic!("expected LibraryMissing, got {e:?}");
            };
            assert_eq!(library, "libascendcl.so");
            assert_eq!(*env_var, "EMOE_ASCENDCL_LIB");
            assert!(
                searched.contains("/nonexistent/libascendcl.so (EMOE_ASCENDCL_LIB)"),
                "{searched}"
            );
            let text = e.to_string();
            assert!(text.contains("cannot load libascendcl.so"), "{text}");
            assert!(text.contains("set EMOE_ASCENDCL_LIB"), "{text}");
        }
        _ => {
            let b = r.unwrap();
            assert!(b.acl().path().ends_with("libascendcl_shim.so"));
            assert_eq!(b.driver().dcmi().unwrap().chips().len(), 2);
        }
    }
    println!("child checked: {expect}");
}
