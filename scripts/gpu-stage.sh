#!/usr/bin/env bash
# Build what scripts/gpu-check.sh runs, for a GPU machine without cargo: release binaries,
# stripped, in .gpubin/ (git-ignored, a few MiB). Carry that folder to the GPU machine and run
# scripts/gpu-check.sh there: it picks the binaries up from .gpubin/ when it has no cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpubin
mkdir -p "$out"
cargo build --release -p emoe-core --example gpu_check
cargo build --release -p emoe-agent
test_bin=$(cargo test --release -p emoe-core --test cuda_gpu --no-run --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*cuda_gpu[^"]*\)".*/\1/p' | tail -n1)
[ -n "$test_bin" ] || { echo "gpu-stage: building the cuda tests failed" >&2; exit 1; }
strip -o "$out/gpu_check" target/release/examples/gpu_check
strip -o "$out/emoe-agent" target/release/emoe-agent
strip -o "$out/cuda_gpu" "$test_bin"
ls -l "$out" >&2
