#!/usr/bin/env bash
# Create ./.venv and install the pack with its test and CPU-face extras.
# CPU machines get torch==2.13.0 (the CPU build). A CUDA machine keeps its own torch:
#   EXPP_TORCH=system bash scripts/bootstrap.sh   (venv sees the system site-packages)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  if [ "${EXPP_TORCH:-}" = "system" ]; then
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
fi
# Installed only when something is missing, so repeated runs are fast.
if ! python -c "import expportrait_core, smplx, safetensors, av, diffusers, dlib, onnxruntime, insightface, pytest, scipy, numba, moderngl" 2>/dev/null; then
  python -m pip install -q -e ".[test,face-cpu]"
fi
