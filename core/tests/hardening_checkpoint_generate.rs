//! An interrupted checkpoint generation leaves nothing a later start would use or trip over:
//! every file is written under a fresh temporary name and renamed into place; the cache
//! generates into a temporary directory of the `tempfile` crate; leftovers are removed only
//! when our generator made them (its marker file), never someone else's directory.

use std::path::Path;
use std::time::{Duration, SystemTime};

use emoe_core::checkpoint::{
    self, CONFIG_FILE, CREATED_MARKER, Checkpoint, INFO_FILE, WEIGHTS_FILE,
};
use emoe_core::model::{self, ModelSpec};

fn micro() -> ModelSpec {
    model::preset("micro-moe").unwrap().spec()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_failed_generation_leaves_no_partial_file_and_no_record() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    // The weights cannot be renamed into place: a non-empty directory holds their name.
    std::fs::create_dir_all(dir.join(WEIGHTS_FILE).join("occupied")).unwrap();
    let e = checkpoint::generate(&micro(), 1, &dir).unwrap_err();
    assert!(e.to_string().contains(WEIGHTS_FILE), "{e}");
    // Before, `model.safetensors.partial` (the whole model's bytes) stayed behind.
    assert_eq!(
        names(&dir),
        [CONFIG_FILE, WEIGHTS_FILE],
        "no temporary left"
    );
    assert!(!dir.join(INFO_FILE).exists(), "never marked complete");
    // The config, written first, is whole (it was renamed into place complete).
    model::from_hf_config_file(&dir.join(CONFIG_FILE)).unwrap();
}

#[test]
fn a_killed_generators_leftovers_are_ignored_and_only_ours_are_removed() {
    let spec = micro();
    let root = tempfile::tempdir().unwrap();
    let key = checkpoint::cache_key(&spec, 1);
    let old = SystemTime::now() - Duration::from_secs(2 * 3600);
    // What a generator killed mid-way leaves: a temporary directory with our marker and a
    // complete-looking weights file. Another tool's directory of the same shape has no marker.
    let ours = root.path().join(format!(".{key}.tmp-killed"));
    let theirs = root.path().join(format!(".{key}.tmp-someone-elses"));
    for d in [&ours, &theirs] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join(WEIGHTS_FILE), b"half").unwrap();
    }
    std::fs::write(ours.join(CREATED_MARKER), b"pid 1\n").unwrap();
    for d in [&ours, &theirs] {
        std::fs::File::open(d).unwrap().set_modified(old).unwrap();
    }
    let young = root.path().join(format!(".{key}.tmp-live"));
    std::fs::create_dir_all(&young).unwrap();
    std::fs::write(young.join(CREATED_MARKER), b"pid 2\n").unwrap();

    let dir = checkpoint::ensure_generated(&spec, 1, root.path()).unwrap();
    assert_eq!(
        Checkpoint::open(&dir).unwrap().spec(),
        &spec,
        "leftovers not used"
    );
    assert!(!ours.exists(), "an hour-old leftover of ours is removed");
    assert!(
        theirs.exists(),
        "a directory without our marker is never deleted"
    );
    assert!(young.exists(), "a young one may be a live generator");
    assert!(dir.join(CREATED_MARKER).exists());
}

#[test]
fn a_foreign_incomplete_directory_in_the_way_is_moved_aside_not_deleted() {
    let spec = micro();
    let root = tempfile::tempdir().unwrap();
    let key = checkpoint::cache_key(&spec, 1);
    let dir = root.path().join(&key);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
    let got = checkpoint::ensure_generated(&spec, 1, root.path()).unwrap();
    assert_eq!(got, dir);
    Checkpoint::open(&got).unwrap();
    let aside: Vec<_> = names(root.path())
        .into_iter()
        .filter(|n| n.starts_with(&format!(".{key}.stale-")))
        .collect();
    assert_eq!(aside.len(), 1, "{:?}", names(root.path()));
    let notes = root.path().join(&aside[0]).join("notes.txt");
    assert_eq!(std::fs::read(notes).unwrap(), b"mine");
}

#[test]
fn a_damaged_entry_of_ours_is_replaced_and_removed() {
    let spec = micro();
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint::ensure_generated(&spec, 1, root.path()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(WEIGHTS_FILE))
        .unwrap()
        .set_len(100)
        .unwrap();
    let again = checkpoint::ensure_generated(&spec, 1, root.path()).unwrap();
    Checkpoint::open(&again).unwrap();
    assert_eq!(names(root.path()), [checkpoint::cache_key(&spec, 1)]);
}

#[test]
fn generated_files_keep_the_usual_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = checkpoint::ensure_generated(&micro(), 1, root.path()).unwrap();
    // What `File::create` and `create_dir` make under this process's umask.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let probe_file = root.path().join("probe");
    std::fs::File::create(&probe_file).unwrap();
    let probe_dir = root.path().join("probe-dir");
    std::fs::create_dir(&probe_dir).unwrap();
    for f in [CONFIG_FILE, WEIGHTS_FILE, INFO_FILE] {
        assert_eq!(mode(&dir.join(f)), mode(&probe_file), "{f}");
    }
    assert_eq!(mode(&dir), mode(&probe_dir));
}
