//! Every file core reads — `config.json`, the safetensors files and their index, the generator's
//! record, traffic traces — is a regular file within a size cap. Before, `/dev/zero` (or a
//! symlink to it) was read until memory ran out, a FIFO hung the open, and a symlink loop was
//! reported as a missing file. Each case here runs on a thread with a deadline, so a hang fails
//! the test instead of stalling it.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use emoe_core::checkpoint::{self, Checkpoint, INDEX_FILE, WEIGHTS_FILE};
use emoe_core::fsio;
use emoe_core::model;
use emoe_core::traffic::{Lengths, Profile, TrafficSpec};

/// Runs `f` on a thread and fails if it takes more than 10 s (the old behaviour was to hang or
/// to read `/dev/zero` until memory ran out).
fn within_deadline<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: did not return within 10 s"))
}

fn mkfifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

fn config_err(path: PathBuf) -> String {
    within_deadline("from_hf_config_file", move || {
        model::from_hf_config_file(&path).unwrap_err().to_string()
    })
}

#[test]
fn config_json_that_is_not_a_regular_file_is_refused_by_type() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.json");
    symlink("/dev/zero", &zero).unwrap();
    let e = config_err(zero.clone());
    assert!(
        e.contains("zero.json") && e.contains("character device"),
        "{e}"
    );
    let fifo = dir.path().join("fifo.json");
    mkfifo(&fifo);
    let e = config_err(fifo);
    assert!(e.contains("FIFO"), "{e}");
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    symlink(&b, &a).unwrap();
    symlink(&a, &b).unwrap();
    let e = config_err(a);
    assert!(e.contains("symlink loop"), "{e}");
    assert!(!e.contains("No such file"), "{e}");
}

#[test]
fn oversized_config_json_is_refused_by_size_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.json");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(model::MAX_CONFIG_BYTES + 1).unwrap(); // sparse: nothing to read anyway
    let e = config_err(p);
    assert!(
        e.contains(&format!("{}", model::MAX_CONFIG_BYTES + 1))
            && e.contains(&format!("{}-byte limit", model::MAX_CONFIG_BYTES)),
        "{e}"
    );
}

fn generated(dir: &Path) -> PathBuf {
    let spec = model::preset("micro-moe").unwrap().spec();
    checkpoint::ensure_generated(&spec, 1, dir).unwrap()
}

fn open_err(dir: PathBuf) -> String {
    within_deadline("Checkpoint::open", move || {
        Checkpoint::open(&dir).unwrap_err().to_string()
    })
}

#[test]
fn weights_that_are_not_regular_files_are_refused_by_type() {
    let cache = tempfile::tempdir().unwrap();
    let dir = generated(cache.path());
    let weights = dir.join(WEIGHTS_FILE);
    std::fs::remove_file(&weights).unwrap();
    symlink("/dev/zero", &weights).unwrap();
    let e = open_err(dir.clone());
    assert!(
        e.contains(WEIGHTS_FILE) && e.contains("character device"),
        "{e}"
    );

    std::fs::remove_file(&weights).unwrap();
    mkfifo(&weights);
    let e = open_err(dir.clone());
    assert!(e.contains("FIFO"), "{e}");

    // A loop is named as one, not reported as "no model.safetensors".
    std::fs::remove_file(&weights).unwrap();
    let other = dir.join("loop");
    symlink(&other, &weights).unwrap();
    symlink(&weights, &other).unwrap();
    let e = open_err(dir.clone());
    assert!(e.contains("symlink loop"), "{e}");
}

#[test]
fn an_index_that_is_not_a_regular_file_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let dir = generated(cache.path());
    std::fs::remove_file(dir.join(WEIGHTS_FILE)).unwrap();
    let index = dir.join(INDEX_FILE);
    symlink("/dev/zero", &index).unwrap();
    let e = open_err(dir.clone());
    assert!(
        e.contains(INDEX_FILE) && e.contains("character device"),
        "{e}"
    );
    std::fs::remove_file(&index).unwrap();
    mkfifo(&index);
    let e = open_err(dir);
    assert!(e.contains("FIFO"), "{e}");
}

#[test]
fn a_generator_record_that_is_not_a_regular_file_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let dir = generated(cache.path());
    let record = dir.join(checkpoint::INFO_FILE);
    std::fs::remove_file(&record).unwrap();
    mkfifo(&record);
    let e = open_err(dir);
    assert!(
        e.contains(checkpoint::INFO_FILE) && e.contains("FIFO"),
        "{e}"
    );
}

fn trace_err(path: PathBuf) -> String {
    within_deadline("trace", move || {
        TrafficSpec {
            profile: Profile::Trace { path },
            prompt: Lengths::Fixed(1),
            output: Lengths::Fixed(1),
            seed: 0,
            duration_s: f64::INFINITY,
        }
        .generate()
        .unwrap_err()
        .to_string()
    })
}

#[test]
fn traces_that_are_not_regular_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let e = trace_err("/dev/zero".into());
    assert!(
        e.contains("/dev/zero") && e.contains("character device"),
        "{e}"
    );
    let fifo = dir.path().join("trace.jsonl");
    mkfifo(&fifo);
    let e = trace_err(fifo);
    assert!(e.contains("FIFO"), "{e}");
    let e = trace_err(dir.path().to_path_buf());
    assert!(e.contains("directory"), "{e}");
}

#[test]
fn the_helper_is_public_for_the_console_and_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("token");
    std::fs::write(&p, b"secret").unwrap();
    assert_eq!(fsio::read_regular_capped(&p, 6).unwrap(), b"secret");
    let e = fsio::read_regular_capped(&p, 5).unwrap_err();
    assert!(
        e.to_string()
            .contains("6 bytes, more than the 5-byte limit"),
        "{e}"
    );
    assert!(e.to_string().contains("token"), "{e}");
}

/// What a printer that walks `source()` (anyhow's `{:#}`, the agent's stderr) shows.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(c) = next {
        s = format!("{s}: {c}");
        next = c.source();
    }
    s
}

#[test]
fn refusals_name_each_cause_once_along_the_chain() {
    let cache = tempfile::tempdir().unwrap();
    let dir = generated(cache.path());
    let config = dir.join(checkpoint::CONFIG_FILE);
    std::fs::remove_file(&config).unwrap();
    symlink("/dev/zero", &config).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err();
    let s = chain(&e);
    assert_eq!(s.matches("character device").count(), 1, "{s}");
    assert_eq!(s.matches(&config.display().to_string()).count(), 1, "{s}");

    std::fs::remove_file(dir.join(WEIGHTS_FILE)).unwrap();
    mkfifo(&dir.join(WEIGHTS_FILE));
    std::fs::remove_file(&config).unwrap();
    std::fs::write(&config, micro_config()).unwrap();
    let e = Checkpoint::open(&dir).unwrap_err();
    let s = chain(&e);
    assert_eq!(s.matches("FIFO").count(), 1, "{s}");
}

fn micro_config() -> String {
    model::preset("micro-moe")
        .unwrap()
        .spec()
        .to_hf_config()
        .to_string()
}
