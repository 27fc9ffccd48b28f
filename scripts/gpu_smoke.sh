#!/usr/bin/env bash
# GPU smoke test: every path only a GPU runs, in one short run (under 5 minutes on one H200), one line per check:
#   PASS|FAIL|SKIP NAME SECONDS        (a failed check also prints the end of its log; the run goes on)
# and a summary line; exits 1 if any check failed. Checks:
#   train_<method>_<fp32|bf16>  every method, 3 iterations on ShapesWorld, float32 and bf16 autocast
#   eval, generate              `leapalign eval` / `generate` of the trained LeapAlign bf16 run on the device
#   demo_quick                  `leapalign demo --quick device=...` (workers share the GPU)
#   flux_tiny, sd3_tiny         tiny random pipelines: rollout equals the pipeline's, LoRA + bf16 LeapAlign step
#   fsdp_world1                 accelerate's FSDP code path with one process (configs/accelerate/fsdp_shapes.yaml)
#   eval_fsdp                   `leapalign eval` of that run's sharded checkpoint (step 2)
#   bench_flux                  `leapalign bench --model flux-random` for LeapAlign (FLUX.1-dev-sized, random bf16)
# Run from anywhere; on the lent GPU machine (no diffusers there: wheels in .whl/, as scripts/gpu_bench.sh):
#   bash scripts/gpu_smoke.sh
#   SMOKE_DEVICE=cpu bash scripts/gpu_smoke.sh     # the same commands on the CPU (bench: flux-tiny; FSDP skipped:
#                                                  # accelerate selects FSDP on GPUs only)
# Settings (environment): SMOKE_DEVICE (cuda), SMOKE_OUT (a fresh /tmp folder), SMOKE_JOBS (checks at once:
# 8 on cuda, 2 on cpu), SMOKE_ONLY (a bash regex of the check names to run; the others print SKIP),
# SMOKE_METHODS (all eight), SMOKE_PRECISIONS ("fp32 bf16").
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${SMOKE_DEVICE:-cuda}
OUT=${SMOKE_OUT:-$(mktemp -d /tmp/gpu_smoke.XXXXXX)}
JOBS=${SMOKE_JOBS:-$([[ $DEVICE == cpu ]] && echo 2 || echo 8)}
ONLY=${SMOKE_ONLY:-}
METHODS=${SMOKE_METHODS:-leapalign refl draft draft_lv drtune full flow_grpo mix_grpo}
PRECISIONS=${SMOKE_PRECISIONS:-fp32 bf16}
PY=python3
[[ -x .venv/bin/python ]] && PY=.venv/bin/python
if ! $PY -c "import diffusers" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
mkdir -p "$OUT"
LA=($PY -m leapalign.cli)
NAMES=()
START=$EPOCHREALTIME
echo "gpu_smoke: device $DEVICE, logs in $OUT, $($PY -c 'import torch; print("torch", torch.__version__,
  torch.cuda.get_device_name() if torch.cuda.is_available() else "(no CUDA)")' 2>&1 | tail -1)"

check() {  # check NAME CMD...: CMD in the background (at most $JOBS at once), its output in $OUT/NAME.log
  local name=$1
  shift
  NAMES+=("$name")
  if [[ -n $ONLY && ! $name =~ $ONLY ]]; then
    echo "SKIP $name 0.0" >"$OUT/$name.result"
    return
  fi
  while (($(jobs -rp | wc -l) >= JOBS)); do wait -n; done
  (
    t0=$EPOCHREALTIME
    if "$@" >"$OUT/$name.log" 2>&1; then status=PASS; else status=FAIL; fi
    echo "$status $name $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN {printf "%.1f", b - a}')" >"$OUT/$name.result"
  ) &
}

