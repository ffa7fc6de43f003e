//! Hostile scenario files for `emoe-agent run`: every count, size and time is bounded and
//! refused with its key and value before anything is allocated or run (exit 2), and a step
//! whose target can never fit on the node is refused before the run (exit 3).

mod common;
use common::*;

fn scenario(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("s.toml");
    std::fs::write(&p, body).unwrap();
    p
}

/// A small valid scenario; `{...}` marks are replaced by each case.
fn body(top: &str, cluster: &str, kv: &str, traffic: &str, steps: &str) -> String {
    format!(
        r#"
name = "hostile"
{top}

[cluster]
backend = "host"
{cluster}

[model]
name = "micro-moe"
kv_tokens = {kv}

[serve]
config = "dp2tp2ep4"
max_batch = 4

[traffic]
profile = "poisson"
output = {{ fixed = 4 }}
seed = 4
{traffic}

{steps}
"#
    )
}

const CLUSTER: &str = "devices = 8\nhbm = \"256MiB\"";
const TRAFFIC: &str = "rate = 20.0\nprompt = { fixed = 4 }\nduration_s = 1.0";
const STEP: &str = "[[scale]]\nat = \"500ms\"\nto = \"dp3tp2ep6\"";

fn run(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let p = scenario(dir.path(), text);
    let out = agent(&["run", p.to_str().unwrap(), "--json"], cache.path());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn oversized_counts_sizes_and_times_are_refused_naming_the_key_and_value() {
    for (text, want) in [
        (
            body(
                "",
                CLUSTER,
                "1024",
                "rate = 20.0\nprompt = { fixed = 4000000000 }\nduration_s = 1.0",
                STEP,
            ),
            "`prompt`: lengths must be at most 1048576 tokens, got 4000000000",
        ),
        (
            body(
                "",
                CLUSTER,
                "1024",
                "rate = 1e-9\nprompt = { fixed = 4 }\nduration_s = 1e10",
                STEP,
            ),
            "`duration_s`: must be at most 604800 seconds (a week), got 10000000000",
        ),
        (
            body("window = \"0s\"", CLUSTER, "1024", TRAFFIC, STEP),
            "window must be positive and at most a week, got 0ns",
        ),
        (
            body(
                "",
                CLUSTER,
                "1024",
                TRAFFIC,
                "[[scale]]\nat = \"1h\"\nto = \"dp3tp2ep6\"",
            ),
            "a scaling step's `at` must lie within the traffic (its duration_s, else a week), got step 1 at 3600s, the traffic ends at 1 s",
        ),
        (
            body("", CLUSTER, "1000000000000000000", TRAFFIC, STEP),
            "model.kv_tokens must be between 1 and 16777216 tokens per device, got 1000000000000000000",
        ),
        (
            body(
                "[autoscale]\nmin_dp = 1\nmax_dp = 4000000000\nup_queue = 4.0\ndown_queue = 1.0",
                CLUSTER,
                "1024",
                TRAFFIC,
                "",
            ),
            "autoscale.max_dp × TP must fit the cluster's devices",
        ),
        (
            body(
                "[autoscale]\nmin_dp = 1\nmax_dp = 2\nup_queue = 4.0\ndown_queue = 1.0\ninterval = \"0s\"",
                CLUSTER,
                "1024",
                TRAFFIC,
                "",
            ),
            "autoscale.interval must be positive and at most a week, got 0ns",
        ),
        (
            body(
                "[slo]\nttft = \"3000000000000000000000s\"\ntpot = \"1s\"",
                CLUSTER,
                "1024",
                TRAFFIC,
                STEP,
            ),
            "3000000000000000000000s",
        ),
    ] {
        let (code, err) = run(&text);
        assert_eq!(code, Some(2), "{want}: {err}");
        assert!(err.contains(want), "want {want:?}, got {err}");
    }
}

#[test]
fn a_step_whose_target_can_never_fit_is_refused_before_the_run() {
    for (cluster, to, want) in [
        (
            "devices = 4\nhbm = \"256MiB\"",
            "dp3tp2ep6",
            "scenario [[scale]] step 1 (at 500ms) to dp3tp2ep6 can never run on this node: not enough devices",
        ),
        (
            // dp2tp2ep4 holds 36 granules of 64 KiB a device, dp1tp2ep2 48.
            "devices = 8\nhbm = \"2560KiB\"",
            "dp1tp2ep2",
            "scenario [[scale]] step 1 (at 500ms) to dp1tp2ep2 can never run on this node: not enough memory on device",
        ),
    ] {
        let steps = format!("[[scale]]\nat = \"500ms\"\nto = \"{to}\"");
        let (code, err) = run(&body("", cluster, "1024", TRAFFIC, &steps));
        assert_eq!(code, Some(3), "{err}");
        assert!(err.contains(want), "want {want:?}, got {err}");
        assert!(!err.contains("\"type\""), "nothing ran: {err}");
    }
}

#[test]
fn only_a_regular_file_of_bounded_size_is_read() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat(2 << 20)).unwrap();
    for (path, want) in [
        (big.to_str().unwrap(), "more than the 1048576-byte limit"),
        ("/dev/zero", "not a regular file"),
        (dir.path().to_str().unwrap(), "not a regular file"),
    ] {
        let out = agent(&["run", path], cache.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {err}");
        assert!(err.contains(want) && err.contains(path), "{path}: {err}");
    }
}
