//! The selective loader: a Hugging Face checkpoint directory, opened and validated against its
//! `config.json`, read pack by pack — by layer, expert id and TP shard — so that each device
//! reads only its own bytes, straight from the page cache (positional reads; see `source.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use safetensors::tensor::{Dtype, Metadata};
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
    /// Stored as f32 where the spec has bf16: narrowed on read (see [`f32_to_bf16_exact`]).
    widened: bool,
    stored: Dtype,
    reads: AtomicU64,
}

/// What a checkpoint's files store (see [`Checkpoint::stored_dtypes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoredDtypes {
    pub tensors: BTreeMap<String, u64>,
    pub narrowed_exactly: u64,
}

/// Largest f32 tensor converted to bf16: a router (`experts × hidden`) is at most a few MB; the
/// whole tensor is read once at open to check it converts exactly.
const MAX_CONVERTED_BYTES: u64 = 256 << 20;

/// Narrows little-endian f32 values to bf16 when every one of them is a bf16 value (its low 16
/// bits zero), so the conversion loses nothing; otherwise the index of the first that is not.
/// `transformers` keeps a MoE router in f32 in an otherwise bf16 checkpoint; the engine widens
/// bf16 weights to f32, so an exact f32 router gives the same numbers and an inexact one would
/// silently change the routing.
pub(crate) fn f32_to_bf16_exact(src: &[u8], dst: &mut [u8]) -> Result<(), usize> {
    for (i, (s, d)) in src.chunks_exact(4).zip(dst.chunks_exact_mut(2)).enumerate() {
        let bits = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        if bits & 0xffff != 0 {
            return Err(i);
        }
        d.copy_from_slice(&((bits >> 16) as u16).to_le_bytes());
    }
    Ok(())
}

