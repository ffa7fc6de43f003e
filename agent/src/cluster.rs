//! Building a node: the device backend, the HMM over it, the model and its checkpoint, and the
//! deployment loaded onto the devices the parallel config needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use emoe_core::DeviceId;
use emoe_core::ParallelConfig;
use emoe_core::backend::ascend::{AscendBackend, AscendOptions};
use emoe_core::backend::cuda::{CudaBackend, CudaOptions};
use emoe_core::backend::host::{HostBackend, HostConfig};
use emoe_core::backend::modeled::ModeledBackend;
use emoe_core::backend::select::{BackendChoice, probe_auto};
use emoe_core::backend::{BackendError, BackendKind, DeviceBackend, DeviceInfo};
use emoe_core::checkpoint::{self, Checkpoint};
use emoe_core::deploy::{DeployError, DeployOptions, Deployment};
use emoe_core::hmm::Hmm;
use emoe_core::model::{self, ModelSpec};

use crate::exit::{self, CliError};

/// Host backend defaults: a virtual device is 1 GiB of host memory (untouched pages cost
/// nothing), mapped in 64 KiB granules so small experts are not padded to 2 MiB.
pub const HOST_DEFAULT_HBM: u64 = 1 << 30;
pub const HOST_DEFAULT_GRANULARITY: u64 = 64 << 10;
/// Modeled backend defaults: an Ascend 910C's 64 GiB of HBM and the drivers' 2 MiB granule.
pub const MODELED_DEFAULT_HBM: u64 = 64 << 30;
pub const MODELED_DEFAULT_GRANULARITY: u64 = 2 << 20;

/// Where the model comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A built-in preset (`tiny-moe`, `deepseek-v3`, …).
    Preset(String),
    /// A Hugging Face style directory (`config.json` + safetensors).
    Dir(PathBuf),
}

impl std::str::FromStr for ModelSource {
    type Err = String;

    /// A preset name, or a path to a checkpoint directory (anything with a `/` or that exists).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if model::preset(s).is_some() {
            return Ok(Self::Preset(s.trim().to_ascii_lowercase()));
        }
        let p = Path::new(s);
        if s.contains('/') || p.exists() {
            return Ok(Self::Dir(p.to_path_buf()));
        }
        let names: Vec<&str> = model::PRESETS.iter().map(|p| p.name).collect();
        Err(format!(
            "`{s}` is neither a preset ({}) nor a checkpoint directory",
            names.join(", ")
        ))
    }
}

/// Everything needed to bring up a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub backend: BackendChoice,
    pub node: u32,
    /// Devices on the node: virtual devices for host and modeled (default 8); for ascend and
    /// cuda the first N the driver reports (default all).
    pub devices: Option<u32>,
    /// Logical devices carved from each GPU (cuda backend).
    pub logical_per_gpu: u32,
    pub hbm: Option<u64>,
    pub granularity: Option<u64>,
    pub model: ModelSource,
    pub config: ParallelConfig,
    /// The config occupies devices `first_device .. first_device + EP`.
    pub first_device: u32,
    pub seed: u64,
    pub kv_tokens: u64,
    pub cache_dir: Option<PathBuf>,
}

/// A running node's memory state.
#[derive(Debug)]
pub struct Node {
    pub hmm: Hmm,
    pub deployment: Deployment,
    /// The checkpoint the weights came from (host backend); `None` on the modeled backend.
    pub checkpoint: Option<Checkpoint>,
}

/// The cache directory for generated checkpoints: `--cache-dir`, else `$EMOE_CACHE_DIR`, else
/// the platform cache dir (`~/.cache/elasticmoe` on Linux). An empty `--cache-dir` or
/// `EMOE_CACHE_DIR` is refused (exit 2): as a path it would mean the current directory.
pub fn cache_root(explicit: Option<&Path>) -> Result<PathBuf, CliError> {
    cache_root_from(explicit, std::env::var_os("EMOE_CACHE_DIR"))
}

