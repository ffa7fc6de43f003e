//! Link bandwidths for the planner's time model. The host backend's "P2P" path is a memcpy
//! between memfd mappings, so its bandwidth is measured on this machine, now; the modeled
//! backend uses assumed figures that the operator can override.

use std::time::{Duration, Instant};

use emoe_core::DeviceId;
use emoe_core::backend::{BackendKind, BackendResult, DeviceBackend};
use emoe_core::plan::Topology;

/// Assumed intra- and inter-node bandwidths for modeled and vendor backends (bytes/s) until
/// measured: a conservative figure for HCCS/NVLink-class links and for 200 Gb/s RDMA.
pub const ASSUMED_INTRA_BW: f64 = 100e9;
pub const ASSUMED_INTER_BW: f64 = 25e9;

/// Best of a few 64 MiB memcpys, in bytes/s: the host backend's device-to-device rate.
pub fn measure_memcpy() -> f64 {
    const LEN: usize = 64 << 20;
    let src = vec![0x5au8; LEN];
    let mut dst = vec![0u8; LEN];
    dst.copy_from_slice(&src); // fault the pages in before timing
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        best = best.min(t.elapsed());
    }
    LEN as f64 / best.as_secs_f64().max(1e-9)
}

/// Best of a few 64 MiB device-to-device copies through the backend's own copy path (the one
/// the executor's P2P jobs take), from `src` to `dst`, in bytes copied per second. For vendor
/// backends this is the figure a scaling step's copies are bound by; host memcpy says nothing
/// about a GPU's copy engines.
pub fn measure_backend_copy(
    backend: &dyn DeviceBackend,
    src: DeviceId,
    dst: DeviceId,
) -> BackendResult<f64> {
    let granule = backend
        .devices()
        .iter()
        .find(|d| d.id == src)
        .map_or(1, |d| d.granularity.max(1));
    let len = (64u64 << 20).div_ceil(granule) * granule;
    let a = backend.alloc_physical(src, len)?;
    let b = match backend.alloc_physical(dst, len) {
        Ok(b) => b,
        Err(e) => {
            let _ = backend.free_physical(a);
            return Err(e);
        }
    };
    let timed = (|| {
        backend.copy(a, 0, b, 0, len)?; // warm-up: first-touch and lazy driver setup
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            backend.copy(a, 0, b, 0, len)?;
            best = best.min(t.elapsed());
        }
        Ok(best)
    })();
    let freed = backend.free_physical(a).and(backend.free_physical(b));
    let best = timed?;
    freed?;
    Ok(len as f64 / best.as_secs_f64().max(1e-9))
}

/// The topology the planner uses for a backend, and where its numbers came from.
pub fn topology_for(
    kind: BackendKind,
    intra: Option<f64>,
    inter: Option<f64>,
) -> (Topology, String) {
    match (kind, intra) {
        (_, Some(bw)) => (
            Topology::uniform(bw, inter.unwrap_or(bw)),
            "given with --intra-bw".into(),
        ),
        (BackendKind::Host, None) => {
            let bw = measure_memcpy();
            (
                Topology::uniform(bw, inter.unwrap_or(bw)),
                format!("host memcpy measured now: {:.1} GB/s", bw / 1e9),
            )
        }
        (_, None) => (
            Topology::uniform(ASSUMED_INTRA_BW, inter.unwrap_or(ASSUMED_INTER_BW)),
            format!(
                "assumed: {:.0} GB/s intra-node, {:.0} GB/s inter-node (set --intra-bw/--inter-bw)",
                ASSUMED_INTRA_BW / 1e9,
                inter.unwrap_or(ASSUMED_INTER_BW) / 1e9
            ),
        ),
    }
}
