#!/usr/bin/env bash
# One prepared GPU benchmark pass (used with the lent device machine; ~6-8 min on an H100/H200).
# Runs the benchmarks that have GPU sizes and collects their JSON under $OUT (or ./runs/gpu).
# Each step has its own time limit so one failure does not cost the others.
set -u
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT" runs/bench
LOG="$OUT/gpu_bench_log.txt"
PY=${PY:-python}
step() {  # step <seconds> <name> <command...>
  local secs=$1 name=$2; shift 2
  echo "=== $name: $*" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout "$secs" "$@" >>"$LOG" 2>&1
  echo "=== $name: rc=$? in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max \
  --format=csv >>"$LOG" 2>&1
$PY -c "import jax; print('jax', jax.__version__, jax.devices())" >>"$LOG" 2>&1
step ${T_OFFLOAD:-400} offload  $PY -m experiments.bench_offload --gpu_large --repeats=5
step ${T_GEN:-120} generate $PY -m experiments.bench_generate --random_weights --no_hf --quick --name=generate_gpu
step ${T_GEN16:-60} generate_bf16 $PY -m experiments.bench_generate --random_weights --no_hf --quick --dtype=bfloat16 --name=generate_gpu_bf16
step ${T_SCAN:-90} scan     $PY -m experiments.bench_scan --quick --no_torch
step ${T_MF:-90} meanfield $PY -m experiments.bench_meanfield --quick
tar czf "$OUT/bench_json.tgz" runs/bench/*.json runs/bench/*.png 2>/dev/null
tail -c 20000 "$LOG"
