//! Why a scaling transition could not be prepared, run or committed. Before the switchover every
//! one of these leaves the old deployment untouched (the caller rolls the transition back).

use crate::checkpoint::CheckpointError;
use crate::deploy::DeployError;
use crate::device::DeviceId;
use crate::hmm::{AllocId, HmmError};
use crate::model::PackKey;
use crate::parallel::ParallelConfig;

#[derive(Debug, thiserror::Error)]
pub enum ScaleError {
    /// The plan was made for another state than the deployment's.
    #[error("the plan does not fit the deployment: {reason}")]
    PlanMismatch { reason: String },
    /// The target does not fit a device's free memory now.
    #[error(
        "not enough memory on device {device}: need {need} bytes for the transition, have {have} free"
    )]
    NotEnoughMemory {
        device: DeviceId,
        need: u64,
        have: u64,
    },
    /// A copy was asked to read from disk and no checkpoint was given.
    #[error("copying {what:?} from disk needs the checkpoint, none was given")]
    NoCheckpoint { what: PackKey },
    /// A copied allocation does not hold what the checkpoint holds.
    #[error(
        "checksum mismatch after copying {what:?} into {dst} on {device}: expected {expected:016x}, found {found:016x}"
    )]
    ChecksumMismatch {
        what: PackKey,
        device: DeviceId,
        dst: AllocId,
        expected: u64,
        found: u64,
    },
    /// The transition was cancelled before the switchover.
    #[error("cancelled before the switchover ({done} of {total} copies done)")]
    Cancelled { done: usize, total: usize },
    /// The step index does not exist.
    #[error("copy job {job} does not exist (the transition has {jobs})")]
    UnknownJob { job: usize, jobs: usize },
    /// Commit was called before every copy finished.
    #[error("{pending} of {total} copies have not finished; commit needs all of them")]
    CopiesPending { pending: usize, total: usize },
    /// A strategy needs more devices than the pool has.
    #[error("strategy {strategy} needs {need} devices ({why}), the pool has {have}")]
    NotEnoughDevices {
        strategy: &'static str,
        need: usize,
        have: usize,
        why: String,
    },
    /// A baseline's target config is invalid.
    #[error("config {config} needs {need} devices, {got} given")]
    DeviceCount {
        config: ParallelConfig,
        need: u32,
        got: usize,
    },
    #[error(transparent)]
    Hmm(#[from] HmmError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}
