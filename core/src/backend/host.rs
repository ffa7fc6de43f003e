//! The host backend: virtual devices on real host memory, with the accelerator VMM's shape.
//!
//! - physical allocation = a memfd of the rounded size, plus a private shared "backing" mapping of
//!   it through which `write`/`read`/`copy`/`checksum` touch the real pages;
//! - reservation = an anonymous `PROT_NONE` range, granule-aligned;
//! - map = `MAP_SHARED|MAP_FIXED` of the memfd over part of a reservation; unmap = `PROT_NONE`
//!   anonymous memory `MAP_FIXED` back over it (a `munmap` would leave a hole anything may take);
//! - export = a dup of the memfd, which another process imports and maps: the same pages.
//!
//! Every mapping call is validated first (alignment, inside a live reservation, same device), so a
//! `MAP_FIXED` never lands outside memory this backend reserved.

use std::collections::BTreeMap;
use std::ffi::c_void;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};

use super::modeled::books::{Books, DeviceTable, Phys, check_bounds};
use super::{
    BackendError, BackendKind, BackendResult, DeviceBackend, DeviceInfo, PhysHandle, SharedHandle,
    VirtRange,
};
use crate::device::DeviceId;

/// How to lay out the virtual devices.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HostConfig {
    pub node: u32,
    pub devices: u32,
    /// Bytes per device (a multiple of the granularity). Not reserved up front: the HMM accounts.
    pub capacity: u64,
    /// A power of two and a multiple of the OS page size.
    pub granularity: u64,
}

/// One memfd and the backend's own shared mapping of it. Shared by `Arc` so a copy running
/// outside the lock keeps its pages mapped even if the allocation is freed meanwhile.
struct Backing {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this value until Drop; concurrent access to
// the bytes is the same as any shared-memory segment (callers order their own writes).
unsafe impl Send for Backing {}
unsafe impl Sync for Backing {}

impl Backing {
    fn new(fd: OwnedFd, size: u64) -> BackendResult<Self> {
        Self::map(fd, size, false)
    }

    /// With `populate`, every page is allocated and mapped now (the pre-allocated pool).
    fn map(fd: OwnedFd, size: u64, populate: bool) -> BackendResult<Self> {
        let len = usize::try_from(size).map_err(|_| too_big(size))?;
        let flags = if populate {
            MapFlags::SHARED | MapFlags::POPULATE
        } else {
            MapFlags::SHARED
        };
        // SAFETY: a fresh mapping chosen by the kernel; it overlaps nothing we own.
        let p = unsafe {
            rustix::mm::mmap(
                ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                flags,
                &fd,
                0,
            )
        }
        .map_err(|e| os("mmap (backing)", e))?;
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| os("mmap (backing)", rustix::io::Errno::NOMEM))?;
        Ok(Self { ptr, len, fd })
    }

    /// The byte range `[offset, offset + len)`, after a bounds check.
    fn at(&self, op: &'static str, offset: u64, len: usize) -> BackendResult<*mut u8> {
        check_bounds(op, self.len as u64, offset, len as u64)?;
        // SAFETY: in bounds of our mapping (checked just above).
        Ok(unsafe { self.ptr.as_ptr().add(offset as usize) })
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; the fd closes after this.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) };
    }
}

/// Virtual devices on host memory.
pub struct HostBackend {
    table: DeviceTable,
    page: u64,
    books: Mutex<Books<Arc<Backing>>>,
    /// Pre-allocated, populated memfds by size, taken by allocations of that size: the
    /// pre-allocated pool (ElasticMoE's IPC allocator) that keeps page allocation and faults
    /// off the scaling path.
    pool: Mutex<BTreeMap<u64, Vec<Backing>>>,
}

