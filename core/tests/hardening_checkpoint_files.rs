//! A checkpoint stays open for the agent's whole life; its files may be truncated or replaced
//! by another process meanwhile. Before, the loader memory-mapped them, and a read after a
//! truncation raised SIGBUS and killed the process (this test binary with it). Now reads are
//! positional: a truncation is an error naming the file and both sizes, a replacement by rename
//! changes nothing (the open file is the old inode).

use std::path::{Path, PathBuf};

use emoe_core::checkpoint::{self, Checkpoint, CheckpointError, WEIGHTS_FILE};
use emoe_core::model::{self, ModelSpec, Pack};

fn micro() -> ModelSpec {
    model::preset("micro-moe").unwrap().spec()
}

fn generated(root: &Path) -> PathBuf {
    checkpoint::ensure_generated(&micro(), 1, root).unwrap()
}

fn read(ck: &Checkpoint, pack: &Pack) -> Result<Vec<u8>, CheckpointError> {
    let mut buf = vec![0u8; pack.bytes as usize];
    ck.read_pack(pack, &mut buf).map(|()| buf)
}

/// The last expert of the last MoE layer: its bytes lie at the end of the file.
fn last_expert(spec: &ModelSpec) -> Pack {
    let l = *spec.moe_layers().last().unwrap();
    spec.expert_pack(l, spec.num_routed_experts - 1)
}

#[test]
fn a_file_truncated_while_open_is_an_error_not_a_crash() {
    let root = tempfile::tempdir().unwrap();
    let dir = generated(root.path());
    let ck = Checkpoint::open(&dir).unwrap();
    let spec = ck.spec().clone();
    let pack = last_expert(&spec);
    let before = read(&ck, &pack).unwrap();
    assert!(before.iter().any(|&b| b != 0));

    let weights = dir.join(WEIGHTS_FILE);
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&weights)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    // With the old mmap this read faulted past the new end: SIGBUS, the process gone.
    let e = read(&ck, &pack).unwrap_err();
    assert!(matches!(e, CheckpointError::Changed { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains(WEIGHTS_FILE)
            && msg.contains(&len.to_string())
            && msg.contains(&(len / 2).to_string())
            && msg.contains("truncated"),
        "{msg}"
    );
    // The process is still here, and the checkpoint still answers (with the same error).
    assert!(matches!(
        read(&ck, &pack),
        Err(CheckpointError::Changed { .. })
    ));
}

#[test]
fn a_file_replaced_while_open_keeps_serving_the_bytes_it_was_opened_with() {
    let root = tempfile::tempdir().unwrap();
    let dir = generated(root.path());
    let ck = Checkpoint::open(&dir).unwrap();
    let pack = last_expert(ck.spec());
    let before = read(&ck, &pack).unwrap();
    let weights = dir.join(WEIGHTS_FILE);
    let len = std::fs::metadata(&weights).unwrap().len();
    let other = dir.join("replacement");
    std::fs::write(&other, vec![0x55u8; len as usize]).unwrap();
    std::fs::rename(&other, &weights).unwrap();
    assert_eq!(read(&ck, &pack).unwrap(), before, "unchanged answers");
}
