#!/usr/bin/env bash
# Runs on the device machine: installs the carried wheels (bench/device_wheels.sh) beside the
# image's torch, then bench/bench_gpu.py; the report lands in $OUT (the device tool brings it
# back) or bench/results/. Usage, from the device tool: bash bench/device_run.sh
# The bench writes its report after every stage and skips IG variants not begun by --deadline
# (device time is metered: a late failure or a time-out still returns every figure taken).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 XAC_HOME=/tmp/xac-home TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
nvidia-smi -L || true
out="${OUT:-bench/results}"
# Fail in seconds, not minutes, when a carried package does not import.
python3 -c "import torch, torchvision, captum.attr, shap, pydantic; assert torch.cuda.is_available()" || exit 1
python3 bench/bench_gpu.py --out "$out/gpu.json" --deadline "${XAC_BENCH_DEADLINE:-330}" "$@" 2>&1 | tee "$out/gpu.log"
