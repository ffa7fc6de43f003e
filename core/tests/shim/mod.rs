//! Builds the host-memory driver stand-ins in this folder into shared libraries, once per test
//! process, with the C compiler the `cc` crate finds: `ascend_shim.c` (AscendCL + DCMI) and
//! `cuda_shim.c` (CUDA driver + NVML).

#![allow(dead_code)] // each test binary uses part of it

pub mod ascend;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `libascendcl_shim.so`, built on first use.
pub fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build("ascend_shim.c", "libascendcl_shim.so"))
}

/// `libcuda_shim.so`, built on first use.
pub fn cuda() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build("cuda_shim.c", "libcuda_shim.so"))
}

/// Compile `source` into `name`. Panics with the compiler's output if the build fails (a
/// test-environment error, not a product one).
fn build(source: &str, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/shim")
        .join(source);
    // One directory per test process: test binaries run in parallel and must not race on the
    // output file.
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("driver-shims-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the shim build directory");
    let so = dir.join(name);
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let mut cmd: Command = cc::Build::new()
        .target(&triple)
        .host(&triple)
        .opt_level(1)
        .debug(false)
        .cargo_metadata(false)
        .get_compiler()
        .to_command();
    cmd.args(["-shared", "-fPIC", "-Wall", "-o"])
        .arg(&so)
        .arg(&src);
    let out = cmd.output().expect("run the C compiler");
    assert!(
        out.status.success(),
        "building {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    so
}
