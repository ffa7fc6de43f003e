//! Reading files that someone else named: only regular files, and never more than a cap.
//!
//! A path from a flag, a config or a checkpoint directory may name `/dev/zero`, a FIFO, a
//! directory, a symlink to any of those, or a symlink loop. [`open_regular`] opens without
//! blocking (`O_NONBLOCK`, so a FIFO with no writer does not hang the open), checks the *opened*
//! descriptor with `fstat` (so a swap between a check and the open changes nothing) and refuses
//! anything but a regular file; [`read_regular_capped`] also refuses a file larger than its cap
//! by its size before reading a byte, and stops at the cap should the file grow meanwhile.
//! Every error names the path and the rule.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// What was wrong with a file, without its path (see [`FsError`]). The OS error is the message
/// itself, not a chained `source()`, so a printer that walks the chain says it once.
#[derive(Debug, thiserror::Error)]
pub enum FsProblem {
    #[error("{0}")]
    Open(io::Error),
    #[error("symlink loop (too many levels of symbolic links)")]
    SymlinkLoop,
    #[error("is a {kind}, not a regular file (only regular files are read)")]
    NotRegular { kind: &'static str },
    #[error("is {size} bytes, more than the {cap}-byte limit for this file")]
    TooLarge { size: u64, cap: u64 },
    #[error("grew past the {cap}-byte limit for this file while being read")]
    Grew { cap: u64 },
    #[error("is not valid UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Read(io::Error),
}

/// A refused or failed read of `path`.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", .path.display())]
pub struct FsError {
    pub path: PathBuf,
    pub problem: FsProblem,
}

impl FsError {
    fn new(path: &Path, problem: FsProblem) -> Self {
        Self {
            path: path.to_path_buf(),
            problem,
        }
    }

    /// The problem as an `io::Error`, for error types that name the path themselves (so the
    /// path is not said twice). The kind says what happened: `NotFound`, `InvalidInput` for a
    /// file that is not a regular file or a symlink loop, `FileTooLarge`, …
    pub fn into_io(self) -> io::Error {
        match self.problem {
            FsProblem::Open(e) | FsProblem::Read(e) => e,
            p @ FsProblem::SymlinkLoop => io::Error::new(io::ErrorKind::InvalidInput, p),
            p @ FsProblem::NotRegular { .. } => io::Error::new(io::ErrorKind::InvalidInput, p),
            p @ (FsProblem::TooLarge { .. } | FsProblem::Grew { .. }) => {
                io::Error::new(io::ErrorKind::FileTooLarge, p)
            }
            p @ FsProblem::NotUtf8 => io::Error::new(io::ErrorKind::InvalidData, p),
        }
    }

    /// Whether the path names nothing (so a caller may try another name).
    pub fn is_not_found(&self) -> bool {
        matches!(&self.problem, FsProblem::Open(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// The name of a file type, for errors.
fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "FIFO (named pipe)",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown type",
    }
}

fn open_problem(e: rustix::io::Errno) -> FsProblem {
    if e == rustix::io::Errno::LOOP {
        FsProblem::SymlinkLoop
    } else {
        FsProblem::Open(e.into())
    }
}

/// Opens `path` for reading if it is a regular file (symlinks followed); returns the file and
/// its size. A FIFO, device, socket or directory is refused by its type, a symlink loop as such.
pub fn open_regular(path: &Path) -> Result<(File, u64), FsError> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty())
        .map_err(|e| FsError::new(path, open_problem(e)))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| FsError::new(path, FsProblem::Open(e.into())))?;
    let t = FileType::from_raw_mode(st.st_mode);
    if t != FileType::RegularFile {
        return Err(FsError::new(
            path,
            FsProblem::NotRegular { kind: kind_name(t) },
        ));
    }
    // O_NONBLOCK means nothing for regular files; it stays set.
    Ok((File::from(fd), u64::try_from(st.st_size).unwrap_or(0)))
}

/// [`open_regular`], refusing a file larger than `cap` bytes by its size.
pub fn open_regular_capped(path: &Path, cap: u64) -> Result<(File, u64), FsError> {
    let (f, size) = open_regular(path)?;
    if size > cap {
        return Err(FsError::new(path, FsProblem::TooLarge { size, cap }));
    }
    Ok((f, size))
}

/// The whole of the regular file at `path`, at most `cap` bytes (a larger file is refused by
/// its size before anything is read, one that grows past the cap while read is refused too).
pub fn read_regular_capped(path: &Path, cap: u64) -> Result<Vec<u8>, FsError> {
    let (f, size) = open_regular_capped(path, cap)?;
    // `size <= cap`; the reservation is only a hint, reads stop at cap + 1 regardless.
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    f.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| FsError::new(path, FsProblem::Read(e)))?;
    if buf.len() as u64 > cap {
        return Err(FsError::new(path, FsProblem::Grew { cap }));
    }
    Ok(buf)
}

/// [`read_regular_capped`] as UTF-8 text.
pub fn read_to_string_capped(path: &Path, cap: u64) -> Result<String, FsError> {
    let bytes = read_regular_capped(path, cap)?;
    String::from_utf8(bytes).map_err(|_| FsError::new(path, FsProblem::NotUtf8))
}

/// Whether `path` names a regular file: `Ok(false)` when nothing is there, an error when
/// something else is (a directory, a device, a FIFO, a symlink loop) or it cannot be looked at.
/// Does not open the file, so a FIFO is not touched.
pub fn is_regular(path: &Path) -> Result<bool, FsError> {
    match rustix::fs::stat(path) {
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Ok(true),
            t => Err(FsError::new(
                path,
                FsProblem::NotRegular { kind: kind_name(t) },
            )),
        },
        // Nothing there (a dangling symlink included).
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(FsError::new(path, open_problem(e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_regular_capped(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert!(
            matches!(
                e.problem,
                FsProblem::NotRegular {
                    kind: "character device"
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with("/dev/zero: is a character device"),
            "{e}"
        );
        let e = read_regular_capped(dir.path(), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = read_regular_capped(&a, 1 << 20).unwrap_err();
        assert!(matches!(e.problem, FsProblem::SymlinkLoop), "{e}");
        assert!(e.to_string().contains("symlink loop"), "{e}");
        assert!(
            is_regular(&a)
                .unwrap_err()
                .to_string()
                .contains("symlink loop")
        );
        let e = read_regular_capped(&dir.path().join("none"), 10).unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(!is_regular(&dir.path().join("none")).unwrap());
    }

    #[test]
    fn caps_by_size_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_regular_capped(&p, 10).unwrap(), b"0123456789");
        let e = read_regular_capped(&p, 9).unwrap_err();
        assert!(
            matches!(e.problem, FsProblem::TooLarge { size: 10, cap: 9 }),
            "{e}"
        );
        assert_eq!(e.into_io().kind(), io::ErrorKind::FileTooLarge);
        assert!(is_regular(&p).unwrap());
    }
}
