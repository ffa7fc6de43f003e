//! Why an HMM call was refused. Each error names the rule and the values; a refused call has
//! changed nothing.

use super::types::{AllocId, ReservationId, ViewId};
use crate::backend::{BackendError, BackendKind};
use crate::device::DeviceId;

#[derive(Debug, thiserror::Error)]
pub enum HmmError {
    #[error("unknown device {0}")]
    UnknownDevice(DeviceId),
    #[error("unknown allocation {0}")]
    UnknownAlloc(AllocId),
    #[error("unknown reservation {0}")]
    UnknownReservation(ReservationId),
    #[error("unknown view {0}")]
    UnknownView(ViewId),
    #[error("reservation {reservation} has {slots} slots; there is no slot {slot}")]
    UnknownSlot {
        reservation: ReservationId,
        slot: usize,
        slots: usize,
    },
    #[error("{what} is zero bytes; it must be at least one byte")]
    ZeroSize { what: &'static str },
    #[error("a reservation needs at least one slot")]
    NoSlots,
    #[error("{what} of {bytes} bytes (rounded up to granularity) overflows 64 bits")]
    TooLarge { what: &'static str, bytes: u64 },
    #[error("not enough memory on device {device}: need {need} bytes, have {free} free")]
    OutOfMemory {
        device: DeviceId,
        need: u64,
        free: u64,
    },
    #[error(
        "allocation {alloc} is still mapped by {mappings} slot(s); unmap it or drop its views before freeing"
    )]
    InUse { alloc: AllocId, mappings: u32 },
    #[error(
        "allocation {alloc} is on device {alloc_device} but reservation {reservation} is on device \
         {reservation_device}; a reservation maps memory of its own device only"
    )]
    DeviceMismatch {
        alloc: AllocId,
        alloc_device: DeviceId,
        reservation: ReservationId,
        reservation_device: DeviceId,
    },
    #[error(
        "allocation {alloc} ({size} bytes) does not fit slot {slot} of reservation {reservation} ({slot_size} bytes)"
    )]
    SlotTooSmall {
        alloc: AllocId,
        size: u64,
        reservation: ReservationId,
        slot: usize,
        slot_size: u64,
    },
    #[error("slot {slot} of reservation {reservation} is not mapped")]
    SlotUnmapped {
        reservation: ReservationId,
        slot: usize,
    },
    #[error(
        "slot {slot} of reservation {reservation} maps only {mapped} of its {size} bytes; bytes \
         {offset}..{end} of the reservation are not backed"
    )]
    SlotPartlyMapped {
        reservation: ReservationId,
        slot: usize,
        mapped: u64,
        size: u64,
        offset: u64,
        end: u64,
    },
    #[error(
        "{op} of {len} bytes at offset {offset} is out of bounds of allocation {alloc} ({size} bytes)"
    )]
    OutOfBounds {
        op: &'static str,
        alloc: AllocId,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "{op} of {len} bytes at offset {offset} is out of bounds of reservation {reservation} ({size} bytes)"
    )]
    ViewOutOfBounds {
        op: &'static str,
        reservation: ReservationId,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "copy needs equal sizes: source {src} is {src_len} bytes, destination {dst} is {dst_len} bytes"
    )]
    SizeMismatch {
        src: AllocId,
        src_len: u64,
        dst: AllocId,
        dst_len: u64,
    },
    #[error(
        "reservation {reservation} cannot be read in place: the {backend} backend gives no host pointer"
    )]
    NoHostPointer {
        reservation: ReservationId,
        backend: BackendKind,
    },
    #[error(
        "{op} into allocation {alloc} refused: it is mapped by {mappings} slot(s), and mapped weights \
         may be read in place through `&Hmm`; write it through `&mut Hmm` (write_mut, write_view_mut)"
    )]
    MappedReadOnly {
        op: &'static str,
        alloc: AllocId,
        mappings: u32,
    },
    #[error(
        "{op} into allocation {alloc} refused: it is shared with another process (exported or \
         imported), which may read it in place; shared weights are read-only"
    )]
    SharedReadOnly { op: &'static str, alloc: AllocId },
    #[error(
        "reservation {reservation} cannot be lent in place: slot {slot} maps KV allocation {alloc}, \
         which changes while serving; read it with read_view"
    )]
    KvNotLent {
        reservation: ReservationId,
        slot: usize,
        alloc: AllocId,
    },
    #[error(
        "reservation {reservation} cannot be lent in place: the HMM does not own its backend alone \
         (another Arc or Weak of it exists, which could unmap or write the lent bytes)"
    )]
    BackendShared { reservation: ReservationId },
    #[error(transparent)]
    Backend(#[from] BackendError),
}
