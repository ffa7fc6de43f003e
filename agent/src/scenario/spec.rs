//! The scenario file: a cluster, a model, an initial config, traffic, timed scaling steps and SLO
//! limits.
//!
//! ```toml
//! name = "demo"
//!
//! [cluster]
//! backend = "host"        # host | modeled (serving needs bytes: host)
//! devices = 8
//! hbm = "1GiB"            # optional
//!
//! [model]
//! name = "tiny-moe"       # a preset, or a checkpoint directory (relative to this file)
//! seed = 0                # generated checkpoints
//! kv_tokens = 16384       # per device
//!
//! [serve]
//! config = "dp2tp2ep4"
//! max_batch = 16
//!
//! [traffic]               # see emoe_core::traffic
//! profile = "poisson"
//! rate = 4.0
//! prompt = { uniform = { min = 8, max = 32 } }
//! output = { fixed = 16 }
//! duration_s = 20.0
//!
//! [slo]
//! ttft = "2s"
//! tpot = "500ms"
//!
//! [[scale]]
//! at = "5s"
//! to = "dp3tp2ep6"
//! ```
//!
//! Durations (`at`, `ttft`, `tpot`, `window`) are humantime strings. Unknown keys are errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use emoe_core::ParallelConfig;
use emoe_core::traffic::TrafficSpec;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub cluster: ClusterSpec,
    pub model: ModelTable,
    pub serve: ServeTable,
    pub traffic: TrafficSpec,
    #[serde(default)]
    pub slo: Option<SloTable>,
    #[serde(default)]
    pub scale: Vec<ScaleStep>,
    /// Scale on load instead of (or besides) at fixed times.
    #[serde(default)]
    pub autoscale: Option<Autoscale>,
    /// Half-width of the throughput windows around each scaling step (default 5 s, the paper's).
    #[serde(default, with = "humantime_serde_opt")]
    pub window: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    #[serde(default = "default_backend")]
    pub backend: String,
    #[serde(default = "default_devices")]
    pub devices: u32,
    #[serde(default)]
    pub hbm: Option<String>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            devices: default_devices(),
            hbm: None,
        }
    }
}

fn default_backend() -> String {
    "host".into()
}

fn default_devices() -> u32 {
    8
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTable {
    pub name: String,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_kv_tokens")]
    pub kv_tokens: u64,
}

fn default_kv_tokens() -> u64 {
    16_384
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeTable {
    pub config: ParallelConfig,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
}

fn default_max_batch() -> usize {
    16
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SloTable {
    #[serde(with = "humantime_serde")]
    pub ttft: Duration,
    #[serde(with = "humantime_serde")]
    pub tpot: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleStep {
    #[serde(with = "humantime_serde")]
    pub at: Duration,
    pub to: ParallelConfig,
}

/// A load-driven scaling policy: one TP group up when the requests waiting or running per
/// replica exceed `up_queue`, one down when they fall below `down_queue`, within
/// `[min_dp, max_dp]`, deciding every `interval` and never within `cooldown` of the last step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    pub min_dp: u32,
    pub max_dp: u32,
    pub up_queue: f64,
    pub down_queue: f64,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_cooldown", with = "humantime_serde")]
    pub cooldown: Duration,
}

fn default_interval() -> Duration {
    Duration::from_millis(500)
}

fn default_cooldown() -> Duration {
    Duration::from_secs(3)
}

/// `humantime` strings for `Duration` fields.
mod humantime_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration like \"10s\", \"500ms\" or \"1m 30s\" ({e})"
            ))
        })
    }
}

mod humantime_serde_opt {
    use std::time::Duration;

    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::humantime_serde::deserialize(d).map(Some)
    }
}

/// The largest scenario file read.
const MAX_FILE: u64 = 1 << 20;
/// The most scaling steps.
const MAX_STEPS: usize = 1000;
use emoe_core::deploy::MAX_KV_TOKENS;
use emoe_core::traffic::MAX_SECONDS;

/// Why a scenario file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file is not a regular file, too large, or unreadable ([`emoe_core::fsio`] names
    /// the path and the rule).
    #[error("cannot read scenario {0}")]
    Read(emoe_core::fsio::FsError),
    #[error("scenario {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("scenario {path}: {rule}, got {got}")]
    Invalid {
        path: PathBuf,
        rule: &'static str,
        got: String,
    },
}

