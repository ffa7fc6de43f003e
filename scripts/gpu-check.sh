#!/usr/bin/env bash
# GPU check for the `cuda` backend, on a machine with an NVIDIA GPU.
#
#   1. builds the CUDA HMM tests and the `gpu_check` example (release);
#   2. runs the HMM tests through the cuda backend (a test that skips fails the check here);
#   3. measures map / unmap latency per 2 MiB granule (medians of many), device-to-device copy
#      bandwidth, and telemetry (`core/examples/gpu_check.rs`);
#   4. measures elastic vs cold-restart scale latency for a small model on several logical
#      devices carved from the one GPU, with `emoe-agent bench`, when that command exists;
#   5. the same elastic step without pre-initialization (no pre-allocated pool), for the
#      pool's share of the latency.
#
# Prints one JSON object on stdout; progress goes to stderr. Exit 0 ok, 1 failed.
#
# Without cargo on the GPU machine, run scripts/gpu-stage.sh where cargo is and carry .gpubin/:
# the binaries there are used when cargo is missing. Or set EMOE_GPU_CHECK_BIN,
# EMOE_CUDA_TEST_BIN and EMOE_AGENT_BIN to binaries built elsewhere.
# EMOE_SCALE_BENCH_ARGS overrides the `emoe-agent` arguments of step 4.
set -uo pipefail

cd "$(dirname "$0")/.."
log() { printf 'gpu-check: %s\n' "$*" >&2; }
json_str() { # JSON string literal of $1
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/ }
    printf '"%s"' "$s"
}

LOGICAL=${EMOE_LOGICAL_PER_GPU:-4}
have_cargo=0
command -v cargo >/dev/null 2>&1 && have_cargo=1

gpu_name=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -n1)
if [ -z "$gpu_name" ]; then
    log "nvidia-smi reports no GPU; the checks below will skip"
else
    # On a GPU machine a skipped gpu_* test is a failure, not a pass.
    export EMOE_REQUIRE_GPU=${EMOE_REQUIRE_GPU:-1}
fi

# ---- 1. build ----
gpu_check_bin=${EMOE_GPU_CHECK_BIN:-}
test_bin=${EMOE_CUDA_TEST_BIN:-}
agent_bin=${EMOE_AGENT_BIN:-}
if [ "$have_cargo" = 0 ]; then
    # Staged by scripts/gpu-stage.sh on a machine with cargo.
    [ -z "$gpu_check_bin" ] && [ -x .gpubin/gpu_check ] && gpu_check_bin=.gpubin/gpu_check
    [ -z "$test_bin" ] && [ -x .gpubin/cuda_gpu ] && test_bin=.gpubin/cuda_gpu
    [ -z "$agent_bin" ] && [ -x .gpubin/emoe-agent ] && agent_bin=.gpubin/emoe-agent
fi
if [ "$have_cargo" = 1 ]; then
    if [ -z "$gpu_check_bin" ]; then
        log "building the gpu_check example"
        cargo build --release -p emoe-core --example gpu_check >&2 || { log "build failed"; exit 1; }
        gpu_check_bin=target/release/examples/gpu_check
    fi
    if [ -z "$test_bin" ]; then
        log "building the cuda HMM tests"
        test_bin=$(cargo test --release -p emoe-core --test cuda_gpu --no-run --message-format=json 2>/dev/null |
            sed -n 's/.*"executable":"\([^"]*cuda_gpu[^"]*\)".*/\1/p' | tail -n1)
        [ -n "$test_bin" ] || { log "building the cuda tests failed"; exit 1; }
    fi
fi
for b in "$gpu_check_bin" "$test_bin"; do
    [ -n "$b" ] && [ -x "$b" ] || { log "no cargo and no prebuilt binary (run scripts/gpu-stage.sh where cargo is and carry .gpubin/, or set EMOE_GPU_CHECK_BIN, EMOE_CUDA_TEST_BIN)"; exit 1; }
done

# ---- 2. HMM tests through the cuda backend ----
log "running the cuda HMM tests (the gpu_* ones; the shim_* ones run everywhere in CI)"
test_out=$("$test_bin" gpu_ --nocapture --test-threads=1 2>&1)
test_rc=$?
printf '%s\n' "$test_out" >&2
if [ $test_rc -ne 0 ]; then
    tests_json="{\"status\": \"failed\", \"exit\": $test_rc}"
