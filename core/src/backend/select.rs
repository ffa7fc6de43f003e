//! `--backend` values and what `auto` picks.
//!
//! `auto` takes the first accelerator whose library loads, initialises and reports at least one
//! device: Ascend, then CUDA; otherwise the host backend. A loadable library with no device (a
//! driver installed in a container without the device nodes, say) does not count, because
//! starting on it would fail at the first allocation. The pick always comes with the reason, and
//! the reasons the others were passed over, so the agent can say which backend it runs and why.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{BackendKind, ascend, cuda};

/// What the operator asked for with `--backend`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Ascend, then CUDA, then host; see [`probe_auto`].
    Auto,
    #[default]
    Host,
    Modeled,
    Ascend,
    Cuda,
}

impl BackendChoice {
    pub const ALL: [Self; 5] = [
        Self::Auto,
        Self::Host,
        Self::Modeled,
        Self::Ascend,
        Self::Cuda,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Host => "host",
            Self::Modeled => "modeled",
            Self::Ascend => "ascend",
            Self::Cuda => "cuda",
        }
    }

    /// The backend this choice names, or `None` for `auto` (which needs [`probe_auto`]).
    pub const fn fixed(self) -> Option<BackendKind> {
        match self {
            Self::Auto => None,
            Self::Host => Some(BackendKind::Host),
            Self::Modeled => Some(BackendKind::Modeled),
            Self::Ascend => Some(BackendKind::Ascend),
            Self::Cuda => Some(BackendKind::Cuda),
        }
    }
}

impl fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--backend` value that names no backend.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend `{value}`; choose one of: auto, host, modeled, ascend, cuda")]
pub struct BackendChoiceError {
    pub value: String,
}

impl FromStr for BackendChoice {
    type Err = BackendChoiceError;

    /// Case-insensitive; surrounding spaces ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| BackendChoiceError {
                value: s.to_string(),
            })
    }
}

/// Which backend `auto` picked, why, and why the ones before it were passed over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AutoPick {
    pub kind: BackendKind,
    /// One line: what was found (`libascendcl.so loaded from …, 8 devices`).
    pub reason: String,
    /// One line per accelerator passed over, with the error that ruled it out.
    pub passed_over: Vec<String>,
}

impl fmt::Display for AutoPick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--backend auto picked {}: {}", self.kind, self.reason)?;
        for p in &self.passed_over {
            write!(f, "; {p}")?;
        }
        Ok(())
    }
}

/// Library paths for the probe; `None` means the environment variable, then the usual places.
#[derive(Clone, Debug, Default)]
pub struct ProbeLibraries {
    pub ascendcl: Option<PathBuf>,
    pub cuda: Option<PathBuf>,
}

/// What `--backend auto` picks on this machine (libraries found as the backends would find them).
pub fn probe_auto() -> AutoPick {
    probe_auto_with(&ProbeLibraries::default())
}

/// [`probe_auto`] with explicit library paths.
pub fn probe_auto_with(libs: &ProbeLibraries) -> AutoPick {
    let mut passed_over = Vec::new();
    match ascend::probe(libs.ascendcl.as_deref()) {
        Ok(p) if p.devices > 0 => {
            return AutoPick {
                kind: BackendKind::Ascend,
                reason: format!(
                    "{} loaded from {}, {} device(s)",
                    ascend::ACL_LIBRARY,
                    p.path,
                    p.devices
                ),
                passed_over,
            };
        }
        Ok(p) => passed_over.push(format!("ascend: {} loaded but reports no device", p.path)),
        Err(e) => passed_over.push(format!("ascend: {e}")),
    }
    match cuda::probe(libs.cuda.as_deref()) {
        Ok(p) if p.devices > 0 => {
            return AutoPick {
                kind: BackendKind::Cuda,
                reason: format!(
                    "{} loaded from {}, {} GPU(s)",
                    cuda::CUDA_LIBRARY,
                    p.path,
                    p.devices
                ),
                passed_over,
            };
        }
        Ok(p) => passed_over.push(format!("cuda: {} loaded but reports no GPU", p.path)),
        Err(e) => passed_over.push(format!("cuda: {e}")),
    }
    AutoPick {
        kind: BackendKind::Host,
        reason: "no accelerator library with a device was found; using host memory".into(),
        passed_over,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_choice_and_names_the_choices_on_error() {
        for c in BackendChoice::ALL {
            assert_eq!(c.as_str().parse::<BackendChoice>().unwrap(), c);
            assert_eq!(
                c.to_string()
                    .to_uppercase()
                    .parse::<BackendChoice>()
                    .unwrap(),
                c
            );
        }
        assert_eq!(
            " Cuda ".parse::<BackendChoice>().unwrap(),
            BackendChoice::Cuda
        );
        assert_eq!(BackendChoice::Auto.fixed(), None);
        assert_eq!(BackendChoice::Ascend.fixed(), Some(BackendKind::Ascend));
        let e = "npu".parse::<BackendChoice>().unwrap_err().to_string();
        assert!(e.contains("`npu`"), "{e}");
        for c in BackendChoice::ALL {
            assert!(e.contains(c.as_str()), "{e}");
        }
    }

    #[test]
    fn auto_falls_back_to_host_and_says_why() {
        let pick = probe_auto_with(&ProbeLibraries {
            ascendcl: Some("/nonexistent/libascendcl.so".into()),
            cuda: Some("/nonexistent/libcuda.so.1".into()),
        });
        assert_eq!(pick.kind, BackendKind::Host);
        let text = pick.to_string();
        assert!(text.contains("picked host"), "{text}");
        assert!(
            text.contains("libascendcl.so") && text.contains("EMOE_ASCENDCL_LIB"),
            "{text}"
        );
        assert!(
            text.contains("libcuda.so.1") && text.contains("EMOE_CUDA_LIB"),
            "{text}"
        );
    }
}
