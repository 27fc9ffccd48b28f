#!/usr/bin/env bash
# Rollout paths on one CUDA GPU (issue 22): the FLUX.1-dev-sized random-weight transformer (bf16, LoRA r64,
# checkpointing) at 512x512 batch 1 and at the paper's 720x720 batch 2, T = 25, for the plain rollout and every
# fast path (merged LoRA, torch.compile by block with CUDA graphs, both), one process per resolution. Writes
# $OUT/paths{512,720}/{paths.json,bench.md} and $OUT/paths_log.txt. Compiling takes minutes per compiled path.
#   OUT=results bash scripts/gpu_rollout_paths.sh
#   OUT=results MODEL=flux-tiny DEVICE=cpu bash scripts/gpu_rollout_paths.sh   # dry run, tiny model
set -euo pipefail
OUT=${OUT:?set OUT to an output folder}
MODEL=${MODEL:-flux-random}
DEVICE=${DEVICE:-cuda}
MODE=${MODE:-reduce-overhead}
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$OUT/paths_log.txt" || true
for run in "512 1" "720 2"; do
  set -- $run
  python3 -m leapalign.cli bench --model "$MODEL" --device "$DEVICE" --size "$1" --batch "$2" --steps 25 \
    --warmup 1 --iters 2 --rollout-paths plain merged compiled merged_compiled --compile-mode "$MODE" \
    --out "$OUT/paths$1" 2>&1 | tee -a "$OUT/paths_log.txt"
done
