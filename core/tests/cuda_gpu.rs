//! The `cuda` backend on a real NVIDIA GPU: the HMM round trip, remaps, copies between logical
//! devices and POSIX-fd export/import. Where `libcuda.so.1` cannot be opened or sees no GPU, each
//! `gpu_*` test says `skipped: <reason>` on the real stderr (past the harness's capture) and
//! passes; under `EMOE_REQUIRE_GPU=1` (which `scripts/gpu-check.sh` sets) it fails instead.
//!
//! The same bodies also run as `shim_*` tests against `tests/shim/cuda_shim.c`, a host-memory
//! stand-in for the driver and NVML (two GPUs), so the backend's calling discipline (contexts,
//! access grants, whole-mapping unmaps, fd export) is checked on every machine. The shim is not
//! a GPU: only the `gpu_*` tests on a GPU machine say the backend works with the real driver.

mod shim;

use std::sync::Arc;

use emoe_core::DeviceId;
use emoe_core::backend::cuda::{CudaBackend, CudaOptions};
use emoe_core::backend::{BackendError, BackendKind, DeviceBackend, SharedHandle};
use emoe_core::hmm::{Hmm, HmmError, RegionTag};

const D0: DeviceId = DeviceId::new(0, 0);
const D1: DeviceId = DeviceId::new(0, 1);

/// Report a skip where it is seen (the harness captures `println!`), or fail where a GPU is
/// required.
fn skip(reason: impl std::fmt::Display) {
    assert!(
        std::env::var_os("EMOE_REQUIRE_GPU").is_none_or(|v| v != "1"),
        "a GPU is required (EMOE_REQUIRE_GPU=1): {reason}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {reason}");
}

/// The backend on the real driver with two logical devices per GPU, or `None` after printing
/// why the test skips.
fn open() -> Option<CudaBackend> {
    let opts = CudaOptions {
        logical_per_gpu: 2,
        ..CudaOptions::default()
    };
    match CudaBackend::open(&opts) {
        Ok(b) if b.devices().len() >= 2 => Some(b),
        Ok(_) => {
            skip("libcuda.so.1 loaded but reports no GPU");
            None
        }
        Err(e @ BackendError::LibraryMissing { .. }) => {
            skip(&e);
            None
        }
        Err(e @ BackendError::Driver { api: "cuInit", .. }) => {
            skip(format!("no usable GPU: {e}"));
            None
        }
        Err(e) => panic!("opening the cuda backend failed: {e}"),
    }
}

/// The backend on the shim's two GPUs, two logical devices each.
fn open_shim() -> CudaBackend {
    let opts = CudaOptions {
        library: Some(shim::cuda().to_path_buf()),
        nvml_library: Some(shim::cuda().to_path_buf()),
        logical_per_gpu: 2,
        ..CudaOptions::default()
    };
    CudaBackend::open(&opts).expect("open the cuda backend on the shim")
}

fn pattern(seed: u8, n: u64) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 16) as u8)
        .collect()
}

/// Read `n` bytes at device address `va` (through that mapping) with `cuMemcpyDtoH`.
fn read_va(b: &CudaBackend, va: u64, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    b.driver().enter_device(0).unwrap();
    // SAFETY: `va..va+n` lies in a mapping of this backend (the callers read mapped slots).
    unsafe { b.driver().cuda().dtoh(&mut out, va).unwrap() };
    out
}

#[test]
fn missing_driver_is_named_with_its_variable() {
    let e = CudaBackend::open(&CudaOptions {
        library: Some("/nonexistent/libcuda.so.1".into()),
        ..CudaOptions::default()
    })
    .unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, BackendError::LibraryMissing { .. }), "{text}");
    assert!(text.contains("cannot load libcuda.so.1"), "{text}");
    assert!(text.contains("/nonexistent/libcuda.so.1"), "{text}");
    assert!(text.contains("EMOE_CUDA_LIB"), "{text}");
}

#[test]
fn gpu_hmm_round_trip() {
    if let Some(b) = open() {
        hmm_round_trip(b);
    }
}

#[test]
fn gpu_export_and_import_share_the_same_memory() {
    if let Some(b) = open() {
        export_import(b);
    }
}

#[test]
fn gpu_driver_rules_come_back_named() {
    if let Some(b) = open() {
        driver_rules(b);
    }
}

#[test]
fn gpu_pool_serves_allocations_without_the_driver() {
    if let Some(b) = open() {
        pool(b);
    }
}

