//! Live device telemetry from the vendors' management libraries (DCMI on Ascend, NVML on NVIDIA).
//!
//! Every field is optional: management libraries differ per generation and container setup
//! (DCMI refuses some queries inside containers, NVML lacks power on some boards), and a
//! missing number must read as "unknown", never as zero.

use serde::{Deserialize, Serialize};

/// Device health as the management library reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    /// A minor alarm (DCMI 1).
    Minor,
    /// A major alarm (DCMI 2).
    Major,
    /// A critical alarm (DCMI 3).
    Critical,
    /// A value the library documents as "absent" or one we do not know.
    Unknown,
}

impl Health {
    /// DCMI `dcmi_get_device_health` values: 0 ok, 1 minor, 2 major, 3 critical, else unknown.
    pub const fn from_dcmi(v: u32) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::Minor,
            2 => Self::Major,
            3 => Self::Critical,
            _ => Self::Unknown,
        }
    }
}

/// One reading of one device.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct DeviceTelemetry {
    /// Which library answered: `dcmi`, `acl` (fallback without DCMI), `nvml`, `cuda`.
    pub source: String,
    /// Device memory in bytes, as the library sees the whole device (not the HMM's account).
    pub memory_total: Option<u64>,
    pub memory_used: Option<u64>,
    /// Compute utilization in percent.
    pub utilization_pct: Option<u32>,
    /// Memory (HBM bandwidth or controller) utilization in percent.
    pub memory_utilization_pct: Option<u32>,
    pub temperature_c: Option<i32>,
    pub power_mw: Option<u64>,
    pub health: Option<Health>,
}
