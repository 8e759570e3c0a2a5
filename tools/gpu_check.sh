#!/usr/bin/env bash
# One prepared GPU check for a machine with an NVIDIA GPU: builds with the kernels required, runs the
# CUDA tests (GPU engine vs CPU, emulated kernels), then the GPU tests under compute-sanitizer
# memcheck and racecheck. Logs go to $OUT (default ./gpu_check_out); exit status 0 only if all passed.
#
# Needs: cargo, libnvrtc.so.13 (LD_LIBRARY_PATH, or NVRTC_LIB_DIR), the NVIDIA driver; compute-sanitizer
# is optional (skipped with a note when absent). Usage: OUT=/tmp/out tools/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
status=0
step() { echo "== $*" | tee -a "$OUT/summary.txt"; }
if [ -n "${NVRTC_LIB_DIR:-}" ]; then export LD_LIBRARY_PATH="$NVRTC_LIB_DIR:${LD_LIBRARY_PATH:-}"; fi

step "device"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed" | tee -a "$OUT/summary.txt"

step "build (INFNET_REQUIRE_KERNELS=1)"
if ! INFNET_REQUIRE_KERNELS=1 cargo test --release --test cuda_kernels --no-run >"$OUT/build.log" 2>&1; then
    echo "build failed, see build.log" | tee -a "$OUT/summary.txt"
    exit 1
fi
BIN=$(ls -t target/release/deps/cuda_kernels-* 2>/dev/null | grep -v '\.d$' | head -n1)
echo "test binary: $BIN" >>"$OUT/summary.txt"

step "tests"
if "$BIN" --nocapture --test-threads=1 >"$OUT/tests.log" 2>&1; then echo "tests: ok" >>"$OUT/summary.txt"; else
    echo "tests: FAILED" >>"$OUT/summary.txt"; status=1; fi
grep -E "skipped|best GPU time|relative L2|test result" "$OUT/tests.log" >>"$OUT/summary.txt"

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)
if [ -z "$SAN" ]; then
    echo "compute-sanitizer not found: memcheck/racecheck skipped" | tee -a "$OUT/summary.txt"
else
    for tool in memcheck racecheck; do
        step "compute-sanitizer --tool $tool"
        # The tiny-model engine test covers every kernel (fused attention included) at odd batch/shape.
        if "$SAN" --tool "$tool" --error-exitcode 99 "$BIN" cuda_engine_or_clear_error --nocapture --test-threads=1 \
            >"$OUT/$tool.log" 2>&1; then echo "$tool: ok" >>"$OUT/summary.txt"; else
            echo "$tool: FAILED (see $tool.log)" >>"$OUT/summary.txt"; status=1; fi
        tail -n 3 "$OUT/$tool.log" >>"$OUT/summary.txt"
    done
fi
cat "$OUT/summary.txt"
exit $status
