//! AscendCL and DCMI C types, constants and struct layouts (ffi.md A.1, A.3, A.4, B).
//!
//! C enums are `int`-sized, so they are `i32` newtypes with associated constants, never Rust
//! enums (a value the driver adds later must not be undefined behaviour). Every struct's size
//! and field offsets are checked at compile time against the gcc x86_64/aarch64 LP64 layout
//! the reference gives.

use std::ffi::{c_uint, c_ulong, c_ulonglong, c_void};
use std::mem::{offset_of, size_of};

/// `aclError`: 0 is success.
pub type AclError = i32;
/// `aclrtStream`.
pub type AclrtStream = *mut c_void;
/// `aclrtDrvMemHandle`: an opaque physical-memory handle.
pub type AclrtDrvMemHandle = *mut c_void;

pub const ACL_SUCCESS: AclError = 0;
pub const ACL_ERROR_REPEAT_INITIALIZE: AclError = 100002;

macro_rules! c_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $val:expr),* $(,)? }) => {
        $(#[$m])*
        #[repr(transparent)]
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub struct $name(pub i32);
        impl $name {
            $($(#[$vm])* pub const $var: Self = Self($val);)*
        }
    };
}

c_enum!(
    /// `aclrtMemcpyKind` (L144).
    AclrtMemcpyKind {
        HOST_TO_HOST = 0,
        HOST_TO_DEVICE = 1,
        DEVICE_TO_HOST = 2,
        DEVICE_TO_DEVICE = 3,
        DEFAULT = 4,
    }
);

c_enum!(
    /// `aclrtMemAttr` (L227); the subset this backend uses.
    AclrtMemAttr {
        DDR_MEM = 0,
        HBM_MEM = 1,
        /// 2 MiB pages: what torch_npu's expandable segments allocate.
        HBM_MEM_HUGE = 4,
        HBM_MEM_NORMAL = 5,
        HBM_MEM_HUGE1G = 10,
    }
);

c_enum!(
    /// `aclrtMemLocationType` (L314).
    AclrtMemLocationType {
        HOST = 0,
        DEVICE = 1,
    }
);

c_enum!(
    /// `aclrtMemAllocationType` (L351).
    AclrtMemAllocationType { PINNED = 0 }
);

c_enum!(
    /// `aclrtMemHandleType` (L355). Export takes `NONE`: the shareable handle is a token.
    AclrtMemHandleType { NONE = 0, POSIX = 2 }
);

c_enum!(
    /// `aclrtMemGranularityOptions` (L377).
    AclrtMemGranularityOptions {
        MINIMUM = 0,
        RECOMMENDED = 1,
    }
);

c_enum!(
    /// `aclrtMemAccessFlags` (L946).
    AclrtMemAccessFlags {
        NONE = 0,
        READ = 1,
        READWRITE = 3,
    }
);

/// `ACL_RT_VMM_EXPORT_FLAG_DEFAULT`: PID whitelist on (importers must be added by PID).
pub const ACL_RT_VMM_EXPORT_FLAG_DEFAULT: u64 = 0;
/// `ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION`: any process may import (torch_npu's choice).
pub const ACL_RT_VMM_EXPORT_FLAG_DISABLE_PID_VALIDATION: u64 = 1;

/// `aclrtMemLocation` (L322).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclrtMemLocation {
    pub id: u32,
    pub type_: AclrtMemLocationType,
}

/// `aclrtPhysicalMemProp` (L369).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclrtPhysicalMemProp {
    pub handle_type: AclrtMemHandleType,
    pub allocation_type: AclrtMemAllocationType,
    pub mem_attr: AclrtMemAttr,
    pub location: AclrtMemLocation,
    pub reserve: u64,
}

impl AclrtPhysicalMemProp {
    /// Pinned device memory of `attr` on ACL device `device`, as torch_npu and RT sample 7 build it.
    pub const fn device(device: u32, attr: AclrtMemAttr) -> Self {
        Self {
            handle_type: AclrtMemHandleType::NONE,
            allocation_type: AclrtMemAllocationType::PINNED,
            mem_attr: attr,
            location: AclrtMemLocation {
                id: device,
                type_: AclrtMemLocationType::DEVICE,
            },
            reserve: 0,
        }
    }
}

