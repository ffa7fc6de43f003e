//! The README's first command on a fresh machine: `emoe` brings up the embedded default (host
//! backend, 8 devices, tiny-moe, dp2tp2ep4 on devices 0–3) — here as one text frame
//! (`--once`), the interactive console being driven in `console_tmux.rs` — and
//! `emoe-agent inspect` reports the same node as JSON.

mod common;

use std::process::Command;

#[test]
fn emoe_starts_the_embedded_default_and_agent_inspects_it() {
    let cache = tempfile::tempdir().unwrap();

    // Without a terminal the console refuses and says what to use instead.
    let out = Command::new(common::bin("emoe"))
        .env("EMOE_CACHE_DIR", cache.path())
        .output()
        .expect("run emoe");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--once"));

    // `--once` prints one frame of the overview once the embedded agent has reported.
    let out = Command::new(common::bin("emoe"))
        .args(["--once", "--size", "120x30"])
        .env("EMOE_CACHE_DIR", cache.path())
        .env("EMOE_CONFIG_DIR", cache.path().join("config"))
        .output()
        .expect("run emoe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "emoe failed: {stderr}");
    assert!(stdout.contains("dp2tp2ep4"), "{stdout}");
    assert!(stdout.contains("live"), "{stdout}");
    for i in 0..8 {
        assert!(
            stdout.contains(&format!("│0/{i} ")),
            "device 0/{i} missing: {stdout}"
        );
    }
    // Devices 0–3 hold the model, 4–7 are free.
    assert!(stdout.contains("dp2tp2ep4 active"), "{stdout}");

    // The memory map of the same node.
    let out = Command::new(common::bin("emoe"))
        .args(["--once", "--view", "memory", "--ascii"])
        .env("EMOE_CACHE_DIR", cache.path())
        .env("EMOE_CONFIG_DIR", cache.path().join("config"))
        .output()
        .expect("run emoe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("Memory map of"), "{stdout}");
    assert!(stdout.is_ascii(), "--ascii draws ASCII only: {stdout}");

    // The command, reusing the checkpoint `emoe` generated.
    let out = Command::new(common::bin("emoe-agent"))
        .args([
            "inspect",
            "--backend",
            "host",
            "--devices",
            "8",
            "--model",
            "tiny-moe",
            "--config",
            "dp2tp2ep4",
            "--json",
        ])
        .env("EMOE_CACHE_DIR", cache.path())
        .output()
        .expect("run emoe-agent");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 8);
    let experts = |d: &serde_json::Value| {
        d["regions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "expert")
            .count()
    };
    // tiny-moe: 7 MoE layers × 64 experts / EP 4.
    assert!(devices[..4].iter().all(|d| experts(d) == 7 * 16));
    assert!(devices[4..].iter().all(|d| experts(d) == 0));
    // Each device's 112 experts of 768 KiB are real host memory.
    assert!(
        devices[..4]
            .iter()
            .all(|d| d["used_bytes"].as_u64().unwrap() > 112 * 768 * 1024)
    );
}
