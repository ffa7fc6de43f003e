//! The CUDA driver symbol table: `libcuda.so.1` opened at run time, every symbol resolved once at
//! open (the `_v2` names where cuda.h maps to them) and copied out, the `Library` kept alive.
//! A non-zero `CUresult` becomes [`BackendError::Driver`] named by `cuGetErrorName` with the text
//! of `cuGetErrorString`.

use std::ffi::{CStr, c_char, c_uint, c_ulonglong, c_void};
use std::path::Path;

use super::ffi::*;
use crate::backend::dynlib::{self, LibrarySpec, Opened};
use crate::backend::{BackendError, BackendResult};

pub const CUDA_LIBRARY: &str = "libcuda.so.1";
pub const CUDA_ENV: &str = "EMOE_CUDA_LIB";

pub(crate) fn cuda_spec() -> LibrarySpec {
    LibrarySpec {
        library: CUDA_LIBRARY,
        env_var: CUDA_ENV,
        paths: vec![
            // Where the NVIDIA container toolkit mounts the host driver.
            "/usr/local/nvidia/lib64/libcuda.so.1".into(),
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
            "/usr/lib/aarch64-linux-gnu/libcuda.so.1".into(),
            "/usr/lib64/libcuda.so.1".into(),
            "/usr/lib/wsl/lib/libcuda.so.1".into(),
        ],
        sonames: &[CUDA_LIBRARY],
        sonames_first: true,
    }
}

macro_rules! cu_fn {
    ($($arg:ty),*) => { unsafe extern "C" fn($($arg),*) -> CUresult };
}

struct Fns {
    init: cu_fn!(c_uint),
    device_get: cu_fn!(*mut CUdevice, i32),
    device_get_count: cu_fn!(*mut i32),
    device_get_name: cu_fn!(*mut c_char, i32, CUdevice),
    device_get_attribute: cu_fn!(*mut i32, CUdeviceAttribute, CUdevice),
    device_get_pci_bus_id: cu_fn!(*mut c_char, i32, CUdevice),
    device_total_mem: cu_fn!(*mut usize, CUdevice),
    primary_ctx_retain: cu_fn!(*mut CUcontext, CUdevice),
    primary_ctx_release: cu_fn!(CUdevice),
    ctx_set_current: cu_fn!(CUcontext),
    mem_get_info: cu_fn!(*mut usize, *mut usize),
    can_access_peer: cu_fn!(*mut i32, CUdevice, CUdevice),
    mem_create: cu_fn!(
        *mut CUmemGenericAllocationHandle,
        usize,
        *const CUmemAllocationProp,
        c_ulonglong
    ),
    mem_release: cu_fn!(CUmemGenericAllocationHandle),
    address_reserve: cu_fn!(*mut CUdeviceptr, usize, usize, CUdeviceptr, c_ulonglong),
    address_free: cu_fn!(CUdeviceptr, usize),
    mem_map: cu_fn!(
        CUdeviceptr,
        usize,
        usize,
        CUmemGenericAllocationHandle,
        c_ulonglong
    ),
    mem_unmap: cu_fn!(CUdeviceptr, usize),
    set_access: cu_fn!(CUdeviceptr, usize, *const CUmemAccessDesc, usize),
    granularity: cu_fn!(
        *mut usize,
        *const CUmemAllocationProp,
        CUmemAllocationGranularityFlags
    ),
    export: cu_fn!(
        *mut c_void,
        CUmemGenericAllocationHandle,
        CUmemAllocationHandleType,
        c_ulonglong
    ),
    import: cu_fn!(
        *mut CUmemGenericAllocationHandle,
        *mut c_void,
        CUmemAllocationHandleType
    ),
    htod: cu_fn!(CUdeviceptr, *const c_void, usize),
    dtoh: cu_fn!(*mut c_void, CUdeviceptr, usize),
    dtod_async: cu_fn!(CUdeviceptr, CUdeviceptr, usize, CUstream),
    peer_async: cu_fn!(
        CUdeviceptr,
        CUcontext,
        CUdeviceptr,
        CUcontext,
        usize,
        CUstream
    ),
    stream_create: cu_fn!(*mut CUstream, c_uint),
    stream_destroy: cu_fn!(CUstream),
    stream_synchronize: cu_fn!(CUstream),
    error_name: cu_fn!(CUresult, *mut *const c_char),
    error_string: cu_fn!(CUresult, *mut *const c_char),
}

/// The loaded CUDA driver API.
pub struct Cuda {
    f: Fns,
    lib: Opened,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("path", &self.lib.path)
            .finish()
    }
}

