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

mod account;
mod error;
mod types;
mod view;

use std::collections::BTreeMap;
use std::sync::Arc;

use account::DeviceAccount;
pub use error::HmmError;
pub use types::{
    AllocId, Allocation, RegionKind, RegionTag, Reservation, ReservationId, Slot, Usage, View,
    ViewId,
};

use crate::backend::{DeviceBackend, DeviceInfo, SharedHandle};
use crate::device::DeviceId;

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

    pub fn backend(&self) -> &Arc<dyn DeviceBackend> {
        &self.backend
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
        self.book(device, size, len, tag, handle)
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

    /// Writes host bytes into an allocation at `offset` (within its requested length).
    pub fn write(&self, id: AllocId, offset: u64, data: &[u8]) -> Result<(), HmmError> {
        let a = self.check_range("write", id, offset, data.len())?;
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
        Ok(self
            .backend
            .copy(s.handle, src_offset, d.handle, dst_offset, len)?)
    }

    /// xxh3 of the allocation's requested bytes (padding excluded).
    pub fn checksum(&self, id: AllocId) -> Result<u64, HmmError> {
        let a = self.get_alloc(id)?;
        Ok(self.backend.checksum(a.handle, 0, a.len)?)
    }

    /// A handle another process can import to map the same memory (zero copy).
    pub fn export(&self, id: AllocId) -> Result<SharedHandle, HmmError> {
        let a = self.get_alloc(id)?;
        Ok(self.backend.export(a.handle)?)
    }
}

#[cfg(test)]
mod tests;