fn inexact(tensor: &str, file: &Path, at: usize, src: &[u8]) -> CheckpointError {
    let v = src
        .get(at * 4..at * 4 + 4)
        .map_or(f32::NAN, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    CheckpointError::Inexact {
        tensor: tensor.to_string(),
        file: file.to_path_buf(),
        index: at as u64,
        value: v.to_string(),
    }
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
            let widened = t.dtype == model::DType::Bf16 && info.dtype == Dtype::F32;
            if info.dtype != want && !widened {
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
            let start = *data_start + a as u64;
            if widened {
                check_exact(&t.name, path, &sources[file], start, b - a)?;
            }
            index.insert(t.name.clone(), locs.len());
            locs.push(TensorLoc {
                file,
                start,
                len: b - a,
                widened,
                stored: info.dtype,
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
                if loc.widened {
                    // Ranges are in bf16 bytes; the file holds twice as many.
                    let mut wide = vec![0u8; n * 2];
                    src.read_at(loc.start + a * 2, &mut wide)?;
                    f32_to_bf16_exact(&wide, dst)
                        .map_err(|at| inexact(&pt.spec.name, &self.files[loc.file], at, &wide))?;
                } else {
                    src.read_at(loc.start + a, dst)?;
                }
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
            .filter(|l| l.len as u64 == t.bytes() * if l.widened { 2 } else { 1 })
            .ok_or_else(|| CheckpointError::UnknownTensor {
                tensor: t.name.clone(),
                dir: self.dir.clone(),
            })
    }

    /// How many of the spec's tensors each stored dtype holds (safetensors names, e.g. `BF16`,
    /// `F32`), and how many were stored as f32 and are served as the bf16 they exactly are.
    pub fn stored_dtypes(&self) -> StoredDtypes {
        let mut s = StoredDtypes::default();
        for l in &self.locs {
            *s.tensors.entry(l.stored.to_string()).or_insert(0) += 1;
            s.narrowed_exactly += u64::from(l.widened);
        }
        s
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

/// Reads a whole f32 tensor stored for a bf16 one and checks it narrows exactly.
fn check_exact(
    tensor: &str,
    file: &Path,
    src: &Source,
    start: u64,
    len: usize,
) -> Result<(), CheckpointError> {
    if len as u64 > MAX_CONVERTED_BYTES {
        return Err(CheckpointError::WrongDType {
            tensor: tensor.to_string(),
            file: file.to_path_buf(),
            expected: format!(
                "BF16 (an F32 tensor is converted only up to {MAX_CONVERTED_BYTES} bytes, this has {len})"
            ),
            found: "F32".into(),
        });
    }
    let mut wide = vec![0u8; len];
    src.read_at(start, &mut wide)?;
    let mut narrow = vec![0u8; len / 2];
    f32_to_bf16_exact(&wide, &mut narrow).map_err(|at| inexact(tensor, file, at, &wide))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn f32_narrows_to_bf16_only_when_exact() {
        let exact = [1.0f32, -2.5, 0.0, 3.0e-3f32];
        // 3e-3 is not a bf16 value: round it to one first.
        let exact: Vec<f32> = exact
            .iter()
            .map(|x| f32::from_bits(x.to_bits() & 0xffff_0000))
            .collect();
        let mut out = vec![0u8; exact.len() * 2];
        f32_to_bf16_exact(&f32_bytes(&exact), &mut out).unwrap();
        for (i, x) in exact.iter().enumerate() {
            let b = u16::from_le_bytes([out[2 * i], out[2 * i + 1]]);
            assert_eq!(f32::from_bits(u32::from(b) << 16), *x);
        }
        let inexact = [1.0f32, 1.0 + f32::EPSILON];
        assert_eq!(
            f32_to_bf16_exact(&f32_bytes(&inexact), &mut out[..4]),
            Err(1)
        );
    }

    /// A generated micro-moe checkpoint rewritten with layer 1's router stored as f32, the
    /// way transformers saves a bf16 model; `poison` sets low bits of one value.
    fn f32_router_checkpoint(poison: bool) -> (tempfile::TempDir, Vec<u8>) {
        use safetensors::tensor::{SafeTensors, TensorView};
        let spec = model::preset("micro-moe").unwrap().spec();
        let dir = tempfile::tempdir().unwrap();
        super::super::generate(&spec, 3, dir.path()).unwrap();
        let path = dir.path().join(WEIGHTS_FILE);
        let bytes = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let router = "model.layers.1.mlp.gate.weight";
        let orig = st.tensor(router).unwrap().data().to_vec();
        let mut wide: Vec<u8> = orig
            .chunks_exact(2)
            .flat_map(|b| (u32::from(u16::from_le_bytes([b[0], b[1]])) << 16).to_le_bytes())
            .collect();
        if poison {
            wide[4 * 5] = 1;
        }
        let mut views = Vec::new();
        for (name, t) in st.tensors() {
            let v = if name == router {
                TensorView::new(Dtype::F32, t.shape().to_vec(), &wide).unwrap()
            } else {
                TensorView::new(t.dtype(), t.shape().to_vec(), t.data()).unwrap()
            };
            views.push((name, v));
        }
        let out = safetensors::serialize(views, None).unwrap();
        std::fs::write(&path, out).unwrap();
        (dir, orig)
    }

    #[test]
    fn an_exact_f32_router_is_read_as_its_bf16_bytes() {
        let (dir, orig) = f32_router_checkpoint(false);
        let c = Checkpoint::open(dir.path()).unwrap();
        let spec = c.spec().clone();
        for tp in [1, 2] {
            let pack = &spec.non_expert_packs(tp, tp - 1)[2];
            let mut buf = vec![0u8; pack.bytes as usize];
            c.read_pack(pack, &mut buf).unwrap();
            let t = pack.tensor("model.layers.1.mlp.gate.weight").unwrap();
            let at = t.offset as usize;
            assert_eq!(&buf[at..at + orig.len()], &orig[..]);
        }
    }

    #[test]
    fn an_inexact_f32_router_is_refused_at_open_naming_it() {
        let (dir, _) = f32_router_checkpoint(true);
        let e = Checkpoint::open(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("model.layers.1.mlp.gate.weight") && e.contains("value 5"),
            "{e}"
        );
    }
}
