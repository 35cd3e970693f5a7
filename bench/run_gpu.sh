#!/usr/bin/env bash
# The CPU benchmarks, unchanged, on a CUDA GPU: advjax (jax[cuda]) and torch /
# torchattacks on the same device. Writes bench/results/gpu-attacks.json and
# bench/results/gpu-train_step.json. Needs a CUDA build of jax and torch in .venv, e.g.
#   .venv/bin/pip install -U "jax[cuda12]" && .venv/bin/pip install torch==2.13.0
#   .venv/bin/pip install --no-deps torchattacks
# Usage: bash bench/run_gpu.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -c 'import jax, torch; assert jax.devices()[0].platform == "gpu", jax.devices(); assert torch.cuda.is_available(), "torch has no CUDA"'
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
"$PY" bench/attacks.py --device cuda "$@"
"$PY" bench/train_step.py --device cuda "$@"
