//! Each AscendCL VMM rule the shim enforces (ffi.md A.4, A.5), violated through the `ascend`
//! backend: the violation comes back as the named `ACL_ERROR_*` driver error carrying the
//! driver's `aclGetRecentErrMsg` text. Also the backend's own refusals and `--backend auto`.

mod shim;

use std::sync::Arc;

use emoe_core::backend::select::{ProbeLibraries, probe_auto_with};
use emoe_core::backend::{BackendError, BackendKind, DeviceBackend, PhysHandle, SharedHandle};
use emoe_core::hmm::{Hmm, HmmError, RegionTag};
use shim::ascend::*;

#[test]
fn rule_sizes_are_multiples_of_the_granularity() {
    let b = open();
    let e = b.alloc_physical(D0, G + 4096).unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_PARAM_INVALID");
    assert!(msg.contains("not a multiple of the granularity"), "{msg}");
    assert!(
        e.to_string()
            .contains("aclrtMallocPhysical returned ACL_ERROR_RT_PARAM_INVALID (107000)"),
        "{e}"
    );

    let e = b.reserve(D0, MIB).unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_PARAM_INVALID");
    assert!(msg.contains("aclrtReserveMemAddress"), "{msg}");
}

#[test]
fn rule_map_addresses_are_granule_aligned() {
    let b = open();
    let h = b.alloc_physical(D0, G).unwrap();
    let r = b.reserve(D0, 2 * G).unwrap();
    let e = b.map(r, r.base + 4096, h).unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_ADDR_UNALIGNED");
    assert!(msg.contains("not aligned"), "{msg}");
    b.release(r).unwrap();
    b.free_physical(h).unwrap();
}

#[test]
fn rule_map_takes_the_whole_handle_at_offset_zero() {
    let b = open();
    let h = b.alloc_physical(D0, 2 * G).unwrap();
    let raw = b.raw_handle(h).unwrap();
    let r = b.reserve(D0, 2 * G).unwrap();
    b.acl().use_device(0).unwrap();
    // SAFETY: the address lies in our reservation and the handle is live; the shim refuses.
    let e = unsafe { b.acl().map_mem(r.base, G, G, raw) }.unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_PARAM_INVALID");
    assert!(msg.contains("offset must be 0"), "{msg}");
    // SAFETY: as above.
    let e = unsafe { b.acl().map_mem(r.base, G, 0, raw) }.unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_PARAM_INVALID");
    assert!(
        msg.contains("must equal the whole allocation size"),
        "{msg}"
    );
    b.release(r).unwrap();
    b.free_physical(h).unwrap();
}

#[test]
fn rule_unmap_by_start_address_only() {
    let b = open();
    let h = b.alloc_physical(D0, 2 * G).unwrap();
    let r = b.reserve(D0, 2 * G).unwrap();
    b.map(r, r.base, h).unwrap();
    b.acl().use_device(0).unwrap();
    // SAFETY: the address lies in our reservation; the shim refuses a non-start address.
    let e = unsafe { b.acl().unmap_mem(r.base + G) }.unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_PARAM_INVALID");
    assert!(msg.contains("not the start of a mapping"), "{msg}");
    // The backend refuses a range that cuts a mapping before asking the driver.
    let e = b.unmap(r, r.base + G, G).unwrap_err();
    assert!(
        matches!(e, BackendError::Unsupported { op: "unmap", .. }),
        "{e}"
    );
    b.unmap(r, r.base, 2 * G).unwrap();
    b.release(r).unwrap();
    b.free_physical(h).unwrap();
}

#[test]
fn rule_import_needs_the_pid_on_the_whitelist() {
    let b = open();
    let h = b.alloc_physical(D0, G).unwrap();
    // Whitelist only PID 1: this process may not import.
    let token = b.export_for(h, &[1]).unwrap();
    let e = b.import(D0, SharedHandle::Token(token), G).unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_NO_PERMISSION");
    assert!(msg.contains("whitelist"), "{msg}");
    b.allow_pids(token, &[b.bare_tgid().unwrap()]).unwrap();
    let imported = b.import(D0, SharedHandle::Token(token), G).unwrap();
    b.free_physical(imported).unwrap();
    b.free_physical(h).unwrap();
}

#[test]
fn rule_one_reservation_never_mixes_devices() {
    let b = open();
    let h0 = b.alloc_physical(D0, G).unwrap();
    let h1 = b.alloc_physical(D1, G).unwrap();
    let r = b.reserve(D0, 2 * G).unwrap();
    b.map(r, r.base, h0).unwrap();
    let e = b.map(r, r.base + G, h1).unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_PARAM_INVALID");
    assert!(msg.contains("cannot mix in device 1"), "{msg}");
    // The HMM refuses the same before reaching the driver.
    let mut hmm = Hmm::new(Arc::new(open()));
    let v = hmm.create_view("v");
    let res = hmm.reserve(v, D0, &[G]).unwrap();
    let a1 = hmm.alloc(D1, G, RegionTag::kv(None)).unwrap();
    assert!(matches!(
        hmm.map(res, 0, a1),
        Err(HmmError::DeviceMismatch { .. })
    ));
    b.unmap(r, r.base, G).unwrap();
    b.release(r).unwrap();
    b.free_physical(h0).unwrap();
    b.free_physical(h1).unwrap();
}

#[test]
fn rule_device_memory_is_finite() {
    let b = open();
    let e = b.alloc_physical(D0, 8192 * MIB).unwrap_err();
    let (name, msg) = driver_error(&e);
    assert_eq!(name, "ACL_ERROR_RT_MEMORY_ALLOCATION");
    assert!(msg.contains("out of memory"), "{msg}");
    // The HMM refuses first, with its own account.
    let mut h = Hmm::new(Arc::new(open()));
    let e = h.alloc(D0, 8192 * MIB, RegionTag::kv(None)).unwrap_err();
    assert!(matches!(e, HmmError::OutOfMemory { .. }), "{e}");
}

#[test]
fn unknown_handles_and_ranges_are_named() {
    let b = open();
    assert!(matches!(
        b.free_physical(PhysHandle(999_999)),
        Err(BackendError::UnknownHandle(999_999))
    ));
    let r = b.reserve(D0, G).unwrap();
    let h = b.alloc_physical(D0, G).unwrap();
    let e = b.map(r, r.base + G, h).unwrap_err();
    assert!(matches!(e, BackendError::NotReserved { .. }), "{e}");
    let wrong = emoe_core::backend::VirtRange { device: D1, ..r };
    assert!(matches!(
        b.release(wrong),
        Err(BackendError::NotReserved { .. })
    ));
    b.release(r).unwrap();
    b.free_physical(h).unwrap();
}

#[test]
fn auto_picks_ascend_when_acl_loads() {
    let pick = probe_auto_with(&ProbeLibraries {
        ascendcl: Some(shim::library().to_path_buf()),
        cuda: Some("/nonexistent/libcuda.so.1".into()),
    });
    assert_eq!(pick.kind, BackendKind::Ascend);
    assert!(pick.reason.contains("2 device(s)"), "{pick}");
    assert!(pick.reason.contains("libascendcl_shim.so"), "{pick}");
}
