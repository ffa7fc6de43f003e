//! Views and reservations: contiguous virtual ranges whose slots map physical allocations.
//!
//! Mapping an allocation into a slot replaces what was there (the remap that moves an expert
//! without reallocating the layer's buffer); refcounts follow every map, remap and unmap.

use std::collections::BTreeSet;

use super::Hmm;
use super::error::HmmError;
use super::types::{
    AllocId, Allocation, RegionKind, Reservation, ReservationId, Slot, View, ViewId,
};
use crate::device::DeviceId;

/// One slot's share of a byte range of a reservation.
struct Piece {
    slot: usize,
    alloc: AllocId,
    /// Offset inside the slot (and so inside the allocation).
    at: u64,
    /// Offset inside the caller's buffer.
    buf: usize,
    len: usize,
}

impl Hmm {
    // ----- views -----

    /// A new, empty view (one instance's mapping of HMM memory).
    pub fn create_view(&mut self, name: impl Into<String>) -> ViewId {
        let id = ViewId(self.next_view);
        self.next_view += 1;
        self.bump();
        let view = View {
            id,
            name: name.into(),
            reservations: Vec::new(),
        };
        self.views.insert(id, view);
        id
    }

    pub fn view(&self, id: ViewId) -> Option<&View> {
        self.views.get(&id)
    }

    fn get_view(&self, id: ViewId) -> Result<&View, HmmError> {
        self.views.get(&id).ok_or(HmmError::UnknownView(id))
    }

    /// Every view, by id.
    pub fn views(&self) -> impl Iterator<Item = &View> {
        self.views.values()
    }

    /// Unmaps every slot of the view and releases its reservations. Allocations stay: freeing is
    /// explicit. If the backend fails part-way, what was released stays released and the view
    /// keeps the rest.
    pub fn drop_view(&mut self, id: ViewId) -> Result<(), HmmError> {
        let reservations = self.get_view(id)?.reservations.clone();
        for r in reservations {
            self.release(r)?;
        }
        self.views.remove(&id);
        self.bump();
        Ok(())
    }

    /// For every mapped allocation, the views that map it (one pass over the reservations).
    pub fn views_by_alloc(&self) -> std::collections::BTreeMap<AllocId, Vec<ViewId>> {
        let mut m: std::collections::BTreeMap<AllocId, Vec<ViewId>> = Default::default();
        for r in self.reservations.values() {
            for a in r.slots.iter().filter_map(|s| s.mapped) {
                let v = m.entry(a).or_default();
                if !v.contains(&r.view) {
                    v.push(r.view);
                }
            }
        }
        for v in m.values_mut() {
            v.sort();
        }
        m
    }

    /// The views that map `alloc` in at least one slot, by id.
    pub fn views_of(&self, alloc: AllocId) -> Vec<ViewId> {
        let views: BTreeSet<_> = self
            .reservations
            .values()
            .filter(|r| r.slots.iter().any(|s| s.mapped == Some(alloc)))
            .map(|r| r.view)
            .collect();
        views.into_iter().collect()
    }

    // ----- reservations -----

    /// Reserves one contiguous range on `device` for `view`, with slots of the given sizes (each
    /// rounded up to the granularity) laid back to back.
    pub fn reserve(
        &mut self,
        view: ViewId,
        device: DeviceId,
        slot_sizes: &[u64],
    ) -> Result<ReservationId, HmmError> {
        self.get_view(view)?;
        let acc = self.account(device)?;
        if slot_sizes.is_empty() {
            return Err(HmmError::NoSlots);
        }
        let mut slots = Vec::with_capacity(slot_sizes.len());
        let mut total: u64 = 0;
        for &bytes in slot_sizes {
            if bytes == 0 {
                return Err(HmmError::ZeroSize { what: "slot" });
            }
            let size = acc.round_up("slot", bytes)?;
            slots.push(Slot {
                offset: total,
                size,
                mapped: None,
            });
            total = total.checked_add(size).ok_or(HmmError::TooLarge {
                what: "reservation",
                bytes: total,
            })?;
        }
        let range = self.backend.reserve(device, total)?;
        let id = ReservationId(self.next_reservation);
        self.next_reservation += 1;
        self.bump();
        self.reservations.insert(
            id,
            Reservation {
                id,
                view,
                device,
                range,
                slots,
            },
        );
        if let Some(v) = self.views.get_mut(&view) {
            v.reservations.push(id);
        }
        Ok(id)
    }

