//! The validation both host and modeled backends apply before touching memory: a device table,
//! and books of physical allocations and reservations. Shared so the modeled backend refuses
//! exactly what the host backend refuses.

use std::collections::HashMap;

use crate::backend::{BackendError, BackendKind, BackendResult, DeviceInfo, PhysHandle, VirtRange};
use crate::device::DeviceId;

/// The devices of a backend, looked up by id in O(1).
#[derive(Debug)]
pub(in crate::backend) struct DeviceTable {
    backend: BackendKind,
    devices: Vec<DeviceInfo>,
    index: HashMap<DeviceId, usize>,
}

fn check_granularity(backend: BackendKind, d: &DeviceInfo) -> BackendResult<u64> {
    if d.granularity.is_power_of_two() {
        return Ok(d.granularity);
    }
    Err(BackendError::Unsupported {
        backend,
        op: "this granularity",
        why: format!(
            "{} bytes on device {} is not a power of two",
            d.granularity, d.id
        ),
    })
}

impl DeviceTable {
    /// Checks each device: capacity a non-zero multiple of a power-of-two granularity, ids unique.
    pub(in crate::backend) fn new(
        backend: BackendKind,
        devices: Vec<DeviceInfo>,
    ) -> BackendResult<Self> {
        let mut index = HashMap::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            check_granularity(backend, d)?;
            if d.capacity == 0 {
                return Err(BackendError::ZeroSize {
                    what: "device capacity",
                });
            }
            if !d.capacity.is_multiple_of(d.granularity) {
                return Err(BackendError::Misaligned {
                    what: "device capacity",
                    value: d.capacity,
                    granularity: d.granularity,
                });
            }
            if index.insert(d.id, i).is_some() {
                return Err(BackendError::Unsupported {
                    backend,
                    op: "this device list",
                    why: format!("device {} is listed twice", d.id),
                });
            }
        }
        Ok(Self {
            backend,
            devices,
            index,
        })
    }

    /// Devices as given; the first of duplicate ids wins lookups, and a bad granularity is
    /// reported by [`check_size`](Self::check_size) on every use.
    pub(in crate::backend) fn lenient(backend: BackendKind, devices: Vec<DeviceInfo>) -> Self {
        let mut index = HashMap::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            index.entry(d.id).or_insert(i);
        }
        Self {
            backend,
            devices,
            index,
        }
    }

    pub(in crate::backend) fn all(&self) -> &[DeviceInfo] {
        &self.devices
    }

    pub(in crate::backend) fn get(&self, id: DeviceId) -> BackendResult<&DeviceInfo> {
        self.index
            .get(&id)
            .and_then(|&i| self.devices.get(i))
            .ok_or(BackendError::UnknownDevice(id))
    }

    /// The granularity of `id`, after checking that `size` is a non-zero multiple of it.
    pub(in crate::backend) fn check_size(
        &self,
        id: DeviceId,
        what: &'static str,
        size: u64,
    ) -> BackendResult<u64> {
        let g = check_granularity(self.backend, self.get(id)?)?;
        if size == 0 {
            return Err(BackendError::ZeroSize { what });
        }
        if !size.is_multiple_of(g) {
            return Err(BackendError::Misaligned {
                what,
                value: size,
                granularity: g,
            });
        }
        Ok(g)
    }
}

/// One physical allocation in the books; `extra` is what the backend keeps with it.
#[derive(Debug)]
pub(in crate::backend) struct Phys<A> {
    pub device: DeviceId,
    pub size: u64,
    pub extra: A,
}

/// Registry of physical allocations and reservations, with the validation rules every backend
/// applies before touching memory.
#[derive(Debug)]
pub(in crate::backend) struct Books<A> {
    next_handle: u64,
    allocs: HashMap<u64, Phys<A>>,
    /// Keyed by base address.
    reservations: HashMap<u64, VirtRange>,
}

impl<A> Books<A> {
    pub(in crate::backend) fn new() -> Self {
        Self {
            next_handle: 1,
            allocs: HashMap::new(),
            reservations: HashMap::new(),
        }
    }

    pub(in crate::backend) fn next_handle(&mut self) -> PhysHandle {
        let h = self.next_handle;
        self.next_handle += 1;
        PhysHandle(h)
    }

