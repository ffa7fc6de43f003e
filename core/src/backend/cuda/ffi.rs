//! CUDA driver and NVML C types, constants and struct layouts (ffi.md D; NVML from nvml.h).
//!
//! C enums are `int`-sized `i32` newtypes, never Rust enums. Struct sizes and offsets are checked
//! at compile time against the gcc LP64 layout the reference gives.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};

pub type CUresult = i32;
pub type CUdevice = i32;
pub type CUdeviceptr = u64;
pub type CUmemGenericAllocationHandle = u64;
pub type CUcontext = *mut c_void;
pub type CUstream = *mut c_void;

pub const CUDA_SUCCESS: CUresult = 0;

macro_rules! c_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident = $val:expr),* $(,)? }) => {
        $(#[$m])*
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub struct $name(pub i32);
        impl $name {
            $(pub const $var: Self = Self($val);)*
        }
    };
}

c_enum!(
    /// `CUmemAllocationType`.
    CUmemAllocationType { INVALID = 0, PINNED = 1 }
);
c_enum!(
    /// `CUmemAllocationHandleType`.
    CUmemAllocationHandleType {
        NONE = 0,
        POSIX_FILE_DESCRIPTOR = 1,
    }
);
c_enum!(
    /// `CUmemLocationType`.
    CUmemLocationType { INVALID = 0, DEVICE = 1 }
);
c_enum!(
    /// `CUmemAccess_flags`.
    CUmemAccessFlags {
        PROT_NONE = 0,
        PROT_READ = 1,
        PROT_READWRITE = 3,
    }
);
c_enum!(
    /// `CUmemAllocationGranularity_flags`.
    CUmemAllocationGranularityFlags {
        MINIMUM = 0,
        RECOMMENDED = 1,
    }
);
c_enum!(
    /// `CUdevice_attribute`, the two this backend asks about (cuda.h; not in ffi.md).
    CUdeviceAttribute {
        VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102,
        HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED = 103,
    }
);

/// `CUmemLocation`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CUmemLocation {
    pub type_: CUmemLocationType,
    pub id: i32,
}

/// The anonymous `allocFlags` struct inside `CUmemAllocationProp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CUmemAllocFlags {
    pub compression_type: u8,
    pub gpu_direct_rdma_capable: u8,
    pub usage: u16,
    pub reserved: [u8; 4],
}

/// `CUmemAllocationProp`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CUmemAllocationProp {
    pub type_: CUmemAllocationType,
    pub requested_handle_types: CUmemAllocationHandleType,
    pub location: CUmemLocation,
    /// NULL on Linux.
    pub win32_handle_meta_data: *mut c_void,
    pub alloc_flags: CUmemAllocFlags,
}

impl CUmemAllocationProp {
    /// Pinned memory on GPU `ordinal`, exportable as `handles` (must match the later export type).
    pub fn device(ordinal: i32, handles: CUmemAllocationHandleType) -> Self {
        Self {
            type_: CUmemAllocationType::PINNED,
            requested_handle_types: handles,
            location: CUmemLocation {
                type_: CUmemLocationType::DEVICE,
                id: ordinal,
            },
            win32_handle_meta_data: std::ptr::null_mut(),
            alloc_flags: CUmemAllocFlags::default(),
        }
    }
}

/// `CUmemAccessDesc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CUmemAccessDesc {
    pub location: CUmemLocation,
    pub flags: CUmemAccessFlags,
}

impl CUmemAccessDesc {
    pub const fn read_write(ordinal: i32) -> Self {
        Self {
            location: CUmemLocation {
                type_: CUmemLocationType::DEVICE,
                id: ordinal,
            },
            flags: CUmemAccessFlags::PROT_READWRITE,
        }
    }
}

/// NVML `nvmlReturn_t`: 0 is success.
pub type NvmlReturn = i32;
/// NVML `nvmlDevice_t`.
pub type NvmlDevice = *mut c_void;
/// `NVML_TEMPERATURE_GPU`.
pub const NVML_TEMPERATURE_GPU: i32 = 0;

/// NVML `nvmlMemory_t` (bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmlMemory {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// NVML `nvmlUtilization_t` (percent over the last sample period).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvmlUtilization {
    pub gpu: u32,
    pub memory: u32,
}

const _: () = assert!(size_of::<CUmemLocation>() == 8);
const _: () = assert!(size_of::<CUmemAllocFlags>() == 8);
const _: () = assert!(size_of::<CUmemAllocationProp>() == 32);
const _: () = assert!(offset_of!(CUmemAllocationProp, location) == 8);
const _: () = assert!(offset_of!(CUmemAllocationProp, win32_handle_meta_data) == 16);
const _: () = assert!(offset_of!(CUmemAllocationProp, alloc_flags) == 24);
const _: () = assert!(size_of::<CUmemAccessDesc>() == 12);
const _: () = assert!(offset_of!(CUmemAccessDesc, flags) == 8);
const _: () = assert!(size_of::<NvmlMemory>() == 24);
const _: () = assert!(size_of::<NvmlUtilization>() == 8);
