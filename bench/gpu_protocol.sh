#!/usr/bin/env bash
# The paper's protocol on one GPU (bench/gpu_protocol.yaml): GPT-ST pre-training and Graph WaveNet
# in four variants at paper sizes and epochs on the embedded METR-LA week, then the accuracy table
# of bench/accuracy.py. Aimed at under 8 minutes on a current data-centre GPU (not measured yet).
#
#   bench/gpu_protocol.sh            # device auto: CUDA when present
#   bench/gpu_protocol.sh --shrink   # the tiny preset, for a CPU-only machine (tests run it so)
#   bench/gpu_protocol.sh [--shrink] --stop-after 1   # further arguments go to bench/accuracy.py
#
# RESULTS and WORK (environment) choose where results and checkpoints go; PYTHON the interpreter.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
args=(--protocol bench/gpu_protocol.yaml --device auto --no-mlflow
      --results "${RESULTS:-$ROOT/bench/results/gpu}" --work "${WORK:-$ROOT/bench/work/gpu}")
if [[ "${1:-}" == "--shrink" ]]; then
  args+=(--preset tiny)
  shift
fi
args+=("$@")
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; fi
start=$(date +%s)
"$PYTHON" bench/accuracy.py "${args[@]}"
echo "gpu_protocol: $(( $(date +%s) - start )) s wall"
