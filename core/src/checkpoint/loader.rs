//! The selective loader: a Hugging Face checkpoint directory, opened and validated against its
//! `config.json`, read pack by pack — by layer, expert id and TP shard — so that each device
//! reads only its own bytes, straight from the page cache (positional reads; see `source.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::Metadata;
use serde::Deserialize;

use super::generate::safetensors_dtype;
use super::source::Source;
use super::{CONFIG_FILE, CheckpointError, GeneratedInfo, INDEX_FILE, INFO_FILE, WEIGHTS_FILE};
use crate::fsio;
use crate::model::{self, ModelSpec, Pack, PackedTensor, TensorSpec};

/// Same limit as the safetensors crate: a larger length prefix means a corrupt file.
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// `model.safetensors.index.json`: DeepSeek-V3's (91k tensors) is 9 MB.
const MAX_INDEX_BYTES: u64 = 64 << 20;
/// `emoe-checkpoint.json`: a few hundred bytes.
pub(crate) const MAX_INFO_BYTES: u64 = 1 << 20;

/// An open checkpoint: every tensor of its spec present with the right dtype and shape.
/// `Send + Sync`: several threads may read packs at once.
pub struct Checkpoint {
    dir: PathBuf,
    spec: ModelSpec,
    generated: Option<GeneratedInfo>,
    files: Vec<PathBuf>,
    sources: Vec<Source>,
    index: HashMap<String, usize>,
    locs: Vec<TensorLoc>,
    bytes_read: AtomicU64,
}