    pub fn reservation(&self, id: ReservationId) -> Option<&Reservation> {
        self.reservations.get(&id)
    }

    /// Every reservation, by id.
    pub fn reservations(&self) -> impl Iterator<Item = &Reservation> {
        self.reservations.values()
    }

    fn get_reservation(&self, id: ReservationId) -> Result<&Reservation, HmmError> {
        self.reservations
            .get(&id)
            .ok_or(HmmError::UnknownReservation(id))
    }

    fn slot(&self, res: ReservationId, slot: usize) -> Result<(&Reservation, Slot), HmmError> {
        let r = self.get_reservation(res)?;
        let s = r.slots.get(slot).copied().ok_or(HmmError::UnknownSlot {
            reservation: res,
            slot,
            slots: r.slots.len(),
        })?;
        Ok((r, s))
    }

    fn set_slot(&mut self, res: ReservationId, slot: usize, to: Option<AllocId>) {
        self.bump();
        if let Some(s) = self
            .reservations
            .get_mut(&res)
            .and_then(|r| r.slots.get_mut(slot))
        {
            s.mapped = to;
        }
    }

    fn add_mapping(&mut self, id: AllocId, delta: i32) {
        if let Some(a) = self.allocs.get_mut(&id) {
            a.mappings = a.mappings.saturating_add_signed(delta);
        }
    }

    /// Maps the whole of `alloc` at slot `slot` of `res`, replacing and returning what was
    /// mapped there (the remap). The allocation must be on the reservation's device and no
    /// larger than the slot.
    pub fn map(
        &mut self,
        res: ReservationId,
        slot: usize,
        alloc: AllocId,
    ) -> Result<Option<AllocId>, HmmError> {
        let (r, s) = self.slot(res, slot)?;
        let a = self.get_alloc(alloc)?;
        if a.device != r.device {
            return Err(HmmError::DeviceMismatch {
                alloc,
                alloc_device: a.device,
                reservation: res,
                reservation_device: r.device,
            });
        }
        if a.size > s.size {
            return Err(HmmError::SlotTooSmall {
                alloc,
                size: a.size,
                reservation: res,
                slot,
                slot_size: s.size,
            });
        }
        if s.mapped == Some(alloc) {
            return Ok(s.mapped);
        }
        let (range, addr, new_size) = (r.range, r.range.base + s.offset, a.size);
        let old = match s.mapped {
            Some(o) => Some(self.get_alloc(o)?),
            None => None,
        };
        let restore = |old: Option<&Allocation>| {
            let _ = match old {
                Some(o) => self.backend.map(range, addr, o.handle),
                None => self.backend.unmap(range, addr, s.size),
            };
        };
        if let Err(e) = self.backend.map(range, addr, a.handle) {
            // A failed MAP_FIXED may already have discarded what was there: put it back.
            restore(old);
            return Err(e.into());
        }
        // A larger predecessor leaves a tail mapped past the new allocation: close it.
        if let Some(o) = old
            && o.size > new_size
            && let Err(e) = self
                .backend
                .unmap(range, addr + new_size, o.size - new_size)
        {
            restore(old);
            return Err(e.into());
        }
        if let Some(o) = s.mapped {
            self.add_mapping(o, -1);
        }
        self.add_mapping(alloc, 1);
        self.set_slot(res, slot, Some(alloc));
        Ok(s.mapped)
    }

    /// Unmaps slot `slot` of `res`, keeping the reservation; returns what was mapped.
    pub fn unmap(&mut self, res: ReservationId, slot: usize) -> Result<AllocId, HmmError> {
        let (r, s) = self.slot(res, slot)?;
        let alloc = s.mapped.ok_or(HmmError::SlotUnmapped {
            reservation: res,
            slot,
        })?;
        self.backend
            .unmap(r.range, r.range.base + s.offset, s.size)?;
        self.add_mapping(alloc, -1);
        self.set_slot(res, slot, None);
        Ok(alloc)
    }

