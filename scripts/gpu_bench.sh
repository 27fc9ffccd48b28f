#!/usr/bin/env bash
# FLUX.1-dev-sized benchmark on one CUDA GPU (random bf16 weights, LoRA r64, checkpointing, 512x512, batch 1).
# Run from the repository root on a machine with torch; the diffusers wheel (and importlib_metadata) in .whl/
# when diffusers is not installed. Writes $OUT/gpu/{bench.json,bench.png,bench.md} and $OUT/gpu_log.txt.
#   OUT=results bash scripts/gpu_bench.sh            # full run (~6 min on an H100)
#   OUT=results MODEL=flux-tiny DEVICE=cpu bash scripts/gpu_bench.sh   # dry run of the same grid, tiny model
set -euo pipefail
OUT=${OUT:?set OUT to an output folder}
MODEL=${MODEL:-flux-random}
DEVICE=${DEVICE:-cuda}
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null | tee "$OUT/gpu_log.txt" || true
python3 -m leapalign.cli bench --model "$MODEL" --device "$DEVICE" --no-isolate --warmup 1 --iters 2 \
  --steps 25 --cases leapalign leapalign_coupled refl draft_k1 draft_k2 draft_k4 draft_k8 draft_lv drtune full \
  --leap-steps 0 23 --leap-T 25 \
  --at 50=leapalign,leapalign_coupled --at 10=leapalign,leapalign_coupled,full \
  --floor-steps 10 25 --out "$OUT/gpu" 2>&1 | tee -a "$OUT/gpu_log.txt"
