#!/usr/bin/env bash
# Runs on the device machine: installs the carried wheels (bench/device_wheels.sh) beside the
# image's torch, then bench/bench_gpu.py; the report lands in $OUT (the device tool brings it
# back) or bench/results/. Usage, from the device tool: bash bench/device_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 XAC_HOME=/tmp/xac-home TORCHINDUCTOR_CACHE_DIR=/tmp/inductor
nvidia-smi -L || true
out="${OUT:-bench/results}"
python3 bench/bench_gpu.py --smoke --device cuda --out "$out/gpu_smoke.json" > "$out/gpu_smoke.log" 2>&1 \
  || { echo "smoke run on the GPU failed:"; tail -40 "$out/gpu_smoke.log"; exit 1; }
python3 bench/bench_gpu.py --out "$out/gpu.json" "$@" 2>&1 | tee "$out/gpu.log"