    pub(in crate::backend) fn insert_alloc(&mut self, handle: PhysHandle, phys: Phys<A>) {
        self.allocs.insert(handle.0, phys);
    }

    pub(in crate::backend) fn alloc(&self, handle: PhysHandle) -> BackendResult<&Phys<A>> {
        self.allocs
            .get(&handle.0)
            .ok_or(BackendError::UnknownHandle(handle.0))
    }

    pub(in crate::backend) fn remove_alloc(
        &mut self,
        handle: PhysHandle,
    ) -> BackendResult<Phys<A>> {
        self.allocs
            .remove(&handle.0)
            .ok_or(BackendError::UnknownHandle(handle.0))
    }

    pub(in crate::backend) fn allocs_len(&self) -> usize {
        self.allocs.len()
    }

    pub(in crate::backend) fn reservations_len(&self) -> usize {
        self.reservations.len()
    }

    pub(in crate::backend) fn reservations(&self) -> impl Iterator<Item = &VirtRange> {
        self.reservations.values()
    }

    pub(in crate::backend) fn insert_reservation(&mut self, range: VirtRange) {
        self.reservations.insert(range.base, range);
    }

    pub(in crate::backend) fn remove_reservation(&mut self, range: VirtRange) -> BackendResult<()> {
        self.check_reservation(range)?;
        self.reservations.remove(&range.base);
        Ok(())
    }

    /// `range` must be exactly a live reservation (same device, base and size).
    pub(in crate::backend) fn check_reservation(&self, range: VirtRange) -> BackendResult<()> {
        match self.reservations.get(&range.base) {
            Some(r) if *r == range => Ok(()),
            _ => Err(BackendError::NotReserved {
                device: range.device,
                addr: range.base,
                len: range.size,
            }),
        }
    }

    /// `[addr, addr + len)` is granule-aligned and inside the live reservation `range`.
    pub(in crate::backend) fn check_span(
        &self,
        table: &DeviceTable,
        range: VirtRange,
        addr: u64,
        len: u64,
    ) -> BackendResult<()> {
        self.check_reservation(range)?;
        let g = table.check_size(range.device, "mapping size", len)?;
        if !addr.is_multiple_of(g) {
            return Err(BackendError::Misaligned {
                what: "mapping address",
                value: addr,
                granularity: g,
            });
        }
        let inside = addr >= range.base
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= range.base + range.size);
        if !inside {
            return Err(BackendError::NotReserved {
                device: range.device,
                addr,
                len,
            });
        }
        Ok(())
    }

    /// Checks a map request and returns the allocation to map. A handle of another device is
    /// refused like AscendCL refuses mixing devices in one reservation: no reservation of the
    /// handle's device covers the address.
    pub(in crate::backend) fn check_map(
        &self,
        table: &DeviceTable,
        range: VirtRange,
        addr: u64,
        handle: PhysHandle,
    ) -> BackendResult<&Phys<A>> {
        let phys = self.alloc(handle)?;
        self.check_span(table, range, addr, phys.size)?;
        if phys.device != range.device {
            return Err(BackendError::NotReserved {
                device: phys.device,
                addr,
                len: phys.size,
            });
        }
        Ok(phys)
    }

    /// Checks a copy and returns the two allocations.
    pub(in crate::backend) fn check_copy(
        &self,
        src: PhysHandle,
        src_offset: u64,
        dst: PhysHandle,
        dst_offset: u64,
        len: u64,
    ) -> BackendResult<(&Phys<A>, &Phys<A>)> {
        let s = self.alloc(src)?;
        let d = self.alloc(dst)?;
        check_bounds("copy source", s.size, src_offset, len)?;
        check_bounds("copy destination", d.size, dst_offset, len)?;
        Ok((s, d))
    }
}

/// `[offset, offset + len)` lies in an allocation of `size` bytes.
pub(in crate::backend) fn check_bounds(
    op: &'static str,
    size: u64,
    offset: u64,
    len: u64,
) -> BackendResult<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BackendError::OutOfBounds {
            op,
            offset,
            len,
            size,
        }),
    }
}
