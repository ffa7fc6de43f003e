//! The HBM Management Module: the one owner of device memory.
//!
//! It keeps the books — physical allocations with their owner tag, refcount and place on the
//! device, reservations with their slots, views, and a byte-exact used/free/peak account per
//! device — and asks the backend to do the memory work only after every rule has been checked, so
//! a refused call changes nothing. Instances never own memory: they get views, reservations whose
//! slots map allocations the HMM holds. Freeing is explicit and refused while anything maps.
//!
//! Data calls (`write`, `read`, `copy`, `checksum`) take `&self`: on real backends they move bytes
//! on shared device memory and may run on several threads while the books stay put.
//!
//! Memory safety of the in-place reads ([`Hmm::view_bytes`], [`Hmm::view_range`]): they lend
//! `&[u8]` tied to `&Hmm`, so nothing reachable through `&Hmm` may change the lent bytes or their
//! mappings. Hence:
//! - the backend's host pointers are valid for the mapped range until the next map, unmap,
//!   release or free there (the safety contract of the `unsafe trait DeviceBackend`);
//! - mappings change only through `&mut Hmm` (map, unmap, release, free);
//! - the backend is reachable through `&Hmm` only as a [`BackendRef`] (facts, telemetry, the
//!   pool), never to map, unmap, free or write; and bytes are lent only while this HMM is the
//!   backend's sole owner (no other `Arc` or `Weak` of it exists), so no one else can either;
//! - writes through `&Hmm` ([`write`](Hmm::write), [`write_view`](Hmm::write_view),
//!   [`copy`](Hmm::copy) and [`copy_range`](Hmm::copy_range) into their destination) reach only
//!   KV memory, which is never lent as `&[u8]` (read it with [`read_view`](Hmm::read_view)), or
//!   allocations no slot maps (so no lent slice covers them; mapping them needs `&mut Hmm`).
//!   Mapped weights are written through `&mut Hmm` ([`write_mut`](Hmm::write_mut),
//!   [`write_view_mut`](Hmm::write_view_mut));
//! - weights shared with another HMM or process (exported or imported) are never written again
//!   by this HMM; the peer is held to the same rule by the sharing protocol (the agent exports
//!   only loaded weights and KV).
//!
//! The previously undefined pattern — unmapping through the backend while a slice is alive —
//! no longer compiles:
//!
//! ```compile_fail
//! # use emoe_core::hmm::{Hmm, ReservationId};
//! fn unmap_under_a_slice(h: &Hmm, r: ReservationId) {
//!     let bytes = h.view_bytes(r).unwrap();
//!     let range = h.reservation(r).unwrap().range;
//!     h.backend().unmap(range, range.base, range.size).unwrap(); // no `unmap` on BackendRef
//!     let _ = bytes[0];
//! }
//! ```
//!
//! nor does writing a lent weight through `&Hmm`'s exclusive writers while the slice lives:
//!
//! ```compile_fail
//! # use emoe_core::hmm::{Hmm, ReservationId};
//! fn write_under_a_slice(h: &mut Hmm, r: ReservationId) {
//!     let bytes = h.view_bytes(r).unwrap();
//!     h.write_view_mut(r, 0, &[1]).unwrap(); // needs `&mut Hmm` while `bytes` borrows it
//!     let _ = bytes[0];
//! }
//! ```

mod account;
mod error;
mod types;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use account::DeviceAccount;
pub use error::HmmError;
pub use types::{
    AllocId, Allocation, RegionKind, RegionTag, Reservation, ReservationId, Slot, Usage, View,
    ViewId,
};

use crate::backend::{
    BackendKind, BackendResult, DeviceBackend, DeviceInfo, DeviceTelemetry, SharedHandle,
};
use crate::device::DeviceId;

/// The HMM's backend as `&Hmm` lends it: facts, telemetry and the pre-allocated pool. Calls that
/// map, unmap, free or write memory are not reachable through it (see the module notes).
#[derive(Clone, Copy, Debug)]
pub struct BackendRef<'a>(&'a dyn DeviceBackend);

