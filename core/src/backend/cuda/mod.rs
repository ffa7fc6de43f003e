//! The `cuda` backend: NVIDIA GPUs through the CUDA driver API (`libcuda.so.1`) and NVML
//! (`libnvidia-ml.so.1`), both loaded at run time, never linked.
//!
//! Physical allocations are `cuMemCreate` handles requesting POSIX-fd export; reservations are
//! `cuMemAddressReserve`; mapping is `cuMemMap` plus `cuMemSetAccess` for the owning GPU and
//! every GPU that can reach it peer to peer, so device-to-device copies between GPUs run on the
//! copy engines (`cuMemcpyDtoDAsync_v2`), with `cuMemcpyPeerAsync` where no peer path exists.
//!
//! Why our own `libloading` bindings and not `cudarc`: through 0.19.4, cudarc resolves every
//! symbol of its configured CUDA version eagerly with `expect`, so an older driver or a machine
//! without one panics the process (even `is_culib_present`; cudarc issues #422, #464, #512);
//! 0.19.5 is said to resolve lazily but that was not verified (ffi.md D.1). It also offers no
//! safe VMM wrappers, so we would call its raw `sys` functions anyway, and it needs a CUDA
//! version feature fixed at build time. About thirty symbols, resolved once at open with a named
//! error for any missing one, cost less than that dependency and its failure modes.
//!
//! Logical devices: `logical_per_gpu = N` exposes N devices per GPU, each with 1/N of its memory
//! as capacity (the HMM enforces it), named `… (logical k/N of GPU g)`. This lets the scaling
//! path (several devices, peer copies, remaps) run on a one-GPU machine; copies between logical
//! devices of one GPU are on-device copies and must be labelled as such in any measurement.

mod api;
pub mod ffi;
pub mod nvml;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use api::{CUDA_ENV, CUDA_LIBRARY, Cuda};
pub use nvml::{NVML_ENV, NVML_LIBRARY, Nvml};

use self::ffi::*;
use super::vmm::{VmmBackend, VmmDriver};
use super::{BackendError, BackendKind, BackendResult, DeviceInfo, DeviceTelemetry, SharedHandle};
use crate::device::DeviceId;

/// The CUDA backend: the shared VMM bookkeeping over [`CudaDriver`].
pub type CudaBackend = VmmBackend<CudaDriver>;

/// How to open the CUDA backend.
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// Node id for the `node/index` device names.
    pub node: u32,
    /// `libcuda.so.1` to load; else `EMOE_CUDA_LIB`, else the loader path and driver locations.
    pub library: Option<PathBuf>,
    /// `libnvidia-ml.so.1` to load; else `EMOE_NVML_LIB`, else the loader path.
    pub nvml_library: Option<PathBuf>,
    /// CUDA ordinals to use, in order; `None` uses all.
    pub gpus: Option<Vec<i32>>,
    /// Logical devices per GPU (0 and 1 both mean one).
    pub logical_per_gpu: u32,
    /// Do not load NVML; telemetry then comes from `cuMemGetInfo`.
    pub no_nvml: bool,
    /// Report at most this many bytes per (logical) device to the HMM; `None` reports the full
    /// share of the GPU.
    pub max_capacity: Option<u64>,
}

struct Gpu {
    ordinal: CUdevice,
    ctx: CUcontext,
    stream: Mutex<CUstream>,
    /// POSIX-fd export is supported (else allocations request no shareable type).
    fd_export: bool,
    /// Ordinals (GPU indices) that can access this GPU's memory directly.
    peers: Vec<usize>,
    nvml: Option<nvml::NvmlGpu>,
}

/// The CUDA-driver half of [`CudaBackend`].
pub struct CudaDriver {
    cuda: Cuda,
    nvml: Result<Nvml, String>,
    gpus: Vec<Gpu>,
    /// GPU index of each (logical) device.
    gpu_of: Vec<usize>,
    devices: Vec<DeviceInfo>,
}