    /// Unmaps every slot of `res` and gives its range back. Allocations stay.
    pub fn release(&mut self, res: ReservationId) -> Result<(), HmmError> {
        let r = self.get_reservation(res)?;
        let mapped: Vec<(Slot, AllocId)> = r
            .slots
            .iter()
            .filter_map(|s| s.mapped.map(|a| (*s, a)))
            .collect();
        let range = r.range;
        let undo = |done: &[(Slot, AllocId)]| {
            for (s, a) in done {
                if let Ok(al) = self.get_alloc(*a) {
                    let _ = self.backend.map(range, range.base + s.offset, al.handle);
                }
            }
        };
        for (i, (s, _)) in mapped.iter().enumerate() {
            if let Err(e) = self.backend.unmap(range, range.base + s.offset, s.size) {
                undo(&mapped[..i]);
                return Err(e.into());
            }
        }
        if let Err(e) = self.backend.release(range) {
            undo(&mapped);
            return Err(e.into());
        }
        for (_, a) in &mapped {
            self.add_mapping(*a, -1);
        }
        self.bump();
        if let Some(r) = self.reservations.remove(&res)
            && let Some(v) = self.views.get_mut(&r.view)
        {
            v.reservations.retain(|&x| x != res);
        }
        Ok(())
    }

    // ----- bytes through a view -----

    /// Splits `[offset, offset + len)` of `res` by slot, checking each touched byte is backed.
    fn pieces(
        &self,
        op: &'static str,
        r: &Reservation,
        offset: u64,
        len: usize,
    ) -> Result<Vec<Piece>, HmmError> {
        let end = offset
            .checked_add(len as u64)
            .filter(|&e| e <= r.range.size);
        let Some(end) = end else {
            return Err(HmmError::ViewOutOfBounds {
                op,
                reservation: r.id,
                offset,
                len: len as u64,
                size: r.range.size,
            });
        };
        let first = r.slots.partition_point(|s| s.offset + s.size <= offset);
        let mut pieces = Vec::new();
        for (i, s) in r.slots.iter().enumerate().skip(first) {
            if s.offset >= end {
                break;
            }
            let alloc = s.mapped.ok_or(HmmError::SlotUnmapped {
                reservation: r.id,
                slot: i,
            })?;
            let from = offset.max(s.offset);
            let to = end.min(s.offset + s.size);
            let backed = self.get_alloc(alloc)?.size;
            if to - s.offset > backed {
                return Err(HmmError::SlotPartlyMapped {
                    reservation: r.id,
                    slot: i,
                    mapped: backed,
                    size: s.size,
                    offset: s.offset + backed,
                    end: s.offset + s.size,
                });
            }
            pieces.push(Piece {
                slot: i,
                alloc,
                at: from - s.offset,
                buf: (from - offset) as usize,
                len: (to - from) as usize,
            });
        }
        Ok(pieces)
    }

    /// Checks that `pieces` of `r` may be lent as `&[u8]` for as long as `&self` is borrowed:
    /// none is KV (written through `&self` while serving) and no one but this HMM can reach the
    /// backend (see the module notes of [`crate::hmm`]).
    fn check_lendable(&self, r: &Reservation, pieces: &[Piece]) -> Result<(), HmmError> {
        for pc in pieces {
            if self.get_alloc(pc.alloc)?.tag.kind == RegionKind::Kv {
                return Err(HmmError::KvNotLent {
                    reservation: r.id,
                    slot: pc.slot,
                    alloc: pc.alloc,
                });
            }
        }
        if !self.owns_backend() {
            return Err(HmmError::BackendShared { reservation: r.id });
        }
        // Pairs with the Release of the last other owner's drop: its calls happened before.
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        Ok(())
    }

    /// The whole reservation as host bytes, read in place through its mappings (zero copy).
    /// Needs every slot fully mapped, no KV among them, a backend with host pointers that this
    /// HMM owns alone. The bytes cannot change while the slice lives: every way to remap them
    /// or write them needs `&mut Hmm` (see the module notes of [`crate::hmm`]).
    pub fn view_bytes(&self, res: ReservationId) -> Result<&[u8], HmmError> {
        let r = self.get_reservation(res)?;
        let len = usize::try_from(r.range.size).map_err(|_| HmmError::TooLarge {
            what: "view",
            bytes: r.range.size,
        })?;
        let pieces = self.pieces("view_bytes", r, 0, len)?;
        let p = self.host_pointer(r)?;
        self.check_lendable(r, &pieces)?;
        // SAFETY: every byte of the range is mapped (checked by `pieces`), so by the
        // `DeviceBackend` safety contract `p` addresses it readable until the backend next maps,
        // unmaps, releases or frees there. For the lifetime of `&self` nothing changes those
        // bytes or their mappings: mappings change only through `&mut self`; writes through
        // `&self` reach only KV (refused above) or unmapped allocations; this HMM owns the
        // backend alone (checked) and lends it only as `BackendRef`; shared weights are written
        // by no one (the sharing contract).
        Ok(unsafe { std::slice::from_raw_parts(p, len) })
    }

