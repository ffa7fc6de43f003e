//! `emoe-agent run SCENARIO.toml`: NDJSON events with `ts` and `type`, a final report with the
//! documented fields, scenario errors that name the file and the rule.

mod common;
use common::*;

fn scenario(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("s.toml");
    std::fs::write(&p, body).unwrap();
    p
}

const SMALL: &str = r#"
name = "small"
window = "1s"

[cluster]
backend = "host"
devices = 8
hbm = "256MiB"

[model]
name = "micro-moe"
kv_tokens = 1024

[serve]
config = "dp2tp2ep4"
max_batch = 4

[traffic]
profile = "poisson"
rate = 20.0
prompt = { uniform = { min = 2, max = 6 } }
output = { fixed = 6 }
seed = 4
duration_s = 1.5

[slo]
ttft = "5s"
tpot = "1s"

[[scale]]
at = "500ms"
to = "dp3tp2ep6"

[[scale]]
at = "1s"
to = "dp2tp2ep4"
"#;

#[test]
fn run_streams_events_and_ends_with_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let p = scenario(dir.path(), SMALL);
    let out = agent(&["run", p.to_str().unwrap(), "--json"], cache.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
        .collect();
    for l in &lines {
        assert!(l["ts"].as_f64().is_some(), "{l}");
        assert!(l["type"].as_str().is_some(), "{l}");
    }
    let report = lines.last().unwrap();
    assert_eq!(report["type"], "report");
    assert_eq!(report["finished"], report["requests"]);
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for s in steps {
        for f in ["latency_s", "downtime_s", "peak_bytes"] {
            assert!(s[f].as_f64().is_some(), "{f} in {s}");
        }
        for f in ["before", "during", "after"] {
            assert!(s["throughput"][f].as_f64().is_some(), "{f} in {s}");
        }
    }
    assert!(report["slo_attainment"].as_f64().is_some());
    let phases: Vec<&str> = lines
        .iter()
        .filter(|l| l["type"] == "scale")
        .filter_map(|l| l["event"]["phase"].as_str())
        .collect();
    assert_eq!(
        phases,
        [
            "preparing",
            "switching",
            "releasing",
            "done",
            "preparing",
            "switching",
            "releasing",
            "done"
        ]
    );
    assert!(lines.iter().any(|l| l["type"] == "request"));
}

#[test]
fn bad_scenarios_name_the_file_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let cases = [
        (SMALL.replace("dp3tp2ep6", "dp2tp4ep8"), "TP is fixed"),
        (SMALL.replace("at = \"1s\"", "at = \"soon\""), "soon"),
        (SMALL.replace("rate = 20.0", "rate = -1.0"), "rate"),
        (SMALL.replace("max_batch = 4", "max_batch = 0"), "max_batch"),
        (SMALL.replace("[slo]", "[slo]\nbogus = 1"), "bogus"),
        (SMALL.replace("at = \"500ms\"", "at = \"2s\""), "time order"),
    ];
    for (body, want) in cases {
        let p = scenario(dir.path(), &body);
        let out = agent(&["run", p.to_str().unwrap()], cache.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{want}: {err}");
        assert!(
            err.contains(want) && err.contains("s.toml"),
            "{want}: {err}"
        );
    }
    let out = agent(&["run", "/nonexistent/x.toml"], cache.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.toml"));
}

#[test]
fn autoscale_scales_up_on_load() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let body = SMALL
        .replace("[[scale]]\nat = \"500ms\"\nto = \"dp3tp2ep6\"\n", "")
        .replace("[[scale]]\nat = \"1s\"\nto = \"dp2tp2ep4\"\n", "")
        .replace("rate = 20.0", "rate = 80.0")
        + "\n[autoscale]\nmin_dp = 2\nmax_dp = 3\nup_queue = 1\ndown_queue = 0.5\ninterval = \"100ms\"\ncooldown = \"10s\"\n";
    let p = scenario(dir.path(), &body);
    let out = agent(&["run", p.to_str().unwrap(), "--json"], cache.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = String::from_utf8(out.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    let steps = report["steps"].as_array().unwrap();
    assert!(!steps.is_empty(), "the load triggered a step: {report}");
    assert_eq!(steps[0]["to"], "dp3tp2ep6");
    assert_eq!(report["finished"], report["requests"]);

    // Bad policies are refused by name.
    let bad =
        SMALL.to_string() + "\n[autoscale]\nmin_dp = 3\nmax_dp = 4\nup_queue = 1\ndown_queue = 0\n";
    let p = scenario(dir.path(), &bad);
    let out = agent(&["run", p.to_str().unwrap()], cache.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("min_dp"));
}
