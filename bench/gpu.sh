#!/usr/bin/env bash
# Pre-training and finetuning speed on one GPU, one table, in under 5 minutes (bench/gpu_bench.py:
# paper sizes, B=64, N=207 and 2,352, peak GPU memory, one epoch of the week end to end). Without
# CUDA it runs the same rows on the CPU at tiny sizes (the test suite runs `bench/gpu.sh --tiny`).
#
#   bench/gpu.sh [--tiny] [--baselines gwn tgcn] [--steps 5] [--amp-dtype bfloat16] [--out FILE]
#
# A GPU machine with its own Python (torch, numpy, pandas, pyarrow, pyyaml; no package registry,
# no DVC/MLflow/Prefect) needs one folder beside this script, prepared here by
#   make gpu-deps
# bench/gpu-deps/wheels (git-ignored): the wheels of the imports such a Python lacks (pydantic and
# its own needs, for the GPU machine's Python version: GPU_PYTHON=3.12 by default). The week's
# HDF5 is read with h5py. Copy or carry that folder with the checkout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEPS=$ROOT/bench/gpu-deps
if [ -d "$DEPS/wheels" ] && ! "$PYTHON" -c "import pydantic" 2>/dev/null; then
  site=$(mktemp -d)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$DEPS"/wheels/*.whl
  export PYTHONPATH="$site"
fi
# The checkout's library and the benchmark helpers, installed or not.
export PYTHONPATH="$ROOT/src:$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}"
if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true; fi
exec "$PYTHON" bench/gpu_bench.py "$@"
