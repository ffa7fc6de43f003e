//! The device-backend trait: what the HMM needs from a kind of device memory.
//!
//! The shape follows the accelerator VMM APIs (AscendCL `aclrtMallocPhysical` / `aclrtReserveMemAddress`
//! / `aclrtMapMem`, CUDA `cuMemCreate` / `cuMemAddressReserve` / `cuMemMap`): a *physical allocation*
//! is a handle to granule-aligned memory; a *reservation* is a virtual range; mapping puts a whole
//! physical allocation at an address inside a reservation. Backends do no accounting: the HMM
//! checks capacity before it asks. Every method takes `&self` so data-plane work (copies, reads)
//! can run on several threads while the HMM keeps the books.

use std::fmt;
use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};

use crate::device::DeviceId;

pub mod ascend;
pub mod cuda;
mod dynlib;
pub mod fdpass;
pub mod host;
pub mod modeled;
pub mod select;
pub mod telemetry;
pub mod vmm;

pub use telemetry::{DeviceTelemetry, Health};

/// Which implementation backs the devices.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Virtual devices on host memory: memfd + mmap, real bytes.
    Host,
    /// Accounting and a time model only; no bytes. Always labelled as modeled.
    Modeled,
    Ascend,
    Cuda,
}

impl BackendKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Modeled => "modeled",
            Self::Ascend => "ascend",
            Self::Cuda => "cuda",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A physical allocation, as the backend names it. Opaque to everyone else.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PhysHandle(pub u64);

/// A reserved virtual range on one device. `base` is a real address on backends that have one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct VirtRange {
    pub device: DeviceId,
    pub base: u64,
    pub size: u64,
}

/// Static facts about one device.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: DeviceId,
    /// Human name: `host-virtual`, `Ascend910C`, `NVIDIA H100 80GB HBM3`, …
    pub name: String,
    pub capacity: u64,
    /// Allocation and mapping granularity in bytes (a power of two).
    pub granularity: u64,
}

/// A physical allocation exported for another process.
#[derive(Debug)]
pub enum SharedHandle {
    /// A file descriptor (host memfd, CUDA POSIX fd); travels by SCM_RIGHTS.
    Fd(OwnedFd),
    /// A token (AscendCL shareable handle); travels as a number, importer PID whitelisted.
    Token(u64),
}

/// Errors from a backend. Each names the operation and the values involved.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{op} failed: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {value} is not a multiple of the allocation granularity {granularity}")]
    Misaligned {
        what: &'static str,
        value: u64,
        granularity: u64,
    },
    #[error("{what} is zero bytes; allocations and reservations must be at least one granule")]
    ZeroSize { what: &'static str },
    #[error("unknown physical handle {0}")]
    UnknownHandle(u64),
    #[error("no reservation covers address {addr:#x} ({len} bytes) on device {device}")]
    NotReserved {
        device: DeviceId,
        addr: u64,
        len: u64,
    },
    #[error("unknown device {0}")]
    UnknownDevice(DeviceId),
    #[error("{op} is out of bounds: offset {offset} + {len} bytes > allocation size {size}")]
    OutOfBounds {
        op: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "the {backend} backend holds no bytes ({op} is not possible; it models accounting and time only)"
    )]
    NoBytes {
        backend: BackendKind,
        op: &'static str,
    },
    #[error("{op} is not supported by the {backend} backend: {why}")]
    Unsupported {
        backend: BackendKind,
        op: &'static str,
        why: String,
    },
    #[error(
        "cannot load {library}: {detail} (looked in: {searched}; set {env_var} to point elsewhere)"
    )]
    LibraryMissing {
        library: String,
        searched: String,
        env_var: &'static str,
        detail: String,
    },
    #[error(
        "{library} has no symbol {symbol}: {detail} (the installed driver or toolkit is older than this backend needs)"
    )]
    SymbolMissing {
        library: String,
        symbol: &'static str,
        detail: String,
    },
    #[error("{api} returned {name} ({code}): {message}")]
    Driver {
        api: &'static str,
        code: i64,
        name: String,
        message: String,
    },
}

pub type BackendResult<T> = Result<T, BackendError>;

/// One kind of device memory. Implementations are internally synchronised.
///
/// # Safety
///
/// The HMM turns [`host_pointer`](Self::host_pointer) into `&[u8]` (zero-copy views), so an
/// implementation that returns `Some(p)` for `(range, addr)` guarantees: `p` addresses the
/// bytes from `addr` to the end of `range`, they are readable wherever an allocation was mapped
/// with [`map`](Self::map) (and writable through `p` too), and they stay so — unchanged but for
/// writes through `p` or to the mapped allocations — until this backend is next asked to `map`,
/// `unmap` or `release` in that range, to `free_physical` an allocation mapped there, or is
/// dropped. No other call may unmap or remap them. Implementations that return `None` (the
/// default) have nothing more to uphold than the trait's safe contract.
pub unsafe trait DeviceBackend: Send + Sync + fmt::Debug {
    fn kind(&self) -> BackendKind;

