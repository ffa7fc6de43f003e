//! Why a checkpoint could not be generated, found or read. Every variant names the file and,
//! where one is involved, the tensor, so an operator can tell which download is broken.

use std::path::PathBuf;

use crate::model::{DType, HfConfigError};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "cannot generate a checkpoint for `{model}`: {dtype:?} weights are not generated (only bf16, f16 and f32 are)"
    )]
    UnsupportedDType { model: String, dtype: DType },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: HfConfigError,
    },
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
    #[error("checkpoint cache {}: {why}", dir.display())]
    Cache { dir: PathBuf, why: String },
}

impl CheckpointError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
