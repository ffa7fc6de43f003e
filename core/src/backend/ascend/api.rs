//! The AscendCL symbol table: `libascendcl.so` opened at run time, every symbol resolved once at
//! open and copied out as a function pointer, the `Library` kept alive beside them.
//!
//! Each wrapper turns a non-zero `aclError` into [`BackendError::Driver`] with the code's name
//! and the text of `aclGetRecentErrMsg`, read on the same thread right after the failing call
//! (the message is thread-local in AscendCL).

use std::ffi::{CStr, c_char, c_void};
use std::path::Path;

use super::error::acl_error_name;
use super::ffi::*;
use crate::backend::dynlib::{self, LibrarySpec, Opened};
use crate::backend::{BackendError, BackendResult};

pub const ACL_LIBRARY: &str = "libascendcl.so";
pub const ACL_ENV: &str = "EMOE_ASCENDCL_LIB";

/// Where `libascendcl.so` is looked for after `EMOE_ASCENDCL_LIB`.
pub(crate) fn acl_spec() -> LibrarySpec {
    let home = |v: &str| dynlib::env_path(v).map(|p| p.join("lib64"));
    LibrarySpec {
        library: ACL_LIBRARY,
        env_var: ACL_ENV,
        paths: dynlib::under(
            &[
                home("ASCEND_HOME_PATH"),
                home("ASCEND_TOOLKIT_HOME"),
                Some("/usr/local/Ascend/ascend-toolkit/latest/lib64".into()),
            ],
            ACL_LIBRARY,
        ),
        sonames: &[ACL_LIBRARY],
        sonames_first: false,
    }
}

/// A physical-memory handle as AscendCL returns it (`aclrtDrvMemHandle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclMemHandle(pub AclrtDrvMemHandle);

// SAFETY: the handle is an opaque token that is only ever passed back to AscendCL, whose memory
// management calls may be made from any thread; Rust never dereferences it.
unsafe impl Send for AclMemHandle {}
// SAFETY: as for `Send`: shared references only copy the token.
unsafe impl Sync for AclMemHandle {}

/// Shorthand for the C signatures below (all return `aclError`).
macro_rules! acl_fn {
    ($($arg:ty),*) => { unsafe extern "C" fn($($arg),*) -> AclError };
}

struct Fns {
    init: acl_fn!(*const c_char),
    set_device: acl_fn!(i32),
    get_device_count: acl_fn!(*mut u32),
    get_mem_info: acl_fn!(AclrtMemAttr, *mut usize, *mut usize),
    memcpy: acl_fn!(*mut c_void, usize, *const c_void, usize, AclrtMemcpyKind),
    memcpy_async: acl_fn!(
        *mut c_void,
        usize,
        *const c_void,
        usize,
        AclrtMemcpyKind,
        AclrtStream
    ),
    create_stream: acl_fn!(*mut AclrtStream),
    destroy_stream: acl_fn!(AclrtStream),
    synchronize_stream: acl_fn!(AclrtStream),
    can_access_peer: acl_fn!(*mut i32, i32, i32),
    enable_peer_access: acl_fn!(i32, u32),
    granularity: acl_fn!(
        *mut AclrtPhysicalMemProp,
        AclrtMemGranularityOptions,
        *mut usize
    ),
    malloc_physical: acl_fn!(
        *mut AclrtDrvMemHandle,
        usize,
        *const AclrtPhysicalMemProp,
        u64
    ),
    free_physical: acl_fn!(AclrtDrvMemHandle),
    reserve: acl_fn!(*mut *mut c_void, usize, usize, *mut c_void, u64),
    release: acl_fn!(*mut c_void),
    map: acl_fn!(*mut c_void, usize, usize, AclrtDrvMemHandle, u64),
    unmap: acl_fn!(*mut c_void),
    // Optional: absent from older CANN; a call that needs one reports `SymbolMissing`.
    set_access: Option<acl_fn!(*mut c_void, usize, *mut AclrtMemAccessDesc, usize)>,
    export: Option<acl_fn!(AclrtDrvMemHandle, AclrtMemHandleType, u64, *mut u64)>,
    set_pid: Option<acl_fn!(u64, *mut i32, usize)>,
    import: Option<acl_fn!(u64, i32, *mut AclrtDrvMemHandle)>,
    bare_tgid: Option<acl_fn!(*mut i32)>,
    recent_err_msg: Option<unsafe extern "C" fn() -> *const c_char>,
    soc_name: Option<unsafe extern "C" fn() -> *const c_char>,
    utilization: Option<acl_fn!(i32, *mut AclrtUtilizationInfo)>,
}