fn cache_root_from(
    explicit: Option<&Path>,
    env: Option<std::ffi::OsString>,
) -> Result<PathBuf, CliError> {
    if let Some(p) = explicit {
        if p.as_os_str().is_empty() {
            return Err(CliError::usage(anyhow::anyhow!(
                "--cache-dir \"\": must name a directory"
            )));
        }
        return Ok(p.to_path_buf());
    }
    if let Some(p) = env {
        if p.is_empty() {
            return Err(CliError::usage(anyhow::anyhow!(
                "EMOE_CACHE_DIR is set but empty: set it to a directory, or unset it for the \
                 default cache directory"
            )));
        }
        return Ok(PathBuf::from(p));
    }
    directories::ProjectDirs::from("", "", "elasticmoe")
        .map(|d| d.cache_dir().to_path_buf())
        .ok_or_else(|| {
            CliError::usage(anyhow::anyhow!(
                "no cache directory: set --cache-dir or EMOE_CACHE_DIR (no home directory found)"
            ))
        })
}

/// Virtual devices when `--devices` is not given (host and modeled).
pub const DEFAULT_VIRTUAL_DEVICES: u32 = 8;

/// Open the backend `o.backend` names; `auto` probes ascend, then cuda, then host and says which
/// it picked on stderr.
pub fn build_backend(o: &NodeOptions) -> Result<Arc<dyn DeviceBackend>, CliError> {
    let kind = match o.backend.fixed() {
        Some(k) => k,
        None => {
            let pick = probe_auto();
            eprintln!("emoe-agent: {pick}");
            pick.kind
        }
    };
    let vendor = matches!(kind, BackendKind::Ascend | BackendKind::Cuda);
    if vendor && o.granularity.is_some() {
        return Err(CliError::usage(anyhow::anyhow!(
            "--granularity applies to the host and modeled backends; {kind} uses the driver's minimum granularity"
        )));
    }
    let virtual_devices = o.devices.unwrap_or(DEFAULT_VIRTUAL_DEVICES);
    let first_n = |n: Option<u32>| n.map(|n| (0..n as i32).collect::<Vec<i32>>());
    let unavailable = |e: BackendError| {
        let code = match e {
            BackendError::LibraryMissing { .. } | BackendError::SymbolMissing { .. } => {
                exit::BACKEND_UNAVAILABLE
            }
            _ => exit::FAILED,
        };
        CliError::new(code, e)
    };
    match kind {
        BackendKind::Host => {
            let backend = HostBackend::new(HostConfig {
                node: o.node,
                devices: virtual_devices,
                capacity: o.hbm.unwrap_or(HOST_DEFAULT_HBM),
                granularity: o.granularity.unwrap_or(HOST_DEFAULT_GRANULARITY),
            })
            .map_err(CliError::usage)?;
            Ok(Arc::new(backend))
        }
        BackendKind::Modeled => {
            let granularity = o.granularity.unwrap_or(MODELED_DEFAULT_GRANULARITY);
            if !granularity.is_power_of_two() {
                return Err(CliError::usage(anyhow::anyhow!(
                    "--granularity must be a power of two, got {granularity}"
                )));
            }
            let devices = (0..virtual_devices)
                .map(|i| DeviceInfo {
                    id: DeviceId::new(o.node, i),
                    name: "modeled".into(),
                    capacity: o.hbm.unwrap_or(MODELED_DEFAULT_HBM),
                    granularity,
                })
                .collect();
            Ok(Arc::new(ModeledBackend::new(devices)))
        }
        BackendKind::Ascend => {
            let b = AscendBackend::open(&AscendOptions {
                node: o.node,
                devices: first_n(o.devices),
                max_capacity: o.hbm,
                ..AscendOptions::default()
            })
            .map_err(unavailable)?;
            Ok(Arc::new(b))
        }
        BackendKind::Cuda => {
            let b = CudaBackend::open(&CudaOptions {
                node: o.node,
                gpus: first_n(o.devices),
                logical_per_gpu: o.logical_per_gpu,
                max_capacity: o.hbm,
                ..CudaOptions::default()
            })
            .map_err(unavailable)?;
            Ok(Arc::new(b))
        }
    }
}

