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
dvc repro
image-emotion summary   # every figure: dvc metrics show, or the report