impl BackendRef<'_> {
    pub fn kind(&self) -> BackendKind {
        self.0.kind()
    }

    pub fn devices(&self) -> &[DeviceInfo] {
        self.0.devices()
    }

    pub fn holds_bytes(&self) -> bool {
        self.0.holds_bytes()
    }

    pub fn copy_queues(&self) -> Option<usize> {
        self.0.copy_queues()
    }

    pub fn pooled_bytes(&self) -> u64 {
        self.0.pooled_bytes()
    }

    /// Fills the pre-allocated pool (memory no slot maps until the HMM allocates it).
    pub fn prefault(&self, device: DeviceId, sizes: &[u64]) -> BackendResult<usize> {
        self.0.prefault(device, sizes)
    }

    pub fn telemetry(&self, device: DeviceId) -> BackendResult<Option<DeviceTelemetry>> {
        self.0.telemetry(device)
    }
}

/// The HBM Management Module over one backend.
#[derive(Debug)]
pub struct Hmm {
    backend: Arc<dyn DeviceBackend>,
    accounts: BTreeMap<DeviceId, DeviceAccount>,
    allocs: BTreeMap<AllocId, Allocation>,
    reservations: BTreeMap<ReservationId, Reservation>,
    views: BTreeMap<ViewId, View>,
    next_alloc: u64,
    next_reservation: u64,
    next_view: u64,
    /// Allocations exported to or imported from another HMM or process: their non-KV bytes are
    /// never written again here (a peer may be reading them in place). `export` takes `&self`.
    shared: Mutex<BTreeSet<AllocId>>,
    /// Bumped by every change to the books (allocations, reservations, maps, views, peaks), so
    /// observers can tell cheaply whether anything changed.
    generation: u64,
}

impl Hmm {
    pub fn new(backend: Arc<dyn DeviceBackend>) -> Self {
        let accounts = backend
            .devices()
            .iter()
            .map(|d| (d.id, DeviceAccount::new(d)))
            .collect();
        Self {
            backend,
            accounts,
            allocs: BTreeMap::new(),
            reservations: BTreeMap::new(),
            views: BTreeMap::new(),
            next_alloc: 1,
            next_reservation: 1,
            next_view: 1,
            shared: Mutex::new(BTreeSet::new()),
            generation: 0,
        }
    }