impl Node {
    /// Build the backend and HMM, resolve the model (generating its checkpoint into the cache
    /// when needed), and load it onto the config's devices.
    pub fn start(o: &NodeOptions) -> Result<Self, CliError> {
        if o.devices == Some(0) {
            return Err(CliError::usage(anyhow::anyhow!(
                "--devices must be at least 1, got 0"
            )));
        }
        let backend = build_backend(o)?;
        let have = backend.devices().len() as u64;
        let need = u64::from(o.first_device) + u64::from(o.config.devices());
        if need > have {
            return Err(CliError::new(
                exit::REFUSED,
                anyhow::anyhow!(
                    "not enough devices: config {} on devices {}.. needs {need}, the node has {have}",
                    o.config,
                    o.first_device,
                ),
            ));
        }
        let holds_bytes = backend.holds_bytes();
        let (spec, checkpoint) =
            resolve_model(&o.model, o.seed, o.cache_dir.as_deref(), holds_bytes)?;
        let mut hmm = Hmm::new(backend);
        let devices: Vec<DeviceId> = (o.first_device..o.first_device + o.config.devices())
            .map(|i| DeviceId::new(o.node, i))
            .collect();
        let options = DeployOptions {
            kv_tokens: o.kv_tokens,
            ..DeployOptions::default()
        };
        let deployment = Deployment::load(
            &mut hmm,
            &spec,
            o.config,
            &devices,
            checkpoint.as_ref(),
            &options,
        )
        .map_err(|e| {
            let code = match e {
                DeployError::OutOfMemory { .. } | DeployError::DeviceCount { .. } => exit::REFUSED,
                DeployError::UnknownDevice { .. } | DeployError::DuplicateDevice(_) => exit::USAGE,
                _ => exit::FAILED,
            };
            CliError::new(code, e)
        })?;
        Ok(Self {
            hmm,
            deployment,
            checkpoint,
        })
    }

    pub fn backend_kind(&self) -> BackendKind {
        self.hmm.backend().kind()
    }
}

/// The spec, and the checkpoint when the backend holds bytes.
fn resolve_model(
    source: &ModelSource,
    seed: u64,
    cache_dir: Option<&Path>,
    holds_bytes: bool,
) -> Result<(ModelSpec, Option<Checkpoint>), CliError> {
    match source {
        ModelSource::Dir(dir) => {
            if holds_bytes {
                let c = Checkpoint::open(dir).map_err(CliError::usage)?;
                Ok((c.spec().clone(), Some(c)))
            } else {
                let spec = model::from_hf_config_file(dir).map_err(CliError::usage)?;
                Ok((spec, None))
            }
        }
        ModelSource::Preset(name) => {
            let preset = model::preset(name)
                .ok_or_else(|| CliError::usage(anyhow::anyhow!("unknown model preset `{name}`")))?;
            let spec = preset.spec();
            if !holds_bytes {
                return Ok((spec, None));
            }
            if !preset.generated {
                return Err(CliError::new(
                    exit::REFUSED,
                    anyhow::anyhow!(
                        "preset `{name}` has real model sizes and no generated checkpoint; use it with \
                         --backend modeled, or give a checkpoint directory with --model DIR"
                    ),
                ));
            }
            let root = cache_root(cache_dir)?.join("checkpoints");
            let dir = checkpoint::ensure_generated(&spec, seed, &root).map_err(CliError::failed)?;
            let c = Checkpoint::open(&dir).map_err(CliError::failed)?;
            Ok((spec, Some(c)))
        }
    }
}

#[cfg(test)]
mod cache_root_tests {
    use super::*;

    #[test]
    fn an_empty_cache_dir_is_refused_not_taken_for_the_current_directory() {
        let e = cache_root_from(None, Some("".into())).unwrap_err();
        assert_eq!(e.code, crate::exit::USAGE);
        assert!(
            e.error
                .to_string()
                .contains("EMOE_CACHE_DIR is set but empty"),
            "{}",
            e.error
        );
        let e = cache_root_from(Some(Path::new("")), None).unwrap_err();
        assert_eq!(e.code, crate::exit::USAGE);
        assert!(e.error.to_string().contains("--cache-dir"), "{}", e.error);
        assert_eq!(
            cache_root_from(None, Some("/tmp/x".into())).unwrap(),
            PathBuf::from("/tmp/x")
        );
        assert_eq!(
            cache_root_from(Some(Path::new("/a")), Some("".into())).unwrap(),
            PathBuf::from("/a"),
            "the flag wins over the variable"
        );
    }
}