// SAFETY: the raw pointers inside are CUDA contexts and streams: opaque driver tokens valid on
// any thread once made current there (we call `cuCtxSetCurrent` before every use); each stream
// is used by one thread at a time behind its Mutex.
unsafe impl Send for CudaDriver {}
// SAFETY: as for `Send`; shared access only reads the tokens.
unsafe impl Sync for CudaDriver {}

impl std::fmt::Debug for CudaDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDriver")
            .field("cuda", &self.cuda)
            .field(
                "gpus",
                &self.gpus.iter().map(|g| g.ordinal).collect::<Vec<_>>(),
            )
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

impl CudaDriver {
    /// Load the driver, initialise it, retain each GPU's primary context, describe the devices.
    pub fn open(opts: &CudaOptions) -> BackendResult<Self> {
        let cuda = Cuda::open(opts.library.as_deref())?;
        cuda.init()?;
        let ordinals: Vec<i32> = match &opts.gpus {
            Some(g) => g.clone(),
            None => (0..cuda.device_count()?).collect(),
        };
        let nvml = if opts.no_nvml {
            Err("disabled by the caller".to_string())
        } else {
            Nvml::open(opts.nvml_library.as_deref()).map_err(|e| e.to_string())
        };
        let per = opts.logical_per_gpu.max(1);
        let mut gpus = Vec::new();
        let mut gpu_of = Vec::new();
        let mut devices = Vec::new();
        for &ordinal in &ordinals {
            let dev = cuda.device(ordinal)?;
            let vmm =
                cuda.attribute(CUdeviceAttribute::VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev)?;
            if vmm == 0 {
                return Err(BackendError::Unsupported {
                    backend: BackendKind::Cuda,
                    op: "open",
                    why: format!("GPU {ordinal} does not support virtual memory management"),
                });
            }
            let fd_export = cuda
                .attribute(
                    CUdeviceAttribute::HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED,
                    dev,
                )
                .is_ok_and(|v| v != 0);
            let ctx = cuda.primary_ctx_retain(dev)?;
            // SAFETY: `ctx` was just retained.
            unsafe { cuda.set_current(ctx)? };
            let stream = cuda.stream_create()?;
            let granularity = cuda.granularity(&prop(dev, fd_export))?;
            let total = cuda.total_mem(dev)?;
            let name = cuda.device_name(dev)?;
            let nvml_gpu = match &nvml {
                Ok(n) => cuda.pci_bus_id(dev).and_then(|b| n.gpu(&b)).ok(),
                Err(_) => None,
            };
            let g = gpus.len();
            let slice =
                super::ascend::capped(total / u64::from(per), opts.max_capacity, granularity);
            for k in 0..per {
                let label = if per == 1 {
                    name.clone()
                } else {
                    format!("{name} (logical {}/{per} of GPU {ordinal})", k + 1)
                };
                devices.push(DeviceInfo {
                    id: DeviceId::new(opts.node, devices.len() as u32),
                    name: label,
                    capacity: slice,
                    granularity,
                });
                gpu_of.push(g);
            }
            gpus.push(Gpu {
                ordinal: dev,
                ctx,
                stream: Mutex::new(stream),
                fd_export,
                peers: Vec::new(),
                nvml: nvml_gpu,
            });
        }
        for a in 0..gpus.len() {
            let peers = (0..gpus.len())
                .filter(|&b| {
                    b != a
                        && cuda
                            .can_access_peer(gpus[b].ordinal, gpus[a].ordinal)
                            .unwrap_or(false)
                })
                .collect();
            gpus[a].peers = peers;
        }
        Ok(Self {
            cuda,
            nvml,
            gpus,
            gpu_of,
            devices,
        })
    }

    /// The loaded driver API, for calls the backend does not wrap.
    pub fn cuda(&self) -> &Cuda {
        &self.cuda
    }

    /// NVML, or why it is not loaded.
    pub fn nvml(&self) -> Result<&Nvml, &str> {
        self.nvml.as_ref().map_err(String::as_str)
    }

    /// Make device index `dev`'s GPU context current on the calling thread, for direct calls
    /// through [`Self::cuda`] (tests reading a view's address, benchmarks).
    pub fn enter_device(&self, dev: usize) -> BackendResult<()> {
        self.enter(dev).map(|_| ())
    }

