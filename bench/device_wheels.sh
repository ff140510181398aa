#!/usr/bin/env bash
# Downloads (here, where PyPI is reachable) the wheels bench/bench_gpu.py needs on the device
# machine, whose image has torch, torchvision, numpy, pandas, scikit-learn and numba but not
# captum, shap or pydantic, and no network. Python 3.12 there. Versions: requirements.txt's pins
# and what they resolved to in .venv. The folder .whl/ is ignored by Git (.git/info/exclude)
# and travels with the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
for spec in captum==0.9.0 shap==0.51.0 slicer==0.0.8 dill==0.4.1 pydantic==2.14.4 pydantic_core==2.50.5 \
  annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec" 2>&1 | grep -v "is ignored" || true
done
ls -1 .whl