/// Names for the codes in ffi.md D, for when `cuGetErrorName` itself fails.
fn fallback_name(code: CUresult) -> &'static str {
    match code {
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        100 => "CUDA_ERROR_NO_DEVICE",
        217 => "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED",
        704 => "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED",
        801 => "CUDA_ERROR_NOT_SUPPORTED",
        _ => "CUDA_ERROR_UNKNOWN",
    }
}

impl Cuda {
    /// Open `libcuda.so.1` (`explicit`, else `EMOE_CUDA_LIB`, else the loader path and the usual
    /// driver locations) and resolve its symbols.
    pub fn open(explicit: Option<&Path>) -> BackendResult<Self> {
        let lib = dynlib::open(&cuda_spec(), explicit)?;
        macro_rules! r {
            ($n:literal) => {
                dynlib::symbol(&lib, CUDA_LIBRARY, $n)?
            };
        }
        // SAFETY: each field's type is the cuda.h signature from ffi.md D (the `_v2` symbols are
        // what the unsuffixed names expand to); the pointers live beside `lib` in `Cuda`.
        let f = unsafe {
            Fns {
                init: r!("cuInit"),
                device_get: r!("cuDeviceGet"),
                device_get_count: r!("cuDeviceGetCount"),
                device_get_name: r!("cuDeviceGetName"),
                device_get_attribute: r!("cuDeviceGetAttribute"),
                device_get_pci_bus_id: r!("cuDeviceGetPCIBusId"),
                device_total_mem: r!("cuDeviceTotalMem_v2"),
                primary_ctx_retain: r!("cuDevicePrimaryCtxRetain"),
                primary_ctx_release: r!("cuDevicePrimaryCtxRelease_v2"),
                ctx_set_current: r!("cuCtxSetCurrent"),
                mem_get_info: r!("cuMemGetInfo_v2"),
                can_access_peer: r!("cuDeviceCanAccessPeer"),
                mem_create: r!("cuMemCreate"),
                mem_release: r!("cuMemRelease"),
                address_reserve: r!("cuMemAddressReserve"),
                address_free: r!("cuMemAddressFree"),
                mem_map: r!("cuMemMap"),
                mem_unmap: r!("cuMemUnmap"),
                set_access: r!("cuMemSetAccess"),
                granularity: r!("cuMemGetAllocationGranularity"),
                export: r!("cuMemExportToShareableHandle"),
                import: r!("cuMemImportFromShareableHandle"),
                htod: r!("cuMemcpyHtoD_v2"),
                dtoh: r!("cuMemcpyDtoH_v2"),
                dtod_async: r!("cuMemcpyDtoDAsync_v2"),
                peer_async: r!("cuMemcpyPeerAsync"),
                stream_create: r!("cuStreamCreate"),
                stream_destroy: r!("cuStreamDestroy_v2"),
                stream_synchronize: r!("cuStreamSynchronize"),
                error_name: r!("cuGetErrorName"),
                error_string: r!("cuGetErrorString"),
            }
        };
        Ok(Self { f, lib })
    }

    pub fn path(&self) -> &str {
        &self.lib.path
    }

