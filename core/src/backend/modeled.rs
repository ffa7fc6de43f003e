//! The modeled backend: accounting without bytes, for clusters of hundreds of devices and for
//! planning real model sizes. Handles and granule-aligned base addresses come from counters; every
//! call is validated exactly as the host backend validates it (both use [`books`]), and costs O(1).

pub(super) mod books;

use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use self::books::{Books, DeviceTable, Phys};
use super::{
    BackendError, BackendKind, BackendResult, DeviceBackend, DeviceInfo, PhysHandle, SharedHandle,
    VirtRange,
};
use crate::device::DeviceId;

struct ModeledState {
    books: Books<()>,
    /// The next free fake address: reservations never overlap and keep a one-granule gap.
    next_base: u64,
}

/// Accounting-only devices. Holds no bytes; copies validate and succeed.
pub struct ModeledBackend {
    table: DeviceTable,
    state: Mutex<ModeledState>,
}

/// Fake reservations start here, far from anything a real process maps.
const FIRST_BASE: u64 = 1 << 44;

impl ModeledBackend {
    /// Devices as given. A device with a granularity that is not a power of two refuses every
    /// allocation and reservation with an error naming it; use [`try_new`](Self::try_new) to
    /// refuse such a list up front.
    pub fn new(devices: Vec<DeviceInfo>) -> Self {
        Self::with_table(DeviceTable::lenient(BackendKind::Modeled, devices))
    }

    /// Like [`new`](Self::new), but checks every device first: power-of-two granularity,
    /// capacity a non-zero multiple of it, no id listed twice.
    pub fn try_new(devices: Vec<DeviceInfo>) -> BackendResult<Self> {
        Ok(Self::with_table(DeviceTable::new(
            BackendKind::Modeled,
            devices,
        )?))
    }

    fn with_table(table: DeviceTable) -> Self {
        Self {
            table,
            state: Mutex::new(ModeledState {
                books: Books::new(),
                next_base: FIRST_BASE,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, ModeledState> {
        // Updates never panic half-way, so a poisoned lock still guards consistent books.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn no_bytes(op: &'static str) -> BackendError {
        BackendError::NoBytes {
            backend: BackendKind::Modeled,
            op,
        }
    }
}

impl fmt::Debug for ModeledBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        f.debug_struct("ModeledBackend")
            .field("devices", &self.table.all().len())
            .field("allocations", &st.books.allocs_len())
            .field("reservations", &st.books.reservations_len())
            .finish()
    }
}

// SAFETY: no host pointers (the default `host_pointer`): nothing is ever lent as `&[u8]`.
unsafe impl DeviceBackend for ModeledBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Modeled
    }

    fn devices(&self) -> &[DeviceInfo] {
        self.table.all()
    }

    fn holds_bytes(&self) -> bool {
        false
    }

    fn alloc_physical(&self, device: DeviceId, size: u64) -> BackendResult<PhysHandle> {
        self.table.check_size(device, "allocation size", size)?;
        let mut st = self.state();
        let h = st.books.next_handle();
        st.books.insert_alloc(
            h,
            Phys {
                device,
                size,
                extra: (),
            },
        );
        Ok(h)
    }

    fn free_physical(&self, handle: PhysHandle) -> BackendResult<()> {
        self.state().books.remove_alloc(handle).map(drop)
    }

    fn reserve(&self, device: DeviceId, size: u64) -> BackendResult<VirtRange> {
        let g = self.table.check_size(device, "reservation size", size)?;
        let mut st = self.state();
        let exhausted = || BackendError::Unsupported {
            backend: BackendKind::Modeled,
            op: "reserve",
            why: "the modeled virtual address space is exhausted".into(),
        };
        let base = st
            .next_base
            .checked_next_multiple_of(g)
            .ok_or_else(exhausted)?;
        let next = base
            .checked_add(size)
            .and_then(|e| e.checked_add(g))
            .ok_or_else(exhausted)?;
        st.next_base = next;
        let range = VirtRange { device, base, size };
        st.books.insert_reservation(range);
        Ok(range)
    }

    fn release(&self, range: VirtRange) -> BackendResult<()> {
        self.state().books.remove_reservation(range)
    }

    fn map(&self, range: VirtRange, addr: u64, handle: PhysHandle) -> BackendResult<()> {
        self.state()
            .books
            .check_map(&self.table, range, addr, handle)
            .map(drop)
    }

    fn unmap(&self, range: VirtRange, addr: u64, size: u64) -> BackendResult<()> {
        self.state()
            .books
            .check_span(&self.table, range, addr, size)
    }

    fn write(&self, _: PhysHandle, _: u64, _: &[u8]) -> BackendResult<()> {
        Err(Self::no_bytes("write"))
    }

