#!/usr/bin/env bash
# The CPU benchmarks on two physical cores of a larger host: how the 2-core VMs' figures
# were checked on another CPU kind (the GPU host's Intel Xeon) in one prepared call.
#
# Pins every process to two CPUs on distinct physical cores (no SMT siblings), hides
# any GPU, and runs, each stage under its own timeout, what the README's CPU speed
# table reports: the reference and minimind-26m train steps against PyTorch eager and
# torch.compile, the quickstart's shape (Muon) for its seconds per step, one
# attention layer per implementation, and every matmul of the reference step by shape
# against PyTorch's (matmul_shapes.py). Every stage's JSON/log lands in $OUT.
#
#   bash benchmarks/two_core_session.sh            # OUT defaults to /tmp/two_core
# On the GPU host (no package index there) carry .whl as benchmarks/gpu_session.sh says.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/two_core}
mkdir -p "$OUT"
LOG="$OUT/two_core.log"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
# shellcheck source=benchmarks/device_wheels.sh
source benchmarks/device_wheels.sh
PY=${PYTHON:-python3}

# First CPU of each of the first two physical cores.
CPUS=$(lscpu -p=CPU,CORE | grep -v '^#' | sort -t, -k2,2n -u | head -2 | cut -d, -f1 | paste -sd,)
export OMP_NUM_THREADS=2

stage() {  # stage NAME SECONDS COMMAND...: run it pinned, log it, never stop the session
    local name=$1 seconds=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S), CPUs $CPUS, limit ${seconds}s): $*" | tee -a "$LOG"
    timeout "$seconds" taskset -c "$CPUS" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $name: exit ${PIPESTATUS[0]}" | tee -a "$LOG"
}

lscpu | grep -E 'Model name|^CPU\(s\)|Thread|Core|Socket|Flags' | cut -c1-160 | tee -a "$LOG"
stage reference 150 "$PY" benchmarks/train_throughput.py --torch-compile \
    --json "$OUT/reference.json"
stage minimind 200 "$PY" benchmarks/train_throughput.py --preset minimind-26m --seq 256 \
    --batch 16 --steps 6 --warmup 2 --torch-compile --json "$OUT/minimind.json"
stage quickstart_shape 60 "$PY" benchmarks/train_throughput.py --d-model 128 --n-layers 2 \
    --n-heads 2 --n-kv-heads 2 --vocab 4096 --optimizer muon --steps 20 --no-torch \
    --json "$OUT/quickstart_shape.json"
stage attention 60 "$PY" benchmarks/attention_step.py
stage matmul_shapes 90 "$PY" benchmarks/matmul_shapes.py --reps 9 --json "$OUT/matmul_shapes.json"