impl HostBackend {
    pub fn new(cfg: HostConfig) -> BackendResult<Self> {
        let page = page_size();
        let g = cfg.granularity;
        if !g.is_power_of_two() || !g.is_multiple_of(page) {
            return Err(BackendError::Unsupported {
                backend: BackendKind::Host,
                op: "this granularity",
                why: format!("{g} bytes is not a power-of-two multiple of the page size {page}"),
            });
        }
        let devices = (0..cfg.devices)
            .map(|i| DeviceInfo {
                id: DeviceId::new(cfg.node, i),
                name: "host-virtual".into(),
                capacity: cfg.capacity,
                granularity: g,
            })
            .collect();
        Ok(Self {
            table: DeviceTable::new(BackendKind::Host, devices)?,
            page,
            books: Mutex::new(Books::new()),
            pool: Mutex::new(BTreeMap::new()),
        })
    }

    fn books(&self) -> MutexGuard<'_, Books<Arc<Backing>>> {
        // Updates never panic half-way, so a poisoned lock still guards consistent books.
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The backing of `handle`, cloned out so the bytes can be touched outside the lock.
    fn backing(&self, handle: PhysHandle) -> BackendResult<Arc<Backing>> {
        Ok(Arc::clone(&self.books().alloc(handle)?.extra))
    }

    /// Maps a backing for `fd` and enters it in the books under `handle`.
    fn adopt(
        &self,
        handle: PhysHandle,
        device: DeviceId,
        fd: OwnedFd,
        size: u64,
    ) -> BackendResult<PhysHandle> {
        let extra = Arc::new(Backing::new(fd, size)?);
        let phys = Phys {
            device,
            size,
            extra,
        };
        self.books().insert_alloc(handle, phys);
        Ok(handle)
    }
}

impl fmt::Debug for HostBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.books();
        f.debug_struct("HostBackend")
            .field("devices", &self.table.all().len())
            .field("allocations", &b.allocs_len())
            .field("reservations", &b.reservations_len())
            .finish()
    }
}

impl Drop for HostBackend {
    fn drop(&mut self) {
        // Backings unmap and close themselves; reservations are ours to return.
        for r in self.books().reservations() {
            // SAFETY: a reservation this backend made; nothing may use it after the backend.
            let _ = unsafe { rustix::mm::munmap(r.base as *mut c_void, r.size as usize) };
        }
    }
}

