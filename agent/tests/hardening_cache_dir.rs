//! `EMOE_CACHE_DIR=""` is refused with exit 2 and changes nothing; before, the empty path
//! became the current directory and checkpoints were generated into `./checkpoints`.

use std::process::Command;

#[test]
fn an_empty_emoe_cache_dir_is_a_usage_error_and_writes_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_emoe-agent"))
        .args([
            "bench",
            "scale",
            "--backend",
            "host",
            "--devices",
            "8",
            "--model",
            "micro-moe",
            "--from",
            "dp3tp2ep6",
            "--to",
            "dp4tp2ep8",
            "--runs",
            "1",
            "--json",
        ])
        .env("EMOE_CACHE_DIR", "")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("EMOE_CACHE_DIR is set but empty"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "nothing written to the current directory: {left:?}"
    );
}
