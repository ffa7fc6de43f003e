//! `emoe-agent bench`: the scale comparison's JSON fields, the planner benchmark, refusals.

mod common;
use common::*;

#[test]
fn bench_scale_reports_each_strategy_side_by_side() {
    let cache = tempfile::tempdir().unwrap();
    let out = agent(
        &[
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
            "--strategies",
            "elastic,cold-restart,extravagant",
            "--runs",
            "2",
            "--json",
        ],
        cache.path(),
    );
    let r = json(&out);
    assert_eq!(r["from"], "dp3tp2ep6");
    assert_eq!(r["to"], "dp4tp2ep8");
    assert!(r["memcpy_bytes_per_s"].as_f64().unwrap() > 0.0);
    for s in ["elastic", "cold-restart", "extravagant"] {
        let x = &r["strategies"][s];
        assert!(x["latency_s"].as_f64().unwrap() > 0.0, "{s}: {x}");
        assert_eq!(x["latency_runs_s"].as_array().unwrap().len(), 2);
        assert!(x["bytes_moved"].as_u64().unwrap() > 0, "{s}");
        assert!(x["peak_bytes"].as_u64().unwrap() > 0, "{s}");
        assert!(x["vs_elastic"].as_f64().is_some(), "{s}");
    }
    let e = &r["strategies"]["elastic"];
    assert!(e["floor_s"].as_f64().unwrap() > 0.0);
    assert!(e["phases"]["copy_s"].as_f64().is_some());
    // Elastic moves only what changes; a cold restart reloads the whole model.
    let moved = |s: &str| r["strategies"][s]["bytes_moved"].as_u64().unwrap();
    assert!(moved("elastic") < moved("cold-restart"));
    // Extravagant needs 6 old + 8 new devices: the node grew for it.
    assert_eq!(r["strategies"]["extravagant"]["devices_involved"], 14);
}

#[test]
fn bench_plan_times_the_planner() {
    let cache = tempfile::tempdir().unwrap();
    let out = agent(
        &[
            "bench",
            "plan",
            "--backend",
            "modeled",
            "--model",
            "deepseek-v2-lite",
            "--from",
            "dp2tp2ep4",
            "--to",
            "dp3tp2ep6",
            "--runs",
            "3",
            "--json",
        ],
        cache.path(),
    );
    let r = json(&out);
    assert_eq!(r["backend"], "modeled");
    assert!(r["plan_ms_median"].as_f64().unwrap() > 0.0);
    assert!(r["experts_moved"].as_u64().unwrap() > 0);
    assert!(r["execute_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn bench_refusals_name_the_rule_and_value() {
    let cache = tempfile::tempdir().unwrap();
    let base = [
        "bench",
        "scale",
        "--model",
        "micro-moe",
        "--from",
        "dp2tp2ep4",
    ];
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        agent(&a, cache.path())
    };
    let out = run(&["--to", "dp3tp2ep6", "--strategies", "elastic,warp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`warp`"));
    let out = run(&["--to", "dp2tp4ep8"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TP must stay 2"));
    let out = run(&["--to", "dp3tp2ep6", "--runs", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bench_scale_with_traffic_adds_serving_figures() {
    let cache = tempfile::tempdir().unwrap();
    let plot = cache.path().join("bench.svg");
    let out = agent(
        &[
            "bench",
            "scale",
            "--model",
            "micro-moe",
            "--hbm",
            "256MiB",
            "--from",
            "dp2tp2ep4",
            "--to",
            "dp3tp2ep6",
            "--strategies",
            "elastic,cold-restart",
            "--runs",
            "1",
            "--traffic",
            "20",
            "--duration",
            "1500ms",
            "--at",
            "500ms",
            "--window",
            "500ms",
            "--max-batch",
            "4",
            "--plot",
            plot.to_str().unwrap(),
            "--json",
        ],
        cache.path(),
    );
    let r = json(&out);
    for s in ["elastic", "cold-restart"] {
        let x = &r["strategies"][s];
        for f in [
            "latency_s",
            "throughput_before",
            "throughput_during",
            "throughput_after",
            "downtime_s",
        ] {
            assert!(x[f].as_f64().is_some(), "{s}: {f} in {x}");
        }
    }
    assert_eq!(r["strategies"]["cold-restart"]["requests_moved"], 0);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("elastic") && svg.contains("cold-restart"));
    // A traffic argument that is neither a rate nor a file is refused by name.
    let out = agent(
        &[
            "bench",
            "scale",
            "--model",
            "micro-moe",
            "--to",
            "dp3tp2ep6",
            "--traffic",
            "lots",
        ],
        cache.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--traffic lots"));
}

#[test]
fn bench_ablation_reports_the_cumulative_rows() {
    let cache = tempfile::tempdir().unwrap();
    let out = agent(
        &[
            "bench",
            "ablation",
            "--model",
            "micro-moe",
            "--hbm",
            "256MiB",
            "--from",
            "dp2tp2ep4",
            "--to",
            "dp3tp2ep6",
            "--runs",
            "1",
            "--traffic",
            "10",
            "--duration",
            "1s",
            "--at",
            "300ms",
            "--window",
            "300ms",
            "--max-batch",
            "4",
            "--json",
        ],
        cache.path(),
    );
    let r = json(&out);
    let rows = r["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|x| x["row"].as_str().unwrap()).collect();
    assert_eq!(names, ["full", "-zero-copy", "-p2p", "-pre-init"]);
    assert_eq!(
        rows[0]["disk_bytes"], 0,
        "ElasticMoE reads nothing from disk"
    );
    assert!(
        rows[2]["disk_bytes"].as_u64().unwrap() > 0,
        "without P2P, bytes come from disk"
    );
    let moved = |i: usize| rows[i]["bytes_moved"].as_u64().unwrap();
    assert!(
        moved(1) > moved(0),
        "without zero-copy, kept weights are copied too"
    );
}

#[test]
fn bare_bench_runs_the_papers_experiments_side_by_side() {
    let cache = tempfile::tempdir().unwrap();
    let out = agent(
        &[
            "bench",
            "--model",
            "micro-moe",
            "--small",
            "dp2tp2ep4",
            "--large",
            "dp3tp2ep6",
            "--runs",
            "1",
            "--traffic",
            "10",
            "--duration",
            "800ms",
            "--at",
            "300ms",
            "--window",
            "300ms",
            "--json",
        ],
        cache.path(),
    );
    let r = json(&out);
    for part in ["scale_up", "scale_down", "while_serving"] {
        assert!(
            r[part]["strategies"]["elastic"]["latency_s"]
                .as_f64()
                .is_some(),
            "{part}"
        );
        assert!(
            r[part]["strategies"]["cold-restart"]["latency_s"]
                .as_f64()
                .is_some(),
            "{part}"
        );
    }
    assert!(
        r["scale_down"]["skipped"]["horizontal"]
            .as_str()
            .unwrap()
            .contains("scale-down")
    );
    assert_eq!(r["ablation"]["rows"].as_array().unwrap().len(), 4);
    let t = &r["targets"];
    for f in [
        "cold_restart_over_elastic_up",
        "elastic_latency_over_floor",
        "elastic_downtime_s",
    ] {
        assert!(t[f].as_f64().is_some(), "{f}: {t}");
    }
}
