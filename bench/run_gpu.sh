#!/usr/bin/env bash
# The CPU benchmarks, unchanged, on a CUDA GPU: advjax (jax[cuda]) and torch /
# torchattacks on the same device. Writes bench/results/gpu-attacks.json,
# bench/results/gpu-train_step.json and bench/results/gpu-attacks-madry-2000.json.
# Needs a CUDA build of jax and torch in .venv, e.g.
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
# The default Madry weights (150 steps) leave no point for APGD-T and Square: a longer-trained
# copy (cheap on a GPU) so that every ensemble stage is timed on both models.
"$PY" bench/attacks.py --device cuda --models madry_cnn --train-steps madry_cnn=2000 \
  --ensemble-num-test madry_cnn=512 --out bench/results/gpu-attacks-madry-2000.json "$@"