// SAFETY: `host_pointer` returns `addr` itself for an address inside a live reservation: the
// reservation is our own mapping, changed only by `map`, `unmap` and `release` (under the books
// lock) or by `Drop`; `map` puts the allocation's memfd there `MAP_SHARED` read-write, so the
// bytes are the allocation's pages; nothing else touches the range.
unsafe impl DeviceBackend for HostBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Host
    }

    fn devices(&self) -> &[DeviceInfo] {
        self.table.all()
    }

    fn holds_bytes(&self) -> bool {
        true
    }

    fn alloc_physical(&self, device: DeviceId, size: u64) -> BackendResult<PhysHandle> {
        self.table.check_size(device, "allocation size", size)?;
        let pooled = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&size)
            .and_then(Vec::pop);
        if let Some(backing) = pooled {
            let handle = self.books().next_handle();
            let phys = Phys {
                device,
                size,
                extra: Arc::new(backing),
            };
            self.books().insert_alloc(handle, phys);
            return Ok(handle);
        }
        let handle = self.books().next_handle();
        let name = format!("emoe-{device}-a{}", handle.0);
        let fd = rustix::fs::memfd_create(name.as_str(), MemfdFlags::CLOEXEC)
            .map_err(|e| os("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| os("ftruncate", e))?;
        self.adopt(handle, device, fd, size)
    }

    /// Host memory is one pool for every device, so `_device` does not narrow it.
    fn prefault(&self, _device: DeviceId, sizes: &[u64]) -> BackendResult<usize> {
        let mut made = Vec::with_capacity(sizes.len());
        for &size in sizes {
            if size == 0 {
                return Err(BackendError::ZeroSize { what: "pool entry" });
            }
            if !size.is_multiple_of(self.page) {
                return Err(BackendError::Misaligned {
                    what: "pool entry size",
                    value: size,
                    granularity: self.page,
                });
            }
            let fd = rustix::fs::memfd_create("emoe-pool", MemfdFlags::CLOEXEC)
                .map_err(|e| os("memfd_create (pool)", e))?;
            rustix::fs::ftruncate(&fd, size).map_err(|e| os("ftruncate (pool)", e))?;
            made.push((size, Backing::map(fd, size, true)?));
        }
        let n = made.len();
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        for (size, b) in made {
            pool.entry(size).or_default().push(b);
        }
        Ok(n)
    }

    fn pooled_bytes(&self) -> u64 {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(size, v)| size * v.len() as u64)
            .sum()
    }

    fn free_physical(&self, handle: PhysHandle) -> BackendResult<()> {
        let phys = self.books().remove_alloc(handle)?;
        drop(phys); // unmaps and closes outside the lock (or when the last copy finishes)
        Ok(())
    }

    fn reserve(&self, device: DeviceId, size: u64) -> BackendResult<VirtRange> {
        let g = self.table.check_size(device, "reservation size", size)?;
        let len = usize::try_from(size).map_err(|_| too_big(size))?;
        // Over-reserve by a granule less a page, then trim, so the base is granule-aligned as on
        // a device (mmap only promises page alignment).
        let slack = (g - self.page) as usize;
        let total = len.checked_add(slack).ok_or_else(|| too_big(size))?;
        let flags = MapFlags::PRIVATE | MapFlags::NORESERVE;
        // SAFETY: a fresh PROT_NONE mapping chosen by the kernel.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(ptr::null_mut(), total, ProtFlags::empty(), flags)
        }
        .map_err(|e| os("mmap (reserve)", e))? as usize;
        let base = raw.next_multiple_of(g as usize);
        let head = base - raw;
        let tail = total - head - len;
        // SAFETY: trimming the unused ends of the mapping made just above.
        unsafe {
            if head > 0 {
                let _ = rustix::mm::munmap(raw as *mut c_void, head);
            }
            if tail > 0 {
                let _ = rustix::mm::munmap((base + len) as *mut c_void, tail);
            }
        }
        let range = VirtRange {
            device,
            base: base as u64,
            size,
        };
        self.books().insert_reservation(range);
        Ok(range)
    }

    fn release(&self, range: VirtRange) -> BackendResult<()> {
        let mut books = self.books();
        books.check_reservation(range)?;
        // SAFETY: exactly a live reservation of ours (checked), whole.
        unsafe { rustix::mm::munmap(range.base as *mut c_void, range.size as usize) }
            .map_err(|e| os("munmap (release)", e))?;
        books.remove_reservation(range)
    }

    fn map(&self, range: VirtRange, addr: u64, handle: PhysHandle) -> BackendResult<()> {
        // Hold the lock across the mmap so the reservation cannot be released under it.
        let books = self.books();
        let phys = books.check_map(&self.table, range, addr, handle)?;
        // SAFETY: [addr, addr + size) lies inside a live reservation of ours (checked), so
        // MAP_FIXED only replaces memory this backend owns.
        let p = unsafe {
            rustix::mm::mmap(
                addr as *mut c_void,
                phys.size as usize,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED | MapFlags::FIXED,
                phys.extra.fd.as_fd(),
                0,
            )
        }
        .map_err(|e| os("mmap (map)", e))?;
        debug_assert_eq!(p as u64, addr);
        Ok(())
    }

    fn unmap(&self, range: VirtRange, addr: u64, size: u64) -> BackendResult<()> {
        let books = self.books();
        books.check_span(&self.table, range, addr, size)?;
        let flags = MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE;
        // SAFETY: inside a live reservation of ours (checked); the range goes back to PROT_NONE.
        unsafe {
            rustix::mm::mmap_anonymous(
                addr as *mut c_void,
                size as usize,
                ProtFlags::empty(),
                flags,
            )
        }
        .map_err(|e| os("mmap (unmap)", e))?;
        Ok(())
    }

    fn write(&self, handle: PhysHandle, offset: u64, data: &[u8]) -> BackendResult<()> {
        let b = self.backing(handle)?;
        let dst = b.at("write", offset, data.len())?;
        // SAFETY: in bounds (checked); `data` is ordinary memory, never our mapping's alias.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    fn read(&self, handle: PhysHandle, offset: u64, out: &mut [u8]) -> BackendResult<()> {
        let b = self.backing(handle)?;
        let src = b.at("read", offset, out.len())?;
        // SAFETY: in bounds (checked); `out` is exclusively borrowed, so it cannot alias the source.
        unsafe { ptr::copy_nonoverlapping(src, out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    fn copy(
        &self,
        src: PhysHandle,
        src_offset: u64,
        dst: PhysHandle,
        dst_offset: u64,
        len: u64,
    ) -> BackendResult<()> {
        let (s, d) = {
            let books = self.books();
            let (s, d) = books.check_copy(src, src_offset, dst, dst_offset, len)?;
            (Arc::clone(&s.extra), Arc::clone(&d.extra))
        };
        let n = usize::try_from(len).map_err(|_| too_big(len))?;
        let from = s.at("copy source", src_offset, n)?;
        let to = d.at("copy destination", dst_offset, n)?;
        // SAFETY: both in bounds; `ptr::copy` handles overlap within one allocation.
        unsafe { ptr::copy(from, to, n) };
        Ok(())
    }

    fn checksum(&self, handle: PhysHandle, offset: u64, len: u64) -> BackendResult<u64> {
        let b = self.backing(handle)?;
        let n = usize::try_from(len).map_err(|_| too_big(len))?;
        let p = b.at("checksum", offset, n)?;
        // SAFETY: in bounds of a live mapping held by `b`; hashed in place, no copy.
        let bytes = unsafe { std::slice::from_raw_parts(p, n) };
        Ok(xxhash_rust::xxh3::xxh3_64(bytes))
    }

    fn export(&self, handle: PhysHandle) -> BackendResult<SharedHandle> {
        let b = self.backing(handle)?;
        let fd = b.fd.try_clone().map_err(|e| BackendError::Os {
            op: "dup (export)",
            source: e,
        })?;
        Ok(SharedHandle::Fd(fd))
    }

    fn import(
        &self,
        device: DeviceId,
        shared: SharedHandle,
        size: u64,
    ) -> BackendResult<PhysHandle> {
        self.table.check_size(device, "imported size", size)?;
        let fd = match shared {
            SharedHandle::Fd(fd) => fd,
            SharedHandle::Token(_) => {
                return Err(BackendError::Unsupported {
                    backend: BackendKind::Host,
                    op: "import",
                    why: "host allocations travel as file descriptors, not tokens".into(),
                });
            }
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| os("fstat (import)", e))?;
        let have = u64::try_from(st.st_size).unwrap_or(0);
        check_bounds("import", have, 0, size)?;
        let handle = self.books().next_handle();
        self.adopt(handle, device, fd, size)
    }

    fn host_pointer(&self, range: VirtRange, addr: u64) -> Option<*const u8> {
        let books = self.books();
        books.check_reservation(range).ok()?;
        (addr >= range.base && addr - range.base < range.size).then_some(addr as *const u8)
    }
}

fn os(op: &'static str, e: rustix::io::Errno) -> BackendError {
    BackendError::Os {
        op,
        source: e.into(),
    }
}

fn too_big(size: u64) -> BackendError {
    BackendError::Unsupported {
        backend: BackendKind::Host,
        op: "this size",
        why: format!("{size} bytes does not fit the host address space"),
    }
}

/// The OS page size, from the auxiliary vector (`AT_PAGESZ`); rustix's `param` feature is not
/// among the workspace's. Falls back to 4096 if `/proc` is unavailable.
pub fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        const AT_PAGESZ: u64 = 6;
        const W: usize = size_of::<usize>();
        let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
            return 4096;
        };
        auxv.chunks_exact(2 * W)
            .find_map(|kv| {
                let word = |b: &[u8]| b.try_into().ok().map(usize::from_ne_bytes);
                let (k, v) = (word(&kv[..W])?, word(&kv[W..])?);
                (k as u64 == AT_PAGESZ && v.is_power_of_two()).then_some(v as u64)
            })
            .unwrap_or(4096)
    })
}

#[cfg(test)]
mod tests;
