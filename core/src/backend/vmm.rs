//! The bookkeeping shared by the accelerator backends (AscendCL, CUDA driver): physical handles,
//! reservations and the slots mapped in them, over a thin [`VmmDriver`] that makes the calls.
//!
//! Device memory has no host pointer and, under VMM, no address at all until it is mapped. So
//! each physical allocation gets a private *home* mapping, made on first use, through which
//! host copies (`write`/`read`) and device copies go. Mapping one physical allocation at several
//! addresses is what zero-copy views need anyway; the home mapping is one more of them.
//!
//! Both vendors unmap whole mappings only (AscendCL by start address, CUDA by the exact mapped
//! range), so `unmap` refuses a range that cuts a mapping and `map` replaces whole mappings.
//! The vendor rules themselves (granularity, one device per reservation, …) are left to the
//! driver, whose error comes back named.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::{
    BackendError, BackendKind, BackendResult, DeviceBackend, DeviceInfo, DeviceTelemetry,
    PhysHandle, SharedHandle, VirtRange,
};
use crate::device::DeviceId;

/// The raw driver half of an accelerator backend. `dev` is an index into [`Self::devices`].
pub trait VmmDriver: Send + Sync + fmt::Debug + 'static {
    /// The driver's physical-allocation handle.
    type Raw: Copy + Send + Sync + fmt::Debug;

    fn kind(&self) -> BackendKind;
    fn devices(&self) -> &[DeviceInfo];
    fn alloc(&self, dev: usize, size: u64) -> BackendResult<Self::Raw>;
    fn free(&self, dev: usize, raw: Self::Raw) -> BackendResult<()>;
    /// Reserve `size` bytes of address space, granule-aligned, for use on `dev`.
    fn reserve(&self, dev: usize, size: u64) -> BackendResult<u64>;
    fn release(&self, dev: usize, base: u64, size: u64) -> BackendResult<()>;
    /// Map all `size` bytes of `raw` (which lives on `raw_dev`) at `va` in a reservation of
    /// `dev`, and make it accessible.
    fn map(
        &self,
        dev: usize,
        va: u64,
        size: u64,
        raw: Self::Raw,
        raw_dev: usize,
    ) -> BackendResult<()>;
    /// Unmap the whole mapping that starts at `va` and is `size` bytes long.
    fn unmap(&self, dev: usize, va: u64, size: u64) -> BackendResult<()>;
    fn write(&self, dev: usize, va: u64, data: &[u8]) -> BackendResult<()>;
    fn read(&self, dev: usize, va: u64, out: &mut [u8]) -> BackendResult<()>;
    /// Copy `len` bytes between mapped addresses; returns when they have landed.
    fn copy(
        &self,
        src_dev: usize,
        src: u64,
        dst_dev: usize,
        dst: u64,
        len: u64,
    ) -> BackendResult<()>;
    fn export(&self, dev: usize, raw: Self::Raw) -> BackendResult<SharedHandle>;
    fn import(&self, dev: usize, shared: SharedHandle, size: u64) -> BackendResult<Self::Raw>;
    fn telemetry(&self, dev: usize) -> BackendResult<Option<DeviceTelemetry>>;
    /// Copies the driver runs at once: its copy queues (one stream per GPU or NPU).
    fn copy_queues(&self) -> Option<usize>;
}

struct Phys<R> {
    raw: R,
    dev: usize,
    size: u64,
    /// The private mapping for copies, made on first use.
    home: Mutex<Option<u64>>,
    /// False once freed. Copies hold the read side, so `free_physical` waits for them.
    live: RwLock<bool>,
}

struct Reservation {
    dev: usize,
    size: u64,
    /// start address -> (handle, length) of each mapping in the range.
    slots: BTreeMap<u64, (PhysHandle, u64)>,
}

/// A [`DeviceBackend`] over a [`VmmDriver`]: see the module documentation.
pub struct VmmBackend<D: VmmDriver> {
    driver: D,
    next: AtomicU64,
    phys: Mutex<HashMap<u64, Arc<Phys<D::Raw>>>>,
    ranges: Mutex<BTreeMap<u64, Reservation>>,
    /// The pre-allocated pool, by (device index, size): allocations made and home-mapped
    /// before a scaling step, so the step's `alloc_physical` and its first copy into each
    /// allocation make no driver call (cuMemCreate, cuMemAddressReserve, cuMemMap,
    /// cuMemSetAccess cost tens of µs each, hundreds of times per step).
    pool: Mutex<Pool<D::Raw>>,
}

/// Pooled allocations by (device index, size).
type Pool<R> = BTreeMap<(usize, u64), Vec<Phys<R>>>;

