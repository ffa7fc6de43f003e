//! Executing a scaling plan on the HMM, and the paper's baselines on the same memory.
//!
//! - [`Transition`]: ElasticMoE's step — the new instance's view built beside the old one,
//!   zero-copy for what stays, P2P copies for what moves, expert remaps, commit or rollback.
//! - [`run_baseline`]: cold-restart, colocated, extravagant and horizontal, for real.
//!
//! Everything here is synchronous; copy jobs take `&Hmm` so the agent can run them on its own
//! workers (bounded per link) while the old instance serves.

mod baseline;
mod error;
mod transition;

pub use baseline::{BaselineError, BaselineOutcome, Strategy, run_baseline};
pub use error::ScaleError;
pub use transition::{
    CopyJob, ExpertMode, JobSource, Source, Transition, TransitionOptions, TransitionStats,
};

use crate::hmm::Hmm;
use crate::plan::DeviceState;

/// Every device of the HMM as the planner sees it now.
pub fn pool_state(hmm: &Hmm) -> Vec<DeviceState> {
    hmm.devices()
        .iter()
        .map(|info| {
            let u = hmm.usage(info.id).unwrap_or_default();
            DeviceState {
                id: info.id,
                capacity: u.capacity,
                used: u.used,
                granularity: info.granularity,
            }
        })
        .collect()
}

/// Run a whole elastic step on this thread: prepare, every copy, commit. The old deployment is
/// still mapped afterwards (it serves until the switchover); release it with
/// [`Deployment::unload`](crate::deploy::Deployment::unload). On failure nothing changed.
pub fn execute(
    hmm: &mut Hmm,
    old: &crate::deploy::Deployment,
    plan: &crate::plan::Plan,
    checkpoint: Option<&crate::checkpoint::Checkpoint>,
    options: &TransitionOptions,
) -> Result<crate::deploy::Deployment, ScaleError> {
    let t = Transition::prepare(hmm, old, plan, checkpoint, options)?;
    if let Err(e) = t.run_all(hmm, checkpoint) {
        let _ = t.rollback(hmm);
        return Err(e);
    }
    t.commit(hmm)
}

/// The allocations an elastic transition along `plan` will make, as `(device, bytes)`: one per
/// copied pack, moved expert and new KV cache. Feeds [`prefault`].
pub fn step_allocations(
    hmm: &Hmm,
    old: &crate::deploy::Deployment,
    plan: &crate::plan::Plan,
) -> Vec<(crate::DeviceId, u64)> {
    use crate::plan::StepKind;
    let kv_len = old
        .devices
        .first()
        .and_then(|r| hmm.allocation(r.kv_alloc))
        .map_or(0, |a| a.len);
    plan.steps
        .iter()
        .filter_map(|s| match s.kind {
            StepKind::CopyPack { dst, .. } | StepKind::MoveExpert { dst, .. } => {
                Some((dst, s.bytes))
            }
            StepKind::AllocKv { device } if kv_len > 0 => Some((device, kv_len)),
            _ => None,
        })
        .collect()
}

/// Fill the backend's pre-allocated pool with what an elastic step along `plan` will allocate
/// (ElasticMoE's pre-allocated IPC memory pool), ahead of the command. Returns the entries made.
pub fn prefault(
    hmm: &Hmm,
    old: &crate::deploy::Deployment,
    plan: &crate::plan::Plan,
) -> Result<usize, ScaleError> {
    let mut by_device: std::collections::BTreeMap<crate::DeviceId, Vec<u64>> = Default::default();
    for (d, b) in step_allocations(hmm, old, plan) {
        by_device.entry(d).or_default().push(b);
    }
    let mut n = 0;
    for (d, lens) in by_device {
        n += hmm.prefault(d, &lens)?;
    }
    Ok(n)
}
