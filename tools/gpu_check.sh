#!/usr/bin/env bash
# The one prepared GPU check, for a machine with an NVIDIA GPU, the driver, CUDA 13 tools and PyTorch but no
# Rust toolchain. Build and stage here first (from the project root):
#     export LD_LIBRARY_PATH=<dir of libnvrtc.so.13> INFNET_REQUIRE_KERNELS=1   # so the kernels are embedded
#     ../shared/gpu/stage.sh --test cuda_kernels      # → .gpu/tests/cuda_kernels-*, .gpu/bin/infnet
# then on the GPU machine, from the project root (the device tool carries .gpu):
#     OUT=/some/dir tools/gpu_check.sh
# It runs the CUDA tests (every kernel's GPU-vs-CPU comparison runs inside the engine tests; emulated
# tests run too), the same under compute-sanitizer memcheck and racecheck, our benchmark, and the PyTorch
# peers on the same GPU, and keeps every log under $OUT. Exit status 0 only if every test passed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
status=0
summary="$OUT/summary.txt"
step() { echo "== $*" | tee -a "$summary"; }

step "device"
nvidia-smi -L 2>&1 | tee -a "$summary"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
git rev-parse HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$summary"
date -u | tee -a "$summary"

BIN=$(ls .gpu/tests/cuda_kernels-* 2>/dev/null | head -n1)
INFNET=.gpu/bin/infnet
if [ -z "$BIN" ] || [ ! -x "$INFNET" ]; then
    echo "no staged binaries: run ../shared/gpu/stage.sh --test cuda_kernels here first" | tee -a "$summary"
    exit 1
fi

step "CUDA tests"
if timeout 300 "$BIN" --include-ignored --nocapture --test-threads=1 >"$OUT/tests.log" 2>&1; then
    echo "tests: ok" >>"$summary"
else
    echo "tests: FAILED" >>"$summary"; status=1
fi
grep -E "skipped|GPU time|relative L2|test result|FAILED|panicked" "$OUT/tests.log" >>"$summary"

SAN=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n1)
if [ -z "$SAN" ]; then
    echo "compute-sanitizer not found: memcheck/racecheck skipped" | tee -a "$summary"
else
    for tool in memcheck racecheck; do
        step "compute-sanitizer --tool $tool"
        # The tiny-model engine test launches every kernel (fused attention included) at odd batch/shape.
        if timeout 240 "$SAN" --tool "$tool" --error-exitcode 99 "$BIN" cuda_engine_or_clear_error --nocapture --test-threads=1 \
            >"$OUT/$tool.log" 2>&1; then echo "$tool: ok" >>"$summary"; else
            echo "$tool: FAILED (see $tool.log)" >>"$summary"; status=1; fi
        tail -n 3 "$OUT/$tool.log" >>"$summary"
    done
fi

step "benchmark: infnet vs PyTorch on this GPU"
if timeout 240 python3 tools/bench_gpu_peers.py --infnet "$INFNET" --batch 1,8,64 --size 352 \
    >"$OUT/bench.txt" 2>"$OUT/bench.err"; then cat "$OUT/bench.txt" | tee -a "$summary"; else
    echo "benchmark failed (see bench.err)" | tee -a "$summary"; tail -n 5 "$OUT/bench.err" >>"$summary"; fi
cat "$summary"
exit $status
