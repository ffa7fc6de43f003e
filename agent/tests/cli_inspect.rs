//! `emoe-agent inspect` as a script sees it: JSON on stdout, errors on stderr, exit codes.

mod common;
use common::*;

use serde_json::Value;

fn u(v: &Value) -> u64 {
    v.as_u64().expect("a number")
}

#[test]
fn host_inspect_reports_every_device_and_region() {
    let cache = tempfile::tempdir().unwrap();
    let args = [
        "inspect",
        "--backend",
        "host",
        "--devices",
        "8",
        "--model",
        "micro-moe",
        "--config",
        "dp2tp2ep4",
        "--json",
    ];
    let r = json(&agent(&args, cache.path()));
    assert_eq!(r["backend"], "host");
    assert_eq!(r["modeled"], false);
    assert_eq!(r["config"], "dp2tp2ep4");
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 8);
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d["id"], format!("0/{i}"));
        let regions = d["regions"].as_array().unwrap();
        let sum: u64 = regions.iter().map(|r| u(&r["size"])).sum();
        assert_eq!(u(&d["used_bytes"]), sum, "used is the sum of regions");
        assert!(u(&d["peak_bytes"]) >= u(&d["used_bytes"]));
        if i < 4 {
            let count = |k: &str| regions.iter().filter(|r| r["kind"] == k).count();
            // micro-moe: 3 MoE layers × 16 experts / EP 4; globals + 4 layer packs; one KV.
            assert_eq!(count("expert"), 12, "device {i}");
            assert_eq!(count("non_expert"), 5, "device {i}");
            assert_eq!(count("kv"), 1, "device {i}");
            assert!(
                regions
                    .iter()
                    .all(|r| r["views"] == serde_json::json!(["hmm"]))
            );
            let mut offsets: Vec<(u64, u64)> = regions
                .iter()
                .map(|r| (u(&r["offset"]), u(&r["size"])))
                .collect();
            offsets.sort();
            assert!(
                offsets.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
                "regions overlap"
            );
        } else {
            assert!(regions.is_empty(), "device {i} is not in the config");
            assert_eq!(u(&d["used_bytes"]), 0);
        }
    }
    // What is served: family, attention, routing, dtypes stored and computed from.
    let m = &r["model_summary"];
    assert_eq!(m["family"], "deepseek_v2");
    assert_eq!(m["attention"], "mla");
    assert_eq!(m["routing"], "softmax top-4 of 16");
    assert_eq!((u(&m["dense_layers"]), u(&m["moe_layers"])), (1, 3));
    assert_eq!(r["served_dtype"], "bf16");
    assert_eq!(r["checkpoint_dtypes"]["narrowed_exactly"], 0);
    assert!(u(&r["checkpoint_dtypes"]["tensors"]["BF16"]) > 0);
    // The second DP replica's non-expert shards come device to device, not from disk.
    assert!(u(&r["load"]["disk_bytes"]) > 0);
    assert!(u(&r["load"]["p2p_bytes"]) > 0);

    // A checkpoint saved by transformers keeps its routers in f32 (bf16 values): served as bf16.
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/reference/deepseek_v2_plain"
    );
    let f = json(&agent(
        &[
            "inspect",
            "--model",
            fixture,
            "--config",
            "dp1tp1ep1",
            "--json",
        ],
        cache.path(),
    ));
    assert_eq!(f["checkpoint_dtypes"]["tensors"]["F32"], 2, "{f}");
    assert_eq!(f["checkpoint_dtypes"]["narrowed_exactly"], 2);
    assert_eq!(f["model_summary"]["routing"], "softmax top-2 of 8");

    // Run again: the cached checkpoint is reused and the answer is identical.
    let again = json(&agent(&args, cache.path()));
    assert_eq!(again, r);
}

#[test]
fn modeled_deepseek_v3_allocates_no_bytes() {
    let cache = tempfile::tempdir().unwrap();
    let r = json(&agent(
        &[
            "inspect",
            "--backend",
            "modeled",
            "--model",
            "deepseek-v3",
            "--devices",
            "32",
            "--config",
            "dp4tp8ep32",
            "--json",
        ],
        cache.path(),
    ));
    assert_eq!(r["modeled"], true);
    assert_eq!(r["checkpoint"], Value::Null);
    assert_eq!(u(&r["load"]["disk_bytes"]), 0);
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 32);
    for d in devices {
        let used = u(&d["used_bytes"]);
        // 8 experts × 58 layers of ~42 MiB plus the TP shard: tens of GiB, within 64 GiB.
        assert!(used > 20 << 30 && used < u(&d["capacity_bytes"]), "{used}");
        let experts = d["regions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "expert")
            .count();
        assert_eq!(experts, 8 * 58);
    }
    assert_eq!(
        std::fs::read_dir(cache.path())
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "nothing generated for a modeled run"
    );
}

fn fails(args: &[&str], code: i32, needles: &[&str]) {
    let cache = tempfile::tempdir().unwrap();
    let out = agent(args, cache.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{n}` not in: {err}");
    }
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    fails(
        &["inspect", "--config", "dp2tp2ep5"],
        2,
        &["--config", "EP = DP × TP"],
    );
    fails(
        &["inspect", "--config", "tp2"],
        2,
        &["--config", "dpNtpNepN"],
    );
    fails(&["inspect", "--devices", "0"], 2, &["--devices"]);
    fails(&["inspect", "--hbm", "lots"], 2, &["--hbm", "`lots`"]);
    fails(
        &["inspect", "--model", "gpt5"],
        2,
        &["--model", "`gpt5`", "tiny-moe"],
    );
    fails(
        &["inspect", "--backend", "quantum"],
        2,
        &["--backend", "quantum"],
    );
    fails(
        &["inspect", "--granularity", "3000"],
        2,
        &["granularity", "3000"],
    );
    fails(&["inspect", "--frobnicate"], 2, &["--frobnicate"]);
    fails(
        &["inspect", "--model", "/nonexistent/dir"],
        2,
        &["/nonexistent/dir"],
    );
}

#[test]
fn refusals_exit_3_naming_the_rule() {
    fails(
        &[
            "inspect",
            "--model",
            "micro-moe",
            "--devices",
            "2",
            "--config",
            "dp2tp2ep4",
        ],
        3,
        &["not enough devices", "dp2tp2ep4", "has 2"],
    );
    fails(
        &[
            "inspect",
            "--model",
            "micro-moe",
            "--hbm",
            "1MiB",
            "--config",
            "dp1tp1ep1",
        ],
        3,
        &["not enough memory on device 0/0", "need", "free"],
    );
    fails(
        &[
            "inspect",
            "--backend",
            "host",
            "--model",
            "deepseek-v3",
            "--config",
            "dp1tp1ep1",
        ],
        3,
        &["deepseek-v3", "--backend modeled"],
    );
}