report() {  # wait for the running checks, then one line each (a failure with the end of its log)
  wait
  local name line
  for name in "${NAMES[@]}"; do
    line=$(cat "$OUT/$name.result" 2>/dev/null || echo "FAIL $name 0.0")
    echo "$line"
    [[ $line == FAIL* ]] && tail -n 5 "$OUT/$name.log" 2>/dev/null | sed 's/^/    | /'
  done
  cat "$OUT"/*.result >"$OUT/summary.txt" 2>/dev/null
  NAMES=()
}

# 1. every method, 3 iterations, float32 and bf16 autocast, on the device (accelerate is told which one)
for method in $METHODS; do
  for precision in $PRECISIONS; do
    mp=$([[ $precision == bf16 ]] && echo bf16 || echo no)
    extra=()
    [[ $method == flow_grpo ]] && extra=(method.args.kl_beta=0.04)  # the frozen reference on the device too
    check "train_${method}_$precision" env ACCELERATE_TORCH_DEVICE="$DEVICE" "${LA[@]}" train \
      --config "configs/shapes_$method.yaml" --no-progress iterations=3 batch_size=2 mixed_precision="$mp" \
      save_every=0 logger=none resume=none eval.prompts=none output_dir="$OUT/train_${method}_$precision" "${extra[@]}"
  done
done
report

# 2. the other GPU paths, side by side
RUN="$OUT/train_leapalign_bf16"
check eval "${LA[@]}" eval --weights "$RUN" --device "$DEVICE" --num-prompts 16 --steps 4 --batch-size 16 \
  --out "$OUT/eval_out"
check generate "${LA[@]}" generate --weights "$RUN" --device "$DEVICE" --prompt "a photo of a red circle" \
  --prompt "a photo of two squares" --steps 4 --out "$OUT/generate_out"
check demo_quick "${LA[@]}" demo --quick "device=$DEVICE" --out "$OUT/demo_out"
check flux_tiny $PY scripts/gpu_smoke_pipelines.py flux --device "$DEVICE"
check sd3_tiny $PY scripts/gpu_smoke_pipelines.py sd3 --device "$DEVICE"
if [[ $DEVICE == cpu ]]; then  # accelerate never selects FSDP on a CPU (tests/test_trainer_fsdp.py forces it)
  NAMES+=(fsdp_world1)
  echo "SKIP fsdp_world1 0.0" >"$OUT/fsdp_world1.result"
else
  check fsdp_world1 $PY -m accelerate.commands.launch --num_processes 1 --num_machines 1 \
    --config_file configs/accelerate/fsdp_shapes.yaml -m leapalign.cli train --config configs/shapes_leapalign.yaml \
    --no-progress iterations=3 batch_size=2 save_every=2 logger=none resume=none eval.prompts=none \
    output_dir="$OUT/fsdp_world1"
fi
BENCH_MODEL=$([[ $DEVICE == cpu ]] && echo flux-tiny || echo flux-random)
check bench_flux "${LA[@]}" bench --model "$BENCH_MODEL" --device "$DEVICE" --no-isolate --cases leapalign \
  --steps 4 --warmup 0 --iters 1 --out "$OUT/bench_out"
report

# 3. `leapalign eval` reads the FSDP run's sharded checkpoint (step 2)
if [[ $DEVICE == cpu ]]; then
  NAMES+=(eval_fsdp)
  echo "SKIP eval_fsdp 0.0" >"$OUT/eval_fsdp.result"
else
  check eval_fsdp "${LA[@]}" eval --weights "$OUT/fsdp_world1/checkpoints/step_0000002" --device "$DEVICE" \
    --num-prompts 8 --steps 4 --batch-size 8
fi
report
ls configs/accelerate/fsdp_shapes.yaml >/dev/null || echo "note: configs/accelerate/fsdp_shapes.yaml is missing"

passed=$(grep -c '^PASS' "$OUT/summary.txt")
failed=$(grep -c '^FAIL' "$OUT/summary.txt")
skipped=$(grep -c '^SKIP' "$OUT/summary.txt")
echo "gpu_smoke: $passed passed, $failed failed, $skipped skipped in $(awk -v a="$START" -v b="$EPOCHREALTIME" \
  'BEGIN {printf "%.0f", b - a}') s ($OUT)"
((failed == 0))
