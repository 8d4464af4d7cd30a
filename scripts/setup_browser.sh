#!/usr/bin/env bash
# Headless browser for the UI tests (tests/test_app_browser.py). Idempotent.
#   - Debian's chromium from apt, only when /usr/bin/chromium is missing (apt needs root).
#   - Playwright's Python package into .venv. We NEVER run `playwright install`: it downloads a
#     browser build of its own; the tests drive Debian's /usr/bin/chromium via executable_path.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
  else
    echo "setup_browser: /usr/bin/chromium is missing and apt needs root; the browser test will be skipped" >&2
  fi
fi
PY=.venv/bin/python
if [ ! -x "$PY" ]; then PY=${PYTHON:-python3}; fi
if ! "$PY" -c "import playwright.sync_api" 2>/dev/null; then
  "$PY" -m pip --disable-pip-version-check -q install playwright
fi