impl<D: VmmDriver> fmt::Debug for VmmBackend<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmmBackend")
            .field("driver", &self.driver)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain bookkeeping behind; keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bounds(op: &'static str, offset: u64, len: u64, size: u64) -> BackendResult<()> {
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(BackendError::OutOfBounds {
            op,
            offset,
            len,
            size,
        });
    }
    Ok(())
}

impl<D: VmmDriver> VmmBackend<D> {
    pub fn new(driver: D) -> Self {
        Self {
            driver,
            next: AtomicU64::new(1),
            phys: Mutex::new(HashMap::new()),
            ranges: Mutex::new(BTreeMap::new()),
            pool: Mutex::new(BTreeMap::new()),
        }
    }

    /// The driver, for vendor-specific calls (tests, diagnostics).
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The driver's own handle behind `handle`, while it is live.
    pub fn raw_handle(&self, handle: PhysHandle) -> Option<D::Raw> {
        lock(&self.phys).get(&handle.0).map(|p| p.raw)
    }

    /// The device `handle` lives on.
    pub fn handle_device(&self, handle: PhysHandle) -> Option<DeviceId> {
        Some(self.driver.devices()[self.handle_index(handle)?].id)
    }

    /// The device index (into the driver's `devices()`) that `handle` lives on.
    pub(crate) fn handle_index(&self, handle: PhysHandle) -> Option<usize> {
        lock(&self.phys).get(&handle.0).map(|p| p.dev)
    }

    fn dev(&self, id: DeviceId) -> BackendResult<usize> {
        self.driver
            .devices()
            .iter()
            .position(|d| d.id == id)
            .ok_or(BackendError::UnknownDevice(id))
    }

    fn get(&self, h: PhysHandle) -> BackendResult<Arc<Phys<D::Raw>>> {
        lock(&self.phys)
            .get(&h.0)
            .cloned()
            .ok_or(BackendError::UnknownHandle(h.0))
    }

    fn insert(&self, raw: D::Raw, dev: usize, size: u64) -> PhysHandle {
        self.adopt(Phys {
            raw,
            dev,
            size,
            home: Mutex::new(None),
            live: RwLock::new(true),
        })
    }

    fn adopt(&self, p: Phys<D::Raw>) -> PhysHandle {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.phys).insert(id, Arc::new(p));
        PhysHandle(id)
    }

    /// Give a physical allocation that no handle names back to the driver.
    fn discard(&self, p: &Phys<D::Raw>) -> BackendResult<()> {
        self.drop_home(p)?;
        self.driver.free(p.dev, p.raw)
    }

    /// The home mapping of `p`, made now if it has none.
    fn home(&self, p: &Phys<D::Raw>) -> BackendResult<u64> {
        let mut home = lock(&p.home);
        if let Some(va) = *home {
            return Ok(va);
        }
        let va = self.driver.reserve(p.dev, p.size)?;
        if let Err(e) = self.driver.map(p.dev, va, p.size, p.raw, p.dev) {
            let _ = self.driver.release(p.dev, va, p.size);
            return Err(e);
        }
        *home = Some(va);
        Ok(va)
    }

    fn drop_home(&self, p: &Phys<D::Raw>) -> BackendResult<()> {
        let mut home = lock(&p.home);
        if let Some(va) = *home {
            self.driver.unmap(p.dev, va, p.size)?;
            *home = None;
            self.driver.release(p.dev, va, p.size)?;
        }
        Ok(())
    }

    /// The reservation `range` names, checked against its device.
    fn reservation<'a>(
        ranges: &'a mut BTreeMap<u64, Reservation>,
        range: VirtRange,
        devices: &[DeviceInfo],
        addr: u64,
        len: u64,
    ) -> BackendResult<&'a mut Reservation> {
        let not = || BackendError::NotReserved {
            device: range.device,
            addr,
            len,
        };
        let r = ranges.get_mut(&range.base).ok_or_else(not)?;
        let inside = addr >= range.base
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= range.base + r.size);
        if devices[r.dev].id != range.device || !inside {
            return Err(not());
        }
        Ok(r)
    }
}

// SAFETY: device memory has no host pointers (the default `host_pointer`): nothing is ever lent
// as `&[u8]`.
unsafe impl<D: VmmDriver> DeviceBackend for VmmBackend<D> {
    fn kind(&self) -> BackendKind {
        self.driver.kind()
    }

    fn devices(&self) -> &[DeviceInfo] {
        self.driver.devices()
    }

    fn holds_bytes(&self) -> bool {
        true
    }