    /// Bytes `[offset, offset + len)` of a reservation, read in place through its mappings (zero
    /// copy). Only the touched slots need to be mapped (an expert range's spare slots may not be);
    /// the rules of [`view_bytes`](Self::view_bytes) apply to them.
    pub fn view_range(
        &self,
        res: ReservationId,
        offset: u64,
        len: usize,
    ) -> Result<&[u8], HmmError> {
        let r = self.get_reservation(res)?;
        let pieces = self.pieces("view_range", r, offset, len)?;
        let p = self.host_pointer(r)?;
        self.check_lendable(r, &pieces)?;
        // SAFETY: `[offset, offset + len)` lies in the reservation and is mapped readable
        // (checked by `pieces`); it stays unchanged while `&self` lives, as in `view_bytes`.
        Ok(unsafe { std::slice::from_raw_parts(p.add(offset as usize), len) })
    }

    fn host_pointer(&self, r: &Reservation) -> Result<*const u8, HmmError> {
        self.backend
            .host_pointer(r.range, r.range.base)
            .ok_or(HmmError::NoHostPointer {
                reservation: r.id,
                backend: self.backend.kind(),
            })
    }

    /// Reads bytes of a reservation at `offset`: through its mapping where the backend gives host
    /// pointers, else from the mapped allocations. Every touched slot must be mapped.
    pub fn read_view(
        &self,
        res: ReservationId,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), HmmError> {
        let r = self.get_reservation(res)?;
        let pieces = self.pieces("read_view", r, offset, out.len())?;
        if let Ok(p) = self.host_pointer(r) {
            // SAFETY: `[offset, offset + len)` is mapped (checked by `pieces`); `out` is ours.
            unsafe {
                std::ptr::copy_nonoverlapping(p.add(offset as usize), out.as_mut_ptr(), out.len())
            };
            return Ok(());
        }
        for pc in pieces {
            let h = self.get_alloc(pc.alloc)?.handle;
            self.backend
                .read(h, pc.at, &mut out[pc.buf..pc.buf + pc.len])?;
        }
        Ok(())
    }

    /// Writes bytes into a reservation at `offset`, like [`read_view`](Self::read_view). Through
    /// `&self` only into KV slots (weights may be lent as `&[u8]`); see
    /// [`write_view_mut`](Self::write_view_mut).
    pub fn write_view(&self, res: ReservationId, offset: u64, data: &[u8]) -> Result<(), HmmError> {
        self.write_view_checked(res, offset, data, false)
    }

    /// [`write_view`](Self::write_view) into any slot whose allocation this HMM does not share
    /// with a peer: `&mut self` ends every slice lent by [`view_bytes`](Self::view_bytes).
    pub fn write_view_mut(
        &mut self,
        res: ReservationId,
        offset: u64,
        data: &[u8],
    ) -> Result<(), HmmError> {
        self.write_view_checked(res, offset, data, true)
    }

    fn write_view_checked(
        &self,
        res: ReservationId,
        offset: u64,
        data: &[u8],
        exclusive: bool,
    ) -> Result<(), HmmError> {
        let r = self.get_reservation(res)?;
        let pieces = self.pieces("write_view", r, offset, data.len())?;
        for pc in &pieces {
            self.check_writable("write_view", self.get_alloc(pc.alloc)?, exclusive)?;
        }
        if let Ok(p) = self.host_pointer(r) {
            // SAFETY: `[offset, offset + len)` is mapped writable (checked by `pieces`), and no
            // slice lent by `view_bytes`/`view_range` covers it: it is KV, never lent, or the
            // caller holds `&mut self` (checked by `check_writable`).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    p.add(offset as usize).cast_mut(),
                    data.len(),
                )
            };
            return Ok(());
        }
        for pc in pieces {
            let h = self.get_alloc(pc.alloc)?.handle;
            self.backend
                .write(h, pc.at, &data[pc.buf..pc.buf + pc.len])?;
        }
        Ok(())
    }
}
