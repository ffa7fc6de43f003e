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