#[test]
fn shim_hmm_round_trip() {
    hmm_round_trip(open_shim());
}

#[test]
fn shim_export_and_import_share_the_same_memory() {
    export_import(open_shim());
}

#[test]
fn shim_driver_rules_come_back_named() {
    driver_rules(open_shim());
}

#[test]
fn shim_pool_serves_allocations_without_the_driver() {
    pool(open_shim());
}

#[test]
fn shim_devices_peers_and_telemetry() {
    let b = open_shim();
    let devs = b.devices();
    assert_eq!(devs.len(), 4, "two GPUs, two logical devices each");
    assert_eq!(devs[3].name, "Shim GPU 1 (logical 2/2 of GPU 1)");
    assert_eq!(devs[0].capacity, 512 << 20);
    assert_eq!(b.driver().gpu_ordinal(3), 1);
    // GPU 0 to GPU 1: the peer path, granted by cuMemSetAccess on both GPUs.
    let g = devs[0].granularity;
    let (src, dst) = (
        b.alloc_physical(D0, g).unwrap(),
        b.alloc_physical(DeviceId::new(0, 3), g).unwrap(),
    );
    let data = pattern(4, g);
    b.write(src, 0, &data).unwrap();
    b.copy(src, 0, dst, 0, g).unwrap();
    assert_eq!(
        b.checksum(dst, 0, g).unwrap(),
        xxhash_rust::xxh3::xxh3_64(&data)
    );
    let t = b.telemetry(DeviceId::new(0, 2)).unwrap().unwrap();
    assert_eq!(t.source, "nvml (whole GPU)");
    assert_eq!((t.temperature_c, t.power_mw), (Some(51), Some(87_000)));
    assert_eq!(
        (t.utilization_pct, t.memory_utilization_pct),
        (Some(33), Some(21))
    );
    assert_eq!(t.memory_used, Some(g), "one allocation on GPU 1");
    b.free_physical(src).unwrap();
    b.free_physical(dst).unwrap();
}

/// The pre-allocated pool: entries are device memory made and mapped ahead, handed out by
/// device and size, and copies into them land.
fn pool(b: CudaBackend) {
    let g = b.devices()[0].granularity;
    assert_eq!(b.prefault(D1, &[g, g, 2 * g]).unwrap(), 3);
    assert_eq!(b.pooled_bytes(), 4 * g);
    // Another device or size is not served from D1's pool.
    let other = b.alloc_physical(D0, g).unwrap();
    let odd = b.alloc_physical(D1, 3 * g).unwrap();
    assert_eq!(b.pooled_bytes(), 4 * g);
    let taken = b.alloc_physical(D1, g).unwrap();
    assert_eq!(b.pooled_bytes(), 3 * g);
    assert_eq!(b.handle_device(taken), Some(D1));
    // A pooled allocation is an ordinary one from here: copy into it, read it, map it, free it.
    let data = pattern(9, g);
    b.write(other, 0, &data).unwrap();
    b.copy(other, 0, taken, 0, g).unwrap();
    assert_eq!(
        b.checksum(taken, 0, g).unwrap(),
        xxhash_rust::xxh3::xxh3_64(&data)
    );
    let r = b.reserve(D1, g).unwrap();
    b.map(r, r.base, taken).unwrap();
    assert_eq!(read_va(&b, r.base, 64), data[..64]);
    b.unmap(r, r.base, g).unwrap();
    b.release(r).unwrap();
    for h in [other, odd, taken] {
        b.free_physical(h).unwrap();
    }
    // Refused entries leave the pool as it was.
    assert!(b.prefault(D1, &[g, 0]).is_err());
    assert_eq!(b.pooled_bytes(), 3 * g);
    // Pooled memory is outside the HMM's books, so a device's pool holds one step at most: a
    // new prefault replaces what D1's pool held and leaves D0's alone.
    assert_eq!(b.prefault(D0, &[g]).unwrap(), 1);
    assert_eq!(b.prefault(D1, &[2 * g]).unwrap(), 1);
    assert_eq!(b.pooled_bytes(), 3 * g);
    // What is still pooled goes back to the driver with the backend (Drop).
}