    /// A number that changes whenever the books change (see the field's note).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// The backend's facts; mapping and memory calls stay behind the HMM's rules.
    pub fn backend(&self) -> BackendRef<'_> {
        BackendRef(self.backend.as_ref())
    }

    /// Whether this HMM is the only owner of its backend, so nothing outside it can map, unmap,
    /// free or write the memory it lends as `&[u8]`. Only the HMM could make a new `Arc` or
    /// `Weak` of it, and it never does, so the answer holds for as long as `&self` is borrowed.
    fn owns_backend(&self) -> bool {
        Arc::strong_count(&self.backend) == 1 && Arc::weak_count(&self.backend) == 0
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, BTreeSet<AllocId>> {
        // Inserts and removes never panic half-way, so a poisoned set is still consistent.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Refuses a write into `a` unless no lent slice can cover its bytes (see the module notes):
    /// through `&self` (`exclusive` false) only KV or allocations no slot maps; never weights
    /// shared with another HMM or process.
    fn check_writable(
        &self,
        op: &'static str,
        a: &Allocation,
        exclusive: bool,
    ) -> Result<(), HmmError> {
        if a.tag.kind == RegionKind::Kv {
            return Ok(());
        }
        if self.shared().contains(&a.id) {
            return Err(HmmError::SharedReadOnly { op, alloc: a.id });
        }
        if !exclusive && a.mappings > 0 {
            return Err(HmmError::MappedReadOnly {
                op,
                alloc: a.id,
                mappings: a.mappings,
            });
        }
        Ok(())
    }

    pub fn devices(&self) -> &[DeviceInfo] {
        self.backend.devices()
    }

    fn account(&self, device: DeviceId) -> Result<&DeviceAccount, HmmError> {
        self.accounts
            .get(&device)
            .ok_or(HmmError::UnknownDevice(device))
    }

    fn account_mut(&mut self, device: DeviceId) -> Result<&mut DeviceAccount, HmmError> {
        self.accounts
            .get_mut(&device)
            .ok_or(HmmError::UnknownDevice(device))
    }

    // ----- accounting -----

    pub fn usage(&self, device: DeviceId) -> Result<Usage, HmmError> {
        Ok(self.account(device)?.usage())
    }

    /// Starts a new peak window: peak becomes the current use.
    pub fn reset_peak(&mut self, device: DeviceId) -> Result<(), HmmError> {
        self.account_mut(device)?.reset_peak();
        self.bump();
        Ok(())
    }

    /// `bytes` rounded up to the device granularity (what an allocation of `bytes` counts).
    pub fn round_up(&self, device: DeviceId, bytes: u64) -> Result<u64, HmmError> {
        self.account(device)?.round_up("allocation", bytes)
    }

    /// Whether an allocation of `bytes` would fit now; returns the rounded size it would count.
    pub fn check_fits(&self, device: DeviceId, bytes: u64) -> Result<u64, HmmError> {
        self.account(device)?.check_fits(bytes)
    }

    // ----- physical allocations -----

    /// Allocates `len` bytes (counted rounded up to the granularity) on `device`. Capacity is
    /// checked before the backend is asked; a refusal changes nothing.
    pub fn alloc(
        &mut self,
        device: DeviceId,
        len: u64,
        tag: RegionTag,
    ) -> Result<AllocId, HmmError> {
        if len == 0 {
            return Err(HmmError::ZeroSize { what: "allocation" });
        }
        let size = self.account(device)?.check_fits(len)?;
        let handle = self.backend.alloc_physical(device, size)?;
        self.book(device, size, len, tag, handle)
    }

    /// Enters a backend allocation of `size` bytes into the books (capacity already checked);
    /// on failure the backend side is undone.
    fn book(
        &mut self,
        device: DeviceId,
        size: u64,
        len: u64,
        tag: RegionTag,
        handle: crate::backend::PhysHandle,
    ) -> Result<AllocId, HmmError> {
        let extents = match self.account_mut(device).and_then(|a| a.take(size)) {
            Ok(e) => e,
            Err(e) => {
                let _ = self.backend.free_physical(handle);
                return Err(e);
            }
        };
        let id = AllocId(self.next_alloc);
        self.next_alloc += 1;
        self.bump();
        self.allocs.insert(
            id,
            Allocation {
                id,
                device,
                size,
                len,
                tag,
                extents,
                mappings: 0,
                handle,
            },
        );
        Ok(id)
    }

    /// Adopts an allocation exported by another process (`len` bytes asked, counted rounded up
    /// to the granularity) onto `device`: the same physical memory, now in these books too.
    /// Capacity is checked first; a refusal changes nothing. Freeing it here releases only this
    /// process's reference.
    pub fn import(
        &mut self,
        device: DeviceId,
        shared: SharedHandle,
        len: u64,
        tag: RegionTag,
    ) -> Result<AllocId, HmmError> {
        if len == 0 {
            return Err(HmmError::ZeroSize { what: "allocation" });
        }
        let size = self.account(device)?.check_fits(len)?;
        let handle = self.backend.import(device, shared, size)?;
        let id = self.book(device, size, len, tag, handle)?;
        self.shared
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        Ok(id)
    }

    /// Prepares the backend's pre-allocated pool for allocations of `lens` bytes on `device`
    /// (each rounded to the granularity, as `alloc` would); see [`DeviceBackend::prefault`].
    pub fn prefault(&self, device: DeviceId, lens: &[u64]) -> Result<usize, HmmError> {
        let acc = self.account(device)?;
        let sizes = lens
            .iter()
            .map(|l| acc.round_up("allocation", *l))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.backend.prefault(device, &sizes)?)
    }

    /// Frees an allocation that no slot maps.
    pub fn free(&mut self, id: AllocId) -> Result<(), HmmError> {
        let a = self.get_alloc(id)?;
        if a.mappings > 0 {
            return Err(HmmError::InUse {
                alloc: id,
                mappings: a.mappings,
            });
        }
        self.backend.free_physical(a.handle)?;
        self.shared
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        self.bump();
        if let Some(a) = self.allocs.remove(&id)
            && let Some(acc) = self.accounts.get_mut(&a.device)
        {
            acc.give(a.size, &a.extents);
        }
        Ok(())
    }

    pub fn allocation(&self, id: AllocId) -> Option<&Allocation> {
        self.allocs.get(&id)
    }

    fn get_alloc(&self, id: AllocId) -> Result<&Allocation, HmmError> {
        self.allocs.get(&id).ok_or(HmmError::UnknownAlloc(id))
    }

    /// The allocations of one device, by offset (none for an unknown device).
    pub fn allocations(&self, device: DeviceId) -> impl Iterator<Item = &Allocation> {
        let mut v: Vec<_> = self
            .allocs
            .values()
            .filter(|a| a.device == device)
            .collect();
        v.sort_by_key(|a| (a.offset(), a.id));
        v.into_iter()
    }

    /// Every allocation, by id.
    pub fn all_allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocs.values()
    }

    // ----- data -----

    fn check_range(
        &self,
        op: &'static str,
        id: AllocId,
        offset: u64,
        len: usize,
    ) -> Result<&Allocation, HmmError> {
        let a = self.get_alloc(id)?;
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= a.len => Ok(a),
            _ => Err(HmmError::OutOfBounds {
                op,
                alloc: id,
                offset,
                len,
                size: a.len,
            }),
        }
    }

    /// Writes host bytes into an allocation at `offset` (within its requested length). Through
    /// `&self` only KV or an allocation no slot maps (a mapped weight may be lent as `&[u8]`);
    /// see [`write_mut`](Self::write_mut).
    pub fn write(&self, id: AllocId, offset: u64, data: &[u8]) -> Result<(), HmmError> {
        let a = self.check_range("write", id, offset, data.len())?;
        self.check_writable("write", a, false)?;
        Ok(self.backend.write(a.handle, offset, data)?)
    }

    /// [`write`](Self::write) into any allocation this HMM does not share with a peer, mapped or
    /// not: `&mut self` ends every slice lent by [`view_bytes`](Self::view_bytes).
    pub fn write_mut(&mut self, id: AllocId, offset: u64, data: &[u8]) -> Result<(), HmmError> {
        let a = self.check_range("write", id, offset, data.len())?;
        self.check_writable("write", a, true)?;
        Ok(self.backend.write(a.handle, offset, data)?)
    }

    /// Reads bytes of an allocation at `offset` (within its requested length).
    pub fn read(&self, id: AllocId, offset: u64, out: &mut [u8]) -> Result<(), HmmError> {
        let a = self.check_range("read", id, offset, out.len())?;
        Ok(self.backend.read(a.handle, offset, out)?)
    }

    /// Copies the whole of `src` into `dst` (equal requested sizes, any devices: the P2P path).
    pub fn copy(&self, src: AllocId, dst: AllocId) -> Result<(), HmmError> {
        let s = self.get_alloc(src)?;
        let d = self.get_alloc(dst)?;
        if s.len != d.len {
            return Err(HmmError::SizeMismatch {
                src,
                src_len: s.len,
                dst,
                dst_len: d.len,
            });
        }
        self.check_writable("copy to", d, false)?;
        Ok(self.backend.copy(s.handle, 0, d.handle, 0, s.len)?)
    }

    /// Copies `len` bytes from `src` at `src_offset` to `dst` at `dst_offset` (any devices).
    pub fn copy_range(
        &self,
        src: AllocId,
        src_offset: u64,
        dst: AllocId,
        dst_offset: u64,
        len: u64,
    ) -> Result<(), HmmError> {
        let n = usize::try_from(len).unwrap_or(usize::MAX);
        let s = self.check_range("copy from", src, src_offset, n)?;
        let d = self.check_range("copy to", dst, dst_offset, n)?;
        self.check_writable("copy to", d, false)?;
        Ok(self
            .backend
            .copy(s.handle, src_offset, d.handle, dst_offset, len)?)
    }

    /// xxh3 of the allocation's requested bytes (padding excluded).
    pub fn checksum(&self, id: AllocId) -> Result<u64, HmmError> {
        let a = self.get_alloc(id)?;
        Ok(self.backend.checksum(a.handle, 0, a.len)?)
    }

    /// A handle another process can import to map the same memory (zero copy). From then on
    /// this HMM never writes the allocation unless it is KV (the peer may read it in place).
    pub fn export(&self, id: AllocId) -> Result<SharedHandle, HmmError> {
        let a = self.get_alloc(id)?;
        let h = self.backend.export(a.handle)?;
        self.shared().insert(id);
        Ok(h)
    }
}

#[cfg(test)]
mod tests;
