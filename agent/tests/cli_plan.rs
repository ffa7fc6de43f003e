//! `emoe-agent plan --embedded`: the plan as JSON with the fields scripts rely on; refusals.

mod common;
use common::*;

#[test]
fn plan_json_has_the_documented_fields() {
    let cache = tempfile::tempdir().unwrap();
    let out = agent(
        &[
            "plan",
            "--embedded",
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
            "--json",
        ],
        cache.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(p["from"], "dp3tp2ep6");
    assert_eq!(p["to"], "dp4tp2ep8");
    assert_eq!(p["devices_added"], serde_json::json!(["0/6", "0/7"]));
    assert_eq!(p["devices_removed"], serde_json::json!([]));
    assert!(p["zero_copy_bytes"].as_u64().unwrap() > 0);
    assert!(p["p2p_bytes"].as_u64().unwrap() > 0);
    // micro-moe: 16 experts, 3 MoE layers; EP 6 → 8 gives the new devices 2 experts per layer.
    assert_eq!(p["experts_moved"], 3 * 2 * 2);
    assert_eq!(p["predicted_peak_bytes"].as_object().unwrap().len(), 8);
    assert!(p["predicted_seconds"].as_f64().unwrap() > 0.0);
    assert!(!p["steps"].as_array().unwrap().is_empty());
    assert!(p["bandwidth_source"].as_str().unwrap().contains("measured"));
}

#[test]
fn refused_targets_name_the_rule() {
    let cache = tempfile::tempdir().unwrap();
    let base = [
        "plan",
        "--embedded",
        "--model",
        "micro-moe",
        "--from",
        "dp2tp2ep4",
    ];
    let run = |to: &str| {
        let mut args = base.to_vec();
        args.extend(["--to", to]);
        agent(&args, cache.path())
    };
    let out = run("dp2tp4ep8");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TP must stay 2"));
    let out = run("dp5tp2ep10");
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("free"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("dp2tp2ep5");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EP = DP × TP"));
    let out = agent(
        &["plan", "--model", "micro-moe", "--to", "dp3tp2ep6"],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--embedded"));
}
