//! Helpers for the tests of the `ascend` backend on the shim.

use emoe_core::DeviceId;
use emoe_core::backend::BackendError;
use emoe_core::backend::ascend::{AscendBackend, AscendOptions};

pub const D0: DeviceId = DeviceId::new(0, 0);
pub const D1: DeviceId = DeviceId::new(0, 1);
pub const MIB: u64 = 1 << 20;
/// The shim's default granularity (as real HBM with 2 MiB pages).
pub const G: u64 = 2 * MIB;

pub fn open() -> AscendBackend {
    open_with(AscendOptions::default())
}

pub fn open_with(mut opts: AscendOptions) -> AscendBackend {
    opts.library = Some(super::library().to_path_buf());
    if !opts.no_dcmi {
        opts.dcmi_library = Some(super::library().to_path_buf());
    }
    AscendBackend::open(&opts).expect("open the ascend backend on the shim")
}

pub fn pattern(seed: u8, n: u64) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// Read `n` bytes at device address `va` with `aclrtMemcpy`, i.e. through that mapping.
pub fn read_va(b: &AscendBackend, device: i32, va: u64, n: usize) -> Result<Vec<u8>, BackendError> {
    let mut out = vec![0u8; n];
    b.acl().use_device(device)?;
    // SAFETY: `out` is a live host buffer of `n` bytes; the shim validates `va` and reports an
    // unmapped address as an error instead of touching it.
    unsafe { b.acl().memcpy_d2h(&mut out, va)? };
    Ok(out)
}

/// The driver error's name and message, or a panic naming what came back instead.
pub fn driver_error(e: &BackendError) -> (&str, &str) {
    match e {
        BackendError::Driver { name, message, .. } => (name, message),
        other => panic!("expected a driver error, got {other:?}"),
    }
}