/// The loaded AscendCL runtime. Cheap wrappers, one per call; nothing cached here.
pub struct Acl {
    f: Fns,
    lib: Opened,
}

impl std::fmt::Debug for Acl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acl").field("path", &self.lib.path).finish()
    }
}

fn ptr(va: u64) -> *mut c_void {
    va as usize as *mut c_void
}

fn usize_of(v: u64) -> usize {
    // Only 64-bit targets are supported (see the layout assertions in `ffi`).
    v as usize
}

impl Acl {
    /// Open `libascendcl.so` (`explicit`, else `EMOE_ASCENDCL_LIB`, else the CANN locations) and
    /// resolve its symbols.
    pub fn open(explicit: Option<&Path>) -> BackendResult<Self> {
        let lib = dynlib::open(&acl_spec(), explicit)?;
        // SAFETY: each field's type is the C signature from ffi.md A (acl_rt.h); the pointers
        // live in `Fns` beside `lib`, which `Acl` keeps alive for as long as they can be called.
        let f = unsafe {
            macro_rules! r {
                ($n:literal) => {
                    dynlib::symbol(&lib, ACL_LIBRARY, $n)?
                };
            }
            macro_rules! o {
                ($n:literal) => {
                    dynlib::optional(&lib, $n)
                };
            }
            Fns {
                init: r!("aclInit"),
                set_device: r!("aclrtSetDevice"),
                get_device_count: r!("aclrtGetDeviceCount"),
                get_mem_info: r!("aclrtGetMemInfo"),
                memcpy: r!("aclrtMemcpy"),
                memcpy_async: r!("aclrtMemcpyAsync"),
                create_stream: r!("aclrtCreateStream"),
                destroy_stream: r!("aclrtDestroyStream"),
                synchronize_stream: r!("aclrtSynchronizeStream"),
                can_access_peer: r!("aclrtDeviceCanAccessPeer"),
                enable_peer_access: r!("aclrtDeviceEnablePeerAccess"),
                granularity: r!("aclrtMemGetAllocationGranularity"),
                malloc_physical: r!("aclrtMallocPhysical"),
                free_physical: r!("aclrtFreePhysical"),
                reserve: r!("aclrtReserveMemAddress"),
                release: r!("aclrtReleaseMemAddress"),
                map: r!("aclrtMapMem"),
                unmap: r!("aclrtUnmapMem"),
                set_access: o!("aclrtMemSetAccess"),
                export: o!("aclrtMemExportToShareableHandle"),
                set_pid: o!("aclrtMemSetPidToShareableHandle"),
                import: o!("aclrtMemImportFromShareableHandle"),
                bare_tgid: o!("aclrtDeviceGetBareTgid"),
                recent_err_msg: o!("aclGetRecentErrMsg"),
                // Not in ffi.md (UNCONFIRMED signature `const char* aclrtGetSocName()`): used only
                // for a display name when present.
                soc_name: o!("aclrtGetSocName"),
                utilization: o!("aclrtGetDeviceUtilizationRate"),
            }
        };
        Ok(Self { f, lib })
    }

    /// The file (or soname) the library was opened from.
    pub fn path(&self) -> &str {
        &self.lib.path
    }