elif grep -q 'skipped:' <<<"$test_out"; then
    reason=$(grep -m1 -o 'skipped:.*' <<<"$test_out")
    tests_json="{\"status\": \"skipped\", \"reason\": $(json_str "$reason")}"
else
    tests_json="{\"status\": \"passed\", \"summary\": $(json_str "$(grep -m1 '^test result' <<<"$test_out")")}"
fi

# ---- 3. VMM latency, copy bandwidth, telemetry ----
log "measuring map/unmap latency and copy bandwidth"
bench_json=$("$gpu_check_bin" --logical "$LOGICAL")
bench_rc=$?
[ -n "$bench_json" ] || bench_json='{"error": "gpu_check printed nothing"}'

# ---- 4. elastic vs cold-restart scale latency ----
if [ -z "$agent_bin" ] && [ "$have_cargo" = 1 ]; then
    log "building emoe-agent"
    if cargo build --release -p emoe-agent >&2; then agent_bin=target/release/emoe-agent; fi
fi
scale_args=${EMOE_SCALE_BENCH_ARGS:-bench scale --backend cuda --logical-per-gpu $LOGICAL --model tiny-moe --from dp1tp2ep2 --to dp2tp2ep4 --strategies elastic,cold-restart --runs 3 --json}
if [ -z "$agent_bin" ] || [ ! -x "$agent_bin" ]; then
    scale_json="{\"skipped\": \"emoe-agent is not built here, so the scale-latency comparison did not run\"}"
elif ! "$agent_bin" bench --help >/dev/null 2>&1; then
    scale_json="{\"skipped\": \"emoe-agent has no 'bench' command yet, so the scale-latency comparison did not run\"}"
else
    log "measuring elastic vs cold-restart scaling: $agent_bin $scale_args"
    # shellcheck disable=SC2086 # word splitting of the argument list is intended
    scale_err=$(mktemp)
    scale_out=$("$agent_bin" $scale_args 2>"$scale_err")
    scale_rc=$?
    if [ $scale_rc -eq 0 ] && [ -n "$scale_out" ]; then
        scale_json="{\"logical_devices_note\": $(json_str "$LOGICAL logical devices carved from one GPU: copies between them are on-device copies, not peer-to-peer links"), \"result\": $scale_out}"
    elif [ $scale_rc -eq 4 ]; then
        # Exit 4: the cuda backend is not available here (no driver library).
        scale_json="{\"skipped\": $(json_str "$(grep -v '^emoe-agent: bench' "$scale_err" | tail -n 3)")}"
    else
        scale_json="{\"error\": $(json_str "emoe-agent $scale_args exited $scale_rc: $(tail -n 3 "$scale_err")")}"
    fi
    rm -f "$scale_err"
fi

# ---- 5. the pre-allocated pool's share: elastic without pre-initialization, same step ----
# (allocations, and on vendor backends their copy mappings, made on the scaling path instead)
nopool_json='{"skipped": "step 4 did not run"}'
if grep -q '"result"' <<<"$scale_json"; then
    log "measuring elastic without pre-initialization"
    # shellcheck disable=SC2086 # word splitting of the argument list is intended
    nopool_args=$(sed 's/--strategies [^ ]*//' <<<"$scale_args")
    nopool_out=$("$agent_bin" $nopool_args --strategies elastic --no-pre-init 2>/dev/null)
    if [ -n "$nopool_out" ]; then nopool_json=$nopool_out; else nopool_json='{"error": "no output"}'; fi
fi

printf '{"gpu": %s, "tests": %s, "vmm_and_copies": %s, "scale": %s, "scale_no_pre_init": %s}\n' \
    "$(json_str "${gpu_name:-none}")" "$tests_json" "$bench_json" "$scale_json" "$nopool_json"

# On a machine with a GPU, anything short of passing tests and a measurement is a failure.
if [ $test_rc -ne 0 ] || [ $bench_rc -ne 0 ]; then exit 1; fi
if [ -n "$gpu_name" ] && { grep -q '"skipped"' <<<"$bench_json" || grep -q 'skipped:' <<<"$test_out"; }; then
    log "a GPU is present but the cuda backend skipped"
    exit 1
fi
exit 0
