//! `bench soak`: a bounded run that scales repeatedly and reports the agent's memory.

mod daemon_support;

use daemon_support::{run, stderr};

#[test]
fn a_short_soak_scales_serves_and_reports_memory() {
    let out = run(
        &[
            "bench",
            "soak",
            "--duration",
            "6s",
            "--scale-every",
            "1s",
            "--tick",
            "50ms",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k}: {r}"));
    assert!(n("operations_run") >= 2, "{r}");
    assert_eq!(n("operations_failed"), 0, "{r}");
    assert!(n("requests_served") > 0, "{r}");
    assert!(n("api_calls") > 10, "{r}");
    assert!(n("rss_start_bytes") > 0 && n("rss_end_bytes") > 0, "{r}");
    assert!(n("anon_start_bytes") > 0, "{r}");
    assert_eq!(
        n("operations_kept"),
        n("operations_run"),
        "few enough to keep all: {r}"
    );

    let out = run(&["bench", "soak", "--duration", "25h"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--duration 1day 1h: must be more than 0 and at most 24h"),
        "{}",
        stderr(&out)
    );
}
