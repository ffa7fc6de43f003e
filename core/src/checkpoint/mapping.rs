//! A read-only memory mapping of a whole file. Copies go straight from the page cache into the
//! destination buffer, and only the pages of the bytes actually copied are faulted in, so a
//! selective read touches nothing else of the file.

use std::ffi::c_void;
use std::fs::File;
use std::path::Path;

use rustix::mm::{MapFlags, ProtFlags};

use super::CheckpointError;

pub(crate) struct Mapping {
    file: File,
    ptr: *mut c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; shared `&[u8]` access from any
// thread is sound as long as no one truncates the file underneath (see `bytes`).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    pub(crate) fn open(path: &Path) -> Result<Self, CheckpointError> {
        let file = File::open(path).map_err(|e| CheckpointError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| CheckpointError::io("stat", path, e))?
            .len();
        let len = usize::try_from(len).map_err(|_| CheckpointError::Header {
            file: path.to_path_buf(),
            why: format!("{len} bytes do not fit the address space"),
        })?;
        if len == 0 {
            // mmap refuses empty ranges; the header parser reports the empty file.
            return Ok(Self {
                file,
                ptr: std::ptr::null_mut(),
                len,
            });
        }
        // SAFETY: a fresh mapping chosen by the kernel (no fixed address), read-only.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| CheckpointError::io("map", path, e.into()))?;
        Ok(Self { file, ptr, len })
    }

    /// The file's bytes. Checkpoint files are replaced by rename, never rewritten in place;
    /// a file truncated by someone else while mapped would fault (SIGBUS), as with any mmap.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr..ptr+len` is a live read-only mapping owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }

    /// Evicts the file from the page cache. Our own mapping pins the pages it has faulted in,
    /// so those are released first (MADV_DONTNEED on a read-only file mapping only drops the
    /// page-table entries; the next access faults the bytes back in from the file).
    pub(crate) fn drop_page_cache(&self) -> std::io::Result<()> {
        if self.len > 0 {
            // SAFETY: the range is exactly our mapping; see above for why it stays valid.
            unsafe { rustix::mm::madvise(self.ptr, self.len, rustix::mm::Advice::LinuxDontNeed) }?;
        }
        rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping our own mapping; no borrow of `bytes()` outlives `self`.
            // Nothing useful can be done if it fails.
            let _ = unsafe { rustix::mm::munmap(self.ptr, self.len) };
        }
    }
}