    fn alloc_physical(&self, device: DeviceId, size: u64) -> BackendResult<PhysHandle> {
        if size == 0 {
            return Err(BackendError::ZeroSize {
                what: "physical allocation",
            });
        }
        let dev = self.dev(device)?;
        let pooled = lock(&self.pool).get_mut(&(dev, size)).and_then(|v| v.pop());
        if let Some(p) = pooled {
            return Ok(self.adopt(p));
        }
        let raw = self.driver.alloc(dev, size)?;
        Ok(self.insert(raw, dev, size))
    }

    /// Pooled memory is device memory outside the HMM's books, so a device's pool holds one
    /// step's allocations at most: a new `prefault` for a device first gives back what its pool
    /// held (a target pre-initialized earlier and not taken).
    fn prefault(&self, device: DeviceId, sizes: &[u64]) -> BackendResult<usize> {
        let dev = self.dev(device)?;
        if sizes.contains(&0) {
            return Err(BackendError::ZeroSize { what: "pool entry" });
        }
        let mut stale = Vec::new();
        lock(&self.pool).retain(|&(d, _), entries| {
            if d == dev {
                stale.append(entries);
            }
            d != dev
        });
        for p in &stale {
            self.discard(p)?;
        }
        let mut made = Vec::with_capacity(sizes.len());
        let result = (|| {
            for &size in sizes {
                let p = Phys {
                    raw: self.driver.alloc(dev, size)?,
                    dev,
                    size,
                    home: Mutex::new(None),
                    live: RwLock::new(true),
                };
                let homed = self.home(&p);
                made.push(p); // kept even when mapping failed, so the cleanup below frees it
                homed?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            // All or nothing: a pool half-filled would hold device memory nobody asked for.
            for p in &made {
                let _ = self.discard(p);
            }
            return Err(e);
        }
        let n = made.len();
        let mut pool = lock(&self.pool);
        for p in made {
            pool.entry((dev, p.size)).or_default().push(p);
        }
        Ok(n)
    }

    fn pooled_bytes(&self) -> u64 {
        lock(&self.pool)
            .iter()
            .map(|((_, size), v)| size * v.len() as u64)
            .sum()
    }

    fn free_physical(&self, handle: PhysHandle) -> BackendResult<()> {
        let p = self.get(handle)?;
        let mut live = p.live.write().unwrap_or_else(|e| e.into_inner());
        if !*live {
            return Err(BackendError::UnknownHandle(handle.0));
        }
        self.discard(&p)?;
        *live = false;
        lock(&self.phys).remove(&handle.0);
        Ok(())
    }

    fn reserve(&self, device: DeviceId, size: u64) -> BackendResult<VirtRange> {
        if size == 0 {
            return Err(BackendError::ZeroSize {
                what: "reservation",
            });
        }
        let dev = self.dev(device)?;
        let base = self.driver.reserve(dev, size)?;
        let r = Reservation {
            dev,
            size,
            slots: BTreeMap::new(),
        };
        lock(&self.ranges).insert(base, r);
        Ok(VirtRange { device, base, size })
    }

    fn release(&self, range: VirtRange) -> BackendResult<()> {
        let mut ranges = lock(&self.ranges);
        let r = Self::reservation(&mut ranges, range, self.devices(), range.base, range.size)?;
        self.driver.release(r.dev, range.base, r.size)?;
        ranges.remove(&range.base);
        Ok(())
    }

    fn map(&self, range: VirtRange, addr: u64, handle: PhysHandle) -> BackendResult<()> {
        let p = self.get(handle)?;
        let live = p.live.read().unwrap_or_else(|e| e.into_inner());
        if !*live {
            return Err(BackendError::UnknownHandle(handle.0));
        }
        let mut ranges = lock(&self.ranges);
        let r = Self::reservation(&mut ranges, range, self.devices(), addr, p.size)?;
        // Replace whatever overlaps: whole mappings, since the drivers cannot split one.
        let end = addr + p.size;
        let old: Vec<(u64, u64)> = r
            .slots
            .range(..end)
            .rev()
            .take_while(|(s, (_, len))| *s + *len > addr)
            .map(|(s, (_, len))| (*s, *len))
            .collect();
        for (s, len) in old {
            self.driver.unmap(r.dev, s, len)?;
            r.slots.remove(&s);
        }
        self.driver.map(r.dev, addr, p.size, p.raw, p.dev)?;
        r.slots.insert(addr, (handle, p.size));
        Ok(())
    }

    fn unmap(&self, range: VirtRange, addr: u64, size: u64) -> BackendResult<()> {
        let mut ranges = lock(&self.ranges);
        let r = Self::reservation(&mut ranges, range, self.devices(), addr, size)?;
        let end = addr + size;
        let hit: Vec<(u64, u64)> = r
            .slots
            .range(..end)
            .rev()
            .take_while(|(s, (_, len))| *s + *len > addr)
            .map(|(s, (_, len))| (*s, *len))
            .collect();
        if let Some((s, len)) = hit.iter().find(|(s, len)| *s < addr || s + len > end) {
            return Err(BackendError::Unsupported {
                backend: self.kind(),
                op: "unmap",
                why: format!(
                    "[{addr:#x}, {end:#x}) cuts the mapping [{s:#x}, {:#x}); device drivers unmap whole mappings only",
                    s + len
                ),
            });
        }
        for (s, len) in hit {
            self.driver.unmap(r.dev, s, len)?;
            r.slots.remove(&s);
        }
        Ok(())
    }

    fn write(&self, handle: PhysHandle, offset: u64, data: &[u8]) -> BackendResult<()> {
        let p = self.get(handle)?;
        let live = p.live.read().unwrap_or_else(|e| e.into_inner());
        if !*live {
            return Err(BackendError::UnknownHandle(handle.0));
        }
        bounds("write", offset, data.len() as u64, p.size)?;
        if data.is_empty() {
            return Ok(());
        }
        let va = self.home(&p)?;
        self.driver.write(p.dev, va + offset, data)
    }

    fn read(&self, handle: PhysHandle, offset: u64, out: &mut [u8]) -> BackendResult<()> {
        let p = self.get(handle)?;
        let live = p.live.read().unwrap_or_else(|e| e.into_inner());
        if !*live {
            return Err(BackendError::UnknownHandle(handle.0));
        }
        bounds("read", offset, out.len() as u64, p.size)?;
        if out.is_empty() {
            return Ok(());
        }
        let va = self.home(&p)?;
        self.driver.read(p.dev, va + offset, out)
    }

    fn copy(
        &self,
        src: PhysHandle,
        src_offset: u64,
        dst: PhysHandle,
        dst_offset: u64,
        len: u64,
    ) -> BackendResult<()> {
        let s = self.get(src)?;
        let d = self.get(dst)?;
        bounds("copy source", src_offset, len, s.size)?;
        bounds("copy destination", dst_offset, len, d.size)?;
        // One read guard when both are the same allocation: a second read lock on one thread
        // may deadlock behind a waiting writer.
        let gs = s.live.read().unwrap_or_else(|e| e.into_inner());
        let gd = (src != dst).then(|| d.live.read().unwrap_or_else(|e| e.into_inner()));
        if !*gs {
            return Err(BackendError::UnknownHandle(src.0));
        }
        if gd.as_ref().is_some_and(|g| !**g) {
            return Err(BackendError::UnknownHandle(dst.0));
        }
        if len == 0 {
            return Ok(());
        }
        let sva = self.home(&s)?;
        let dva = if src == dst { sva } else { self.home(&d)? };
        self.driver
            .copy(s.dev, sva + src_offset, d.dev, dva + dst_offset, len)
    }

    fn export(&self, handle: PhysHandle) -> BackendResult<SharedHandle> {
        let p = self.get(handle)?;
        let live = p.live.read().unwrap_or_else(|e| e.into_inner());
        if !*live {
            return Err(BackendError::UnknownHandle(handle.0));
        }
        self.driver.export(p.dev, p.raw)
    }

    fn import(
        &self,
        device: DeviceId,
        shared: SharedHandle,
        size: u64,
    ) -> BackendResult<PhysHandle> {
        if size == 0 {
            return Err(BackendError::ZeroSize {
                what: "imported allocation",
            });
        }
        let dev = self.dev(device)?;
        let raw = self.driver.import(dev, shared, size)?;
        Ok(self.insert(raw, dev, size))
    }

    fn telemetry(&self, device: DeviceId) -> BackendResult<Option<DeviceTelemetry>> {
        let dev = self.dev(device)?;
        self.driver.telemetry(dev)
    }

    fn copy_queues(&self) -> Option<usize> {
        self.driver.copy_queues()
    }
}

impl<D: VmmDriver> Drop for VmmBackend<D> {
    /// Give everything back to the driver, best effort: mappings, reservations, allocations.
    fn drop(&mut self) {
        let ranges = std::mem::take(&mut *lock(&self.ranges));
        for (base, r) in ranges {
            for (s, (_, len)) in r.slots {
                let _ = self.driver.unmap(r.dev, s, len);
            }
            let _ = self.driver.release(r.dev, base, r.size);
        }
        let phys = std::mem::take(&mut *lock(&self.phys));
        let pool = std::mem::take(&mut *lock(&self.pool));
        for p in phys.into_values() {
            let _ = self.drop_home(&p);
            let _ = self.driver.free(p.dev, p.raw);
        }
        for p in pool.into_values().flatten() {
            let _ = self.drop_home(&p);
            let _ = self.driver.free(p.dev, p.raw);
        }
    }
}
