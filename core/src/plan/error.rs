//! Refusals of the scaling planner, each naming the rule it enforces and the values involved.

use crate::device::DeviceId;
use crate::parallel::ParallelConfig;

/// Why a scaling plan was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    /// Another scaling operation is still running.
    #[error("an operation is already running: one scaling operation at a time")]
    OperationRunning,
    /// TP is fixed across scaling.
    #[error("TP must stay {from}, target has {to}")]
    TpChanged { from: u32, to: u32 },
    /// The current device list does not match the current config.
    #[error("current config {config} needs {need} devices (EP = DP×TP), {got} listed")]
    FromDeviceCount {
        config: ParallelConfig,
        need: u32,
        got: usize,
    },
    /// The target device list does not match the target config.
    #[error("target config {config} needs {need} devices (EP = DP×TP), {got} listed")]
    ToDeviceCount {
        config: ParallelConfig,
        need: u32,
        got: usize,
    },
    /// A device is named twice in one list.
    #[error("device {device} is listed twice")]
    DuplicateDevice { device: DeviceId },
    /// A device is not in the pool.
    #[error("unknown device {device}: not in the pool")]
    UnknownDevice { device: DeviceId },
    /// Not enough free devices for the target.
    #[error("not enough devices: need {need} more, pool has {free} free")]
    NotEnoughDevices { need: u32, free: u32 },
    /// A kept device would change TP rank (its non-expert shard could not be reused).
    #[error("device {device} holds TP rank {from} but would get TP rank {to} in the target")]
    TpRankChanged {
        device: DeviceId,
        from: u32,
        to: u32,
    },
    /// The current placement does not fit the model or the current devices.
    #[error("invalid current placement: {reason}")]
    InvalidPlacement { reason: String },
    /// A load vector does not have one entry per expert.
    #[error("load for layer {layer} has {got} entries, the model has {expected} experts")]
    LoadLength {
        layer: u32,
        expected: u32,
        got: usize,
    },
    /// The predicted peak does not fit a device.
    #[error(
        "not enough memory on device {device}: need {need} bytes, have {have} free \
         (predicted peak {peak} > capacity {capacity})"
    )]
    NotEnoughMemory {
        device: DeviceId,
        /// Bytes allocated on it before the switchover, granule-rounded.
        need: u64,
        /// Capacity minus what is used now.
        have: u64,
        peak: u64,
        capacity: u64,
    },
    /// A link has no usable bandwidth.
    #[error("link {src} → {dst} has bandwidth {bandwidth} bytes/s; it must be positive and finite")]
    InvalidBandwidth {
        src: DeviceId,
        dst: DeviceId,
        bandwidth: f64,
    },
    /// A size overflowed 64 bits.
    #[error("size overflow computing {what}")]
    Overflow { what: &'static str },
}