    fn recent_message(&self) -> String {
        let Some(f) = self.f.recent_err_msg else {
            return "no detail (aclGetRecentErrMsg is not exported by this CANN)".into();
        };
        // SAFETY: takes no arguments; returns NULL or a NUL-terminated thread-local string that
        // stays valid until the next ACL call on this thread, and we copy it out at once.
        let p = unsafe { f() };
        if p.is_null() {
            return "no detail (aclGetRecentErrMsg returned NULL)".into();
        }
        // SAFETY: non-NULL and NUL-terminated per the AscendCL contract above.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// `Ok` for `ACL_SUCCESS`, else the named driver error with the recent message.
    pub fn check(&self, api: &'static str, code: AclError) -> BackendResult<()> {
        if code == ACL_SUCCESS {
            return Ok(());
        }
        Err(BackendError::Driver {
            api,
            code: code.into(),
            name: acl_error_name(code).to_string(),
            message: self.recent_message(),
        })
    }

    fn missing(&self, symbol: &'static str) -> BackendError {
        BackendError::SymbolMissing {
            library: format!("{ACL_LIBRARY} ({})", self.lib.path),
            symbol,
            detail: "not exported by this CANN version".into(),
        }
    }

    /// `aclInit(NULL)`; an already initialised process is fine (several backends may share it).
    pub fn init(&self) -> BackendResult<()> {
        // SAFETY: NULL config path is documented as allowed.
        let code = unsafe { (self.f.init)(std::ptr::null()) };
        if code == ACL_ERROR_REPEAT_INITIALIZE {
            return Ok(());
        }
        self.check("aclInit", code)
    }

    /// Bind `device` to the calling thread unless this thread last bound it through this
    /// library. `aclrtSetDevice` is reference-counted and `aclrtGetDevice` logs an error on a
    /// thread with no device, so neither is called on every operation.
    pub fn use_device(&self, device: i32) -> BackendResult<()> {
        thread_local! {
            /// (the library's `aclrtSetDevice` address, device) last bound on this thread.
            static BOUND: std::cell::Cell<(usize, i32)> = const { std::cell::Cell::new((0, -1)) };
        }
        let key = self.f.set_device as usize;
        if BOUND.get() == (key, device) {
            return Ok(());
        }
        // SAFETY: plain integer argument.
        self.check("aclrtSetDevice", unsafe { (self.f.set_device)(device) })?;
        BOUND.set((key, device));
        Ok(())
    }

    pub fn device_count(&self) -> BackendResult<u32> {
        let mut n = 0u32;
        // SAFETY: writes one u32 through a valid pointer.
        self.check("aclrtGetDeviceCount", unsafe {
            (self.f.get_device_count)(&mut n)
        })?;
        Ok(n)
    }

    /// `(free, total)` bytes of `attr` memory on the calling thread's device.
    pub fn mem_info(&self, attr: AclrtMemAttr) -> BackendResult<(u64, u64)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two valid out-pointers.
        self.check("aclrtGetMemInfo", unsafe {
            (self.f.get_mem_info)(attr, &mut free, &mut total)
        })?;
        Ok((free as u64, total as u64))
    }

    pub fn granularity(&self, prop: &AclrtPhysicalMemProp) -> BackendResult<u64> {
        let mut p = *prop;
        let mut g = 0usize;
        // SAFETY: the header takes a non-const pointer; we pass a private copy and an out-pointer.
        self.check("aclrtMemGetAllocationGranularity", unsafe {
            (self.f.granularity)(&mut p, AclrtMemGranularityOptions::MINIMUM, &mut g)
        })?;
        Ok(g as u64)
    }

    pub fn malloc_physical(
        &self,
        size: u64,
        prop: &AclrtPhysicalMemProp,
    ) -> BackendResult<AclMemHandle> {
        let mut h: AclrtDrvMemHandle = std::ptr::null_mut();
        // SAFETY: valid out-pointer and a fully initialised prop; flags must be 0.
        self.check("aclrtMallocPhysical", unsafe {
            (self.f.malloc_physical)(&mut h, usize_of(size), prop, 0)
        })?;
        Ok(AclMemHandle(h))
    }