    /// The CUDA ordinal of the GPU behind device index `dev`.
    pub fn gpu_ordinal(&self, dev: usize) -> i32 {
        self.gpus[self.gpu_of[dev]].ordinal
    }

    /// Make `dev`'s GPU context current on this thread and return the GPU.
    fn enter(&self, dev: usize) -> BackendResult<&Gpu> {
        let g = &self.gpus[self.gpu_of[dev]];
        // SAFETY: the context was retained at open and is released only in `Drop`.
        unsafe { self.cuda.set_current(g.ctx)? };
        Ok(g)
    }
}

fn prop(dev: CUdevice, fd_export: bool) -> CUmemAllocationProp {
    let handles = if fd_export {
        CUmemAllocationHandleType::POSIX_FILE_DESCRIPTOR
    } else {
        CUmemAllocationHandleType::NONE
    };
    CUmemAllocationProp::device(dev, handles)
}

impl Drop for CudaDriver {
    fn drop(&mut self) {
        for g in &self.gpus {
            // SAFETY: the context is still retained; the stream belongs to it and is unused now.
            unsafe {
                if self.cuda.set_current(g.ctx).is_ok() {
                    let s = *g.stream.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = self.cuda.stream_destroy(s);
                }
            }
            let _ = self.cuda.primary_ctx_release(g.ordinal);
        }
    }
}

impl VmmDriver for CudaDriver {
    type Raw = u64;

    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    fn alloc(&self, dev: usize, size: u64) -> BackendResult<u64> {
        let g = self.enter(dev)?;
        self.cuda.mem_create(size, &prop(g.ordinal, g.fd_export))
    }

    fn free(&self, dev: usize, raw: u64) -> BackendResult<()> {
        self.enter(dev)?;
        // SAFETY: `raw` is live and forgotten by the bookkeeping on success. CUDA keeps the
        // memory until its last mapping goes.
        unsafe { self.cuda.mem_release(raw) }
    }

    fn reserve(&self, dev: usize, size: u64) -> BackendResult<u64> {
        self.enter(dev)?;
        self.cuda
            .address_reserve(size, self.devices[dev].granularity)
    }

    fn release(&self, dev: usize, base: u64, size: u64) -> BackendResult<()> {
        self.enter(dev)?;
        // SAFETY: a whole reservation of ours with nothing mapped.
        unsafe { self.cuda.address_free(base, size) }
    }

    fn map(&self, dev: usize, va: u64, size: u64, raw: u64, raw_dev: usize) -> BackendResult<()> {
        self.enter(dev)?;
        let owner = &self.gpus[self.gpu_of[raw_dev]];
        let mut access = vec![CUmemAccessDesc::read_write(owner.ordinal)];
        access.extend(
            owner
                .peers
                .iter()
                .map(|&p| CUmemAccessDesc::read_write(self.gpus[p].ordinal)),
        );
        // SAFETY: `va` lies in our reservation and `raw` is live; the access list names GPUs
        // that exist.
        unsafe {
            self.cuda.mem_map(va, size, raw)?;
            if let Err(e) = self.cuda.set_access(va, size, &access) {
                let _ = self.cuda.mem_unmap(va, size);
                return Err(e);
            }
        }
        Ok(())
    }

    fn unmap(&self, dev: usize, va: u64, size: u64) -> BackendResult<()> {
        self.enter(dev)?;
        // SAFETY: exactly one mapping of ours; our copies are synchronous, so none is in flight.
        unsafe { self.cuda.mem_unmap(va, size) }
    }

    fn write(&self, dev: usize, va: u64, data: &[u8]) -> BackendResult<()> {
        self.enter(dev)?;
        // SAFETY: inside the home mapping (bounds checked by the caller).
        unsafe { self.cuda.htod(va, data) }
    }

    fn read(&self, dev: usize, va: u64, out: &mut [u8]) -> BackendResult<()> {
        self.enter(dev)?;
        // SAFETY: inside the home mapping (bounds checked by the caller).
        unsafe { self.cuda.dtoh(out, va) }
    }

