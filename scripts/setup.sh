#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv: pinned CPU torch, then the package
# in editable mode with its demo, training and test extras. Safe to run again; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# The pinned build is the CPU wheel; any other torch requirement would pull several GB of CUDA packages.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[demo,train,test,batch]"
