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
# Optional Debian packages (the app and the shapes world work without them):
# - the SynthGRES photo world reads object cut-outs and background photos (listed in packages.txt for
#   Hugging Face Spaces);
# - tcmalloc: train.fit and train.ablate re-execute on it, ~7 % more samples/s (train/allocator.py).
APT_PKGS="tuxpaint-stamps-default mate-backgrounds gnome-backgrounds libtcmalloc-minimal4"
missing_pkgs=""
for p in $APT_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing_pkgs="$missing_pkgs $p"
done
if [ -n "$missing_pkgs" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    (apt-get install -y --no-install-recommends $missing_pkgs >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y --no-install-recommends $missing_pkgs >/dev/null 2>&1; }) ||
      echo "note: could not install the optional Debian packages (photo world, tcmalloc); run: sudo apt-get install -y$missing_pkgs"
  else
    echo "note: the SynthGRES photo world and faster training need Debian packages; run: sudo apt-get install -y$missing_pkgs"
  fi
fi
if [ "${1:-}" = "--dev" ]; then
  $PIP install -r requirements-dev.txt
  if [ -f scripts/setup_browser.sh ]; then bash scripts/setup_browser.sh; fi
fi
