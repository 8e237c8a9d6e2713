#!/usr/bin/env bash
# Create .venv (if missing) and install deepdescent with pinned dependencies. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first and explicitly: the CPU wheel of 2.13.0 (an unpinned torch pulls multi-GB CUDA builds).
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
# K-FAC's independent reference (tests/test_kfac.py) without its backpack-for-pytorch dependency, which
# pulls a torchvision wheel that does not load beside the CPU torch (curvlinops' KFAC never imports it)
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt --no-deps \
    curvlinops-for-pytorch einconv einops linear_operator opt-einsum
# the fused CPU optimizer kernels, generated from the algorithms and compiled once (cached on disk)
.venv/bin/python -m deepdescent.kernels
