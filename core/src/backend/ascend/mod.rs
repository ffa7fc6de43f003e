//! The `ascend` backend: Huawei Ascend NPUs through AscendCL (`libascendcl.so`), loaded at run
//! time, never linked; telemetry through DCMI (`libdcmi.so`).
//!
//! Physical allocations are `aclrtMallocPhysical` handles of 2 MiB-page HBM
//! (`ACL_HBM_MEM_HUGE`, as torch_npu's expandable segments use); reservations are
//! `aclrtReserveMemAddress` ranges; mapping is `aclrtMapMem` of a whole handle at offset 0 plus
//! `aclrtMemSetAccess`. Cross-process sharing is a `u64` shareable handle with the importer's
//! PID on a whitelist. Device copies are `aclrtMemcpyAsync` on a per-device stream, peer access
//! enabled at open where the driver allows it.
//!
//! Without an NPU, `core/tests/shim/ascend_shim.c` stands in for both libraries over host memory
//! and enforces the documented rules, so the whole path runs in the test suite.

mod api;
pub mod dcmi;
pub mod error;
pub mod ffi;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use api::{ACL_ENV, ACL_LIBRARY, Acl, AclMemHandle};
pub use dcmi::{DCMI_ENV, DCMI_LIBRARY, Dcmi};

use self::ffi::{AclrtMemAttr, AclrtPhysicalMemProp, AclrtStream};
use super::vmm::{VmmBackend, VmmDriver};
use super::{
    BackendError, BackendKind, BackendResult, DeviceInfo, DeviceTelemetry, PhysHandle, SharedHandle,
};
use crate::device::DeviceId;

/// The Ascend backend: the shared VMM bookkeeping over [`AclDriver`].
pub type AscendBackend = VmmBackend<AclDriver>;

/// How to open the Ascend backend.
#[derive(Clone, Debug, Default)]
pub struct AscendOptions {
    /// Node id for the `node/index` device names.
    pub node: u32,
    /// `libascendcl.so` to load; else `EMOE_ASCENDCL_LIB`, else the CANN install locations.
    pub library: Option<PathBuf>,
    /// `libdcmi.so` to load; else `EMOE_DCMI_LIB`, else the driver locations.
    pub dcmi_library: Option<PathBuf>,
    /// AscendCL device ids to expose, in order; `None` exposes all.
    pub devices: Option<Vec<i32>>,
    /// Do not load DCMI; telemetry then comes from AscendCL's own queries.
    pub no_dcmi: bool,
    /// Report at most this many bytes per device to the HMM (headroom for other users of the
    /// NPU, or small capacities in tests); `None` reports all of the HBM.
    pub max_capacity: Option<u64>,
}

/// 2 MiB pages, and the reservation flag that goes with them: torch_npu passes 1 for HUGE
/// memory, newer docs say "reserved, 0"; which a given CANN requires is UNCONFIRMED (ffi.md
/// A.4), so a parameter error with 1 is retried once with 0 and the working value kept.
const MEM_ATTR: AclrtMemAttr = AclrtMemAttr::HBM_MEM_HUGE;
const RESERVE_FLAGS: u64 = 1;
/// On-chip device-to-device copies need 64-byte aligned ends (`aclrtMemcpyAsync` comment).
const D2D_ALIGN: u64 = 64;
/// Host bounce buffer size for copies the device cannot do directly.
const BOUNCE: usize = 8 << 20;

struct Stream(AclrtStream);
// SAFETY: a stream is an opaque AscendCL token; it is used by one thread at a time (behind a
// Mutex) after binding the stream's device to that thread.
unsafe impl Send for Stream {}

/// The AscendCL half of [`AscendBackend`].
pub struct AclDriver {
    acl: Acl,
    dcmi: Result<Dcmi, String>,
    ids: Vec<i32>,
    devices: Vec<DeviceInfo>,
    streams: Vec<Mutex<Stream>>,
    /// `peer[a][b]`: device a may access device b's memory directly.
    peer: Vec<Vec<bool>>,
    /// The `aclrtReserveMemAddress` flags this CANN accepts (see `RESERVE_FLAGS`).
    reserve_flags: AtomicU64,
}

impl std::fmt::Debug for AclDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AclDriver")
            .field("acl", &self.acl)
            .field("ids", &self.ids)
            .field("dcmi", &self.dcmi.as_ref().map(|d| d.path()))
            .finish_non_exhaustive()
    }
}