    /// The devices this backend exposes, in index order.
    fn devices(&self) -> &[DeviceInfo];

    /// Whether allocations hold real bytes (false only for `modeled`).
    fn holds_bytes(&self) -> bool;

    /// Allocate `size` bytes (a multiple of the granularity) of physical memory on `device`.
    fn alloc_physical(&self, device: DeviceId, size: u64) -> BackendResult<PhysHandle>;

    /// Free a physical allocation. The caller guarantees it is no longer mapped.
    fn free_physical(&self, handle: PhysHandle) -> BackendResult<()>;

    /// Reserve a contiguous virtual range of `size` bytes (a multiple of the granularity), not
    /// backed by memory.
    fn reserve(&self, device: DeviceId, size: u64) -> BackendResult<VirtRange>;

    /// Release a reservation. The caller guarantees nothing is mapped in it.
    fn release(&self, range: VirtRange) -> BackendResult<()>;

    /// Map the whole of `handle` at `addr`, which lies in a reservation on the handle's device and
    /// is granule-aligned. Replaces whatever was mapped there (this is the remap primitive).
    fn map(&self, range: VirtRange, addr: u64, handle: PhysHandle) -> BackendResult<()>;

    /// Unmap `size` bytes at `addr`, keeping the reservation (the range becomes inaccessible again).
    fn unmap(&self, range: VirtRange, addr: u64, size: u64) -> BackendResult<()>;

    /// Copy host bytes into a physical allocation.
    fn write(&self, handle: PhysHandle, offset: u64, data: &[u8]) -> BackendResult<()>;

    /// Copy bytes of a physical allocation to the host.
    fn read(&self, handle: PhysHandle, offset: u64, out: &mut [u8]) -> BackendResult<()>;

    /// Device-to-device copy between two physical allocations (same or different devices: the
    /// peer-to-peer path). Returns when the bytes have landed.
    fn copy(
        &self,
        src: PhysHandle,
        src_offset: u64,
        dst: PhysHandle,
        dst_offset: u64,
        len: u64,
    ) -> BackendResult<()>;

    /// A 64-bit xxh3 checksum of a byte range of an allocation. The default reads through the host.
    fn checksum(&self, handle: PhysHandle, offset: u64, len: u64) -> BackendResult<u64> {
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
        self.read(handle, offset, &mut buf)?;
        Ok(xxhash_rust::xxh3::xxh3_64(&buf))
    }

    /// Prepare physical memory for later allocations of these sizes (already granule-rounded)
    /// on `device`: the pre-allocated pool, so a scaling step's allocations neither allocate
    /// nor fault pages on its critical path. Returns how many entries were prepared; backends without a pool
    /// prepare none. Pool memory is not device memory in the HMM's books until allocated, so
    /// where it is device memory (cuda, ascend) a device's pool holds one step's allocations:
    /// a new call for a device replaces what its pool held. Host memory pools accumulate.
    fn prefault(&self, _device: DeviceId, _sizes: &[u64]) -> BackendResult<usize> {
        Ok(0)
    }

    /// Bytes waiting in the pre-allocated pool.
    fn pooled_bytes(&self) -> u64 {
        0
    }

    /// How many copies the backend runs at once, where it serializes them: its copy queues
    /// (one stream per GPU or NPU; logical devices carved from one GPU share its stream).
    /// `None`: no limit of its own (host memcpy scales with CPU threads). More copy threads
    /// than queues only contend for them.
    fn copy_queues(&self) -> Option<usize> {
        None
    }

    /// Export a physical allocation so another process can import and map it (zero copy).
    fn export(&self, handle: PhysHandle) -> BackendResult<SharedHandle>;

    /// Import an allocation exported by another process, of `size` bytes, onto `device`.
    fn import(
        &self,
        device: DeviceId,
        shared: SharedHandle,
        size: u64,
    ) -> BackendResult<PhysHandle>;

    /// The host-visible pointer to `addr` when device memory is host memory (the host backend);
    /// `None` elsewhere. CPU compute reads mapped views through this.
    fn host_pointer(&self, _range: VirtRange, _addr: u64) -> Option<*const u8> {
        None
    }

    /// Live telemetry of one device (memory, utilization, temperature, power, health) where the
    /// backend has a management library (DCMI, NVML); `None` where it has none.
    fn telemetry(&self, _device: DeviceId) -> BackendResult<Option<DeviceTelemetry>> {
        Ok(None)
    }
}
