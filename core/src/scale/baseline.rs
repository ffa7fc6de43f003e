//! The paper's baselines (§5.1), run for real on the same HMM so they compare side by side with
//! ElasticMoE. Each is a sequence of whole-instance loads and unloads: nothing is reused in place,
//! and every new instance reads its weights from the checkpoint with the files first dropped from
//! the page cache (`posix_fadvise(DONTNEED)`), as a fresh process on a fresh start would.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::error::ScaleError;
use crate::checkpoint::Checkpoint;
use crate::deploy::{DeployOptions, Deployment};
use crate::device::DeviceId;
use crate::hmm::Hmm;
use crate::model::ModelSpec;
use crate::parallel::ParallelConfig;

/// How a scaling step is carried out.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// ElasticMoE: zero-copy on kept devices, P2P for new bytes, expert remaps.
    Elastic,
    /// Stop the old instance, free everything, load the target from disk.
    ColdRestart,
    /// Load the target beside the old instance on the same devices (plus any new ones), then
    /// stop the old one: shared devices hold two copies for a while.
    Colocated,
    /// Load the target on fresh devices while the old instance serves, then stop the old one.
    Extravagant,
    /// Add a whole replica of the current config on fresh devices (scale-up only).
    Horizontal,
}

impl Strategy {
    pub const ALL: [Strategy; 5] = [
        Strategy::Elastic,
        Strategy::ColdRestart,
        Strategy::Colocated,
        Strategy::Extravagant,
        Strategy::Horizontal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Elastic => "elastic",
            Strategy::ColdRestart => "cold-restart",
            Strategy::Colocated => "colocated",
            Strategy::Extravagant => "extravagant",
            Strategy::Horizontal => "horizontal",
        }
    }

    /// Devices the pool must have for a step from `from` to `to` with this strategy.
    pub fn devices_needed(self, from: ParallelConfig, to: ParallelConfig) -> usize {
        let (f, t) = (from.devices() as usize, to.devices() as usize);
        match self {
            Strategy::Elastic | Strategy::ColdRestart | Strategy::Colocated => f.max(t),
            Strategy::Extravagant => f + t,
            Strategy::Horizontal => 2 * f,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let k = s.trim().to_ascii_lowercase().replace('_', "-");
        Strategy::ALL
            .into_iter()
            .find(|x| x.as_str() == k || (k == "concurrent" && *x == Strategy::Colocated))
            .ok_or_else(|| {
                let names: Vec<&str> = Strategy::ALL.iter().map(|x| x.as_str()).collect();
                format!(
                    "unknown strategy `{s}`: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// What a baseline step produced: the instance serving the target once it is ready, and the old
/// one when it is still resident — colocated and extravagant leave it for the caller to release
/// after the switchover ([`Deployment::unload`]); horizontal keeps it serving as a replica.
#[derive(Debug)]
pub struct BaselineOutcome {
    pub new: Deployment,
    pub old: Option<Deployment>,
}

fn cold_load(
    hmm: &mut Hmm,
    model: &ModelSpec,
    config: ParallelConfig,
    devices: &[DeviceId],
    checkpoint: Option<&Checkpoint>,
    options: &DeployOptions,
    view: &str,
) -> Result<Deployment, ScaleError> {
    if config.devices() as usize != devices.len() {
        return Err(ScaleError::DeviceCount {
            config,
            need: config.devices(),
            got: devices.len(),
        });
    }
    if let Some(c) = checkpoint {
        c.drop_page_cache()?;
    }
    let options = DeployOptions {
        view_name: format!("{view}@{config}"),
        ..options.clone()
    };
    Ok(Deployment::load(
        hmm, model, config, devices, checkpoint, &options,
    )?)
}

/// Devices of the pool not used by `old`, lowest first.
fn fresh_devices(hmm: &Hmm, old: &Deployment) -> Vec<DeviceId> {
    hmm.devices()
        .iter()
        .map(|d| d.id)
        .filter(|d| !old.devices.iter().any(|r| r.device == *d))
        .collect()
}

/// A failed baseline: why, and the old deployment when it still exists.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct BaselineError {
    pub error: ScaleError,
    pub old: Option<Box<Deployment>>,
}

impl BaselineError {
    fn kept(old: Deployment, error: ScaleError) -> Self {
        Self {
            error,
            old: Some(Box::new(old)),
        }
    }

    fn lost(error: impl Into<ScaleError>) -> Self {
        Self {
            error: error.into(),
            old: None,
        }
    }
}

/// Run a baseline from `old` to `to`. `to_devices` are the target's devices for cold-restart and
/// colocated (the same ones ElasticMoE would use); extravagant and horizontal take the lowest
/// fresh devices of the pool. The elastic strategy is not a baseline: use
/// [`super::Transition`]. On failure the old deployment comes back unless it was already stopped
/// (cold-restart stops it first: that is its downtime).
pub fn run_baseline(
    strategy: Strategy,
    hmm: &mut Hmm,
    old: Deployment,
    to: ParallelConfig,
    to_devices: &[DeviceId],
    checkpoint: Option<&Checkpoint>,
    options: &DeployOptions,
) -> Result<BaselineOutcome, BaselineError> {
    let need = strategy.devices_needed(old.config, to);
    let have = hmm.devices().len();
    let refuse = |old: Deployment, e: ScaleError| Err(BaselineError::kept(old, e));
    if need > have {
        let why = match strategy {
            Strategy::Extravagant => format!("{} old + {} new", old.config.devices(), to.devices()),
            Strategy::Horizontal => format!("two replicas of {}", old.config),
            _ => format!("{} → {}", old.config, to),
        };
        return refuse(
            old,
            ScaleError::NotEnoughDevices {
                strategy: strategy.as_str(),
                need,
                have,
                why,
            },
        );
    }
    let model = old.model.clone();
    let name = strategy.as_str();
    match strategy {
        Strategy::Elastic => refuse(
            old,
            ScaleError::PlanMismatch {
                reason: "elastic is not a baseline: prepare a Transition".into(),
            },
        ),
        Strategy::ColdRestart => {
            // The old instance stops first: from here until the load ends nothing serves.
            if let Err(e) = old.unload(hmm) {
                return Err(BaselineError::lost(e));
            }
            let new = cold_load(hmm, &model, to, to_devices, checkpoint, options, name)
                .map_err(BaselineError::lost)?;
            Ok(BaselineOutcome { new, old: None })
        }
        Strategy::Colocated => {
            match cold_load(hmm, &model, to, to_devices, checkpoint, options, name) {
                Ok(new) => Ok(BaselineOutcome {
                    new,
                    old: Some(old),
                }),
                Err(e) => refuse(old, e),
            }
        }
        Strategy::Extravagant | Strategy::Horizontal => {
            let fresh = fresh_devices(hmm, &old);
            let config = if strategy == Strategy::Horizontal {
                if to.devices() < old.config.devices() {
                    return refuse(
                        old,
                        ScaleError::PlanMismatch {
                            reason:
                                "horizontal scaling adds a whole replica; it has no scale-down step"
                                    .into(),
                        },
                    );
                }
                old.config
            } else {
                to
            };
            let devices: Vec<DeviceId> =
                fresh.into_iter().take(config.devices() as usize).collect();
            match cold_load(hmm, &model, config, &devices, checkpoint, options, name) {
                Ok(new) => Ok(BaselineOutcome {
                    new,
                    old: Some(old),
                }),
                Err(e) => refuse(old, e),
            }
        }
    }
}