    /// # Safety
    /// `h` came from `malloc_physical`/`import_shareable` of this library and is not used after.
    pub unsafe fn free_physical(&self, h: AclMemHandle) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("aclrtFreePhysical", unsafe { (self.f.free_physical)(h.0) })
    }

    /// `aclrtReserveMemAddress` with alignment 0 and no address hint (the documented values).
    pub fn reserve(&self, size: u64, flags: u64) -> BackendResult<u64> {
        let mut va: *mut c_void = std::ptr::null_mut();
        // SAFETY: valid out-pointer; NULL hint and 0 alignment as the reference requires.
        self.check("aclrtReserveMemAddress", unsafe {
            (self.f.reserve)(&mut va, usize_of(size), 0, std::ptr::null_mut(), flags)
        })?;
        Ok(va as usize as u64)
    }

    /// # Safety
    /// `va` is a reservation base from `reserve` with nothing mapped in it any more.
    pub unsafe fn release(&self, va: u64) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("aclrtReleaseMemAddress", unsafe {
            (self.f.release)(ptr(va))
        })
    }

    /// `aclrtMapMem(va, size, offset, h, 0)`. The rules (whole handle, offset 0, one device per
    /// reservation) are the driver's to enforce; its error comes back named.
    ///
    /// # Safety
    /// `va` lies in a reservation of this library and `h` is a live handle of it.
    pub unsafe fn map_mem(
        &self,
        va: u64,
        size: u64,
        offset: u64,
        h: AclMemHandle,
    ) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("aclrtMapMem", unsafe {
            (self.f.map)(ptr(va), usize_of(size), usize_of(offset), h.0, 0)
        })
    }

    /// `aclrtUnmapMem(va)`: by the mapping's start address only.
    ///
    /// # Safety
    /// `va` lies in a reservation of this library and nothing still uses the mapping.
    pub unsafe fn unmap_mem(&self, va: u64) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("aclrtUnmapMem", unsafe { (self.f.unmap)(ptr(va)) })
    }

    /// `aclrtMemSetAccess(va, size, {READWRITE, {device, DEVICE}}, 1)` when the symbol exists
    /// (RT samples call it; torch_npu does not, so its absence is not an error).
    ///
    /// # Safety
    /// `[va, va+size)` is mapped by this library.
    pub unsafe fn set_access(&self, va: u64, size: u64, device: i32) -> BackendResult<()> {
        let Some(f) = self.f.set_access else {
            return Ok(());
        };
        let mut desc = AclrtMemAccessDesc {
            flags: AclrtMemAccessFlags::READWRITE,
            location: AclrtMemLocation {
                id: device as u32,
                type_: AclrtMemLocationType::DEVICE,
            },
            rsv: [0; 12],
        };
        // SAFETY: per the function's contract; one valid descriptor.
        self.check("aclrtMemSetAccess", unsafe {
            f(ptr(va), usize_of(size), &mut desc, 1)
        })
    }

    /// # Safety
    /// `dst` points to `len` writable bytes of device memory mapped by this library.
    pub unsafe fn memcpy_h2d(&self, dst: u64, src: &[u8]) -> BackendResult<()> {
        // SAFETY: per the function's contract; `src` is a live host slice.
        self.check("aclrtMemcpy", unsafe {
            (self.f.memcpy)(
                ptr(dst),
                src.len(),
                src.as_ptr().cast(),
                src.len(),
                AclrtMemcpyKind::HOST_TO_DEVICE,
            )
        })
    }

    /// # Safety
    /// `src` points to `dst.len()` readable bytes of device memory mapped by this library.
    pub unsafe fn memcpy_d2h(&self, dst: &mut [u8], src: u64) -> BackendResult<()> {
        // SAFETY: per the function's contract; `dst` is a live, exclusive host slice.
        self.check("aclrtMemcpy", unsafe {
            (self.f.memcpy)(
                dst.as_mut_ptr().cast(),
                dst.len(),
                ptr(src),
                dst.len(),
                AclrtMemcpyKind::DEVICE_TO_HOST,
            )
        })
    }

    /// Device-to-device `aclrtMemcpyAsync` on `stream`, then wait for it.
    ///
    /// # Safety
    /// `dst`/`src` are `len` bytes of device memory mapped by this library; `stream` is live
    /// and used by one thread at a time.
    pub unsafe fn memcpy_d2d_sync(
        &self,
        dst: u64,
        src: u64,
        len: u64,
        stream: AclrtStream,
    ) -> BackendResult<()> {
        let n = usize_of(len);
        // SAFETY: per the function's contract.
        self.check("aclrtMemcpyAsync", unsafe {
            (self.f.memcpy_async)(
                ptr(dst),
                n,
                ptr(src),
                n,
                AclrtMemcpyKind::DEVICE_TO_DEVICE,
                stream,
            )
        })?;
        // SAFETY: the stream is live per the contract.
        self.check("aclrtSynchronizeStream", unsafe {
            (self.f.synchronize_stream)(stream)
        })
    }

    pub fn create_stream(&self) -> BackendResult<AclrtStream> {
        let mut s: AclrtStream = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check("aclrtCreateStream", unsafe {
            (self.f.create_stream)(&mut s)
        })?;
        Ok(s)
    }

    /// # Safety
    /// `s` came from `create_stream` and is not used after.
    pub unsafe fn destroy_stream(&self, s: AclrtStream) -> BackendResult<()> {
        // SAFETY: per the function's contract.
        self.check("aclrtDestroyStream", unsafe { (self.f.destroy_stream)(s) })
    }

    pub fn can_access_peer(&self, device: i32, peer: i32) -> BackendResult<bool> {
        let mut can = 0i32;
        // SAFETY: valid out-pointer, integer ids.
        self.check("aclrtDeviceCanAccessPeer", unsafe {
            (self.f.can_access_peer)(&mut can, device, peer)
        })?;
        Ok(can != 0)
    }

    /// Let the calling thread's device access `peer` (flags must be 0).
    pub fn enable_peer_access(&self, peer: i32) -> BackendResult<()> {
        // SAFETY: integer arguments.
        self.check("aclrtDeviceEnablePeerAccess", unsafe {
            (self.f.enable_peer_access)(peer, 0)
        })
    }

    /// `aclrtMemExportToShareableHandle(h, NONE, flags, &token)`.
    ///
    /// # Safety
    /// `h` is a live handle of this library.
    pub unsafe fn export_shareable(&self, h: AclMemHandle, flags: u64) -> BackendResult<u64> {
        let f = self
            .f
            .export
            .ok_or_else(|| self.missing("aclrtMemExportToShareableHandle"))?;
        let mut token = 0u64;
        // SAFETY: per the function's contract; valid out-pointer.
        self.check("aclrtMemExportToShareableHandle", unsafe {
            f(h.0, AclrtMemHandleType::NONE, flags, &mut token)
        })?;
        Ok(token)
    }

    /// Whitelist `pids` (bare TGIDs) for importing `token`.
    pub fn set_pids(&self, token: u64, pids: &[i32]) -> BackendResult<()> {
        let f = self
            .f
            .set_pid
            .ok_or_else(|| self.missing("aclrtMemSetPidToShareableHandle"))?;
        let mut list = pids.to_vec();
        // SAFETY: the driver reads `len` i32s from a private copy (the header takes non-const).
        self.check("aclrtMemSetPidToShareableHandle", unsafe {
            f(token, list.as_mut_ptr(), list.len())
        })
    }

    /// Import `token` onto ACL device `device`.
    pub fn import_shareable(&self, token: u64, device: i32) -> BackendResult<AclMemHandle> {
        let f = self
            .f
            .import
            .ok_or_else(|| self.missing("aclrtMemImportFromShareableHandle"))?;
        let mut h: AclrtDrvMemHandle = std::ptr::null_mut();
        // SAFETY: the token is a plain integer the driver validates; valid out-pointer.
        self.check("aclrtMemImportFromShareableHandle", unsafe {
            f(token, device, &mut h)
        })?;
        Ok(AclMemHandle(h))
    }

    /// This process's bare TGID as the driver knows it (the host PID, also inside containers).
    pub fn bare_tgid(&self) -> BackendResult<i32> {
        let f = self
            .f
            .bare_tgid
            .ok_or_else(|| self.missing("aclrtDeviceGetBareTgid"))?;
        let mut pid = 0i32;
        // SAFETY: valid out-pointer.
        self.check("aclrtDeviceGetBareTgid", unsafe { f(&mut pid) })?;
        Ok(pid)
    }

    /// The SoC name (e.g. `Ascend910B3`) when the library exports `aclrtGetSocName`.
    pub fn soc_name(&self) -> Option<String> {
        let f = self.f.soc_name?;
        // SAFETY: no arguments; NULL or a static NUL-terminated string.
        let p = unsafe { f() };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-NULL, NUL-terminated per above.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// `aclrtGetDeviceUtilizationRate` when exported: (cube %, memory %).
    pub fn utilization(&self, device: i32) -> Option<(i32, i32)> {
        let f = self.f.utilization?;
        let mut u = AclrtUtilizationInfo {
            cube_utilization: 0,
            vector_utilization: 0,
            aicpu_utilization: 0,
            memory_utilization: 0,
            utilization_extend: std::ptr::null_mut(),
        };
        // SAFETY: valid out-pointer with the extension pointer NULL, as documented.
        let code = unsafe { f(device, &mut u) };
        (code == ACL_SUCCESS).then_some((u.cube_utilization, u.memory_utilization))
    }
}
