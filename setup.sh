#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job:
#   a virtualenv in .venv, the package with its pinned stack, then `dvc repro` on the embedded dataset.
set -euo pipefail
cd "$(dirname "$0")"
export MLFLOW_DISABLE_TELEMETRY=true DVC_NO_ANALYTICS=1
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,gen,server]'
export PATH="$PWD/.venv/bin:$PATH"
# Debian's Chromium for the browser tests (DVC's plots page, the demo page), installed where we may (root, apt);
# elsewhere those tests are skipped with the command that installs it
if ! command -v chromium >/dev/null && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null; } || echo "setup: chromium not installed; the browser tests will be skipped"
fi
dvc repro
image-emotion summary   # every figure: dvc metrics show, or the report
