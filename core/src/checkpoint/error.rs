//! Why a checkpoint could not be generated, found or read. Every variant names the file and,
//! where one is involved, the tensor, so an operator can tell which download is broken.
//!
//! Causes are part of each message and not chained as `source()`, so a printer that walks the
//! chain (`{:#}`) names each cause once.

use std::path::PathBuf;

use crate::model::{DType, HfConfigError};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "cannot generate a checkpoint for `{model}`: {dtype:?} weights are not generated (only bf16, f16 and f32 are)"
    )]
    UnsupportedDType { model: String, dtype: DType },
    #[error("{op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}", config_message(path, cause))]
    Config { path: PathBuf, cause: HfConfigError },
    #[error("no model.safetensors or model.safetensors.index.json in {}", dir.display())]
    NoWeights { dir: PathBuf },
    #[error("{}: {why}", path.display())]
    Index { path: PathBuf, why: String },
    #[error("{}: not a valid safetensors file: {why}", file.display())]
    Header { file: PathBuf, why: String },
    #[error(
        "{}: truncated: its header describes {expected} bytes, the file has {found}",
        file.display()
    )]
    Truncated {
        file: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{}: changed while open: {why}", file.display())]
    Changed { file: PathBuf, why: String },
    #[error("tensor `{tensor}` is missing from {}", file.display())]
    MissingTensor { tensor: String, file: PathBuf },
    #[error("tensor `{tensor}` in {}: dtype {found}, expected {expected}", file.display())]
    WrongDType {
        tensor: String,
        file: PathBuf,
        expected: String,
        found: String,
    },
    #[error(
        "tensor `{tensor}` in {}: stored as F32 for a BF16 model, and value {index} ({value}) is not a bf16 value: \
         converting it would change the weights (save the checkpoint with bf16-representable values, or all in bf16)",
        file.display()
    )]
    Inexact {
        tensor: String,
        file: PathBuf,
        index: u64,
        value: String,
    },
    #[error("tensor `{tensor}` in {}: shape {found:?}, expected {expected:?}", file.display())]
    WrongShape {
        tensor: String,
        file: PathBuf,
        expected: Vec<u64>,
        found: Vec<u64>,
    },
    #[error(
        "tensor `{tensor}` is not part of the checkpoint in {} (or has another size there): the pack was cut for another model",
        dir.display()
    )]
    UnknownTensor { tensor: String, dir: PathBuf },
    #[error("buffer for pack {pack} holds {have} bytes, the pack needs {need}")]
    BufferTooSmall { pack: String, need: u64, have: u64 },
    #[error("cannot generate a tokenizer for `{model}`: {why}")]
    Tokenizer { model: String, why: String },
    #[error("checkpoint cache {}: {why}", dir.display())]
    Cache { dir: PathBuf, why: String },
}

impl CheckpointError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, cause: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            cause,
        }
    }
}

/// `<path>: <why>`, but the path only once when the config error names it already.
fn config_message(path: &std::path::Path, cause: &HfConfigError) -> String {
    match cause {
        HfConfigError::Io { .. } => cause.to_string(),
        _ => format!("{}: {cause}", path.display()),
    }
}
