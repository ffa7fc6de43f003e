//! One open weights file, read with positional reads (`pread`) into the caller's buffer.
//!
//! Why not `mmap`: a checkpoint stays open for the agent's whole life (scaling reads packs out
//! of it long after the start), and a file mapped that long can be truncated or rewritten in
//! place by another process (a re-download, `truncate`, a careless copy). Touching a mapped page
//! past the new end raises SIGBUS and kills the whole agent, and a rewrite changes bytes that a
//! `&[u8]` was promised would not change. With `pread` a truncated file is a short read, which
//! is reported as an error naming the file and its sizes, and a file replaced by rename keeps
//! serving the old inode we hold open (unchanged answers). The copy costs nothing extra: a pack
//! was always copied out of the mapping into its device buffer; now it is copied out of the page
//! cache by the kernel, still only the pack's own bytes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::CheckpointError;
use crate::fsio;

/// Weights files larger than this are refused before they are read: a safetensors shard is a
/// few GB, a whole single-file model under 1 TiB; 16 TiB leaves headroom.
pub(crate) const MAX_WEIGHTS_FILE_BYTES: u64 = 16 << 40;

pub(crate) struct Source {
    path: PathBuf,
    file: File,
    /// The size when opened; every offset read was checked against it.
    len: u64,
}

impl Source {
    /// Opens a regular file of at most [`MAX_WEIGHTS_FILE_BYTES`].
    pub(crate) fn open(path: &Path) -> Result<Self, CheckpointError> {
        let (file, len) = fsio::open_regular_capped(path, MAX_WEIGHTS_FILE_BYTES)
            .map_err(|e| CheckpointError::io("open", path, e.into_io()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Fills `out` from byte `offset`. A file that became shorter since it was opened (someone
    /// truncated it) is an error naming it, never a crash.
    pub(crate) fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), CheckpointError> {
        match self.file.read_exact_at(out, offset) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                let now = self.file.metadata().map_or(0, |m| m.len());
                Err(CheckpointError::Changed {
                    file: self.path.clone(),
                    why: format!(
                        "it had {} bytes when opened and has {now} now (truncated while in use); \
                         restart from a complete checkpoint",
                        self.len
                    ),
                })
            }
            Err(e) => Err(CheckpointError::io("read", &self.path, e)),
        }
    }

    /// Evicts the file from the page cache (`POSIX_FADV_DONTNEED`): nothing of ours pins it.
    pub(crate) fn drop_page_cache(&self) -> std::io::Result<()> {
        rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }
}