    fn text(&self, code: CUresult, f: cu_fn!(CUresult, *mut *const c_char)) -> Option<String> {
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: valid out-pointer; the driver stores a pointer to a static string.
        if unsafe { f(code, &mut p) } != CUDA_SUCCESS || p.is_null() {
            return None;
        }
        // SAFETY: non-NULL static NUL-terminated string per the driver's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// `Ok` for `CUDA_SUCCESS`, else the named driver error.
    pub fn check(&self, api: &'static str, code: CUresult) -> BackendResult<()> {
        if code == CUDA_SUCCESS {
            return Ok(());
        }
        Err(BackendError::Driver {
            api,
            code: code.into(),
            name: self
                .text(code, self.f.error_name)
                .unwrap_or_else(|| fallback_name(code).to_string()),
            message: self
                .text(code, self.f.error_string)
                .unwrap_or_else(|| "no description".into()),
        })
    }

    pub fn init(&self) -> BackendResult<()> {
        // SAFETY: flags must be 0.
        self.check("cuInit", unsafe { (self.f.init)(0) })
    }

    pub fn device_count(&self) -> BackendResult<i32> {
        let mut n = 0;
        // SAFETY: valid out-pointer.
        self.check("cuDeviceGetCount", unsafe {
            (self.f.device_get_count)(&mut n)
        })?;
        Ok(n)
    }

    pub fn device(&self, ordinal: i32) -> BackendResult<CUdevice> {
        let mut d = 0;
        // SAFETY: valid out-pointer.
        self.check("cuDeviceGet", unsafe {
            (self.f.device_get)(&mut d, ordinal)
        })?;
        Ok(d)
    }

    fn string(
        &self,
        api: &'static str,
        f: cu_fn!(*mut c_char, i32, CUdevice),
        dev: CUdevice,
    ) -> BackendResult<String> {
        let mut buf = [0 as c_char; 256];
        // SAFETY: the driver writes at most `len` bytes including the NUL.
        self.check(api, unsafe { f(buf.as_mut_ptr(), buf.len() as i32, dev) })?;
        // SAFETY: NUL-terminated within `buf` per the driver's contract (and `buf` was zeroed).
        Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    pub fn device_name(&self, dev: CUdevice) -> BackendResult<String> {
        self.string("cuDeviceGetName", self.f.device_get_name, dev)
    }

    /// `domain:bus:device.function`, which NVML accepts to find the same GPU.
    pub fn pci_bus_id(&self, dev: CUdevice) -> BackendResult<String> {
        self.string("cuDeviceGetPCIBusId", self.f.device_get_pci_bus_id, dev)
    }

    pub fn attribute(&self, attr: CUdeviceAttribute, dev: CUdevice) -> BackendResult<i32> {
        let mut v = 0;
        // SAFETY: valid out-pointer.
        self.check("cuDeviceGetAttribute", unsafe {
            (self.f.device_get_attribute)(&mut v, attr, dev)
        })?;
        Ok(v)
    }

    pub fn total_mem(&self, dev: CUdevice) -> BackendResult<u64> {
        let mut v = 0usize;
        // SAFETY: valid out-pointer.
        self.check("cuDeviceTotalMem_v2", unsafe {
            (self.f.device_total_mem)(&mut v, dev)
        })?;
        Ok(v as u64)
    }

    pub fn primary_ctx_retain(&self, dev: CUdevice) -> BackendResult<CUcontext> {
        let mut c: CUcontext = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check("cuDevicePrimaryCtxRetain", unsafe {
            (self.f.primary_ctx_retain)(&mut c, dev)
        })?;
        Ok(c)
    }

    pub fn primary_ctx_release(&self, dev: CUdevice) -> BackendResult<()> {
        // SAFETY: balances one `primary_ctx_retain`.
        self.check("cuDevicePrimaryCtxRelease_v2", unsafe {
            (self.f.primary_ctx_release)(dev)
        })
    }

    /// # Safety
    /// `ctx` is a live context of this driver.
    pub unsafe fn set_current(&self, ctx: CUcontext) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuCtxSetCurrent", unsafe { (self.f.ctx_set_current)(ctx) })
    }

    /// `(free, total)` bytes of the current context's GPU.
    pub fn mem_info(&self) -> BackendResult<(u64, u64)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        self.check("cuMemGetInfo_v2", unsafe {
            (self.f.mem_get_info)(&mut free, &mut total)
        })?;
        Ok((free as u64, total as u64))
    }

    pub fn can_access_peer(&self, dev: CUdevice, peer: CUdevice) -> BackendResult<bool> {
        let mut v = 0;
        // SAFETY: valid out-pointer.
        self.check("cuDeviceCanAccessPeer", unsafe {
            (self.f.can_access_peer)(&mut v, dev, peer)
        })?;
        Ok(v != 0)
    }

    pub fn granularity(&self, prop: &CUmemAllocationProp) -> BackendResult<u64> {
        let mut g = 0usize;
        // SAFETY: valid out-pointer and a fully initialised prop.
        self.check("cuMemGetAllocationGranularity", unsafe {
            (self.f.granularity)(&mut g, prop, CUmemAllocationGranularityFlags::MINIMUM)
        })?;
        Ok(g as u64)
    }

    pub fn mem_create(&self, size: u64, prop: &CUmemAllocationProp) -> BackendResult<u64> {
        let mut h = 0;
        // SAFETY: valid out-pointer, initialised prop, flags 0.
        self.check("cuMemCreate", unsafe {
            (self.f.mem_create)(&mut h, size as usize, prop, 0)
        })?;
        Ok(h)
    }