impl Scenario {
    /// Read and check a scenario file. Relative paths inside (a checkpoint directory, a trace)
    /// are resolved from the file's directory.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text =
            emoe_core::fsio::read_to_string_capped(path, MAX_FILE).map_err(ScenarioError::Read)?;
        let mut s: Scenario = toml::from_str(&text).map_err(|e| ScenarioError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let emoe_core::traffic::Profile::Trace { path: p } = &mut s.traffic.profile
            && p.is_relative()
        {
            *p = base.join(&*p);
        }
        if emoe_core::model::preset(&s.model.name).is_none() {
            let p = Path::new(&s.model.name);
            if p.is_relative() {
                s.model.name = base.join(p).display().to_string();
            }
        }
        let bad = |rule, got: String| ScenarioError::Invalid {
            path: path.to_path_buf(),
            rule,
            got,
        };
        if s.serve.max_batch == 0 || s.serve.max_batch > 4096 {
            return Err(bad(
                "serve.max_batch must be between 1 and 4096",
                s.serve.max_batch.to_string(),
            ));
        }
        if !(1..=4096).contains(&s.cluster.devices) {
            return Err(bad(
                "cluster.devices must be between 1 and 4096",
                s.cluster.devices.to_string(),
            ));
        }
        if !(1..=MAX_KV_TOKENS).contains(&s.model.kv_tokens) {
            return Err(bad(
                "model.kv_tokens must be between 1 and 16777216 tokens per device",
                s.model.kv_tokens.to_string(),
            ));
        }
        s.traffic.validate().map_err(|e| ScenarioError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let within = |key: &'static str, d: Duration| {
            if d.is_zero() || d.as_secs_f64() > MAX_SECONDS {
                Err(ScenarioError::Invalid {
                    path: path.to_path_buf(),
                    rule: key,
                    got: format!("{d:?}"),
                })
            } else {
                Ok(())
            }
        };
        if let Some(w) = s.window {
            within("window must be positive and at most a week", w)?;
        }
        if let Some(slo) = &s.slo {
            within("slo.ttft must be positive and at most a week", slo.ttft)?;
            within("slo.tpot must be positive and at most a week", slo.tpot)?;
        }
        if let Some(a) = &s.autoscale {
            let dp = s.serve.config.dp();
            if a.min_dp == 0 || a.min_dp > dp || dp > a.max_dp {
                return Err(bad(
                    "autoscale needs 1 ≤ min_dp ≤ the initial DP ≤ max_dp",
                    format!("min_dp {} initial {dp} max_dp {}", a.min_dp, a.max_dp),
                ));
            }
            if !(a.down_queue >= 0.0 && a.up_queue > a.down_queue && a.up_queue.is_finite()) {
                return Err(bad(
                    "autoscale needs 0 ≤ down_queue < up_queue",
                    format!("down_queue {} up_queue {}", a.down_queue, a.up_queue),
                ));
            }
            within(
                "autoscale.interval must be positive and at most a week",
                a.interval,
            )?;
            if a.cooldown.as_secs_f64() > MAX_SECONDS {
                return Err(bad(
                    "autoscale.cooldown must be at most a week",
                    format!("{:?}", a.cooldown),
                ));
            }
            if u64::from(a.max_dp) * u64::from(s.serve.config.tp()) > u64::from(s.cluster.devices) {
                return Err(bad(
                    "autoscale.max_dp × TP must fit the cluster's devices",
                    format!(
                        "{} × {} > {}",
                        a.max_dp,
                        s.serve.config.tp(),
                        s.cluster.devices
                    ),
                ));
            }
        }
        if s.scale.len() > MAX_STEPS {
            return Err(bad(
                "at most 1000 [[scale]] steps",
                s.scale.len().to_string(),
            ));
        }
        let mut last = Duration::ZERO;
        for st in &s.scale {
            if st.at < last {
                return Err(bad(
                    "scaling steps must be listed in time order",
                    format!("{:?} after {:?}", st.at, last),
                ));
            }
            last = st.at;
            if st.to.tp() != s.serve.config.tp() {
                return Err(bad(
                    "TP is fixed: every scaling step keeps the TP of serve.config",
                    format!("{} from {}", st.to, s.serve.config),
                ));
            }
        }
        let end = s.traffic.end_s();
        if let Some((i, st)) = s
            .scale
            .iter()
            .enumerate()
            .find(|(_, st)| st.at.as_secs_f64() > end)
        {
            return Err(bad(
                "a scaling step's `at` must lie within the traffic (its duration_s, else a week)",
                format!("step {} at {:?}, the traffic ends at {end} s", i + 1, st.at),
            ));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_scenarios_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                let s = Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"));
                assert!(!s.name.is_empty(), "{}", p.display());
                n += 1;
            }
        }
        assert!(n >= 3, "demo, step load and the paper's Table 2");
    }
}
