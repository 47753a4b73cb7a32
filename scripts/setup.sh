#!/usr/bin/env bash
# Create .venv with the CPU build of torch pinned (a bare `torch` would pull a multi-GB CUDA
# build) and install hvlm-export with its test, bench, serve and cpu (numba scan kernel) extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,bench,serve,cpu]"