impl AclDriver {
    /// Load AscendCL, initialise it, and describe the devices.
    pub fn open(opts: &AscendOptions) -> BackendResult<Self> {
        let acl = Acl::open(opts.library.as_deref())?;
        acl.init()?;
        let count = acl.device_count()?;
        let ids: Vec<i32> = match &opts.devices {
            Some(ids) => ids.clone(),
            None => (0..count as i32).collect(),
        };
        let dcmi = if opts.no_dcmi {
            Err("disabled by the caller".to_string())
        } else {
            Dcmi::open(opts.dcmi_library.as_deref()).map_err(|e| e.to_string())
        };
        let soc = acl.soc_name();
        let mut devices = Vec::with_capacity(ids.len());
        let mut streams = Vec::with_capacity(ids.len());
        for (index, &id) in ids.iter().enumerate() {
            acl.use_device(id)?;
            let (_, total) = acl.mem_info(AclrtMemAttr::HBM_MEM)?;
            let granularity = acl.granularity(&prop(id, MEM_ATTR))?;
            let capacity = capped(total, opts.max_capacity, granularity);
            let name = match &soc {
                Some(s) => format!("{s} (npu {id})"),
                None => format!("Ascend NPU {id}"),
            };
            devices.push(DeviceInfo {
                id: DeviceId::new(opts.node, index as u32),
                name,
                capacity,
                granularity,
            });
            streams.push(Mutex::new(Stream(acl.create_stream()?)));
        }
        let mut peer = vec![vec![false; ids.len()]; ids.len()];
        for (a, &ia) in ids.iter().enumerate() {
            for (b, &ib) in ids.iter().enumerate() {
                // torch_npu: bind the source device, then enable access to the destination.
                // A refusal only costs speed: such copies bounce through the host.
                peer[a][b] = a != b
                    && acl.can_access_peer(ia, ib).unwrap_or(false)
                    && acl.use_device(ia).is_ok()
                    && acl.enable_peer_access(ib).is_ok();
            }
        }
        Ok(Self {
            acl,
            dcmi,
            ids,
            devices,
            streams,
            peer,
            reserve_flags: AtomicU64::new(RESERVE_FLAGS),
        })
    }

    /// The loaded AscendCL, for calls the backend does not wrap (and for tests of the rules).
    pub fn acl(&self) -> &Acl {
        &self.acl
    }

    /// DCMI, or why it is not loaded.
    pub fn dcmi(&self) -> Result<&Dcmi, &str> {
        self.dcmi.as_ref().map_err(String::as_str)
    }

    /// The AscendCL device id of device index `dev`.
    pub fn acl_device(&self, dev: usize) -> i32 {
        self.ids[dev]
    }

    /// Whether copies from device index `a` to `b` go device to device.
    pub fn peer_enabled(&self, a: usize, b: usize) -> bool {
        self.peer[a][b]
    }