fn hmm_round_trip(b: CudaBackend) {
    let b = Arc::new(b);
    assert_eq!(b.kind(), BackendKind::Cuda);
    let g = b.devices()[0].granularity;
    assert!(
        b.devices()[0].name.contains("logical 1/2"),
        "{}",
        b.devices()[0].name
    );
    let mut h = Hmm::new(b.clone());

    let e0 = h.alloc(D0, 2 * g, RegionTag::expert(0, 0)).unwrap();
    let e1 = h.alloc(D0, 2 * g, RegionTag::expert(0, 1)).unwrap();
    let old = h.create_view("instance-old");
    let new = h.create_view("instance-new");
    let r_old = h.reserve(old, D0, &[2 * g]).unwrap();
    let r_new = h.reserve(new, D0, &[g, 2 * g]).unwrap();
    let kv = h.alloc(D0, g, RegionTag::kv(None)).unwrap();
    h.map(r_old, 0, e0).unwrap();
    h.map(r_new, 0, kv).unwrap();
    h.map(r_new, 1, e0).unwrap();
    assert_eq!(h.usage(D0).unwrap().used, 5 * g);

    // Zero copy: written through the old view, read through the new view's own address.
    let w = pattern(7, 2 * g);
    h.write_view_mut(r_old, 0, &w).unwrap();
    let new_base = h.reservation(r_new).unwrap().range.base;
    assert_eq!(read_va(&b, new_base + g, w.len()), w);
    assert_eq!(h.checksum(e0).unwrap(), xxhash_rust::xxh3::xxh3_64(&w));

    // Remap in place.
    let w1 = pattern(8, 2 * g);
    h.write(e1, 0, &w1).unwrap();
    assert_eq!(h.map(r_new, 1, e1).unwrap(), Some(e0));
    assert_eq!(read_va(&b, new_base + g, 64), w1[..64]);

    // Copy to the second logical device; checksums match.
    let remote = h.alloc(D1, 2 * g, RegionTag::expert(0, 1)).unwrap();
    h.copy(e1, remote).unwrap();
    assert_eq!(h.checksum(remote).unwrap(), h.checksum(e1).unwrap());

    assert_eq!(h.unmap(r_new, 1).unwrap(), e1);
    assert!(matches!(h.free(e0), Err(HmmError::InUse { .. })));
    h.drop_view(old).unwrap();
    h.drop_view(new).unwrap();
    for a in [e0, e1, kv, remote] {
        h.free(a).unwrap();
    }
    assert_eq!(h.usage(D0).unwrap().used, 0);

    let t = b.telemetry(D0).unwrap().unwrap();
    assert!(t.memory_total.is_some(), "{t:?}");
    println!("telemetry: {t:?}");
}

fn export_import(b: CudaBackend) {
    let g = b.devices()[0].granularity;
    let h = b.alloc_physical(D0, g).unwrap();
    b.write(h, 64, b"over an fd").unwrap();
    let shared = match b.export(h) {
        Ok(s) => s,
        Err(e @ BackendError::Unsupported { .. }) => {
            skip(&e);
            return;
        }
        Err(e) => panic!("export failed: {e}"),
    };
    assert!(matches!(shared, SharedHandle::Fd(_)));
    let imported = b.import(D0, shared, g).unwrap();
    let mut out = [0u8; 10];
    b.read(imported, 64, &mut out).unwrap();
    assert_eq!(&out, b"over an fd");
    b.write(imported, 0, b"back").unwrap();
    let mut out = [0u8; 4];
    b.read(h, 0, &mut out).unwrap();
    assert_eq!(&out, b"back");
    b.free_physical(imported).unwrap();
    b.free_physical(h).unwrap();
    let e = b.import(D0, SharedHandle::Token(7), g).unwrap_err();
    assert!(matches!(e, BackendError::Unsupported { .. }), "{e}");
}

fn driver_rules(b: CudaBackend) {
    let g = b.devices()[0].granularity;
    let e = b.alloc_physical(D0, g + 4096).unwrap_err();
    let BackendError::Driver { name, .. } = &e else {
        panic!("expected a driver error, got {e:?}");
    };
    assert_eq!(name, "CUDA_ERROR_INVALID_VALUE", "{e}");
    let r = b.reserve(D0, 2 * g).unwrap();
    let a = b.alloc_physical(D0, 2 * g).unwrap();
    b.map(r, r.base, a).unwrap();
    let e = b.unmap(r, r.base + g, g).unwrap_err();
    assert!(
        matches!(e, BackendError::Unsupported { op: "unmap", .. }),
        "{e}"
    );
    b.unmap(r, r.base, 2 * g).unwrap();
    b.release(r).unwrap();
    b.free_physical(a).unwrap();
}