    /// # Safety
    /// `h` is a live allocation handle of this driver, not used after.
    pub unsafe fn mem_release(&self, h: u64) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuMemRelease", unsafe { (self.f.mem_release)(h) })
    }

    pub fn address_reserve(&self, size: u64, alignment: u64) -> BackendResult<u64> {
        let mut p = 0;
        // SAFETY: valid out-pointer; no fixed address, flags 0.
        self.check("cuMemAddressReserve", unsafe {
            (self.f.address_reserve)(&mut p, size as usize, alignment as usize, 0, 0)
        })?;
        Ok(p)
    }

    /// # Safety
    /// `[va, va+size)` is a whole reservation of this driver with nothing mapped.
    pub unsafe fn address_free(&self, va: u64, size: u64) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuMemAddressFree", unsafe {
            (self.f.address_free)(va, size as usize)
        })
    }

    /// # Safety
    /// `va` lies in a reservation of this driver; `h` is live.
    pub unsafe fn mem_map(&self, va: u64, size: u64, h: u64) -> BackendResult<()> {
        // SAFETY: per the function's contract; offset 0 and flags 0.
        self.check("cuMemMap", unsafe {
            (self.f.mem_map)(va, size as usize, 0, h, 0)
        })
    }

    /// # Safety
    /// `[va, va+size)` is exactly one mapping of this driver, no longer in use.
    pub unsafe fn mem_unmap(&self, va: u64, size: u64) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuMemUnmap", unsafe {
            (self.f.mem_unmap)(va, size as usize)
        })
    }

    /// # Safety
    /// `[va, va+size)` is mapped by this driver.
    pub unsafe fn set_access(
        &self,
        va: u64,
        size: u64,
        desc: &[CUmemAccessDesc],
    ) -> BackendResult<()> {
        // SAFETY: per the function's contract; `desc` is a live slice.
        self.check("cuMemSetAccess", unsafe {
            (self.f.set_access)(va, size as usize, desc.as_ptr(), desc.len())
        })
    }

    /// Export `h` as a POSIX file descriptor (the allocation must have requested that type).
    ///
    /// # Safety
    /// `h` is a live allocation handle of this driver.
    pub unsafe fn export_fd(&self, h: u64) -> BackendResult<i32> {
        let mut fd: i32 = -1;
        // SAFETY: per the function's contract; for POSIX fds the out-parameter is an `int*`.
        self.check("cuMemExportToShareableHandle", unsafe {
            (self.f.export)(
                (&mut fd as *mut i32).cast(),
                h,
                CUmemAllocationHandleType::POSIX_FILE_DESCRIPTOR,
                0,
            )
        })?;
        Ok(fd)
    }

    /// Import an allocation from a POSIX fd (the fd stays the caller's to close).
    pub fn import_fd(&self, fd: i32) -> BackendResult<u64> {
        let mut h = 0;
        // SAFETY: for POSIX fds the OS handle is the fd value cast to a pointer (NVS sample).
        self.check("cuMemImportFromShareableHandle", unsafe {
            (self.f.import)(
                &mut h,
                fd as isize as *mut c_void,
                CUmemAllocationHandleType::POSIX_FILE_DESCRIPTOR,
            )
        })?;
        Ok(h)
    }

    /// # Safety
    /// `dst` is `src.len()` writable bytes of device memory mapped by this driver.
    pub unsafe fn htod(&self, dst: u64, src: &[u8]) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuMemcpyHtoD_v2", unsafe {
            (self.f.htod)(dst, src.as_ptr().cast(), src.len())
        })
    }

    /// # Safety
    /// `src` is `dst.len()` readable bytes of device memory mapped by this driver.
    pub unsafe fn dtoh(&self, dst: &mut [u8], src: u64) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuMemcpyDtoH_v2", unsafe {
            (self.f.dtoh)(dst.as_mut_ptr().cast(), src, dst.len())
        })
    }

    /// # Safety
    /// Both ranges are mapped and accessible from the current context; `stream` belongs to it.
    pub unsafe fn dtod_async(
        &self,
        dst: u64,
        src: u64,
        len: u64,
        stream: CUstream,
    ) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuMemcpyDtoDAsync_v2", unsafe {
            (self.f.dtod_async)(dst, src, len as usize, stream)
        })
    }

    /// # Safety
    /// `dst` is mapped for `dst_ctx`'s GPU, `src` for `src_ctx`'s; `stream` belongs to the
    /// current context.
    pub unsafe fn peer_async(
        &self,
        dst: u64,
        dst_ctx: CUcontext,
        src: u64,
        src_ctx: CUcontext,
        len: u64,
        stream: CUstream,
    ) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuMemcpyPeerAsync", unsafe {
            (self.f.peer_async)(dst, dst_ctx, src, src_ctx, len as usize, stream)
        })
    }

    pub fn stream_create(&self) -> BackendResult<CUstream> {
        let mut s: CUstream = std::ptr::null_mut();
        // SAFETY: valid out-pointer; flags 0 (default).
        self.check("cuStreamCreate", unsafe {
            (self.f.stream_create)(&mut s, 0)
        })?;
        Ok(s)
    }

    /// # Safety
    /// `s` is a live stream of the current context, not used after.
    pub unsafe fn stream_destroy(&self, s: CUstream) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuStreamDestroy_v2", unsafe { (self.f.stream_destroy)(s) })
    }

    /// # Safety
    /// `s` is a live stream of this driver.
    pub unsafe fn stream_synchronize(&self, s: CUstream) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("cuStreamSynchronize", unsafe {
            (self.f.stream_synchronize)(s)
        })
    }
}