    fn read(&self, _: PhysHandle, _: u64, _: &mut [u8]) -> BackendResult<()> {
        Err(Self::no_bytes("read"))
    }

    fn copy(
        &self,
        src: PhysHandle,
        src_offset: u64,
        dst: PhysHandle,
        dst_offset: u64,
        len: u64,
    ) -> BackendResult<()> {
        self.state()
            .books
            .check_copy(src, src_offset, dst, dst_offset, len)
            .map(drop)
    }

    fn checksum(&self, _: PhysHandle, _: u64, _: u64) -> BackendResult<u64> {
        Err(Self::no_bytes("checksum"))
    }

    fn export(&self, _: PhysHandle) -> BackendResult<SharedHandle> {
        Err(Self::no_bytes("export"))
    }

    fn import(&self, _: DeviceId, _: SharedHandle, _: u64) -> BackendResult<PhysHandle> {
        Err(Self::no_bytes("import"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn dev(i: u32) -> DeviceInfo {
        DeviceInfo {
            id: DeviceId::new(0, i),
            name: "modeled".into(),
            capacity: 64 * 1024 * MIB,
            granularity: 2 * MIB,
        }
    }

    fn backend() -> ModeledBackend {
        ModeledBackend::new(vec![dev(0), dev(1)])
    }

    #[test]
    fn validates_like_a_device() {
        let b = backend();
        let d0 = DeviceId::new(0, 0);
        let d1 = DeviceId::new(0, 1);
        assert!(matches!(
            b.alloc_physical(d0, MIB),
            Err(BackendError::Misaligned { .. })
        ));
        assert!(matches!(
            b.alloc_physical(DeviceId::new(3, 0), 2 * MIB),
            Err(BackendError::UnknownDevice(_))
        ));
        let h0 = b.alloc_physical(d0, 4 * MIB).unwrap();
        let h1 = b.alloc_physical(d1, 4 * MIB).unwrap();
        let r = b.reserve(d0, 8 * MIB).unwrap();
        assert_eq!(r.base % (2 * MIB), 0);
        b.map(r, r.base + 4 * MIB, h0).unwrap();
        // Would run past the end of the reservation.
        assert!(b.map(r, r.base + 6 * MIB, h0).is_err());
        // Another device's memory in this reservation.
        let e = b.map(r, r.base, h1).unwrap_err();
        assert!(e.to_string().contains("device 0/1"), "{e}");
        assert!(b.map(r, r.base + MIB, h0).is_err());
        b.unmap(r, r.base, 8 * MIB).unwrap();
        b.copy(h0, 0, h1, 2 * MIB, 2 * MIB).unwrap();
        assert!(matches!(
            b.copy(h0, 0, h1, 2 * MIB, 4 * MIB),
            Err(BackendError::OutOfBounds { .. })
        ));
        assert!(matches!(
            b.checksum(h0, 0, 4 * MIB),
            Err(BackendError::NoBytes { .. })
        ));
        b.release(r).unwrap();
        assert!(b.release(r).is_err());
        b.free_physical(h0).unwrap();
        assert!(matches!(
            b.free_physical(h0),
            Err(BackendError::UnknownHandle(_))
        ));
    }

    #[test]
    fn reservations_never_overlap() {
        let b = backend();
        let d0 = DeviceId::new(0, 0);
        let r1 = b.reserve(d0, 6 * MIB).unwrap();
        let r2 = b.reserve(d0, 2 * MIB).unwrap();
        assert!(r2.base >= r1.base + r1.size);
        let forged = VirtRange {
            size: 4 * MIB,
            ..r1
        };
        assert!(
            b.map(forged, r1.base, b.alloc_physical(d0, 2 * MIB).unwrap())
                .is_err()
        );
    }

    #[test]
    fn rejects_bad_device_lists() {
        let mut bad = dev(0);
        bad.granularity = 3 * MIB;
        let e = ModeledBackend::try_new(vec![bad.clone()]).err().unwrap();
        assert!(e.to_string().contains("3145728"), "{e}");
        assert!(ModeledBackend::try_new(vec![dev(0), dev(0)]).is_err());
        // Accepted as given, but every allocation on the bad device says why it is refused.
        let b = ModeledBackend::new(vec![bad, dev(1)]);
        let e = b.alloc_physical(DeviceId::new(0, 0), 6 * MIB).unwrap_err();
        assert!(e.to_string().contains("3145728"), "{e}");
        assert!(b.reserve(DeviceId::new(0, 0), 6 * MIB).is_err());
        b.alloc_physical(DeviceId::new(0, 1), 2 * MIB).unwrap();
    }
}