/// Where one full tensor lies in its file, and how many of its bytes were copied out.
struct TensorLoc {
    file: usize,
    start: u64,
    len: usize,
    reads: AtomicU64,
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens `dir`: reads `config.json`, opens `model.safetensors` (or every file named by
    /// `model.safetensors.index.json`) and checks each tensor of the spec against the headers.
    /// Only regular files are read, each within its size cap.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let config = dir.join(CONFIG_FILE);
        let mut spec =
            model::from_hf_config_file(&config).map_err(|cause| CheckpointError::Config {
                path: config.clone(),
                cause,
            })?;
        // A generated checkpoint carries its preset's name; keep it so the spec compares equal
        // to the preset it was generated from (the config names it after the directory).
        let generated = read_info(dir)?;
        if let Some(g) = &generated {
            spec.name.clone_from(&g.model);
        }

        let (files, file_of) = weight_files(dir)?;
        let sources = files
            .iter()
            .map(|f| Source::open(f))
            .collect::<Result<Vec<_>, _>>()?;
        let headers = files
            .iter()
            .zip(&sources)
            .map(|(f, src)| parse_header(f, src))
            .collect::<Result<Vec<_>, _>>()?;

        let tensors = spec.tensors();
        let mut index = HashMap::with_capacity(tensors.len());
        let mut locs = Vec::with_capacity(tensors.len());
        for t in &tensors {
            let file = match &file_of {
                None => 0,
                Some(map) => *map
                    .get(&t.name)
                    .ok_or_else(|| CheckpointError::MissingTensor {
                        tensor: t.name.clone(),
                        file: dir.join(INDEX_FILE),
                    })?,
            };
            let (data_start, meta) = &headers[file];
            let path = &files[file];
            let info = meta
                .info(&t.name)
                .ok_or_else(|| CheckpointError::MissingTensor {
                    tensor: t.name.clone(),
                    file: path.clone(),
                })?;
            let want = safetensors_dtype(t.dtype);
            if info.dtype != want {
                return Err(CheckpointError::WrongDType {
                    tensor: t.name.clone(),
                    file: path.clone(),
                    expected: want.to_string(),
                    found: info.dtype.to_string(),
                });
            }
            let found: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
            if found != t.shape {
                return Err(CheckpointError::WrongShape {
                    tensor: t.name.clone(),
                    file: path.clone(),
                    expected: t.shape.clone(),
                    found,
                });
            }
            let (a, b) = info.data_offsets;
            index.insert(t.name.clone(), locs.len());
            locs.push(TensorLoc {
                file,
                start: *data_start + a as u64,
                len: b - a,
                reads: AtomicU64::new(0),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            spec,
            generated,
            files,
            sources,
            index,
            locs,
            bytes_read: AtomicU64::new(0),
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The safetensors files, in the order `open` opened them.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The generator's record when this checkpoint was generated by us.
    pub fn generated(&self) -> Option<&GeneratedInfo> {
        self.generated.as_ref()
    }

    /// Fills `out[..pack.bytes]` with the pack's tensors (or their TP shards for `pack.tp`,
    /// `pack.rank`), each at its offset, read straight from the file; the padding between
    /// tensors and anything past `pack.bytes` is zeroed. Only the shard's bytes are touched.
    pub fn read_pack(&self, pack: &Pack, out: &mut [u8]) -> Result<(), CheckpointError> {
        self.read_pack_where(pack, out, |_| true)
    }

    /// [`read_pack`](Self::read_pack) for the tensors `keep` accepts; the others' bytes are
    /// zeroed and not read (the caller fills them another way, e.g. device to device).
    pub fn read_pack_where(
        &self,
        pack: &Pack,
        out: &mut [u8],
        keep: impl Fn(&PackedTensor) -> bool,
    ) -> Result<(), CheckpointError> {
        let pack_name = || format!("{:?} (tp {} rank {})", pack.key, pack.tp, pack.rank);
        if (out.len() as u64) < pack.bytes {
            return Err(CheckpointError::BufferTooSmall {
                pack: pack_name(),
                need: pack.bytes,
                have: out.len() as u64,
            });
        }
        let have = out.len() as u64;
        let mut cursor = 0usize;
        let mut copied = 0u64;
        for pt in &pack.tensors {
            let loc = self.loc(&pt.spec)?;
            let src = &self.sources[loc.file];
            let start = usize::try_from(pt.offset).unwrap_or(usize::MAX);
            // A pack whose offsets overlap or overrun `out` was not built by `Pack::build`.
            let bad = || CheckpointError::BufferTooSmall {
                pack: pack_name(),
                need: pt.offset.saturating_add(pt.len),
                have,
            };
            out.get_mut(cursor..start).ok_or_else(bad)?.fill(0);
            if !keep(pt) {
                let end = start.saturating_add(usize::try_from(pt.len).unwrap_or(usize::MAX));
                out.get_mut(start..end).ok_or_else(bad)?.fill(0);
                cursor = end;
                continue;
            }
            let mut w = start;
            // In range of the file: the tensor has exactly `pt.spec.bytes()` bytes there
            // (checked in `loc` and by `parse_header`) and shard ranges lie inside it. Ranges
            // that follow each other in the file are read with one call.
            for (a, b) in coalesce(pt.spec.shard_byte_ranges(pack.tp, pack.rank)) {
                let n = usize::try_from(b - a).map_err(|_| bad())?;
                let dst = out.get_mut(w..w.saturating_add(n)).ok_or_else(bad)?;
                src.read_at(loc.start + a, dst)?;
                w += n;
            }
            let n = (w - start) as u64;
            loc.reads.fetch_add(n, Ordering::Relaxed);
            copied += n;
            cursor = w;
        }
        if let Some(tail) = out.get_mut(cursor..) {
            tail.fill(0);
        }
        self.bytes_read.fetch_add(copied, Ordering::Relaxed);
        Ok(())
    }

    fn loc(&self, t: &TensorSpec) -> Result<&TensorLoc, CheckpointError> {
        self.index
            .get(&t.name)
            .map(|&i| &self.locs[i])
            .filter(|l| l.len as u64 == t.bytes())
            .ok_or_else(|| CheckpointError::UnknownTensor {
                tensor: t.name.clone(),
                dir: self.dir.clone(),
            })
    }

    /// Total bytes copied out of the files since `open`.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Bytes of tensor `name` copied out since `open` (0 for a name not in the checkpoint).
    /// Equal to the tensor's size after a load that reads every byte of it exactly once.
    pub fn reads_of(&self, name: &str) -> u64 {
        self.index
            .get(name)
            .map_or(0, |&i| self.locs[i].reads.load(Ordering::Relaxed))
    }

    /// Evicts every file of the checkpoint from the page cache (`POSIX_FADV_DONTNEED`), so the
    /// next read comes from disk: the cold-restart baseline.
    pub fn drop_page_cache(&self) -> Result<(), CheckpointError> {
        for (f, m) in self.files.iter().zip(&self.sources) {
            m.drop_page_cache()
                .map_err(|e| CheckpointError::io("drop page cache of", f, e))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("model", &self.spec.name)
            .field("files", &self.files)
            .field("tensors", &self.locs.len())
            .field("bytes_read", &self.bytes_read())
            .finish_non_exhaustive()
    }
}

/// The weight files of `dir` and, for an indexed checkpoint, which file holds each tensor.
/// A single `model.safetensors` wins over an index, as in `transformers`.
#[allow(clippy::type_complexity)]
fn weight_files(
    dir: &Path,
) -> Result<(Vec<PathBuf>, Option<HashMap<String, usize>>), CheckpointError> {
    let single = dir.join(WEIGHTS_FILE);
    // Something that is there but not a regular file (a directory, a FIFO, a symlink loop) is
    // refused by name, not taken for a missing file.
    let regular =
        |p: &Path| fsio::is_regular(p).map_err(|e| CheckpointError::io("open", p, e.into_io()));
    if regular(&single)? {
        return Ok((vec![single], None));
    }
    let index_path = dir.join(INDEX_FILE);
    if !regular(&index_path)? {
        return Err(CheckpointError::NoWeights {
            dir: dir.to_path_buf(),
        });
    }
    let text = fsio::read_regular_capped(&index_path, MAX_INDEX_BYTES)
        .map_err(|e| CheckpointError::io("read", &index_path, e.into_io()))?;
    let index: IndexFile = serde_json::from_slice(&text).map_err(|e| CheckpointError::Index {
        path: index_path.clone(),
        why: e.to_string(),
    })?;
    let mut names: Vec<&String> = index.weight_map.values().collect();
    names.sort();
    names.dedup();
    for n in &names {
        // Only plain file names in this directory: an index must not point elsewhere.
        let mut parts = Path::new(n.as_str()).components();
        if !matches!(
            (parts.next(), parts.next()),
            (Some(Component::Normal(_)), None)
        ) {
            return Err(CheckpointError::Index {
                path: index_path.clone(),
                why: format!("weight_map names `{n}`, which is not a file name in this directory"),
            });
        }
    }
    let slot: HashMap<&String, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let file_of = index
        .weight_map
        .iter()
        .map(|(t, f)| (t.clone(), slot[f]))
        .collect();
    let files = names.iter().map(|n| dir.join(n.as_str())).collect();
    Ok((files, Some(file_of)))
}

/// The generator's record, when `dir` has one that parses (a checkpoint from elsewhere has
/// none). Something there that is not a regular file of at most [`MAX_INFO_BYTES`] is refused.
pub(crate) fn read_info(dir: &Path) -> Result<Option<GeneratedInfo>, CheckpointError> {
    let path = dir.join(INFO_FILE);
    match fsio::read_regular_capped(&path, MAX_INFO_BYTES) {
        Ok(b) => Ok(serde_json::from_slice::<GeneratedInfo>(&b).ok()),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(CheckpointError::io("read", &path, e.into_io())),
    }
}

/// Merges ranges that follow each other (`a.1 == b.0`) into one.
fn coalesce(ranges: impl IntoIterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if last.1 == a => last.1 = b,
            _ => out.push((a, b)),
        }
    }
    out
}

/// Parses a safetensors header with the crate's own `Metadata` (which checks that the data
/// offsets are contiguous and match each dtype and shape); returns where the data starts. The
/// header is read only after its length is checked against the cap and the file's size.
fn parse_header(file: &Path, src: &Source) -> Result<(u64, Metadata), CheckpointError> {
    let found = src.len();
    let truncated = |expected: u64| CheckpointError::Truncated {
        file: file.to_path_buf(),
        expected,
        found,
    };
    if found < 8 {
        return Err(truncated(8));
    }
    let mut prefix = [0u8; 8];
    src.read_at(0, &mut prefix)?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_BYTES {
        return Err(CheckpointError::Header {
            file: file.to_path_buf(),
            why: format!("header length {n} is implausible (at most {MAX_HEADER_BYTES})"),
        });
    }
    let data_start = 8 + n;
    if found < data_start {
        return Err(truncated(data_start));
    }
    let mut header = vec![0u8; n as usize];
    src.read_at(8, &mut header)?;
    let meta: Metadata = serde_json::from_slice(&header).map_err(|e| CheckpointError::Header {
        file: file.to_path_buf(),
        why: e.to_string(),
    })?;
    let expected = data_start
        .checked_add(meta.data_len() as u64)
        .ok_or_else(|| CheckpointError::Header {
            file: file.to_path_buf(),
            why: "the tensors' sizes overflow 64 bits".into(),
        })?;
    if found < expected {
        return Err(truncated(expected));
    }
    if found > expected {
        return Err(CheckpointError::Header {
            file: file.to_path_buf(),
            why: format!("{} bytes after the last tensor", found - expected),
        });
    }
    Ok((data_start, meta))
}
