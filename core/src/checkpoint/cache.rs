//! A cache of generated checkpoints, one directory per (model, seed, generator version).
//! A directory only ever appears under its final name complete: it is generated in a fresh
//! temporary directory (the `tempfile` crate, in the cache root) and renamed into place, so
//! concurrent agents never see half a checkpoint. An error or a panic removes the temporary
//! directory; a kill leaves one that is never reused, and removed later only if it carries the
//! marker file our generator writes first (we never delete what we did not create).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use super::generate::{expected_info, generates_tokenizer};
use super::{CONFIG_FILE, CheckpointError, GENERATOR_VERSION, GeneratedInfo, WEIGHTS_FILE};
use crate::model::ModelSpec;

/// Temporary directories older than this belong to a crashed generator (a generation takes
/// seconds) and are removed.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// Written first into every directory our generator creates: only directories carrying it are
/// ever deleted by the cache (leftover temporaries, a damaged entry in the way).
pub const CREATED_MARKER: &str = ".emoe-generated-here";

/// The directory name of a cached checkpoint: `<name>-s<seed>-g<version>`.
pub fn cache_key(spec: &ModelSpec, seed: u64) -> String {
    // The name may come from a directory name: keep it a single safe path component.
    let name: String = spec
        .name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '_',
        })
        .collect();
    let name = name.trim_start_matches('.');
    format!("{name}-s{seed}-g{GENERATOR_VERSION}")
}

/// The checkpoint directory of `spec` and `seed` under `cache_root`, generated first unless a
/// complete one is already there.
pub fn ensure_generated(
    spec: &ModelSpec,
    seed: u64,
    cache_root: &Path,
) -> Result<PathBuf, CheckpointError> {
    let expected = expected_info(spec, seed)?;
    let key = cache_key(spec, seed);
    let dir = cache_root.join(&key);
    if is_complete(&dir, spec, &expected) {
        return Ok(dir);
    }
    std::fs::create_dir_all(cache_root)
        .map_err(|e| CheckpointError::io("create", cache_root, e))?;
    // `0777` less the umask, as `create_dir` would: the entry is shared by the user's agents.
    let tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .prefix(&format!(".{key}.tmp-"))
        .tempdir_in(cache_root)
        .map_err(|e| CheckpointError::io("create a temporary directory in", cache_root, e))?;
    let marker = tmp.path().join(CREATED_MARKER);
    std::fs::write(&marker, format!("pid {}\n", std::process::id()))
        .map_err(|e| CheckpointError::io("write", &marker, e))?;
    let result = generate_into(spec, seed, cache_root, &tmp, &dir, &expected);
    // On success the directory was renamed away; otherwise `tmp` removes what is left.
    drop(tmp);
    if result.is_ok() {
        remove_stale_temps(cache_root, &key);
    }
    result.map(|()| dir)
}

fn generate_into(
    spec: &ModelSpec,
    seed: u64,
    root: &Path,
    tmp: &TempDir,
    dir: &Path,
    expected: &GeneratedInfo,
) -> Result<(), CheckpointError> {
    let tmp = tmp.path();
    let info = super::generate(spec, seed, tmp)?;
    if &info != expected {
        return Err(CheckpointError::Cache {
            dir: tmp.to_path_buf(),
            why: format!("generated {info:?}, expected {expected:?}"),
        });
    }
    sync_dir(tmp)?;
    // Two tries: a directory in the way that is not a complete checkpoint (left by an older
    // tool or damaged) is moved aside once, then our rename must win or lose to a complete one.
    for _ in 0..2 {
        match std::fs::rename(tmp, dir) {
            Ok(()) => return sync_dir(root),
            Err(_) if dir.exists() => {
                if is_complete(dir, spec, expected) {
                    // Another generator won the race with identical bytes: use its directory.
                    return Ok(());
                }
                // Ours (it carries the marker): removed. Someone else's: kept, out of the way.
                let aside = root.join(format!(".{}.stale-{}", cache_key(spec, seed), unique()));
                if std::fs::rename(dir, &aside).is_ok() && created_by_us(&aside) {
                    let _ = std::fs::remove_dir_all(&aside);
                }
            }
            Err(e) => return Err(CheckpointError::io("rename into place", dir, e)),
        }
    }
    Err(CheckpointError::Cache {
        dir: dir.to_path_buf(),
        why: "a directory that is not a complete checkpoint keeps reappearing there".into(),
    })
}

/// Complete means: our record is there and matches, the config is there (and the tokenizer
/// files, for a model that gets them), and the weights file has the recorded size (catches a
/// file truncated after the fact). Entries of generator version 1, which had no tokenizer,
/// have another key and are not looked at.
fn is_complete(dir: &Path, spec: &ModelSpec, expected: &GeneratedInfo) -> bool {
    let info = super::loader::read_info(dir).ok().flatten();
    let regular = |name: &str| crate::fsio::is_regular(&dir.join(name)).unwrap_or(false);
    info.as_ref() == Some(expected)
        && regular(CONFIG_FILE)
        && (!generates_tokenizer(spec)
            || (regular(crate::tokenizer::TOKENIZER_FILE)
                && regular(crate::tokenizer::TOKENIZER_CONFIG_FILE)))
        && std::fs::metadata(dir.join(WEIGHTS_FILE)).is_ok_and(|m| m.len() == expected.file_bytes)
}

/// Unique among processes (pid) and among threads of this one (counter).
fn unique() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Makes a rename durable: without it a crash could leave the name pointing at nothing.
fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CheckpointError::io("sync", dir, e))
}

/// Whether our generator created `dir` (it carries the marker, as a regular file).
fn created_by_us(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
        && std::fs::symlink_metadata(dir.join(CREATED_MARKER)).is_ok_and(|m| m.is_file())
}

/// Best effort: removes temporary directories of `key` left by crashed generators of ours
/// (an hour old and carrying the marker); anything else is left alone.
fn remove_stale_temps(root: &Path, key: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let prefixes = [format!(".{key}.tmp-"), format!(".{key}.stale-")];
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP);
        if old && created_by_us(&e.path()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
