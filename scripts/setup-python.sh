#!/usr/bin/env bash
# Create (idempotently) the Python virtual environment used to generate and
# check golden reference data: <repo>/.venv with pinned onnx / onnxruntime / numpy.
# Usage: scripts/setup-python.sh   (from any cwd). Prints the venv python path.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON3="${PYTHON3:-python3}"

# sympy: onnxruntime.transformers' optimizer (shape inference), used to make contrib-op test models
# nvidia-cuda-nvcc-cu12: its nvidia/cuda_nvcc/bin/ptxas assembles the GPU back end's PTX in the
# tests (sm_70/80/90; kiln_target_ptx::ptxas::find looks in this venv); no GPU or driver needed
PKGS=(onnx==1.22.0 onnxruntime==1.32.0 numpy==2.4.6 sympy==1.14.0 nvidia-cuda-nvcc-cu12==12.9.86)

if [ ! -x "$PY" ]; then
    "$PYTHON3" -m venv "$VENV"
fi

# Only hit pip when the pinned set is not already satisfied.
if ! "$PY" - "${PKGS[@]}" >/dev/null 2>&1 <<'PYEOF'
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
PYEOF
then
    "$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
    "$PY" -m pip install --quiet --disable-pip-version-check "${PKGS[@]}"
fi

echo "$PY"
