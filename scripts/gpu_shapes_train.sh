#!/usr/bin/env bash
# Retrain ShapesWorld's shipped models on one CUDA GPU, the jobs named in $JOBS side by side: the base flow
# model (flow), a wider flow model for comparison (flow_wide), a second stage of the base model continued from
# $INIT (flow_stage2) and the robust reward model (reward).
# Each job first runs 600 calibration steps with the others running; it then gets BUDGET seconds' worth of
# steps at the measured rate, so the cosine schedule ends where the run ends. Writes $OUT/JOB.{safetensors,json}
# and $OUT/log.txt; the JSON sidecars hold the exact commands (with steps=N) and earlier stages.
#   OUT=results BUDGET=430 bash scripts/gpu_shapes_train.sh
#   OUT=results JOBS="flow_stage2 reward" INIT=runs/stage1/flow BUDGET=420 bash scripts/gpu_shapes_train.sh
set -euo pipefail
OUT=${OUT:?set OUT to an output folder}
BUDGET=${BUDGET:-430}
JOBS=${JOBS:-flow flow_wide reward}
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
mkdir -p "$OUT"
declare -A ARGS=(
  [flow]="pretrain batch_size=512 lr=7e-4 seed=0 device=${DEVICE:-cuda} workers=5"
  [flow_wide]="pretrain batch_size=512 lr=5e-4 model.dim=192 model.depth=6 seed=0 device=${DEVICE:-cuda} workers=3"
  [flow_stage2]="pretrain --init ${INIT:-} batch_size=1024 lr=5e-4 seed=1 device=${DEVICE:-cuda} workers=6"
  [reward]="reward batch_size=256 seed=0 device=${DEVICE:-cuda} workers=5"
)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/log.txt" || true
for job in $JOBS; do
  python3 -m leapalign.cli shapes ${ARGS[$job]} steps=600 --out "/tmp/cal_$job" > "/tmp/cal_$job.log" 2>&1 &
done
wait
for job in $JOBS; do
  # seconds per step between the step-200 and step-600 progress lines: "step    200  ...  (12s)"
  per_step=$(awk '/^step/ {gsub(/[()s]/, "", $NF); t[$2] = $NF} END {print (t[600] - t[200]) / 400}' "/tmp/cal_$job.log")
  steps=$(python3 -c "print(max(1000, int($BUDGET / max($per_step, 1e-3)) // 100 * 100))")
  echo "$job: $per_step s/step in calibration -> steps=$steps" | tee -a "$OUT/log.txt"
  python3 -m leapalign.cli shapes ${ARGS[$job]} steps="$steps" --out "$OUT/$job" > "/tmp/$job.log" 2>&1 &
done
wait
for job in $JOBS; do echo "== $job"; cat "/tmp/$job.log"; done >> "$OUT/log.txt"
tail -n 4 /tmp/*.log
