#!/usr/bin/env bash
# What every job needs on a fresh machine: LLVM 19 (scripts/setup-llvm.sh), the Python reference
# environment (scripts/setup-python.sh), ptxas (scripts/setup-ptxas.sh) and the (git-ignored) golden ONNX models. Prints the
# venv's python as its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup-llvm.sh
PY="$(scripts/setup-python.sh | tail -n 1)"
# ptxas for the GPU back end's checks (PyPI wheel, cached in .tools/)
scripts/setup-ptxas.sh >&2
"$PY" golden/make_golden.py --only-models --paddleocr >&2
echo "$PY"