/// `aclrtMemAccessDesc` (L952).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclrtMemAccessDesc {
    pub flags: AclrtMemAccessFlags,
    pub location: AclrtMemLocation,
    pub rsv: [u8; 12],
}

/// `aclrtUtilizationInfo` (L302). `utilization_extend` must be NULL.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AclrtUtilizationInfo {
    pub cube_utilization: i32,
    pub vector_utilization: i32,
    pub aicpu_utilization: i32,
    pub memory_utilization: i32,
    pub utilization_extend: *mut c_void,
}

/// DCMI `struct dcmi_hbm_info` (HDK dcmi_050). Sizes in MB, frequency in MHz.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DcmiHbmInfo {
    pub memory_size: c_ulonglong,
    pub freq: c_uint,
    pub memory_usage: c_ulonglong,
    pub temp: i32,
    pub bandwith_util_rate: c_uint,
}

/// DCMI `struct dcmi_get_memory_info_stru` (DDR/total memory; the fallback on chips without HBM).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DcmiGetMemoryInfo {
    pub memory_size: c_ulonglong,
    pub memory_available: c_ulonglong,
    pub freq: c_uint,
    pub hugepagesize: c_ulong,
    pub hugepages_total: c_ulong,
    pub hugepages_free: c_ulong,
    pub utiliza: c_uint,
    pub reserve: [u8; 60],
}

impl Default for DcmiGetMemoryInfo {
    fn default() -> Self {
        Self {
            memory_size: 0,
            memory_available: 0,
            freq: 0,
            hugepagesize: 0,
            hugepages_total: 0,
            hugepages_free: 0,
            utiliza: 0,
            reserve: [0; 60],
        }
    }
}

/// DCMI `input_type` for `dcmi_get_device_utilization_rate` (HDK 052).
pub const DCMI_UTIL_AI_CORE: i32 = 2;
pub const DCMI_UTIL_HBM: i32 = 6;
pub const DCMI_UTIL_NPU: i32 = 13;

// Layouts from ffi.md (gcc, LP64). A mismatch here would corrupt every call that passes the struct.
const _: () = assert!(size_of::<AclrtMemLocation>() == 8);
const _: () = assert!(size_of::<AclrtPhysicalMemProp>() == 32);
const _: () = assert!(offset_of!(AclrtPhysicalMemProp, mem_attr) == 8);
const _: () = assert!(offset_of!(AclrtPhysicalMemProp, location) == 12);
const _: () = assert!(offset_of!(AclrtPhysicalMemProp, reserve) == 24);
const _: () = assert!(size_of::<AclrtMemAccessDesc>() == 24);
const _: () = assert!(offset_of!(AclrtMemAccessDesc, location) == 4);
const _: () = assert!(offset_of!(AclrtMemAccessDesc, rsv) == 12);
const _: () = assert!(size_of::<AclrtUtilizationInfo>() == 24);
const _: () = assert!(offset_of!(AclrtUtilizationInfo, utilization_extend) == 16);
const _: () = assert!(size_of::<DcmiHbmInfo>() == 32);
const _: () = assert!(offset_of!(DcmiHbmInfo, freq) == 8);
const _: () = assert!(offset_of!(DcmiHbmInfo, memory_usage) == 16);
const _: () = assert!(offset_of!(DcmiHbmInfo, temp) == 24);
const _: () = assert!(offset_of!(DcmiHbmInfo, bandwith_util_rate) == 28);
const _: () = assert!(size_of::<DcmiGetMemoryInfo>() == 112);
const _: () = assert!(offset_of!(DcmiGetMemoryInfo, hugepagesize) == 24);
const _: () = assert!(offset_of!(DcmiGetMemoryInfo, utiliza) == 48);
const _: () = assert!(size_of::<AclrtMemcpyKind>() == 4);
