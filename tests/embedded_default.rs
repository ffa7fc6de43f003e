//! The README's first command on a fresh machine: `emoe` with no arguments brings up the
//! embedded default (host backend, 8 devices, tiny-moe, dp2tp2ep4 on devices 0–3), and
//! `emoe-agent inspect` reports the same node as JSON.

mod common;

use std::process::Command;

#[test]
fn emoe_starts_the_embedded_default_and_agent_inspects_it() {
    let cache = tempfile::tempdir().unwrap();

    let out = Command::new(common::bin("emoe"))
        .env("EMOE_CACHE_DIR", cache.path())
        .output()
        .expect("run emoe");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "emoe failed: {stderr}");
    assert!(
        stdout.contains("tiny-moe on host backend, config dp2tp2ep4"),
        "{stdout}"
    );
    for i in 0..8 {
        assert!(
            stdout.contains(&format!("\n0/{i} ")),
            "device 0/{i} missing: {stdout}"
        );
    }

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
