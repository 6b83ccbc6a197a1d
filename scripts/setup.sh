#!/usr/bin/env bash
# What every job needs on a fresh machine: LLVM 19 (scripts/setup-llvm.sh), the Python reference
# environment (scripts/setup-python.sh), Netron for the OM tests (scripts/setup-netron.sh, when
# ../shared is present) and the (git-ignored) golden ONNX models. Prints the venv's python as
# its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup-llvm.sh
scripts/setup-netron.sh
PY="$(scripts/setup-python.sh | tail -n 1)"
"$PY" golden/make_golden.py --only-models --paddleocr >&2
echo "$PY"