    /// Copy through host memory, for copies the device cannot do directly.
    fn bounce(
        &self,
        src_dev: usize,
        src: u64,
        dst_dev: usize,
        dst: u64,
        len: u64,
    ) -> BackendResult<()> {
        let mut buf = vec![0u8; BOUNCE.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = buf.len().min((len - done) as usize);
            self.read(src_dev, src + done, &mut buf[..n])?;
            self.write(dst_dev, dst + done, &buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}

/// `ACL_ERROR_INVALID_PARAM` or `ACL_ERROR_RT_PARAM_INVALID`.
fn is_param_error(code: i64) -> bool {
    code == 100000 || code == 107000
}

/// `total` limited to `max`, whole granules only.
pub(crate) fn capped(total: u64, max: Option<u64>, granularity: u64) -> u64 {
    let c = max.map_or(total, |m| m.min(total));
    c / granularity.max(1) * granularity.max(1)
}

fn prop(id: i32, attr: AclrtMemAttr) -> AclrtPhysicalMemProp {
    AclrtPhysicalMemProp::device(id as u32, attr)
}

impl Drop for AclDriver {
    fn drop(&mut self) {
        // Streams only. aclFinalize is process-wide and other backends may still use AscendCL;
        // the runtime is torn down at exit.
        for (s, &id) in self.streams.iter().zip(&self.ids) {
            let s = s.lock().unwrap_or_else(|e| e.into_inner());
            if self.acl.use_device(id).is_ok() {
                // SAFETY: the stream came from `create_stream` and nothing uses it any more.
                let _ = unsafe { self.acl.destroy_stream(s.0) };
            }
        }
    }
}

impl VmmDriver for AclDriver {
    type Raw = AclMemHandle;

    fn kind(&self) -> BackendKind {
        BackendKind::Ascend
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn alloc(&self, dev: usize, size: u64) -> BackendResult<AclMemHandle> {
        let id = self.ids[dev];
        self.acl.use_device(id)?;
        self.acl.malloc_physical(size, &prop(id, MEM_ATTR))
    }

    fn free(&self, dev: usize, raw: AclMemHandle) -> BackendResult<()> {
        self.acl.use_device(self.ids[dev])?;
        // SAFETY: `raw` is a live handle of this library; the bookkeeping forgets it on success.
        unsafe { self.acl.free_physical(raw) }
    }

    fn reserve(&self, dev: usize, size: u64) -> BackendResult<u64> {
        self.acl.use_device(self.ids[dev])?;
        let flags = self.reserve_flags.load(Ordering::Relaxed);
        match self.acl.reserve(size, flags) {
            Err(BackendError::Driver { code, .. }) if flags != 0 && is_param_error(code) => {
                let va = self.acl.reserve(size, 0)?;
                self.reserve_flags.store(0, Ordering::Relaxed);
                Ok(va)
            }
            r => r,
        }
    }

    fn release(&self, dev: usize, base: u64, _size: u64) -> BackendResult<()> {
        self.acl.use_device(self.ids[dev])?;
        // SAFETY: `base` is a reservation of this library whose mappings are gone.
        unsafe { self.acl.release(base) }
    }

    fn map(
        &self,
        dev: usize,
        va: u64,
        size: u64,
        raw: AclMemHandle,
        _raw_dev: usize,
    ) -> BackendResult<()> {
        let id = self.ids[dev];
        self.acl.use_device(id)?;
        // SAFETY: `va` lies in a reservation of this library and `raw` is live.
        unsafe {
            self.acl.map_mem(va, size, 0, raw)?;
            if let Err(e) = self.acl.set_access(va, size, id) {
                let _ = self.acl.unmap_mem(va);
                return Err(e);
            }
        }
        Ok(())
    }

    fn unmap(&self, dev: usize, va: u64, _size: u64) -> BackendResult<()> {
        self.acl.use_device(self.ids[dev])?;
        // SAFETY: `va` starts a mapping of this library. torch_npu synchronises the device first
        // because unmap does not wait for queued work; our copies are synchronous, so nothing
        // of ours is in flight here.
        unsafe { self.acl.unmap_mem(va) }
    }

    fn write(&self, dev: usize, va: u64, data: &[u8]) -> BackendResult<()> {
        self.acl.use_device(self.ids[dev])?;
        // SAFETY: `va..va+len` lies inside the home mapping (bounds checked by the caller).
        unsafe { self.acl.memcpy_h2d(va, data) }
    }

    fn read(&self, dev: usize, va: u64, out: &mut [u8]) -> BackendResult<()> {
        self.acl.use_device(self.ids[dev])?;
        // SAFETY: `va..va+len` lies inside the home mapping (bounds checked by the caller).
        unsafe { self.acl.memcpy_d2h(out, va) }
    }

    fn copy(
        &self,
        src_dev: usize,
        src: u64,
        dst_dev: usize,
        dst: u64,
        len: u64,
    ) -> BackendResult<()> {
        let direct = (src_dev == dst_dev || self.peer[src_dev][dst_dev])
            && src.is_multiple_of(D2D_ALIGN)
            && dst.is_multiple_of(D2D_ALIGN);
        if !direct {
            return self.bounce(src_dev, src, dst_dev, dst, len);
        }
        self.acl.use_device(self.ids[src_dev])?;
        let stream = self.streams[src_dev]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // SAFETY: both ranges lie inside home mappings (checked by the caller); the stream is
        // this device's and we hold its lock.
        unsafe { self.acl.memcpy_d2d_sync(dst, src, len, stream.0) }
    }

    /// Export with the PID whitelist on, whitelisting this process so a same-process import
    /// works; other processes are added with [`AscendBackend::allow_pids`].
    fn export(&self, dev: usize, raw: AclMemHandle) -> BackendResult<SharedHandle> {
        self.acl.use_device(self.ids[dev])?;
        // SAFETY: `raw` is a live handle of this library.
        let token = unsafe {
            self.acl
                .export_shareable(raw, ffi::ACL_RT_VMM_EXPORT_FLAG_DEFAULT)?
        };
        let me = self.acl.bare_tgid()?;
        self.acl.set_pids(token, &[me])?;
        Ok(SharedHandle::Token(token))
    }

    fn import(&self, dev: usize, shared: SharedHandle, _size: u64) -> BackendResult<AclMemHandle> {
        let SharedHandle::Token(token) = shared else {
            return Err(BackendError::Unsupported {
                backend: BackendKind::Ascend,
                op: "import",
                why: "AscendCL shares physical memory by a u64 token, not a file descriptor".into(),
            });
        };
        let id = self.ids[dev];
        self.acl.use_device(id)?;
        self.acl.import_shareable(token, id)
    }

    /// One stream per NPU.
    fn copy_queues(&self) -> Option<usize> {
        Some(self.streams.len())
    }

    fn telemetry(&self, dev: usize) -> BackendResult<Option<DeviceTelemetry>> {
        let id = self.ids[dev];
        if let Ok(d) = &self.dcmi
            && let Some(chip) = d.chip(id)
        {
            return Ok(Some(d.read(chip)));
        }
        // Without DCMI: AscendCL's own memory and utilization queries.
        self.acl.use_device(id)?;
        let (free, total) = self.acl.mem_info(AclrtMemAttr::HBM_MEM)?;
        let util = self.acl.utilization(id);
        Ok(Some(DeviceTelemetry {
            source: "acl".into(),
            memory_total: Some(total),
            memory_used: Some(total.saturating_sub(free)),
            utilization_pct: util.and_then(|u| u32::try_from(u.0).ok()),
            memory_utilization_pct: util.and_then(|u| u32::try_from(u.1).ok()),
            ..DeviceTelemetry::default()
        }))
    }
}

impl VmmBackend<AclDriver> {
    /// Open the Ascend backend. Fails with [`BackendError::LibraryMissing`] (naming the library,
    /// the places searched and `EMOE_ASCENDCL_LIB`) when AscendCL cannot be loaded.
    pub fn open(opts: &AscendOptions) -> BackendResult<Self> {
        Ok(Self::new(AclDriver::open(opts)?))
    }

    /// The loaded AscendCL.
    pub fn acl(&self) -> &Acl {
        self.driver().acl()
    }

    /// This process's bare TGID, which an exporter must whitelist before we can import.
    pub fn bare_tgid(&self) -> BackendResult<i32> {
        self.acl().bare_tgid()
    }

    /// Export `handle` whitelisting exactly `pids` (bare TGIDs from the importers'
    /// [`Self::bare_tgid`]); the token travels as a plain number.
    pub fn export_for(&self, handle: PhysHandle, pids: &[i32]) -> BackendResult<u64> {
        let raw = self
            .raw_handle(handle)
            .ok_or(BackendError::UnknownHandle(handle.0))?;
        let dev = self
            .handle_index(handle)
            .ok_or(BackendError::UnknownHandle(handle.0))?;
        self.acl().use_device(self.driver().acl_device(dev))?;
        // SAFETY: `raw` is a live handle of this library.
        let token = unsafe {
            self.acl()
                .export_shareable(raw, ffi::ACL_RT_VMM_EXPORT_FLAG_DEFAULT)?
        };
        if !pids.is_empty() {
            self.acl().set_pids(token, pids)?;
        }
        Ok(token)
    }

    /// Add `pids` to the whitelist of an exported `token`.
    pub fn allow_pids(&self, token: u64, pids: &[i32]) -> BackendResult<()> {
        self.acl().set_pids(token, pids)
    }
}

/// What a probe for `--backend auto` found: the library path and the device count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub path: String,
    pub devices: u32,
}

/// Whether AscendCL loads, initialises and sees at least one device. The library stays loaded.
pub fn probe(library: Option<&Path>) -> BackendResult<Probe> {
    let acl = Acl::open(library)?;
    acl.init()?;
    let devices = acl.device_count()?;
    Ok(Probe {
        path: acl.path().to_string(),
        devices,
    })
}
