//! `--backend ascend`, `cuda` and `auto` through the real `emoe-agent` binary. No NPU or GPU is
//! needed: the vendor libraries are the host-memory stand-ins in `core/tests/shim/`, loaded at
//! run time exactly as the real `libascendcl.so` / `libcuda.so.1` would be.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// Build a stand-in once per test process: tests run in parallel, and one must not load the
/// library while another rewrites it.
fn build_shim(source: &str, name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    built
        .entry(name.to_string())
        .or_insert_with(|| compile_shim(source, name))
        .clone()
}

fn compile_shim(source: &str, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("core/tests/shim")
        .join(source);
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-shims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let so = dir.join(name);
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut cmd = cc::Build::new()
        .target(&triple)
        .host(&triple)
        .opt_level(1)
        .debug(false)
        .cargo_metadata(false)
        .get_compiler()
        .to_command();
    let out = cmd
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    so
}

fn inspect(backend: &str, extra: &[&str], env: &[(&str, &str)], cache: &Path) -> Output {
    let mut cmd = Command::new(common::bin("emoe-agent"));
    cmd.args([
        "inspect",
        "--backend",
        backend,
        "--model",
        "micro-moe",
        "--json",
    ])
    .args(extra)
    .env("EMOE_CACHE_DIR", cache)
    // Never pick up a real driver on a developer's machine.
    .env("EMOE_ASCENDCL_LIB", "/nonexistent/libascendcl.so")
    .env("EMOE_DCMI_LIB", "/nonexistent/libdcmi.so")
    .env("EMOE_CUDA_LIB", "/nonexistent/libcuda.so.1")
    .env("EMOE_NVML_LIB", "/nonexistent/libnvidia-ml.so.1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn missing_vendor_libraries_exit_4_naming_library_paths_and_variable() {
    let cache = tempfile::tempdir().unwrap();
    for (backend, lib, var) in [
        ("ascend", "libascendcl.so", "EMOE_ASCENDCL_LIB"),
        ("cuda", "libcuda.so.1", "EMOE_CUDA_LIB"),
    ] {
        let out = inspect(backend, &[], &[], cache.path());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{backend}: {err}");
        for needle in [lib, var, "/nonexistent/"] {
            assert!(err.contains(needle), "{backend}: `{needle}` not in: {err}");
        }
    }
}

#[test]
fn auto_falls_back_to_host_and_says_why() {
    let cache = tempfile::tempdir().unwrap();
    let out = inspect("auto", &["--config", "dp1tp1ep1"], &[], cache.path());
    let r = ok_json(&out);
    assert_eq!(r["backend"], "host");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--backend auto picked host"), "{err}");
    assert!(err.contains("ascend:") && err.contains("cuda:"), "{err}");
}

#[test]
fn ascend_backend_loads_a_model_through_libascendcl() {
    let cache = tempfile::tempdir().unwrap();
    let shim = build_shim("ascend_shim.c", "libascendcl.so");
    let shim = shim.to_str().unwrap();
    let cmd_env = [
        ("EMOE_ASCENDCL_LIB", shim),
        ("EMOE_DCMI_LIB", shim),
        ("EMOE_SHIM_DEVICES", "4"),
        ("EMOE_SHIM_HBM_MB", "1024"),
    ];
    let r = ok_json(&inspect(
        "ascend",
        &["--config", "dp2tp2ep4"],
        &cmd_env,
        cache.path(),
    ));
    assert_eq!(r["backend"], "ascend");
    let devices = r["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 4);
    for d in devices {
        assert_eq!(d["granularity_bytes"], 2 << 20, "the driver's granularity");
        let experts = d["regions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "expert")
            .count();
        assert_eq!(experts, 12);
    }
    assert!(
        r["load"]["p2p_bytes"].as_u64().unwrap() > 0,
        "DP replicas by device-to-device copy"
    );

    // `auto` now finds the library and picks ascend.
    let out = inspect("auto", &["--config", "dp1tp1ep1"], &cmd_env, cache.path());
    assert_eq!(ok_json(&out)["backend"], "ascend");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--backend auto picked ascend"));
}

#[test]
fn cuda_backend_carves_logical_devices_from_gpus() {
    let cache = tempfile::tempdir().unwrap();
    let shim = build_shim("cuda_shim.c", "libcuda.so.1");
    let shim = shim.to_str().unwrap();
    let env = [("EMOE_CUDA_LIB", shim), ("EMOE_NVML_LIB", shim)];
    let out = inspect(
        "cuda",
        &["--logical-per-gpu", "2", "--config", "dp2tp1ep2"],
        &env,
        cache.path(),
    );
    let r = ok_json(&out);
    assert_eq!(r["backend"], "cuda");
    let devices = r["devices"].as_array().unwrap();
    // The stand-in has two GPUs; two logical devices each.
    assert_eq!(devices.len(), 4);
    assert!(
        devices[0]["name"]
            .as_str()
            .unwrap()
            .contains("logical 1/2 of GPU 0"),
        "{}",
        devices[0]["name"]
    );
    assert!(
        devices[..2]
            .iter()
            .all(|d| !d["regions"].as_array().unwrap().is_empty())
    );
}

#[test]
fn cuda_bench_scale_measures_the_drivers_copy_path_and_counts_its_devices() {
    let cache = tempfile::tempdir().unwrap();
    let shim = build_shim("cuda_shim.c", "libcuda.so.1");
    let out = Command::new(common::bin("emoe-agent"))
        .args([
            "bench",
            "scale",
            "--backend",
            "cuda",
            "--logical-per-gpu",
            "2",
            "--model",
            "micro-moe",
            "--from",
            "dp1tp2ep2",
            "--to",
            "dp2tp2ep4",
            "--runs",
            "1",
            "--json",
        ])
        .env("EMOE_CACHE_DIR", cache.path())
        .env("EMOE_CUDA_LIB", &shim)
        .env("EMOE_NVML_LIB", &shim)
        .output()
        .unwrap();
    let r = ok_json(&out);
    assert_eq!(r["backend"], "cuda");
    // The floor is bytes ÷ the driver's copy rate, not host memcpy's.
    let path = r["copy_path"].as_str().unwrap();
    assert!(path.starts_with("cuda device-to-device copy"), "{path}");
    let copy = r["copy_bytes_per_s"].as_f64().unwrap();
    assert!(copy > 0.0);
    let e = &r["strategies"]["elastic"];
    let moved = e["bytes_moved"].as_u64().unwrap() as f64;
    let floor = e["floor_s"].as_f64().unwrap();
    assert!(floor > 0.0 && floor <= moved / copy + 1e-12, "{e}");
    // Two stand-in GPUs, two logical devices each.
    for s in ["elastic", "cold-restart"] {
        assert_eq!(r["strategies"][s]["devices_used"], 4, "{s}");
    }
}
