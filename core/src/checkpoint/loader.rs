//! The selective loader: a Hugging Face checkpoint directory, memory-mapped and validated
//! against its `config.json`, read pack by pack — by layer, expert id and TP shard — so that
//! each device reads only its own bytes, straight from the page cache.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::Metadata;
use serde::Deserialize;

use super::generate::safetensors_dtype;
use super::mapping::Mapping;
use super::{CONFIG_FILE, CheckpointError, GeneratedInfo, INDEX_FILE, INFO_FILE, WEIGHTS_FILE};
use crate::model::{self, ModelSpec, Pack, PackedTensor, TensorSpec};

/// Same limit as the safetensors crate: a larger length prefix means a corrupt file.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// An open checkpoint: every tensor of its spec present with the right dtype and shape.
/// `Send + Sync`: several threads may read packs at once.
pub struct Checkpoint {
    dir: PathBuf,
    spec: ModelSpec,
    generated: Option<GeneratedInfo>,
    files: Vec<PathBuf>,
    maps: Vec<Mapping>,
    index: HashMap<String, usize>,
    locs: Vec<TensorLoc>,
    bytes_read: AtomicU64,
}

/// Where one full tensor lies in the mappings, and how many of its bytes were copied out.
struct TensorLoc {
    file: usize,
    start: usize,
    len: usize,
    reads: AtomicU64,
}

#[derive(Deserialize)]
struct IndexFile {
    weight_map: BTreeMap<String, String>,
}

impl Checkpoint {
    /// Opens `dir`: reads `config.json`, maps `model.safetensors` (or every file named by
    /// `model.safetensors.index.json`) and checks each tensor of the spec against the headers.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let config = dir.join(CONFIG_FILE);
        let mut spec =
            model::from_hf_config_file(&config).map_err(|source| CheckpointError::Config {
                path: config.clone(),
                source,
            })?;
        // A generated checkpoint carries its preset's name; keep it so the spec compares equal
        // to the preset it was generated from (the config names it after the directory).
        let generated = std::fs::read(dir.join(INFO_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<GeneratedInfo>(&b).ok());
        if let Some(g) = &generated {
            spec.name.clone_from(&g.model);
        }

        let (files, file_of) = weight_files(dir)?;
        let maps = files
            .iter()
            .map(|f| Mapping::open(f))
            .collect::<Result<Vec<_>, _>>()?;
        let headers = files
            .iter()
            .zip(&maps)
            .map(|(f, m)| parse_header(f, m.bytes()))
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
                start: data_start + a,
                len: b - a,
                reads: AtomicU64::new(0),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            spec,
            generated,
            files,
            maps,
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

    /// The safetensors files, in the order `open` mapped them.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The generator's record when this checkpoint was generated by us.
    pub fn generated(&self) -> Option<&GeneratedInfo> {
        self.generated.as_ref()
    }

    /// Fills `out[..pack.bytes]` with the pack's tensors (or their TP shards for `pack.tp`,
    /// `pack.rank`), each at its offset, copied straight from the mapping; the padding between
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
            let src = &self.maps[loc.file].bytes()[loc.start..loc.start + loc.len];
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
            for (a, b) in pt.spec.shard_byte_ranges(pack.tp, pack.rank) {
                // In range: the file's tensor has exactly `pt.spec.bytes()` bytes (checked in
                // `loc`) and shard ranges lie inside the full tensor.
                let piece = &src[a as usize..b as usize];
                out.get_mut(w..w + piece.len())
                    .ok_or_else(bad)?
                    .copy_from_slice(piece);
                w += piece.len();
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

    /// Total bytes copied out of the mappings since `open`.
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
        for (f, m) in self.files.iter().zip(&self.maps) {
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
    if single.is_file() {
        return Ok((vec![single], None));
    }
    let index_path = dir.join(INDEX_FILE);
    if !index_path.is_file() {
        return Err(CheckpointError::NoWeights {
            dir: dir.to_path_buf(),
        });
    }
    let text =
        std::fs::read(&index_path).map_err(|e| CheckpointError::io("read", &index_path, e))?;
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

/// Parses a safetensors header with the crate's own `Metadata` (which checks that the data
/// offsets are contiguous and match each dtype and shape); returns where the data starts.
fn parse_header(file: &Path, bytes: &[u8]) -> Result<(usize, Metadata), CheckpointError> {
    let found = bytes.len() as u64;
    let truncated = |expected: u64| CheckpointError::Truncated {
        file: file.to_path_buf(),
        expected,
        found,
    };
    let prefix: [u8; 8] = bytes
        .get(..8)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| truncated(8))?;
    let n = u64::from_le_bytes(prefix);
    if n > MAX_HEADER_BYTES {
        return Err(CheckpointError::Header {
            file: file.to_path_buf(),
            why: format!("header length {n} is implausible"),
        });
    }
    let data_start = 8 + n as usize;
    let header = bytes
        .get(8..data_start)
        .ok_or_else(|| truncated(data_start as u64))?;
    let meta: Metadata = serde_json::from_slice(header).map_err(|e| CheckpointError::Header {
        file: file.to_path_buf(),
        why: e.to_string(),
    })?;
    let expected = (data_start + meta.data_len()) as u64;
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
