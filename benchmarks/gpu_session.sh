#!/usr/bin/env bash
# One prepared GPU session (H100/H200) for the GPU speed work: one device call of at most
# 9 minutes (run it with timeout_s=600), every stage under its own timeout, what it has
# measured packed into $OUT after each stage (so a cut-short call still brings it back).
#
# Here, before the session (network for the package registry only):
#   bash benchmarks/gpu_session.sh --fetch-wheels   # grain and the 3 packages the GPU
#                                                   # image lacks, as cp312 wheels in .whl/
# On the device (carry .whl):
#   bash benchmarks/gpu_session.sh
#
# With --check (the short check that a CPU-side change left the GPU path as it was: 170 s
# on an H200): stage 1, the CPU tests of blocked attention and Muon on the GPU image's
# jax, 125m with AdamW and with Muon, and stage 2 without the trace.
#
# Stages, in order of what matters most if time runs out:
#   1. the machine and libraries (nvidia-smi, jax devices), tests/test_gpu.py
#   2. the 1b preset at seq 2048, bf16, cuDNN attention, remat=dots, batch 8: tokens/s,
#      MFU (6N + 12 L T d per token; causal-halved also printed), peak memory, and a
#      jax.profiler trace of 3 steps (kernels, fusions, host gaps)
#   3. 1b with remat=full at batch 16, and remat=none at batch 8 (the remat trade-off)
#   4. benchmarks/run.py --profile gpu train (125m, 1b with the largest batch that fits)
# Results: $OUT/gpu_session.log (everything printed) and $OUT/gpu_session.tar.gz
# (the JSON results, run.py's records, the trace).
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 tensorboardX==2.6.5)
if [[ "${1:-}" == "--fetch-wheels" ]]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .whl "${WHEELS[@]}"
fi

OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT/results"
LOG="$OUT/gpu_session.log"
export PYTHONUNBUFFERED=1
# shellcheck source=benchmarks/device_wheels.sh
source benchmarks/device_wheels.sh

stage() {  # stage NAME SECONDS COMMAND...: run it, log it, never stop the session
    local name=$1 seconds=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), limit ${seconds}s): $*" | tee -a "$LOG"
    timeout "$seconds" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
    # One file back (the device returns at most 8, two folders deep; a trace is deeper).
    tar -czf "$OUT/gpu_session.tar.gz" -C "$OUT" results
}

ONE_B="--preset 1b --seq 2048 --dtype bfloat16 --attention cudnn --no-torch --steps 10"
M125="--preset 125m --seq 1024 --batch 32 --dtype bfloat16 --attention cudnn --no-torch --steps 10"
stage env 30 bash -c "nvidia-smi; python3 -c 'import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())'"
stage test_gpu 90 env JAX_PLATFORMS=cuda,cpu python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
if [[ "${1:-}" == "--check" ]]; then
    # The CPU tests of this round's new code paths, on the GPU image's newer jax.
    stage new_jax_cpu_tests 100 env JAX_PLATFORMS=cpu python3 -m pytest -q -p no:cacheprovider \
        -n 8 tests/test_blocked_attention.py tests/test_muon.py
    for opt in adamw muon; do
        # shellcheck disable=SC2086
        stage "125m_$opt" 80 python3 benchmarks/train_throughput.py $M125 --optimizer "$opt" \
            --json "$OUT/results/125m_$opt.json"
    done
    # shellcheck disable=SC2086
    stage 1b_dots_b8 130 python3 benchmarks/train_throughput.py $ONE_B --remat dots --batch 8 \
        --json "$OUT/results/1b_dots_b8.json"
    exit 0
fi
# shellcheck disable=SC2086
stage 1b_dots_b8 150 python3 benchmarks/train_throughput.py $ONE_B --remat dots --batch 8 \
    --json "$OUT/results/1b_dots_b8.json" --trace "$OUT/results/trace_1b_dots_b8"
# shellcheck disable=SC2086
stage 1b_full_b16 90 python3 benchmarks/train_throughput.py $ONE_B --remat full --batch 16 \
    --json "$OUT/results/1b_full_b16.json"
# shellcheck disable=SC2086
stage 1b_none_b8 90 python3 benchmarks/train_throughput.py $ONE_B --remat none --batch 8 \
    --json "$OUT/results/1b_none_b8.json"
stage run_py_gpu_train 100 python3 benchmarks/run.py --profile gpu train \
    --results "$OUT/results/results.jsonl" --markdown "$OUT/results/results.md"

echo "packed $(du -h "$OUT/gpu_session.tar.gz" | cut -f1) into $OUT/gpu_session.tar.gz" | tee -a "$LOG"