    fn copy(
        &self,
        src_dev: usize,
        src: u64,
        dst_dev: usize,
        dst: u64,
        len: u64,
    ) -> BackendResult<()> {
        let (gs, gd) = (self.gpu_of[src_dev], self.gpu_of[dst_dev]);
        let g = self.enter(src_dev)?;
        let stream = g.stream.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: both ranges lie inside home mappings (checked by the caller); a mapping is
        // accessible from its owner GPU and the GPUs listed as its peers, so a direct copy on
        // the source GPU needs it listed among the destination's peers; the stream is this GPU's.
        unsafe {
            if gs == gd || self.gpus[gd].peers.contains(&gs) {
                self.cuda.dtod_async(dst, src, len, *stream)?;
            } else {
                let dctx = self.gpus[gd].ctx;
                self.cuda.peer_async(dst, dctx, src, g.ctx, len, *stream)?;
            }
            self.cuda.stream_synchronize(*stream)
        }
    }

    fn export(&self, dev: usize, raw: u64) -> BackendResult<SharedHandle> {
        let g = self.enter(dev)?;
        if !g.fd_export {
            return Err(BackendError::Unsupported {
                backend: BackendKind::Cuda,
                op: "export",
                why: format!(
                    "GPU {} does not support POSIX file descriptor handles",
                    g.ordinal
                ),
            });
        }
        // SAFETY: `raw` is live and was created requesting POSIX-fd export.
        let fd = unsafe { self.cuda.export_fd(raw)? };
        // SAFETY: the driver just created this descriptor for us; we are its only owner.
        Ok(SharedHandle::Fd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn import(&self, dev: usize, shared: SharedHandle, _size: u64) -> BackendResult<u64> {
        let SharedHandle::Fd(fd) = shared else {
            return Err(BackendError::Unsupported {
                backend: BackendKind::Cuda,
                op: "import",
                why: "the CUDA driver shares allocations by POSIX file descriptor, not token"
                    .into(),
            });
        };
        self.enter(dev)?;
        // The driver holds its own reference after import; our descriptor closes on drop.
        self.cuda.import_fd(fd.as_raw_fd())
    }

    /// One stream per GPU: copies of logical devices carved from one GPU share it.
    fn copy_queues(&self) -> Option<usize> {
        Some(self.gpus.len())
    }

    fn telemetry(&self, dev: usize) -> BackendResult<Option<DeviceTelemetry>> {
        let g = self.enter(dev)?;
        let logical = self.devices.len() > self.gpus.len();
        if let (Ok(n), Some(h)) = (&self.nvml, g.nvml) {
            let mut t = n.read(h);
            if logical {
                t.source = "nvml (whole GPU)".into();
            }
            return Ok(Some(t));
        }
        let (free, total) = self.cuda.mem_info()?;
        Ok(Some(DeviceTelemetry {
            source: if logical { "cuda (whole GPU)" } else { "cuda" }.into(),
            memory_total: Some(total),
            memory_used: Some(total.saturating_sub(free)),
            ..DeviceTelemetry::default()
        }))
    }
}

impl VmmBackend<CudaDriver> {
    /// Open the CUDA backend. Fails with [`BackendError::LibraryMissing`] (naming `libcuda.so.1`,
    /// the places searched and `EMOE_CUDA_LIB`) when the driver cannot be loaded.
    pub fn open(opts: &CudaOptions) -> BackendResult<Self> {
        Ok(Self::new(CudaDriver::open(opts)?))
    }
}

/// What a probe for `--backend auto` found: the library path and the GPU count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub path: String,
    pub devices: u32,
}

/// Whether the CUDA driver loads, initialises and sees at least one GPU.
pub fn probe(library: Option<&Path>) -> BackendResult<Probe> {
    let cuda = Cuda::open(library)?;
    cuda.init()?;
    let devices = cuda.device_count()?;
    Ok(Probe {
        path: cuda.path().to_string(),
        devices: devices.max(0) as u32,
    })
}
