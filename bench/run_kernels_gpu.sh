#!/usr/bin/env bash
# GPU session for issue 4: kernel tests at GPU shapes, then every kernel benchmark.
# Usage (repo root, CUDA machine): bash bench/run_kernels_gpu.sh [LOGDIR]
# Each step has a time cap; a failing step does not stop the others. Logs and JSON go to LOGDIR
# (and, after each step, into the archive TAR_TO when set). Skip a step with CAP=0 (e.g. TESTS_CAP=0).
set -u
LOG=${1:-bench/results/gpu_logs}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
python3 -c "import matmulfree.triton_kernels" 2>/dev/null || \
  python3 -m pip install -q --no-deps --no-build-isolation -e . >"$LOG/install.log" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$LOG/gpu.txt" 2>&1
step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  if [ "$secs" = 0 ]; then return; fi
  echo "== $name (cap ${secs}s)"
  local t0=$SECONDS
  timeout "$secs" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  echo "== $name rc=$rc in $((SECONDS - t0))s"; tail -n 6 "$LOG/$name.log"
  if [ -n "${TAR_TO:-}" ]; then tar czf "$TAR_TO" -C "$LOG" .; fi  # keep a copy of the logs so far
}
MATMULFREE_AUTOTUNE=${TEST_AUTOTUNE:-0} step tests "${TESTS_CAP:-200}" python3 -m pytest ${PYTEST_ARGS:--x -q} tests/test_triton_bitlinear.py \
  tests/test_triton_scan.py tests/test_triton_packed.py tests/test_triton_decode.py tests/test_triton_fused_decode.py tests/test_triton_model.py
step mlgru "${MLGRU_CAP:-60}" python3 bench/bench_mlgru.py --out "$LOG/mlgru.json"
step bitlinear "${BITLINEAR_CAP:-150}" python3 bench/bench_bitlinear.py --out "$LOG/bitlinear.json"
step decode "${DECODE_CAP:-200}" python3 bench/bench_decode.py --out "$LOG/decode.json"
step memory "${MEMORY_CAP:-120}" python3 bench/bench_inference_memory.py --out "$LOG/inference_memory.json"
step gpu_decode "${GPU_DECODE_CAP:-400}" python3 bench/gpu_decode.py --out "$LOG/gpu_decode.json"
