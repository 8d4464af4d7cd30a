#!/usr/bin/env bash
# Set up the project's virtual environment (.venv). Idempotent: re-running only checks.
#   bash scripts/setup.sh          # runtime: model, training, app
#   bash scripts/setup.sh --dev    # + test tools and the headless browser for the UI tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip --disable-pip-version-check -q"
# torch first and pinned: anything unpinned (or torchvision) would pull GBs of CUDA packages.
if ! .venv/bin/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  $PIP install "torch==2.13.0"
fi
$PIP install -r requirements.txt
if [ "${1:-}" = "--dev" ]; then
  $PIP install -r requirements-dev.txt
  if [ -f scripts/setup_browser.sh ]; then bash scripts/setup_browser.sh; fi
fi
